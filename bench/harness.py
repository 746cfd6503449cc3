#!/usr/bin/env python3
"""FlexGate benchmark harness. Run it through `bench/run`, which installs the
tools (nginx, wrk, valgrind, oha) and builds the release binary first.

One run, one machine, one upstream (nginx, 1 worker, small static 200):
  direct      wrk → upstream                          (the ceiling)
  nginx       wrk → nginx reverse proxy → upstream    (a) the baseline
  bare        wrk → bare Pingora proxy → upstream     the Pingora floor: one ProxyHttp with
              only upstream_peer (bench/bare.rs, built as the `bare` example)
  fg-min      wrk → FlexGate minimal → upstream       (b)
  fg-full     wrk → FlexGate full chain → upstream    (c)
  fg-redis    (d) full chain, the rate limit decided in Redis (127.0.0.1:6379;
              skipped with a message when Redis is not there)
  fg-pg-off   (e) full chain in database mode, history off  (the reference of fg-pg)
  fg-pg       (e) full chain + PostgreSQL request history (fresh databases on
              127.0.0.1:5432; skipped with a message when PostgreSQL is not there)
  fg-err      FlexGate minimal on /flaky/, which the upstream answers 500 every
              other request (the reference of fg-err-hook)
  fg-err-hook fg-err + a webhook on request.error whose receiver
              (bench/slow_receiver.py, started here) answers each POST after 5 s;
              fg-err-hook ÷ fg-err ≥ 0.95 is the goal (PASS/FAIL in the report)

Phases: start (fresh idle RSS) → warm-up → interleaved rounds (order rotated
each round), unpinned then pinned (wrk on CPU 0, servers on CPU 1) → fixed
rate latency (oha; unpinned unless --rate-pinned) → RSS with N idle keep-alive connections →
webhook drain (fg-err-hook: wait for the receiver to get every coalesced delivery) →
instructions per request under callgrind (two request counts subtracted),
split into phases (PHASES below) → report. Everything listens on 127.0.0.1 only; every process started here
is stopped by its pid; every phase is bounded in time.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

sys.dont_write_bytecode = True  # importing hold_conns must not leave bench/__pycache__

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
WORK = "/tmp/flexgate-bench"  # the FlexGate bench configs put their pid/upgrade files here
TARGET = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target")  # absolute stays absolute
FLEXGATE = os.path.join(TARGET, "release", "flexgate")
BARE = os.path.join(TARGET, "release", "examples", "bare")  # bench/bare.rs
API_KEY = "bench-key-7f3a9c2e"  # its SHA-256 is in bench/flexgate-full.yaml
UPSTREAM_PORT = 18080
BARE_PORT = 18087
STATUS_PORT = 18090
RECEIVER_PORT = 18091  # bench/slow_receiver.py, the webhook receiver of fg-err-hook
RECEIVER_DELAY = 5.0  # seconds it takes to answer each POST (the webhook's timeout is 10 s)
COALESCE_WINDOW = 10.0  # coalesceWindow of bench/flexgate-err-hook.yaml
README = os.path.join(BENCH, "README.md")
MARK_START = "<!-- bench-results:start -->"
MARK_END = "<!-- bench-results:end -->"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# Scenarios


class Scenario:
    def __init__(self, key, label, port=None, kind=None, config=None, headers=(), skip=None,
                 database=None, admin_port=None, redis=False, path="/", ok_codes=("200",), receiver=False):
        self.key, self.label, self.port, self.kind = key, label, port, kind
        self.config, self.headers, self.skip = config, list(headers), skip
        self.database, self.admin_port = database, admin_port  # database mode (scenario e); /metrics
        self.redis = redis  # needs Redis on 127.0.0.1:6379 (scenario d)
        self.path = path  # what wrk, oha and the warm-up check ask for
        self.ok_codes = ok_codes  # statuses the check after the warm-up accepts
        self.receiver = receiver  # needs the slow webhook receiver (fg-err-hook)
        self.server = None  # the Server proxying (None for direct)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}{self.path}"


SCENARIOS = [
    Scenario("direct", "direct to upstream (ceiling)", UPSTREAM_PORT, "direct"),
    Scenario("nginx", "(a) nginx reverse proxy — baseline", 18081, "nginx",
             os.path.join(BENCH, "nginx-proxy.conf")),
    Scenario("bare", "Pingora floor: one ProxyHttp with only upstream_peer", BARE_PORT, "bare"),
    Scenario("fg-min", "(b) FlexGate minimal", 18082, "flexgate",
             os.path.join(BENCH, "flexgate-minimal.yaml")),
    Scenario("fg-full", "(c) FlexGate full chain", 18083, "flexgate",
             os.path.join(BENCH, "flexgate-full.yaml"), headers=[f"X-API-Key: {API_KEY}"]),
    Scenario("fg-redis", "(d) full chain + Redis rate limiter", 18086, "flexgate",
             os.path.join(BENCH, "flexgate-redis.yaml"), headers=[f"X-API-Key: {API_KEY}"],
             redis=True),
    # (e): the full chain in database mode, request history off and on, side by side.
    Scenario("fg-pg-off", "(e) full chain, database mode, history off", 18085, "flexgate",
             os.path.join(BENCH, "flexgate-history-off.yaml"), headers=[f"X-API-Key: {API_KEY}"],
             database="flexgate_bench_history_off", admin_port=18195),
    Scenario("fg-pg", "(e) full chain + PostgreSQL request history", 18084, "flexgate",
             os.path.join(BENCH, "flexgate-history-on.yaml"), headers=[f"X-API-Key: {API_KEY}"],
             database="flexgate_bench_history_on", admin_port=18194),
    # A slow webhook receiver must not slow the proxy: the same minimal gateway
    # on an upstream failing half its requests, without and with a webhook
    # subscribed to request.error (coalesced; the receiver takes 5 s per POST).
    Scenario("fg-err", "FlexGate minimal, upstream failing half its requests", 18088, "flexgate",
             os.path.join(BENCH, "flexgate-err.yaml"), admin_port=18197, path="/flaky/",
             ok_codes=("200", "500")),
    Scenario("fg-err-hook", "the same + webhook on request.error, slow receiver", 18089, "flexgate",
             os.path.join(BENCH, "flexgate-err-hook.yaml"), admin_port=18198, path="/flaky/",
             ok_codes=("200", "500"), receiver=True),
]

# Non-2xx answers the load generators and checks saw, per scenario, over the
# whole run (warm-up included): compared with the webhook deliveries' counts.
SEEN_NON2XX = {}


def seen(key, n):
    SEEN_NON2XX[key] = SEEN_NON2XX.get(key, 0) + n


def redis_missing():
    """None when Redis answers PING on 127.0.0.1:6379, else why not."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=2) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return None
            return "Redis at 127.0.0.1:6379 did not answer PING"
    except OSError as e:
        return f"Redis not reachable at 127.0.0.1:6379 ({e})"


def prepare_database(name):
    """A fresh, empty database on the local PostgreSQL; None, or why not."""
    if not shutil.which("psql"):
        return "psql not found (needs PostgreSQL on 127.0.0.1:5432, user postgres)"
    p = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                        "-q", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", "-c", f"CREATE DATABASE {name}"],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PGCONNECT_TIMEOUT": "3"})
    if p.returncode != 0:
        return f"PostgreSQL not reachable at 127.0.0.1:5432 ({p.stderr.strip()[:200]})"
    return None


def history_counters(sc):
    """flexgate_history_* counters of a database-mode scenario (summed over labels)."""
    out = {}
    for name, _, value in scrape_metrics(sc.admin_port):
        if name.startswith("flexgate_history_"):
            key = name[len("flexgate_history_"):]
            out[key] = out.get(key, 0) + int(value)
    return out


def scrape_metrics(port):
    """[(name, labels, value)] from a FlexGate admin /metrics ([] when unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        try:
            out.append((name, dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)))
        except ValueError:
            pass
    return out


def metric_sum(samples, name, **labels):
    """The sum of a metric's samples whose labels include `labels`."""
    return int(sum(v for n, lb, v in samples if n == name and all(lb.get(k) == x for k, x in labels.items())))


# --------------------------------------------------------------------------
# Processes: everything started here is recorded and stopped by pid.


def children_of(pid):
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(d))
    return kids


class Server:
    """A server process started by the harness (nginx master or flexgate)."""

    started = []

    def __init__(self, name, argv, port, multi_process=False):
        self.name, self.port, self.multi = name, port, multi_process
        self.logpath = os.path.join(WORK, f"{name}.out")
        self.out = open(self.logpath, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=WORK)
        Server.started.append(self)
        self.known_pids = {self.proc.pid}

    def pids(self):
        """The main pid plus (nginx) its workers."""
        if self.proc.poll() is not None:
            return []
        pids = [self.proc.pid]
        if self.multi:
            pids += children_of(self.proc.pid)
        self.known_pids.update(pids)
        return pids

    def wait_ready(self, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited at start (rc={self.proc.returncode}); "
                                 f"see {self.logpath}:\n{tail(self.logpath)}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                if not self.multi or len(self.pids()) > 1:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.name} did not listen on 127.0.0.1:{self.port} within {timeout}s")

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        if self.proc.poll() is None:
            self.pids()
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.proc.pid}) did not stop within {timeout}s; SIGKILL")
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # nginx workers exit with their master; make sure, by their own pids.
        for pid in self.known_pids - {self.proc.pid}:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"nginx" in f.read():
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.out.close()
        if self in Server.started:
            Server.started.remove(self)


