//! Bench scenario `bare`: the Pingora floor.
//!
//! The smallest proxy Pingora 0.9 allows: one `ProxyHttp` with only
//! `new_ctx` and `upstream_peer`, served by Pingora's own `Server` and
//! `http_proxy_service` (Pingora's own keep-alive loop, no FlexGate code on
//! the request path). Whatever FlexGate spends per request above this is
//! FlexGate's; this is what any Pingora proxy pays.
//!
//! Built like the `flexgate` binary (same release profile, same global
//! allocator) and run with the Pingora settings FlexGate uses where they
//! change the per-request or per-connection cost:
//! - one worker thread (`ServerConf::threads`, `--threads`);
//! - `upstream_keepalive_pool_size: 1024`;
//! - a client connection is closed after 1,000 requests
//!   (`HttpServerOptions::keepalive_request_limit`, FlexGate's
//!   `keepaliveRequests` default; nginx's `keepalive_requests` default);
//! - a 4 KiB L4 read buffer per downstream connection (FlexGate's plain
//!   listener; Pingora's default is 64 KiB);
//! - a 1 s grace period on `SIGTERM` (the bench configs' `gracePeriod`).
//!
//! ```sh
//! cargo build --release --example bare
//! target/release/examples/bare --listen 127.0.0.1:18087 --upstream 127.0.0.1:18080
//! ```
//!
//! `SIGTERM` stops it after the grace period, `SIGINT` at once.

use async_trait::async_trait;
use clap::Parser;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Read buffer per downstream connection, as FlexGate's plain listener.
const L4_READ_BUFFER: usize = 4096;

#[derive(Parser)]
#[command(
    name = "bare",
    about = "Bare Pingora proxy: the floor of the FlexGate benchmark"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "BARE_LISTEN", default_value = "127.0.0.1:18087")]
    listen: String,
    /// The upstream every request goes to (plain HTTP/1.1).
    #[arg(long, env = "BARE_UPSTREAM", default_value = "127.0.0.1:18080")]
    upstream: String,
    /// Worker threads.
    #[arg(long, env = "BARE_THREADS", default_value_t = 1)]
    threads: usize,
    /// Requests per client connection before it is closed.
    #[arg(long, env = "BARE_KEEPALIVE_REQUESTS", default_value_t = 1000)]
    keepalive_requests: u32,
    /// Seconds between SIGTERM and the stop.
    #[arg(long, env = "BARE_GRACE_PERIOD", default_value_t = 1)]
    grace_period: u64,
}

/// One upstream, nothing else.
struct Bare {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let args = Args::parse();
    let peer = HttpPeer::new(args.upstream.as_str(), false, String::new());
    // Pingora only uses these paths for daemon mode and upgrades; keep them
    // out of Pingora's shared defaults (/tmp/pingora.*).
    let run = std::env::temp_dir();
    let tag = args.listen.replace([':', '[', ']'], "_");
    let conf = ServerConf {
        threads: args.threads,
        pid_file: run.join(format!("bare-{tag}.pid")).display().to_string(),
        upgrade_sock: run
            .join(format!("bare-{tag}.upgrade.sock"))
            .display()
            .to_string(),
        grace_period_seconds: Some(args.grace_period),
        graceful_shutdown_timeout_seconds: Some(args.grace_period.max(1)),
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: false,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut service = pingora_proxy::http_proxy_service(&server.configuration, Bare { peer });
    let mut options = HttpServerOptions::default();
    options.keepalive_request_limit = Some(args.keepalive_requests);
    if let Some(proxy) = service.app_logic_mut() {
        proxy.server_options = Some(options);
    }
    service.add_listener(
        ListenerConfig::tcp(args.listen.clone())
            .l4_buffer(L4BufferSettings::default().read(L4_READ_BUFFER)),
    );
    server.add_service(service);
    eprintln!(
        "bare: listening on {}, upstream {}, {} thread(s)",
        args.listen, args.upstream, args.threads
    );
    server.run_forever()
}
