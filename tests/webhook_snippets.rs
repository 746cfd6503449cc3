//! The README's webhook signature-verification snippets, run as they are
//! against deliveries of the real gateway.
//!
//! The Python and Node `verify` functions are cut out of README.md between
//! their `<!-- verify-python -->` / `<!-- verify-node -->` markers and
//! completed by a few lines of receiver glue (`tests/fixtures/webhooks/`):
//! a loopback HTTP server that verifies every POST with the secret of its
//! path, records the verdict, the headers and the body, and answers 204
//! (valid) or 401 (invalid). The gateway gets three subscriptions per
//! receiver:
//!
//! - `<lang>-whsec`: a `whsec_` secret, which the receiver holds too;
//! - `<lang>-rotated`: a plain-text secret being rotated (`previousSecret`);
//!   the receiver holds only the previous one;
//! - `<lang>-wrong`: the receiver holds another secret, so it refuses
//!   (`maxRetries: 0`: one attempt).
//!
//! Test events (`POST /api/webhooks/{id}/test`), a real `config.changed`
//! (an admin write) and a replay must all be verified by the receivers
//! that hold the right secret and refused by the other, with the payload
//! shape the README documents. Last, each snippet must refuse a correctly
//! signed message whose timestamp is more than 5 minutes off.
//!
//! Without `python3` or `node` that language is skipped with a loud
//! message; with `CI=true` it fails.

mod common;
use common::*;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: (&str, &str) = ("Authorization", "Bearer test-admin-token");
/// The Standard Webhooks form: `whsec_` and base64 (24 bytes here).
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Another `whsec_` secret, for the receiver that must refuse.
const OTHER_WHSEC: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX";
/// A rotation: the gateway signs with both, the receiver holds the old one.
const NEW_PLAIN: &str = "the-new-plain-text-secret-2026";
const OLD_PLAIN: &str = "the-old-plain-text-secret-2025";
/// How long a delivery may take to show up.
const DEADLINE: Duration = Duration::from_secs(20);

/// One language of the README.
struct Lang {
    /// The marker's name (`verify-<name>`) and the subscriptions' prefix.
    name: &'static str,
    program: &'static str,
    glue: &'static str,
    /// Extension of the receiver script (`.cjs`: CommonJS, whatever the
    /// surrounding package.json says).
    ext: &'static str,
}

const LANGS: [Lang; 2] = [
    Lang {
        name: "python",
        program: "python3",
        glue: include_str!("fixtures/webhooks/receiver.py"),
        ext: "py",
    },
    Lang {
        name: "node",
        program: "node",
        glue: include_str!("fixtures/webhooks/receiver.cjs"),
        ext: "cjs",
    },
];

/// The code of the fenced block between `<!-- verify-<lang> -->` and
/// `<!-- /verify-<lang> -->`, verbatim.
fn snippet(readme: &str, lang: &str) -> String {
    let open = format!("<!-- verify-{lang} -->");
    let close = format!("<!-- /verify-{lang} -->");
    let start = readme
        .find(&open)
        .unwrap_or_else(|| panic!("README.md has no {open} marker"))
        + open.len();
    let end = start
        + readme[start..]
            .find(&close)
            .unwrap_or_else(|| panic!("README.md has {open} but no {close} after it"));
    let mut lines = readme[start..end]
        .lines()
        .skip_while(|l| l.trim().is_empty());
    let fence = lines.next().unwrap_or_default();
    assert!(
        fence.starts_with("```"),
        "README.md: {open} must be followed by a fenced code block, found {fence:?}"
    );
    let mut code = String::new();
    let mut closed = false;
    for line in lines {
        if line.trim_end() == "```" {
            closed = true;
            break;
        }
        code.push_str(line);
        code.push('\n');
    }
    assert!(
        closed,
        "README.md: the code block after {open} is not closed before {close}"
    );
    assert!(
        code.contains("verify"),
        "README.md: the {lang} snippet defines no verify function:\n{code}"
    );
    code
}

/// True when `program --version` runs.
fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A receiver process (killed on drop).
struct Receiver {
    lang: &'static str,
    child: Child,
    port: u16,
    records: PathBuf,
    stderr: PathBuf,
}

