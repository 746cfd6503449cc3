//! `flexgate upgrade`: the whole zero-downtime binary upgrade in one
//! command (the systemd unit's `ExecReload=`):
//!
//! 1. start `flexgate start -u -d -c CONFIG` (this binary: install the new
//!    one first), which loads and validates the config, then waits on
//!    `proxy.upgradeSock` for the running process's listening sockets;
//! 2. once that socket exists, send `SIGQUIT` to the running process
//!    (`--pid`, default: the one `proxy.pidFile` names), which hands its
//!    sockets over and drains within `proxy.gracePeriod`;
//! 3. wait until the pid file names the new, live process, and report.
//!
//! If the new process fails before the hand-off (an invalid config, …) the
//! running one is never signalled and keeps serving; the exit code is 1 and
//! the new process's own error is on stderr.

use crate::config::BootConfig;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the new process may take to be ready for the hand-off.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the pid file may take to name the new process after it.
const PID_TIMEOUT: Duration = Duration::from_secs(10);

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Runs the upgrade; `Ok` says what happened, `Err` why the running
/// process keeps serving (or what went wrong after the hand-off).
pub fn run(config: &Path, pid: Option<i32>) -> Result<String, String> {
    let file = crate::config::load_file(config).map_err(|e| {
        format!(
            "invalid config {}:\n{e}\nnothing was started; the running one keeps serving",
            config.display()
        )
    })?;
    let boot = BootConfig::from_file(&file, None);
    let (sock, pid_file) = (Path::new(&boot.upgrade_sock), Path::new(&boot.pid_file));
    let old = match pid {
        Some(p) => p,
        None => read_pid(pid_file).ok_or_else(|| {
            format!(
                "no running gateway: {} names no process (pass --pid)",
                pid_file.display()
            )
        })?,
    };
    if !alive(old) {
        return Err(format!("no running gateway: process {old} does not exist"));
    }
    let _ = std::fs::remove_file(sock);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut new = Command::new(exe)
        .args(["start", "-u", "-d", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the new process: {e}"))?;
    let started = Instant::now();
    while !is_socket(sock) {
        if let Ok(Some(status)) = new.try_wait() {
            return Err(format!(
                "the new process failed ({status}); the running one ({old}) keeps serving"
            ));
        }
        if started.elapsed() > READY_TIMEOUT {
            let _ = new.kill();
            let _ = new.wait();
            return Err(format!(
                "the new process was not ready within {}s; the running one ({old}) keeps serving",
                READY_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: a signal to the process named by the caller or the pid file.
    if unsafe { libc::kill(old, libc::SIGQUIT) } != 0 {
        let e = std::io::Error::last_os_error();
        let _ = new.kill();
        let _ = new.wait();
        return Err(format!(
            "cannot signal the running process {old}: {e}; it keeps serving"
        ));
    }
    let status = new.wait().map_err(|e| format!("the new process: {e}"))?;
    if !status.success() {
        return Err(format!(
            "the new process failed during the hand-off ({status})"
        ));
    }
    let waited = Instant::now();
    loop {
        match read_pid(pid_file) {
            Some(p) if p != old && alive(p) => {
                return Ok(format!(
                    "upgraded: process {p} serves; {old} drains within {}s",
                    boot.grace_period.as_secs()
                ))
            }
            _ if waited.elapsed() > PID_TIMEOUT => {
                return Err(format!(
                    "the hand-off happened, but {} names no new live process",
                    pid_file.display()
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
