//! Command line: `start`, `check`, `init`, `keys hash`, `version`.
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
    /// Config file [env: FLEXGATE_CONFIG] [default: conf/flexgate.yaml]
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
    /// Validate a config file and print every problem with its path (exit 1 if any).
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write a commented starter config.
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
    /// Print version, commit and build profile.
    Version,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Print the lowercase hex SHA-256 of a key, as `security.auth.keys[].key` expects.
    Hash {
        /// The plaintext key.
        key: String,
    },
}

/// Hex SHA-256 of an API key (what the config stores).
pub fn key_digest_hex(key: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the CLI; returns the process exit code.
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
            match std::fs::write(&path, STARTER_CONFIG) {
                Ok(()) => {
                    println!(
                        "wrote {}; run: flexgate check -c {}",
                        path.display(),
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
        Command::Keys {
            command: KeysCommand::Hash { key },
        } => {
            println!("{}", key_digest_hex(&key));
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

fn check(path: &std::path::Path) -> i32 {
    match config::load_file(path) {
        Ok(cfg) => {
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
