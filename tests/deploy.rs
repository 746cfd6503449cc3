//! Deployment artefacts, checked against the real binary: the systemd unit
//! (its shape, the paths it shares with `systemd/flexgate.yaml`, and its
//! `ExecReload=` script run for real against a daemonised gateway, with an
//! invalid and a valid config), the Containerfile (its instructions, and its
//! `HEALTHCHECK` command run against a live gateway) and the Helm chart (its
//! files parse, values match the schema's keys, the config it renders is
//! accepted by `flexgate check`). `systemd-analyze verify`, hadolint, JSON
//! Schema validation and Helm's own render and lint run in
//! `.ci/deploy-checks`, which installs what they need.

mod common;
mod daemon;

use common::{free_port, request, run_cli, Behavior, Gateway, TestUpstream};
use daemon::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Logical lines: continuations (`\` at the end) joined with a space,
/// comments and blank lines dropped.
fn logical_lines(text: &str, comment: &[char]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if pending.is_empty() && (t.is_empty() || t.starts_with(comment)) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        out.push(std::mem::take(&mut pending).trim().to_string());
    }
    out
}

/// `Key=value` directives of a unit file, in order.
fn unit_directives() -> Vec<(String, String)> {
    logical_lines(&read("systemd/flexgate.service"), &['#', ';'])
        .into_iter()
        .filter(|l| !l.starts_with('['))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("Key=value");
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

fn directive(d: &[(String, String)], key: &str) -> String {
    let all: Vec<&str> = d
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(all.len(), 1, "{key}= appears once: {all:?}");
    all[0].to_string()
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Seconds of "30s" or of milliseconds (30000).
fn seconds(v: &serde_yaml::Value) -> u64 {
    match v {
        serde_yaml::Value::Number(n) => n.as_u64().unwrap() / 1000,
        serde_yaml::Value::String(s) => s.strip_suffix('s').unwrap().parse().unwrap(),
        other => panic!("not a duration: {other:?}"),
    }
}

#[test]
fn the_unit_follows_pingoras_forking_pattern_with_hardening() {
    let d = unit_directives();
    for (key, value) in [
        ("Type", "forking"),
        ("PIDFile", "/run/flexgate/flexgate.pid"),
        ("User", "flexgate"),
        ("Group", "flexgate"),
        (
            "Environment",
            "FLEXGATE_CONFIG=/var/lib/flexgate/flexgate.yaml",
        ),
        ("EnvironmentFile", "-/etc/flexgate/env"),
        ("RuntimeDirectory", "flexgate"),
        ("RuntimeDirectoryMode", "0700"),
        ("StateDirectory", "flexgate"),
        ("StateDirectoryMode", "0700"),
        (
            "ExecStart",
            "/usr/local/bin/flexgate start -d -c ${FLEXGATE_CONFIG}",
        ),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("WantedBy", "multi-user.target"),
    ] {
        assert_eq!(directive(&d, key), value, "{key}=");
    }
    let nofile: u64 = directive(&d, "LimitNOFILE").parse().unwrap();
    assert!(nofile >= 65536, "LimitNOFILE={nofile}");
    assert_eq!(
        directive(&d, "ExecReload"),
        "/usr/local/bin/flexgate upgrade -c ${FLEXGATE_CONFIG} --pid ${MAINPID}"
    );

    // The shipped config keeps the pid file and the upgrade socket where the unit expects them.
    let (code, out, err) = run_cli(&[
        "check",
        "-c",
        repo("systemd/flexgate.yaml").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let cfg = yaml("systemd/flexgate.yaml");
    assert_eq!(cfg["proxy"]["pidFile"], "/run/flexgate/flexgate.pid");
    assert_eq!(cfg["proxy"]["upgradeSock"], "/run/flexgate/upgrade.sock");
    // systemctl stop waits for the drain (grace period) and the runtimes (grace period again).
    let stop: u64 = directive(&d, "TimeoutStopSec")
        .strip_suffix('s')
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        stop > 2 * seconds(&cfg["proxy"]["gracePeriod"]),
        "TimeoutStopSec={stop}s"
    );
}

/// Runs the unit's `ExecReload=` as systemd would: `${MAINPID}` and
/// `${FLEXGATE_CONFIG}` expanded, the test binary for the installed one.
fn run_reload(d: &Daemons, mainpid: i32, config: &Path, log_name: &str) -> (Option<i32>, String) {
    let reload = directive(&unit_directives(), "ExecReload");
    let words: Vec<String> = reload
        .split_whitespace()
        .map(|w| {
            w.replace("${MAINPID}", &mainpid.to_string())
                .replace("${FLEXGATE_CONFIG}", &config.to_string_lossy())
                .replace("/usr/local/bin/flexgate", flexgate())
        })
        .collect();
    let log_path = d.dir.join(log_name);
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(&words[0])
        .args(&words[1..])
        .env_remove("PORT")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, Duration::from_secs(90));
    let mut guard = ChildGuard(Some(child));
    if status.is_some() {
        guard.0 = None;
    }
    (
        status.and_then(|s| s.code()),
        std::fs::read_to_string(&log_path).unwrap_or_default(),
    )
}

#[test]
fn the_units_reload_replaces_the_process_and_refuses_a_bad_config() {
    let app = TestUpstream::start("app", Behavior::Ok);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let section = proxy_section(port, dir.path(), 1000);
    let config = dir.path().join("flexgate.yaml");
    std::fs::write(
        &config,
        format!(
            "{section}upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - path: /*\n    upstream: app\n",
            app.url()
        ),
    )
    .unwrap();
    let mut d = Daemons::new(dir.path(), port);
    let old = d.start(&config);
    assert_eq!(request(port, "GET", "/before", &[], b"").status, 200);

    // A bad config: the reload fails with the config error; the old process is never signalled.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!("{section}routes:\n  - path: /*\n    upstream: nowhere\n"),
    )
    .unwrap();
    let (code, out) = run_reload(&d, old, &bad, "reload-bad.log");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("routes[0].upstream: unknown upstream \"nowhere\""),
        "{out}"
    );
    assert!(out.contains("the running one keeps serving"), "{out}");
    assert_eq!(read_pid(&d.pid_file()), Some(old));
    assert!(alive(old));
    assert_eq!(request(port, "GET", "/still", &[], b"").status, 200);

    // The real thing: a new process, named by the pid file when the command returns.
    let (code, out) = run_reload(&d, old, &config, "reload.log");
    assert_eq!(code, Some(0), "{out}\n{}", d.log());
    assert!(out.contains("flexgate upgrade: upgraded: process"), "{out}");
    let new = read_pid(&d.pid_file()).expect("pid file");
    d.track(new);
    assert_ne!(new, old);
    assert!(alive(new), "the new process runs");
    assert_eq!(request(port, "GET", "/after", &[], b"").status, 200);
    assert!(
        wait_for(Duration::from_secs(25), || !alive(old)),
        "the old process exits after draining\n{}",
        d.log()
    );
    assert_eq!(request(port, "GET", "/later", &[], b"").status, 200);
}

/// The Containerfile's instructions, continuation lines joined.
fn container_instructions() -> Vec<(String, String)> {
    logical_lines(&read("Containerfile"), &['#'])
        .into_iter()
        .map(|l| {
            let (i, rest) = l.split_once(' ').unwrap_or((&l, ""));
            (i.to_uppercase(), rest.trim().to_string())
        })
        .collect()
}

#[test]
fn the_containerfile_builds_in_two_stages_and_runs_unprivileged() {
    let all = container_instructions();
    let stages: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| i == "FROM")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(stages.len(), 2, "builder + runtime");
    let (builder, runtime) = all.split_at(stages[1]);
    assert!(builder[0].1.ends_with(" AS build"), "{:?}", builder[0]);
    assert!(
        builder
            .iter()
            .any(|(i, a)| i == "RUN" && a.contains("cmake")),
        "the builder installs cmake"
    );
    assert!(
        runtime[0].1.contains("-slim"),
        "slim runtime: {:?}",
        runtime[0]
    );
    let get = |name: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    assert_eq!(get("EXPOSE"), ["3000 9180"]);
    assert_eq!(get("STOPSIGNAL"), ["SIGTERM"]);
    assert_eq!(get("ENV"), ["FLEXGATE_CONFIG=/etc/flexgate/flexgate.yaml"]);
    assert_eq!(get("USER"), ["10001:10001"]);
    assert_eq!(
        get("COPY"),
        [
            "--from=build /out/flexgate /usr/local/bin/flexgate",
            "conf/flexgate.yaml /etc/flexgate/flexgate.yaml",
        ],
        "only the binary and the default config"
    );
    assert_eq!(get("ENTRYPOINT"), ["[\"/usr/local/bin/flexgate\"]"]);
    assert_eq!(get("CMD"), ["[\"start\"]"]);
    // The default config listens on the exposed proxy port, on all interfaces.
    let conf = yaml("conf/flexgate.yaml");
    assert_eq!(conf["proxy"]["port"], 3000);
    assert!(conf["proxy"].get("listen").is_none());
}

/// The HEALTHCHECK command (exec form) as an argv.
fn healthcheck_argv() -> Vec<String> {
    let all = container_instructions();
    let hc: Vec<&str> = all
        .iter()
        .filter(|(i, _)| i == "HEALTHCHECK")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(hc.len(), 1);
    let (_, cmd) = hc[0]
        .split_once(" CMD ")
        .expect("HEALTHCHECK [OPTIONS] CMD [...]");
    serde_json::from_str(cmd.trim()).expect("exec form: a JSON array")
}

fn healthcheck(port: u16) -> bool {
    let argv = healthcheck_argv();
    Command::new(&argv[0])
        .args(&argv[1..])
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn the_containers_healthcheck_passes_on_a_live_gateway_only() {
    let app = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start(
        "",
        &format!(
            "upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - path: /*\n    upstream: app\n",
            app.url()
        ),
    );
    assert!(healthcheck(gw.port), "healthy: {}", gw.log());
    // Nothing listening; something answering 503 on /health/live.
    assert!(!healthcheck(free_port()));
    let sick = TestUpstream::start("sick", Behavior::HealthStatus(503));
    assert!(!healthcheck(sick.addr.port()));
}

#[test]
fn the_helm_chart_parses_and_renders_a_valid_config() {
    let chart = yaml("helm/flexgate/Chart.yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "flexgate");
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "appVersion follows Cargo.toml"
    );

    let values = yaml("helm/flexgate/values.yaml");
    let schema: serde_json::Value =
        serde_json::from_str(&read("helm/flexgate/values.schema.json")).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    let known = schema["properties"].as_object().unwrap();
    for key in values.as_mapping().unwrap().keys() {
        let key = key.as_str().unwrap();
        assert!(
            known.contains_key(key),
            "values.yaml key {key} is in the schema"
        );
    }
    assert_eq!(values["ports"]["proxy"], 3000);
    assert_eq!(values["ports"]["admin"], 9180);
    assert_eq!(values["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(values["podSecurityContext"]["runAsNonRoot"], true);

    // The config the chart renders: values.config plus what the chart sets
    // (templates/_helpers.tpl, "flexgate.config").
    let mut config = values["config"].clone();
    let grace = values["drain"]["gracePeriodSeconds"].as_u64().unwrap();
    config["proxy"]["gracePeriod"] = format!("{grace}s").into();
    config["admin"] = serde_yaml::Mapping::new().into();
    config["admin"]["listen"] =
        format!("0.0.0.0:{}", values["ports"]["admin"].as_u64().unwrap()).into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flexgate.yaml");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    let deployment = read("helm/flexgate/templates/deployment.yaml");
    for part in [
        "path: /health/live",
        "path: /health/ready",
        "port: proxy",
        "checksum/config:",
        "preStop:",
        "terminationGracePeriodSeconds:",
        "mountPath: /tmp",
    ] {
        assert!(deployment.contains(part), "deployment.yaml has {part:?}");
    }
    for template in [
        "_helpers.tpl",
        "NOTES.txt",
        "configmap.yaml",
        "secret.yaml",
        "service.yaml",
        "pdb.yaml",
        "hpa.yaml",
        "servicemonitor.yaml",
        "service-admin.yaml",
        "networkpolicy.yaml",
    ] {
        assert!(
            repo(&format!("helm/flexgate/templates/{template}")).exists(),
            "{template}"
        );
    }
}

/// `MemoryMax=1G` / `512M` in bytes.
fn bytes(value: &str) -> u64 {
    let (num, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: u64 = num.parse().unwrap_or_else(|_| panic!("a size: {value}"));
    n * match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        other => panic!("unit {other} in {value}"),
    }
}

#[test]
fn the_unit_keeps_state_in_its_own_directories_and_caps_memory_and_tasks() {
    let d = unit_directives();
    // The config (which the admin API rewrites, with the key store and audit
    // log beside it) lives in the StateDirectory; nothing else is writable.
    let config = directive(&d, "Environment");
    let config = Path::new(config.strip_prefix("FLEXGATE_CONFIG=").unwrap());
    assert_eq!(
        config.parent().unwrap(),
        Path::new("/var/lib").join(directive(&d, "StateDirectory")),
        "the config is in the StateDirectory"
    );
    assert!(
        !d.iter().any(|(k, _)| k == "ReadWritePaths"),
        "no writable path besides the state and runtime directories"
    );
    assert_eq!(
        directive(&d, "PIDFile"),
        format!("/run/{}/flexgate.pid", directive(&d, "RuntimeDirectory"))
    );
    // Two processes share the cgroup during a reload.
    let memory = bytes(&directive(&d, "MemoryMax"));
    assert!(
        (512 << 20..=4 << 30).contains(&memory),
        "MemoryMax={memory}: two processes of ~250 MB at 10,000 connections, and a ceiling"
    );
    let tasks: u64 = directive(&d, "TasksMax").parse().unwrap();
    assert!((256..=4096).contains(&tasks), "TasksMax={tasks}");

    // The install steps, in README.md and in the unit's header, give the
    // service user the state directory and its config.
    let user = directive(&d, "User");
    let state = format!("/var/lib/{}", directive(&d, "StateDirectory"));
    let readme = read("README.md");
    let section = &readme[readme.find("## Running under systemd").unwrap()..];
    let block = &section[section.find("```sh").unwrap()..];
    let block = &block[..block[5..].find("```").unwrap()];
    let header: String = read("systemd/flexgate.service")
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim_end_matches('\\').to_string() + "\n")
        .collect();
    for (name, steps) in [("README.md", block), ("the unit's header", header.as_str())] {
        let steps = steps.replace("\n#  ", " ").replace("\n  ", " ");
        for step in [
            "useradd --system --user-group".to_string(),
            format!("install -d -m 0700 -o {user} -g {user} {state}"),
            format!(
                "install -m 0600 -o {user} -g {user} systemd/flexgate.yaml {}",
                config.display()
            ),
        ] {
            assert!(steps.contains(&step), "{name} has {step:?}:\n{steps}");
        }
        assert!(!steps.contains("/etc/flexgate/flexgate.yaml"), "{name}");
    }
}

