#!/usr/bin/env python3
"""A fault-injecting HTTP proxy for uplosi's reliability tests, between uplosi and an emulator (moto, glance-api).

Requests whose "METHOD PATH" matches --match are the data plane: each is faulted with probability --rate, drawn
from a random generator seeded with --seed, so a run is reproducible. A fault is one of --faults, chosen by the
same generator:
    500      HTTP 500 with a JSON error (InternalServerException / InternalError)
    503      HTTP 503 SlowDown / ServiceUnavailable
    429      HTTP 429 ThrottlingException / RequestLimitExceeded with Retry-After: 1
    reset    the connection is reset (RST) after reading the request, without an answer
    delay    the request is held --delay seconds (default 1.5), then forwarded normally
Everything else, and the data-plane requests that draw no fault, are forwarded unchanged (Host header included,
so signatures stay valid). Counts per fault and forwarded requests go to --stats as JSON, with the body bytes of
forwarded data-plane requests in "matched_bytes".

--script 503,503 gives the first data-plane requests these faults, in order, before --rate applies; --min-body N
makes requests with a smaller body (e.g. the status queries of a GCS resumable upload) no data plane.
--host is the address to listen on (default 127.0.0.1).

--bandwidth MIB_PER_S reads the bodies of data-plane requests no faster than that, one rate shared by all of them
(a provider's uplink across the internet, as a release step on a CI runner meets it); 0 is unlimited.

--check-azure-pages makes the proxy check what Azurite does not: every Put Page (PUT ?comp=page) must carry a
Content-MD5 matching its body, at most 4 MiB, and a 512-aligned range of exactly the body's length; a violation is
answered 400 (Md5Mismatch / InvalidPageRange) and counted in "page_errors". Forwarded Put Page requests and their
body bytes are counted in "pages" and "page_bytes".
"""

import argparse
import base64
import hashlib
import http.client
import http.server
import json
import os
import random
import re
import socket
import struct
import threading
import time
import urllib.parse

from httpbody import read_body

args = None
lock = threading.Lock()
rng = None
stats = {"matched": 0, "forwarded": 0, "matched_bytes": 0, "faults": {}, "pages": 0, "page_bytes": 0, "page_errors": 0}


def save():
    # Atomically, so a reader never sees a half-written file.
    with open(args.stats + ".tmp", "w") as f:
        json.dump(stats, f)
    os.replace(args.stats + ".tmp", args.stats)


def draw():
    """The fault for the next matching request, or None."""
    with lock:
        stats["matched"] += 1
        if args.script:
            fault = args.script.pop(0)
        else:
            fault = rng.choice(args.faults) if rng.random() < args.rate else None
        if fault:
            stats["faults"][fault] = stats["faults"].get(fault, 0) + 1
        save()
        return fault


class Link:
    """One shared uplink: bytes pass in order, at `rate` bytes per second in all."""

    def __init__(self, rate):
        self.rate = rate
        self.free_at = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n):
        with self.lock:
            start = max(time.monotonic(), self.free_at)
            self.free_at = start + n / self.rate
            until = self.free_at
        delay = until - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class Throttled:
    """A request body stream read through a Link, 64 KiB at a time."""

    def __init__(self, raw, link):
        self.raw, self.link = raw, link

    def read(self, n=-1):
        if n is None or n < 0:
            return self.raw.read()
        parts = []
        while n > 0:
            part = self.raw.read(min(n, 64 << 10))
            if not part:
                break
            self.link.take(len(part))
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    def readline(self, *a):
        return self.raw.readline(*a)


link = None


