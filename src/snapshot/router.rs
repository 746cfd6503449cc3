//! The route matcher: pure code, no I/O, no allocation per lookup.
//!
//! Patterns:
//! - `/exact` — that path only;
//! - `/prefix/*` — `/prefix` itself, `/prefix/` and everything below;
//! - `/raw*` — any path starting with the text `/raw` (`/rawdata` too);
//! - `/a/*/b/*` — a `*` in the middle stands for exactly one segment, a
//!   final `*` for everything below (as with `/prefix/*`).
//!
//! Order: an explicit `priority` (higher first) wins; then a route with a host
//! beats one without (exact host before `*.domain`); then exact paths beat
//! patterns; then the longer literal text wins; then routes listing methods
//! beat catch-all ones; ties keep config order. A path that matches some
//! route but not with this method yields [`Match::MethodNotAllowed`] with the
//! `Allow` value precomputed.

use http::Method;

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

    fn literal_len(&self) -> usize {
        match self {
            PathPattern::Exact(s) | PathPattern::Prefix(s) | PathPattern::RawPrefix(s) => s.len(),
            PathPattern::Glob { segments, .. } => {
                segments.iter().flatten().map(|s| s.len() + 1).sum()
            }
        }
    }

    /// True when `path` (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(s) => path == s,
            PathPattern::Prefix(s) => {
                path.starts_with(s.as_str())
                    && (path.len() == s.len() || path.as_bytes()[s.len()] == b'/' || s.is_empty())
            }
            PathPattern::RawPrefix(s) => path.starts_with(s.as_str()),
            PathPattern::Glob { segments, rest } => {
                let Some(mut remaining) = path.strip_prefix('/') else {
                    return false;
                };
                for (i, seg) in segments.iter().enumerate() {
                    let (head, tail) = match remaining.find('/') {
                        Some(n) => (&remaining[..n], Some(&remaining[n + 1..])),
                        None => (remaining, None),
                    };
                    match seg {
                        Some(lit) if lit != head => return false,
                        None if head.is_empty() => return false,
                        _ => {}
                    }
                    match tail {
                        Some(t) => remaining = t,
                        None => return i == segments.len() - 1,
                    }
                }
                *rest
            }
        }
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

/// Host pattern: exact (`api.example.com`) or suffix (`*.example.com`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    pub fn parse(h: &str) -> HostPattern {
        let h = h.to_ascii_lowercase();
        match h.strip_prefix('*') {
            Some(suffix) => HostPattern::Suffix(suffix.to_string()),
            None => HostPattern::Exact(h),
        }
    }

    /// `host` is lowercase and has no port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

const KNOWN: [Method; 8] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::TRACE,
];

/// A set of methods as a bit mask; empty list = every method but `TRACE`
/// (which reflects the request, headers and cookies included, so a route
/// must list it to allow it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodSet(u16);

/// Bit of `TRACE` in [`KNOWN`].
const TRACE_BIT: u16 = 1 << 7;

impl MethodSet {
    pub const ALL: MethodSet = MethodSet(!TRACE_BIT);

