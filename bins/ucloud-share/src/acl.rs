//! POSIX ACLs in the form the kernel stores them in the `system.posix_acl_access`
//! and `system.posix_acl_default` attributes, read and written here without
//! libacl: a little-endian u32 version (2), then 8-byte entries (u16 tag, u16
//! perm, u32 id), sorted by tag and then id.
//!
//! The bytes come from a tree the sharer controls, so parsing is strict (the
//! kernel's own rules: one of each base entry, named ids sorted without
//! duplicates, a mask whenever there are named entries) and never panics. The
//! edits are pure functions, so what a grant or revoke does to one ACL is tested
//! without a filesystem.

use std::ffi::CStr;

pub const ACCESS: &CStr = c"system.posix_acl_access";
pub const DEFAULT: &CStr = c"system.posix_acl_default";

const VERSION: u32 = 2;
/// The id the kernel writes in entries that name nobody.
const UNDEFINED_ID: u32 = u32::MAX;
/// As many entries as the largest attribute holds.
const MAX_ENTRIES: usize = (65536 - 4) / 8;

pub const R: u8 = 4;
pub const W: u8 = 2;
pub const X: u8 = 1;

/// In the kernel's order: sorting by tag sorts as the kernel wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tag {
    UserObj = 0x01,
    User = 0x02,
    GroupObj = 0x04,
    Group = 0x08,
    Mask = 0x10,
    Other = 0x20,
}

impl Tag {
    fn of(raw: u16) -> Option<Tag> {
        use Tag::*;
        [UserObj, User, GroupObj, Group, Mask, Other]
            .into_iter()
            .find(|&t| t as u16 == raw)
    }

    fn named(self) -> bool {
        matches!(self, Tag::User | Tag::Group)
    }

