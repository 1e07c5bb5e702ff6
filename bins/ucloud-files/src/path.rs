//! UCloud paths (`/<driveId>/rel/path`) to a drive id and the components below the
//! drive's base, by text alone: no file system access, so nothing here can be
//! tricked by a link. Anything that could mean something else on disk (`..`, `.`,
//! an empty component from `//`, NUL) is refused rather than normalised away.

use crate::error::Error;
use ucloud_wire::names::DriveId;

/// Linux's PATH_MAX and NAME_MAX.
pub const MAX_PATH: usize = 4096;
pub const MAX_NAME: usize = 255;

#[derive(Debug, PartialEq, Eq)]
pub struct UcloudPath<'a> {
    pub drive: DriveId,
    /// Each a single non-empty file name: no `/`, no NUL, not `.` or `..`.
    pub components: Vec<&'a str>,
}

impl UcloudPath<'_> {
    /// The path in UCloud's form without a trailing slash, for ids and messages.
    pub fn display(&self) -> String {
        let mut s = format!("/{}", self.drive);
        for c in &self.components {
            s.push('/');
            s.push_str(c);
        }
        s
    }
}

pub fn parse(path: &str) -> Result<UcloudPath<'_>, Error> {
    let bad = |why: &str| Error::BadPath(format!("bad path {:?}: {why}", shorten(path)));
    if path.len() > MAX_PATH {
        return Err(bad(&format!("longer than {MAX_PATH} bytes")));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(bad("a UCloud path starts with /<driveId>"));
    };
    // One trailing slash names the same directory; more would be an empty name.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut parts = rest.split('/');
    let drive = parts.next().unwrap_or("");
    let drive = DriveId::new(drive).map_err(|e| bad(&e.to_string()))?;
    let mut components = Vec::new();
    for part in parts {
        match part {
            "" => return Err(bad("contains an empty component (//)")),
            "." | ".." => return Err(bad("contains . or .. (paths are never resolved upward)")),
            p if p.len() > MAX_NAME => {
                return Err(bad(&format!("a name is longer than {MAX_NAME} bytes")))
            }
            p => components.push(p),
        }
    }
    Ok(UcloudPath { drive, components })
}

/// Long or odd paths are cut in messages so that an error stays readable.
fn shorten(path: &str) -> String {
    let mut end = path.len().min(120);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    if end < path.len() {
        format!("{}...", &path[..end])
    } else {
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_resolve() {
        let p = parse("/17/a/b c/ü.txt").unwrap();
        assert_eq!(p.drive.as_str(), "17");
        assert_eq!(p.components, vec!["a", "b c", "ü.txt"]);
        assert_eq!(p.display(), "/17/a/b c/ü.txt");
        assert_eq!(parse("/17").unwrap().components, Vec::<&str>::new());
        assert_eq!(parse("/17/").unwrap().components, Vec::<&str>::new());
        assert_eq!(parse("/17/dir/").unwrap().components, vec!["dir"]);
        // Dots inside a name are just a name.
        assert_eq!(parse("/17/..a/b..").unwrap().components, vec!["..a", "b.."]);
    }

    #[test]
    fn hostile_paths_are_refused_with_why() {
        let long_name = format!("/17/{}", "n".repeat(MAX_NAME + 1));
        let long_path = format!("/17{}", "/abc".repeat(MAX_PATH / 4 + 1));
        let cases = [
            ("/17/..", ".."),
            ("/17/../18", ".."),
            ("/17/a/../../etc", ".."),
            ("/17/./a", ".."),
            ("/17//etc", "//"),
            ("//17/a", "drive id"),
            ("/17/a//", "//"),
            ("/17/a\0b", "NUL"),
            ("17/a", "starts with"),
            ("", "starts with"),
            ("/", "drive id"),
            ("/../etc/passwd", "drive id"),
            ("/.17/a", "drive id"),
            ("/17%2F..", "drive id"),
            (long_name.as_str(), "longer than 255"),
            (long_path.as_str(), "longer than 4096"),
        ];
        for (path, why) in cases {
            match parse(path) {
                Err(Error::BadPath(m)) => assert!(m.contains(why), "{path:?}: {m}"),
                other => panic!("{path:?} was not refused: {other:?}"),
            }
        }
    }
}
