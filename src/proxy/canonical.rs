//! The canonical request target: what the router matches is what the
//! upstream receives.
//!
//! Every request's target is turned into one canonical origin-form path once,
//! before IP rules, routing, limits and authentication; the request head is
//! rewritten to those bytes, so every later phase and the upstream see the
//! same path. Anything that cannot be canonicalised safely is refused (400).
//!
//! Target forms (RFC 9112 §3.2):
//! - origin-form `/path?query` — the usual case;
//! - absolute-form `http(s)://authority/path?query` — routed on its path; its
//!   authority replaces `Host`; forwarded in origin-form;
//! - asterisk-form `*` — `OPTIONS` only (answered by the gateway itself);
//! - anything else (authority-form, other schemes, `x:/a`) is refused.
//!
//! The path (the query is forwarded as received, minus nothing):
//! - `%XX` of an unreserved character (`A–Z a–z 0–9 - . _ ~`) is decoded;
//!   every other escape is kept, with upper-case hex;
//! - bytes that are not allowed raw in a path (`"`, `<`, `>`, `^`, `` ` ``,
//!   `{`, `|`, `}`, non-ASCII) are percent-encoded;
//! - refused: an escaped `/` (unless `proxy.paths.escapedSlashes: keep`),
//!   an escaped `\`, `;` or NUL, double encoding (`%25` followed by two hex
//!   digits), a raw `\`, control bytes, a malformed escape, a fragment;
//! - repeated slashes are merged (unless `proxy.paths.mergeSlashes: false`);
//! - dot segments (`.`, `..`), raw or after decoding, are refused;
//! - `;` path parameters are refused by default; with
//!   `proxy.paths.pathParameters: ignoreForMatching` they are kept in the
//!   forwarded path and removed from every segment for matching, so
//!   `/admin;x/secret` matches the `/admin/*` route, as a servlet container
//!   would read it.
//!
//! The host: lower case, one trailing dot removed, the port ignored for
//! matching. An HTTP/1.1 request without `Host` is refused (RFC 9112 §3.2).
//!
//! The property (`tests/property/mod.rs`, run as a bounded test and as a
//! fuzz target): canonicalising a canonical target changes nothing, and
//! however leniently an upstream reads an accepted target (decoding every
//! escape, `\` as `/`, dropping `;` parameters, merging slashes, resolving
//! dot segments), it reaches the route the gateway chose.

use super::ctx::RequestCtx;
use super::respond::Reject;
pub use crate::config::model::{
    EscapedSlashesMode as EscapedSlashes, PathParametersMode as PathParameters,
};
pub use crate::snapshot::PathPolicy;
use http::{header, HeaderValue, Method};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::borrow::Cow;

/// What [`apply`] did with the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The head now carries the canonical target: route it.
    Routed,
    /// `OPTIONS *`: for the gateway to answer.
    Asterisk,
}

/// Rewrites the request head to its canonical target (and `Host` to an
/// absolute-form target's authority). Runs once, before anything reads the
/// path.
pub fn apply(
    session: &mut Session,
    ctx: &mut RequestCtx,
    policy: &PathPolicy,
) -> Result<Applied, Reject> {
    let req = session.req_header();
    let (rewritten, authority) = match canonicalise(req.raw_path(), &req.method, policy) {
        Ok(Target::Path {
            rewritten,
            authority,
            match_path,
        }) => {
            ctx.match_path = match_path;
            (rewritten, authority.map(HeaderValue::from_str))
        }
        Ok(Target::Asterisk) => return Ok(Applied::Asterisk),
        Err(why) => return Err(Reject::BadRequest(why.0.into())),
    };
    let req = session.req_header_mut();
    if let Some(Ok(authority)) = authority {
        req.insert_header(header::HOST, authority)
            .map_err(|_| Reject::BadRequest("invalid request target".into()))?;
    }
    if let Some(target) = rewritten {
        req.set_raw_path(target.as_bytes())
            .map_err(|_| Reject::BadRequest("invalid request target".into()))?;
    }
    Ok(Applied::Routed)
}

