//! Configuration: the YAML model, its parsing and its validation.
//!
//! Owns turning text into a checked [`FileConfig`], and splitting it into
//! [`BootConfig`] (listeners, threads, grace periods: fixed for the life of a
//! process) and the dynamic part (upstreams, routes, security, limits, logging)
//! that `snapshot::compile` turns into the immutable request-time snapshot.
//!
//! Values are parsed into their types once, when the text is read
//! ([`text`]): validation and the snapshot compiler read the typed values,
//! never the strings again.
//!
//! Errors: a YAML syntax error stops reading and is reported with its
//! position; otherwise *every* unknown key, *every* value that does not
//! parse and *every* semantic problem is reported at once, each as
//! `path: message` (a bad value with its line and column in a file).
//! Nothing here touches the network or the request path.

pub mod credentials;
pub mod model;
pub mod pattern;
mod reader;
pub mod redact;
pub mod runtime;
pub mod schema;
pub mod secrets;
pub mod ssrf;
pub mod text;
pub mod units;
pub mod upstream;
mod validate;
pub mod yaml_guard;
pub use credentials::{
    webhook_secret_key, JwtAlgorithm, KeyAlgorithm, KeyDigest, KeyKind, PublicKeyPem,
};
pub use pattern::{HostPattern, PathPattern};
pub use ssrf::{host_allowed, SsrfPolicy, METADATA_BLOCK};
pub use text::{Cidr, FromText, Token, Written};
pub use upstream::{
    parse_endpoint_url, parse_target_url, HashKey, ProbePath, TargetUrl, UpstreamRef,
};

pub use model::*;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One problem found in a config, with the path of the offending key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// e.g. `routes[1].upstream`; empty for whole-file problems.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All problems of one config, printable one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and checks a config file (`${NAME}` and `…File` resolved, see
/// [`secrets`]).
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            "",
            format!("cannot read config file {}: {e}", path.display()),
        )])
    })?;
    parse_and_validate_at(&text, &base_dir(path))
}

/// The folder of a config file (relative paths in it start there).
pub fn base_dir(config_path: &Path) -> std::path::PathBuf {
    match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Parses the text of a config file, resolving `${NAME}` from the
/// environment and `…File` fields from `base`. `Ok`: not validated yet;
/// `Err`: every problem, as [`parse`] reports them.
pub fn parse_file_text(text: &str, base: &Path) -> Result<FileConfig, ConfigErrors> {
    let mut reading = if secrets::uses_interpolation(text) {
        let mut doc: serde_yaml::Value = serde_yaml::from_str(text)
            .map_err(|e| ConfigErrors(vec![ConfigError::new("", e.to_string())]))?;
        let mut errs = Vec::new();
        let lookup = |name: &str| std::env::var(name).ok();
        secrets::interpolate(&mut doc, "", &lookup, &mut errs);
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        // Read from the expanded text: its lines are not the file's, so
        // messages name no position.
        reader::read(&serde_yaml::to_string(&doc).unwrap_or_default(), false)?
    } else {
        reader::read(text, true)?
    };
    let unreadable = secrets::resolve_files(&mut reading.config, base);
    reading.problems.extend(unreadable);
    reading.finish()
}

/// [`parse_file_text`] then validation: every problem with its path.
pub fn parse_and_validate_at(text: &str, base: &Path) -> Result<FileConfig, ConfigErrors> {
    let config = parse_file_text(text, base)?;
    let errors = validate::validate(&config);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Parses YAML text and validates it, as a config file in the current
/// folder; every problem is reported with its path.
pub fn parse_and_validate(text: &str) -> Result<FileConfig, ConfigErrors> {
    parse_and_validate_at(text, Path::new("."))
}

/// Parses YAML text into the model. `Ok`: every value parsed and no key
/// is unknown (semantic checks are [`parse_and_validate`]'s). `Err`: every
/// unknown key and every value that does not parse, each with its path;
/// when only values were bad, with the semantic problems of the rest (the
/// text is wrong anyway: one answer says everything).
pub fn parse(text: &str) -> Result<FileConfig, ConfigErrors> {
    reader::read(text, true)?.finish()
}

/// Settings fixed for the life of a process (a change needs a restart or a
/// binary upgrade). Defaults are the edge profile of the README.
#[derive(Clone, Debug, PartialEq)]
pub struct BootConfig {
    pub listen: Vec<SocketAddr>,
    pub tls: Option<TlsSection>,
    pub threads: usize,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<String>,
    /// Where the token came from (`admin.token` or `FLEXGATE_ADMIN_TOKEN`).
    pub admin_token_source: &'static str,
    pub admin_public_endpoints: bool,
    pub admin_max_connections: usize,
    /// Lower-case host names the admin service answers to (empty: any).
    pub admin_allowed_hosts: Vec<String>,
    pub upgrade_sock: String,
    pub pid_file: String,
    pub grace_period: Duration,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub keepalive_requests: u32,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// `rateLimit.ipv6Prefix` at start (per-address connection caps).
    pub ipv6_prefix: u8,
}

/// The reloadable part of a config: what `snapshot::compile` reads. Boot
/// settings ([`BootConfig`]) are deliberately absent, so a reload cannot
/// depend on them by accident.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DynamicConfig {
    pub defaults: ProxyDefaults,
    pub security: SecuritySection,
    pub rate_limit: RateLimitSection,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub logging: LoggingSection,
    pub webhooks: Vec<WebhookConfig>,
}

/// The reloadable keys of `proxy:` (defaults for upstreams/routes, edge limits).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyDefaults {
    pub timeout: Option<units::Millis>,
    pub connect_timeout: Option<units::Millis>,
    pub read_timeout: Option<units::Millis>,
    pub write_timeout: Option<units::Millis>,
    pub max_body_size: Option<units::ByteSize>,
    pub trusted_proxies: Vec<Cidr>,
    pub max_header_bytes: Option<units::ByteSize>,
    pub max_headers: Option<usize>,
    pub max_uri_bytes: Option<units::ByteSize>,
    pub via_name: Option<Written<Token>>,
    pub health_endpoints: Option<bool>,
    pub max_in_flight: Option<usize>,
    pub paths: model::PathsSection,
}

