//! `flexgate` binary: everything lives in the library; see `flexgate --help`.

/// mimalloc: the request path allocates many small short-lived objects
/// (Pingora's header maps, buffers, tasks); glibc malloc spent about a
/// quarter of the instructions per request on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    no_transparent_huge_pages();
    std::process::exit(flexgate::cli::run());
}

/// Opts the process out of transparent huge pages before the heap grows.
/// mimalloc asks for them, and a gateway's heap is small and spread over
/// many connections: with them, 2 MB pages made the idle RSS 35 MB instead
/// of 23 MB, and each held connection cost far more than its buffers.
/// Throughput is unchanged (measured with `bench/run`).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and only sets a
    // flag of this process (inherited by children).
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
