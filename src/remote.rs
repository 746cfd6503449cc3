//! `flexgate config dump | diff | apply`: the config as code, against a
//! running gateway's admin API (`--admin URL`, default
//! `http://127.0.0.1:9180`; the token from `--token-file` or
//! `FLEXGATE_ADMIN_TOKEN`).
//!
//! - `dump` prints the running dynamic config (`GET /api/config`), YAML by
//!   default, headed by a comment naming its version;
//! - `diff -f FILE` shows what applying FILE would change: the unified
//!   diff of the two documents in one normal form, and the changes the
//!   gateway itself reports (`POST /api/config?dryRun=true`); exit 0 when
//!   nothing would change, 1 when something would, 2 on an error (like
//!   `diff`);
//! - `apply -f FILE` imports FILE with `If-Match` on the version it was
//!   reviewed against: `--if-version N`, else the version in FILE's
//!   `# flexgate config version N` header (as `dump` writes it). When the
//!   running config moved meanwhile, nothing changes and the exit code is 1
//!   (as for any failure of `dump` or `apply`).
//!   `--force` applies whatever the version.
//!
//! Plain HTTP/1.1 (the admin listener is loopback HTTP); one request per
//! connection, bounded by a 30 s timeout.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::time::Duration;

/// Where the admin API is and how to sign in.
pub struct Admin {
    /// `host:port`.
    pub authority: String,
    pub token: String,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// An answer: status, config version header, body.
pub struct Answer {
    pub status: u16,
    pub version: Option<u64>,
    pub body: String,
}

const TIMEOUT: Duration = Duration::from_secs(30);
/// The header line `dump` writes and `apply` reads.
const VERSION_HEADER: &str = "# flexgate config version ";

impl Admin {
    /// From `--admin` and the token source; errors name the flag.
    pub fn new(url: &str, token_file: Option<&std::path::Path>) -> Result<Admin, String> {
        let authority = match url.strip_prefix("http://") {
            Some(rest) => rest.trim_end_matches('/').to_string(),
            None if url.starts_with("https://") => {
                return Err(
                    "--admin: the admin listener speaks plain HTTP (reach a remote one through an SSH tunnel)"
                        .into(),
                )
            }
            None => return Err(format!("--admin {url:?}: expected http://host:port")),
        };
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("--admin {url:?}: expected http://host:port"));
        }
        let token = match token_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| format!("--token-file {}: {e}", f.display()))?
                .trim()
                .to_string(),
            None => std::env::var("FLEXGATE_ADMIN_TOKEN").map_err(|_| {
                "no admin token: pass --token-file FILE or set FLEXGATE_ADMIN_TOKEN".to_string()
            })?,
        };
        Ok(Admin { authority, token })
    }

    /// One request.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            tokio::time::timeout(TIMEOUT, self.exchange(method, path, headers, body))
                .await
                .map_err(|_| format!("{method} {path}: no answer within {}s", TIMEOUT.as_secs()))?
        })
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("cannot reach the admin API at {}: {e}", self.authority))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("authorization", format!("Bearer {}", self.token));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let version = resp
            .headers()
            .get("x-config-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            version,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// The running config (YAML) and its version.
    pub fn running(&self) -> Result<(String, u64), String> {
        let a = self.call("GET", "/api/config", &[], Vec::new())?;
        if a.status != 200 {
            return Err(api_error("GET /api/config", &a));
        }
        Ok((a.body, a.version.unwrap_or(0)))
    }
}

/// The API's error message of a failed call.
fn api_error(what: &str, a: &Answer) -> String {
    let message = serde_json::from_str::<serde_json::Value>(&a.body)
        .ok()
        .and_then(|v| {
            let mut m = v["message"].as_str()?.to_string();
            if let Some(details) = v["details"].as_array() {
                for d in details {
                    m.push_str(&format!(
                        "\n  {}: {}",
                        d["path"].as_str().unwrap_or("?"),
                        d["message"].as_str().unwrap_or("?")
                    ));
                }
            }
            Some(m)
        })
        .unwrap_or_else(|| a.body.clone());
    format!("{what}: {} {message}", a.status)
}

