//! PostgreSQL over TLS (rustls), with `sslmode` read as libpq reads it.
//!
//! Every connection the gateway makes to PostgreSQL — the config store's
//! pool, `flexgate migrate`, the request-history writer and its maintenance
//! — goes through [`resolve`], so one URL means the same thing everywhere.
//!
//! | `sslmode` | encrypted | server certificate checked |
//! | --- | --- | --- |
//! | `disable` | no | — |
//! | `prefer` (default) | when the server offers TLS (a failed handshake is not retried in plain text) | no |
//! | `require` | yes (else the connection fails) | no; with a CA: the chain, as libpq does |
//! | `verify-ca` | yes | the chain ends at the CA |
//! | `verify-full` | yes | the chain ends at the CA and the certificate names the host |
//!
//! The CA is `sslrootcert=<file>` in the URL, else `database.caFile`;
//! `sslrootcert=system` is the system trust store (`verify-full` only, as
//! in libpq). `verify-ca`/`verify-full` without a CA is refused at start.
//! The host name checked is the URL's host (`host=`), also with `hostaddr=`.
//! SCRAM authentication is bound to the TLS session
//! (`tls-server-end-point`, `channel_binding=prefer` by default,
//! `channel_binding=require` honoured) for RSA and ECDSA server
//! certificates. Client certificates (`sslcert`/`sslkey`) are not
//! supported: authenticate with a password over the verified channel.

use crate::deps_tls;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::Socket;

/// `sslmode=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "invalid database URL: sslmode=allow is not supported; use disable, prefer, \
                     require, verify-ca or verify-full"
                        .into(),
                )
            }
            other => {
                return Err(format!(
                    "invalid database URL: sslmode={other:?} is not one of disable, prefer, \
                     require, verify-ca, verify-full"
                ))
            }
        })
    }

    /// The URL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS side of a database URL (cheap to clone: one per connection).
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    config: Arc<ClientConfig>,
    /// Where the CA came from, for messages.
    ca: Option<String>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("ca", &self.ca)
            .finish()
    }
}

impl PgTls {
    /// The `sslmode` in force.
    pub fn mode(&self) -> SslMode {
        self.mode
    }
}

/// Parses a database URL (`postgres://…` or `host=… dbname=…`) into the
/// driver's config and the TLS connector for its `sslmode`. `ca_file` is
/// `database.caFile` (a `sslrootcert=` in the URL wins). Errors name the
/// parameter or field at fault and never hold the password.
pub fn resolve(
    url: &str,
    ca_file: Option<&str>,
) -> Result<(tokio_postgres::Config, PgTls), String> {
    let (rest, mode, rootcert) = split_tls_params(url)?;
    let mut cfg: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| format!("invalid database URL: {e}"))?;
    let mode = match mode {
        Some(m) => SslMode::parse(&m)?,
        None => SslMode::Prefer,
    };
    let (ca_field, ca_path) = match (&rootcert, ca_file.filter(|f| !f.trim().is_empty())) {
        (Some(r), _) => ("sslrootcert", Some(r.as_str())),
        (None, Some(f)) => ("database.caFile", Some(f)),
        (None, None) => ("", None),
    };
    let system = ca_path == Some("system");
    if system && mode != SslMode::VerifyFull {
        return Err(format!(
            "invalid database URL: {ca_field}=system needs sslmode=verify-full (it is {})",
            mode.as_str()
        ));
    }
    let roots = match ca_path {
        Some("system") => Some(deps_tls::system_roots(ca_field)?),
        Some(path) => Some(deps_tls::read_ca(ca_field, path)?),
        None => None,
    };
    let config = match (mode, roots) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
            deps_tls::encrypt_only()
        }
        (SslMode::Require | SslMode::VerifyCa, Some(roots)) => deps_tls::verify_chain_only(roots)?,
        (SslMode::VerifyFull, Some(roots)) => deps_tls::verify_full(roots),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(format!(
                "invalid database URL: sslmode={} needs the CA that signed the server's \
                 certificate: add sslrootcert=<file> to the URL or set database.caFile",
                mode.as_str()
            ))
        }
    };
    let mut config = config;
    // What libpq 17 offers; earlier servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    cfg.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let ca = ca_path.map(|p| format!("{ca_field} {p}"));
    Ok((
        cfg,
        PgTls {
            mode,
            config: Arc::new(config),
            ca,
        },
    ))
}

