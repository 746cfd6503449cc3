#!/usr/bin/env python3
"""FlexGate benchmark harness. Run it through `bench/run`, which installs the
tools (nginx, wrk, valgrind, oha) and builds the release binary first.

One run, one machine, one upstream (nginx, 1 worker, small static 200):
  direct      wrk → upstream                          (the ceiling)
  nginx       wrk → nginx reverse proxy → upstream    (a) the baseline
  fg-min      wrk → FlexGate minimal → upstream       (b)
  fg-full     wrk → FlexGate full chain → upstream    (c)
  fg-redis    (d) full chain, the rate limit decided in Redis (127.0.0.1:6379;
              skipped with a message when Redis is not there)
  fg-pg-off   (e) full chain in database mode, history off  (the reference of fg-pg)
  fg-pg       (e) full chain + PostgreSQL request history (fresh databases on
              127.0.0.1:5432; skipped with a message when PostgreSQL is not there)

Phases: start (fresh idle RSS) → warm-up → interleaved rounds (order rotated
each round), unpinned then pinned (wrk on CPU 0, servers on CPU 1) → fixed
rate latency (oha; unpinned unless --rate-pinned) → RSS with N idle keep-alive connections →
instructions per request under callgrind (two request counts subtracted)
→ report. Everything listens on 127.0.0.1 only; every process started here
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
FLEXGATE = os.path.join(ROOT, "target", "release", "flexgate")
API_KEY = "bench-key-7f3a9c2e"  # its SHA-256 is in bench/flexgate-full.yaml
UPSTREAM_PORT = 18080
STATUS_PORT = 18090
README = os.path.join(BENCH, "README.md")
MARK_START = "<!-- bench-results:start -->"
MARK_END = "<!-- bench-results:end -->"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# Scenarios


class Scenario:
    def __init__(self, key, label, port=None, kind=None, config=None, headers=(), skip=None,
                 database=None, admin_port=None, redis=False):
        self.key, self.label, self.port, self.kind = key, label, port, kind
        self.config, self.headers, self.skip = config, list(headers), skip
        self.database, self.admin_port = database, admin_port  # database mode (scenario e)
        self.redis = redis  # needs Redis on 127.0.0.1:6379 (scenario d)
        self.server = None  # the Server proxying (None for direct)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/"


SCENARIOS = [
    Scenario("direct", "direct to upstream (ceiling)", UPSTREAM_PORT, "direct"),
    Scenario("nginx", "(a) nginx reverse proxy — baseline", 18081, "nginx",
             os.path.join(BENCH, "nginx-proxy.conf")),
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
]


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
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sc.admin_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("flexgate_history_"):
            name, _, value = line.rpartition(" ")
            key = name.split("{")[0][len("flexgate_history_"):]
            out[key] = out.get(key, 0) + int(float(value))
    return out


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
    if res.returncode != 0 or r["requests"] == 0:
        log(f"  wrk failed on {sc.key}: rc={res.returncode} {res.stderr.strip()[:300]}")
    if r["non2xx"] or r["socket_errors"]:
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
            log(f"{mode} round {i + 1}/{args.rounds} {sc.key:8s} {r['rps']:9.0f} req/s "
                f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms{cpu}")
    return results


def ratio_summary(results, base="nginx"):
    """Per scenario: median req/s, median of per-round ratios to the baseline, CPU."""
    out = {}
    rounds = len(results[base])
    for key, rs in results.items():
        ratios = [rs[i]["rps"] / results[base][i]["rps"] for i in range(rounds)
                  if results[base][i]["rps"] > 0]
        cpu = [r["proxy_cpu_us"] for r in rs if r["proxy_cpu_us"] is not None]
        cpu_ratios = [rs[i]["proxy_cpu_us"] / results[base][i]["proxy_cpu_us"] for i in range(rounds)
                      if rs[i]["proxy_cpu_us"] is not None and results[base][i]["proxy_cpu_us"]]
        acc = sum(r["up_accepts"] for r in rs)
        req = sum(r["up_requests"] for r in rs)
        out[key] = {
            "rps": statistics.median(r["rps"] for r in rs),
            "ratio": statistics.median(ratios) if ratios else None,
            "ratios": ratios,
            "p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "cpu_us": statistics.median(cpu) if cpu else None,
            "cpu_ratio": statistics.median(cpu_ratios) if cpu_ratios else None,
            "upstream_cpu_us": statistics.median(r["upstream_cpu_us"] for r in rs),
            "up_accepts": acc,
            "up_requests": req,
            "reuse": (1 - acc / req) if req > 0 else None,
            "errors": sum(r["non2xx"] + r["socket_errors"] for r in rs),
        }
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
            log(f"fixed {args.rate}/s round {i + 1}/{args.rate_rounds} {sc.key:8s} "
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
        log(f"memory {sc.key:8s} {ok} connections held: RSS {rss / 1024:.1f} MB")
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


def callgrind_total(path):
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    return None


def callgrind_phase(args, upstream):
    """Instructions per request: one process under callgrind, counters zeroed
    after a warm-up, then two request counts N1 < N2 each in its own dump;
    (Ir2 - Ir1) / (R2 - R1) removes per-interval fixed costs."""
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        log("callgrind skipped: valgrind not installed")
        return None
    n1, n2 = args.cg_requests
    out = {}
    for sc in [s for s in SCENARIOS if s.key in ("nginx", "fg-min", "fg-full")]:
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
            server = start_flexgate(f"cg-{sc.key}", sc.config, sc.port, wrapper=vg, timeout=120)
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
        log(f"callgrind {sc.key:8s} {per:,.0f} instructions/request "
            f"({r1} and {r2} requests: {ir1:,} and {ir2:,} Ir)")
    # Top functions of the full chain's larger dump, for the profile.
    if "fg-full" in out and shutil.which("callgrind_annotate"):
        for mode in ("exclusive", "inclusive"):
            p = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if mode == 'inclusive' else 'no'}",
                                out["fg-full"]["profile"]], capture_output=True, text=True, timeout=300)
            with open(os.path.join(WORK, f"profile.fg-full.{mode}.txt"), "w") as f:
                f.write(p.stdout)
        log(f"profile of the full chain: {WORK}/profile.fg-full.{{exclusive,inclusive}}.txt")
    return out


# --------------------------------------------------------------------------
# Report


def fmt(v, spec, dash="—"):
    return dash if v is None else format(v, spec)


def render(args, data):
    S = {sc.key: sc for sc in SCENARIOS}
    un, pn = data.get("unpinned") or {}, data.get("pinned") or {}
    fr, mem, idle, cg = data.get("fixed") or {}, data.get("memory") or {}, data["idle_rss"], data.get("callgrind") or {}
    lines = []
    lines.append(f"Run: {data['started']} · {data['host']} · {data['cpus']} CPUs · "
                 f"`{data['command']}` · {args.rounds} rounds × {args.duration} s, wrk -t1 -c{args.conns}"
                 f" · {data['commit']}")
    lines.append("")
    lines.append("| Scenario | req/s (median) | × nginx (median of rounds) | pinned req/s | pinned × nginx "
                 "| proxy CPU µs/req | CPU × nginx | pinned CPU µs/req | wrk p50 / p99 ms |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for sc in SCENARIOS:
        if sc.skip:
            lines.append(f"| {sc.label} | skipped: {sc.skip} | | | | | | | |")
            continue
        u, p = un.get(sc.key, {}), pn.get(sc.key, {})
        lines.append(
            f"| {sc.label} | {fmt(u.get('rps'), ',.0f')} | {fmt(u.get('ratio'), '.3f')} "
            f"| {fmt(p.get('rps'), ',.0f')} | {fmt(p.get('ratio'), '.3f')} "
            f"| {fmt(u.get('cpu_us'), '.1f')} | {fmt(u.get('cpu_ratio'), '.2f')} "
            f"| {fmt(p.get('cpu_us'), '.1f')} "
            f"| {fmt(u.get('p50_ms'), '.2f')} / {fmt(u.get('p99_ms'), '.2f')}"
            + (f" ({u['errors']:,} errors)" if u.get("errors") else "") + " |")
    lines.append("")
    rate_tool = data.get("rate_tool") or "oha"
    lines.append(f"| Scenario | p50 / p99 at {args.rate:,} req/s (ms) | Δ p50 / Δ p99 vs direct (ms) "
                 f"| RSS idle (MB) | RSS with {args.hold_conns:,} conns (MB) | upstream reuse "
                 "| upstream accepts / requests | instructions/req (callgrind) |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    d = fr.get("direct")
    for sc in SCENARIOS:
        if sc.skip:
            lines.append(f"| {sc.label} | skipped | | | | | | |")
            continue
        f = fr.get(sc.key)
        lat = f"{f['p50_ms']:.3f} / {f['p99_ms']:.3f}" if f else "—"
        if f and f["rps"] < 0.95 * args.rate:
            lat += f" (saturated: {f['rps']:,.0f} req/s)"
        if f and f.get("non2xx"):
            lat += f" ({f['non2xx']:,} non-2xx)"
        delta = (f"{f['p50_ms'] - d['p50_ms']:+.3f} / {f['p99_ms'] - d['p99_ms']:+.3f}"
                 if f and d and sc.key != "direct" else "—")
        u = un.get(sc.key, {})
        reuse = f"{u['reuse'] * 100:.2f} %" if u.get("reuse") is not None and sc.key != "direct" else "—"
        acc = f"{u.get('up_accepts', 0):,} / {u.get('up_requests', 0):,}" if u else "—"
        m = mem.get(sc.key)
        c = cg.get(sc.key)
        lines.append(f"| {sc.label} | {lat} | {delta} | {fmt(idle.get(sc.key), '.1f')} "
                     f"| {fmt(m and m['rss_kb'] / 1024, '.1f')} | {reuse} | {acc} "
                     f"| {fmt(c and c['instr_per_req'], ',.0f')} |")
    lines.append("")
    # Targets from issue 7.
    t = []

    def target(name, value, goal, ok):
        t.append(f"| {name} | {goal} | {value} | {'met' if ok else ('not met' if ok is not None else 'n/a')} |")

    mn, fl, ng = un.get("fg-min", {}), un.get("fg-full", {}), un.get("nginx", {})
    target("FlexGate minimal vs nginx proxy, throughput", fmt(mn.get("ratio"), ".3f") + "×", "≥ 0.95×",
           None if mn.get("ratio") is None else mn["ratio"] >= 0.95)
    target("Full chain vs nginx proxy, throughput", fmt(fl.get("ratio"), ".3f") + "×", "≥ 0.85×",
           None if fl.get("ratio") is None else fl["ratio"] >= 0.85)
    target("Full chain CPU µs per request vs nginx",
           f"{fmt(fl.get('cpu_ratio'), '.2f')}× ({fmt(fl.get('cpu_us'), '.1f')} vs {fmt(ng.get('cpu_us'), '.1f')} µs)",
           "≤ 1.3×", None if fl.get("cpu_ratio") is None else fl["cpu_ratio"] <= 1.3)
    ff, fn = fr.get("fg-full"), fr.get("nginx")
    target(f"p99 at a fixed {args.rate:,} req/s, full chain",
           f"{ff['p99_ms']:.3f} ms vs nginx {fn['p99_ms']:.3f} ms" if ff and fn else "—",
           "≤ nginx p99 + 0.3 ms", None if not (ff and fn) else ff["p99_ms"] <= fn["p99_ms"] + 0.3)
    worst = max((mem[k]["rss_kb"] for k in ("fg-min", "fg-full") if k in mem), default=None)
    target(f"Memory with {args.hold_conns:,} connections (FlexGate, worst of b/c)",
           fmt(worst and worst / 1024, ".1f") + " MB", "≤ 40 MB", None if worst is None else worst <= 40 * 1024)
    reuses = [un[k]["reuse"] for k in ("fg-min", "fg-full") if k in un and un[k].get("reuse") is not None]
    target("Upstream connection reuse (FlexGate, worst of b/c)",
           f"{min(reuses) * 100:.2f} %" if reuses else "—", "≥ 99 %",
           None if not reuses else min(reuses) >= 0.99)
    po, pw = un.get("fg-pg-off", {}), un.get("fg-pg", {})
    hist_ratios = [w / o for w, o in zip(pw.get("ratios") or [], po.get("ratios") or []) if o]
    hist_ratio = statistics.median(hist_ratios) if hist_ratios else None
    target("Request history on ÷ off, throughput (e), median of rounds",
           fmt(hist_ratio, ".3f") + "×" + (f" (rounds: {', '.join(f'{r:.3f}' for r in hist_ratios)})"
                                           if hist_ratios else ""),
           "≥ 0.90×", None if hist_ratio is None else hist_ratio >= 0.90)
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
    lines.append("| Target (issue 7) | Goal | Measured | |")
    lines.append("|---|---|---|---|")
    lines += t
    return "\n".join(lines)


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
    ap.add_argument("--only", help="comma-separated scenario keys (direct,nginx,fg-min,fg-full,fg-pg-off,fg-pg)")
    ap.add_argument("--no-pinned", action="store_true", help="skip the pinned (taskset) rounds")
    ap.add_argument("--rate-pinned", action="store_true",
                    help="run the fixed-rate phase pinned (oha on CPU 0, servers on CPU 1); default unpinned")
    ap.add_argument("--no-fixed-rate", action="store_true", help="skip fixed-rate latency")
    ap.add_argument("--no-memory", action="store_true", help="skip the held-connections RSS test")
    ap.add_argument("--no-callgrind", action="store_true", help="skip instructions per request")
    ap.add_argument("--write-readme", action="store_true",
                    help="replace the results section of bench/README.md and write bench/results/latest.json")
    ap.add_argument("--flexgate", help="FlexGate binary to measure (default target/release/flexgate; "
                    "bench/run then skips cargo build)")
    ap.add_argument("--oha", help="path of the oha binary (default: PATH, then ~/.cargo/bin/oha)")
    ap.add_argument("--command", default="bench/run", help=argparse.SUPPRESS)
    ap.add_argument("--skip-build", action="store_true", help="(bench/run) do not run cargo build")
    ap.add_argument("--no-install", action="store_true", help="(bench/run) do not install packages")
    args = ap.parse_args()
    global FLEXGATE
    if args.flexgate:
        FLEXGATE = os.path.abspath(args.flexgate)
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
        keep = set(args.only.split(",")) | {"nginx"}  # ratios need the baseline
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
        if f.endswith((".out", ".log", ".pid", ".sock", ".txt")) or f.startswith("callgrind."):
            os.remove(os.path.join(WORK, f))
    busy = [p for p in (UPSTREAM_PORT, STATUS_PORT, 18081, 18082, 18083, 18084, 18085, 18086, 18194,
                        18195, 18196)
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
            "command": args.command, "flexgate": FLEXGATE, "args": {k: v for k, v in vars(args).items()}}
    try:  # what is measured: the binary's own version line (commit, profile)
        data["commit"] = subprocess.run([FLEXGATE, "version"], capture_output=True, text=True,
                                        timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        data["commit"] = "?"
    try:
        log("starting the upstream (nginx, 1 worker) and the proxies")
        upstream = start_nginx("upstream", os.path.join(BENCH, "nginx-upstream.conf"), UPSTREAM_PORT)
        servers = [upstream]
        for sc in active:
            if sc.kind == "nginx":
                sc.server = start_nginx("nginx-proxy", sc.config, sc.port)
            elif sc.kind == "flexgate" and sc.database:
                conf = os.path.join(WORK, os.path.basename(sc.config))
                shutil.copy(sc.config, conf)  # the node's config cache is written next to its config
                sc.server = start_flexgate(sc.key, conf, sc.port)
            elif sc.kind == "flexgate":
                sc.server = start_flexgate(sc.key, sc.config, sc.port)
            if sc.server:
                servers.append(sc.server)
        time.sleep(1.0)
        data["idle_rss"] = {sc.key: rss_kb(sc.server.pids()) / 1024 for sc in active if sc.server}
        for k, v in data["idle_rss"].items():
            log(f"idle RSS {k:8s} {v:.1f} MB")

        if args.warmup:
            log(f"warm-up: {args.warmup} s per scenario")
            for sc in active:
                subprocess.run(wrk_argv(sc, args.warmup, args.conns, False), capture_output=True,
                               timeout=args.warmup + 60)
                check = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
                                       + sum((["-H", h] for h in sc.headers), []) + [sc.url],
                                       capture_output=True, text=True, timeout=10) \
                    if shutil.which("curl") else None
                if check and check.stdout != "200":
                    raise SystemExit(f"{sc.key} answers {check.stdout}, not 200")

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
        if not args.no_callgrind:
            for sc in active:
                if sc.server:
                    sc.server.stop(signal.SIGINT if sc.kind == "flexgate" else signal.SIGTERM)
                    sc.server = None
            data["callgrind"] = callgrind_phase(args, upstream)
    finally:
        stop_all()
        lock.close()

    table = render(args, data)
    print()
    print(table)
    with open(os.path.join(WORK, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)
    log(f"results: {WORK}/results.md, {WORK}/results.json")
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
