#!/usr/bin/env python3
"""A fake Compute Engine images API for uplosi's GCP tests, over HTTPS.

There is no GCE emulator, so this plays the part uplosi uses, with the request checks the real API makes and real
global-operation semantics; Cloud Storage is a real fake-gcs-server (--gcs):

- Every request needs `Authorization: Bearer` with a self-signed JWT (RS256) of the service account in --account
  (the JSON key file uplosi is given): header kid = private_key_id, iss = sub = client_email, a scope including
  cloud-platform or an audience of this server, not expired, signature by the account's key. 401 otherwise.
- Paths are /compute/v1/projects/{project}/global/...; only --project exists (404 for others).
- images: GET list (maxResults, pageToken; `filter` is ignored, as uplosi filters itself), GET one (404
  notFound), POST insert, DELETE, POST {name}/deprecate, GET {name}/getIamPolicy, POST {name}/setIamPolicy.
- insert checks what GCE checks: the name and family match [a-z]([-a-z0-9]*[a-z0-9])? and are at most 63
  characters; a taken name is 409 alreadyExists; every guestOsFeatures type is known; architecture is X86_64 or
  ARM64; rawDisk.source is https://storage.googleapis.com/BUCKET/OBJECT (or storage.cloud.google.com) naming an
  object that exists in --gcs (400 otherwise); rawDisk.containerType is TAR. The object is read at once (GCE reads
  it while the operation runs; uplosi deletes it afterwards): it must be gzip with exactly one tar member
  `disk.raw` whose size is a whole number of GiB, or the operation fails. The disk is written sparse to
  --state/images/NAME.raw and the object's bytes are summarised in the image (archiveSizeBytes, diskSizeGb).
- Operations (global/operations/NAME): PENDING, then RUNNING, then DONE after --polls reads or --polls seconds,
  whichever is first; --fail-insert MESSAGE makes insert operations end DONE with error.errors[0] = {code:
  "INVALID_IMAGE", message} and the image FAILED. A requestId seen before answers the same operation.
- setIamPolicy takes {"policy": {...}} whose etag must equal the current one (412 conditionNotMet otherwise). Etags
  are URL-safe base64, as bytes fields of discovery-based APIs are (the official client decodes them so).
- deprecate takes a DeprecationStatus with state ACTIVE, DEPRECATED, OBSOLETE or DELETED.
- --metadata-only (for benchmarks, where GCE's reading of the archive would compete with uplosi for this machine's
  cores although it happens on Google's side): insert only checks that the object exists and records its size.
- Every request is appended to --state/requests.jsonl (method, path, query, status, body); the token never is.
"""

import argparse
import base64
import gzip
import hashlib
import http.client
import json
import os
import re
import tarfile
import threading
import time
import urllib.parse
import uuid

from httpbody import read_body, serve

NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
FEATURES = {
    "BARE_METAL_LINUX_COMPATIBLE", "GVNIC", "IDPF", "MULTI_IP_SUBNET", "SECURE_BOOT", "SEV_CAPABLE",
    "SEV_LIVE_MIGRATABLE", "SEV_LIVE_MIGRATABLE_V2", "SEV_SNP_CAPABLE", "SNP_SVSM_CAPABLE", "TDX_CAPABLE",
    "UEFI_COMPATIBLE", "VIRTIO_SCSI_MULTIQUEUE", "WINDOWS", "SUSPEND_RESUME_COMPATIBLE",
}
GIB = 1 << 30

args = None
lock = threading.Lock()
images = {}
operations = {}
by_request_id = {}
account = None
public_key = None