/// Takes `sslmode` and `sslrootcert` out of a URL (the driver knows neither
/// `verify-*` nor `sslrootcert`): the rest, and the two values.
#[allow(clippy::type_complexity)]
fn split_tls_params(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let (mut mode, mut rootcert) = (None, None);
    let trimmed = url.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return Ok((trimmed.to_string(), None, None));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => mode = Some(percent_decode(v)?),
                "sslrootcert" => rootcert = Some(percent_decode(v)?),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, mode, rootcert));
    }
    // key=value pairs, values optionally single-quoted with `\` escapes.
    let mut kept = Vec::new();
    for (k, v) in key_values(trimmed)? {
        match k.as_str() {
            "sslmode" => mode = Some(v),
            "sslrootcert" => rootcert = Some(v),
            _ => kept.push(format!(
                "{k}='{}'",
                v.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    Ok((kept.join(" "), mode, rootcert))
}

fn percent_decode(v: &str) -> Result<String, String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = v
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid database URL: bad percent-encoding in {v:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("invalid database URL: {v:?} is not UTF-8"))
}

/// The pairs of a `key=value …` connection string.
fn key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(format!(
                "invalid database URL: expected `=` after {key:?} (write postgres://… or key=value pairs)"
            ));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    Some('\\') => value.extend(it.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(format!(
                            "invalid database URL: the value of {key:?} has no closing quote"
                        ))
                    }
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(it.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, io::Error> {
        let name = match ServerName::try_from(domain.to_string()) {
            Ok(n) => n,
            Err(_) if self.mode != SslMode::VerifyFull => {
                // Nothing to check the name against (e.g. a Unix socket):
                // only verify-full needs one.
                ServerName::try_from("localhost").expect("a valid name")
            }
            Err(_) => {
                return Err(io::Error::other(format!(
                    "sslmode=verify-full: {domain:?} is not a host name to verify the server's \
                     certificate against"
                )))
            }
        };
        Ok(PgTlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
            what: match &self.ca {
                Some(ca) => format!("sslmode={}, {ca}", self.mode.as_str()),
                None => format!("sslmode={}", self.mode.as_str()),
            },
        })
    }
}

/// One TLS handshake.
pub struct PgTlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    what: String,
}

impl TlsConnect<Socket> for PgTlsConnect {
    type Stream = PgTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream, io::Error>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let PgTlsConnect {
                connector,
                name,
                what,
            } = self;
            match connector.connect(name, stream).await {
                Ok(s) => Ok(PgTlsStream(Box::new(s))),
                Err(e) => {
                    let cause = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                        Some(tls) => deps_tls::explain(tls),
                        None => e.to_string(),
                    };
                    Err(io::Error::other(format!("{cause} [{what}]")))
                }
            }
        })
    }
}