/// The host routes match: from `Host`, or the target's authority for
/// HTTP/1.0 without one. An HTTP/1.1 request needs a `Host`.
pub fn request_host(req: &RequestHeader) -> Result<Cow<'_, str>, Reject> {
    let host = match req.headers.get(header::HOST) {
        Some(h) => route_host(h.as_bytes()),
        None if req.version == http::Version::HTTP_11 => {
            Err(Refusal("an HTTP/1.1 request needs a Host header"))
        }
        None => Ok(Cow::Borrowed(req.uri.authority().map_or("", |a| a.host()))),
    };
    host.map_err(|why| Reject::BadRequest(why.0.into()))
}

/// Why a target was refused (the 400's message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

/// The canonical form of one request target.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// An origin-form target.
    Path {
        /// The canonical path and query to forward; `None` when the received
        /// bytes already are canonical (the common case: nothing allocated).
        rewritten: Option<String>,
        /// The authority of an absolute-form target: it replaces `Host`.
        authority: Option<&'a str>,
        /// The path routes match, when it differs from the canonical path
        /// (`;` parameters removed).
        match_path: Option<String>,
    },
    /// `OPTIONS *`.
    Asterisk,
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Byte classes for the path.
const PLAIN: u8 = 1; // unreserved, sub-delims but ';', ':' and '@': kept as is
const ENCODE: u8 = 2; // allowed by parsers but not raw in a path: percent-encoded
const REFUSE: u8 = 3; // control bytes, space, '\', '#'

static CLASS: [u8; 256] = {
    let mut t = [ENCODE; 256];
    let mut b = 0;
    while b < 0x21 {
        t[b] = REFUSE;
        b += 1;
    }
    t[0x7f] = REFUSE;
    t[b'\\' as usize] = REFUSE;
    t[b'#' as usize] = REFUSE;
    let plain = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,=:@";
    let mut i = 0;
    while i < plain.len() {
        t[plain[i] as usize] = PLAIN;
        i += 1;
    }
    // '/', '%' and ';' are handled on their own.
    t[b'/' as usize] = 0;
    t[b'%' as usize] = 0;
    t[b';' as usize] = 0;
    t
};

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Canonicalises a raw request target (as received on the request line).
pub fn canonicalise<'a>(
    raw: &'a [u8],
    method: &Method,
    policy: &PathPolicy,
) -> Result<Target<'a>, Refusal> {
    match raw.first() {
        Some(b'/') => {
            let (rewritten, match_path) = canonical_path_and_query(raw, policy, false)?;
            Ok(Target::Path {
                rewritten,
                authority: None,
                match_path,
            })
        }
        Some(b'*') if raw.len() == 1 => {
            if method == Method::OPTIONS {
                Ok(Target::Asterisk)
            } else {
                Err(Refusal("the '*' request target is only valid with OPTIONS"))
            }
        }
        Some(_) => {
            let (authority, rest) = split_absolute(raw)?;
            let (rewritten, match_path) = if rest.is_empty() || rest[0] == b'?' {
                let mut with_root = Vec::with_capacity(rest.len() + 1);
                with_root.push(b'/');
                with_root.extend_from_slice(rest);
                canonical_path_and_query(&with_root, policy, true)?
            } else {
                canonical_path_and_query(rest, policy, true)?
            };
            Ok(Target::Path {
                rewritten,
                authority: Some(authority),
                match_path,
            })
        }
        None => Err(Refusal("empty request target")),
    }
}

