//! Validated names. A value of these types has been checked once, at the border,
//! so the code behind it cannot be handed a NUL, a path separator or a control
//! character by a remote party.

use base64::Engine;
use std::fmt;

/// A UCloud username such as `DonnaJensen#4512`: 1 to [`UCLOUD_NAME_MAX`] bytes of
/// UTF-8 with no control characters. It is never used raw in a path: see [`UcloudName::file_name`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UcloudName(String);

/// The longest UCloud username accepted: its [`UcloudName::file_name`] (two hex digits
/// a byte) must fit a file name (255 bytes) with room for a short prefix. UCloud's
/// names (`FirstLast#1234`) are far shorter.
pub const UCLOUD_NAME_MAX: usize = 120;

/// A local account name as the system tools accept it: `[a-z_][a-z0-9_-]*`, at most
/// 32 bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalName(String);

/// A UCloud drive id: 1 to 64 bytes of `[A-Za-z0-9_.-]`, not starting with a dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DriveId(String);

#[derive(Debug, PartialEq, Eq)]
pub struct NameError(pub String);

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NameError {}

impl UcloudName {
    pub fn new(name: &str) -> Result<UcloudName, NameError> {
        if name.is_empty() || name.len() > UCLOUD_NAME_MAX {
            return Err(NameError(format!(
                "UCloud username must be 1 to {UCLOUD_NAME_MAX} bytes, got {}",
                name.len()
            )));
        }
        if name
            .chars()
            .any(|c| c.is_control() || is_invisible_format(c))
        {
            return Err(NameError(
                "UCloud username contains a control character or an invisible formatting one"
                    .into(),
            ));
        }
        Ok(UcloudName(name.to_string()))
    }

    /// From the `UCloud-Username` header: standard base64 (padded) of the name.
    pub fn from_header(value: &[u8]) -> Result<UcloudName, NameError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| NameError("UCloud-Username is not valid base64".into()))?;
        Self::from_bytes(bytes)
    }

    /// From a `usernameHint` query parameter: URL-safe base64, padding optional.
    pub fn from_hint(value: &str) -> Result<UcloudName, NameError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .map_err(|_| NameError("usernameHint is not valid base64".into()))?;
        Self::from_bytes(bytes)
    }

    fn from_bytes(bytes: Vec<u8>) -> Result<UcloudName, NameError> {
        let name = String::from_utf8(bytes)
            .map_err(|_| NameError("UCloud username is not UTF-8".into()))?;
        Self::new(&name)
    }

    /// The header form of the name (standard base64, padded).
    pub fn to_header(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }

    /// A file name for this user: lower-case hex of the UTF-8 bytes. Injective, and
    /// never `.`/`..`, a `/` or anything a shell or a path would read twice.
    pub fn file_name(&self) -> String {
        self.0.bytes().map(|b| format!("{b:02x}")).collect()
    }

    /// The inverse of [`UcloudName::file_name`], for listing a store.
    pub fn from_file_name(file: &str) -> Result<UcloudName, NameError> {
        if !file.len().is_multiple_of(2)
            || !file.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(NameError(format!("{file:?} is not a mapping file name")));
        }
        let bytes = (0..file.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&file[i..i + 2], 16).expect("checked hex digits"))
            .collect();
        Self::from_bytes(bytes)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Bidirectional overrides and zero-width characters: they make a name print as
/// another one in logs.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}')
}

impl LocalName {
    pub fn new(name: &str) -> Result<LocalName, NameError> {
        let bytes = name.as_bytes();
        let first_ok = matches!(bytes.first(), Some(b'a'..=b'z' | b'_'));
        let rest_ok = bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
        if !first_ok || !rest_ok || bytes.len() > 32 {
            return Err(NameError(format!(
                "{name:?} is not a local account name ([a-z_][a-z0-9_-]*, at most 32 bytes)"
            )));
        }
        Ok(LocalName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl DriveId {
    pub fn new(id: &str) -> Result<DriveId, NameError> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(NameError(format!(
                "{id:?} is not a drive id (1 to 64 of A-Z a-z 0-9 _ . -, not starting with a dot)"
            )));
        }
        Ok(DriveId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}
display_as_str!(UcloudName, LocalName, DriveId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let name = UcloudName::new("DonnaJensen#4512").unwrap();
        assert_eq!(name.to_header(), "RG9ubmFKZW5zZW4jNDUxMg==");
        assert_eq!(
            UcloudName::from_header(b"RG9ubmFKZW5zZW4jNDUxMg==").unwrap(),
            name
        );
        assert_eq!(
            UcloudName::from_hint("RG9ubmFKZW5zZW4jNDUxMg").unwrap(),
            name
        );
    }

    #[test]
    fn hostile_usernames_are_refused() {
        for bad in [
            "",
            "a\0b",
            "a\nb",
            "\u{7f}",
            "Alice\u{202E}1001#",
            "Bob\u{200B}",
        ] {
            assert!(UcloudName::new(bad).is_err(), "{bad:?}");
        }
        assert!(UcloudName::new(&"x".repeat(UCLOUD_NAME_MAX + 1)).is_err());
        assert!(UcloudName::new(&"x".repeat(UCLOUD_NAME_MAX)).is_ok());
        assert!(UcloudName::from_header(b"not base64!").is_err());
        assert!(UcloudName::from_header(b"/w==").is_err(), "invalid UTF-8");
        assert!(UcloudName::from_header(b"").is_err());
    }

    #[test]
    fn file_names_are_safe_and_invertible() {
        for raw in [
            "../../etc/passwd",
            ".",
            "..",
            "a/b",
            "DonnaJensen#4512",
            "Ærø",
        ] {
            let name = UcloudName::new(raw).unwrap();
            let file = name.file_name();
            assert!(file.bytes().all(|b| b.is_ascii_hexdigit()), "{file}");
            assert_eq!(UcloudName::from_file_name(&file).unwrap(), name);
        }
        assert!(UcloudName::from_file_name("2e2").is_err());
        assert!(UcloudName::from_file_name("2E2E").is_err());
        assert!(UcloudName::from_file_name("00").is_err(), "NUL");
    }

    #[test]
    fn local_names_and_drive_ids() {
        assert!(LocalName::new("ucim-alice").is_ok());
        for bad in ["", "Root", "-x", "a b", "a/b", "a\0", &"a".repeat(33)] {
            assert!(LocalName::new(bad).is_err(), "{bad:?}");
        }
        assert!(DriveId::new("4711").is_ok());
        for bad in ["", ".", "..", ".x", "a/b", "a\0", &"1".repeat(65)] {
            assert!(DriveId::new(bad).is_err(), "{bad:?}");
        }
    }
}
