//! Records the git commit for `flexgate version` (absent outside a checkout).
fn main() {
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(out) = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
    {
        if out.status.success() {
            let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
            println!("cargo:rustc-env=FLEXGATE_GIT_COMMIT={sha}");
        }
    }
}
