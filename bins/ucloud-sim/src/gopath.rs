//! UCloud paths read the way the core reads them: Go's `filepath.Clean`, and
//! `orcapi.DriveIdFromUCloudPath` (provider-integration/shared/pkg/orchestrators/drives.go,
//! through `util.Components`, util/paths.go). The core keeps a share's path cleaned
//! and finds a path's drive by its first component, so the simulator must agree on
//! both, odd paths (`//5/x`, `/5/../6`, `\5\x`) included.

/// Go's `path.Clean` (what `filepath.Clean` is on Linux): no repeated or trailing
/// `/`, no `.` element, a `..` eats the element before it (and stops at the root),
/// `.` for an empty result.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// `orcapi.DriveIdFromUCloudPath`: the first component of the cleaned path (with
/// `\` read as `/` after cleaning, one leading and one trailing `/` dropped). Go's
/// `strings.Split` never returns nothing, so every path names some drive id, which
/// may be `""` or `"."`: the core then finds no drive (`ResourceParseId` gives 0).
pub fn drive_id(path: &str) -> String {
    let cleaned = clean(path).replace('\\', "/");
    let cleaned = cleaned.strip_prefix('/').unwrap_or(&cleaned);
    let cleaned = cleaned.strip_suffix('/').unwrap_or(cleaned);
    cleaned.split('/').next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_is_gos() {
        for (path, want) in [
            ("", "."),
            (".", "."),
            ("/", "/"),
            ("//", "/"),
            ("/5/x/", "/5/x"),
            ("//5//x", "/5/x"),
            ("/5/./x", "/5/x"),
            ("/5/../6", "/6"),
            ("/../5", "/5"),
            ("/..", "/"),
            ("5/..", "."),
            ("../5", "../5"),
            ("../../5/..", "../.."),
            ("a/b/../../..", ".."),
            ("/5/x/..", "/5"),
            ("/5/...", "/5/..."),
            ("\\5\\x", "\\5\\x"),
        ] {
            assert_eq!(clean(path), want, "{path:?}");
        }
    }

    #[test]
    fn the_drive_is_the_first_component() {
        for (path, want) in [
            ("/5/x/y", "5"),
            ("5/x", "5"),
            ("/5", "5"),
            ("//5//x", "5"),
            ("/6/../5/x", "5"),
            ("\\5\\x", "5"),
            ("/5\\", "5"),
            ("/+5/x", "+5"),
            ("", "."),
            ("/", ""),
            ("../5", ".."),
        ] {
            assert_eq!(drive_id(path), want, "{path:?}");
        }
    }
}