ERRORS = {
    "500": (500, "InternalServerException", "injected internal error", {}),
    "503": (503, "SlowDown", "injected: please reduce your request rate", {}),
    "429": (429, "ThrottlingException", "injected: RequestLimitExceeded, rate exceeded", {"Retry-After": "1"}),
}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def read_body(self):
        if link is not None and re.search(args.match, f"{self.command} {urllib.parse.urlparse(self.path).path}"):
            raw, self.rfile = self.rfile, Throttled(self.rfile, link)
            try:
                return read_body(self)
            finally:
                self.rfile = raw
        return read_body(self)

    def reply(self, status, data, headers):
        try:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up on this request (Ctrl-C, an aborted sibling of a failed upload).
            self.close_connection = True

    def handle_any(self):
        path = urllib.parse.urlparse(self.path).path
        try:
            body = self.read_body()
        except (ValueError, OSError):
            # The client went away in the middle of its body (Ctrl-C, an aborted request).
            self.close_connection = True
            return
        declared = self.headers.get("Content-Length")
        if declared is not None and len(body) < int(declared):
            # The same, noticed as a short read: a truncated request is never forwarded as a whole one.
            self.close_connection = True
            return
        matched = re.search(args.match, f"{self.command} {path}") is not None and len(body) >= args.min_body
        fault = draw() if matched else None
        if fault == "reset":
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        if fault in ERRORS:
            status, code, message, extra = ERRORS[fault]
            data = json.dumps({"__type": code, "code": code, "message": message,
                               "error": {"code": status, "message": message}}).encode()
            headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", code)] + list(extra.items())
            return self.reply(status, data, headers)
        if fault == "delay":
            time.sleep(args.delay)
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        if args.check_azure_pages and self.command == "PUT" and query.get("comp") == ["page"]:
            problem = self.page_problem(body)
            if problem:
                with lock:
                    stats["page_errors"] += 1
                    save()
                data = json.dumps({"code": problem[0], "message": problem[1]}).encode()
                return self.reply(400, data, [("Content-Type", "application/json"), ("x-ms-error-code", problem[0])])
        self.forward(body, matched)

    def page_problem(self, body):
        md5 = self.headers.get("Content-MD5")
        if md5 is None or base64.b64decode(md5) != hashlib.md5(body).digest():
            return ("Md5Mismatch", f"Content-MD5 {md5} does not match the body")
        if len(body) > 4 << 20:
            return ("RequestBodyTooLarge", f"a Put Page body is at most 4 MiB, got {len(body)}")
        match = re.match(r"bytes=(\d+)-(\d+)$", self.headers.get("x-ms-range") or self.headers.get("Range") or "")
        if not match:
            return ("InvalidPageRange", "no range")
        start, end = int(match.group(1)), int(match.group(2))
        if start % 512 or (end + 1) % 512 or end - start + 1 != len(body):
            return ("InvalidPageRange", f"range {start}-{end} is not 512-aligned or not the body's length {len(body)}")
        return None

    def forward(self, body, matched):
        upstream = urllib.parse.urlparse(args.upstream)
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=300)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("transfer-encoding", "content-length", "connection")}
        headers["Content-Length"] = str(len(body))
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except OSError:
            self.close_connection = True
            self.connection.close()
            return
        finally:
            conn.close()
        with lock:
            stats["forwarded"] += 1
            if matched:
                stats["matched_bytes"] += len(body)
            if args.check_azure_pages and self.command == "PUT" and "comp=page" in self.path and response.status == 201:
                stats["pages"] += 1
                stats["page_bytes"] += len(body)
            save()
        passed = [(k, v) for k, v in response.getheaders()
                  if k.lower() not in ("transfer-encoding", "content-length", "connection", "date", "server")]
        self.reply(response.status, data, passed)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = handle_any


def main():
    global args, rng, link
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--match", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", default="500,503,429,reset,delay")
    parser.add_argument("--delay", type=float, default=1.5)
    parser.add_argument("--check-azure-pages", action="store_true")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--script", default="")
    parser.add_argument("--min-body", type=int, default=0)
    parser.add_argument("--bandwidth", type=float, default=0, help="MiB/s shared by the data-plane request bodies")
    args = parser.parse_args()
    args.faults = args.faults.split(",")
    args.script = [f for f in args.script.split(",") if f]
    rng = random.Random(args.seed)
    link = Link(args.bandwidth * (1 << 20)) if args.bandwidth > 0 else None
    save()
    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
