//! Command line: `start`, `check`, `init`, `keys hash`, `migrate`, `version`.
//!
//! Exit codes: 0 success, 1 invalid config or failed command, 2 usage error
//! (clap). Every error names the file and the key path at fault.

use crate::config;
use crate::server::{self, StartOptions};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// The default config, also written by `flexgate init`.
pub const STARTER_CONFIG: &str = include_str!("../conf/flexgate.yaml");

#[derive(Parser, Debug)]
#[command(
    name = "flexgate",
    version,
    about = "FlexGate: an edge API gateway on Pingora"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct ConfigArg {
    /// Config file
    #[arg(
        short = 'c',
        long = "config",
        env = "FLEXGATE_CONFIG",
        default_value = "conf/flexgate.yaml"
    )]
    pub config: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Start {
        #[command(flatten)]
        config: ConfigArg,
        /// Run in the background (daemon); the pid goes to proxy.pidFile.
        #[arg(short = 'd', long = "daemon")]
        daemon: bool,
        /// Take over the listening sockets of a running FlexGate through
        /// proxy.upgradeSock (zero-downtime upgrade); then send SIGQUIT to the old process.
        #[arg(short = 'u', long = "upgrade")]
        upgrade: bool,
    },
    /// Zero-downtime binary upgrade of the running gateway: start this binary
    /// with -u, wait until it is ready, SIGQUIT the old process, report.
    Upgrade {
        #[command(flatten)]
        config: ConfigArg,
        /// The running process (default: the one proxy.pidFile names).
        #[arg(long)]
        pid: Option<i32>,
    },
    /// Validate a config file and print every problem with its path (exit 1 if any).
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write a commented starter config, and beside it the JSON Schema its
    /// first line points editors at.
    Init {
        /// Where to write it.
        #[arg(default_value = "flexgate.yaml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// API-key helpers.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Create or upgrade the PostgreSQL config-store schema (idempotent).
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
        /// PostgreSQL URL; default: DATABASE_URL, then the config's database.url.
        #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// The running config as code, through a gateway's admin API: dump it,
    /// diff a file against it, apply a file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the JSON Schema of flexgate.yaml (for editors; shipped as
    /// conf/flexgate.schema.json).
    Schema,
    /// Print version, commit and build profile.
    Version,
}

