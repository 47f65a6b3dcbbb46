//! Request path normalisation: the one reading of a path that routing and middleware both use.
//!
//! RFC 3986 §6.2.2: unreserved percent-escapes are decoded, other escapes upper-cased, and
//! dot-segments removed (§5.2.4); `//` is collapsed. Paths that could be read two ways by the
//! gateway and an upstream (encoded `/` or `\`, NUL, a raw `\`, climbing above the root) are
//! refused rather than guessed at. Pure functions: no allocation when the path is already normal.

use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadEscape,
    EncodedSeparator,
    Nul,
    Backslash,
    AboveRoot,
    NotUtf8,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "path must start with /",
            PathError::BadEscape => "malformed percent-escape",
            PathError::EncodedSeparator => "encoded / or \\ in path",
            PathError::Nul => "NUL in path",
            PathError::Backslash => "backslash in path",
            PathError::AboveRoot => "path climbs above the root",
            PathError::NotUtf8 => "path is not valid UTF-8",
        })
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` is certainly already normal, checked in one pass without allocating.
fn is_plainly_normal(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' | b'\\' | 0 => return false,
            b'/' if prev == b'/' => return false,
            // A segment starting with '.' might be "." or ".."; let the slow path decide.
            b'.' if prev == b'/' => {
                let next = path.get(i + 1).copied();
                if matches!(next, None | Some(b'/') | Some(b'.')) {
                    return false;
                }
            }
            _ => {}
        }
        prev = b;
    }
    true
}

/// Returns the normal form of an origin-form request path (no query).
pub fn normalize_path(path: &[u8]) -> Result<Cow<'_, str>, PathError> {
    if path.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plainly_normal(path) {
        return std::str::from_utf8(path).map(Cow::Borrowed).map_err(|_| PathError::NotUtf8);
    }
    // 1. Decode unreserved escapes, refuse separators and NUL, upper-case the rest.
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (path.get(i + 1).and_then(|&c| hex(c)), path.get(i + 2).and_then(|&c| hex(c)))
                else {
                    return Err(PathError::BadEscape);
                };
                let v = h * 16 + l;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::Nul),
                    v if is_unreserved(v) => decoded.push(v),
                    v => decoded.extend_from_slice(&[
                        b'%',
                        HEX_UPPER[usize::from(v >> 4)],
                        HEX_UPPER[usize::from(v & 15)],
                    ]),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // 2. Remove dot-segments and empty segments.
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded[1..].split(|&b| b == b'/') {
        trailing_slash = false;
        match seg {
            b"" => trailing_slash = true,
            b"." => trailing_slash = true,
            b".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for seg in &segments {
        out.push('/');
        out.push_str(std::str::from_utf8(seg).map_err(|_| PathError::NotUtf8)?);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize_path(p.as_bytes()).map(|c| c.into_owned())
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in ["/", "/api/users", "/api/users/", "/a.b/c..d/.e", "/x%20y"] {
            let out = normalize_path(p.as_bytes()).expect("valid");
            assert_eq!(out, p);
        }
        assert!(matches!(normalize_path(b"/api/users").expect("valid"), Cow::Borrowed(_)));
    }

    #[test]
    fn dot_segments_and_double_slashes_are_removed() {
        assert_eq!(n("/a/./b/../c"), Ok("/a/c".into()));
        assert_eq!(n("//a///b"), Ok("/a/b".into()));
        assert_eq!(n("/a/b/.."), Ok("/a/".into()));
        assert_eq!(n("/a/."), Ok("/a/".into()));
        assert_eq!(n("/%2e%2E/"), Err(PathError::AboveRoot));
        assert_eq!(n("/a/%2e%2e/b"), Ok("/b".into()));
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_uppercased() {
        assert_eq!(n("/%61pi/%7Euser"), Ok("/api/~user".into()));
        assert_eq!(n("/a%20b%3a"), Ok("/a%20b%3A".into()));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%00"), Err(PathError::Nul));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%4"), Err(PathError::BadEscape));
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn normalising_is_idempotent_and_never_leaves_dot_segments() {
        // A deterministic sweep over short paths built from the interesting pieces.
        let pieces = ["/", "a", ".", "..", "%2e", "%41", "%20", "//", "b/"];
        let mut seen = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let p = format!("/{a}{b}{c}");
                    if let Ok(once) = n(&p) {
                        seen += 1;
                        assert_eq!(n(&once).as_deref(), Ok(once.as_str()), "{p}");
                        assert!(!once.contains("//"), "{p} -> {once}");
                        assert!(!once.split('/').any(|s| s == "." || s == ".."), "{p} -> {once}");
                    }
                }
            }
        }
        assert!(seen > 100);
    }
}