impl Receiver {
    /// Writes the snippet and the glue to `dir`, starts the script with the
    /// secret of each request path, and waits for the port it prints.
    fn start(dir: &Path, lang: &Lang, code: &str, secrets: &Value) -> Receiver {
        let script = dir.join(format!("receiver-{}.{}", lang.name, lang.ext));
        std::fs::write(&script, format!("{code}{}", lang.glue)).unwrap();
        let records = dir.join(format!("records-{}.jsonl", lang.name));
        std::fs::write(&records, "").unwrap();
        let stderr = dir.join(format!("receiver-{}.err", lang.name));
        let mut child = Command::new(lang.program)
            .arg(&script)
            .arg(secrets.to_string())
            .arg(&records)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", lang.program));
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let Ok(port) = line.trim().parse::<u16>() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the {} receiver did not start (printed {line:?}); stderr:\n{}",
                lang.name,
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        Receiver {
            lang: lang.name,
            child,
            port,
            records,
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request recorded so far: `{verdict, path, headers, body}`.
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.records)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("record {l:?}: {e}")))
            .collect()
    }

    /// The records of `path` that `pick` accepts, polled until there are
    /// at least `n` (or the deadline passes).
    fn wait_count(
        &self,
        gw: &Gateway,
        path: &str,
        what: &str,
        n: usize,
        pick: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let found: Vec<Value> = self
                .records()
                .into_iter()
                .filter(|r| r["path"] == path && pick(r))
                .collect();
            if found.len() >= n {
                return found;
            }
            if start.elapsed() > DEADLINE {
                panic!(
                    "the {} receiver never got {what} on {path}; it recorded:\n{}\nits stderr:\n{}\ngateway log:\n{}",
                    self.lang,
                    self.records()
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    std::fs::read_to_string(&self.stderr).unwrap_or_default(),
                    gw.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// [`Receiver::wait_count`] for one.
    fn wait_for(
        &self,
        gw: &Gateway,
        path: &str,
        what: &str,
        pick: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.wait_count(gw, path, what, 1, pick)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body a receiver got, as JSON.
fn body(record: &Value) -> Value {
    let text = record["body"].as_str().expect("a body");
    serde_json::from_str(text).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {text}"))
}

/// The README's payload: `{id, type, time, node, data}`, `id` equal to the
/// `webhook-id` header; the headers the README lists.
fn check_shape(record: &Value, kind: &str) -> Value {
    let b = body(record);
    let keys: Vec<&str> = b
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["id", "type", "time", "node", "data"], "{b}");
    let h = &record["headers"];
    assert_eq!(b["id"], h["webhook-id"], "payload id vs header: {record}");
    assert!(b["id"].as_str().unwrap().starts_with("evt_"), "{b}");
    assert_eq!(b["type"], kind, "{b}");
    let time = chrono::DateTime::parse_from_rfc3339(b["time"].as_str().expect("time text"))
        .unwrap_or_else(|e| panic!("time is not RFC 3339 ({e}): {b}"));
    let off = (chrono::Utc::now() - time.to_utc()).num_seconds().abs();
    assert!(off < 300, "time {off} s from now: {b}");
    assert!(!b["node"].as_str().expect("node text").is_empty(), "{b}");
    assert!(b["data"].is_object(), "{b}");
    assert_eq!(h["content-type"], "application/json", "{record}");
    assert!(
        h["user-agent"]
            .as_str()
            .is_some_and(|ua| ua.starts_with("flexgate-webhooks/")),
        "{record}"
    );
    let ts = h["webhook-timestamp"].as_str().expect("webhook-timestamp");
    let ts: i64 = ts.parse().unwrap_or_else(|_| panic!("timestamp {ts:?}"));
    assert!(
        (chrono::Utc::now().timestamp() - ts).abs() < 300,
        "{record}"
    );
    b
}

/// The `v1,` entries of a record's `webhook-signature`.
fn signatures(record: &Value) -> usize {
    let sig = record["headers"]["webhook-signature"]
        .as_str()
        .unwrap_or_else(|| panic!("no webhook-signature: {record}"));
    let entries: Vec<&str> = sig.split(' ').collect();
    assert!(entries.iter().all(|e| e.starts_with("v1,")), "{sig}");
    entries.len()
}

fn admin(gw: &Gateway, method: &str, path: &str, body: Option<&Value>) -> Response {
    let text = body.map(Value::to_string).unwrap_or_default();
    let mut headers = vec![ADMIN];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    request(gw.admin_port, method, path, &headers, text.as_bytes())
}

/// The subscription's delivery of event `event_id` once `done` holds for
/// it (polled: the sender records the attempt after the answer).
fn delivery_of(gw: &Gateway, hook: &str, event_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = eventually(DEADLINE, || {
        let r = admin(gw, "GET", &format!("/api/webhooks/{hook}/deliveries"), None);
        assert_eq!(r.status, 200, "{}", r.text());
        last = r.json();
        last["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["eventId"] == event_id && done(d))
    });
    assert!(
        found,
        "no finished delivery of {event_id} in {hook}'s log: {last}\ngateway log:\n{}",
        gw.log()
    );
    last["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["eventId"] == event_id)
        .cloned()
        .unwrap()
}

#[test]
fn readme_snippets_verify_real_deliveries() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    // Cut both out first: a missing marker fails whatever is installed.
    let codes: Vec<String> = LANGS.iter().map(|l| snippet(&readme, l.name)).collect();

    let dir = tempfile::tempdir().unwrap();
    let secrets = json!({"/whsec": WHSEC, "/rotated": OLD_PLAIN, "/wrong": OTHER_WHSEC});
    let mut receivers = Vec::new();
    for (lang, code) in LANGS.iter().zip(&codes) {
        if available(lang.program) {
            receivers.push(Receiver::start(dir.path(), lang, code, &secrets));
        } else {
            skip_or_fail(&format!(
                "`{}` not found: the README's {} webhook snippet is not checked",
                lang.program, lang.name
            ));
        }
    }
    if receivers.is_empty() {
        return;
    }

    let mut hooks = String::new();
    for r in &receivers {
        let l = r.lang;
        hooks.push_str(&format!(
            "  - id: {l}-whsec\n    url: \"{}\"\n    events: [\"*\"]\n    secret: \"{WHSEC}\"\n",
            r.url("/whsec")
        ));
        hooks.push_str(&format!(
            "  - id: {l}-rotated\n    url: \"{}\"\n    events: [\"*\"]\n    secret: \"{NEW_PLAIN}\"\n    previousSecret: \"{OLD_PLAIN}\"\n",
            r.url("/rotated")
        ));
        hooks.push_str(&format!(
            "  - id: {l}-wrong\n    url: \"{}\"\n    events: [\"*\"]\n    secret: \"{WHSEC}\"\n    maxRetries: 0\n",
            r.url("/wrong")
        ));
    }
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start(
        "",
        &format!(
            "upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - path: /*\n    upstream: app\nwebhooks:\n{hooks}",
            up.url()
        ),
    );

    // (path, subscription suffix, verified by the receiver, signatures sent)
    let cases = [
        ("/whsec", "whsec", true, 1),
        ("/rotated", "rotated", true, 2),
        ("/wrong", "wrong", false, 1),
    ];

    // 1. Test events: sent once, the answer holds the attempt's result.
    for r in &receivers {
        for (path, suffix, valid, sigs) in cases {
            let hook = format!("{}-{suffix}", r.lang);
            let resp = admin(&gw, "POST", &format!("/api/webhooks/{hook}/test"), None);
            assert_eq!(resp.status, 200, "{hook}: {}", resp.text());
            let d = &resp.json()["delivery"];
            let (status, code) = if valid {
                ("succeeded", 204)
            } else {
                ("failed", 401)
            };
            assert_eq!(d["status"], status, "{hook}: {d}");
            assert_eq!(d["lastStatus"], code, "{hook}: {d}");
            assert_eq!(d["attempts"], 1, "{hook}: test events are sent once: {d}");
            assert_eq!(d["nextAttemptAt"], Value::Null, "{hook}: {d}");
            assert_eq!(d["type"], "webhook.test", "{d}");
            let event_id = d["eventId"].as_str().expect("eventId").to_string();
            assert_eq!(d["payload"]["id"], event_id.as_str(), "{d}");

            let got = r.wait_for(&gw, path, "the test event", |rec| {
                rec["headers"]["webhook-id"] == event_id.as_str()
            });
            assert_eq!(got.len(), 1, "{hook}: sent once: {got:?}");
            let verdict = if valid { "valid" } else { "invalid" };
            assert_eq!(got[0]["verdict"], verdict, "{hook}: {}", got[0]);
            assert_eq!(signatures(&got[0]), sigs, "{hook}: {}", got[0]);
            let b = check_shape(&got[0], "webhook.test");
            assert_eq!(b["data"]["webhook"], hook.as_str(), "{b}");
            assert_eq!(b, d["payload"], "the log keeps the exact payload sent");
        }
    }

    // 2. A real event: an admin write makes config.changed, delivered to
    //    every subscription ("*").
    let resp = admin(
        &gw,
        "POST",
        "/api/routes",
        Some(&json!({"path": "/added/*", "upstream": "app"})),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let version = resp.json()["version"].as_u64().expect("version");
    for r in &receivers {
        for (path, suffix, valid, sigs) in cases {
            let hook = format!("{}-{suffix}", r.lang);
            let got = r.wait_for(&gw, path, "config.changed", |rec| {
                let b = body(rec);
                b["type"] == "config.changed" && b["data"]["version"] == version
            });
            let rec = &got[0];
            let verdict = if valid { "valid" } else { "invalid" };
            assert_eq!(rec["verdict"], verdict, "{hook}: {rec}");
            assert_eq!(signatures(rec), sigs, "{hook}: {rec}");
            let b = check_shape(rec, "config.changed");
            assert_eq!(b["data"], json!({"version": version}), "{b}");
            let event_id = b["id"].as_str().unwrap();
            let d = if valid {
                delivery_of(&gw, &hook, event_id, |d| d["status"] == "succeeded")
            } else {
                delivery_of(&gw, &hook, event_id, |d| d["status"] == "failed")
            };
            assert_eq!(
                d["lastStatus"],
                if valid { 204 } else { 401 },
                "{hook}: {d}"
            );
            assert_eq!(d["attempts"], 1, "{hook}: {d}");
            let one = admin(
                &gw,
                "GET",
                &format!(
                    "/api/webhooks/{hook}/deliveries/{}",
                    d["id"].as_str().unwrap()
                ),
                None,
            );
            assert_eq!(one.status, 200, "{}", one.text());
            assert_eq!(one.json()["delivery"]["payload"], b, "{hook}");
            if !valid {
                let failed = admin(
                    &gw,
                    "GET",
                    &format!("/api/webhooks/{hook}/deliveries?status=failed"),
                    None,
                );
                assert!(
                    failed.json()["deliveries"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x["id"] == d["id"]),
                    "{hook}: {}",
                    failed.text()
                );
            }
        }
    }

    // 3. A replay carries the same webhook-id, signed anew, and verifies.
    for r in &receivers {
        let hook = format!("{}-whsec", r.lang);
        let first = r.wait_for(&gw, "/whsec", "config.changed", |rec| {
            body(rec)["type"] == "config.changed"
        });
        let event_id = first[0]["headers"]["webhook-id"]
            .as_str()
            .unwrap()
            .to_string();
        let d = delivery_of(&gw, &hook, &event_id, |d| d["status"] == "succeeded");
        let resp = admin(
            &gw,
            "POST",
            &format!(
                "/api/webhooks/{hook}/deliveries/{}/retry",
                d["id"].as_str().unwrap()
            ),
            None,
        );
        assert_eq!(resp.status, 202, "{}", resp.text());
        let pending = &resp.json()["delivery"];
        assert_eq!(pending["status"], "pending", "{pending}");
        assert_eq!(pending["attempts"], 0, "{pending}");
        let both = r.wait_count(&gw, "/whsec", "the replay", 2, |rec| {
            rec["headers"]["webhook-id"] == event_id.as_str()
        });
        let replay = &both[1];
        assert_eq!(replay["verdict"], "valid", "{replay}");
        assert_eq!(
            replay["body"], first[0]["body"],
            "a replay sends the same body"
        );
        delivery_of(&gw, &hook, &event_id, |d| {
            d["status"] == "succeeded" && d["attempts"] == 1
        });
    }

    // 4. The snippets refuse a correctly signed message more than 5 minutes
    //    off, either way, and accept it when fresh.
    let keys = flexgate::webhooks::sign::keys(Some(WHSEC), None);
    let now = flexgate::clock::unix_now();
    let payload = br#"{"id":"evt_window","type":"webhook.test","time":"","node":"","data":{}}"#;
    for r in &receivers {
        for (i, (ts, want)) in [(now - 400, 401), (now + 400, 401), (now, 204)]
            .into_iter()
            .enumerate()
        {
            let id = format!("evt_window_{i}");
            let sig = flexgate::webhooks::sign::signature(&keys, &id, ts, payload);
            let ts = ts.to_string();
            let resp = request(
                r.port,
                "POST",
                "/whsec",
                &[
                    ("webhook-id", &id),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &sig),
                    ("Content-Type", "application/json"),
                ],
                payload,
            );
            assert_eq!(
                resp.status, want,
                "{}: timestamp {ts} (now {now}) answered {}",
                r.lang, resp.status
            );
        }
    }
}