/// `dump`: the running config with its version header.
pub fn dump(admin: &Admin, json: bool) -> Result<String, String> {
    if json {
        let a = admin.call("GET", "/api/config?format=json", &[], Vec::new())?;
        if a.status != 200 {
            return Err(api_error("GET /api/config", &a));
        }
        return Ok(a.body);
    }
    let (yaml, version) = admin.running()?;
    Ok(format!(
        "{VERSION_HEADER}{version} (flexgate config dump; apply with: flexgate config apply -f <this file>)\n{yaml}"
    ))
}

/// A document in one normal form (sorted keys, YAML), for a reviewable diff.
fn normal(text: &str, what: &str) -> Result<String, String> {
    let v: serde_json::Value =
        serde_yaml::from_str(text).map_err(|e| format!("{what}: not YAML or JSON: {e}"))?;
    let sorted: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_value(v).map_err(|_| format!("{what}: not a config document"))?;
    serde_yaml::to_string(&sorted).map_err(|e| e.to_string())
}

fn content_type(file: &str) -> &'static str {
    if file.trim_start().starts_with('{') {
        "application/json"
    } else {
        "application/yaml"
    }
}

/// The changes of an import answer, as `update route/a` lines.
fn change_list(result: &serde_json::Value) -> Vec<String> {
    result["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} {}",
                c["action"].as_str().unwrap_or("?"),
                c["resource"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// What `diff` found.
pub struct Diff {
    /// Unified diff of the normal forms (empty when equal).
    pub text: String,
    /// The changes the gateway reports (`update route/a`, …).
    pub changes: Vec<String>,
    pub version: u64,
}

/// `diff`: FILE against the running config.
pub fn diff(admin: &Admin, file_text: &str, file_name: &str) -> Result<Diff, String> {
    let (running, version) = admin.running()?;
    let dry = admin.call(
        "POST",
        "/api/config?dryRun=true",
        &[("content-type", content_type(file_text).to_string())],
        file_text.as_bytes().to_vec(),
    )?;
    if dry.status != 200 {
        return Err(api_error("the gateway refuses the file", &dry));
    }
    let result: serde_json::Value = serde_json::from_str(&dry.body).map_err(|e| e.to_string())?;
    let changes = change_list(&result);
    let (a, b) = (
        normal(&running, "the running config")?,
        normal(file_text, file_name)?,
    );
    let text = similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .header(&format!("running (version {version})"), file_name)
        .to_string();
    Ok(Diff {
        text,
        changes,
        version,
    })
}

/// The version a file was dumped at (its header), if any.
pub fn dumped_version(file_text: &str) -> Option<u64> {
    let rest = file_text.lines().next()?.strip_prefix(VERSION_HEADER)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `apply`: imports FILE with `If-Match: version` (none with `None`).
/// Returns the new version and the changes.
pub fn apply(
    admin: &Admin,
    file_text: &str,
    version: Option<u64>,
) -> Result<(u64, Vec<String>), String> {
    let mut headers = vec![("content-type", content_type(file_text).to_string())];
    if let Some(v) = version {
        headers.push(("if-match", format!("\"{v}\"")));
    }
    let a = admin.call(
        "POST",
        "/api/config",
        &headers,
        file_text.as_bytes().to_vec(),
    )?;
    if a.status == 409 {
        return Err(format!(
            "{}\nnothing was applied: run flexgate config diff again and review",
            api_error("the running config changed since it was reviewed", &a)
        ));
    }
    if a.status != 200 {
        return Err(api_error("POST /api/config", &a));
    }
    let result: serde_json::Value = serde_json::from_str(&a.body).map_err(|e| e.to_string())?;
    let changes = change_list(&result);
    Ok((result["version"].as_u64().unwrap_or(0), changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dump_header_carries_the_version() {
        assert_eq!(
            dumped_version("# flexgate config version 17 (flexgate config dump; …)\nroutes: []\n"),
            Some(17)
        );
        assert_eq!(dumped_version("routes: []\n"), None);
    }

    #[test]
    fn admin_urls_are_plain_http_host_port() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "a-token\n").unwrap();
        let admin = Admin::new("http://127.0.0.1:9180/", Some(&token)).unwrap();
        assert_eq!(admin.authority, "127.0.0.1:9180");
        assert_eq!(admin.token, "a-token");
        assert!(Admin::new("https://h:1", Some(&token))
            .unwrap_err()
            .contains("plain HTTP"));
        assert!(Admin::new("h:1", Some(&token)).is_err());
    }
}
