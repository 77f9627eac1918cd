//! Names that arrive from outside (case references, directory ids, catalog
//! paths, file ids) are parsed into these types before anything else sees them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not valid: {why}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub why: &'static str,
}

fn err(what: &'static str, value: &str, why: &'static str) -> NameError {
    let mut value = value.to_string();
    if value.len() > 80 {
        let mut cut = 77;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        value.truncate(cut);
        value.push_str("...");
    }
    NameError { what, value, why }
}

macro_rules! string_name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::parse(&s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }
    };
}

string_name!(
    /// A support-system reference number: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
    CaseRef
);
string_name!(
    /// A group or department id from the directory: `[A-Za-z0-9._-]+`, at most 128 bytes.
    DirId
);
string_name!(
    /// A requesting user's id (usually an e-mail address): printable, no white space.
    UserId
);
string_name!(
    /// A GDB file id: printable ASCII without white space or `/`, at most 128 bytes.
    FileId
);
string_name!(
    /// A path relative to `gdb_root`: no empty, `.` or `..` segment, not absolute, no control characters.
    CatalogPath
);

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-'
}

impl CaseRef {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        const WHAT: &str = "case reference";
        let mut chars = s.chars();
        match chars.next() {
            None => return Err(err(WHAT, s, "it is empty")),
            Some(c) if !c.is_ascii_alphanumeric() => {
                return Err(err(WHAT, s, "it must start with a letter or digit"));
            }
            Some(_) => {}
        }
        if s.len() > 64 {
            return Err(err(WHAT, s, "it is longer than 64 characters"));
        }
        if !chars.all(id_char) {
            return Err(err(WHAT, s, "only letters, digits, '.', '_' and '-' are allowed"));
        }
        Ok(Self(s.to_string()))
    }
}

impl DirId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        const WHAT: &str = "id";
        if s.is_empty() {
            return Err(err(WHAT, s, "it is empty"));
        }
        if s.len() > 128 {
            return Err(err(WHAT, s, "it is longer than 128 characters"));
        }
        if !s.chars().all(id_char) {
            return Err(err(WHAT, s, "only letters, digits, '.', '_' and '-' are allowed"));
        }
        Ok(Self(s.to_string()))
    }
}

impl UserId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        const WHAT: &str = "user id";
        if s.is_empty() {
            return Err(err(WHAT, s, "it is empty"));
        }
        if s.len() > 254 {
            return Err(err(WHAT, s, "it is longer than 254 characters"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(WHAT, s, "white space and control characters are not allowed"));
        }
        Ok(Self(s.to_string()))
    }
}

impl FileId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        const WHAT: &str = "file_id";
        if s.is_empty() {
            return Err(err(WHAT, s, "it is empty"));
        }
        if s.len() > 128 {
            return Err(err(WHAT, s, "it is longer than 128 characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\') {
            return Err(err(WHAT, s, "only printable ASCII without white space, '/' or '\\' is allowed"));
        }
        Ok(Self(s.to_string()))
    }
}

impl CatalogPath {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        const WHAT: &str = "path";
        if s.is_empty() {
            return Err(err(WHAT, s, "it is empty"));
        }
        if s.len() > 4096 {
            return Err(err(WHAT, s, "it is longer than 4096 bytes"));
        }
        if s.starts_with('/') {
            return Err(err(WHAT, s, "it must be relative to gdb_root"));
        }
        if s.contains('\0') {
            return Err(err(WHAT, s, "it contains a NUL byte"));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(err(WHAT, s, "it contains a control character"));
        }
        for seg in s.split('/') {
            match seg {
                "" => return Err(err(WHAT, s, "it has an empty segment")),
                "." => return Err(err(WHAT, s, "it has a '.' segment")),
                ".." => return Err(err(WHAT, s, "it has a '..' segment")),
                _ if seg.len() > 255 => {
                    return Err(err(WHAT, s, "a segment is longer than 255 bytes"));
                }
                _ => {}
            }
        }
        Ok(Self(s.to_string()))
    }

    /// The last segment: what a case directory shows the file as.
    pub fn base_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn case_refs() {
        assert!(CaseRef::parse("NGC-2026-0042").is_ok());
        assert!(CaseRef::parse("a").is_ok());
        assert!(CaseRef::parse(&"a".repeat(64)).is_ok());
        assert!(CaseRef::parse(&"a".repeat(65)).is_err());
        for bad in ["", "-x", ".x", "a/b", "a b", "..", "æ", "a\0"] {
            assert!(CaseRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn catalog_paths() {
        for good in ["a", "a/b.fastq.gz", "run 1/sample 1.fastq", "x/.hidden", "a..b/c"] {
            assert!(CatalogPath::parse(good).is_ok(), "{good:?}");
        }
        for bad in ["", "/abs", "a//b", "a/./b", "../x", "a/..", "a/", "a\0b", "a\nb", "."] {
            assert!(CatalogPath::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(CatalogPath::parse("a/b/c.fq").map(|p| p.base_name().to_string()), Ok("c.fq".into()));
    }

    #[test]
    fn file_ids() {
        assert!(FileId::parse("GDB:0001").is_ok());
        for bad in ["", "a b", "a/b", "a\tb", "ø"] {
            assert!(FileId::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn accepted_paths_have_only_plain_segments(s in "[a-z./]{0,12}") {
            if let Ok(p) = CatalogPath::parse(&s) {
                prop_assert!(!p.as_str().starts_with('/'));
                for seg in p.as_str().split('/') {
                    prop_assert!(!seg.is_empty() && seg != "." && seg != "..");
                }
            }
        }

        #[test]
        fn case_ref_round_trips(s in "[A-Za-z0-9][A-Za-z0-9._-]{0,63}") {
            let r = CaseRef::parse(&s);
            prop_assert!(r.is_ok());
            prop_assert_eq!(r.map(|r| r.to_string()), Ok(s));
        }
    }
}
