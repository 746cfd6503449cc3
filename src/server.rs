//! Process assembly: boot config → Pingora `Server` → listening and
//! background services → `run_forever`.
//!
//! Pingora owns the runtimes (no `#[tokio::main]`): anything needing a
//! runtime is created inside a service's `start`, because daemon mode forks
//! and would drop threads made earlier. Signals: `SIGTERM` drains gracefully
//! within `proxy.gracePeriod`, `SIGQUIT` hands listeners to a new process
//! started with `-u`, `SIGHUP` reloads the dynamic config.

use crate::config::BootConfig;
use crate::health::HealthChecker;
use crate::history::maintenance::HistoryMaintenance;
use crate::history::rollups::RollupReader;
use crate::history::writer::HistoryWriter;
use crate::limit::redis::{RedisLimiter, RedisLimiterService};
use crate::pg::PgPool;
use crate::proxy::edge::{ConnCounters, EdgeApp};
use crate::proxy::Gateway;
use crate::reload::{ConfigHandle, ReloadService};
use crate::store::postgres::PgStore;
use crate::store::{sync, State, Store, StoreError, Versioned};
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Read buffer per plain-HTTP downstream connection (bytes): none. Pingora
/// reads request heads and bodies into its own buffers, and between requests
/// the edge loop reads the next head's first bytes itself
/// (`proxy::edge`), so a per-connection buffer would only hold memory while
/// the connection idles.
const L4_READ_BUFFER: usize = 0;

