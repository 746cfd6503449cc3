//! The canonical-target property, shared by the bounded stable test
//! (`tests/canonical_property.rs`) and the fuzz target (`tests/fuzz/`).
//!
//! For any raw request target, the canonicaliser either refuses it, or:
//! 1. its canonical form is a fixed point (canonicalising it again changes
//!    nothing, and routes the same way);
//! 2. the canonical form is plain: origin-form ASCII, no dot segments, no
//!    escaped `/`, `\`, `;` or NUL, no double encoding, escapes in upper-case
//!    hex and never of an unreserved character, no repeated slash;
//! 3. (default policy) an upstream reading the raw target as leniently as any
//!    framework does (decode every escape once, `\` as `/`, drop `;`
//!    parameters, merge slashes, resolve dot segments) reaches the route the
//!    gateway chose for the canonical form.
#![allow(dead_code)]

use flexgate::proxy::canonical::{canonicalise, PathPolicy, Target};
use flexgate::snapshot::router::{Match, MethodSet, PathPattern, RouteRule, Router};
use http::Method;

/// A route table with the shapes that matter for bypasses.
pub fn router() -> Router<&'static str> {
    let rule = |p: &str| RouteRule {
        pattern: PathPattern::parse(p).unwrap(),
        host: None,
        methods: MethodSet::ALL,
        priority: 0,
    };
    Router::new(vec![
        (rule("/admin/*"), "admin"),
        (rule("/admin"), "admin-exact"),
        (rule("/api/*/items/*"), "items"),
        (rule("/files*"), "files"),
        (rule("/a/b"), "ab"),
        (rule("/*"), "all"),
    ])
}

fn route(router: &Router<&'static str>, path: &[u8]) -> &'static str {
    let text = String::from_utf8_lossy(path);
    match router.find("", &Method::GET, &text) {
        Match::Found(r) => r,
        _ => "none",
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// How the most lenient upstream reads a path.
pub fn lenient(path: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' && i + 2 < path.len() {
            if let (Some(h), Some(l)) = (hex(path[i + 1]), hex(path[i + 2])) {
                decoded.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        decoded.push(if path[i] == b'\\' { b'/' } else { path[i] });
        i += 1;
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&b| b == b'/' || b == b'\\') {
        let name = seg.split(|&b| b == b';').next().unwrap_or(seg);
        match name {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            n => segments.push(n),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || (decoded.ends_with(b"/") && !segments.is_empty()) {
        out.push(b'/');
    }
    out
}

fn path_part(target: &[u8]) -> &[u8] {
    let end = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    &target[..end]
}

/// Checks the property for one raw target; panics with the case on a violation.
pub fn check(raw: &[u8], policy: &PathPolicy, router: &Router<&'static str>) {
    let Ok(Target::Path {
        rewritten,
        authority,
        match_path,
    }) = canonicalise(raw, &Method::GET, policy)
    else {
        return;
    };
    let canonical: Vec<u8> = match &rewritten {
        Some(r) => r.as_bytes().to_vec(),
        None => {
            assert!(authority.is_none(), "absolute-form is always rewritten");
            raw.to_vec()
        }
    };
    let show = || {
        format!(
            "raw {:?} → {:?}",
            String::from_utf8_lossy(raw),
            String::from_utf8_lossy(&canonical)
        )
    };
    // 1. A fixed point.
    match canonicalise(&canonical, &Method::GET, policy) {
        Ok(Target::Path {
            rewritten: None,
            authority: None,
            match_path: again,
        }) => assert_eq!(again, match_path, "{}", show()),
        other => panic!("not a fixed point: {} gives {other:?}", show()),
    }
    // 2. Plain.
    let path = path_part(&canonical);
    assert!(path.starts_with(b"/"), "{}", show());
    assert!(path.is_ascii(), "{}", show());
    if !policy.keep_repeated_slashes {
        assert!(!path.windows(2).any(|w| w == b"//"), "{}", show());
    }
    for (i, &b) in path.iter().enumerate() {
        assert!(
            b > b' ' && b != 0x7f && b != b'\\' && b != b'#',
            "{}",
            show()
        );
        if b == b'%' {
            let (h, l) = (path[i + 1], path[i + 2]);
            assert!(h.is_ascii_hexdigit() && l.is_ascii_hexdigit(), "{}", show());
            assert!(
                !h.is_ascii_lowercase() && !l.is_ascii_lowercase(),
                "{}",
                show()
            );
            let v = hex(h).unwrap() << 4 | hex(l).unwrap();
            assert!(
                !(v.is_ascii_alphanumeric() || b"-._~\\;\0".contains(&v)),
                "{}",
                show()
            );
            if v == b'/' {
                assert!(
                    policy.escaped_slashes != flexgate::proxy::canonical::EscapedSlashes::Refuse,
                    "{}",
                    show()
                );
            }
            if v == b'%' {
                let next = path.get(i + 3..i + 5).unwrap_or(b"");
                assert!(
                    !(next.len() == 2 && next.iter().all(u8::is_ascii_hexdigit)),
                    "{}",
                    show()
                );
            }
        }
    }
    for seg in path.split(|&b| b == b'/') {
        let name = seg.split(|&b| b == b';').next().unwrap_or(seg);
        assert!(name != b"." && name != b"..", "{}", show());
    }
    // 3. The upstream's lenient reading reaches the gateway's route.
    if *policy == PathPolicy::default() {
        let chosen = route(router, path);
        let raw_path = if authority.is_some() {
            path
        } else {
            path_part(raw)
        };
        let upstream_view = lenient(raw_path);
        assert_eq!(
            route(router, &upstream_view),
            chosen,
            "{}: the upstream reads {:?}",
            show(),
            String::from_utf8_lossy(&upstream_view)
        );
        assert_eq!(
            lenient(path),
            upstream_view,
            "raw and canonical read alike: {}",
            show()
        );
    }
}