/// Where the admin API is and how to sign in.
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The admin API of the running gateway.
    #[arg(
        long = "admin",
        env = "FLEXGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:9180"
    )]
    pub admin: String,
    /// File holding the admin token (default: FLEXGATE_ADMIN_TOKEN).
    #[arg(long = "token-file")]
    pub token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the running dynamic config (YAML, headed by its version).
    Dump {
        #[command(flatten)]
        admin: AdminArgs,
        /// JSON instead of YAML.
        #[arg(long)]
        json: bool,
    },
    /// Show what applying a file would change (exit 0: nothing, 1: changes, 2: error).
    Diff {
        #[command(flatten)]
        admin: AdminArgs,
        /// The config file to compare (the shape of `dump`).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Apply a file, if the running config is still the version it was reviewed against.
    Apply {
        #[command(flatten)]
        admin: AdminArgs,
        /// The config file to apply.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// The version reviewed (default: the file's `# flexgate config version N` header).
        #[arg(long = "if-version")]
        if_version: Option<u64>,
        /// Apply whatever the running version.
        #[arg(long, conflicts_with = "if_version")]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Print the lowercase hex SHA-256 of a key, as `security.auth.keys[].key` expects.
    Hash {
        /// The plaintext key.
        key: String,
    },
    /// Generate a key into the key store; its plaintext is printed once.
    Create {
        #[command(flatten)]
        config: ConfigArg,
        /// Consumer name (unique among active keys).
        #[arg(long)]
        name: String,
        /// Scopes, comma-separated.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Route ids the key may call, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        routes: Vec<String>,
        /// Lifetime, e.g. 30d, 12h, 90m (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List the key store's keys (never their secrets).
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke a key by id or name (refused from the next second on).
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        /// Key id (key_…) or name.
        key: String,
    },
}

/// `--expires`: a key's lifetime in seconds, refused in the flag's words.
fn expires_seconds(text: &str) -> Result<u64, String> {
    use crate::keys::lifetime::{self, LifetimeError};
    lifetime::parse(text).map_err(|e| match e {
        LifetimeError::NotANumber => format!("--expires {text:?}: expected e.g. 30d, 12h, 90m"),
        LifetimeError::BadUnit => format!("--expires {text:?}: unit must be d, h, m or s"),
        LifetimeError::Zero => "--expires must be greater than 0".into(),
    })
}

/// The key store of a config file.
fn key_store_of(config: &std::path::Path) -> Result<PathBuf, String> {
    let cfg = config::load_file(config)
        .map_err(|e| format!("invalid config {}:\n{e}", config.display()))?;
    let auth = cfg.security.auth.as_ref();
    config::check_key_store(config, auth.and_then(|a| a.key_store.as_deref()))
        .map_err(|e| format!("invalid config {}:\n{e}", config.display()))
}

fn keys_command(command: KeysCommand) -> Result<(), String> {
    use crate::keys::store;
    match command {
        KeysCommand::Hash { key } => println!("{}", key_digest_hex(&key)),
        KeysCommand::Create {
            config,
            name,
            scopes,
            routes,
            expires,
        } => {
            let path = key_store_of(&config.config)?;
            let expires_at = expires
                .as_deref()
                .map(expires_seconds)
                .transpose()?
                .map(|s| crate::clock::unix_now() + s);
            let (plain, k) = store::create(&path, &name, scopes, routes, expires_at)?;
            println!("{plain}");
            eprintln!(
                "created key {} ({}) in {}; the key above is shown only now — store it safely",
                k.id,
                k.name,
                path.display()
            );
        }
        KeysCommand::List { config } => {
            let path = key_store_of(&config.config)?;
            let file = store::load(&path)?;
            println!(
                "{:<18} {:<20} {:<8} {:<12} {:<20} {:<20}",
                "ID", "NAME", "STATUS", "EXPIRES", "SCOPES", "ROUTES"
            );
            let now = crate::clock::unix_now();
            for k in &file.keys {
                let status = if k.revoked {
                    "revoked"
                } else if k.expires_at.is_some_and(|t| now >= t) {
                    "expired"
                } else {
                    "active"
                };
                let expires = k.expires_at.map_or("never".to_string(), |t| {
                    if t > now {
                        format!("in {}h", (t - now).div_ceil(3600))
                    } else {
                        "past".to_string()
                    }
                });
                println!(
                    "{:<18} {:<20} {:<8} {:<12} {:<20} {:<20}",
                    k.id,
                    k.name,
                    status,
                    expires,
                    if k.scopes.is_empty() {
                        "-".into()
                    } else {
                        k.scopes.join(",")
                    },
                    if k.routes.is_empty() {
                        "(all)".into()
                    } else {
                        k.routes.join(",")
                    }
                );
            }
        }
        KeysCommand::Revoke { config, key } => {
            let path = key_store_of(&config.config)?;
            let k = store::revoke(&path, &key)?;
            println!("revoked key {} ({})", k.id, k.name);
        }
    }
    Ok(())
}

/// Hex SHA-256 of an API key (what the config stores).
pub fn key_digest_hex(key: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the CLI; returns the process exit code.
/// `flexgate config …`; returns the exit code.
fn config_command(command: ConfigCommand) -> i32 {
    use crate::remote;
    let connect = |a: &AdminArgs| remote::Admin::new(&a.admin, a.token_file.as_deref());
    let read = |f: &std::path::Path| {
        std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))
    };
    // `diff` fails like diff(1) does (2); the others with 1.
    let error_code = if matches!(command, ConfigCommand::Diff { .. }) {
        2
    } else {
        1
    };
    let result = match command {
        ConfigCommand::Dump { admin, json } => connect(&admin)
            .and_then(|a| remote::dump(&a, json))
            .map(|text| {
                print!("{text}");
                0
            }),
        ConfigCommand::Diff { admin, file } => (|| {
            let a = connect(&admin)?;
            let text = read(&file)?;
            let d = remote::diff(&a, &text, &file.display().to_string())?;
            print!("{}", d.text);
            if d.changes.is_empty() {
                eprintln!(
                    "no changes against the running config (version {})",
                    d.version
                );
                Ok(0)
            } else {
                eprintln!("the gateway would make these changes:");
                for c in &d.changes {
                    eprintln!("  {c}");
                }
                eprintln!(
                    "apply with: flexgate config apply -f {} --if-version {}",
                    file.display(),
                    d.version
                );
                Ok(1)
            }
        })(),
        ConfigCommand::Apply {
            admin,
            file,
            if_version,
            force,
        } => (|| {
            let a = connect(&admin)?;
            let text = read(&file)?;
            let version = match (if_version, force) {
                (Some(v), _) => Some(v),
                (None, true) => None,
                (None, false) => Some(remote::dumped_version(&text).ok_or_else(|| {
                    format!(
                        "{}: which version was reviewed? pass --if-version N (from flexgate config diff), or --force",
                        file.display()
                    )
                })?),
            };
            let (new_version, changes) = remote::apply(&a, &text, version)?;
            if changes.is_empty() {
                println!("nothing to change (version {new_version})");
            } else {
                for c in &changes {
                    println!("{c}");
                }
                println!("applied: the running config is version {new_version}");
            }
            Ok(0)
        })(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flexgate config: {e}");
            error_code
        }
    }
}

