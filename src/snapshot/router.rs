//! The route matcher: pure code, no I/O, no allocation per lookup.
//!
//! Patterns arrive parsed (their syntax is the config's:
//! [`crate::config::pattern`]); this module matches requests against them.
//!
//! Order: an explicit `priority` (higher first) wins; then a route with a host
//! beats one without (exact host before `*.domain`); then exact paths beat
//! patterns; then the longer literal text wins; then routes listing methods
//! beat catch-all ones; ties keep config order. A path that matches some
//! route but not with this method yields [`Match::MethodNotAllowed`] with the
//! `Allow` value precomputed.

use http::Method;

pub use crate::config::pattern::{HostPattern, PathPattern};

/// Matching (the syntax and its parser live in `config::pattern`).
impl PathPattern {
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

impl HostPattern {
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

    /// A route's methods; `HEAD` is implied by `GET`, none means
    /// [`MethodSet::ALL`].
    pub fn of<'a>(methods: impl IntoIterator<Item = &'a Method>) -> MethodSet {
        let mut bits = 0u16;
        for m in methods {
            bits |= Self::bit(m);
        }
        if bits == 0 {
            return MethodSet::ALL;
        }
        if bits & 1 != 0 {
            bits |= 1 << 1;
        }
        MethodSet(bits)
    }

    /// [`MethodSet::of`] method names, in any case (tests and benches: a
    /// name that is not one of the eight methods is left out).
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> MethodSet {
        let methods: Vec<&Method> = names
            .iter()
            .filter_map(|n| {
                KNOWN
                    .iter()
                    .find(|m| m.as_str().eq_ignore_ascii_case(n.as_ref()))
            })
            .collect();
        if methods.is_empty() && !names.is_empty() {
            return MethodSet(0);
        }
        MethodSet::of(methods)
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
        other_host.host = Some(HostPattern::parse("*.example.com").unwrap());
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
