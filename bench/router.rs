//! Route matcher cost: `cargo bench --bench router`.
//!
//! A table shaped like a real gateway's (exact paths, prefixes, globs, host
//! routes, method splits) and lookups that hit early, late, 405 and 404.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use flexgate::snapshot::router::{HostPattern, MethodSet, PathPattern, RouteRule, Router};
use http::Method;

fn table(n: usize) -> Router<usize> {
    let mut rules = Vec::new();
    for i in 0..n {
        let (path, host, methods): (String, Option<&str>, &[&str]) = match i % 5 {
            0 => (format!("/api/v{i}/users/*"), None, &[]),
            1 => (format!("/api/v{i}/orders"), None, &["GET", "POST"]),
            2 => (format!("/shop{i}/*/items/*"), None, &[]),
            3 => (format!("/svc{i}/*"), Some("*.example.com"), &["GET"]),
            _ => (format!("/static{i}*"), None, &[]),
        };
        let rule = RouteRule {
            pattern: PathPattern::parse(&path).unwrap(),
            host: host.map(|h| HostPattern::parse(h).unwrap()),
            methods: MethodSet::from_names(methods),
            priority: 0,
        };
        rules.push((rule, i));
    }
    rules.push((
        RouteRule {
            pattern: PathPattern::parse("/*").unwrap(),
            host: None,
            methods: MethodSet::from_names(&["GET"]),
            priority: -1,
        },
        usize::MAX,
    ));
    Router::new(rules)
}

fn bench(c: &mut Criterion) {
    for n in [10, 100] {
        let r = table(n);
        let mut g = c.benchmark_group(format!("router/{n}-routes"));
        g.bench_function("prefix hit", |b| {
            b.iter(|| {
                r.find(
                    black_box("api.local"),
                    &Method::GET,
                    black_box("/api/v5/users/42"),
                )
            })
        });
        g.bench_function("exact hit", |b| {
            b.iter(|| {
                r.find(
                    black_box("api.local"),
                    &Method::GET,
                    black_box("/api/v6/orders"),
                )
            })
        });
        g.bench_function("glob hit", |b| {
            b.iter(|| {
                r.find(
                    black_box("api.local"),
                    &Method::GET,
                    black_box("/shop7/abc/items/9"),
                )
            })
        });
        g.bench_function("host hit", |b| {
            b.iter(|| {
                r.find(
                    black_box("a.example.com"),
                    &Method::GET,
                    black_box("/svc8/x"),
                )
            })
        });
        g.bench_function("405", |b| {
            b.iter(|| {
                r.find(
                    black_box("api.local"),
                    &Method::DELETE,
                    black_box("/api/v6/orders"),
                )
            })
        });
        g.bench_function("catch-all", |b| {
            b.iter(|| {
                r.find(
                    black_box("api.local"),
                    &Method::GET,
                    black_box("/nothing/matches/here"),
                )
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
