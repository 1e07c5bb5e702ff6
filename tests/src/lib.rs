//! Helpers for the end-to-end tests: they drive the local stack that `scripts/stack up`
//! started, through the addresses and accounts it wrote to `target/stack/stack.env`.
//!
//! A missing stack is a failure, never a skip: a test that silently skips on a machine
//! without the stack would let a broken chain pass.
#![forbid(unsafe_code)]

mod accounts;
mod jobs;
mod links;
mod registry;
mod services;
mod sim;
mod site;
mod stack;
mod tokens;
mod wait;
mod websocket;

pub use accounts::{
    as_user, home_of, run_as, uid_of, unique, unique_account, ScratchAccount, ScratchDir,
};
pub use jobs::job_id;
pub use links::Fetched;
pub use registry::{described, hex};
pub use services::{kill_and_wait, signal};
pub use sim::{parse_call_output, sim_log};
pub use site::Site;
pub use stack::{env_file, parse_env, Stack};
pub use tokens::{base64, base64url, hs256, openssl, rs256};
pub use wait::{wait_until, within};
pub use websocket::{
    ws_client_frame, ws_client_head, ws_connect, ws_mask, ws_server_frame, ws_upgrade,
};