/// Splits `http(s)://authority/rest` into the authority and the rest.
fn split_absolute(raw: &[u8]) -> Result<(&str, &[u8]), Refusal> {
    const NOT_ACCEPTED: Refusal = Refusal(
        "request target must be origin-form (/path), absolute-form (http(s)://host/path) or '*'",
    );
    let after_scheme = if raw.len() > 7 && raw[..7].eq_ignore_ascii_case(b"http://") {
        &raw[7..]
    } else if raw.len() > 8 && raw[..8].eq_ignore_ascii_case(b"https://") {
        &raw[8..]
    } else {
        return Err(NOT_ACCEPTED);
    };
    let end = after_scheme
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after_scheme.len());
    let authority = &after_scheme[..end];
    if authority.is_empty() {
        return Err(Refusal("absolute-form target without a host"));
    }
    if !authority
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b))
    {
        return Err(Refusal("invalid authority in the request target"));
    }
    let authority = std::str::from_utf8(authority).map_err(|_| NOT_ACCEPTED)?;
    Ok((authority, &after_scheme[end..]))
}

/// Canonicalises `/path?query`. Returns the rewritten target (`None` when
/// unchanged and `force` is false) and the match path when it differs.
fn canonical_path_and_query(
    raw: &[u8],
    policy: &PathPolicy,
    force: bool,
) -> Result<(Option<String>, Option<String>), Refusal> {
    let (path, query) = match raw.iter().position(|&b| b == b'?') {
        Some(q) => (&raw[..q], Some(&raw[q..])),
        None => (raw, None),
    };
    if let Some(q) = query {
        if q.iter().any(|&b| b < 0x20 || b == 0x7f || b == b'#') {
            return Err(Refusal(
                "the query contains a control byte or a fragment ('#')",
            ));
        }
    }
    let canonical = canonical_path(path, policy)?;
    let match_path = match policy.path_parameters {
        PathParameters::IgnoreForMatching => {
            let p = canonical.as_deref().unwrap_or(path);
            if p.contains(&b';') {
                Some(strip_parameters(p))
            } else {
                None
            }
        }
        PathParameters::Refuse => None,
    };
    let rewritten = match (canonical, force) {
        (None, false) => None,
        (canonical, _) => {
            let mut out = canonical.unwrap_or_else(|| path.to_vec());
            if let Some(q) = query {
                out.extend_from_slice(q);
            }
            // Only ASCII bytes are ever emitted (everything else is escaped),
            // except in a query forwarded as received.
            Some(String::from_utf8(out).map_err(|_| Refusal("the query is not valid UTF-8"))?)
        }
    };
    Ok((rewritten, match_path))
}

/// Canonicalises a path (no query). `Ok(None)` = already canonical.
pub fn canonical_path(path: &[u8], policy: &PathPolicy) -> Result<Option<Vec<u8>>, Refusal> {
    if !path.starts_with(b"/") {
        return Err(Refusal("the path must start with '/'"));
    }
    // Fast path: one pass that only looks. Most paths are already canonical.
    let mut needs_work = false;
    let mut prev = 0u8;
    for &b in path {
        match CLASS[b as usize] {
            PLAIN => {}
            REFUSE => return Err(refusal_for_raw(b)),
            ENCODE => needs_work = true,
            _ => match b {
                b'%' => needs_work = true,
                b';' => {
                    if policy.path_parameters == PathParameters::Refuse {
                        return Err(Refusal("path parameters (';') are not accepted"));
                    }
                }
                _ => {
                    // '/'
                    if prev == b'/' && !policy.keep_repeated_slashes {
                        needs_work = true;
                    }
                }
            },
        }
        prev = b;
    }
    if !needs_work {
        check_dot_segments(path)?;
        return Ok(None);
    }
    let mut out: Vec<u8> = Vec::with_capacity(path.len() + 8);
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    path.get(i + 1).copied().and_then(hex_value),
                    path.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(Refusal("malformed percent-encoding in the path"));
                };
                let v = (h << 4) | l;
                if is_unreserved(v) {
                    out.push(v);
                } else if v == b'/' {
                    if policy.escaped_slashes == EscapedSlashes::Refuse {
                        return Err(Refusal("an escaped '/' (%2F) in the path is not accepted"));
                    }
                    out.extend_from_slice(b"%2F");
                } else if v == b'\\' {
                    return Err(Refusal("an escaped '\\' (%5C) in the path is not accepted"));
                } else if v == 0 {
                    return Err(Refusal("an escaped NUL (%00) in the path is not accepted"));
                } else if v == b';' {
                    // Some stacks decode before splitting off parameters.
                    return Err(Refusal("an escaped ';' (%3B) in the path is not accepted"));
                } else {
                    out.extend_from_slice(&[b'%', HEX[(v >> 4) as usize], HEX[(v & 15) as usize]]);
                }
                i += 3;
                continue;
            }
            b'/' => {
                if policy.keep_repeated_slashes || out.last() != Some(&b'/') {
                    out.push(b'/');
                }
            }
            b';' => out.push(b';'),
            _ => match CLASS[b as usize] {
                PLAIN => out.push(b),
                REFUSE => return Err(refusal_for_raw(b)),
                _ => out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]),
            },
        }
        i += 1;
    }
    check_dot_segments(&out)?;
    // Checked on the result: `%25%41F` decodes to `%25AF` too.
    if out
        .windows(5)
        .any(|w| w.starts_with(b"%25") && w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit())
    {
        return Err(Refusal(
            "double percent-encoding in the path is not accepted",
        ));
    }
    Ok(if out == path { None } else { Some(out) })
}

