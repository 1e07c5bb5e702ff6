//! The filesystem steps of a folder share, for ucloud-share's main.rs to order.
//!
//! A share lets the recipient's local account read (or read and write) one folder
//! of the sharer's and nothing else of hers. Two steps make that true:
//! - `walk`, run as the sharer through `privilege::as_sharer`, gives the recipient
//!   named POSIX ACL entries (`acl`) on every entry of the folder the sharer owns,
//!   and default entries so that what is created later inherits them;
//! - `gate`, run as root, bind-mounts the folder at `<gate dir>/<share id>`, so the
//!   recipient reaches it without search permission on any directory above it.
//!
//! Root never walks the sharer's tree: the walk runs with her credentials only, so
//! it can give away nothing she could not give away herself.
#![deny(unsafe_code)]

pub mod acl;
pub mod answer;
pub mod gate;
mod path;
pub mod privilege;
#[allow(unsafe_code)]
mod sys;
#[cfg(test)]
mod testing;
pub mod walk;

pub use answer::{Error, Report};