    /// From method names; `HEAD` is implied by `GET`.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> MethodSet {
        if names.is_empty() {
            return MethodSet::ALL;
        }
        let mut bits = 0u16;
        for n in names {
            if let Some(i) = KNOWN
                .iter()
                .position(|m| m.as_str().eq_ignore_ascii_case(n.as_ref()))
            {
                bits |= 1 << i;
            }
        }
        if bits & 1 != 0 {
            bits |= 1 << 1;
        }
        MethodSet(bits)
    }

    fn bit(m: &Method) -> u16 {
        match KNOWN.iter().position(|k| k == m) {
            Some(i) => 1 << i,
            None => 1 << 15,
        }
    }

    pub fn contains(self, m: &Method) -> bool {
        self.0 & Self::bit(m) != 0
    }

    fn allow_header(self) -> String {
        KNOWN
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One routing rule as the router sees it.
#[derive(Clone, Debug)]
pub struct RouteRule {
    pub pattern: PathPattern,
    pub host: Option<HostPattern>,
    pub methods: MethodSet,
    pub priority: i32,
}

/// Outcome of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'a, T> {
    Found(&'a T),
    /// The path matched, the method did not; the value for `Allow`.
    MethodNotAllowed(&'a str),
    NotFound,
}

struct Entry<T> {
    rule: RouteRule,
    value: T,
    /// `Allow` value for everything sharing this entry's path and host.
    allow: String,
}

/// Immutable, ordered route table.
pub struct Router<T> {
    entries: Vec<Entry<T>>,
}

impl<T> Router<T> {
    /// Builds the table; `rules` in config order.
    pub fn new(rules: Vec<(RouteRule, T)>) -> Router<T> {
        let mut indexed: Vec<(usize, RouteRule, T)> = rules
            .into_iter()
            .enumerate()
            .map(|(i, (r, v))| (i, r, v))
            .collect();
        indexed.sort_by(|a, b| {
            let key = |r: &RouteRule| {
                let host_rank = match r.host {
                    Some(HostPattern::Exact(_)) => 2,
                    Some(HostPattern::Suffix(_)) => 1,
                    None => 0,
                };
                let exact = matches!(r.pattern, PathPattern::Exact(_));
                (
                    r.priority,
                    host_rank,
                    exact,
                    r.pattern.literal_len(),
                    r.methods != MethodSet::ALL,
                )
            };
            key(&b.1).cmp(&key(&a.1)).then(a.0.cmp(&b.0))
        });
        let mut entries: Vec<Entry<T>> = indexed
            .into_iter()
            .map(|(_, rule, value)| Entry {
                rule,
                value,
                allow: String::new(),
            })
            .collect();
        // Allow header: union of methods of all entries with the same path and host.
        for i in 0..entries.len() {
            let mut bits = 0u16;
            for e in &entries {
                if e.rule.pattern == entries[i].rule.pattern && e.rule.host == entries[i].rule.host
                {
                    bits |= e.rule.methods.0;
                }
            }
            entries[i].allow = MethodSet(bits).allow_header();
        }
        Router { entries }
    }

    /// Finds the route for a request. `host` lowercase without port (may be empty).
    pub fn find(&self, host: &str, method: &Method, path: &str) -> Match<'_, T> {
        let mut not_allowed: Option<&str> = None;
        for e in &self.entries {
            if let Some(h) = &e.rule.host {
                if !h.matches(host) {
                    continue;
                }
            }
            if !e.rule.pattern.matches(path) {
                continue;
            }
            if e.rule.methods.contains(method) {
                return Match::Found(&e.value);
            }
            if not_allowed.is_none() {
                not_allowed = Some(&e.allow);
            }
        }
        match not_allowed {
            Some(a) => Match::MethodNotAllowed(a),
            None => Match::NotFound,
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(path: &str) -> RouteRule {
        RouteRule {
            pattern: PathPattern::parse(path).unwrap(),
            host: None,
            methods: MethodSet::ALL,
            priority: 0,
        }
    }

    #[test]
    fn pattern_kinds() {
        let p = PathPattern::parse("/api/users/*").unwrap();
        assert!(p.matches("/api/users"));
        assert!(p.matches("/api/users/"));
        assert!(p.matches("/api/users/42/orders"));
        assert!(!p.matches("/api/usersx"));
        assert!(!p.matches("/api"));
        let all = PathPattern::parse("/*").unwrap();
        assert!(all.matches("/") && all.matches("/anything/at/all"));
        let raw = PathPattern::parse("/files*").unwrap();
        assert!(raw.matches("/files") && raw.matches("/files2/x") && !raw.matches("/file"));
        let mid = PathPattern::parse("/api/*/items").unwrap();
        assert!(mid.matches("/api/7/items"));
        assert!(!mid.matches("/api/7/items/9"));
        assert!(!mid.matches("/api//items"));
        assert!(!mid.matches("/api/7/8/items"));
        let mid_rest = PathPattern::parse("/api/*/items/*").unwrap();
        assert!(mid_rest.matches("/api/7/items/9/x"));
        assert!(mid_rest.matches("/api/7/items"));
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
    fn most_specific_wins_and_priority_overrides() {
        let r = Router::new(vec![
            (rule("/*"), "catch-all"),
            (rule("/api/*"), "api"),
            (rule("/api/users/*"), "users"),
            (rule("/api/users/me"), "me"),
        ]);
        assert_eq!(
            r.find("", &Method::GET, "/api/users/me"),
            Match::Found(&"me")
        );
        assert_eq!(
            r.find("", &Method::GET, "/api/users/7"),
            Match::Found(&"users")
        );
        assert_eq!(
            r.find("", &Method::GET, "/api/orders"),
            Match::Found(&"api")
        );
        assert_eq!(r.find("", &Method::GET, "/"), Match::Found(&"catch-all"));

        let mut boosted = rule("/*");
        boosted.priority = 10;
        let r = Router::new(vec![(rule("/api/users/me"), "me"), (boosted, "boosted")]);
        assert_eq!(
            r.find("", &Method::GET, "/api/users/me"),
            Match::Found(&"boosted")
        );
    }

    #[test]
    fn host_and_methods() {
        let mut get = rule("/items");
        get.methods = MethodSet::from_names(&["GET"]);
        let mut post = rule("/items");
        post.methods = MethodSet::from_names(&["post"]);
        let mut other_host = rule("/items");
        other_host.host = Some(HostPattern::parse("*.example.com"));
        other_host.methods = MethodSet::from_names(&["DELETE"]);
        let r = Router::new(vec![(get, "get"), (post, "post"), (other_host, "del")]);
        assert_eq!(
            r.find("x.com", &Method::GET, "/items"),
            Match::Found(&"get")
        );
        assert_eq!(
            r.find("x.com", &Method::HEAD, "/items"),
            Match::Found(&"get")
        );
        assert_eq!(
            r.find("x.com", &Method::POST, "/items"),
            Match::Found(&"post")
        );
        assert_eq!(
            r.find("x.com", &Method::PUT, "/items"),
            Match::MethodNotAllowed("GET, HEAD, POST")
        );
        assert_eq!(
            r.find("a.example.com", &Method::DELETE, "/items"),
            Match::Found(&"del")
        );
        assert_eq!(
            r.find("example.com", &Method::DELETE, "/items"),
            Match::MethodNotAllowed("GET, HEAD, POST")
        );
        assert_eq!(r.find("x.com", &Method::GET, "/nope"), Match::NotFound);
        // TRACE only where a route lists it.
        let r = Router::new(vec![(rule("/*"), "all")]);
        assert_eq!(
            r.find("", &Method::TRACE, "/x"),
            Match::MethodNotAllowed("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")
        );
        let mut trace = rule("/debug");
        trace.methods = MethodSet::from_names(&["TRACE"]);
        let r = Router::new(vec![(trace, "trace")]);
        assert_eq!(r.find("", &Method::TRACE, "/debug"), Match::Found(&"trace"));
    }
}
