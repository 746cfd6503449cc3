//! The admin web UI at `/admin`: how it is served (content types, CSP and
//! the other headers, cache rules, the index fallback for the UI's own
//! paths, the content-hashed asset base), and the browser tests
//! (`tests/ui/run.mjs`: Playwright driving Debian's chromium against this
//! binary and a real upstream).
mod common;

use common::*;
use std::process::Command;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn gateway() -> Gateway {
    Gateway::start(
        "",
        "upstreams:\n  - name: app\n    url: http://127.0.0.1:9\n",
    )
}

fn assets_base(admin: u16) -> String {
    let html = request(admin, "GET", "/admin", &[], b"").text();
    let at = html
        .find("/admin/assets/")
        .expect("index names the asset base");
    let rest = &html[at + "/admin/assets/".len()..];
    let hash: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    assert_eq!(hash.len(), 16, "{html}");
    format!("/admin/assets/{hash}")
}

fn assert_secure_headers(r: &Response) {
    assert_eq!(r.header("content-security-policy"), Some(CSP));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
}

#[test]
fn index_and_client_paths_answer_the_page_uncached() {
    let gw = gateway();
    for path in [
        "/admin",
        "/admin/",
        "/admin/routes",
        "/admin/login?next=x",
        "/admin/a/b/c",
    ] {
        let r = request(gw.admin_port, "GET", path, &[], b"");
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
        assert_secure_headers(&r);
        let html = r.text();
        assert!(html.contains("<div id=\"app\">"), "{html}");
        assert!(!html.contains("%ASSETS%"));
    }
    // No credentials needed for the page; the API still needs them.
    assert_eq!(
        request(gw.admin_port, "GET", "/api/routes", &[], b"").status,
        401
    );
}

#[test]
fn assets_are_hashed_immutable_and_typed() {
    let gw = gateway();
    let base = assets_base(gw.admin_port);
    for (file, ty) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("lib/api.js", "text/javascript; charset=utf-8"),
        (
            "vendor/htm-preact-standalone.js",
            "text/javascript; charset=utf-8",
        ),
        ("vendor/uPlot.esm.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let r = request(gw.admin_port, "GET", &format!("{base}/{file}"), &[], b"");
        assert_eq!(r.status, 200, "{file}");
        assert_eq!(r.header("content-type"), Some(ty), "{file}");
        assert_eq!(
            r.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{file}"
        );
        assert_secure_headers(&r);
        assert!(!r.body.is_empty());
    }
    // Another build's hash, a missing file, the index or a type file under
    // the asset base: 404, never cached.
    for path in [
        "/admin/assets/0123456789abcdef/app.js".to_string(),
        format!("{base}/nope.js"),
        format!("{base}/index.html"),
        format!("{base}/vendor/uPlot.esm.d.ts"),
    ] {
        let r = request(gw.admin_port, "GET", &path, &[], b"");
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
    }
}

#[test]
fn ui_has_no_inline_code_and_no_remote_urls() {
    let gw = gateway();
    let base = assets_base(gw.admin_port);
    let html = request(gw.admin_port, "GET", "/admin", &[], b"").text();
    assert!(html.contains(&format!("<script type=\"module\" src=\"{base}/app.js\">")));
    for bad in [
        "<script>",
        " style=",
        " onload=",
        " onclick=",
        "http://",
        "https://",
    ] {
        assert!(!html.contains(bad), "index.html has {bad:?}");
    }
    // The app's own modules load nothing from elsewhere.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("admin/ui");
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("vendor") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "js") {
                let text = std::fs::read_to_string(&p).unwrap();
                for bad in ["from 'http", "from \"http", "import('http", "cdn."] {
                    assert!(!text.contains(bad), "{} has {bad:?}", p.display());
                }
            }
        }
    }
}

#[test]
fn ui_respects_allowed_hosts() {
    let gw = Gateway::start_edited(
        &|s| {
            s.replace(
                "  token: test-admin-token\n",
                "  token: test-admin-token\n  allowedHosts: [\"admin.example\"]\n",
            )
        },
        "",
        &[],
        &[],
    );
    let send = |host: &str| {
        raw(
            gw.admin_port,
            format!("GET /admin HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        )
        .unwrap()
        .status
    };
    assert_eq!(send("evil.example"), 421);
    assert_eq!(send("admin.example"), 200);
}

#[test]
fn ui_routes_stay_out_of_the_openapi_document() {
    let gw = gateway();
    let doc = request(
        gw.admin_port,
        "GET",
        "/api/openapi.json",
        &[("Authorization", "Bearer test-admin-token")],
        b"",
    )
    .json();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.keys().all(|p| !p.starts_with("/admin")));
}

/// The last `n` bytes of `s` (or a little more, at a character boundary).
fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[at..]
}