    /// The entries the mask limits.
    fn group_class(self) -> bool {
        matches!(self, Tag::User | Tag::GroupObj | Tag::Group)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub tag: Tag,
    /// A uid or gid for `User` and `Group`; `UNDEFINED_ID` for the others.
    pub id: u32,
    /// `R | W | X` bits, never more.
    pub perm: u8,
}

impl Entry {
    fn key(&self) -> (Tag, u32) {
        (self.tag, self.id)
    }
}

/// A valid ACL: the constructors and edits keep the kernel's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl(Vec<Entry>);

fn refuse(why: impl std::fmt::Display) -> String {
    format!("not a valid POSIX ACL: {why}")
}

impl Acl {
    /// The attribute's bytes, checked as the kernel checks them; else why not.
    pub fn parse(bytes: &[u8]) -> Result<Acl, String> {
        let (header, body) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| refuse("shorter than its header"))?;
        let version = u32::from_le_bytes(*header);
        if version != VERSION {
            return Err(refuse(format!("version {version}, not {VERSION}")));
        }
        if body.len() % 8 != 0 {
            return Err(refuse("a truncated entry"));
        }
        if body.len() / 8 > MAX_ENTRIES {
            return Err(refuse("too many entries"));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(body.len() / 8);
        for raw in body.chunks_exact(8) {
            let tag = u16::from_le_bytes([raw[0], raw[1]]);
            let perm = u16::from_le_bytes([raw[2], raw[3]]);
            let id = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
            let tag = Tag::of(tag).ok_or_else(|| refuse(format!("unknown tag {tag:#x}")))?;
            if perm > 7 {
                return Err(refuse(format!("permission bits {perm:#o}")));
            }
            if tag.named() && id == UNDEFINED_ID {
                return Err(refuse("a named entry without an id"));
            }
            let entry = Entry {
                tag,
                id: if tag.named() { id } else { UNDEFINED_ID },
                perm: perm as u8,
            };
            if entries.last().is_some_and(|last| last.key() >= entry.key()) {
                return Err(refuse("entries unsorted or duplicated"));
            }
            entries.push(entry);
        }
        let has = |tag| entries.iter().any(|e| e.tag == tag);
        for (tag, name) in [
            (Tag::UserObj, "USER_OBJ"),
            (Tag::GroupObj, "GROUP_OBJ"),
            (Tag::Other, "OTHER"),
        ] {
            if !has(tag) {
                return Err(refuse(format!("no {name} entry")));
            }
        }
        if (has(Tag::User) || has(Tag::Group)) && !has(Tag::Mask) {
            return Err(refuse("named entries without a mask"));
        }
        Ok(Acl(entries))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 8 * self.0.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.0 {
            out.extend_from_slice(&(e.tag as u16).to_le_bytes());
            out.extend_from_slice(&u16::from(e.perm).to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// The ACL a file without one has: its owner, group and other bits.
    pub fn from_mode(mode: u32) -> Acl {
        let base = |tag, shift: u32| Entry {
            tag,
            id: UNDEFINED_ID,
            perm: ((mode >> shift) & 7) as u8,
        };
        Acl(vec![
            base(Tag::UserObj, 6),
            base(Tag::GroupObj, 3),
            base(Tag::Other, 0),
        ])
    }

    /// The permissions of the named entry of `uid`, if there is one.
    pub fn user(&self, uid: u32) -> Option<u8> {
        self.0
            .iter()
            .find(|e| e.tag == Tag::User && e.id == uid)
            .map(|e| e.perm)
    }

    fn perm(&self, tag: Tag) -> Option<u8> {
        self.0.iter().find(|e| e.tag == tag).map(|e| e.perm)
    }

    /// This ACL with a named entry giving `uid` exactly `perm` (added or
    /// replaced), and a mask that lets all of `perm` through. The mask grows by
    /// `perm` only, not to the union of every entry, and when it grows every
    /// other entry it limits is first narrowed to what the old mask let through:
    /// nobody's effective permissions change but `uid`'s. (`setfacl -m` would
    /// widen the mask alone, and so give back to the group and to everyone
    /// named what the owner had taken away with chmod g-rwx.) `uid` must be a
    /// real uid (not `u32::MAX`).
    pub fn with_user(&self, uid: u32, perm: u8) -> Acl {
        let perm = perm & (R | W | X);
        // Without a mask entry nothing is masked: the group entry is what the
        // group gets, and a mask that includes it changes nothing for it.
        let old = self.perm(Tag::Mask);
        let mask = old.or(self.perm(Tag::GroupObj)).unwrap_or(0) | perm;
        let mut entries: Vec<Entry> = self
            .0
            .iter()
            .filter(|e| !(e.tag == Tag::User && e.id == uid) && e.tag != Tag::Mask)
            .copied()
            .collect();
        if let Some(old) = old.filter(|&old| mask & !old != 0) {
            for e in entries.iter_mut().filter(|e| e.tag.group_class()) {
                e.perm &= old;
            }
        }
        entries.push(Entry {
            tag: Tag::User,
            id: uid,
            perm,
        });
        entries.push(Entry {
            tag: Tag::Mask,
            id: UNDEFINED_ID,
            perm: mask,
        });
        entries.sort_by_key(Entry::key);
        Acl(entries)
    }

    /// What the entry `tag` (with `id` for a named one) is let do: its
    /// permissions, limited by the mask where the mask applies.
    pub fn effective(&self, tag: Tag, id: u32) -> Option<u8> {
        let e = self
            .0
            .iter()
            .find(|e| e.tag == tag && (!tag.named() || e.id == id))?;
        let mask = match tag.group_class() {
            true => self.perm(Tag::Mask).unwrap_or(R | W | X),
            false => R | W | X,
        };
        Some(e.perm & mask)
    }

    /// This ACL without the named entry of `uid`. Nobody's permissions grow:
    /// the mask only narrows (to what the remaining entries use), and once no
    /// named entry is left it goes, its limit folded into the group entry.
    pub fn without_user(&self, uid: u32) -> Acl {
        let mut entries: Vec<Entry> = self
            .0
            .iter()
            .filter(|e| !(e.tag == Tag::User && e.id == uid))
            .copied()
            .collect();
        let Some(mask) = self.perm(Tag::Mask) else {
            return Acl(entries);
        };
        let named = entries.iter().any(|e| e.tag.named());
        let used = entries
            .iter()
            .filter(|e| e.tag.group_class())
            .fold(0, |acc, e| acc | e.perm);
        for e in &mut entries {
            match e.tag {
                Tag::Mask => e.perm &= used,
                Tag::GroupObj if !named => e.perm &= mask,
                _ => {}
            }
        }
        if !named {
            entries.retain(|e| e.tag != Tag::Mask);
        }
        Acl(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut out = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&perm.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    const U: u32 = UNDEFINED_ID;

    #[test]
    fn reads_what_setfacl_writes_and_writes_it_back_byte_for_byte() {
        // `setfacl -m u:60001:rx` on a 0644 file, as getfattr shows it.
        let bytes = hex(
            "0200000001000600ffffffff0200050061ea000004000400ffffffff10000500ffffffff20000400ffffffff",
        );
        let acl = Acl::parse(&bytes).unwrap();
        assert_eq!(acl.user(60001), Some(R | X));
        assert_eq!(acl.to_bytes(), bytes);
        assert_eq!(
            Acl::from_mode(0o644).with_user(60001, R | X).to_bytes(),
            bytes
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn hostile_bytes_are_refused_by_name() {
        let base = [(1, 6, U), (4, 4, U), (0x20, 4, U)];
        assert!(Acl::parse(&raw(&base)).is_ok());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "shorter than its header"),
            (vec![2, 0, 0], "shorter than its header"),
            (
                {
                    let mut b = raw(&base);
                    b[0] = 1;
                    b
                },
                "version 1",
            ),
            (
                {
                    let mut b = raw(&base);
                    b.pop();
                    b
                },
                "truncated",
            ),
            (raw(&[(1, 6, U), (3, 4, U), (0x20, 4, U)]), "unknown tag"),
            (
                raw(&[(1, 8, U), (4, 4, U), (0x20, 4, U)]),
                "permission bits",
            ),
            (raw(&[(4, 4, U), (1, 6, U), (0x20, 4, U)]), "unsorted"),
            (
                raw(&[(1, 6, U), (1, 6, U), (4, 4, U), (0x20, 4, U)]),
                "duplicated",
            ),
            (
                raw(&[
                    (1, 6, U),
                    (2, 4, 9),
                    (2, 4, 9),
                    (4, 4, U),
                    (0x10, 4, U),
                    (0x20, 4, U),
                ]),
                "duplicated",
            ),
            (
                raw(&[
                    (1, 6, U),
                    (2, 4, 9),
                    (2, 4, 5),
                    (4, 4, U),
                    (0x10, 4, U),
                    (0x20, 4, U),
                ]),
                "unsorted",
            ),
            (
                raw(&[(1, 6, U), (2, 4, U), (4, 4, U), (0x10, 4, U), (0x20, 4, U)]),
                "without an id",
            ),
            (raw(&[(4, 4, U), (0x20, 4, U)]), "no USER_OBJ"),
            (raw(&[(1, 6, U), (0x20, 4, U)]), "no GROUP_OBJ"),
            (raw(&[(1, 6, U), (4, 4, U)]), "no OTHER"),
            (
                raw(&[(1, 6, U), (2, 4, 9), (4, 4, U), (0x20, 4, U)]),
                "without a mask",
            ),
            (
                raw(&[(1, 6, U), (4, 4, U), (8, 4, 9), (0x20, 4, U)]),
                "without a mask",
            ),
        ];
        for (bytes, want) in cases {
            match Acl::parse(&bytes) {
                Err(why) => assert!(why.contains(want), "{why} / {want}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        // The kernel ignores the id of an unnamed entry; so does the parser.
        let odd = Acl::parse(&raw(&[(1, 6, 7), (4, 4, 8), (0x20, 4, 9)])).unwrap();
        assert_eq!(odd, Acl::from_mode(0o644));
    }

    #[test]
    fn parse_never_panics_on_any_short_input_or_bit_flip() {
        let good = Acl::from_mode(0o750)
            .with_user(5, R)
            .with_user(7, R | W)
            .to_bytes();
        for len in 0..=good.len() {
            let _ = Acl::parse(&good[..len]);
        }
        for i in 0..good.len() * 8 {
            let mut b = good.clone();
            b[i / 8] ^= 1 << (i % 8);
            if let Ok(acl) = Acl::parse(&b) {
                // Whatever passes writes back as it was read, bar ignored ids.
                assert_eq!(Acl::parse(&acl.to_bytes()), Ok(acl));
            }
        }
        // A pseudo-random stream of inputs of every length.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for n in 0..20_000usize {
            let mut b = vec![0u8; n % 80];
            for byte in &mut b {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = (x as u8) & 0x3f;
            }
            if b.len() >= 4 {
                b[..4].copy_from_slice(&2u32.to_le_bytes());
            }
            let _ = Acl::parse(&b);
        }
    }

    #[test]
    fn a_grant_adds_or_replaces_the_entry_and_widens_the_mask_by_it_only() {
        let acl = Acl::from_mode(0o600).with_user(60002, R | X);
        assert_eq!(acl.user(60002), Some(R | X));
        assert_eq!(acl.perm(Tag::Mask), Some(R | X));
        assert_eq!(acl.perm(Tag::GroupObj), Some(0));
        let acl = acl.with_user(60002, R | W | X);
        assert_eq!(acl.user(60002), Some(R | W | X));
        assert_eq!(acl.0.len(), 5, "replaced, not added: {acl:?}");
        // Another named entry, mask narrowed by the owner to r--: a read grant
        // leaves it r--, a write grant lets w through (the one bit it needs).
        let narrowed = Acl(vec![
            Entry {
                tag: Tag::UserObj,
                id: U,
                perm: 6,
            },
            Entry {
                tag: Tag::User,
                id: 9,
                perm: 6,
            },
            Entry {
                tag: Tag::GroupObj,
                id: U,
                perm: 6,
            },
            Entry {
                tag: Tag::Mask,
                id: U,
                perm: 4,
            },
            Entry {
                tag: Tag::Other,
                id: U,
                perm: 0,
            },
        ]);
        assert_eq!(narrowed.with_user(60002, R).perm(Tag::Mask), Some(R));
        assert_eq!(
            narrowed.with_user(60002, R | W).perm(Tag::Mask),
            Some(R | W)
        );
        // Always valid, in the kernel's order.
        let many = narrowed.with_user(3, R).with_user(60002, R).with_user(1, X);
        assert_eq!(Acl::parse(&many.to_bytes()), Ok(many.clone()));
        let ids: Vec<u32> = many
            .0
            .iter()
            .filter(|e| e.tag == Tag::User)
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, [1, 3, 9, 60002]);
    }

    fn e(tag: Tag, id: u32, perm: u8) -> Entry {
        Entry { tag, id, perm }
    }

    #[test]
    fn a_grant_that_widens_the_mask_gives_nobody_else_anything() {
        const CAROL: u32 = 60003;
        const BOB: u32 = 60002;
        // chmod 600 on a file with group r-- and user:carol:rw-: mask ---.
        let closed = Acl(vec![
            e(Tag::UserObj, U, R | W),
            e(Tag::User, CAROL, R | W),
            e(Tag::GroupObj, U, R),
            e(Tag::Group, 7, R | W | X),
            e(Tag::Mask, U, 0),
            e(Tag::Other, U, 0),
        ]);
        let acl = closed.with_user(BOB, R);
        assert_eq!(acl.effective(Tag::User, BOB), Some(R));
        assert_eq!(acl.effective(Tag::User, CAROL), Some(0));
        assert_eq!(acl.effective(Tag::GroupObj, U), Some(0));
        assert_eq!(acl.effective(Tag::Group, 7), Some(0));
        assert_eq!(acl.effective(Tag::UserObj, U), Some(R | W));
        assert_eq!(Acl::parse(&acl.to_bytes()), Ok(acl.clone()));
        // A mask of r--: an edit grant lets w and x through for Bob alone.
        let narrow = Acl(vec![
            e(Tag::UserObj, U, R | W | X),
            e(Tag::User, CAROL, R | W | X),
            e(Tag::GroupObj, U, R | W),
            e(Tag::Mask, U, R),
            e(Tag::Other, U, 0),
        ]);
        let acl = narrow.with_user(BOB, R | W | X);
        assert_eq!(acl.effective(Tag::User, BOB), Some(R | W | X));
        assert_eq!(acl.effective(Tag::User, CAROL), Some(R));
        assert_eq!(acl.effective(Tag::GroupObj, U), Some(R));
        // Every effective permission but Bob's is what it was, whatever the
        // ACL, the grant and the order of grants.
        let tags = [Tag::UserObj, Tag::GroupObj, Tag::Other];
        for mask in 0..8 {
            for group in 0..8 {
                for carol in 0..8 {
                    let acl = Acl(vec![
                        e(Tag::UserObj, U, 6),
                        e(Tag::User, CAROL, carol),
                        e(Tag::GroupObj, U, group),
                        e(Tag::Mask, U, mask),
                        e(Tag::Other, U, 4),
                    ]);
                    for perm in [R, R | X, R | W, R | W | X] {
                        let after = acl.with_user(BOB, perm).with_user(ALICE_ID, R | W | X);
                        assert_eq!(after.effective(Tag::User, BOB), Some(perm));
                        assert_eq!(after.effective(Tag::User, ALICE_ID), Some(R | W | X));
                        for t in tags {
                            assert_eq!(after.effective(t, U), acl.effective(t, U), "{acl:?}");
                        }
                        assert_eq!(
                            after.effective(Tag::User, CAROL),
                            acl.effective(Tag::User, CAROL),
                            "{acl:?} {perm}"
                        );
                    }
                }
            }
        }
    }

    const ALICE_ID: u32 = 60001;

    #[test]
    fn a_revoke_removes_the_entry_and_widens_nothing() {
        // Back to exactly what the file had before the grant.
        for mode in [0o600, 0o640, 0o750, 0o644] {
            let before = Acl::from_mode(mode);
            for perm in [R, R | X, R | W | X] {
                assert_eq!(before.with_user(60002, perm).without_user(60002), before);
            }
        }
        // Another named entry keeps the mask, narrowed to what is still used.
        let two = Acl::from_mode(0o600)
            .with_user(9, R)
            .with_user(60002, R | W | X);
        let after = two.without_user(60002);
        assert_eq!(after.user(60002), None);
        assert_eq!(after.user(9), Some(R));
        assert_eq!(after.perm(Tag::Mask), Some(R));
        assert_eq!(Acl::parse(&after.to_bytes()), Ok(after.clone()));
        // The group entry never outgrows the mask it was under.
        let wide_group = Acl(vec![
            Entry {
                tag: Tag::UserObj,
                id: U,
                perm: 7,
            },
            Entry {
                tag: Tag::User,
                id: 60002,
                perm: 5,
            },
            Entry {
                tag: Tag::GroupObj,
                id: U,
                perm: 7,
            },
            Entry {
                tag: Tag::Mask,
                id: U,
                perm: 5,
            },
            Entry {
                tag: Tag::Other,
                id: U,
                perm: 0,
            },
        ]);
        assert_eq!(wide_group.without_user(60002), Acl::from_mode(0o750));
        // Removing someone absent changes nothing that matters.
        assert_eq!(Acl::from_mode(0o640).without_user(5), Acl::from_mode(0o640));
    }
}