fn refusal_for_raw(b: u8) -> Refusal {
    match b {
        b'\\' => Refusal("a '\\' in the path is not accepted"),
        b'#' => Refusal("a fragment ('#') in the request target is not accepted"),
        _ => Refusal("a control byte or space in the request target is not accepted"),
    }
}

/// Refuses `.` and `..` segments, also when followed by `;` parameters.
fn check_dot_segments(path: &[u8]) -> Result<(), Refusal> {
    for seg in path.split(|&b| b == b'/') {
        let name = seg.split(|&b| b == b';').next().unwrap_or(seg);
        if name == b"." || name == b".." {
            return Err(Refusal(
                "dot segments ('.' or '..') in the path are not accepted",
            ));
        }
    }
    Ok(())
}

/// The path with every segment's `;…` removed.
fn strip_parameters(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split(|&b| b == b'/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let name = seg.split(|&b| b == b';').next().unwrap_or(seg);
        out.push_str(std::str::from_utf8(name).unwrap_or(""));
    }
    out
}

/// The host routes match: lower case, without port and one trailing dot.
/// `Err` for a value that is not a host name or address.
pub fn route_host(raw: &[u8]) -> Result<Cow<'_, str>, Refusal> {
    const BAD: Refusal = Refusal("invalid Host header");
    let text = std::str::from_utf8(raw).map_err(|_| BAD)?;
    let name = if let Some(v6) = text.strip_prefix('[') {
        let end = v6.find(']').ok_or(BAD)?;
        let after = &v6[end + 1..];
        if !(after.is_empty() || valid_port(after)) {
            return Err(BAD);
        }
        &text[..end + 2]
    } else {
        match text.rfind(':') {
            Some(c) if valid_port(&text[c..]) => &text[..c],
            Some(_) => return Err(BAD),
            None => text,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~[]:".contains(&b))
        || name.ends_with('.')
    {
        return Err(BAD);
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(name))
    }
}