impl FileConfig {
    /// The reloadable part (exhaustive destructuring: a new section must be
    /// placed on one side or the other).
    pub fn dynamic(&self) -> DynamicConfig {
        let FileConfig {
            proxy,
            admin: _,
            security,
            rate_limit,
            upstreams,
            routes,
            logging,
            webhooks,
            database: _,
            redis: _,
            nats: _,
            history: _,
        } = self;
        DynamicConfig {
            defaults: ProxyDefaults {
                timeout: proxy.timeout,
                connect_timeout: proxy.connect_timeout,
                read_timeout: proxy.read_timeout,
                write_timeout: proxy.write_timeout,
                max_body_size: proxy.max_body_size,
                trusted_proxies: proxy.trusted_proxies.clone(),
                max_header_bytes: proxy.limits.max_header_bytes,
                max_headers: proxy.limits.max_headers,
                max_uri_bytes: proxy.limits.max_uri_bytes,
                via_name: proxy.via_name.clone(),
                health_endpoints: proxy.health_endpoints,
                max_in_flight: proxy.max_in_flight,
                paths: proxy.paths.clone(),
            },
            security: security.clone(),
            rate_limit: rate_limit.clone(),
            upstreams: upstreams.clone(),
            routes: routes.clone(),
            logging: logging.clone(),
            webhooks: webhooks.clone(),
        }
    }
}

impl DynamicConfig {
    /// The inverse of [`FileConfig::dynamic`]: a file holding only the
    /// reloadable sections (boot sections left at their defaults). This is
    /// the shape of `GET /api/config` and of the stores.
    pub fn to_file_config(&self) -> FileConfig {
        let d = &self.defaults;
        FileConfig {
            proxy: ProxySection {
                timeout: d.timeout,
                connect_timeout: d.connect_timeout,
                read_timeout: d.read_timeout,
                write_timeout: d.write_timeout,
                max_body_size: d.max_body_size,
                trusted_proxies: d.trusted_proxies.clone(),
                limits: LimitsSection {
                    max_header_bytes: d.max_header_bytes,
                    max_headers: d.max_headers,
                    max_uri_bytes: d.max_uri_bytes,
                    ..LimitsSection::default()
                },
                via_name: d.via_name.clone(),
                health_endpoints: d.health_endpoints,
                max_in_flight: d.max_in_flight,
                paths: d.paths.clone(),
                ..ProxySection::default()
            },
            security: self.security.clone(),
            rate_limit: self.rate_limit.clone(),
            upstreams: self.upstreams.clone(),
            routes: self.routes.clone(),
            logging: self.logging.clone(),
            webhooks: self.webhooks.clone(),
            ..FileConfig::default()
        }
    }

