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
