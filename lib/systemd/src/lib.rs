//! The service manager's two protocols, spoken by every program of ucloud-im that
//! systemd starts: taking the socket it passed (`activation`, the protocol of
//! sd_listen_fds(3)) and telling it the service's state (`notify`, sd_notify(3)).
//!
//! Its own crate rather than a module of ucloud-wire: taking a descriptor by number
//! needs `unsafe` (fenced in `sys`), and the setuid dispatcher, which links
//! ucloud-wire, has no socket to take.
#![deny(unsafe_code)]

pub mod activation;
pub mod notify;
#[allow(unsafe_code)]
mod sys;

pub use activation::{take_socket, Family, Role, Want};
pub use notify::{notify, State};