#[test]
fn under_systemd_the_default_paths_are_the_units() {
    // systemd sets RUNTIME_DIRECTORY=/run/flexgate: a config without
    // pidFile / upgradeSock puts the pid where PIDFile= looks.
    let app = TestUpstream::start("app", Behavior::Ok);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("flexgate.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: \"127.0.0.1:0\"\nproxy:\n  listen: \"127.0.0.1:{port}\"\n  gracePeriod: 1000\nupstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - path: /*\n    upstream: app\n",
            app.url()
        ),
    )
    .unwrap();
    let mut d = Daemons::new(dir.path(), port);
    let log = d.log_file();
    let status = Command::new(flexgate())
        .args(["start", "-d", "-c"])
        .arg(&config)
        .env("RUNTIME_DIRECTORY", dir.path())
        .env("XDG_RUNTIME_DIR", "/nonexistent")
        .env_remove("PORT")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .unwrap();
    assert!(status.success(), "{}", d.log());
    let unit_pid = Path::new(&directive(&unit_directives(), "PIDFile"))
        .file_name()
        .unwrap()
        .to_owned();
    let pid_file = dir.path().join(unit_pid);
    let mut pid = None;
    assert!(
        wait_for(Duration::from_secs(20), || {
            pid = read_pid(&pid_file).filter(|p| alive(*p));
            pid.is_some()
        }),
        "no pid in {}\n{}",
        pid_file.display(),
        d.log()
    );
    d.track(pid.unwrap());
    assert!(wait_for(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    assert_eq!(request(port, "GET", "/x", &[], b"").status, 200);
}

#[test]
fn the_helm_chart_keeps_the_admin_port_off_the_proxy_service() {
    let tpl = |name: &str| read(&format!("helm/flexgate/templates/{name}"));
    let proxy = tpl("service.yaml");
    assert!(proxy.contains("type: {{ .Values.service.type }}"));
    assert!(proxy.contains("targetPort: proxy"));
    for admin_part in ["targetPort: admin", "adminPort", "name: admin"] {
        assert!(
            !proxy.contains(admin_part),
            "the proxy Service has no admin port:\n{proxy}"
        );
    }
    let admin = tpl("service-admin.yaml");
    assert!(admin.contains("\n  type: ClusterIP\n"), "{admin}");
    assert!(admin.contains("targetPort: admin"), "{admin}");
    assert!(!admin.contains(".Values.service.type"), "{admin}");
    assert!(!admin.contains("targetPort: proxy"), "{admin}");
    assert!(tpl("servicemonitor.yaml").contains("app.kubernetes.io/component: admin"));

    let policy = tpl("networkpolicy.yaml");
    assert!(policy.starts_with("{{- if .Values.networkPolicy.enabled }}"));
    assert!(policy.contains("kind: NetworkPolicy"));
    assert!(policy.contains("{{- with .Values.networkPolicy.adminFrom }}"));
    assert!(policy.contains("- port: admin"));
    let values = yaml("helm/flexgate/values.yaml");
    assert_eq!(values["networkPolicy"]["enabled"], false);
    assert!(values["networkPolicy"]["adminFrom"]
        .as_sequence()
        .unwrap()
        .is_empty());
    let schema: serde_json::Value =
        serde_json::from_str(&read("helm/flexgate/values.schema.json")).unwrap();
    let peer = &schema["properties"]["networkPolicy"]["properties"]["adminFrom"]["items"];
    assert_eq!(peer["additionalProperties"], false);
    for key in ["podSelector", "namespaceSelector", "ipBlock"] {
        assert!(
            peer["properties"].get(key).is_some(),
            "adminFrom accepts {key}"
        );
    }
}

#[test]
fn the_license_is_the_apache_license_2_0_that_cargo_toml_names() {
    let cargo: String = read("Cargo.toml");
    assert!(cargo.contains("\nlicense = \"Apache-2.0\"\n"));
    let text = std::fs::read(repo("LICENSE")).unwrap();
    // SHA-256 of the Apache Software Foundation's LICENSE-2.0.txt, unmodified.
    let digest = ring::digest::digest(&ring::digest::SHA256, &text);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
    );
}
