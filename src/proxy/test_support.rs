//! What the phase tests share: a [`Gateway`] loaded from a config text the
//! way the server loads its file, a Pingora [`Session`] parsed by Pingora
//! from the bytes of a raw HTTP/1.1 request, routed as `admit_request`
//! routes it, and a refusal written by the production path and read back
//! as the client receives it.

use super::ctx::RequestCtx;
use super::respond::Reject;
use super::Gateway;
use crate::reload::ConfigHandle;
use crate::snapshot::router::Match;
use crate::snapshot::{Route, Snapshot};
use pingora_proxy::Session;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A gateway on a config given as text.
pub struct TestGateway {
    pub gw: Gateway,
    /// The live snapshot, as a request takes it.
    pub snap: Arc<Snapshot>,
    /// The config file's folder (the handle points into it).
    _dir: tempfile::TempDir,
}

/// Loads `yaml` as the config file `flexgate.yaml` of a fresh folder (no
/// key store), through `ConfigHandle::load` as the server does at start:
/// parse, validation, compilation. Panics with every config error.
pub fn gateway(yaml: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("flexgate.yaml");
    std::fs::write(&path, yaml).expect("config file written");
    let (handle, _, _) = ConfigHandle::load(&path, None, None)
        .unwrap_or_else(|e| panic!("the test config does not load:\n{e}"));
    let handle = Arc::new(handle);
    TestGateway {
        snap: handle.current(),
        gw: Gateway {
            config: handle,
            redis: None,
            tls: false,
            history: None,
            in_flight: Arc::default(),
        },
        _dir: dir,
    }
}

/// One request on its own connection: the server side's session and
/// context, and the client's end of the connection.
pub struct Exchange {
    pub session: Session,
    pub ctx: RequestCtx,
    client: DuplexStream,
}

impl TestGateway {
    /// Sends the bytes of `raw` (a request head, `\r\n` line ends) from
    /// client address `ip`, has Pingora read the request, and routes it.
    /// Panics when Pingora refuses the head or no route takes it.
    pub async fn request(&self, ip: &str, raw: &str) -> Exchange {
        let (mut client, server) = tokio::io::duplex(64 << 10);
        client
            .write_all(raw.as_bytes())
            .await
            .expect("request bytes sent");
        let mut session = Session::new_h1(Box::new(server));
        let read = session.read_request().await.expect("Pingora parses it");
        assert!(read, "Pingora read no request from {raw:?}");
        let mut ctx = RequestCtx::new(self.gw.config.current(), self.gw.tls);
        ctx.request_id = http::HeaderValue::from_static("test-request");
        let ip: IpAddr = ip.parse().expect("a client address");
        ctx.client.ip = ip;
        ctx.client.limit_ip = crate::limit::address_key(ip, self.snap.ipv6_prefix);
        let req = session.req_header();
        let host = super::canonical::request_host(req).expect("a routable host");
        ctx.route = match self.snap.router.find(&host, &req.method, req.uri.path()) {
            Match::Found(route) => Some(route.clone()),
            _ => panic!("no route for {} {}", req.method, req.uri),
        };
        Exchange {
            session,
            ctx,
            client,
        }
    }
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let req = self.session.req_header();
        write!(f, "{} {} from {}", req.method, req.uri, self.ctx.client.ip)
    }
}

impl Exchange {
    /// The route the request matched.
    pub fn route(&self) -> Arc<Route> {
        self.ctx.route.clone().expect("routed")
    }

    /// Refuses the request as `request_filter` does (`Gateway::refuse`)
    /// and returns the response the client reads.
    pub async fn refused(&mut self, gw: &Gateway, reject: Reject) -> Answer {
        gw.refuse(&mut self.session, &mut self.ctx, reject)
            .await
            .expect("refusal written");
        let mut raw = Vec::new();
        loop {
            if let Some(answer) = Answer::parse(&raw) {
                return answer;
            }
            let mut chunk = [0u8; 4096];
            let n = self.client.read(&mut chunk).await.expect("answer read");
            assert!(
                n > 0,
                "incomplete answer: {:?}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A response as the client received it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Answer {
    /// The response in `raw`, once its head and `Content-Length` body are
    /// complete.
    fn parse(raw: &[u8]) -> Option<Answer> {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut fields);
        let head_len = match resp.parse(raw).expect("an HTTP/1.1 response") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => return None,
        };
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .expect("a Content-Length");
        let body = raw.get(head_len..head_len + length)?;
        Some(Answer {
            status: resp.code.expect("a status"),
            body: serde_json::from_slice(body).expect("a JSON body"),
            headers,
        })
    }

    /// The one value of header `name`; panics when it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        let first = values.next().map(|(_, v)| v.as_str());
        assert!(values.next().is_none(), "{name} sent twice: {self:?}");
        first
    }

    /// The `error` code of the body.
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    /// The `message` of the body.
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }

    /// True when the gateway ends the connection after this answer.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// The lowercase hex SHA-256 of `key`, as `security.auth.keys[].key` takes it.
pub fn key_digest(key: &str) -> String {
    crate::keys::to_hex(&crate::keys::digest(key.as_bytes()))
}