def stop_all():
    for s in list(reversed(Server.started)):
        try:
            s.stop()
        except Exception as e:  # keep stopping the others
            log(f"stopping {s.name}: {e}")


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start_nginx(name, conf, port, extra_global=""):
    argv = ["nginx", "-p", WORK + "/", "-c", conf, "-e", os.path.join(WORK, f"{name}.error.log"),
            "-g", "daemon off;" + extra_global]
    s = Server(name, argv, port, multi_process="master_process off" not in extra_global)
    s.wait_ready()
    return s


def start_flexgate(name, conf, port, wrapper=(), timeout=30.0):
    s = Server(name, list(wrapper) + [FLEXGATE, "start", "-c", conf], port)
    s.wait_ready(timeout)
    return s


def start_bare(name, port, wrapper=(), timeout=30.0):
    """bench/bare.rs: 1 thread, the Pingora settings FlexGate uses, 1 s grace period."""
    s = Server(name, list(wrapper) + [BARE, "--listen", f"127.0.0.1:{port}",
                                      "--upstream", f"127.0.0.1:{UPSTREAM_PORT}", "--threads", "1",
                                      "--keepalive-requests", "1000", "--grace-period", "1"], port)
    s.wait_ready(timeout)
    return s


def start_scenario(sc, wrapper=(), timeout=30.0, name=None):
    """The server of a proxying scenario (not nginx). FlexGate runs a copy of
    its config in a directory of its own under WORK/conf: the node's config
    cache (database mode) and the webhook delivery journal
    (flexgate-webhooks.jsonl) are written beside the config file, never in
    bench/, and no two scenarios share them."""
    name = name or sc.key
    if sc.kind == "bare":
        return start_bare(name, sc.port, wrapper, timeout)
    conf_dir = os.path.join(WORK, "conf", sc.key)
    os.makedirs(conf_dir, exist_ok=True)
    conf = os.path.join(conf_dir, os.path.basename(sc.config))
    shutil.copy(sc.config, conf)
    return start_flexgate(name, conf, sc.port, wrapper, timeout)


def start_receiver():
    """bench/slow_receiver.py on RECEIVER_PORT, answering each POST after RECEIVER_DELAY."""
    s = Server("slow-receiver", [sys.executable, os.path.join(BENCH, "slow_receiver.py"), "--port",
                                 str(RECEIVER_PORT), "--delay", str(RECEIVER_DELAY), "--log",
                                 os.path.join(WORK, "slow-receiver.posts.jsonl")], RECEIVER_PORT)
    s.wait_ready()
    return s


def receiver_stats():
    with urllib.request.urlopen(f"http://127.0.0.1:{RECEIVER_PORT}/stats", timeout=5) as r:
        return json.loads(r.read().decode())


# --------------------------------------------------------------------------
# Measurements


def cpu_ns(pids):
    """CPU time of every thread of these processes (schedstat, ns)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def stub_status():
    """(accepts, requests) of the upstream, minus this query's own connection."""
    with urllib.request.urlopen(f"http://127.0.0.1:{STATUS_PORT}/", timeout=5) as r:
        text = r.read().decode()
    nums = text.splitlines()[2].split()
    return int(nums[0]), int(nums[2])


def set_affinity(servers, cpus):
    for s in servers:
        for pid in s.pids():
            subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text.strip())
    return float(m.group(1)) * UNIT[m.group(2)] if m else float("nan")