/// `:digits` (possibly empty digits, as RFC 3986 allows).
fn valid_port(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Result<String, &'static str> {
        canon_with(raw, &PathPolicy::default())
    }

    fn canon_with(raw: &str, policy: &PathPolicy) -> Result<String, &'static str> {
        match canonicalise(raw.as_bytes(), &Method::GET, policy) {
            Ok(Target::Path { rewritten, .. }) => Ok(rewritten.unwrap_or_else(|| raw.to_string())),
            Ok(Target::Asterisk) => Ok("*".into()),
            Err(r) => Err(r.0),
        }
    }

    #[test]
    fn canonical_paths_are_untouched_without_allocating() {
        for p in [
            "/",
            "/admin/secret",
            "/a-b_c.d~e/x?q=%2F&y=1",
            "/x:y@z!$&'()*+,=",
        ] {
            match canonicalise(p.as_bytes(), &Method::GET, &PathPolicy::default()) {
                Ok(Target::Path {
                    rewritten: None,
                    authority: None,
                    match_path: None,
                }) => {}
                other => panic!("{p}: {other:?}"),
            }
        }
    }

    #[test]
    fn spellings_become_the_canonical_path() {
        assert_eq!(canon("/%61dmin/secret").unwrap(), "/admin/secret");
        assert_eq!(canon("//admin//secret").unwrap(), "/admin/secret");
        assert_eq!(canon("/a%7e%41?x=%61").unwrap(), "/a~A?x=%61");
        assert_eq!(canon("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(canon("/a%20b").unwrap(), "/a%20b");
        assert_eq!(canon("/a\"b|c").unwrap(), "/a%22b%7Cc");
        assert_eq!(canon("/%25").unwrap(), "/%25");
        assert_eq!(canon("/%25zz").unwrap(), "/%25zz");
        assert_eq!(canon("http://Example.com//admin").unwrap(), "/admin");
        assert_eq!(canon("HTTPS://h:8443").unwrap(), "/");
        assert_eq!(canon("http://h?x=1").unwrap(), "/?x=1");
    }

    #[test]
    fn unsafe_spellings_are_refused() {
        for bad in [
            "/x/..;/admin/secret",
            "/x/%2e%2e%2fadmin/secret",
            "/x/%2e%2e/admin",
            "/x/.%2E/admin",
            "/x/../admin",
            "/./admin",
            "/admin/.",
            "/admin;x/secret",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a%00",
            "/admin%3bx/secret",
            "/a%252e",
            "/a%25%41F",
            "/a%2",
            "/a%zz",
            "/a#frag",
            "x:/admin/secret",
            "admin/secret",
            "ftp://h/admin",
            "http:///admin",
            "http://user@h/admin",
            "*",
            "",
        ] {
            assert!(canon(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn options_asterisk() {
        assert_eq!(
            canonicalise(b"*", &Method::OPTIONS, &PathPolicy::default()),
            Ok(Target::Asterisk)
        );
    }

    #[test]
    fn policy_options() {
        let keep = PathPolicy {
            keep_repeated_slashes: true,
            escaped_slashes: EscapedSlashes::Keep,
            path_parameters: PathParameters::IgnoreForMatching,
        };
        assert_eq!(canon_with("//a%2fb", &keep).unwrap(), "//a%2Fb");
        match canonicalise(b"/admin;jsessionid=1/secret", &Method::GET, &keep) {
            Ok(Target::Path {
                rewritten: None,
                match_path: Some(m),
                ..
            }) => assert_eq!(m, "/admin/secret"),
            other => panic!("{other:?}"),
        }
        assert!(canon_with("/x/..;a/admin", &keep).is_err());
        assert!(canon_with("/x/%2e%2e%2fadmin", &keep).is_ok_and(|p| p == "/x/..%2Fadmin"));
    }

    #[test]
    fn canonical_output_is_a_fixed_point() {
        for raw in ["/%61dmin//x", "/caf%c3%a9", "/a\"b", "http://h/%7e"] {
            let once = canon(raw).unwrap();
            assert_eq!(canon(&once).unwrap(), once, "{raw}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(
            route_host(b"API.Example.com.:8080").unwrap(),
            "api.example.com"
        );
        assert_eq!(route_host(b"api.example.com").unwrap(), "api.example.com");
        assert_eq!(route_host(b"[::1]:80").unwrap(), "[::1]");
        assert_eq!(route_host(b"").unwrap(), "");
        for bad in [&b"a b"[..], b"a@b", b"a:b", b"a..", b"[::1", b"h:99999999"] {
            assert!(
                route_host(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