pub fn run() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Start {
            config,
            daemon,
            upgrade,
        } => {
            let port_override = match std::env::var("PORT") {
                Ok(p) if !p.is_empty() => match p.parse::<u16>() {
                    Ok(n) if n > 0 => Some(n),
                    _ => {
                        eprintln!("PORT: {p:?} is not a port number (1-65535)");
                        return 1;
                    }
                },
                _ => None,
            };
            let opts = StartOptions {
                config_path: config.config,
                daemon,
                upgrade,
                port_override,
            };
            match server::run(opts) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("flexgate: {e}");
                    1
                }
            }
        }
        Command::Check { config } => check(&config.config),
        Command::Init { path, force } => {
            if path.exists() && !force {
                eprintln!(
                    "{} already exists (use --force to overwrite)",
                    path.display()
                );
                return 1;
            }
            // The schema the starter's first line points editors at.
            let schema = path
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join(crate::config::schema::FILE_NAME);
            let written = std::fs::write(&path, STARTER_CONFIG)
                .and_then(|()| std::fs::write(&schema, crate::config::schema::document()));
            match written {
                Ok(()) => {
                    println!(
                        "wrote {} (and its editor schema {}); run: flexgate check -c {}",
                        path.display(),
                        schema.display(),
                        path.display()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("cannot write {}: {e}", path.display());
                    1
                }
            }
        }
        Command::Keys { command } => match keys_command(command) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("flexgate keys: {e}");
                1
            }
        },
        Command::Migrate {
            config,
            database_url,
        } => match migrate(&config.config, database_url) {
            Ok(report) => {
                let what = match report.applied.len() {
                    0 => "up to date".to_string(),
                    1 => "applied 1 migration".to_string(),
                    n => format!("applied {n} migrations"),
                };
                println!("schema at version {} ({what})", report.version);
                0
            }
            Err(e) => {
                eprintln!("flexgate migrate: {e}");
                1
            }
        },
        Command::Config { command } => config_command(command),
        Command::Upgrade { config, pid } => match crate::upgrade::run(&config.config, pid) {
            Ok(report) => {
                println!("flexgate upgrade: {report}");
                0
            }
            Err(e) => {
                eprintln!("flexgate upgrade: {e}");
                1
            }
        },
        Command::Schema => {
            print!("{}", crate::config::schema::document());
            0
        }
        Command::Version => {
            println!(
                "flexgate {} (commit {}, {} build)",
                env!("CARGO_PKG_VERSION"),
                option_env!("FLEXGATE_GIT_COMMIT").unwrap_or("unknown"),
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                }
            );
            0
        }
    }
}

/// `flexgate migrate`: the URL from the flag or `DATABASE_URL`, else the
/// config file's `database.url`.
fn migrate(
    config_path: &std::path::Path,
    url: Option<String>,
) -> Result<crate::store::migrate::MigrationReport, String> {
    // database.caFile, when the config file is there to say.
    let ca_file = std::fs::read_to_string(config_path)
        .ok()
        .and_then(|text| config::parse(&text).ok())
        .and_then(|cfg| cfg.database)
        .and_then(|d| d.ca_file)
        .map(|f| crate::deps_tls::relative_to_config(config_path, &f));
    let url = match url.filter(|u| !u.trim().is_empty()) {
        Some(u) => u,
        None => {
            let text = std::fs::read_to_string(config_path).map_err(|e| {
                format!(
                    "no database URL: pass --database-url or set DATABASE_URL \
                     (cannot read {} for database.url: {e})",
                    config_path.display()
                )
            })?;
            let cfg = config::parse_file_text(&text, &config::base_dir(config_path))
                .map_err(|e| format!("invalid config {}:\n{e}", config_path.display()))?;
            cfg.database
                .and_then(|d| d.url)
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(|| {
                    format!(
                        "no database URL: pass --database-url, set DATABASE_URL \
                         or set database.url in {}",
                        config_path.display()
                    )
                })?
        }
    };
    let store = crate::store::postgres::PgStore::with_ca(&url, ca_file.as_deref())
        .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime
        .block_on(store.migrate_report())
        .map_err(|e| e.to_string())
}

fn check(path: &std::path::Path) -> i32 {
    match config::load_file(path) {
        Ok(cfg) => {
            if let Some(tls) = &cfg.proxy.tls {
                if let Err(e) = crate::server::tls_settings_for(tls) {
                    eprintln!(
                        "flexgate: configuration file {} is invalid:\n  {e}",
                        path.display()
                    );
                    return 1;
                }
            }
            let auth = cfg.security.auth.as_ref();
            if let Err(e) = config::check_key_store(path, auth.and_then(|a| a.key_store.as_deref()))
            {
                eprintln!(
                    "flexgate: configuration file {} is invalid:\n  {e}",
                    path.display()
                );
                return 1;
            }
            // A weak token does not stop the gateway (the proxy serves, the
            // admin API stays disabled): a warning, not an invalid file.
            if let Some(w) = config::admin_token_warning(&cfg) {
                eprintln!("flexgate: warning: {w}");
            }
            println!(
                "flexgate: configuration file {} is valid ({} upstreams, {} routes)",
                path.display(),
                cfg.upstreams.len(),
                cfg.routes.len()
            );
            0
        }
        Err(errs) => {
            eprintln!(
                "flexgate: configuration file {} is invalid:",
                path.display()
            );
            for e in &errs.0 {
                eprintln!("  {e}");
            }
            1
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_digest_is_sha256_hex() {
        assert_eq!(
            super::key_digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