    /// Checks the config as `flexgate check` would (every problem, with its path).
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let errors = validate::validate(&self.to_file_config());
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Serialises a config as YAML without empty values (what a person would
/// write); `parse_and_validate` reads it back to the same config.
pub fn to_clean_yaml(cfg: &FileConfig) -> String {
    clean_yaml_of(serde_json::to_value(cfg).expect("config serialises"))
}

/// [`to_clean_yaml`] of a config already turned into JSON (e.g. redacted).
pub fn clean_yaml_of(mut v: serde_json::Value) -> String {
    prune(&mut v);
    // Empty sections say nothing (unlike an empty `healthCheck: {}` deeper down).
    let empty = |x: &serde_json::Value| x.as_object().is_some_and(|o| o.is_empty());
    if let Some(top) = v.as_object_mut() {
        if let Some(proxy) = top.get_mut("proxy").and_then(|p| p.as_object_mut()) {
            proxy.retain(|k, x| !((k == "limits" || k == "paths") && empty(x)));
        }
        top.retain(|_, x| !empty(x));
    }
    serde_yaml::to_string(&v).expect("config serialises")
}

/// The text the admin API writes to a config file (file mode): `cfg`,
/// with the values that came from `${NAME}` or `…File` in the file's
/// current text `raw_text` written back in that form
/// ([`secrets::restore_sources`]).
pub fn to_file_yaml(cfg: &FileConfig, raw_text: &str, base: &Path) -> String {
    let mut out = serde_json::to_value(cfg).expect("config serialises");
    // The file as written: `${NAME}` is not a value of its field's type.
    let raw = serde_yaml::from_str::<serde_json::Value>(raw_text).ok();
    let resolved = parse_file_text(raw_text, base)
        .ok()
        .and_then(|c| serde_json::to_value(c).ok());
    secrets::restore_sources(&mut out, raw.as_ref(), resolved.as_ref());
    clean_yaml_of(out)
}

/// Removes nulls and empty arrays (recursively).
pub fn prune(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        // Empty objects stay: `healthCheck: {}` means "enabled, defaults".
        Value::Object(map) => {
            map.values_mut().for_each(prune);
            map.retain(|_, x| !x.is_null());
        }
        Value::Array(items) => {
            items.iter_mut().for_each(prune);
            if items.is_empty() {
                *v = Value::Null;
            }
        }
        _ => {}
    }
}

/// Largest key store read (`security.auth.keyStore`).
pub const MAX_KEY_STORE_BYTES: u64 = 16 * 1024 * 1024;

/// Folders a key store may live in besides the config file's: the state
/// directory (`$STATE_DIRECTORY`, set by systemd's `StateDirectory=`, else
/// `/var/lib/flexgate`).
fn state_dirs() -> Vec<std::path::PathBuf> {
    match std::env::var_os("STATE_DIRECTORY") {
        Some(v) if !v.is_empty() => std::env::split_paths(&v).collect(),
        _ => vec![std::path::PathBuf::from("/var/lib/flexgate")],
    }
}

/// Where `security.auth.keyStore` of the config file `config_path` points,
/// checked: inside the config file's folder or the state directory (after
/// resolving symbolic links), and, when it exists, a regular file. The
/// error names the field and the path.
pub fn check_key_store(
    config_path: &Path,
    configured: Option<&str>,
) -> Result<std::path::PathBuf, ConfigError> {
    let field = "security.auth.keyStore";
    let path = key_store_path(config_path, configured);
    let refuse = |why: &str| {
        ConfigError::new(
            field,
            format!("{}: {why}", configured.unwrap_or("flexgate-keys.json")),
        )
    };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(refuse("is not a file path"));
    };
    let parent = std::fs::canonicalize(if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    })
    .map_err(|e| refuse(&format!("its folder cannot be used: {e}")))?;
    let mut target = parent.join(name);
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.file_type().is_symlink() => {
            target = std::fs::canonicalize(&target)
                .map_err(|e| refuse(&format!("the link cannot be followed: {e}")))?;
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(refuse(&e.to_string())),
    }
    let mut roots = vec![base_dir(config_path)];
    roots.extend(state_dirs());
    let inside = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .any(|r| target.starts_with(&r));
    if !inside {
        return Err(refuse(
            "must be inside the config file's folder or the state directory ($STATE_DIRECTORY or /var/lib/flexgate)",
        ));
    }
    match std::fs::metadata(&target) {
        Ok(m) if !m.is_file() => Err(refuse("is not a regular file")),
        Ok(m) if m.len() > MAX_KEY_STORE_BYTES => Err(refuse(&format!(
            "is larger than {MAX_KEY_STORE_BYTES} bytes"
        ))),
        _ => Ok(target),
    }
}

