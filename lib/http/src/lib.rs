//! HTTP/1.1 pieces shared by the programs of ucloud-im: the request reader and
//! response writer servers use (`server`), a small blocking client (`client`), and
//! rustls configuration helpers (`tls`, feature `tls`), the WebSocket handshake
//! and frame codec (`websocket`, feature `websocket`), and the PROXY v2 header
//! between the balancer and the gateway (`proxy_v2`).
#![forbid(unsafe_code)]

pub mod client;
pub mod proxy_v2;
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "websocket")]
pub mod websocket;
