#!/usr/bin/env python3
"""A small Keystone v3 token endpoint in front of a real glance-api, for uplosi's OpenStack tests.

- POST /v3/auth/tokens checks the request the way Keystone does and issues a token for exactly one user:
    password:               {"user": {"name": USER, "domain": {"name"|"id": ...}, "password": PASSWORD}}
                            or {"user": {"id": USER_ID, "password": PASSWORD}}, optionally scoped to the project
    application_credential: {"id": APP_CRED_ID, "secret": APP_CRED_SECRET} (an explicit scope is refused, as in
                            Keystone)
    token:                  {"id": an issued token}
  Wrong credentials get 401 with Keystone's JSON error shape. The answer carries X-Subject-Token, the project and
  a catalog whose public image endpoint (region RegionOne) is this server's /image path; an internal endpoint
  points at a closed port, so a client that ignores `interface` fails.
- /image/... is forwarded to glance-api only with a valid X-Auth-Token (401 otherwise), streaming chunked request
  bodies. --delay SECONDS holds each forwarded MiB of a request body that long (for interrupting an upload).
- --cert/--key serve HTTPS instead (the catalog then says https too).
- Counts are written to --stats as JSON: tokens issued per method, rejected logins, forwarded and unauthorised
  requests.
"""

import argparse
import http.client
import http.server
import json
import threading
import time
import urllib.parse
import uuid

from httpbody import serve

USER, USER_ID, PASSWORD = "ci", "u-1234", "s3cret-pw"
DOMAIN = "Default"
PROJECT_ID, PROJECT_NAME = "p-5678", "images"
APP_CRED_ID, APP_CRED_SECRET = "ac-9999", "app-s3cret"

args = None
lock = threading.Lock()
tokens = set()
stats = {"tokens": {}, "rejected": 0, "forwarded": 0, "unauthorized": 0}


def save():
    with open(args.stats, "w") as f:
        json.dump(stats, f)


def bump(path, key=None):
    with lock:
        if key is None:
            stats[path] += 1
        else:
            stats[path][key] = stats[path].get(key, 0) + 1
        save()


def check(auth):
    """Returns the method if the identity is valid, or an error message."""
    identity = auth.get("identity", {})
    methods = identity.get("methods", [])
    if len(methods) != 1:
        return None, "exactly one authentication method expected"
    method = methods[0]
    if method == "password":
        user = identity.get("password", {}).get("user", {})
        if user.get("password") != PASSWORD:
            return None, "The request you have made requires authentication."
        if "id" in user:
            ok = user["id"] == USER_ID
        else:
            domain = user.get("domain", {})
            ok = user.get("name") == USER and (domain.get("name") == DOMAIN or domain.get("id") == "default")
        if not ok:
            return None, "The request you have made requires authentication."
        scope = auth.get("scope")
        if scope is not None:
            project = scope.get("project", {})
            if not (project.get("id") == PROJECT_ID or (project.get("name") == PROJECT_NAME and project.get("domain"))):
                return None, "Could not find project."
    elif method == "application_credential":
        cred = identity.get("application_credential", {})
        if "scope" in auth:
            return None, "Application credentials cannot request a scope."
        if cred.get("id") != APP_CRED_ID or cred.get("secret") != APP_CRED_SECRET:
            return None, "The request you have made requires authentication."
    elif method == "token":
        if identity.get("token", {}).get("id") not in tokens:
            return None, "The request you have made requires authentication."
    else:
        return None, "Unsupported authentication method"
    return method, None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body_chunks(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return
                data = self.rfile.read(size)
                self.rfile.readline()
                yield data
        else:
            remaining = int(self.headers.get("Content-Length", "0"))
            while remaining > 0:
                data = self.rfile.read(min(remaining, 1 << 20))
                if not data:
                    return
                remaining -= len(data)
                yield data

    def do_POST(self):
        if self.path.rstrip("/") == "/v3/auth/tokens":
            return self.token()
        return self.forward()

    def token(self):
        body = b"".join(self.body_chunks())
        try:
            auth = json.loads(body)["auth"]
        except (ValueError, KeyError):
            return self.reply(400, b'{"error": {"code": 400, "message": "Expecting to find auth in request body."}}')
        method, error = check(auth)
        if error:
            bump("rejected")
            message = json.dumps({"error": {"code": 401, "title": "Unauthorized", "message": error}}).encode()
            return self.reply(401, message, [("Content-Type", "application/json")])
        token = "tok-" + uuid.uuid4().hex
        with lock:
            tokens.add(token)
        bump("tokens", method)
        scheme = "https" if args.cert else "http"
        base = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        catalog = [
            {"type": "identity", "name": "keystone",
             "endpoints": [{"interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": base + "/v3"}]},
            {"type": "image", "name": "glance", "endpoints": [
                {"interface": "internal", "region_id": "RegionOne", "region": "RegionOne", "url": "http://127.0.0.1:9"},
                {"interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": base + "/image"},
            ]},
        ]
        answer = {"token": {
            "methods": [method], "expires_at": "2099-01-01T00:00:00.000000Z",
            "user": {"id": USER_ID, "name": USER, "domain": {"id": "default", "name": DOMAIN}},
            "project": {"id": PROJECT_ID, "name": PROJECT_NAME, "domain": {"id": "default", "name": DOMAIN}},
            "catalog": catalog,
        }}
        self.reply(201, json.dumps(answer).encode(), [("Content-Type", "application/json"), ("X-Subject-Token", token)])

    def forward(self):
        if not self.path.startswith("/image/"):
            return self.reply(404, b'{"error": {"code": 404, "message": "not found"}}')
        if self.headers.get("X-Auth-Token") not in tokens:
            bump("unauthorized")
            return self.reply(401, b'{"error": {"code": 401, "message": "The request you have made requires authentication."}}')
        bump("forwarded")
        upstream = urllib.parse.urlsplit(args.upstream)
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=300)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")}
        has_body = "Content-Length" in self.headers or "Transfer-Encoding" in self.headers

        def slowly():
            for chunk in self.body_chunks():
                for at in range(0, len(chunk), 1 << 20):
                    if args.delay:
                        time.sleep(args.delay)
                    yield chunk[at:at + (1 << 20)]

        try:
            conn.request(self.command, self.path[len("/image"):], body=slowly() if has_body else None,
                         headers=headers, encode_chunked=has_body)
            response = conn.getresponse()
            data = response.read()
        except OSError:
            # glance-api went away: drop the client's connection as the real service would.
            self.close_connection = True
            self.connection.shutdown(2)
            return
        finally:
            conn.close()
        passed = [(k, v) for k, v in response.getheaders()
                  if k.lower() not in ("content-length", "transfer-encoding", "connection")]
        self.reply(response.status, data, passed)

    do_GET = forward
    do_PUT = forward
    do_PATCH = forward
    do_DELETE = forward


def main():
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    save()
    serve(Handler, args.port, args.cert, args.key)


if __name__ == "__main__":
    main()
