//! Files replaced whole: the config file rewritten by the embedded store,
//! its `.prev` copy, the key store and the database-mode config cache are
//! all written through [`write`], so a crash at any moment leaves the old or
//! the new content, never a torn file.
//!
//! Imports nothing of the project.

use std::path::Path;

/// Replaces `path` with `bytes`: write a temp file in the same folder
/// (mode 0600), fsync it, rename it over `path`, fsync the folder. On an
/// error the temp file is removed and `path` is left as it was.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let attempt = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    attempt().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
