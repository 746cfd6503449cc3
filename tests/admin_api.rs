//! The admin API in process (`oneshot` on the axum app over a temp config
//! file with the embedded store): every endpoint, every error status, and
//! the store unchanged after each rejected write.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use flexgate::admin::{app, AdminState};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tower::ServiceExt;

const TOKEN: &str = "t0ken-0123456789abcdef";

struct Env {
    _dir: tempfile::TempDir,
    path: PathBuf,
    st: AdminState,
}

fn config(extra: &str) -> String {
    format!(
        "admin:\n  token: {TOKEN}\n{extra}upstreams:\n  - name: app\n    url: http://127.0.0.1:9\n  - name: other\n    url: http://127.0.0.1:10\nroutes:\n  - path: /a/*\n    upstream: app\n  - id: b\n    path: /b\n    methods: [GET]\n    upstream: app\n"
    )
}

fn env_with(text: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flexgate.yaml");
    std::fs::write(&path, text).unwrap();
    let st = AdminState::for_file(&path).unwrap();
    Env {
        _dir: dir,
        path,
        st,
    }
}

fn env() -> Env {
    env_with(&config(""))
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn call(
    st: &AdminState,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Resp {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app(st.clone())
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    // An event stream never ends: its head is the answer.
    if headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    {
        return Resp {
            status,
            headers,
            body: Vec::new(),
        };
    }
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

const AUTH: (&str, &str) = ("authorization", "Bearer t0ken-0123456789abcdef");
const JSON: (&str, &str) = ("content-type", "application/json");

async fn get(st: &AdminState, uri: &str) -> Resp {
    call(st, "GET", uri, &[AUTH], vec![]).await
}

async fn send(st: &AdminState, method: &str, uri: &str, body: Value) -> Resp {
    call(
        st,
        method,
        uri,
        &[AUTH, JSON],
        body.to_string().into_bytes(),
    )
    .await
}

/// Everything the store holds, to prove a rejected write changed nothing.
fn disk(path: &Path) -> (String, Option<String>, Option<String>) {
    let dir = path.parent().unwrap();
    (
        std::fs::read_to_string(path).unwrap(),
        std::fs::read_to_string(dir.join("flexgate-keys.json")).ok(),
        std::fs::read_to_string(dir.join("flexgate-audit.jsonl")).ok(),
    )
}

fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    let j = r.json();
    assert_eq!(j["error"], code, "{j}");
    assert_eq!(j["status"], status);
    assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_required_and_probes_are_open() {
    let e = env();
    let r = call(&e.st, "GET", "/api/routes", &[], vec![]).await;
    assert_error(&r, 401, "unauthorized");
    assert_eq!(
        r.headers.get("www-authenticate").unwrap(),
        "Bearer realm=\"flexgate-admin\""
    );
    let r = call(
        &e.st,
        "GET",
        "/api/routes",
        &[("authorization", "Bearer nope")],
        vec![],
    )
    .await;
    assert_error(&r, 401, "unauthorized");
    assert_eq!(get(&e.st, "/api/routes").await.status, 200);
    assert_eq!(
        call(&e.st, "GET", "/metrics", &[], vec![]).await.status,
        200
    );
    assert_eq!(call(&e.st, "GET", "/health", &[], vec![]).await.status, 200);
    assert_error(&get(&e.st, "/api/nothing").await, 404, "not_found");

    // No token configured: the API refuses and says why.
    let open = env_with("upstreams: []\n");
    let r = call(&open.st, "GET", "/api/routes", &[AUTH], vec![]).await;
    assert_error(&r, 403, "admin_disabled");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("admin.token"));

    // publicEndpoints: false puts the probes behind the token too.
    let private = env_with(&config("").replace("admin:\n", "admin:\n  publicEndpoints: false\n"));
    assert_eq!(
        call(&private.st, "GET", "/metrics", &[], vec![])
            .await
            .status,
        401
    );
    assert_eq!(
        call(&private.st, "GET", "/health/ready", &[], vec![])
            .await
            .status,
        401
    );
    assert_eq!(
        call(&private.st, "GET", "/metrics", &[AUTH], vec![])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_crud_is_live_persisted_and_audited() {
    let e = env();
    let list = get(&e.st, "/api/routes").await.json();
    assert_eq!(list["version"], 1);
    assert_eq!(list["routes"][0]["id"], "route-0", "implicit ids are shown");

    // The original project's body.
    let r = send(
        &e.st,
        "POST",
        "/api/routes",
        json!({"path": "/c/*", "targetUrl": "http://127.0.0.1:11", "methods": ["GET", "POST"],
               "enabled": true, "rateLimit": {"requests": 100, "window": "60s"}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let j = r.json();
    assert_eq!(j["version"], 2);
    assert_eq!(r.headers.get("x-config-version").unwrap(), "2");
    let id = j["route"]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("route-"));
    // Live before the answer: the snapshot has it.
    let snap = e.st.config.current();
    assert_eq!(snap.version, 2);
    assert!(snap.routes_by_id.contains_key(id.as_str()));
    // Persisted: the file reads back with the route, and `check` accepts it.
    let back = flexgate::config::load_file(&e.path).unwrap();
    assert!(back.routes.iter().any(|r| r.id.as_deref() == Some(&id)));
    assert!(std::fs::read_to_string(e.path.with_extension("yaml.prev")).is_ok());

    let r = send(
        &e.st,
        "PUT",
        &format!("/api/routes/{id}"),
        json!({"path": "/c/*", "upstream": "other"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["route"]["upstream"], "other");
    assert_eq!(
        get(&e.st, &format!("/api/routes/{id}")).await.json()["route"]["upstream"],
        "other"
    );

    let r = call(
        &e.st,
        "DELETE",
        &format!("/api/routes/{id}"),
        &[AUTH],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"version": 4, "deleted": id}));
    assert_error(
        &get(&e.st, &format!("/api/routes/{id}")).await,
        404,
        "not_found",
    );
    assert!(!e.st.config.current().routes_by_id.contains_key(id.as_str()));

    let logs = get(&e.st, "/api/logs?resource=route").await.json();
    let actions: Vec<&str> = logs["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["delete", "update", "create"]);
    let update = &logs["entries"][1];
    assert_eq!(update["resource"], format!("route/{id}"));
    assert_eq!(update["actor"], "admin-token");
    assert_eq!(update["before"]["targetUrl"], "http://127.0.0.1:11");
    assert_eq!(update["after"]["upstream"], "other");
    assert_eq!(update["version"], 3);
    assert_error(
        &get(&e.st, "/api/logs?since=yesterday").await,
        400,
        "bad_request",
    );
    assert_error(
        &get(&e.st, "/api/logs?limit=many").await,
        400,
        "bad_request",
    );
    let today = get(
        &e.st,
        "/api/logs?since=2000-01-01&until=2999-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(today.json()["entries"].as_array().unwrap().len(), 3);
    let page = get(&e.st, "/api/logs?limit=1").await.json();
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    let older = get(&e.st, &format!("/api/logs?limit=5&before={}", page["next"]))
        .await
        .json();
    assert_eq!(older["entries"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_writes_change_nothing() {
    let e = env();
    let before = disk(&e.path);
    let st = &e.st;
    // 400 malformed JSON.
    let r = call(
        st,
        "POST",
        "/api/routes",
        &[AUTH, JSON],
        b"{\"path\": ".to_vec(),
    )
    .await;
    assert_error(&r, 400, "invalid_json");
    // 415 wrong content type.
    let r = call(
        st,
        "POST",
        "/api/routes",
        &[AUTH, ("content-type", "text/plain")],
        b"{}".to_vec(),
    )
    .await;
    assert_error(&r, 415, "unsupported_media_type");
    let r = call(st, "POST", "/api/routes", &[AUTH], b"{}".to_vec()).await;
    assert_error(&r, 415, "unsupported_media_type");
    // 413 too large.
    let big = format!("{{\"path\": \"/{}\"}}", "x".repeat(3 << 20));
    let r = call(st, "POST", "/api/routes", &[AUTH, JSON], big.into_bytes()).await;
    assert_error(&r, 413, "payload_too_large");
    // 404 unknown id.
    assert_error(
        &send(
            st,
            "PUT",
            "/api/routes/nope",
            json!({"path": "/x", "upstream": "app"}),
        )
        .await,
        404,
        "not_found",
    );
    assert_error(
        &call(st, "DELETE", "/api/routes/nope", &[AUTH], vec![]).await,
        404,
        "not_found",
    );
    assert_error(
        &call(st, "DELETE", "/api/keys/nope", &[AUTH], vec![]).await,
        404,
        "not_found",
    );
    // 409 conflicting path (same path, overlapping methods) and id.
    let r = send(
        st,
        "POST",
        "/api/routes",
        json!({"path": "/b", "methods": ["get"], "upstream": "other"}),
    )
    .await;
    assert_error(&r, 409, "conflict");
    assert!(r.json()["message"].as_str().unwrap().contains("\"b\""));
    assert_error(
        &send(
            st,
            "POST",
            "/api/routes",
            json!({"id": "b", "path": "/z", "upstream": "app"}),
        )
        .await,
        409,
        "conflict",
    );
    assert_error(
        &send(
            st,
            "POST",
            "/api/upstreams",
            json!({"name": "app", "url": "http://127.0.0.1:12"}),
        )
        .await,
        409,
        "conflict",
    );
    // 409 deleting an upstream in use.
    let r = call(st, "DELETE", "/api/upstreams/app", &[AUTH], vec![]).await;
    assert_error(&r, 409, "conflict");
    assert!(r.json()["message"].as_str().unwrap().contains("route-0"));
    // 422 semantically invalid, with the field path.
    let r = send(
        st,
        "POST",
        "/api/routes",
        json!({"path": "/q", "upstream": "missing"}),
    )
    .await;
    assert_error(&r, 422, "invalid_config");
    let details = r.json()["details"].clone();
    assert!(
        details
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"].as_str().unwrap().ends_with(".upstream")),
        "{details}"
    );
    let r = send(
        st,
        "POST",
        "/api/routes",
        json!({"path": "/q", "upstream": "app", "methods": 5}),
    )
    .await;
    assert_error(&r, 422, "invalid");
    assert_eq!(r.json()["details"][0]["path"], "methods");
    let r = send(
        st,
        "POST",
        "/api/routes",
        json!({"path": "/q", "upstream": "app", "upstrem": "x"}),
    )
    .await;
    assert_error(&r, 422, "invalid");
    assert_eq!(r.json()["details"][0]["path"], "upstrem");
    let r = send(
        st,
        "POST",
        "/api/upstreams",
        json!({"name": "meta", "url": "http://169.254.169.254/"}),
    )
    .await;
    assert_error(&r, 422, "invalid_config");
    let r = send(
        st,
        "POST",
        "/api/keys",
        json!({"name": "k", "expiresIn": "soon"}),
    )
    .await;
    assert_error(&r, 422, "invalid");
    // 409 stale If-Match; 400 malformed If-Match.
    let r = call(
        st,
        "DELETE",
        "/api/routes/b",
        &[AUTH, ("if-match", "\"7\"")],
        vec![],
    )
    .await;
    assert_error(&r, 409, "version_conflict");
    let r = call(
        st,
        "DELETE",
        "/api/routes/b",
        &[AUTH, ("if-match", "soon")],
        vec![],
    )
    .await;
    assert_error(&r, 400, "bad_request");
    // 405 for a method an endpoint does not take.
    let r = call(st, "PATCH", "/api/routes", &[AUTH], vec![]).await;
    assert_error(&r, 405, "method_not_allowed");

    assert_eq!(disk(&e.path), before, "no rejected write touched the store");
    assert_eq!(st.config.current().version, 1);
    // A matching If-Match goes through.
    let r = call(
        st,
        "DELETE",
        "/api/routes/b",
        &[AUTH, ("if-match", "\"1\"")],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_and_webhooks_crud() {
    let e = env();
    let st = &e.st;
    let r = send(st, "POST", "/api/upstreams", json!({"name": "new", "targets": [{"url": "http://127.0.0.1:13", "weight": 2}], "retries": 1})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["upstream"]["targets"][0]["weight"], 2);
    assert_error(
        &send(
            st,
            "POST",
            "/api/upstreams",
            json!({"url": "http://127.0.0.1:13"}),
        )
        .await,
        422,
        "invalid",
    );
    let r = send(
        st,
        "PUT",
        "/api/upstreams/new",
        json!({"name": "renamed", "url": "http://127.0.0.1:13"}),
    )
    .await;
    assert_error(&r, 422, "invalid");
    assert_eq!(
        call(st, "DELETE", "/api/upstreams/other", &[AUTH], vec![])
            .await
            .status,
        200
    );
    let names: Vec<String> = get(st, "/api/upstreams").await.json()["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["app", "new"]);

    let r = send(
        st,
        "POST",
        "/api/webhooks",
        json!({"url": "http://127.0.0.1:14/hook", "events": ["circuit_breaker.opened"]}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["webhook"]["id"].as_str().unwrap().to_string();
    assert_error(
        &send(
            st,
            "POST",
            "/api/webhooks",
            json!({"url": "http://127.0.0.1:14/", "events": ["no.such"]}),
        )
        .await,
        422,
        "invalid_config",
    );
    assert_eq!(
        get(st, "/api/webhooks").await.json()["webhooks"][0]["id"],
        id.as_str()
    );
    assert_eq!(
        call(
            st,
            "DELETE",
            &format!("/api/webhooks/{id}"),
            &[AUTH],
            vec![]
        )
        .await
        .status,
        200
    );
    assert!(get(st, "/api/webhooks").await.json()["webhooks"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_show_the_secret_once_and_revoke() {
    let e = env_with(&config("security:\n  auth:\n    keys:\n      - key: 2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\n        name: from-config\n"));
    let st = &e.st;
    let r = send(
        st,
        "POST",
        "/api/keys",
        json!({"name": "ci", "scopes": ["read"], "expiresIn": "30d"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let j = r.json();
    let secret = j["secret"].as_str().unwrap().to_string();
    let id = j["key"]["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("fgk_"));
    assert_eq!(j["key"]["source"], "generated");
    assert!(j["key"]["expiresAt"].as_u64().unwrap() > 1_700_000_000);
    // The plaintext is nowhere: not in the store, the audit log, or listings.
    let (cfg, keys, audit) = disk(&e.path);
    for text in [cfg, keys.unwrap(), audit.unwrap()] {
        assert!(!text.contains(&secret));
    }
    let list = get(st, "/api/keys").await;
    assert!(!list.text().contains(&secret) && !list.text().contains("digest"));
    let listed = list.json();
    let names: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["from-config", "ci"]);
    // The key works on this node right away.
    let snap = st.config.current();
    assert!(snap
        .keys
        .verify(secret.as_bytes(), "any", &[], flexgate::clock::unix_now())
        .is_ok());
    assert_error(
        &send(st, "POST", "/api/keys", json!({"name": "ci"})).await,
        409,
        "conflict",
    );
    assert_error(
        &send(st, "POST", "/api/keys", json!({"name": "from-config"})).await,
        409,
        "conflict",
    );

    let r = call(st, "DELETE", &format!("/api/keys/{id}"), &[AUTH], vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["key"]["revoked"], true);
    assert!(st
        .config
        .current()
        .keys
        .verify(secret.as_bytes(), "any", &[], flexgate::clock::unix_now())
        .is_err());
    assert_error(
        &call(st, "DELETE", &format!("/api/keys/{id}"), &[AUTH], vec![]).await,
        409,
        "conflict",
    );
    // Config keys are revoked in the config.
    let r = call(st, "DELETE", "/api/keys/config-0", &[AUTH], vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let back = flexgate::config::load_file(&e.path).unwrap();
    assert_eq!(back.security.auth.unwrap().keys[0].revoked, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_export_import_round_trips_with_dry_run() {
    let e = env();
    let st = &e.st;
    let r = get(st, "/api/config").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("content-type").unwrap(), "application/yaml");
    let exported = r.text();
    // What `flexgate check` accepts.
    flexgate::config::parse_and_validate(&exported).unwrap();
    assert!(
        !exported.contains("token"),
        "boot settings are not exported"
    );
    let j = get(st, "/api/config?format=json").await.json();
    assert_eq!(j["routes"][1]["id"], "b");
    assert_error(&get(st, "/api/config?format=xml").await, 400, "bad_request");

    // Re-importing the export changes nothing.
    let yaml = ("content-type", "application/yaml");
    let r = call(
        st,
        "POST",
        "/api/config",
        &[AUTH, yaml],
        exported.clone().into_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changes"], json!([]));
    assert_eq!(r.json()["applied"], false);

    let changed = exported.replace("path: /b", "path: /bee") + "webhooks:\n- url: http://127.0.0.1:15/\n  events: [config.changed]\nproxy:\n  port: 4000\n";
    let before = disk(&e.path);
    let r = call(
        st,
        "POST",
        "/api/config?dryRun=true",
        &[AUTH, yaml],
        changed.clone().into_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["dryRun"], true);
    assert_eq!(j["applied"], false);
    assert_eq!(j["version"], 1);
    let hook = flexgate::config::WebhookConfig {
        url: "http://127.0.0.1:15/".into(),
        ..Default::default()
    }
    .effective_id();
    assert_eq!(
        j["changes"],
        json!([{"action": "update", "resource": "route/b"}, {"action": "create", "resource": format!("webhook/{hook}")}])
    );
    assert_eq!(j["ignored"], json!(["proxy.port"]));
    assert_eq!(disk(&e.path), before, "a dry run writes nothing");

    let r = call(
        st,
        "POST",
        "/api/config",
        &[AUTH, yaml],
        changed.into_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["applied"], true);
    assert_eq!(r.json()["version"], 2);
    assert!(st
        .config
        .current()
        .source
        .routes
        .iter()
        .any(|r| r.path.as_deref() == Some("/bee")));
    let logs = get(st, "/api/logs?resource=webhook").await.json();
    assert_eq!(logs["entries"][0]["action"], "create");

    // JSON bodies too, with escapes YAML parsers read differently (an emoji as a surrogate pair).
    let json_doc = r#"{"routes": [{"id": "b", "path": "/bee", "upstream": "app", "name": "\ud83d\ude80"}], "upstreams": [{"name": "app", "url": "http://127.0.0.1:9"}]}"#;
    let r = call(
        st,
        "POST",
        "/api/config?dryRun=true",
        &[AUTH, JSON],
        json_doc.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        st,
        "POST",
        "/api/config?dryRun=true",
        &[AUTH, JSON],
        b"{\"routes\": [".to_vec(),
    )
    .await;
    assert_error(&r, 400, "invalid_json");

    // Invalid documents: 400 for syntax, 422 with every path for content.
    let r = call(
        st,
        "POST",
        "/api/config",
        &[AUTH, yaml],
        b"routes: [".to_vec(),
    )
    .await;
    assert_error(&r, 400, "invalid_yaml");
    let bad = "upstreams:\n- name: x\n  url: ftp://nope\nroutes:\n- path: /x\n  upstream: y\n";
    let r = call(
        st,
        "POST",
        "/api/config",
        &[AUTH, yaml],
        bad.as_bytes().to_vec(),
    )
    .await;
    assert_error(&r, 422, "invalid_config");
    let paths: Vec<String> = r.json()["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect();
    assert!(paths.contains(&"upstreams[0].url".to_string()), "{paths:?}");
    assert!(
        paths.contains(&"routes[0].upstream".to_string()),
        "{paths:?}"
    );
    let r = call(
        st,
        "POST",
        "/api/config",
        &[AUTH, ("content-type", "text/plain")],
        b"{}".to_vec(),
    )
    .await;
    assert_error(&r, 415, "unsupported_media_type");
    assert_eq!(st.config.current().version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_for_browsers_with_csrf_protection() {
    let e = env();
    let st = &e.st;
    let r = call(
        st,
        "POST",
        "/api/session",
        &[JSON],
        json!({"token": "wrong"}).to_string().into_bytes(),
    )
    .await;
    assert_error(&r, 401, "unauthorized");
    let r = call(
        st,
        "POST",
        "/api/session",
        &[JSON],
        json!({"token": TOKEN}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let set = r
        .headers
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/api"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let c = ("cookie", cookie.as_str());
    assert_eq!(
        call(st, "GET", "/api/routes", &[c], vec![]).await.status,
        200
    );
    // A same-origin write with the cookie works; a cross-site one is refused.
    let body = json!({"path": "/s", "upstream": "app"})
        .to_string()
        .into_bytes();
    let host = ("host", "127.0.0.1:9180");
    let r = call(
        st,
        "POST",
        "/api/routes",
        &[c, JSON, host, ("origin", "https://evil.example")],
        body.clone(),
    )
    .await;
    assert_error(&r, 403, "cross_site_request");
    let r = call(
        st,
        "POST",
        "/api/routes",
        &[c, JSON, host, ("origin", "http://127.0.0.1:9180")],
        body,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        get(st, "/api/logs?limit=1").await.json()["entries"][0]["actor"],
        "session"
    );
    // Sign out: the cookie stops working.
    assert_eq!(
        call(st, "DELETE", "/api/session", &[c], vec![])
            .await
            .status,
        204
    );
    assert_error(
        &call(st, "GET", "/api/routes", &[c], vec![]).await,
        401,
        "unauthorized",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_history_needs_database_mode_and_names_a_bad_parameter() {
    let e = env();
    let r = get(&e.st, "/api/metrics/history").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"], "not_database_mode");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("DATABASE_URL"));
    let r = get(&e.st, "/api/metrics/history?to=soon").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["details"][0]["path"], "to");
    let r = get(&e.st, "/api/metrics/history?limit=5").await;
    assert_eq!(r.status, 400, "unknown parameters are refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_endpoint() {
    let e = env();
    let r = get(&e.st, "/api/openapi.json").await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("/health", "get"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/metrics", "get"),
        ("/api/session", "post"),
        ("/api/session", "delete"),
        ("/api/routes", "get"),
        ("/api/routes", "post"),
        ("/api/routes/{key}", "get"),
        ("/api/routes/{key}", "put"),
        ("/api/routes/{key}", "delete"),
        ("/api/upstreams", "get"),
        ("/api/upstreams", "post"),
        ("/api/upstreams/{key}", "get"),
        ("/api/upstreams/{key}", "put"),
        ("/api/upstreams/{key}", "delete"),
        ("/api/webhooks", "get"),
        ("/api/webhooks", "post"),
        ("/api/webhooks/{key}", "get"),
        ("/api/webhooks/{key}", "put"),
        ("/api/webhooks/{key}", "delete"),
        ("/api/webhooks/{key}/deliveries", "get"),
        ("/api/webhooks/{key}/deliveries/{delivery}", "get"),
        ("/api/webhooks/{key}/deliveries/{delivery}/retry", "post"),
        ("/api/webhooks/{key}/test", "post"),
        ("/api/keys", "get"),
        ("/api/keys", "post"),
        ("/api/keys/{id}", "get"),
        ("/api/keys/{id}", "delete"),
        ("/api/config", "get"),
        ("/api/config", "post"),
        ("/api/logs", "get"),
        ("/api/metrics", "get"),
        ("/api/stream/metrics", "get"),
        ("/api/stream/alerts", "get"),
        ("/api/metrics/history", "get"),
        ("/api/openapi.json", "get"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = 0;
    for (p, ops) in paths {
        documented += ops.as_object().unwrap().len();
        let _ = p;
    }
    for (p, m) in expected {
        assert!(doc["paths"][p][m].is_object(), "{m} {p} is not documented");
    }
    assert_eq!(
        documented,
        expected.len(),
        "no undocumented extras, no missing ones"
    );
    // The admin defences' answers are documented on every operation.
    for (p, m) in expected {
        let responses = &doc["paths"][p][m]["responses"];
        assert!(responses["421"].is_object(), "{m} {p}: 421");
        if p.starts_with("/api/") {
            assert!(responses["429"].is_object(), "{m} {p}: 429");
            assert!(responses["403"].is_object(), "{m} {p}: 403");
        }
    }
    assert!(doc["paths"]["/api/config"]["post"]["responses"]["408"].is_object());
    assert!(
        doc["components"]["schemas"]["AdminSection"]["properties"]["maxConnections"].is_object()
    );
    // Every documented operation answers something other than 404/405.
    for (p, m) in expected {
        let uri = p.replace("{key}", "route-0").replace("{id}", "config-0");
        let r = call(&e.st, &m.to_uppercase(), &uri, &[AUTH], vec![]).await;
        assert!(
            r.status != 404 || uri.contains("route-0") || uri.contains("config-0"),
            "{m} {uri}: {}",
            r.status
        );
        assert_ne!(r.status, 405, "{m} {uri}");
    }
}
