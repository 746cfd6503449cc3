//! Where the upgrade socket and the pid file live by default: a directory
//! only the gateway's user can write — `$RUNTIME_DIRECTORY` (systemd's
//! `RuntimeDirectory=`), else `$XDG_RUNTIME_DIR/flexgate`, else
//! `/tmp/flexgate-<uid>`. Start-up checks the directory (`runtime_dir`).

use std::path::PathBuf;

/// File name of the default `proxy.upgradeSock` in [`default_dir`].
pub const UPGRADE_SOCK: &str = "upgrade.sock";
/// File name of the default `proxy.pidFile` in [`default_dir`].
pub const PID_FILE: &str = "flexgate.pid";

fn absolute_env(name: &str) -> Option<PathBuf> {
    let value = std::env::var_os(name)?;
    let first = match value.to_str() {
        // systemd separates several RuntimeDirectory= entries with ':'.
        Some(s) => PathBuf::from(s.split(':').next().unwrap_or_default()),
        None => PathBuf::from(value),
    };
    first.is_absolute().then_some(first)
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The directory of the default upgrade socket and pid file.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = absolute_env("RUNTIME_DIRECTORY") {
        return dir;
    }
    if let Some(dir) = absolute_env("XDG_RUNTIME_DIR") {
        return dir.join("flexgate");
    }
    PathBuf::from(format!("/tmp/flexgate-{}", euid()))
}

/// `name` in [`default_dir`].
pub(super) fn default_path(name: &str) -> String {
    default_dir().join(name).to_string_lossy().into_owned()
}