def now(days_ago=0):
    """A creationTimestamp as Compute Engine writes it (RFC 3339, milliseconds, an offset)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime(time.time() - days_ago * 86400))


def record(entry):
    with lock, open(os.path.join(args.state, "requests.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def gce_error(code, reason, message):
    return {"error": {"code": code, "message": message, "errors": [{"domain": "global", "reason": reason, "message": message}]}}


def b64url(data):
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def token_problem(header_value, base):
    """Why the bearer token is not a valid self-signed JWT of the account, or None."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    if not header_value.startswith("Bearer "):
        return "no bearer token"
    parts = header_value[7:].split(".")
    if len(parts) != 3:
        return "not a JWT"
    try:
        header, claims = json.loads(b64url(parts[0])), json.loads(b64url(parts[1]))
        public_key.verify(b64url(parts[2]), f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except Exception as e:
        return f"bad token: {e!r}"
    if header.get("alg") != "RS256" or header.get("kid") != account["private_key_id"]:
        return "wrong alg or kid"
    if claims.get("iss") != account["client_email"] or claims.get("sub") != account["client_email"]:
        return "wrong issuer"
    scopes = str(claims.get("scope", "")).split()
    if "https://www.googleapis.com/auth/cloud-platform" not in scopes and not str(claims.get("aud", "")).startswith(base):
        return f"no cloud-platform scope: {claims}"
    if claims.get("exp", 0) < time.time():
        return "expired"
    return None


def advance(op):
    """One read of an operation: PENDING -> RUNNING -> DONE."""
    op["reads"] += 1
    if op["status"] != "DONE" and (op["reads"] > args.polls or time.time() - op["started"] > args.polls):
        op["status"] = "DONE"
        op["progress"] = 100
        op["endTime"] = now()
        if op.get("error") is None and op.get("apply"):
            op["apply"]()
        elif op.get("on_error"):
            op["on_error"]()
    elif op["status"] == "PENDING":
        op["status"] = "RUNNING"
    return public_op(op)


def public(image):
    return {k: v for k, v in image.items() if not k.startswith("_")}


def dump():
    """Writes every image, with the fake's own facts (_policy, _unpacked), to --state/images.json."""
    path = os.path.join(args.state, "images.json")
    with open(path + ".tmp", "w") as f:
        json.dump(images, f)
    os.replace(path + ".tmp", path)


def public_op(op):
    return {k: v for k, v in op.items() if k not in ("apply", "on_error", "reads", "started")}


def object_size(bucket, obj):
    """The object's size from its metadata in fake-gcs-server, or None if there is none."""
    url = urllib.parse.urlsplit(args.gcs)
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
    conn.request("GET", f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/{urllib.parse.quote(obj, safe='')}")
    response = conn.getresponse()
    body = response.read()
    if response.status == 404:
        return None
    if response.status != 200:
        raise RuntimeError(f"fake-gcs-server answered {response.status}")
    return int(json.loads(body)["size"])


def read_object(bucket, obj):
    """The object's bytes from fake-gcs-server, or None if there is none."""
    url = urllib.parse.urlsplit(args.gcs)
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=600)
    path = f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/{urllib.parse.quote(obj, safe='')}?alt=media"
    conn.request("GET", path)
    response = conn.getresponse()
    if response.status == 404:
        return None
    if response.status != 200:
        raise RuntimeError(f"fake-gcs-server answered {response.status}")
    path = os.path.join(args.state, "objects", f"{uuid.uuid4().hex}.tar.gz")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        while chunk := response.read(1 << 20):
            f.write(chunk)
    return path


def unpack(archive, name):
    """Checks the archive as GCE does and writes disk.raw sparse to state/images/NAME.raw; returns an error text or
    the facts about it."""
    out = os.path.join(args.state, "images", f"{name}.raw")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            if [m.name for m in members] != ["disk.raw"]:
                return f"the archive must hold exactly one file disk.raw, not {[m.name for m in members]}"
            member = members[0]
            if member.size % GIB != 0:
                return f"disk.raw is {member.size} bytes, not a multiple of 1 GiB"
            source = tar.extractfile(member)
            with open(out, "wb") as f:
                f.truncate(member.size)
                regions = member.sparse if member.sparse is not None else [(0, member.size)]
                for offset, size in regions:
                    source.seek(offset)
                    f.seek(offset)
                    left = size
                    while left:
                        chunk = source.read(min(left, 1 << 20))
                        if not chunk:
                            return "disk.raw is truncated"
                        f.write(chunk)
                        left -= len(chunk)
            return {"size": member.size, "sparse": member.sparse is not None, "type": member.type.decode()}
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as e:
        return f"the archive is not a valid tar.gz: {e}"
    finally:
        os.unlink(archive)


class Handler(__import__("http.server").server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.status = status

    def base(self):
        return f"https://127.0.0.1:{args.port}"

    def handle_any(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        raw = read_body(self)
        self.status = 0
        body = None
        try:
            body = json.loads(raw) if raw.strip() else None
            problem = token_problem(self.headers.get("Authorization", ""), self.base())
            if problem:
                self.answer(401, gce_error(401, "authError", f"Request had invalid authentication credentials: {problem}"))
            else:
                self.route(method, url.path, query, body)
        except Exception as e:  # a bug in the fake must show, not hang the client
            self.answer(500, gce_error(500, "backendError", repr(e)))
        finally:
            record({"method": method, "path": url.path, "query": query, "status": self.status, "body": body})

    do_GET = lambda self: self.handle_any("GET")
    do_POST = lambda self: self.handle_any("POST")
    do_DELETE = lambda self: self.handle_any("DELETE")

    def route(self, method, path, query, body):
        m = re.match(r"^/compute/v1/projects/([^/]+)/global/(images|operations)(?:/([^/]+))?(?:/([^/]+))?$", path)
        if not m:
            return self.answer(404, gce_error(404, "notFound", f"no such path {path}"))
        project, kind, name, action = m.groups()
        if project != args.project:
            return self.answer(404, gce_error(404, "notFound", f"The resource 'projects/{project}' was not found"))
        link = f"{self.base()}/compute/v1/projects/{project}/global"
        with lock:
            if kind == "operations" and method == "GET" and name and not action:
                op = operations.get(name)
                if op is None:
                    return self.answer(404, gce_error(404, "notFound", f"The resource 'projects/{project}/global/operations/{name}' was not found"))
                answer = advance(op)
                dump()
                return self.answer(200, answer)
            if kind != "images":
                return self.answer(404, gce_error(404, "notFound", path))
            if name is None and method == "GET":
                return self.list(query)
            if name is None and method == "POST":
                return self.insert(project, link, query, body)
            image = images.get(name)
            if image is None:
                return self.answer(404, gce_error(404, "notFound", f"The resource 'projects/{project}/global/images/{name}' was not found"))
            if method == "GET" and action is None:
                return self.answer(200, public(image))
            if method == "DELETE" and action is None:
                del images[name]
                return self.operation(link, "delete", image["selfLink"], query)
            if method == "POST" and action == "deprecate":
                state = (body or {}).get("state")
                if state not in ("ACTIVE", "DEPRECATED", "OBSOLETE", "DELETED"):
                    return self.answer(400, gce_error(400, "invalid", f"Invalid value for field 'resource.state': '{state}'."))
                image["deprecated"] = dict(body)
                return self.operation(link, "deprecate", image["selfLink"], query)
            if method == "GET" and action == "getIamPolicy":
                return self.answer(200, image["_policy"])
            if method == "POST" and action == "setIamPolicy":
                policy = (body or {}).get("policy") or {}
                if policy.get("etag") != image["_policy"]["etag"]:
                    return self.answer(412, gce_error(412, "conditionNotMet", "Precondition Failed: the etag does not match"))
                image["_policy"] = {"version": policy.get("version", 1), "bindings": policy.get("bindings", []),
                                    "etag": base64.urlsafe_b64encode(os.urandom(8)).decode()}
                dump()
                return self.answer(200, image["_policy"])
        return self.answer(404, gce_error(404, "notFound", path))

    def list(self, query):
        names = sorted(images)
        start = int(query.get("pageToken") or 0)
        size = int(query.get("maxResults") or 500)
        page = names[start:start + size]
        result = {"kind": "compute#imageList", "items": [public(images[n]) for n in page]}
        if start + size < len(names):
            result["nextPageToken"] = str(start + size)
        self.answer(200, result)

    def operation(self, link, kind, target, query, apply=None, on_error=None, error=None):
        request_id = query.get("requestId")
        if request_id and request_id in by_request_id:
            return self.answer(200, public_op(operations[by_request_id[request_id]]))
        name = f"operation-{int(time.time() * 1000)}-{uuid.uuid4().hex[:12]}"
        op = {"kind": "compute#operation", "id": str(uuid.uuid4().int % (1 << 63)), "name": name,
              "operationType": kind, "targetLink": target, "status": "PENDING", "progress": 0,
              "insertTime": now(), "startTime": now(), "selfLink": f"{link}/operations/{name}",
              "user": account["client_email"], "reads": 0, "started": time.time(), "apply": apply,
              "on_error": on_error}
        if error:
            op["error"] = error
            op["httpErrorStatusCode"] = 400
            op["httpErrorMessage"] = "BAD REQUEST"
        operations[name] = op
        if request_id:
            by_request_id[request_id] = name
        dump()
        self.answer(200, public_op(op))

    def insert(self, project, link, query, body):
        body = body or {}
        request_id = query.get("requestId")
        if request_id and request_id in by_request_id:
            return self.answer(200, public_op(operations[by_request_id[request_id]]))
        name = body.get("name", "")
        if not NAME.match(name) or len(name) > 63:
            return self.answer(400, gce_error(400, "invalid", f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'"))
        family = body.get("family")
        if family is not None and (not NAME.match(family) or len(family) > 63):
            return self.answer(400, gce_error(400, "invalid", f"Invalid value for field 'resource.family': '{family}'."))
        if name in images:
            return self.answer(409, gce_error(409, "alreadyExists", f"The resource 'projects/{project}/global/images/{name}' already exists"))
        for feature in body.get("guestOsFeatures", []):
            if feature.get("type") not in FEATURES:
                return self.answer(400, gce_error(400, "invalid", f"Invalid value for field 'resource.guestOsFeatures[].type': '{feature.get('type')}'."))
        architecture = body.get("architecture", "ARCHITECTURE_UNSPECIFIED")
        if architecture not in ("X86_64", "ARM64", "ARCHITECTURE_UNSPECIFIED"):
            return self.answer(400, gce_error(400, "invalid", f"Invalid value for field 'resource.architecture': '{architecture}'."))
        raw = body.get("rawDisk") or {}
        source = raw.get("source", "")
        m = re.match(r"^https://(?:storage\.googleapis\.com|storage\.cloud\.google\.com)/([^/]+)/(.+)$", source)
        if not m:
            return self.answer(400, gce_error(400, "invalid", f"Invalid value for field 'resource.rawDisk.source': '{source}'."))
        if raw.get("containerType", "TAR") != "TAR":
            return self.answer(400, gce_error(400, "invalid", "Invalid value for field 'resource.rawDisk.containerType'."))
        bucket, obj = m.group(1), urllib.parse.unquote(m.group(2))
        if args.metadata_only:
            archive_size = object_size(bucket, obj)
            unpacked = {"size": GIB, "sparse": None, "type": "not read (--metadata-only)"}
        else:
            archive = read_object(bucket, obj)
            archive_size = archive and os.path.getsize(archive)
        if archive_size is None:
            return self.answer(400, gce_error(400, "invalid", f"The resource '{source}' of type 'Google Cloud Storage object' was not found or is not readable."))
        if not args.metadata_only:
            unpacked = unpack(archive, name)
        image = {"kind": "compute#image", "id": str(uuid.uuid4().int % (1 << 63)), "name": name,
                 "creationTimestamp": now(), "selfLink": f"{link}/images/{name}", "status": "PENDING",
                 "sourceType": "RAW", "rawDisk": raw, "archiveSizeBytes": str(archive_size),
                 "guestOsFeatures": body.get("guestOsFeatures", []), "architecture": architecture,
                 "labels": body.get("labels", {}), "storageLocations": body.get("storageLocations") or [args.location],
                 "_policy": {"version": 1, "bindings": [], "etag": "ACAB"}}
        for key in ("family", "description"):
            if key in body:
                image[key] = body[key]
        images[name] = image
        error = None
        if isinstance(unpacked, str):
            error = {"errors": [{"code": "INVALID_IMAGE", "message": unpacked}]}
        elif args.fail_insert:
            error = {"errors": [{"code": "INVALID_IMAGE", "location": "rawDisk.source", "message": args.fail_insert}]}
        else:
            image["diskSizeGb"] = str(unpacked["size"] // GIB)
            image["_unpacked"] = unpacked

        def ready():
            image["status"] = "READY"

        def failed():
            image["status"] = "FAILED"

        if error:
            self.operation(link, "insert", image["selfLink"], query, on_error=failed, error=error)
        else:
            self.operation(link, "insert", image["selfLink"], query, apply=ready)


def main():
    global args, account, public_key
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--account", required=True, help="the service-account JSON key file")
    parser.add_argument("--project", required=True)
    parser.add_argument("--location", default="us")
    parser.add_argument("--gcs", required=True, help="fake-gcs-server's URL, to read rawDisk.source")
    parser.add_argument("--state", required=True)
    parser.add_argument("--polls", type=int, default=2)
    parser.add_argument("--fail-insert")
    parser.add_argument("--metadata-only", action="store_true")
    parser.add_argument("--seed-image", action="append", default=[], help="NAME:FAMILY of an existing READY image, created 30 days ago")
    args = parser.parse_args()
    from cryptography.hazmat.primitives import serialization
    with open(args.account) as f:
        account = json.load(f)
    public_key = serialization.load_pem_private_key(account["private_key"].encode(), None).public_key()
    os.makedirs(args.state, exist_ok=True)
    dump()
    link = f"https://127.0.0.1:{args.port}/compute/v1/projects/{args.project}/global"
    for seed in args.seed_image:
        name, family = seed.split(":")
        images[name] = {"kind": "compute#image", "name": name, "family": family, "status": "READY",
                        "selfLink": f"{link}/images/{name}", "creationTimestamp": now(days_ago=30),
                        "_policy": {"version": 1, "bindings": [], "etag": "ACAB"}}
    serve(Handler, args.port, args.cert, args.key)


if __name__ == "__main__":
    main()