/// A TLS session with the server.
pub struct PgTlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl TlsStream for PgTlsStream {
    /// `tls-server-end-point` (RFC 5929): the hash of the server's
    /// certificate, so SCRAM-SHA-256-PLUS binds the password exchange to
    /// this TLS session. None for signature algorithms without a defined
    /// hash (RSA-PSS, Ed25519): SCRAM then goes without binding.
    fn channel_binding(&self) -> ChannelBinding {
        let cert = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        match cert.and_then(|c| server_end_point(c.as_ref())) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// The certificate's hash for `tls-server-end-point`: the hash of its
/// signature algorithm, SHA-256 for MD5 and SHA-1.
fn server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    use ring::digest;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    let oid = signature_algorithm(der)?;
    let algorithm = match oid.split_last()? {
        // md5, sha1, sha256, sha224 with RSA
        (0x04 | 0x05 | 0x0b | 0x0e, prefix) if prefix == RSA => &digest::SHA256,
        (0x0c, prefix) if prefix == RSA => &digest::SHA384,
        (0x0d, prefix) if prefix == RSA => &digest::SHA512,
        // ecdsa-with-SHA224/256
        (0x01 | 0x02, prefix) if prefix == ECDSA => &digest::SHA256,
        (0x03, prefix) if prefix == ECDSA => &digest::SHA384,
        (0x04, prefix) if prefix == ECDSA => &digest::SHA512,
        // ecdsa-with-SHA1 (1.2.840.10045.4.1)
        _ if oid == [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01] => &digest::SHA256,
        _ => return None,
    };
    Some(digest::digest(algorithm, der).as_ref().to_vec())
}

/// The OID of a certificate's `signatureAlgorithm` (DER: `SEQUENCE {
/// tbsCertificate, SEQUENCE { OID, … }, BIT STRING }`).
fn signature_algorithm(der: &[u8]) -> Option<&[u8]> {
    /// One DER element at the start of `input`: (tag, content, rest).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    let (0x30, certificate, _) = element(der)? else {
        return None;
    };
    let (0x30, _tbs, rest) = element(certificate)? else {
        return None;
    };
    let (0x30, algorithm, _) = element(rest)? else {
        return None;
    };
    match element(algorithm)? {
        (0x06, oid, _) => Some(oid),
        _ => None,
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_both_url_forms() {
        let (rest, mode, ca) = split_tls_params(
            "postgres://fg:pw@db:5432/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://fg:pw@db:5432/x?application_name=a");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(ca.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, ca) = split_tls_params(
            "host=db  sslmode = verify-ca sslrootcert='/a b/ca.pem' password='p\\'w'",
        )
        .unwrap();
        assert_eq!(rest, "host='db' password='p\\'w'");
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(ca.as_deref(), Some("/a b/ca.pem"));
        let cfg: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"p'w"[..]));
        let (rest, mode, ca) = split_tls_params("postgres://db/x").unwrap();
        assert_eq!((rest.as_str(), mode, ca), ("postgres://db/x", None, None));
    }

    #[test]
    fn the_end_point_hash_follows_the_signature_algorithm() {
        // Certificate { tbs, AlgorithmIdentifier { OID }, BIT STRING }.
        let cert = |oid: &[u8]| {
            let mut alg = vec![0x06, oid.len() as u8];
            alg.extend_from_slice(oid);
            let mut body = vec![0x30, 0x03, 0x02, 0x01, 0x01, 0x30, alg.len() as u8];
            body.extend_from_slice(&alg);
            body.extend_from_slice(&[0x03, 0x02, 0x00, 0xff]);
            let mut der = vec![0x30, body.len() as u8];
            der.extend_from_slice(&body);
            der
        };
        let ecdsa_sha384 = cert(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]);
        let hash = server_end_point(&ecdsa_sha384).unwrap();
        assert_eq!(
            hash,
            ring::digest::digest(&ring::digest::SHA384, &ecdsa_sha384).as_ref()
        );
        let rsa_sha1 = cert(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05]);
        assert_eq!(server_end_point(&rsa_sha1).unwrap().len(), 32);
        let ed25519 = cert(&[0x2b, 0x65, 0x70]);
        assert_eq!(server_end_point(&ed25519), None);
        assert_eq!(server_end_point(&[0x30, 0x05, 0x01]), None);
        assert_eq!(server_end_point(&[]), None);
    }

    #[test]
    fn modes_and_ca_requirements() {
        let (cfg, tls) = resolve("postgres://db/x", None).unwrap();
        assert_eq!(tls.mode(), SslMode::Prefer);
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);
        let (cfg, tls) = resolve("postgres://db/x?sslmode=disable", None).unwrap();
        assert_eq!(tls.mode(), SslMode::Disable);
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
        let (cfg, _) = resolve("host=db sslmode=require", None).unwrap();
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        for mode in ["verify-ca", "verify-full"] {
            let e = resolve(&format!("postgres://u:secret@db/x?sslmode={mode}"), None).unwrap_err();
            assert!(
                e.contains("sslrootcert") && e.contains("database.caFile"),
                "{e}"
            );
            assert!(!e.contains("secret"), "{e}");
        }
        let e = resolve(
            "postgres://db/x?sslmode=verify-full",
            Some("/nonexistent/ca.pem"),
        )
        .unwrap_err();
        assert!(
            e.starts_with("database.caFile: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let e = resolve(
            "postgres://db/x?sslmode=verify-ca&sslrootcert=/nonexistent/x.pem",
            Some("/other.pem"),
        )
        .unwrap_err();
        assert!(
            e.starts_with("sslrootcert: cannot read /nonexistent/x.pem"),
            "{e}"
        );
        let e = resolve("postgres://db/x?sslmode=require&sslrootcert=system", None).unwrap_err();
        assert!(e.contains("needs sslmode=verify-full"), "{e}");
        let e = resolve("postgres://db/x?sslmode=bogus", None).unwrap_err();
        assert!(e.contains("sslmode=\"bogus\""), "{e}");
        let e = resolve("postgres://db/x?sslmode=allow", None).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
    }
}
