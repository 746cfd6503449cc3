//! `flexgate` binary: everything lives in the library; see `flexgate --help`.

fn main() {
    std::process::exit(flexgate::cli::run());
}
