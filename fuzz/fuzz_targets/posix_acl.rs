//! POSIX ACL attributes (ucloud-share acl.rs), which the walk reads from every
//! entry of a tree the sharer controls. Whatever parses writes back to itself,
//! and every edit of it is a valid ACL again.
#![no_main]

#[path = "../../bins/ucloud-share/src/acl.rs"]
#[allow(dead_code)]
mod acl;

use acl::Acl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(acl) = Acl::parse(input) else {
        return;
    };
    assert_eq!(Acl::parse(&acl.to_bytes()).as_ref(), Ok(&acl));
    let uid = input.len() as u32 % 70_000;
    for edited in [
        acl.with_user(uid, acl::R | acl::X),
        acl.without_user(uid),
        acl.with_user(uid, acl::R).without_user(uid),
    ] {
        assert_eq!(Acl::parse(&edited.to_bytes()).as_ref(), Ok(&edited));
    }
    assert_eq!(acl.with_user(uid, acl::R).user(uid), Some(acl::R));
    assert_eq!(acl.without_user(uid).user(uid), None);
});
