#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 connections to HOST:PORT, complete one GET on
each (so every connection is an idle keep-alive connection, like a real
client between requests), print "READY <ok>", then hold them until stdin is
closed or --hold seconds pass. Loopback only; bounded in count and time.

    hold_conns.py 127.0.0.1 18082 2000 [--header 'X-API-Key: k'] [--hold 60]
"""
import argparse
import resource
import select
import socket
import sys
import time


def read_response(sock, deadline):
    """Reads one response with Content-Length; its status, 0 when incomplete."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline:
            return 0
        chunk = sock.recv(65536)
        if not chunk:
            return 0
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        if time.monotonic() > deadline:
            return 0
        chunk = sock.recv(65536)
        if not chunk:
            return 0
        body += chunk
    try:
        return int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("count", type=int)
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--hold", type=float, default=60.0)
    a = ap.parse_args()
    if not a.host.startswith("127.") and a.host not in ("localhost", "::1"):
        sys.exit("hold_conns: loopback addresses only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, a.count + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    extra = "".join(h + "\r\n" for h in a.header)
    req = (f"GET / HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n{extra}\r\n").encode()
    socks, ok = [], 0
    deadline = time.monotonic() + 60
    for _ in range(a.count):
        s = socket.create_connection((a.host, a.port), timeout=5)
        s.sendall(req)
        if 200 <= read_response(s, deadline) < 300:
            ok += 1
        socks.append(s)
    print(f"READY {ok}", flush=True)
    # Hold until stdin closes (the harness is done measuring) or the bound.
    end = time.monotonic() + a.hold
    while time.monotonic() < end:
        r, _, _ = select.select([sys.stdin], [], [], max(0.0, end - time.monotonic()))
        if r and not sys.stdin.readline():
            break
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