/// The gateway's background tasks (config reloads and sync, health checks,
/// JWKS, request history, cluster telemetry, the Redis limiter's
/// connection), all on one runtime thread. They are timers and network
/// waits: a thread and a runtime each cost memory and cross-thread
/// wake-ups for nothing.
#[derive(Default)]
struct BackgroundTasks(Vec<(&'static str, Arc<dyn BackgroundService + Send + Sync>)>);

impl BackgroundTasks {
    fn add(&mut self, name: &'static str, task: impl BackgroundService + Send + Sync + 'static) {
        self.0.push((name, Arc::new(task)));
    }
}

#[async_trait::async_trait]
impl BackgroundService for BackgroundTasks {
    async fn start(&self, shutdown: ShutdownWatch) {
        let running: Vec<_> = self
            .0
            .iter()
            .map(|(name, task)| {
                let (name, task, shutdown) = (*name, task.clone(), shutdown.clone());
                tokio::spawn(async move {
                    task.start(shutdown).await;
                    tracing::debug!(task = name, "background task ended");
                })
            })
            .collect();
        for task in running {
            let _ = task.await;
        }
    }
}

/// Where webhook deliveries live: PostgreSQL in database mode, else the
/// journal beside the config file (opened by its first use).
fn webhook_store(
    pool: Option<PgPool>,
    config_path: &std::path::Path,
) -> Arc<dyn crate::webhooks::delivery::DeliveryStore> {
    use crate::webhooks::journal::JournalStore;
    match pool {
        Some(pool) => Arc::new(crate::webhooks::pg_store::PgDeliveryStore::new(
            pool,
            crate::live::node_name(),
        )),
        None => Arc::new(JournalStore::new(&JournalStore::path_beside(config_path))),
    }
}

/// What `flexgate start` was asked to do.
pub struct StartOptions {
    pub config_path: PathBuf,
    pub daemon: bool,
    pub upgrade: bool,
    pub port_override: Option<u16>,
}

fn proxy_service(
    server: &Server,
    boot: &BootConfig,
    counters: &Arc<ConnCounters>,
    gateway: Gateway,
) -> Service<EdgeApp> {
    let tls = gateway.tls;
    let mut proxy = pingora_proxy::http_proxy(&server.configuration, gateway);
    let mut opts = HttpServerOptions::default();
    opts.keepalive_request_limit = Some(boot.keepalive_requests);
    proxy.server_options = Some(opts);
    let name = if tls {
        "flexgate proxy (tls)"
    } else {
        "flexgate proxy"
    };
    let mut svc = Service::new(
        name.to_string(),
        EdgeApp::new(proxy, boot, counters.clone()),
    );
    svc.threads = Some(boot.threads);
    svc
}

/// Loads the TLS certificate and key (errors name the key at fault).
pub fn tls_settings_for(
    tls: &crate::config::TlsSection,
) -> Result<pingora_core::listeners::tls::TlsSettings, String> {
    for (key, file) in [("cert", &tls.cert), ("key", &tls.key)] {
        std::fs::File::open(file)
            .map_err(|e| format!("proxy.tls.{key}: cannot read {file}: {e}"))?;
    }
    let mut settings = pingora_core::listeners::tls::TlsSettings::intermediate(&tls.cert, &tls.key)
        .map_err(|e| {
            format!(
                "proxy.tls: cannot use certificate {} / key {}: {e}",
                tls.cert, tls.key
            )
        })?;
    // Parse now: Pingora would only find a bad PEM when the listener starts.
    match pingora_core::tls::load_certs_and_key_files(&tls.cert, &tls.key) {
        Ok(Some(_)) => {}
        _ => {
            return Err(format!(
                "proxy.tls: {} / {} do not hold a PEM certificate chain and private key",
                tls.cert, tls.key
            ))
        }
    }
    settings.enable_h2();
    Ok(settings)
}

/// `DATABASE_URL`, else `database.url`: database mode when set.
fn database_url(file: &crate::config::FileConfig) -> Option<String> {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| file.database.as_ref().and_then(|d| d.url.clone()))
}

/// Relative `caFile`s of `database`, `redis`, `rateLimit.redis` and `nats`
/// are relative to the config file's folder (as the key store is), not to
/// the working directory (`/` for a daemon).
fn ca_paths_from_config_folder(
    file: &mut crate::config::FileConfig,
    config_path: &std::path::Path,
) {
    for section in [
        &mut file.database,
        &mut file.redis,
        &mut file.rate_limit.redis,
        &mut file.nats,
    ] {
        if let Some(ca) = section.as_mut().and_then(|s| s.ca_file.as_mut()) {
            *ca = crate::deps_tls::relative_to_config(config_path, ca);
        }
    }
}

/// `database.caFile` (a `sslrootcert=` in the URL wins).
fn database_ca_file(file: &crate::config::FileConfig) -> Option<String> {
    file.database.as_ref().and_then(|d| d.ca_file.clone())
}

/// `nats.caFile`.
fn nats_ca_file(file: &crate::config::FileConfig) -> Option<String> {
    file.nats.as_ref().and_then(|n| n.ca_file.clone())
}

/// `NATS_URL`, else `nats.url`.
fn nats_url(file: &crate::config::FileConfig) -> Option<String> {
    std::env::var("NATS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| file.nats.as_ref().and_then(|n| n.url.clone()))
}

/// Database mode at start: migrate, then load the managed state — or, on
/// an empty database, import the file's dynamic config (and key store)
/// once. With the database down: the cached last state, else the file's
/// (version 0, replaced as soon as the database answers).
fn database_state(
    url: &str,
    config_path: &std::path::Path,
    file: &crate::config::FileConfig,
) -> Result<Versioned, String> {
    let cache = sync::cache_path(config_path);
    let keys_path = crate::keys::store::store_path(
        config_path,
        file.security
            .auth
            .as_ref()
            .and_then(|a| a.key_store.as_deref()),
    );
    let from_file = || -> Result<State, String> {
        Ok(State {
            config: file.dynamic(),
            keys: crate::keys::store::load(&keys_path)?,
        })
    };
    // A runtime of its own, gone before Pingora forks (daemon mode).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let outcome: Result<Versioned, StoreError> = rt.block_on(async {
        let store = PgStore::with_ca(url, database_ca_file(file).as_deref())?;
        store.migrate().await?;
        if let Some(v) = store.load().await? {
            tracing::info!(version = v.version, "config loaded from the database");
            return Ok(v);
        }
        let state = from_file().map_err(StoreError::Invalid)?;
        let entry = crate::store::AuditEntry::startup_import();
        match store.commit(0, &state, &[entry]).await {
            Ok(version) => {
                tracing::info!(
                    version,
                    "empty database: imported the config file's routes, upstreams and settings"
                );
                Ok(Versioned { version, state })
            }
            // Another node imported first: use theirs.
            Err(StoreError::Conflict { .. }) => store
                .load()
                .await?
                .ok_or_else(|| StoreError::Invalid("the database is empty after an import".into())),
            Err(e) => Err(e),
        }
    });
    match outcome {
        Ok(v) => {
            sync::write_cache(&cache, &v);
            Ok(v)
        }
        Err(StoreError::Unavailable(e)) => match sync::read_cache(&cache) {
            Some(v) => {
                tracing::error!(version = v.version, cache = %cache.display(), "database unreachable at start ({e}); serving the cached config and retrying");
                Ok(v)
            }
            None => {
                tracing::error!("database unreachable at start ({e}) and no cached config: serving the config file's until it answers");
                Ok(Versioned {
                    version: 0,
                    state: from_file()?,
                })
            }
        },
        Err(e) => Err(format!("database {}: {e}", redact_url(url))),
    }
}

