#!/usr/bin/env python3
"""A slow webhook receiver for the bench (scenario fg-err-hook).

    slow_receiver.py [--port 18091] [--delay 5] [--log FILE]

Listens on 127.0.0.1 (threaded, standard library only). Every POST is
read at once, recorded, and answered 200 only after --delay seconds. The
delay holds the gateway's delivery attempt open, as a receiver stuck on a
slow database would: the proxy's throughput must not notice.

What it recorded is at GET /stats (answered at once), as JSON:

  posts            POSTs received (retries included)
  deliveries       distinct webhook-id values among them
  count_sum        sum of data.count over the distinct deliveries: the
                   request.error occurrences they stand for
  events_sum       sum of data.events (bus events coalesced into them)
  in_flight        POSTs received and not answered yet
  signed           POSTs that carried a webhook-signature header
  by_type          deliveries per event type
  first, last      receive times (Unix seconds) of the first and last POST

With --log, each POST is also appended to FILE as one JSON line.
The harness starts it and stops it by its pid.
"""

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.posts = 0
        self.ids = set()
        self.count_sum = 0
        self.events_sum = 0
        self.in_flight = 0
        self.signed = 0
        self.by_type = {}
        self.first = None
        self.last = None

    def snapshot(self):
        with self.lock:
            return {"posts": self.posts, "deliveries": len(self.ids), "count_sum": self.count_sum,
                    "events_sum": self.events_sum, "in_flight": self.in_flight, "signed": self.signed,
                    "by_type": dict(self.by_type), "first": self.first, "last": self.last}


def make_handler(stats, delay, logfile):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: the stats say it all
            pass

        def reply(self, code, body, ctype="application/json"):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.split("?")[0] == "/stats":
                self.reply(200, json.dumps(stats.snapshot()))
            else:
                self.reply(404, "{}")

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n > 0 else b""
            now = time.time()
            wid = self.headers.get("webhook-id") or ""
            try:
                payload = json.loads(body)
            except ValueError:
                payload = {}
            data = payload.get("data") if isinstance(payload, dict) else None
            data = data if isinstance(data, dict) else {}
            kind = payload.get("type", "?") if isinstance(payload, dict) else "?"
            with stats.lock:
                stats.posts += 1
                stats.in_flight += 1
                stats.signed += bool(self.headers.get("webhook-signature"))
                stats.first = stats.first or now
                stats.last = now
                if wid not in stats.ids:  # a retry of a delivery counts once
                    stats.ids.add(wid)
                    stats.by_type[kind] = stats.by_type.get(kind, 0) + 1
                    if isinstance(data.get("count"), int):
                        stats.count_sum += data["count"]
                    if isinstance(data.get("events"), int):
                        stats.events_sum += data["events"]
            if logfile:
                line = json.dumps({"t": round(now, 3), "webhook_id": wid, "type": kind,
                                   "count": data.get("count"), "events": data.get("events"),
                                   "bytes": len(body)})
                with stats.lock:
                    with open(logfile, "a") as f:
                        f.write(line + "\n")
            try:
                time.sleep(delay)
                self.reply(200, "{}")
            finally:
                with stats.lock:
                    stats.in_flight -= 1

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=18091)
    ap.add_argument("--delay", type=float, default=5.0, help="seconds before answering a POST (default 5)")
    ap.add_argument("--log", help="append one JSON line per POST to this file")
    args = ap.parse_args()
    stats = Stats()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(stats, args.delay, args.log))
    server.daemon_threads = True

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    print(f"slow receiver on 127.0.0.1:{args.port}, answering after {args.delay:g} s", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        print(json.dumps(stats.snapshot()), flush=True)
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
