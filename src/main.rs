//! `flexgate` binary: everything lives in the library; see `flexgate --help`.

/// mimalloc: the request path allocates many small short-lived objects
/// (Pingora's header maps, buffers, tasks); glibc malloc spent about a
/// quarter of the instructions per request on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(flexgate::cli::run());
}
