//! `admin:`, and what only a config file may hold (`…File` fields, the key store).

use crate::config::model::FileConfig;
use crate::config::ConfigError;

pub(super) fn check(e: &mut Vec<ConfigError>, cfg: &FileConfig) {
    let a = &cfg.admin;
    if let Some(n) = a.max_connections {
        if n == 0 || n > 100_000 {
            e.push(ConfigError::new("admin.maxConnections", "must be 1-100000"));
        }
    }
    for (i, h) in a.allowed_hosts.iter().enumerate() {
        if h.trim().is_empty() || h.contains(['*', '/', ' ', '@']) {
            e.push(ConfigError::new(
                format!("admin.allowedHosts[{i}]"),
                format!("{h:?} must be a host name or address, without a port"),
            ));
        }
    }
    e.extend(crate::config::secrets::unresolved_files(cfg));
    if let Some(ks) = cfg
        .security
        .auth
        .as_ref()
        .and_then(|a| a.key_store.as_deref())
    {
        if ks.trim().is_empty() || ks.contains('\0') {
            e.push(ConfigError::new(
                "security.auth.keyStore",
                "must be a file name (relative to the config file's folder)",
            ));
        }
    }
}
