//! HTTP/1.1 pieces shared by the programs of ucloud-im: the request reader and
//! response writer servers use (`server`), a small blocking client (`client`), and
//! rustls configuration helpers (`tls`, feature `tls`), and the WebSocket handshake
//! and frame codec (`websocket`, feature `websocket`).
#![forbid(unsafe_code)]

pub mod client;
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "websocket")]
pub mod websocket;
