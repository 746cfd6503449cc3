//! The path and host patterns of routes, as the config writes them: their
//! syntax and its checks. The router (`snapshot::router`) matches requests
//! against the parsed patterns; it never reads their text.
//!
//! Paths:
//! - `/exact` — that path only;
//! - `/prefix/*` — `/prefix` itself, `/prefix/` and everything below;
//! - `/raw*` — any path starting with the text `/raw` (`/rawdata` too);
//! - `/a/*/b/*` — a `*` in the middle stands for exactly one segment, a
//!   final `*` for everything below (as with `/prefix/*`).
//!
//! A pattern must be in the canonical form requests are routed on
//! (`proxy::canonical`): a route that could never match is refused.
//!
//! Hosts: `api.example.com` (exact) or `*.example.com` (any subdomain).

use super::text::FromText;
use std::fmt;

/// A parsed path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPattern {
    Exact(String),
    /// Matches the text itself, `text/` and everything below.
    Prefix(String),
    /// Matches any path starting with the text.
    RawPrefix(String),
    /// Segment pattern; `None` = one arbitrary segment. `rest` = a final `*`.
    Glob {
        segments: Vec<Option<String>>,
        rest: bool,
    },
}

impl PathPattern {
    /// Parses a route path; the error names what is wrong.
    pub fn parse(p: &str) -> Result<PathPattern, String> {
        if !p.starts_with('/') {
            return Err(format!("{p:?} must start with /"));
        }
        if p.bytes()
            .any(|b| b <= b' ' || b == b'?' || b == b'#' || b >= 0x7f)
        {
            return Err(format!(
                "{p:?} must not contain spaces, '?', '#' or non-ASCII bytes"
            ));
        }
        if let Some(why) = non_canonical(p) {
            return Err(format!(
                "{p:?} {why}: requests are routed on their canonical path, so this route could never match"
            ));
        }
        let stars = p.matches('*').count();
        if stars == 0 {
            return Ok(PathPattern::Exact(p.to_string()));
        }
        if stars == 1 && p.ends_with("/*") {
            return Ok(PathPattern::Prefix(p[..p.len() - 2].to_string()));
        }
        if stars == 1 && p.ends_with('*') && !p.ends_with("**") {
            return Ok(PathPattern::RawPrefix(p[..p.len() - 1].to_string()));
        }
        let parts: Vec<&str> = p[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut rest = false;
        for (i, part) in parts.iter().enumerate() {
            if *part == "*" {
                if i == parts.len() - 1 {
                    rest = true;
                } else {
                    segments.push(None);
                }
            } else if part.contains('*') {
                return Err(format!(
                    "{p:?}: '*' must stand for a whole path segment (like /a/*/b) or end the path"
                ));
            } else {
                segments.push(Some(part.to_string()));
            }
        }
        Ok(PathPattern::Glob { segments, rest })
    }

    /// The literal text before the first wildcard (used by strip-prefix/rewrite).
    pub fn literal_prefix(&self) -> &str {
        match self {
            PathPattern::Exact(s) | PathPattern::Prefix(s) | PathPattern::RawPrefix(s) => s,
            PathPattern::Glob { .. } => "",
        }
    }
}

impl FromText for PathPattern {
    fn from_text(text: &str) -> Result<Self, String> {
        PathPattern::parse(text)
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a path pattern (\"/exact\", \"/prefix/*\", \"/a/*/b\")")
    }
}

/// Why a route path is not in the canonical form requests are matched in
/// (see `proxy::canonical`), if it is not.
fn non_canonical(p: &str) -> Option<&'static str> {
    let b = p.as_bytes();
    if p.contains("//") {
        return Some("contains '//'");
    }
    if p.contains(';') || p.contains('\\') {
        return Some("contains ';' or '\\'");
    }
    if p.split('/').any(|s| s == "." || s == "..") {
        return Some("contains a dot segment");
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex =
                |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c));
            if !(hex(b.get(i + 1)) && hex(b.get(i + 2))) {
                return Some("has a '%' not followed by two upper-case hex digits");
            }
            let v = u8::from_str_radix(&p[i + 1..i + 3], 16).unwrap_or(0);
            if v.is_ascii_alphanumeric() || b"-._~".contains(&v) || v == b'/' {
                return Some("percent-encodes a character that requests carry decoded");
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    None
}

/// Host pattern: exact (`api.example.com`) or suffix (`*.example.com`),
/// lower-cased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its dot (`.example.com`).
    Suffix(String),
}

impl HostPattern {
    /// Parses `api.example.com` or `*.example.com` (letters, digits, `-`, `.`).
    pub fn parse(h: &str) -> Result<HostPattern, String> {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        if bare.is_empty()
            || !bare
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(format!("{h:?} must be a host name or \"*.domain\""));
        }
        let h = h.to_ascii_lowercase();
        Ok(match h.strip_prefix('*') {
            Some(suffix) => HostPattern::Suffix(suffix.to_string()),
            None => HostPattern::Exact(h),
        })
    }
}

impl FromText for HostPattern {
    fn from_text(text: &str) -> Result<Self, String> {
        HostPattern::parse(text)
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a host name or \"*.domain\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_kinds_and_refusals() {
        assert_eq!(
            PathPattern::parse("/api/*").unwrap(),
            PathPattern::Prefix("/api".into())
        );
        assert_eq!(
            PathPattern::parse("/files*").unwrap(),
            PathPattern::RawPrefix("/files".into())
        );
        assert_eq!(
            PathPattern::parse("/a/*/b/*").unwrap(),
            PathPattern::Glob {
                segments: vec![Some("a".into()), None, Some("b".into())],
                rest: true
            }
        );
        assert!(PathPattern::parse("api").is_err());
        assert!(PathPattern::parse("/a*b/c").is_err());
        assert!(PathPattern::parse("/a b").is_err());
        for not_canonical in [
            "/%61dmin/*",
            "//admin",
            "/a;b",
            "/a/../b",
            "/a/./b",
            "/a%2fb",
            "/a%2",
            "/a%e9",
        ] {
            assert!(
                PathPattern::parse(not_canonical).is_err(),
                "{not_canonical}"
            );
        }
        assert!(PathPattern::parse("/caf%C3%A9/*").is_ok());
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            HostPattern::parse("*.Example.com").unwrap(),
            HostPattern::Suffix(".example.com".into())
        );
        assert_eq!(
            HostPattern::parse("API.example.com").unwrap(),
            HostPattern::Exact("api.example.com".into())
        );
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("a b").is_err());
        assert!(HostPattern::parse("*x.com").is_err());
    }
}
