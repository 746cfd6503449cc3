//! TLS to the gateway's dependencies: PostgreSQL, Redis and NATS.
//!
//! Every client configuration is built here, with the `ring` crypto
//! provider named explicitly (never whichever provider happens to be
//! installed process-wide), from one of:
//!
//! - a CA file (`database.caFile` / `sslrootcert=`, `redis.caFile`,
//!   `nats.caFile`): PEM, one or more certificates; the server's chain must
//!   end at one of them;
//! - the system trust store (`/etc/ssl/certs` and the like), when no CA file
//!   is given for a dependency that always verifies (`rediss://`, `tls://`);
//! - no verification at all, for PostgreSQL's `sslmode=prefer`/`require`
//!   without a CA (encryption only, as libpq does).
//!
//! URLs in log lines go through [`crate::config::redact::url`], which hides a
//! log line or an error message.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::sync::{Arc, OnceLock};

/// The crypto provider of every dependency connection.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            // Libraries that build their own configurations ask for the
            // process default; with several providers compiled in there is
            // none unless one is installed. Installing fails harmlessly when
            // another is already in place.
            let _ = rustls::crypto::ring::default_provider().install_default();
            Arc::new(rustls::crypto::ring::default_provider())
        })
        .clone()
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
}

/// A CA file setting resolved against the config file's folder when it is
/// relative.
pub fn relative_to_config(config_path: &std::path::Path, file: &str) -> String {
    let path = std::path::Path::new(file);
    if file.trim().is_empty() || path.is_absolute() {
        return file.to_string();
    }
    config_path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(path)
        .display()
        .to_string()
}

/// The certificates of a PEM CA file; `field` names the setting in errors.
pub fn read_ca(field: &str, path: &str) -> Result<RootCertStore, String> {
    let text = std::fs::read(path).map_err(|e| format!("{field}: cannot read {path}: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&text) {
        let cert =
            cert.map_err(|e| format!("{field}: {path} is not a PEM certificate file: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{field}: {path} holds an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{field}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(roots)
}

/// The system trust store.
pub fn system_roots(field: &str) -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), ToString::to_string);
        return Err(format!(
            "{field}: no system CA certificates to verify the server with ({why}); set a CA file"
        ));
    }
    Ok(roots)
}

/// `ca_file`'s certificates, else the system trust store.
pub fn roots(field: &str, ca_file: Option<&str>) -> Result<RootCertStore, String> {
    match ca_file.filter(|f| !f.trim().is_empty()) {
        Some(path) => read_ca(field, path),
        None => system_roots(field),
    }
}

/// Full verification: the chain ends at one of `roots` and the certificate
/// names the host connected to.
pub fn verify_full(roots: RootCertStore) -> ClientConfig {
    builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The chain ends at one of `roots`; the host name is not checked
/// (PostgreSQL's `sslmode=verify-ca`).
pub fn verify_chain_only(roots: RootCertStore) -> Result<ClientConfig, String> {
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("cannot use the CA certificates: {e}"))?;
    Ok(builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
        .with_no_client_auth())
}

/// Encryption without verification (PostgreSQL's `sslmode=prefer` and
/// `require` without a CA). The handshake signatures are still checked, so
/// the session is bound to the certificate the server presented.
pub fn encrypt_only() -> ClientConfig {
    builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
        .with_no_client_auth()
}

/// Accepts any certificate (see [`encrypt_only`]).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies the chain, not the name (see [`verify_chain_only`]).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// NATS connect options for `url` (one URL or a comma-separated list):
/// with a `tls://` URL or a CA file (`nats.caFile`) TLS is required and
/// the server is verified against the CA file, else the system trust
/// store. A `nats://` server that asks for TLS is verified the same way.
pub fn nats_options(
    url: &str,
    ca_file: Option<&str>,
) -> Result<async_nats::ConnectOptions, String> {
    let ca_file = ca_file.filter(|f| !f.trim().is_empty());
    let tls = ca_file.is_some()
        || url
            .split(',')
            .any(|u| u.trim().to_ascii_lowercase().starts_with("tls://"));
    let options = async_nats::ConnectOptions::new();
    match roots("nats.caFile", ca_file) {
        Ok(roots) => Ok(options
            .tls_client_config(verify_full(roots))
            .require_tls(tls)),
        Err(e) if tls => Err(e),
        // Plain NATS, and no system store to offer a server asking for TLS.
        Err(_) => Ok(options),
    }
}

/// Connects to NATS (see [`nats_options`]) as `name`. A first attempt
/// reports why it failed (a refused connection, a certificate the CA did
/// not sign, …) in one log line; the client then keeps retrying in the
/// background and the caller gets it at once, as when NATS is down.
pub async fn nats_connect(
    url: &str,
    ca_file: Option<&str>,
    name: String,
) -> Result<async_nats::Client, String> {
    let first = nats_options(url, ca_file)?
        .connection_timeout(std::time::Duration::from_secs(2))
        .name(name.clone())
        .connect(url)
        .await;
    match first {
        Ok(client) => return Ok(client),
        Err(e) => {
            let cause = error_chain(&e);
            let tls = if hint(&cause).is_empty() {
                String::new()
            } else {
                format!(
                    "{} [verified against {}]",
                    hint(&cause),
                    trust_source("nats.caFile", ca_file)
                )
            };
            tracing::warn!(
                url = %crate::config::redact::url(url),
                "NATS: cannot connect: {cause}{tls}; retrying in the background"
            )
        }
    }
    nats_options(url, ca_file)?
        .retry_on_initial_connect()
        .connection_timeout(std::time::Duration::from_secs(2))
        .name(name)
        .connect(url)
        .await
        .map_err(|e| error_chain(&e))
}

/// An error and its causes, each once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

/// A hint for a TLS failure known only by its text (errors of client
/// libraries that keep the rustls error as text): empty when none fits.
pub fn hint(text: &str) -> &'static str {
    if text.contains("UnknownIssuer") {
        " (the server's certificate is not signed by the configured CA)"
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        " (the server's certificate does not name the host connected to)"
    } else if text.contains("Expired") {
        " (the server's certificate has expired)"
    } else {
        ""
    }
}

/// Where a dependency's certificates are verified against, for messages.
pub fn trust_source(field: &str, ca_file: Option<&str>) -> String {
    match ca_file.filter(|f| !f.trim().is_empty()) {
        Some(f) => format!("{field} {f}"),
        None => "the system trust store".into(),
    }
}

/// A TLS error in plain words, with a hint for the usual causes.
pub fn explain(e: &rustls::Error) -> String {
    let hint = match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            " (the server's certificate is not signed by the configured CA)"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => " (the server's certificate does not name the host connected to)",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => " (the server's certificate has expired)",
        _ => "",
    };
    format!("{e}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_ca_files_are_beside_the_config() {
        let config = std::path::Path::new("/etc/flexgate/flexgate.yaml");
        assert_eq!(
            relative_to_config(config, "certs/db-ca.pem"),
            "/etc/flexgate/certs/db-ca.pem"
        );
        assert_eq!(relative_to_config(config, "/srv/ca.pem"), "/srv/ca.pem");
    }

    #[test]
    fn ca_files_are_checked_with_the_field_in_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = read_ca("redis.caFile", missing.to_str().unwrap()).unwrap_err();
        assert!(e.starts_with("redis.caFile: cannot read"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = read_ca("nats.caFile", junk.to_str().unwrap()).unwrap_err();
        assert!(
            e.contains("nats.caFile") && e.contains("no PEM certificate"),
            "{e}"
        );
    }
}
