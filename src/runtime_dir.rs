//! Where the upgrade socket and the pid file live, and the start-up check
//! that nobody but the gateway's user can touch them.
//!
//! Whoever can write the directory of `proxy.upgradeSock` can put their own
//! socket there and hand listening sockets to a `start --upgrade`, or
//! replace `proxy.pidFile` so that a reload signals another process. The
//! defaults therefore live in a directory only the gateway's user can
//! write: `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`), else
//! `$XDG_RUNTIME_DIR/flexgate`, else `/tmp/flexgate-<uid>`; the last two are
//! created with mode 0700 when missing. `flexgate start` refuses either path
//! (defaults or explicit) when its directory is writable by its group or by
//! other users, or belongs to another user.
//!
//! The defaults themselves are config knowledge (`config::runtime`); this
//! module checks and creates directories at start.

use crate::config::runtime::{default_dir, euid};
use crate::config::BootConfig;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The directory a socket or file path lives in (`.` for a bare name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates the default directory (mode 0700) when it is missing. Only the
/// last component is created: its parent (`/tmp`, `$XDG_RUNTIME_DIR`) must exist.
fn create_default(dir: &Path) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot set mode 0700 on {}: {e}", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

/// Why `dir` is not a safe home for the socket or pid file, if it is not.
/// `is_default`: also refuse a symbolic link (the gateway made it itself).
fn check_dir(dir: &Path, is_default: bool) -> Result<(), String> {
    let shown = dir.display();
    if is_default {
        if let Ok(m) = std::fs::symlink_metadata(dir) {
            if m.file_type().is_symlink() {
                return Err(format!(
                    "its directory {shown} is a symbolic link; remove it and the gateway creates a private directory (mode 0700)"
                ));
            }
        }
    }
    let meta = std::fs::metadata(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("its directory {shown} does not exist"),
        _ => format!("cannot inspect its directory {shown}: {e}"),
    })?;
    if !meta.is_dir() {
        return Err(format!("{shown} is not a directory"));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(format!(
            "its directory {shown} belongs to uid {}, not to the gateway's user (uid {me}); use a directory the gateway's user owns and only it can write",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "its directory {shown} is writable by its group or by other users (mode {mode:04o}); use a directory only the gateway's user can write (chmod 0700), such as the default"
        ));
    }
    Ok(())
}

/// Start-up check of `proxy.upgradeSock` and `proxy.pidFile`: creates the
/// default directory when a path uses it, then refuses a directory that the
/// group or other users can write or that another user owns. Errors name the field.
pub fn check(boot: &BootConfig) -> Result<(), String> {
    let default = default_dir();
    for (field, path) in [
        ("proxy.upgradeSock", &boot.upgrade_sock),
        ("proxy.pidFile", &boot.pid_file),
    ] {
        let dir = parent(Path::new(path));
        let is_default = dir == default;
        let result = if is_default {
            check_dir(&dir, true).or_else(|_| {
                // Missing: create it; anything else is refused below.
                if std::fs::symlink_metadata(&dir).is_err() {
                    create_default(&dir)?;
                }
                check_dir(&dir, true)
            })
        } else {
            check_dir(&dir, false)
        };
        result.map_err(|e| format!("{field}: {path}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_lives_in_the_current_directory() {
        assert_eq!(parent(Path::new("x.sock")), PathBuf::from("."));
        assert_eq!(parent(Path::new("/run/a/x.sock")), PathBuf::from("/run/a"));
    }

    #[test]
    fn group_or_other_write_and_missing_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        std::fs::create_dir(&d).unwrap();
        for (mode, ok) in [
            (0o700, true),
            (0o755, true),
            (0o770, false),
            (0o1777, false),
        ] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(check_dir(&d, false).is_ok(), ok, "mode {mode:o}");
        }
        let err = check_dir(&tmp.path().join("nope"), false).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn a_default_directory_may_not_be_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        assert!(check_dir(&link, false).is_ok());
        let err = check_dir(&link, true).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
    }
}
