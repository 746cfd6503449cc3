//! Daemonised gateways (`flexgate start -d`) for the upgrade tests: start,
//! pid files, liveness, signals, and a guard that kills (by pid) every
//! process a test started when it ends, also on panic.
#![allow(dead_code)]

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn flexgate() -> &'static str {
    env!("CARGO_BIN_EXE_flexgate")
}

/// True while `pid` runs (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid} failed");
}

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a child to exit, up to `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `proxy:` section: listener on 127.0.0.1:`port`, pid file and upgrade
/// socket in `dir` (as `flexgate.pid` / `upgrade.sock`, the names the
/// systemd unit uses under /run/flexgate).
pub fn proxy_section(port: u16, dir: &Path, grace_ms: u64) -> String {
    format!(
        "admin:\n  listen: \"127.0.0.1:0\"\nproxy:\n  listen: \"127.0.0.1:{port}\"\n  threads: 2\n  gracePeriod: {grace_ms}\n  upgradeSock: {}/upgrade.sock\n  pidFile: {}/flexgate.pid\n",
        dir.display(),
        dir.display()
    )
}

/// The daemonised gateways of one test, in `dir`. Dropping it SIGKILLs every
/// process it saw or that a pid file in `dir` names, by pid.
pub struct Daemons {
    pub dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    pids: Vec<i32>,
}

impl Daemons {
    pub fn new(dir: &Path, port: u16) -> Daemons {
        Daemons {
            dir: dir.to_path_buf(),
            port,
            log: dir.join("flexgate.log"),
            pids: Vec::new(),
        }
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("flexgate.pid")
    }

    pub fn upgrade_sock(&self) -> PathBuf {
        self.dir.join("upgrade.sock")
    }

    /// Appends to the shared log file (every process writes there).
    pub fn log_file(&self) -> File {
        File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn track(&mut self, pid: i32) {
        self.pids.push(pid);
    }

    /// `flexgate start -d -c config`; returns the daemon's pid once it listens.
    pub fn start(&mut self, config: &Path) -> i32 {
        let log = self.log_file();
        let status = Command::new(flexgate())
            .args(["start", "-d", "-c"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env_remove("PORT")
            .env_remove("FLEXGATE_CONFIG")
            .status()
            .expect("run flexgate start -d");
        assert!(status.success(), "start -d: {status}\n{}", self.log());
        let mut pid = None;
        let found = wait_for(Duration::from_secs(20), || {
            pid = read_pid(&self.pid_file()).filter(|p| alive(*p));
            pid.is_some()
        });
        assert!(found, "no live pid in the pid file\n{}", self.log());
        let pid = pid.unwrap();
        self.track(pid);
        let port = self.port;
        assert!(
            wait_for(Duration::from_secs(20), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "daemon {pid} does not listen on {port}\n{}",
            self.log()
        );
        pid
    }

    /// Waits until the pid file names a live process other than `old`.
    pub fn wait_new_pid(&mut self, old: i32) -> i32 {
        let mut pid = None;
        let found = wait_for(Duration::from_secs(20), || {
            pid = read_pid(&self.pid_file()).filter(|p| *p != old && alive(*p));
            pid.is_some()
        });
        assert!(
            found,
            "the pid file never named a new process\n{}",
            self.log()
        );
        let pid = pid.unwrap();
        self.track(pid);
        pid
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        let mut pids = self.pids.clone();
        for name in ["flexgate.pid", "flexgate.pid.old"] {
            pids.extend(read_pid(&self.dir.join(name)));
        }
        for pid in pids {
            // Only our processes: their command line names a config in `dir`
            // (guards against a recycled pid).
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&*self.dir.to_string_lossy()))
                .unwrap_or(false);
            if pid > 1 && ours && alive(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// A child process killed on drop unless taken.
pub struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