/// What the browser tests need, or why they cannot run here.
fn browser_prereqs() -> Result<std::path::PathBuf, String> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        return Err("node is not installed".into());
    }
    if !root.join("admin/node_modules/playwright-core").is_dir()
        || !root.join("admin/node_modules/axe-core").is_dir()
    {
        return Err("admin/node_modules is missing (npm ci --prefix admin)".into());
    }
    let chromium = std::env::var("FLEXGATE_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        return Err(format!("{chromium} is missing (apt-get install chromium)"));
    }
    Ok(root)
}

/// The browser flows of `tests/ui/run.mjs` against the real binary and a
/// real upstream; screenshots go to `target/ui-screenshots/`.
#[test]
fn browser_flows() {
    let root = match browser_prereqs() {
        Ok(r) => r,
        Err(why) => {
            skip_or_fail(&format!("admin UI browser tests: {why}"));
            return;
        }
    };
    let upstream = TestUpstream::start("app", Behavior::Ok);
    let mut gw = Gateway::start(
        "",
        &format!(
            "upstreams:\n  - name: app\n    url: {}\nroutes:\n  - id: seed\n    path: /seed\n    upstream: app\n",
            upstream.url()
        ),
    );
    run_flows(&root, &mut gw, &upstream.url(), "");
}

/// Runs `tests/ui/run.mjs` (the flows whose names start with one of the
/// comma-separated `only`; empty: all) against `gw`, restarting the
/// gateway when a flow asks; fails with the output and the log's tail.
fn run_flows(root: &std::path::Path, gw: &mut Gateway, upstream: &str, only: &str) {
    let shots = root.join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    // The flows ask for a gateway restart by creating `restart` here; the
    // restart done, `restarted` appears.
    let signals = tempfile::tempdir().unwrap();
    let out_path = signals.path().join("out.log");
    let out_file = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new("node")
        .arg(root.join("tests/ui/run.mjs"))
        .env("FG_ADMIN", format!("http://127.0.0.1:{}", gw.admin_port))
        .env("FG_PROXY", format!("http://127.0.0.1:{}", gw.port))
        .env("FG_TOKEN", "test-admin-token")
        .env("FG_UPSTREAM", upstream)
        .env("FG_SHOTS", &shots)
        .env("FG_SIGNALS", signals.path())
        .env("FG_ONLY", only)
        .stdout(out_file.try_clone().unwrap())
        .stderr(out_file)
        .spawn()
        .expect("run node");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        let ask = signals.path().join("restart");
        if ask.exists() {
            std::fs::remove_file(&ask).unwrap();
            gw.kill_and_restart();
            std::fs::write(signals.path().join("restarted"), b"").unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    println!("{output}");
    assert!(
        status.success(),
        "browser tests failed ({status}):\n{output}\ngateway log:\n{}",
        tail(&gw.log(), 4000)
    );
}

/// A database of its own on the PostgreSQL at 127.0.0.1:5432, dropped at
/// the end (as in tests/history.rs).
struct Db {
    name: String,
}

fn pg(db: &str, statement: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("host=127.0.0.1 port=5432 user=postgres dbname={db} connect_timeout=3");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        client
            .batch_execute(statement)
            .await
            .map_err(|e| e.to_string())
    })
}

impl Db {
    fn create() -> Result<Db, String> {
        let name = format!("fg_ui_{:016x}", fastrand::u64(..));
        pg("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(Db { name })
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = pg(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Database mode: the dashboard's history view draws the roll-ups.
#[test]
fn browser_history_view_in_database_mode() {
    let root = match browser_prereqs() {
        Ok(r) => r,
        Err(why) => {
            skip_or_fail(&format!("admin UI browser tests: {why}"));
            return;
        }
    };
    let db = match Db::create() {
        Ok(db) => db,
        Err(e) => {
            skip_or_fail(&format!("PostgreSQL not reachable at 127.0.0.1:5432: {e}"));
            return;
        }
    };
    let upstream = TestUpstream::start("app", Behavior::Ok);
    let mut gw = Gateway::start(
        "",
        &format!(
            "database:\n  url: \"postgres://postgres@127.0.0.1:5432/{}\"\nhistory:\n  batchSize: 50\n  flushInterval: 100ms\n  maintenanceInterval: 500ms\nupstreams:\n  - name: app\n    url: {}\nroutes:\n  - id: seed\n    path: /seed\n    upstream: app\n",
            db.name,
            upstream.url()
        ),
    );
    let mut c = Client::connect(gw.port);
    for _ in 0..200 {
        assert_eq!(c.request("GET", "/seed", &[], b"").unwrap().status, 200);
    }
    let admin = gw.admin_port;
    gw.wait_until("the roll-ups", std::time::Duration::from_secs(30), || {
        let r = request(
            admin,
            "GET",
            "/api/metrics/history?granularity=hour",
            &[("Authorization", "Bearer test-admin-token")],
            b"",
        );
        r.status == 200
            && r.json()["overall"].as_array().is_some_and(|b| {
                b.iter()
                    .map(|b| b["requests"].as_i64().unwrap_or(0))
                    .sum::<i64>()
                    >= 200
            })
    });
    run_flows(&root, &mut gw, &upstream.url(), "login,history");
}