def parse_wrk(out):
    r = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", out, re.M)
        r[f"p{p}_ms"] = to_ms(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return r


def wrk_argv(sc, duration, conns, pin, extra=()):
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    for h in sc.headers:
        argv += ["-H", h]
    argv += list(extra) + [sc.url]
    return (["taskset", "-c", "0"] if pin else []) + argv


def run_wrk(sc, duration, conns, pin, upstream):
    """One measured wrk run: throughput, latency, proxy CPU/request, upstream reuse."""
    proxy_pids = sc.server.pids() if sc.server else []
    up_pids = upstream.pids()
    a0, q0 = stub_status()
    c0, u0 = cpu_ns(proxy_pids), cpu_ns(up_pids)
    res = subprocess.run(wrk_argv(sc, duration, conns, pin), capture_output=True, text=True,
                         timeout=duration + 60)
    c1, u1 = cpu_ns(proxy_pids), cpu_ns(up_pids)
    a1, q1 = stub_status()
    r = parse_wrk(res.stdout)
    n = max(r["requests"], 1)
    r["proxy_cpu_us"] = (c1 - c0) / 1000.0 / n if sc.server else None
    r["upstream_cpu_us"] = (u1 - u0) / 1000.0 / n
    r["up_accepts"], r["up_requests"] = a1 - a0 - 1, q1 - q0 - 1  # minus the status query
    seen(sc.key, r["non2xx"])
    if res.returncode != 0 or r["requests"] == 0:
        log(f"  wrk failed on {sc.key}: rc={res.returncode} {res.stderr.strip()[:300]}")
    if (r["non2xx"] and "500" not in sc.ok_codes) or r["socket_errors"]:
        log(f"  {sc.key}: {r['non2xx']} non-2xx, {r['socket_errors']} socket errors")
    return r


def rounds_phase(active, args, upstream, pin):
    """Interleaved rounds, order rotated each round. Returns {key: [result per round]}."""
    mode = "pinned" if pin else "unpinned"
    results = {sc.key: [] for sc in active}
    for i in range(args.rounds):
        k = i % len(active)
        order = active[k:] + active[:k]
        for sc in order:
            r = run_wrk(sc, args.duration, args.conns, pin, upstream)
            r["round"] = i + 1
            results[sc.key].append(r)
            cpu = f", proxy {r['proxy_cpu_us']:.1f} µs/req" if r["proxy_cpu_us"] is not None else ""
            log(f"{mode} round {i + 1}/{args.rounds} {sc.key:11s} {r['rps']:9.0f} req/s "
                f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms{cpu}")
    return results


def per_round_ratios(rs, base_rs, field):
    """rs[i][field] / base_rs[i][field] for each round where both are there."""
    return [rs[i][field] / base_rs[i][field] for i in range(min(len(rs), len(base_rs)))
            if rs[i][field] is not None and base_rs[i][field]]


def ratio_summary(results, bases=("nginx", "bare")):
    """Per scenario: median req/s, CPU µs/request, and for each baseline the
    median of the per-round ratios to it (req/s and CPU). The keys for nginx
    are ratio/ratios/cpu_ratio, for bare ratio_bare/ratios_bare/cpu_ratio_bare."""
    out = {}
    for key, rs in results.items():
        cpu = [r["proxy_cpu_us"] for r in rs if r["proxy_cpu_us"] is not None]
        acc = sum(r["up_accepts"] for r in rs)
        req = sum(r["up_requests"] for r in rs)
        out[key] = {"rps": statistics.median(r["rps"] for r in rs), "rps_rounds": [r["rps"] for r in rs]}
        for base in bases:
            if base not in results:
                continue
            sfx = "" if base == "nginx" else f"_{base}"
            ratios = per_round_ratios(rs, results[base], "rps")
            cpu_ratios = per_round_ratios(rs, results[base], "proxy_cpu_us")
            out[key][f"ratio{sfx}"] = statistics.median(ratios) if ratios else None
            out[key][f"ratios{sfx}"] = ratios
            out[key][f"cpu_ratio{sfx}"] = statistics.median(cpu_ratios) if cpu_ratios else None
            out[key][f"cpu_ratios{sfx}"] = cpu_ratios
        out[key].update({
            "p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "cpu_us": statistics.median(cpu) if cpu else None,
            "upstream_cpu_us": statistics.median(r["upstream_cpu_us"] for r in rs),
            "up_accepts": acc,
            "up_requests": req,
            "reuse": (1 - acc / req) if req > 0 else None,
            "errors": sum(r["non2xx"] + r["socket_errors"] for r in rs),
        })
    return out


def fixed_rate_phase(active, args, pin):
    """Latency at a fixed request rate with oha (open loop, latency correction)."""
    oha = args.oha or shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
    if not (oha and os.access(oha, os.X_OK)):
        log("fixed-rate latency skipped: oha not installed (bench/run installs it with cargo)")
        return None, None
    res = {sc.key: [] for sc in active}
    for i in range(args.rate_rounds):
        k = i % len(active)
        for sc in active[k:] + active[:k]:
            argv = [oha, "-z", f"{args.rate_duration}s", "-c", str(args.conns), "-q", str(args.rate),
                    "--latency-correction", "--no-tui", "--output-format", "json"]
            for h in sc.headers:
                argv += ["-H", h]
            argv.append(sc.url)
            if pin:
                argv = ["taskset", "-c", "0"] + argv
            p = subprocess.run(argv, capture_output=True, text=True, timeout=args.rate_duration + 60)
            try:
                j = json.loads(p.stdout)
                pct = j["latencyPercentiles"]
                codes = j.get("statusCodeDistribution", {})
                ok = sum(v for c, v in codes.items() if c.startswith("2"))
                total = sum(codes.values())
                r = {"p50_ms": pct["p50"] * 1000, "p99_ms": pct["p99"] * 1000,
                     "rps": j["summary"]["requestsPerSec"], "non2xx": total - ok,
                     "errors": sum(j.get("errorDistribution", {}).values())}
            except (ValueError, KeyError, TypeError) as e:
                log(f"  oha failed on {sc.key}: {e}: {p.stderr.strip()[:300]}")
                continue
            res[sc.key].append(r)
            seen(sc.key, r["non2xx"])
            log(f"fixed {args.rate}/s round {i + 1}/{args.rate_rounds} {sc.key:11s} "
                f"{r['rps']:8.0f} req/s p50 {r['p50_ms']:.3f} ms p99 {r['p99_ms']:.3f} ms"
                + (f" ({r['non2xx']} non-2xx, {r['errors']} errors)" if r["non2xx"] or r["errors"] else ""))
    summary = {}
    for key, rs in res.items():
        if rs:
            summary[key] = {"p50_ms": statistics.median(r["p50_ms"] for r in rs),
                            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                            "rps": statistics.median(r["rps"] for r in rs),
                            "non2xx": sum(r["non2xx"] for r in rs)}
    return summary, os.path.basename(oha)


def webhook_phase(active):
    """After the load: waits until the slow receiver has every coalesced
    `request.error` delivery of fg-err-hook (the sum of their `data.count`
    equals the 5xx the gateway answered, none in flight), bounded by the
    coalescing window + the receiver's delay + 20 s. Returns what the
    receiver got next to what the gateway answered and the clients saw."""
    sc = next((s for s in active if s.receiver and s.server), None)
    if not sc:
        return None
    t0 = time.monotonic()
    limit = COALESCE_WINDOW + RECEIVER_DELAY + 20
    log(f"webhook drain: waiting (≤ {limit:.0f} s) for the receiver to get every coalesced delivery")
    rec, gw, last_log = {}, [], t0
    while True:
        try:
            rec = receiver_stats()
        except (OSError, ValueError) as e:
            log(f"  slow receiver unreachable: {e}")
            rec = {}
        gw = scrape_metrics(sc.admin_port)
        answered = metric_sum(gw, "flexgate_requests_total", status_class="5xx")
        done = (rec.get("in_flight") == 0 and answered > 0 and rec.get("count_sum", 0) >= answered)
        now = time.monotonic()
        if done or now - t0 >= limit:
            break
        if now - last_log >= 5:
            log(f"  receiver: {rec.get('posts', 0)} POSTs, count sum {rec.get('count_sum', 0):,} "
                f"of {answered:,} 5xx answered, {rec.get('in_flight', 0)} in flight")
            last_log = now
        time.sleep(0.5)
    out = {
        "receiver_delay_s": RECEIVER_DELAY,
        "coalesce_window_s": COALESCE_WINDOW,
        "posts": rec.get("posts"),
        "deliveries": rec.get("deliveries"),
        "count_sum": rec.get("count_sum"),
        "events_sum": rec.get("events_sum"),
        "in_flight": rec.get("in_flight"),
        "signed": rec.get("signed"),
        "by_type": rec.get("by_type"),
        "gateway_5xx": metric_sum(gw, "flexgate_requests_total", status_class="5xx") if gw else None,
        "gateway_requests": metric_sum(gw, "flexgate_requests_total") if gw else None,
        "client_non2xx": SEEN_NON2XX.get(sc.key, 0),
        "bus_events": metric_sum(gw, "flexgate_events_total") if gw else None,
        "webhook_attempts": metric_sum(gw, "flexgate_webhook_attempts_total") if gw else None,
        "webhook_attempts_2xx": metric_sum(gw, "flexgate_webhook_attempts_total", result="2xx") if gw else None,
        "webhook_dropped": metric_sum(gw, "flexgate_webhook_dropped_total") if gw else None,
        "waited_s": round(time.monotonic() - t0, 1),
        "complete": bool(rec) and rec.get("in_flight") == 0 and bool(gw)
        and rec.get("count_sum", 0) == metric_sum(gw, "flexgate_requests_total", status_class="5xx"),
    }
    ref = next((s for s in active if s.key == "fg-err" and s.server), None)
    if ref:
        out["reference_5xx"] = metric_sum(scrape_metrics(ref.admin_port), "flexgate_requests_total",
                                          status_class="5xx")
        out["reference_client_non2xx"] = SEEN_NON2XX.get(ref.key, 0)
    log(f"webhook {sc.key}: the receiver got {out['posts']} POSTs ({out['deliveries']} distinct deliveries) "
        f"standing for {out['count_sum']} request.error occurrences; the gateway answered "
        f"{out['gateway_5xx']} 5xx, the clients saw {out['client_non2xx']:,} non-2xx; "
        f"webhook attempts {out['webhook_attempts']}, dropped {out['webhook_dropped']} "
        f"(waited {out['waited_s']} s)")
    if not out["posts"]:
        log(f"  no POST reached the receiver: see {WORK}/{sc.key}.out (is the webhook delivery store there?)")
    elif not out["complete"]:
        log("  the deliveries do not account for every 5xx yet (still in a window, retried or dropped)")
    return out


def webhook_check(data):
    """fg-err-hook ÷ fg-err throughput, median of per-round ratios, per mode;
    PASS when every measured mode is ≥ 0.95 and the receiver got POSTs (a
    receiver that got none was not exercised: FAIL, whatever the ratio)."""
    out = {}
    for mode in ("unpinned", "pinned"):
        summ = data.get(mode) or {}
        w, o = summ.get("fg-err-hook", {}).get("rps_rounds"), summ.get("fg-err", {}).get("rps_rounds")
        if not (w and o):
            continue
        ratios = [a / b for a, b in zip(w, o) if b]
        if ratios:
            out[mode] = {"ratio": statistics.median(ratios), "ratios": ratios}
    if not out:
        return None
    out["goal"] = 0.95
    wh = data.get("webhook")
    out["receiver_exercised"] = bool(wh and wh.get("posts"))
    out["pass"] = out["receiver_exercised"] and all(out[k]["ratio"] >= 0.95 for k in ("unpinned", "pinned")
                                                    if k in out)
    return out


def memory_phase(active, args):
    out = {}
    for sc in active:
        if not sc.server:
            continue
        argv = [sys.executable, os.path.join(BENCH, "hold_conns.py"), "127.0.0.1", str(sc.port),
                str(args.hold_conns), "--hold", "90"]
        for h in sc.headers:
            argv += ["--header", h]
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = ""
            end = time.monotonic() + 90
            while time.monotonic() < end and not line.startswith("READY"):
                line = p.stdout.readline()
                if not line and p.poll() is not None:
                    break
            ok = int(line.split()[1]) if line.startswith("READY") else 0
            time.sleep(1.0)
            rss = rss_kb(sc.server.pids())
        finally:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        out[sc.key] = {"rss_kb": rss, "held": ok}
        log(f"memory {sc.key:11s} {ok} connections held: RSS {rss / 1024:.1f} MB")
        time.sleep(1.0)
    return out


def drive_count(port, n, headers, conns=4, timeout=600.0):
    """Exactly n GET requests over `conns` keep-alive connections (threads,
    sequential per connection); returns how many got a 2xx. wrk cannot stop
    after a request count, and under valgrind the server, not this client,
    is the bottleneck."""
    import threading
    from hold_conns import read_response
    extra = "".join(h + "\r\n" for h in headers)
    req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()
    deadline = time.monotonic() + timeout
    ok = [0] * conns

    def worker(i, count):
        s = None
        done = 0
        try:
            while done < count and time.monotonic() < deadline:
                if s is None:  # (re)connect: the server closes after keepaliveRequests
                    s = socket.create_connection(("127.0.0.1", port), timeout=60)
                try:
                    s.sendall(req)
                    status = read_response(s, deadline)
                except OSError:
                    status = 0
                if status:
                    done += 1
                    ok[i] += 200 <= status < 300
                else:  # closed by the server: reconnect and send it again
                    s.close()
                    s = None
        finally:
            if s is not None:
                s.close()

    threads = [threading.Thread(target=worker, args=(i, n // conns + (1 if i < n % conns else 0)))
               for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(ok)


# --------------------------------------------------------------------------
# Per-phase instruction budget (callgrind)
#
# Every instruction of a dump is attributed to one phase by the functions on
# its call stack. A phase is a list of function-name patterns (regular
# expressions searched in callgrind's demangled names; the first phase whose
# pattern matches a function owns it) and a level. An instruction belongs to
# the phase of highest level on its stack; between phases of the same level,
# the innermost function wins. So the allocator (level 5) is taken out of
# every phase; the request phases (level 4) are taken out of Pingora's
# per-request glue (3), which is taken out of the connection loop (2), which
# is taken out of the tokio runtime (1); what is under no pattern at all is
# "other". The phases therefore add up to the total exactly.
#
# callgrind keeps caller → callee edges, not whole stacks: a function reached
# from several phases is split among them in proportion to the inclusive cost
# of each incoming call (gprof's assumption). Leaf functions (memcpy, the
# allocator's internals) are exact, since callgrind records the cost of each
# call edge; so are functions called from one phase only.
#
# Phases are per request, differenced between the two dumps exactly like the
# instructions per request: (phase₂ − phase₁) / (R₂ − R₁).

_APP = r"ProxyHttp>?::"  # a ProxyHttp method: FlexGate's (<Gateway as …ProxyHttp>::m) or Pingora's default (…ProxyHttp::m)
_CALL_SITE_UPSTREAM_WRITE = r"(HttpProxy<SV,C>::proxy_to_upstream|::proxy_1to1)::\{\{closure\}\}$"
_POLL_FN = r"^<core::future::poll_fn::PollFn<F> as core::future::future::Future>::poll"

PHASES = [
    # (key, label, level, patterns). A pattern is
    # - a regex on a function's name: the function and what it calls belong
    #   to the phase (the first phase with a matching pattern owns a function);
    # - (caller, callee) regexes: the callee when called from that caller;
    # - ("inlined", function, file) regexes: the code of that source file that
    #   the compiler inlined into the function, and what that code calls.
    # The last two are for code the compiler inlined into a shared parent in
    # one binary and not in the other (the bare proxy inlines Pingora's
    # write_request_header into proxy_to_upstream and read_response into the
    # select! of proxy_handle_upstream; FlexGate's build keeps them apart).
    ("conn_loop", "connection loop around each request (FlexGate's EdgeApp / Pingora's ServerApp loop)", 2, [
        r"^<?flexgate::proxy::edge::",
        r"<T as pingora_core::apps::ServerApp>::process_new", r"^<?pingora_core::apps::",
        r"^<?pingora_core::services::listening::", r"^<?pingora_core::listeners::",
        r"^pingora_core::protocols::http::v1::server::HttpSession::new$",
        r"^pingora_core::protocols::http::server::Session::new_http1",
    ]),
    ("read_head", "reading and parsing the request head", 4, [
        r"pingora_core::protocols::http::v1::server::HttpSession::read_request",
        r"pingora_core::protocols::http::server::Session::read_request",
        r"pingora_proxy::HttpProxy<SV,C>::handle_new_request",
        r"^httparse::Request::",
    ]),
    ("request_filter", "request_filter (with early_request_filter, request_body_filter)", 4, [
        _APP + r"(early_request_filter|request_filter|request_body_filter)(::|$)",
    ]),
    ("upstream_peer", "upstream_peer (with connected_to_upstream)", 4, [
        _APP + r"(upstream_peer|connected_to_upstream)(::|$)",
    ]),
    ("pool", "upstream connection pool: get and put (with the idle watch task)", 4, [
        r"^<?pingora_core::connectors::", r"^<?pingora_pool::",
    ]),
    ("upstream_write", "upstream_request_filter + writing the upstream request", 4, [
        _APP + r"upstream_request_filter(::|$)",
        r"^pingora_proxy::proxy_common::(sanitize_h1_upstream_request|reconcile_upstream_authority|"
        r"set_h1_host_from_authority)", r"^pingora_core::protocols::http::authority::",
        r"^<pingora_http::RequestHeader as core::clone::Clone>::clone$",
        r"^pingora_core::protocols::http::v1::client::HttpSession::(new|init_req_body_writer|"
        r"write_request_header|write_body|finish_body)",
        r"^pingora_core::protocols::http::client::HttpSession::(write_request_header|write_request_body|"
        r"finish_request_body)",
        (_CALL_SITE_UPSTREAM_WRITE, r"WriteAll<W>|AsyncWrite>::poll_(write|flush)$"),
        ("inlined", _CALL_SITE_UPSTREAM_WRITE, r"/protocols/http/v1/client\.rs$|/proxy_common\.rs$"),
    ]),
    ("upstream_read", "reading the upstream response + response_filter", 4, [
        _APP + r"(upstream_response_filter|response_filter|upstream_response_body_filter|"
        r"response_body_filter)(::|$)",
        r"::h1_response_filter(::|$)", r"::proxy_handle_upstream(::|$)",
        r"^pingora_core::protocols::http::v1::client::", r"^pingora_core::protocols::http::client::",
        r"^httparse::Response::", r"^<pingora_http::ResponseHeader as core::clone::Clone>::clone$",
        (_POLL_FN, r"^pingora_http::(append_header_value|normalize_field_value)$|ReadBuf<R,B>|^httparse::"),
        ("inlined", _POLL_FN, r"/protocols/http/v1/client\.rs$"),
    ]),
    ("write_down", "writing the response downstream", 4, [
        r"::write_response_tasks(::|$)", r"::downstream_response_task_filter(::|$)",
        r"^pingora_core::protocols::http::v1::server::HttpSession::(write_|response_duplex|finish_body|"
        r"prepare_response_header)",
        r"^pingora_core::protocols::http::server::Session::(write_|response_duplex|finish_body)",
        r"^pingora_core::protocols::http::v1::body::BodyWriter::",
    ]),
    ("logging", "logging (FlexGate: access log, metrics)", 4, [
        _APP + r"logging(::|$)",
    ]),
    ("glue", "Pingora's per-request glue (process_new_http, process_request, proxy_to_upstream, finish)", 3, [
        r"^<?pingora_proxy::", r"^<?pingora_core::protocols::http::",
    ]),
    ("background", "background services (time-driven; inflated under callgrind)", 2, [
        r"^<?flexgate::(reload|health|jwt::jwks|admin|live|history|store|limit::redis)",
        r"pingora_core::services::background::",
    ]),
    ("runtime", "tokio runtime / scheduling (scheduler, task harness, I/O and timer drivers)", 1, [
        r"^<?tokio::runtime::", r"^<?mio::", r"^epoll_wait$", r"^<?pingora_runtime::",
    ]),
    ("alloc", "allocator (mimalloc: malloc, free, realloc)", 5, [
        r"^_?mi_", r"^__rust_(alloc|dealloc|realloc|alloc_zeroed)$", r"^<mimalloc::MiMalloc as ",
        r"^(malloc|free|realloc|calloc|_int_malloc|_int_free|malloc_consolidate)$",
    ]),
]
PHASE_OTHER = ("other", "other (under none of the patterns above)")


def _compile_phases():
    """[(key, level, function regex or None, [(caller, callee) regexes], [(function, file) regexes])]."""
    out = []
    for key, _, level, pats in PHASES:
        names = [p for p in pats if isinstance(p, str)]
        edges = [(re.compile(p[0]), re.compile(p[1])) for p in pats if isinstance(p, tuple) and len(p) == 2]
        inlined = [(re.compile(p[1]), re.compile(p[2])) for p in pats if isinstance(p, tuple) and len(p) == 3]
        out.append((key, level, re.compile("|".join(f"(?:{p})" for p in names)) if names else None, edges, inlined))
    return out


class CallgrindProfile:
    """One callgrind dump: self cost per function and inclusive cost per call
    edge, each also by the source file of the code (the file of inlined code
    where the compiler inlined). Functions are merged by name across objects;
    callgrind's recursion levels (f'2: f called while f is on the stack) stay
    apart, so that inclusive costs do not count nested calls twice."""

    def __init__(self, path):
        self.self_cost, self.edges = {}, {}
        self.self_at, self.edges_at = {}, {}  # keyed (fn, file) and (fn, file, callee)
        names, files = {}, {}
        fn = cfn = fl = cur = None
        in_call = False
        total = None

        def name_of(rest, table):
            rest = rest.strip()
            if rest.startswith("("):
                i = rest.index(")")
                ident, nm = rest[1:i], rest[i + 1:].strip()
                if nm:
                    table[ident] = nm
                return table.get(ident, ident)
            return rest

        with open(path, errors="replace") as f:
            for line in f:
                c = line[:1]
                if c.isdigit() or c in "+-*":
                    parts = line.split()
                    cost = int(parts[1]) if len(parts) > 1 else 0
                    if in_call:
                        in_call = False
                        if cfn != fn:
                            self.edges[(fn, cfn)] = self.edges.get((fn, cfn), 0) + cost
                            k = (fn, cur, cfn)
                            self.edges_at[k] = self.edges_at.get(k, 0) + cost
                    else:
                        self.self_cost[fn] = self.self_cost.get(fn, 0) + cost
                        k = (fn, cur)
                        self.self_at[k] = self.self_at.get(k, 0) + cost
                elif line.startswith("fn="):
                    fn = name_of(line[3:], names)
                    cur = fl
                elif line.startswith("fl="):
                    fl = cur = name_of(line[3:], files)
                elif line.startswith(("fi=", "fe=")):
                    cur = name_of(line[3:], files)
                elif line.startswith("cfn="):
                    cfn = name_of(line[4:], names)
                elif line.startswith(("cfi=", "cfl=")):
                    name_of(line[4:], files)
                elif line.startswith("calls="):
                    in_call = True
                elif line.startswith(("summary:", "totals:")):
                    total = int(line.split()[1])
        self.total = total if total is not None else sum(self.self_cost.values())

    def by_function(self):
        """({name: self cost}, {name: inclusive cost}), recursion levels folded
        into their function: self costs add up, the inclusive cost is the
        outermost level's (it contains the nested ones)."""
        incl = dict(self.self_cost)
        for (caller, _), cost in self.edges.items():
            incl[caller] = incl.get(caller, 0) + cost
        self_m, incl_m = {}, {}
        for f in set(incl) | set(b for _, b in self.edges):
            base = re.sub(r"'\d+$", "", f)
            self_m[base] = self_m.get(base, 0) + self.self_cost.get(f, 0)
            if f == base:
                incl_m[base] = incl.get(f, 0)
            elif base not in incl:  # only nested levels in this dump
                incl_m[base] = max(incl_m.get(base, 0), incl.get(f, 0))
        return self_m, incl_m

    def phases(self):
        """{phase key: instructions}, adding up to the dump's total. Also sets
        self.attribution: {function: {phase: share of its self cost}}."""
        compiled = _compile_phases()
        levels = {k: lv for k, lv, _, _, _ in compiled}
        levels[PHASE_OTHER[0]] = 0
        funcs = set(self.self_cost)
        for a, b in self.edges:
            funcs.add(a)
            funcs.add(b)
        root_of = {}
        for f in funcs:
            for k, _, rx, _, _ in compiled:
                if rx is not None and rx.search(f):
                    root_of[f] = k
                    break
        edge_root = {}
        for a, b in self.edges:
            for k, _, _, rules, _ in compiled:
                if any(ra.search(a) and rb.search(b) for ra, rb in rules):
                    edge_root[(a, b)] = k
                    break
        file_root = {}  # (fn, file) → phase: code inlined from that file into fn
        for a, fl in set(self.self_at) | set((a, fl) for a, fl, _ in self.edges_at):
            for k, _, _, _, inl in compiled:
                if fl and any(rf.search(a) and rs.search(fl) for rf, rs in inl):
                    file_root[(a, fl)] = k
                    break

        def claim(k, dist):
            """The context below a root of phase k entered in context dist."""
            if k is None:
                return dist
            res = {}
            for q, x in dist.items():
                t = q if levels[q] > levels[k] else k
                res[t] = res.get(t, 0.0) + x
            return res

        callers = {}
        for (a, fl, b), w in self.edges_at.items():
            if w > 0:
                callers.setdefault(b, []).append((a, fl, w))
        callees = {}
        for (a, b), w in self.edges.items():
            if w > 0:
                callees.setdefault(a, []).append(b)
        other = {PHASE_OTHER[0]: 1.0}
        outd = {f: claim(root_of.get(f), other) for f in funcs}
        # Callers before callees (reverse post-order of a depth-first walk):
        # one sweep settles an acyclic graph; more sweeps settle recursion
        # through several functions.
        seen, post = set(), []
        for root in sorted(funcs, key=lambda f: (f in callers, f)):
            if root in seen:
                continue
            seen.add(root)
            stack = [(root, iter(callees.get(root, ())))]
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    post.append(node)
                    stack.pop()
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, iter(callees.get(nxt, ()))))
        order = post[::-1]
        for _ in range(100):
            changed = 0.0
            for f in order:
                ins = callers.get(f)
                if not ins:
                    d = other
                else:
                    tot = float(sum(w for _, _, w in ins))
                    d = {}
                    for a, fl, w in ins:
                        ctx = claim(file_root.get((a, fl)), outd[a])
                        ctx = claim(edge_root.get((a, f)), ctx)
                        for q, x in ctx.items():
                            d[q] = d.get(q, 0.0) + x * w / tot
                o = claim(root_of.get(f), d)
                old = outd[f]
                changed = max(changed, sum(abs(o.get(q, 0.0) - old.get(q, 0.0)) for q in set(o) | set(old)))
                outd[f] = o
            if changed < 1e-9:
                break
        res, attribution = {}, {}
        for (f, fl), cost in self.self_at.items():
            for q, x in claim(file_root.get((f, fl)), outd[f]).items():
                res[q] = res.get(q, 0.0) + cost * x
                attribution.setdefault(f, {})
                attribution[f][q] = attribution[f].get(q, 0.0) + cost * x
        # {function: {phase: share of its self cost}}
        self.attribution = {f: {q: v / self.self_cost[f] for q, v in a.items()}
                            for f, a in attribution.items() if self.self_cost.get(f)}
        return res


def phase_budget(p1, p2, requests):
    """Per-request phase costs and per-function costs, differenced between two dumps."""
    r1, r2 = requests
    n = r2 - r1
    ph1, ph2 = p1.phases(), p2.phases()
    keys = [k for k, _, _, _ in PHASES] + [PHASE_OTHER[0]]
    phases = {k: (ph2.get(k, 0.0) - ph1.get(k, 0.0)) / n for k in keys}
    (s1, i1), (s2, i2) = p1.by_function(), p2.by_function()
    funcs = set(s2) | set(i2)
    fn_self = {f: (s2.get(f, 0) - s1.get(f, 0)) / n for f in funcs}
    fn_incl = {f: (i2.get(f, 0) - i1.get(f, 0)) / n for f in funcs}
    return phases, fn_self, fn_incl


def normalise_fn(name):
    """The same Pingora function in the bare proxy and in FlexGate (the app's type differs)."""
    return re.sub(r"<(bare::Bare|flexgate::proxy::Gateway) as ", "<APP as ", name)


def write_function_tables(out):
    """profile.<key>.functions.tsv per binary and profile.diff.<key>.txt: the
    functions whose per-request cost (exclusive, inclusive) differs most from
    the bare proxy's."""
    for key, c in out.items():
        if "fn_self" not in c:
            continue
        with open(os.path.join(WORK, f"profile.{key}.functions.tsv"), "w") as f:
            f.write("self_per_req\tinclusive_per_req\tfunction\n")
            for fn in sorted(c["fn_incl"], key=lambda x: -c["fn_incl"][x]):
                if abs(c["fn_incl"][fn]) >= 1 or abs(c["fn_self"].get(fn, 0)) >= 1:
                    f.write(f"{c['fn_self'].get(fn, 0):.1f}\t{c['fn_incl'][fn]:.1f}\t{fn}\n")
    base = out.get("bare")
    if not base or "fn_self" not in base:
        return
    bs = {normalise_fn(k): v for k, v in base["fn_self"].items()}
    bi = {normalise_fn(k): v for k, v in base["fn_incl"].items()}
    for key in ("fg-min", "fg-full"):
        c = out.get(key)
        if not c or "fn_self" not in c:
            continue
        fs = {}
        fi = {}
        for k, v in c["fn_self"].items():
            fs[normalise_fn(k)] = fs.get(normalise_fn(k), 0) + v
        for k, v in c["fn_incl"].items():
            fi[normalise_fn(k)] = fi.get(normalise_fn(k), 0) + v
        lines = [f"{key} minus bare, instructions per request ({c['instr_per_req']:,.0f} vs "
                 f"{base['instr_per_req']:,.0f}: {c['instr_per_req'] - base['instr_per_req']:+,.0f})", ""]
        for title, a, b in (("exclusive (self) cost", fs, bs), ("inclusive cost", fi, bi)):
            lines.append(f"== {title}: largest differences ({key} − bare) ==")
            lines.append(f"{'delta':>10} {key:>10} {'bare':>10}  function")
            names = set(a) | set(b)
            for nm in sorted(names, key=lambda x: -abs(a.get(x, 0) - b.get(x, 0)))[:80]:
                lines.append(f"{a.get(nm, 0) - b.get(nm, 0):>+10,.0f} {a.get(nm, 0):>10,.0f} "
                             f"{b.get(nm, 0):>10,.0f}  {nm}")
            lines.append("")
        with open(os.path.join(WORK, f"profile.diff.{key}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


def callgrind_total(path):
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    return None


CALLGRIND_KEYS = ("nginx", "bare", "fg-min", "fg-full")


def callgrind_phase(args, upstream, active):
    """Instructions per request: one process under callgrind, counters zeroed
    after a warm-up, then two request counts N1 < N2 each in its own dump;
    (Ir2 - Ir1) / (R2 - R1) removes per-interval fixed costs. For the bare
    proxy and FlexGate, the same difference per phase (PHASES) and per function."""
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        log("callgrind skipped: valgrind not installed")
        return None
    n1, n2 = args.cg_requests
    out = {}
    keys = {sc.key for sc in active}
    for sc in [s for s in SCENARIOS if s.key in CALLGRIND_KEYS and s.key in keys]:
        cgout = os.path.join(WORK, f"callgrind.{sc.key}.out")
        for old in os.listdir(WORK):
            if old.startswith(f"callgrind.{sc.key}.out"):
                os.remove(os.path.join(WORK, old))
        vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cgout}", "--dump-instr=no",
              "--vgdb=yes"]
        if sc.kind == "nginx":
            server = Server(f"cg-{sc.key}", vg + ["nginx", "-p", WORK + "/", "-c", sc.config, "-e",
                                                  os.path.join(WORK, "cg-nginx.error.log"), "-g",
                                                  "daemon off; master_process off;"], sc.port)
            server.wait_ready(120)
        else:
            server = start_scenario(sc, wrapper=vg, timeout=120, name=f"cg-{sc.key}")
        pid = str(server.proc.pid)
        try:
            def drive(n):
                a0, q0 = stub_status()
                got = drive_count(sc.port, n, sc.headers)
                a1, q1 = stub_status()
                if got != n:
                    log(f"  callgrind {sc.key}: {got} of {n} requests answered 2xx")
                return q1 - q0 - 1

            drive(max(200, n1 // 4))  # warm-up: pools, lazy statics, first allocations
            time.sleep(0.5)
            subprocess.run(["callgrind_control", "-z", pid], capture_output=True, timeout=60)
            r1 = drive(n1)
            subprocess.run(["callgrind_control", "-d", pid], capture_output=True, timeout=60)
            r2 = drive(n2)
            subprocess.run(["callgrind_control", "-d", pid], capture_output=True, timeout=60)
        finally:
            server.stop(signal.SIGTERM if sc.kind == "nginx" else signal.SIGINT, timeout=60)
        dumps = sorted((p for p in os.listdir(WORK) if p.startswith(f"callgrind.{sc.key}.out.")),
                       key=lambda p: int(p.rsplit(".", 1)[1]) if p.rsplit(".", 1)[1].isdigit() else 0)
        dumps = [d for d in dumps if d.rsplit(".", 1)[1].isdigit()]
        if len(dumps) < 2:
            log(f"callgrind {sc.key}: dumps missing ({dumps}); is vgdb usable here?")
            continue
        ir1 = callgrind_total(os.path.join(WORK, dumps[-2]))
        ir2 = callgrind_total(os.path.join(WORK, dumps[-1]))
        if not (ir1 and ir2 and r2 > r1):
            log(f"callgrind {sc.key}: unusable counts ({ir1}, {ir2}, {r1}, {r2})")
            continue
        per = (ir2 - ir1) / (r2 - r1)
        out[sc.key] = {"instr_per_req": per, "requests": [r1, r2], "ir": [ir1, ir2],
                       "profile": os.path.join(WORK, dumps[-1])}
        log(f"callgrind {sc.key:11s} {per:,.0f} instructions/request "
            f"({r1} and {r2} requests: {ir1:,} and {ir2:,} Ir)")
        if sc.kind in ("bare", "flexgate"):
            t0 = time.monotonic()
            phases, fn_self, fn_incl = phase_budget(CallgrindProfile(os.path.join(WORK, dumps[-2])),
                                                    CallgrindProfile(os.path.join(WORK, dumps[-1])), (r1, r2))
            out[sc.key].update(phases=phases, fn_self=fn_self, fn_incl=fn_incl)
            log(f"callgrind {sc.key:11s} phases ({time.monotonic() - t0:.0f} s): "
                + ", ".join(f"{k} {v:,.0f}" for k, v in phases.items()))
    # Top functions of each larger dump, for the profile.
    if shutil.which("callgrind_annotate"):
        for key in ("bare", "fg-min", "fg-full"):
            if key not in out:
                continue
            for mode in ("exclusive", "inclusive"):
                p = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if mode == 'inclusive' else 'no'}",
                                    out[key]["profile"]], capture_output=True, text=True, timeout=300)
                with open(os.path.join(WORK, f"profile.{key}.{mode}.txt"), "w") as f:
                    f.write(p.stdout)
        log(f"profiles: {WORK}/profile.{{bare,fg-min,fg-full}}.{{exclusive,inclusive}}.txt")
    write_function_tables(out)
    log(f"per-function costs per request: {WORK}/profile.*.functions.tsv, "
        f"{WORK}/profile.diff.{{fg-min,fg-full}}.txt")
    # The per-function tables are in the files above, not in results.json.
    for c in out.values():
        c.pop("fn_self", None)
        c.pop("fn_incl", None)
    return out


# --------------------------------------------------------------------------
# Report


def fmt(v, spec, dash="—"):
    return dash if v is None else format(v, spec)


def times(v, spec):
    """A ratio as 0.950×, or — when not measured."""
    return "—" if v is None else format(v, spec) + "×"


def render_phases(cg):
    """The per-phase instruction budget table (bare / minimal / full chain)."""
    cols = [k for k in ("bare", "fg-min", "fg-full") if cg.get(k, {}).get("phases")]
    if not cols:
        return []
    names = {"bare": "bare", "fg-min": "FlexGate minimal", "fg-full": "FlexGate full chain"}
    diffs = [k for k in cols if k != "bare" and "bare" in cols]
    lines = ["| Phase (instructions per request) | " + " | ".join(names[k] for k in cols)
             + "".join(f" | {names[k]} − bare" for k in diffs) + " |",
             "|---|" + "---:|" * (len(cols) + len(diffs))]
    labels = [(k, label) for k, label, _, _ in PHASES] + [PHASE_OTHER]
    for key, label in labels:
        vals = [cg[k]["phases"].get(key, 0.0) for k in cols]
        dv = [cg[k]["phases"].get(key, 0.0) - cg["bare"]["phases"].get(key, 0.0) for k in diffs]
        lines.append(f"| {label} | " + " | ".join(f"{v:,.0f}" for v in vals)
                     + "".join(f" | {d:+,.0f}" for d in dv) + " |")
    tot = [sum(cg[k]["phases"].values()) for k in cols]
    dtot = [sum(cg[k]["phases"].values()) - sum(cg["bare"]["phases"].values()) for k in diffs]
    lines.append("| **total** (= instructions/request) | " + " | ".join(f"**{v:,.0f}**" for v in tot)
                 + "".join(f" | **{d:+,.0f}**" for d in dtot) + " |")
    return lines


def render(args, data):
    un, pn = data.get("unpinned") or {}, data.get("pinned") or {}
    fr, mem, idle, cg = data.get("fixed") or {}, data.get("memory") or {}, data["idle_rss"], data.get("callgrind") or {}
    lines = []
    lines.append(f"Run: {data['started']} · {data['host']} · {data['cpus']} CPUs · "
                 f"`{data['command']}` · {args.rounds} rounds × {args.duration} s, wrk -t1 -c{args.conns}"
                 f" · {data['commit']}")
    lines.append("")
    lines.append("Ratios are medians of per-round ratios (× nginx: to the nginx proxy; × bare: to the bare "
                 "Pingora proxy, the floor).")
    lines.append("")
    lines.append("| Scenario | req/s (median) | × nginx | × bare | pinned req/s | pinned × nginx | pinned × bare "
                 "| wrk p50 / p99 ms |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for sc in SCENARIOS:
        if sc.skip:
            lines.append(f"| {sc.label} | skipped: {sc.skip} | | | | | | |")
            continue
        u, p = un.get(sc.key, {}), pn.get(sc.key, {})
        lines.append(
            f"| {sc.label} | {fmt(u.get('rps'), ',.0f')} | {fmt(u.get('ratio'), '.3f')} "
            f"| {fmt(u.get('ratio_bare'), '.3f')} "
            f"| {fmt(p.get('rps'), ',.0f')} | {fmt(p.get('ratio'), '.3f')} | {fmt(p.get('ratio_bare'), '.3f')} "
            f"| {fmt(u.get('p50_ms'), '.2f')} / {fmt(u.get('p99_ms'), '.2f')}"
            + (f" ({u['errors']:,} errors)" if u.get("errors") else "") + " |")
    lines.append("")
    lines.append("| Scenario | proxy CPU µs/req | CPU × nginx | CPU × bare | pinned CPU µs/req | pinned CPU × nginx "
                 "| pinned CPU × bare |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for sc in SCENARIOS:
        if sc.skip or sc.kind == "direct":
            continue
        u, p = un.get(sc.key, {}), pn.get(sc.key, {})
        lines.append(
            f"| {sc.label} | {fmt(u.get('cpu_us'), '.1f')} | {fmt(u.get('cpu_ratio'), '.2f')} "
            f"| {fmt(u.get('cpu_ratio_bare'), '.2f')} | {fmt(p.get('cpu_us'), '.1f')} "
            f"| {fmt(p.get('cpu_ratio'), '.2f')} | {fmt(p.get('cpu_ratio_bare'), '.2f')} |")
    lines.append("")
    mode = "pinned" if args.rate_pinned else "unpinned"
    lines.append(f"| Scenario | p50 / p99 at {args.rate:,} req/s, {mode} (ms) | Δ p50 / Δ p99 vs direct (ms) "
                 f"| Δ p50 vs bare (ms) | RSS idle (MB) | RSS with {args.hold_conns:,} conns (MB) | upstream reuse "
                 "| upstream accepts / requests | instructions/req (callgrind) | instructions × bare |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    d, fb = fr.get("direct"), fr.get("bare")
    cb = cg.get("bare")
    for sc in SCENARIOS:
        if sc.skip:
            lines.append(f"| {sc.label} | skipped | | | | | | | | |")
            continue
        f = fr.get(sc.key)
        lat = f"{f['p50_ms']:.3f} / {f['p99_ms']:.3f}" if f else "—"
        if f and f["rps"] < 0.95 * args.rate:
            lat += f" (saturated: {f['rps']:,.0f} req/s)"
        if f and f.get("non2xx"):
            lat += f" ({f['non2xx']:,} non-2xx)"
        delta = (f"{f['p50_ms'] - d['p50_ms']:+.3f} / {f['p99_ms'] - d['p99_ms']:+.3f}"
                 if f and d and sc.key != "direct" else "—")
        dbare = f"{f['p50_ms'] - fb['p50_ms']:+.3f}" if f and fb and sc.key not in ("direct", "bare") else "—"
        u = un.get(sc.key, {})
        reuse = f"{u['reuse'] * 100:.2f} %" if u.get("reuse") is not None and sc.key != "direct" else "—"
        acc = f"{u.get('up_accepts', 0):,} / {u.get('up_requests', 0):,}" if u else "—"
        m = mem.get(sc.key)
        c = cg.get(sc.key)
        xbare = (f"{c['instr_per_req'] / cb['instr_per_req']:.2f}" if c and cb and sc.key != "bare" else "—")
        lines.append(f"| {sc.label} | {lat} | {delta} | {dbare} | {fmt(idle.get(sc.key), '.1f')} "
                     f"| {fmt(m and m['rss_kb'] / 1024, '.1f')} | {reuse} | {acc} "
                     f"| {fmt(c and c['instr_per_req'], ',.0f')} | {xbare} |")
    lines.append("")
    ph = render_phases(cg)
    if ph:
        lines.append("Per-phase instruction budget (callgrind, per request; phases defined by PHASES in "
                     "bench/harness.py, see bench/README.md):")
        lines.append("")
        lines += ph
        lines.append("")
    t = []

    def target(name, value, goal, ok):
        t.append(f"| {name} | {goal} | {value} | {'met' if ok else ('not met' if ok is not None else 'n/a')} |")

    for label, summ in (("unpinned", un), ("pinned", pn)):
        mn, fl, br = summ.get("fg-min", {}), summ.get("fg-full", {}), summ.get("bare", {})
        r = mn.get("ratio_bare")
        target(f"FlexGate minimal ÷ bare, throughput ({label})", times(r, ".3f"), "≥ 0.95×",
               None if r is None else r >= 0.95)
        r = mn.get("cpu_ratio_bare")
        target(f"FlexGate minimal ÷ bare, proxy CPU µs per request ({label})",
               "—" if r is None else
               f"{r:.2f}× ({fmt(mn.get('cpu_us'), '.1f')} vs {fmt(br.get('cpu_us'), '.1f')} µs)",
               "≤ 1.08×", None if r is None else r <= 1.08)
        r = fl.get("ratio_bare")
        target(f"Full chain ÷ bare, throughput ({label})", times(r, ".3f"), "≥ 0.90×",
               None if r is None else r >= 0.90)
    worst = max((mem[k]["rss_kb"] for k in ("fg-min", "fg-full") if k in mem), default=None)
    target(f"RSS with {args.hold_conns:,} idle keep-alive connections (FlexGate, worst of minimal and full chain)",
           fmt(worst and worst / 1024, ".1f", "—") + ("" if worst is None else " MB")
           + (f" (bare {mem['bare']['rss_kb'] / 1024:.1f} MB)" if "bare" in mem else ""),
           "≤ 40 MB", None if worst is None else worst <= 40 * 1024)
    worst_idle = max((idle[k] for k in ("fg-min", "fg-full") if k in idle), default=None)
    target("RSS idle (FlexGate, worst of minimal and full chain)",
           fmt(worst_idle, ".1f") + ("" if worst_idle is None else " MB")
           + (f" (bare {idle['bare']:.1f} MB)" if "bare" in idle else ""),
           "≤ 25 MB", None if worst_idle is None else worst_idle <= 25)
    fm, ff = fr.get("fg-min"), fr.get("fg-full")
    got = [f for f in (fm, ff) if f]
    target(f"p50 at a fixed {args.rate:,} req/s, {mode} (FlexGate, worst of minimal and full chain)",
           ", ".join(f"{name} {f['p50_ms']:.3f} ms"
                     for name, f in (("minimal", fm), ("full chain", ff), ("bare", fb)) if f) or "—",
           "≤ bare p50 + 0.1 ms",
           None if not (got and fb) else max(f["p50_ms"] for f in got) <= fb["p50_ms"] + 0.1)
    reuses = [un[k]["reuse"] for k in ("fg-min", "fg-full") if k in un and un[k].get("reuse") is not None]
    target("Upstream connection reuse (FlexGate, worst of b/c)",
           f"{min(reuses) * 100:.2f} %" if reuses else "—", "≥ 99 %",
           None if not reuses else min(reuses) >= 0.99)
    po, pw = un.get("fg-pg-off", {}), un.get("fg-pg", {})
    hist_ratios = [w / o for w, o in zip(pw.get("ratios") or [], po.get("ratios") or []) if o]
    hist_ratio = statistics.median(hist_ratios) if hist_ratios else None
    if hist_ratios:
        target("Request history on ÷ off, throughput (e), median of rounds",
               f"{hist_ratio:.3f}× (rounds: {', '.join(f'{r:.3f}' for r in hist_ratios)})",
               "≥ 0.90×", hist_ratio >= 0.90)
    ppo, ppw = pn.get("fg-pg-off", {}), pn.get("fg-pg", {})
    pinned_hist = [w / o for w, o in zip(ppw.get("ratios") or [], ppo.get("ratios") or []) if o]
    if pinned_hist:
        target("Request history on ÷ off, pinned throughput (e)", f"{statistics.median(pinned_hist):.3f}×",
               "≥ 0.90×", statistics.median(pinned_hist) >= 0.90)
    if po.get("cpu_us") and pw.get("cpu_us"):
        target("Request history, proxy CPU µs per request on vs off (e)",
               f"{pw['cpu_us']:.1f} vs {po['cpu_us']:.1f} µs ({pw['cpu_us'] / po['cpu_us']:.2f}×)", "—", None)
    hist = (data.get("history") or {}).get("fg-pg")
    if hist:
        target("Request history rows (e): written / dropped (queue full + failed writes)",
               f"{hist.get('written_total', 0):,} / {hist.get('dropped_total', 0):,}", "0 dropped",
               hist.get("dropped_total", 0) == 0)
    wc, wh = data.get("webhook_check"), data.get("webhook")
    if wc:
        for mode in ("unpinned", "pinned"):
            m = wc.get(mode)
            if m:
                target(f"Slow webhook receiver: throughput with a webhook on request.error ÷ without, upstream "
                       f"failing half its requests (fg-err-hook ÷ fg-err, {mode}, median of rounds)",
                       f"{m['ratio']:.3f}× (rounds: {', '.join(f'{r:.3f}' for r in m['ratios'])}) "
                       f"{'PASS' if m['ratio'] >= 0.95 else 'FAIL'}", "≥ 0.95×", m["ratio"] >= 0.95)
    if wh:
        target("Slow webhook receiver: POSTs received (distinct deliveries) / request.error occurrences they "
               "carry / 5xx the gateway answered (clients saw)",
               f"{fmt(wh.get('posts'), ',')} ({fmt(wh.get('deliveries'), ',')}) / {fmt(wh.get('count_sum'), ',')} / "
               f"{fmt(wh.get('gateway_5xx'), ',')} ({wh.get('client_non2xx', 0):,})",
               "a handful of POSTs; counts equal", bool(wh.get("posts")) and bool(wh.get("complete")))
    if wc or wh:
        lines.append(webhook_summary(wc, wh))
        lines.append("")
    lines.append("| Target | Goal | Measured | |")
    lines.append("|---|---|---|---|")
    lines += t
    return "\n".join(lines)


def webhook_summary(wc, wh):
    """One paragraph: the slow-receiver check, PASS/FAIL, and what the receiver got."""
    parts = []
    if wc:
        modes = ", ".join(f"{wc[m]['ratio']:.3f}× {m}" for m in ("unpinned", "pinned") if m in wc)
        parts.append(f"**Slow webhook receiver: {'PASS' if wc['pass'] else 'FAIL'}** — throughput with a webhook "
                     f"subscribed to `request.error` ÷ without (fg-err-hook ÷ fg-err, upstream failing half its "
                     f"requests, median of per-round ratios): {modes} (goal ≥ 0.95×)"
                     + ("." if wc.get("receiver_exercised") else
                        "; but no POST reached the receiver, so the slow receiver was not exercised."))
    else:
        parts.append("**Slow webhook receiver: not measured** (needs fg-err and fg-err-hook in the rounds).")
    if wh:
        parts.append(f"The receiver (answering each POST after {wh['receiver_delay_s']:g} s; coalescing window "
                     f"{wh['coalesce_window_s']:g} s) got {fmt(wh.get('posts'), ',')} POSTs "
                     f"({fmt(wh.get('deliveries'), ',')} distinct deliveries, "
                     f"{fmt(wh.get('events_sum'), ',')} bus events folded in) standing for "
                     f"{fmt(wh.get('count_sum'), ',')} `request.error` occurrences; the gateway answered "
                     f"{fmt(wh.get('gateway_5xx'), ',')} 5xx out of {fmt(wh.get('gateway_requests'), ',')} "
                     f"requests and the clients saw {wh.get('client_non2xx', 0):,} non-2xx (requests cut off "
                     f"at the end of a wrk run are answered but not counted by wrk).")
    return " ".join(parts)


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 2 rounds of 3 s, short fixed-rate/memory/callgrind phases")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per mode (default 5; 0 skips the rounds)")
    ap.add_argument("--duration", type=int, help="seconds per wrk run (default 10)")
    ap.add_argument("--warmup", type=int, help="seconds of warm-up per scenario (default 5)")
    ap.add_argument("--conns", type=int, default=64, help="wrk/oha connections (default 64)")
    ap.add_argument("--rate", type=int, default=10000, help="fixed rate in req/s (default 10000)")
    ap.add_argument("--rate-rounds", type=int, help="fixed-rate rounds (default 3)")
    ap.add_argument("--rate-duration", type=int, help="seconds per fixed-rate run (default 10)")
    ap.add_argument("--hold-conns", type=int, help="idle keep-alive connections held for RSS (default 2000)")
    ap.add_argument("--cg-requests", help="callgrind request counts N1,N2 (default 2000,10000)")
    ap.add_argument("--only", help="comma-separated scenario keys (direct,nginx,bare,fg-min,fg-full,fg-redis,"
                    "fg-pg-off,fg-pg,fg-err,fg-err-hook); nginx and bare, the baselines of the ratios, are always "
                    "kept, and fg-err with fg-err-hook (its reference)")
    ap.add_argument("--no-pinned", action="store_true", help="skip the pinned (taskset) rounds")
    ap.add_argument("--rate-pinned", action="store_true",
                    help="run the fixed-rate phase pinned (oha on CPU 0, servers on CPU 1); default unpinned")
    ap.add_argument("--no-fixed-rate", action="store_true", help="skip fixed-rate latency")
    ap.add_argument("--no-memory", action="store_true", help="skip the held-connections RSS test")
    ap.add_argument("--no-callgrind", action="store_true", help="skip instructions per request")
    ap.add_argument("--write-readme", action="store_true",
                    help="replace the results section of bench/README.md and write bench/results/latest.json")
    ap.add_argument("--flexgate", help="FlexGate binary to measure (default $CARGO_TARGET_DIR/release/flexgate, "
                    "CARGO_TARGET_DIR defaulting to target; bench/run then does not build it)")
    ap.add_argument("--bare", help="bare Pingora proxy to measure (default $CARGO_TARGET_DIR/release/examples/bare; "
                    "bench/run then does not build it)")
    ap.add_argument("--oha", help="path of the oha binary (default: PATH, then ~/.cargo/bin/oha)")
    ap.add_argument("--command", default="bench/run", help=argparse.SUPPRESS)
    ap.add_argument("--skip-build", action="store_true", help="(bench/run) do not run cargo build")
    ap.add_argument("--no-install", action="store_true", help="(bench/run) do not install packages")
    args = ap.parse_args()
    global FLEXGATE, BARE
    if args.flexgate:
        FLEXGATE = os.path.abspath(args.flexgate)
    if args.bare:
        BARE = os.path.abspath(args.bare)
    if not os.access(BARE, os.X_OK):
        raise SystemExit(f"{BARE} is missing: cargo build --release --example bare (bench/run builds it)")
    q = args.quick
    args.rounds = args.rounds if args.rounds is not None else (2 if q else 5)
    args.duration = args.duration or (3 if q else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 5)
    args.rate_rounds = args.rate_rounds or (1 if q else 3)
    args.rate_duration = args.rate_duration or (3 if q else 10)
    args.hold_conns = args.hold_conns or (500 if q else 2000)
    args.cg_requests = [int(x) for x in (args.cg_requests or ("300,1000" if q else "2000,10000")).split(",")]

    cpus = os.cpu_count() or 1
    active = [sc for sc in SCENARIOS if not sc.skip]
    if args.only:
        keep = set(args.only.split(",")) | {"nginx", "bare"}  # ratios need the baselines
        if "fg-err-hook" in keep:
            keep.add("fg-err")
        active = [sc for sc in active if sc.key in keep]
    for sc in active:
        if sc.database:
            sc.skip = prepare_database(sc.database)
        if sc.redis:
            sc.skip = redis_missing()
    active = [sc for sc in active if not sc.skip]
    for sc in SCENARIOS:
        if sc.skip:
            log(f"scenario {sc.key}: skipped — {sc.skip}")

    os.makedirs(os.path.join(WORK, "tmp"), exist_ok=True)
    lock = open(os.path.join(WORK, ".lock"), "w")
    import fcntl
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise SystemExit(f"another bench run holds {WORK}/.lock")
    for f in os.listdir(WORK):
        if f.endswith((".out", ".log", ".pid", ".sock", ".txt", ".tsv", ".jsonl")) or f.startswith("callgrind."):
            os.remove(os.path.join(WORK, f))
    shutil.rmtree(os.path.join(WORK, "conf"), ignore_errors=True)  # copies of the configs, webhook journals
    busy = [p for p in (UPSTREAM_PORT, STATUS_PORT, 18081, 18082, 18083, 18084, 18085, 18086, BARE_PORT, 18088,
                        18089, RECEIVER_PORT, 18194, 18195, 18196, 18197, 18198)
            if not port_free(p)]
    if busy:
        raise SystemExit(f"ports in use on 127.0.0.1: {busy} (a previous run still alive?)")
    # raise the fd limit for 2,000 held connections and for the servers started here
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 65536)), hard))

    def on_signal(signum, frame):
        raise SystemExit(f"interrupted by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    data = {"started": time.strftime("%Y-%m-%d %H:%M %Z"), "host": socket.gethostname(), "cpus": cpus,
            "command": args.command, "flexgate": FLEXGATE, "bare": BARE,
            "args": {k: v for k, v in vars(args).items()}}
    try:  # what is measured: the binary's own version line (commit, profile)
        data["commit"] = subprocess.run([FLEXGATE, "version"], capture_output=True, text=True,
                                        timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        data["commit"] = "?"
    try:
        log("starting the upstream (nginx, 1 worker) and the proxies")
        upstream = start_nginx("upstream", os.path.join(BENCH, "nginx-upstream.conf"), UPSTREAM_PORT)
        servers = [upstream]
        if any(sc.receiver for sc in active):
            log(f"starting the slow webhook receiver on 127.0.0.1:{RECEIVER_PORT} ({RECEIVER_DELAY:g} s per POST)")
            servers.append(start_receiver())
        for sc in active:
            if sc.kind == "nginx":
                sc.server = start_nginx("nginx-proxy", sc.config, sc.port)
            elif sc.kind in ("flexgate", "bare"):
                sc.server = start_scenario(sc)
            if sc.server:
                servers.append(sc.server)
        time.sleep(1.0)
        data["idle_rss"] = {sc.key: rss_kb(sc.server.pids()) / 1024 for sc in active if sc.server}
        for k, v in data["idle_rss"].items():
            log(f"idle RSS {k:11s} {v:.1f} MB")

        if args.warmup:
            log(f"warm-up: {args.warmup} s per scenario")
            for sc in active:
                w = subprocess.run(wrk_argv(sc, args.warmup, args.conns, False), capture_output=True, text=True,
                                   timeout=args.warmup + 60)
                seen(sc.key, parse_wrk(w.stdout)["non2xx"])
                check = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
                                       + sum((["-H", h] for h in sc.headers), []) + [sc.url],
                                       capture_output=True, text=True, timeout=10) \
                    if shutil.which("curl") else None
                if check:
                    seen(sc.key, int(not check.stdout.startswith("2")))
                if check and check.stdout not in sc.ok_codes:
                    raise SystemExit(f"{sc.key} answers {check.stdout}, not {' or '.join(sc.ok_codes)}")

        if args.rounds:
            data["unpinned"] = ratio_summary(rounds_phase(active, args, upstream, pin=False))
        if args.no_pinned or cpus < 2 or not args.rounds:
            log("pinned mode skipped" + (" (needs 2 CPUs)" if cpus < 2 else ""))
        else:
            set_affinity(servers, "1")
            try:
                data["pinned"] = ratio_summary(rounds_phase(active, args, upstream, pin=True))
                if args.rate_pinned and not args.no_fixed_rate:
                    data["fixed"], data["rate_tool"] = fixed_rate_phase(active, args, pin=True)
            finally:
                set_affinity(servers, f"0-{cpus - 1}")
        data["history"] = {sc.key: history_counters(sc) for sc in active if sc.database and sc.server}
        for k, v in data["history"].items():
            log(f"request history {k}: {v}")
        if not args.no_fixed_rate and "fixed" not in data:
            data["fixed"], data["rate_tool"] = fixed_rate_phase(active, args, pin=False)
        if not args.no_memory:
            data["memory"] = memory_phase(active, args)
        data["webhook"] = webhook_phase(active)
        if not args.no_callgrind:
            for sc in active:
                if sc.server:
                    sc.server.stop(signal.SIGTERM if sc.kind == "nginx" else signal.SIGINT)
                    sc.server = None
            data["callgrind"] = callgrind_phase(args, upstream, active)
    finally:
        stop_all()
        lock.close()

    data["webhook_check"] = webhook_check(data)
    table = render(args, data)
    print()
    print(table)
    with open(os.path.join(WORK, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)
    log(f"results: {WORK}/results.md, {WORK}/results.json")
    if data.get("webhook_check") or data.get("webhook"):
        log(webhook_summary(data.get("webhook_check"), data.get("webhook")).replace("**", "").replace("`", ""))
    if args.write_readme:
        os.makedirs(os.path.join(BENCH, "results"), exist_ok=True)
        shutil.copy(os.path.join(WORK, "results.json"), os.path.join(BENCH, "results", "latest.json"))
        with open(README) as f:
            text = f.read()
        if MARK_START in text and MARK_END in text:
            head, rest = text.split(MARK_START, 1)
            _, tail_ = rest.split(MARK_END, 1)
            text = f"{head}{MARK_START}\n{table}\n{MARK_END}{tail_}"
            with open(README, "w") as f:
                f.write(text)
            log("bench/README.md results section updated")
        else:
            log("bench/README.md has no results markers; not updated")


if __name__ == "__main__":
    main()
