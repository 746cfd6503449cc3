//! The canonical-target property (`property/mod.rs`) over generated
//! targets: a bounded run on stable Rust, in every `cargo test`. The same
//! property runs unbounded as the fuzz target in `tests/fuzz/` (README,
//! "Security model").

mod property;

use flexgate::proxy::canonical::{EscapedSlashes, PathParameters, PathPolicy};
use proptest::prelude::*;

/// Pieces that make bypasses: escapes of every kind, dots, slashes,
/// parameters, backslashes, raw non-ASCII, and the route names.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "/", "//", "admin", "api", "items", "files", "a", "b", "x", ".", "..", "%2e", "%2E",
            "%2f", "%2F", "%5c", "%5C", "%61", "%41", "%64min", "%3b", "%3B", ";", ";x=1", "\\",
            "%25", "%252e", "%252F", "%", "%4", "%zz", "?", "?a=%2F..", "#", "%00", "%c3%a9",
            "%C3", "\u{e9}", " ", "~", "%7e", "%20", "%3F", "*", "@", ":", "\"", "|",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 1..3),
    ]
}

fn target() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec!["/", "", "http://h", "HTTPS://h:1/", "*", "x:"]),
        prop::collection::vec(piece(), 0..12),
    )
        .prop_map(|(start, pieces)| {
            let mut t = start.as_bytes().to_vec();
            for p in pieces {
                t.extend_from_slice(&p);
            }
            t
        })
}

fn policies() -> Vec<PathPolicy> {
    vec![
        PathPolicy::default(),
        PathPolicy {
            keep_repeated_slashes: true,
            escaped_slashes: EscapedSlashes::Keep,
            path_parameters: PathParameters::IgnoreForMatching,
        },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 20_000,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn every_accepted_target_is_canonical_and_routes_as_the_upstream_reads_it(raw in target()) {
        let router = property::router();
        for policy in policies() {
            property::check(&raw, &policy, &router);
        }
    }

    #[test]
    fn arbitrary_bytes_never_break_the_property(raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let router = property::router();
        for policy in policies() {
            property::check(&raw, &policy, &router);
        }
    }
}

/// Cases found while writing the property, kept as plain examples.
#[test]
fn known_cases() {
    let router = property::router();
    for raw in [
        &b"/admin%3bx/secret"[..],
        b"/x/..;/admin/secret",
        b"/%2e%2e/admin",
        b"//admin//x",
        b"http://h//%61dmin",
        b"/admin/caf\xc3\xa9",
        b"/a%252e",
    ] {
        for policy in policies() {
            property::check(raw, &policy, &router);
        }
    }
}
