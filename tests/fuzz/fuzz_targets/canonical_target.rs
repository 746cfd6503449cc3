//! Fuzzes the canonical request target against its property: every
//! accepted target is a canonical fixed point, and the most lenient
//! upstream reading of it reaches the route the gateway chose
//! (`tests/property/mod.rs`).
#![no_main]

use flexgate::proxy::canonical::{EscapedSlashes, PathParameters, PathPolicy};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "../../property/mod.rs"]
mod property;

fuzz_target!(|data: &[u8]| {
    static ROUTER: OnceLock<flexgate::snapshot::router::Router<&'static str>> = OnceLock::new();
    let router = ROUTER.get_or_init(property::router);
    let lenient = PathPolicy {
        keep_repeated_slashes: true,
        escaped_slashes: EscapedSlashes::Keep,
        path_parameters: PathParameters::IgnoreForMatching,
    };
    for policy in [PathPolicy::default(), lenient] {
        property::check(data, &policy, router);
    }
});