/// Where the store of a config file lives (`security.auth.keyStore`,
/// relative paths from the config file's folder).
pub fn key_store_path(config_path: &Path, configured: Option<&str>) -> PathBuf {
    let name = configured.unwrap_or("flexgate-keys.json");
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_path.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Default proxy port (the original project's).
pub const DEFAULT_PORT: u16 = 3000;
/// Default admin listener: loopback only (`127.0.0.1:9180`).
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9180);

/// Default `admin.maxConnections`.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;

/// The admin token and where it came from: `FLEXGATE_ADMIN_TOKEN` when set
/// (even to a weak value, which then disables the API rather than falling
/// back to the file's), else `admin.token`.
pub fn admin_token(cfg: &FileConfig) -> Option<(String, &'static str)> {
    match std::env::var("FLEXGATE_ADMIN_TOKEN") {
        Ok(t) => Some((t, "FLEXGATE_ADMIN_TOKEN")),
        Err(_) => cfg.admin.token.clone().map(|t| (t, "admin.token")),
    }
}

/// Why the admin API stays disabled with this config's token, if it does
/// (a warning of `flexgate check`, and at start).
pub fn admin_token_warning(cfg: &FileConfig) -> Option<String> {
    let (token, source) = admin_token(cfg)?;
    secrets::weak_token(&token).map(|why| {
        format!("{source}: the admin token {why}; the admin API stays disabled (only /health* and /metrics answer)")
    })
}

impl BootConfig {
    /// Derives the boot settings; `port_override` is the `PORT` variable.
    pub fn from_file(cfg: &FileConfig, port_override: Option<u16>) -> BootConfig {
        let p = &cfg.proxy;
        let l = &p.limits;
        let listen = match (port_override, &p.listen) {
            (Some(port), _) => vec![SocketAddr::from(([0, 0, 0, 0], port))],
            (None, Some(list)) => list.to_vec().iter().map(|a| *a.value()).collect(),
            (None, None) => vec![SocketAddr::from((
                [0, 0, 0, 0],
                p.port.unwrap_or(DEFAULT_PORT),
            ))],
        };
        BootConfig {
            listen,
            tls: p.tls.clone(),
            threads: p
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            admin_listen: cfg
                .admin
                .listen
                .as_ref()
                .map_or(DEFAULT_ADMIN_LISTEN, |a| *a.value()),
            admin_token: admin_token(cfg).map(|(t, _)| t),
            admin_token_source: admin_token(cfg).map_or("admin.token", |(_, s)| s),
            admin_public_endpoints: cfg.admin.public_endpoints.unwrap_or(true),
            admin_max_connections: cfg
                .admin
                .max_connections
                .unwrap_or(DEFAULT_ADMIN_MAX_CONNECTIONS),
            admin_allowed_hosts: cfg
                .admin
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            upgrade_sock: p
                .upgrade_sock
                .clone()
                .unwrap_or_else(|| runtime::default_path(runtime::UPGRADE_SOCK)),
            pid_file: p
                .pid_file
                .clone()
                .unwrap_or_else(|| runtime::default_path(runtime::PID_FILE)),
            grace_period: p
                .grace_period
                .map_or(Duration::from_secs(30), |m| m.duration()),
            header_timeout: l
                .header_timeout
                .map_or(Duration::from_secs(10), |m| m.duration()),
            keepalive_timeout: l
                .keepalive_timeout
                .map_or(Duration::from_secs(75), |m| m.duration()),
            keepalive_requests: l.keepalive_requests.unwrap_or(1000),
            max_connections: l.max_connections.unwrap_or(10_000),
            max_connections_per_ip: l.max_connections_per_ip.unwrap_or(256),
            ipv6_prefix: cfg.rate_limit.ipv6_prefix.unwrap_or(64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_all_reported_with_paths() {
        let err = parse("proxy:\n  prot: 1\nroutes:\n  - path: /a\n    upstrem: x\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("proxy.prot: unknown key"), "{text}");
        assert!(text.contains("routes[0].upstrem: unknown key"), "{text}");
    }

    #[test]
    fn type_errors_name_the_path() {
        let err = parse("upstreams:\n  - name: a\n    retries: lots\n").unwrap_err();
        assert!(
            err.to_string().starts_with("upstreams[0].retries:"),
            "{err}"
        );
    }

    #[test]
    fn port_env_override_wins() {
        let cfg = parse("proxy:\n  port: 3000\n").unwrap();
        let boot = BootConfig::from_file(&cfg, Some(4100));
        assert_eq!(boot.listen, vec!["0.0.0.0:4100".parse().unwrap()]);
        assert_eq!(BootConfig::from_file(&cfg, None).listen[0].port(), 3000);
    }
}
