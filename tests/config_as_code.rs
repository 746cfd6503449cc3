//! Config as code: the shipped JSON Schema is the one the binary
//! generates, it accepts the starter config and every example and refuses
//! what the reader refuses; every example under `conf/examples/` passes
//! `flexgate check`; `flexgate init` writes a config that points editors
//! at the schema written beside it.

mod common;

use common::run_cli;
use std::path::{Path, PathBuf};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo("conf/flexgate.schema.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&doc).expect("a valid JSON Schema")
}

fn yaml_as_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn examples() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo("conf/examples"))
        .expect("conf/examples")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    out.sort();
    out
}

#[test]
fn the_shipped_schema_is_the_generated_one() {
    let (code, generated, err) = run_cli(&["schema"]);
    assert_eq!(code, 0, "{err}");
    let shipped = std::fs::read_to_string(repo("conf/flexgate.schema.json")).unwrap();
    assert!(
        generated == shipped,
        "conf/flexgate.schema.json is stale: run `cargo run -- schema > conf/flexgate.schema.json`"
    );
}

#[test]
fn the_schema_accepts_the_shipped_configs_and_refuses_unknown_keys() {
    let v = schema();
    let mut files = vec![repo("conf/flexgate.yaml")];
    files.extend(examples());
    for f in &files {
        let doc = yaml_as_json(f);
        let errors: Vec<String> = v
            .iter_errors(&doc)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", f.display());
    }
    for bad in [
        "proxy:\n  prot: 3000\n",
        "routes:\n  - path: /x\n    upstream: a\n    timout: 5\n",
        "webhooks:\n  - url: http://h/x\n    retries: 3\n",
    ] {
        let doc: serde_json::Value = serde_yaml::from_str(bad).unwrap();
        assert!(!v.is_valid(&doc), "the schema lets through {bad:?}");
    }
}

#[test]
fn every_example_passes_check() {
    let list = examples();
    assert!(list.len() >= 5, "examples: {list:?}");
    for f in list {
        let (code, out, err) = run_cli(&["check", "-c", f.to_str().unwrap()]);
        assert_eq!(code, 0, "{}:\n{out}{err}", f.display());
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../flexgate.schema.json\n"),
            "{} starts with the schema comment",
            f.display()
        );
    }
}

#[test]
fn init_writes_a_config_that_points_at_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    let (code, out, err) = run_cli(&["init", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("# yaml-language-server: $schema=flexgate.schema.json\n"),
        "{text}"
    );
    let beside = std::fs::read_to_string(dir.path().join("flexgate.schema.json")).unwrap();
    assert_eq!(beside, run_cli(&["schema"]).1);
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Runs `flexgate config …` against a gateway's admin API.
fn config_cli(gw: &common::Gateway, token: &Path, args: &[&str]) -> (i32, String, String) {
    let admin = format!("http://127.0.0.1:{}", gw.admin_port);
    let mut all = vec!["config"];
    all.extend_from_slice(&args[..1]);
    all.extend_from_slice(&["--admin", &admin, "--token-file", token.to_str().unwrap()]);
    all.extend_from_slice(&args[1..]);
    run_cli(&all)
}

#[test]
fn dump_diff_and_apply_against_a_running_gateway() {
    let up = common::TestUpstream::start("app", common::Behavior::Ok);
    let gw = common::Gateway::start(
        "",
        &format!(
            "upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - id: a\n    path: /a\n    upstream: app\n",
            up.url()
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "test-admin-token\n").unwrap();
    let file = dir.path().join("running.yaml");
    let f = file.to_str().unwrap();

    let (code, dumped, err) = config_cli(&gw, &token, &["dump"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        dumped.starts_with("# flexgate config version 1 "),
        "{dumped}"
    );
    assert!(dumped.contains("path: /a"), "{dumped}");
    std::fs::write(&file, &dumped).unwrap();

    // Unchanged: exit 0, no diff.
    let (code, out, err) = config_cli(&gw, &token, &["diff", "-f", f]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");

    // A reviewed change: a diff, the gateway's own list, exit 1.
    std::fs::write(&file, dumped.replace("path: /a", "path: /b")).unwrap();
    let (code, out, err) = config_cli(&gw, &token, &["diff", "-f", f]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("-  path: /a") && out.contains("+  path: /b"),
        "{out}"
    );
    assert!(err.contains("update route/a"), "{err}");

    // Someone else changes the config meanwhile: the apply is refused.
    let other = dir.path().join("other.yaml");
    std::fs::write(&other, dumped.replace("path: /a", "path: /c")).unwrap();
    let (code, out, err) = config_cli(
        &gw,
        &token,
        &["apply", "-f", other.to_str().unwrap(), "--force"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = config_cli(&gw, &token, &["apply", "-f", f]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("changed since it was reviewed"), "{err}");
    assert_eq!(common::request(gw.port, "GET", "/c", &[], b"").status, 200);

    // Reviewed against the current version: applied, live.
    let (code, dumped, _) = config_cli(&gw, &token, &["dump"]);
    assert_eq!(code, 0);
    std::fs::write(&file, dumped.replace("path: /c", "path: /b")).unwrap();
    let (code, out, err) = config_cli(&gw, &token, &["apply", "-f", f]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("update route/a") && out.contains("version 3"),
        "{out}"
    );
    assert_eq!(common::request(gw.port, "GET", "/b", &[], b"").status, 200);
    let (code, _, _) = config_cli(&gw, &token, &["diff", "-f", f]);
    assert_eq!(code, 0, "applied: nothing left to change");

    // A file the gateway refuses: the field named, exit 2 for diff.
    std::fs::write(
        &file,
        "routes:\n  - id: x\n    path: /x\n    upstream: nowhere\n",
    )
    .unwrap();
    let (code, _, err) = config_cli(&gw, &token, &["diff", "-f", f]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("routes[0].upstream"), "{err}");
    // A wrong token.
    std::fs::write(&token, "not-the-token-at-all").unwrap();
    let (code, _, err) = config_cli(&gw, &token, &["dump"]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
}