use crate::config::redact::url as redact_url;

/// Fails start-up with the field's name when a listening address is taken.
///
/// Pingora would retry a taken proxy port for seconds and then give up on
/// that service alone, leaving a process that answers on its admin port but
/// not on its proxy port. Not used with `--upgrade`, where the running
/// process holds the ports and hands them over.
fn check_listen_addresses(boot: &crate::config::BootConfig) -> Result<(), String> {
    let mut wanted: Vec<(&str, String)> = boot
        .listen
        .iter()
        .map(|a| ("proxy.listen", a.to_string()))
        .collect();
    if let Some(tls) = &boot.tls {
        wanted.push(("proxy.tls.listen", tls.listen.clone()));
    }
    wanted.push(("admin.listen", boot.admin_listen.to_string()));
    for (field, addr) in wanted {
        // std's listener sets SO_REUSEADDR as Pingora's does, so sockets
        // lingering in TIME_WAIT are no obstacle here either. A port held
        // for a moment (say, by an outgoing connection's local end) gets
        // up to 5 s to come free, as Pingora would give it.
        let mut tries = 0;
        loop {
            match std::net::TcpListener::bind(&addr) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(format!("{field}: cannot listen on {addr}: {e}")),
            }
        }
    }
    Ok(())
}

/// Builds the server and runs it; returns only on a start-up error.
pub fn run(mut opts: StartOptions) -> Result<(), String> {
    // A daemon changes its directory to `/`: keep the config findable for reloads.
    if let Ok(abs) = std::fs::canonicalize(&opts.config_path) {
        opts.config_path = abs;
    }
    let mut first = crate::config::load_file(&opts.config_path)
        .map_err(|e| format!("invalid config {}:\n{e}", opts.config_path.display()))?;
    ca_paths_from_config_folder(&mut first, &opts.config_path);
    let _log_guard = crate::logging::init(&first.logging, opts.daemon);
    let database = database_url(&first);
    let managed = match &database {
        Some(url) => Some(database_state(url, &opts.config_path, &first)?),
        None => None,
    };
    let (handle, boot, mut file) =
        ConfigHandle::load(&opts.config_path, opts.port_override, managed)
            .map_err(|e| format!("invalid config {}:\n{e}", opts.config_path.display()))?;
    ca_paths_from_config_folder(&mut file, &opts.config_path);
    let handle = Arc::new(handle);

    let conf = ServerConf {
        daemon: opts.daemon,
        threads: boot.threads,
        pid_file: boot.pid_file.clone(),
        upgrade_sock: boot.upgrade_sock.clone(),
        grace_period_seconds: Some(boot.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(boot.grace_period.as_secs().max(1)),
        // Our retry policy decides; this only bounds Pingora's loop (1 + 10 retries + 1 stale-connection retry).
        max_retries: 12,
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    let mut background = BackgroundTasks::default();
    // Everything that can fail is checked before `bootstrap`, which (with
    // `-u`) takes the listening sockets from the running process: a failure
    // after that point would leave nobody serving.
    let mut tls_settings = match &boot.tls {
        Some(tls) => Some(tls_settings_for(tls)?),
        None => None,
    };
    crate::runtime_dir::check(&boot)?;
    if !opts.upgrade {
        check_listen_addresses(&boot)?;
    }
    server.bootstrap();

    // Requests in flight over both listeners (the global shedding cap).
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The Redis URL is a boot setting: read once at start.
    let redis_ca = file
        .rate_limit
        .redis
        .as_ref()
        .and_then(|r| r.ca_file.clone())
        .map(|f| (f, "rateLimit.redis.caFile"))
        .or_else(|| {
            file.redis
                .as_ref()
                .and_then(|r| r.ca_file.clone())
                .map(|f| (f, "redis.caFile"))
        });
    let redis_url = (file.rate_limit.backend == Some(crate::config::RateLimitBackend::Redis))
        .then(|| {
            file.rate_limit
                .redis
                .as_ref()
                .and_then(|r| r.url.clone())
                .or_else(|| file.redis.as_ref().and_then(|r| r.url.clone()))
                .or_else(|| std::env::var("REDIS_URL").ok())
        })
        .flatten();
    let redis = redis_url
        .clone()
        .map(|url| RedisLimiter::with_ca(url, redis_ca));
    if let Some(limiter) = &redis {
        background.add(
            "redis rate limiter",
            RedisLimiterService {
                limiter: limiter.clone(),
            },
        );
    }
    // Request history is a boot setting: read once at start.
    let history_settings = crate::history::Settings::resolve(&file, database.as_deref());
    crate::history::set_recording(history_settings.is_some());
    let history = history_settings.map(|settings| {
        let (sink, queue) = crate::history::queue(settings.queue_size);
        background.add(
            "request history maintenance",
            HistoryMaintenance {
                settings: settings.clone(),
            },
        );
        background.add(
            "request history writer",
            HistoryWriter::new(settings, queue),
        );
        sink
    });
    let counters = Arc::new(ConnCounters::default());
    let gateway = |tls: bool| Gateway {
        config: handle.clone(),
        redis: redis.clone(),
        tls,
        history: history.clone(),
        in_flight: in_flight.clone(),
    };
    let mut plain = proxy_service(&server, &boot, &counters, gateway(false));
    for addr in &boot.listen {
        // Pingora's default 64 KiB read buffer per connection makes idle
        // keep-alive connections expensive (2,000 of them: ~165 MB).
        plain.add_listener(
            ListenerConfig::tcp(addr.to_string())
                .l4_buffer(L4BufferSettings::default().read(L4_READ_BUFFER)),
        );
    }
    server.add_service(plain);
    if let Some(tls) = &boot.tls {
        let mut secure = proxy_service(&server, &boot, &counters, gateway(true));
        if let Some(settings) = tls_settings.take() {
            secure.add_tls_with_settings(&tls.listen, None, settings);
        }
        server.add_service(secure);
    }
    let (store, on_commit, rollups, pool) = match &database {
        Some(url) => {
            // One pool for the config store and the history roll-ups.
            let pool = PgPool::new(url, database_ca_file(&file).as_deref())
                .map_err(|e| StoreError::from(e).to_string())?;
            let pg: Arc<dyn Store> = Arc::new(PgStore::with_pool(pool.clone()));
            let (tx, rx) = sync::channel();
            background.add(
                "config sync",
                sync::SyncService {
                    config: handle.clone(),
                    store: pg.clone(),
                    nats_url: nats_url(&file),
                    nats_ca_file: nats_ca_file(&file),
                    poll_interval: Duration::from_secs(1),
                    cache: sync::cache_path(&opts.config_path),
                    committed: tokio::sync::Mutex::new(Some(rx)),
                },
            );
            let notify: crate::admin::OnCommit = Arc::new(move |v| {
                let _ = tx.try_send(v);
            });
            (
                pg,
                Some(notify),
                Some(RollupReader::new(pool.clone())),
                Some(pool),
            )
        }
        None => (
            crate::store::embedded::FileStore::for_handle(&handle, &file),
            None,
            None,
            None,
        ),
    };
    let webhooks =
        crate::webhooks::Webhooks::new(webhook_store(pool, &opts.config_path), handle.clone());
    background.add(
        "webhook dispatcher",
        crate::webhooks::dispatch::Dispatcher {
            webhooks: webhooks.clone(),
        },
    );
    background.add(
        "webhook sender",
        crate::webhooks::send::Sender {
            webhooks: webhooks.clone(),
        },
    );
    // Cluster-wide metrics and alerts over NATS JetStream, in either store mode.
    let cluster = nats_url(&file).map(|url| {
        let feed = crate::live::cluster::ClusterFeed::new();
        background.add(
            "cluster telemetry",
            crate::live::cluster::ClusterService {
                feed: feed.clone(),
                url,
                ca_file: nats_ca_file(&file),
            },
        );
        feed
    });
    let admin_state = crate::admin::AdminState {
        config: handle.clone(),
        token: boot.admin_token.as_deref().map(Arc::from),
        token_weak: crate::config::admin_token_warning(&file).map(Arc::from),
        // The admin listener is plain TCP (loopback by default).
        listener_tls: false,
        allowed_hosts: boot.admin_allowed_hosts.clone().into(),
        failures: Arc::default(),
        redis: redis.clone(),
        store: store.clone(),
        history: rollups,
        sessions: Arc::default(),
        public_endpoints: boot.admin_public_endpoints,
        on_commit,
        cluster,
        webhooks: Some(webhooks.clone()),
    };
    webhooks.set_disabler({
        let st = admin_state.clone();
        Arc::new(move |id, reason| {
            let st = st.clone();
            Box::pin(async move { crate::admin::webhooks::disable(&st, &id, &reason).await })
        })
    });
    if let Some(why) = &admin_state.token_weak {
        tracing::warn!(listen = %boot.admin_listen, "{why}");
    } else if admin_state.token.is_none() {
        tracing::warn!(
            listen = %boot.admin_listen,
            "no admin token configured (admin.token or FLEXGATE_ADMIN_TOKEN): the admin API (/api/*) refuses every call; /health* still answer"
        );
    }
    let mut admin = Service::new(
        "flexgate admin".to_string(),
        crate::admin::serve::AdminApp::new(
            crate::admin::app(admin_state),
            boot.admin_max_connections,
        ),
    );
    admin.threads = Some(1);
    admin.add_tcp(&boot.admin_listen.to_string());
    server.add_service(admin);
    background.add(
        "config reloader",
        ReloadService {
            handle: handle.clone(),
            poll_interval: Duration::from_secs(1),
        },
    );
    background.add(
        "jwks fetcher",
        crate::jwt::jwks::JwksService::new({
            let handle = handle.clone();
            move || {
                let snap = handle.current();
                snap.jwt
                    .clone()
                    .map(|verifier| crate::jwt::jwks::JwksTarget {
                        verifier,
                        ssrf: snap.ssrf.clone(),
                        allowed_hosts: snap.allowed_hosts.clone(),
                    })
            }
        }),
    );
    background.add(
        "health checker",
        HealthChecker {
            config: handle.clone(),
            on_change: Box::new(|t| {
                let (event, data) = if t.healthy {
                    (crate::events::Event::UpstreamHealthy, serde_json::json!({"upstream": t.upstream, "target": t.target}))
                } else {
                    (crate::events::Event::UpstreamUnhealthy, serde_json::json!({"upstream": t.upstream, "target": t.target, "error": t.error}))
                };
                crate::events::emit(event, data);
            }),
        },
    );
    background.add("event counts", crate::events::Flusher);
    server.add_service(background_service("flexgate background", background));

    let snap = handle.current();
    // External services, passwords masked (`config::redact::url`).
    let masked = |u: Option<String>| u.map_or_else(|| "-".to_string(), |u| redact_url(&u));
    tracing::info!(
        database = %masked(database.clone()),
        redis = %masked(redis_url),
        nats = %masked(nats_url(&file)),
        "external services"
    );
    tracing::info!(
        listen = ?boot.listen,
        threads = boot.threads,
        routes = snap.router.len(),
        upstreams = snap.upstreams.len(),
        config = %opts.config_path.display(),
        version = env!("CARGO_PKG_VERSION"),
        "flexgate starting"
    );
    server.run_forever()
}
