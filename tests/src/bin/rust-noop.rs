//! The smallest dynamically linked Rust program (std, the workspace's release
//! profile): `scripts/bench` execs it beside the static no-op of the floor, to show
//! what a Rust dispatcher costs before it does anything.
#![forbid(unsafe_code)]

fn main() {}
