#!/usr/bin/env python3
"""A token server for the distribution registry's token authentication (docs: "Token Authentication
Specification"), as a registry behind a separate auth service (Docker Hub, GHCR, Harbor) has it.

GET /token?service=S&scope=repository:NAME:ACTIONS[&scope=…] with HTTP basic credentials (checked against --user
and --password; anonymous requests get no actions) answers {"token": JWT, "access_token": JWT, "expires_in": 300}.
POST /token with an OAuth2 refresh_token grant (grant_type=refresh_token, refresh_token=--refresh-token) answers
the same. The JWT is RS256-signed with --key; its x5c header carries --cert, which the registry trusts through
`auth.token.rootcertbundle`. Requests are counted in --stats (JSON: basic, refresh, anonymous, refused).

Usage: registry_token.py --port P --key KEY.pem --cert CERT.pem --issuer I --service S --user U --password W
       [--refresh-token T] --stats FILE
"""

import argparse
import base64
import http.server
import json
import os
import threading
import time
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

args = None
key = None
cert_der = None
lock = threading.Lock()
stats = {"basic": 0, "refresh": 0, "anonymous": 0, "refused": 0}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def save():
    with open(args.stats + ".tmp", "w") as f:
        json.dump(stats, f)
    os.replace(args.stats + ".tmp", args.stats)


def token(scopes, allowed):
    access = []
    for scope in scopes:
        parts = scope.split(":")
        if len(parts) < 3 or parts[0] != "repository":
            continue
        actions = parts[-1].split(",") if allowed else []
        access.append({"type": "repository", "name": ":".join(parts[1:-1]), "actions": actions})
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(cert_der).decode()]}
    claims = {"iss": args.issuer, "sub": args.user if allowed else "", "aud": args.service, "exp": now + 300,
              "nbf": now - 10, "iat": now, "jti": b64url(os.urandom(12)), "access": access}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(signature)


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def answer(self, scopes, allowed, kind):
        with lock:
            stats[kind] += 1
            save()
        jwt = token(scopes, allowed)
        body = json.dumps({"token": jwt, "access_token": jwt, "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def refuse(self):
        with lock:
            stats["refused"] += 1
            save()
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        scopes = [s for value in query.get("scope", []) for s in value.split(" ")]
        auth = self.headers.get("Authorization", "")
        if not auth:
            return self.answer(scopes, False, "anonymous")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if user == args.user and password == args.password:
                return self.answer(scopes, True, "basic")
        return self.refuse()

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        scopes = [s for value in form.get("scope", []) for s in value.split(" ")]
        if form.get("grant_type") == ["refresh_token"] and args.refresh_token and \
                form.get("refresh_token") == [args.refresh_token]:
            return self.answer(scopes, True, "refresh")
        return self.refuse()


def main():
    global args, key, cert_der
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--refresh-token", default="")
    parser.add_argument("--stats", required=True)
    args = parser.parse_args()
    with open(args.key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    with open(args.cert, "rb") as f:
        cert_der = x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)
    save()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
