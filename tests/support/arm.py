#!/usr/bin/env python3
"""A fake Azure Resource Manager and Entra ID token endpoint for uplosi's Azure tests, over HTTPS.

There is no ARM emulator, so this plays the parts uplosi uses, with the request checks ARM makes and real
long-running-operation semantics; the data plane is a real Azurite:

- POST /{tenant}/oauth2/v2.0/token: the client-credentials form (client_id, client_secret or a PS256 client
  assertion signed by the key of --client-cert, grant_type, scope). The scope must be this server's URL +
  "/.default". A wrong secret gets Entra's 401 invalid_client (AADSTS7000215), a bad assertion AADSTS700027.
- Every ARM request needs `Authorization: Bearer` with an issued token (401 otherwise) and an `api-version` new
  enough for its resource type (disks >= 2024-03-02, galleries >= 2023-07-03; 400 otherwise).
- GET /subscriptions/S, GET …/resourceGroups/G (only --groups exist; 404 ResourceGroupNotFound otherwise).
- Galleries: PUT (location, sharingProfile.permissions Private|Community; Community needs communityGalleryInfo
  with publicNamePrefix, eula, publisherContact, publisherUri), GET, DELETE, POST …/share
  {"operationType": "EnableCommunity"} (sets communityGalleryEnabled and a public name PREFIX-<hex>).
- Image definitions: PUT (location, identifier publisher/offer/sku, osType, osState, hyperVGeneration), GET, DELETE
  (409 while it has versions).
- Disks: PUT with createOption Upload needs uploadSizeBytes = N MiB + 512 (20 MiB + 512 to 32 TiB + 512); state
  ReadyToUpload. POST beginGetAccess (Write) creates a page blob of that size in Azurite and answers its write SAS
  (through --sas-base if given, e.g. a fault proxy); state ActiveUpload. POST endGetAccess; DELETE (409 while
  ActiveUpload, like ARM; the blob is deleted).
- Collections: GET …/disks (of the group) and GET …/images/D/versions list their resources as ARM does,
  {"value": [...]}, two per page with a nextLink ($skiptoken), so clients must follow it.
- Gallery image versions: PUT needs a MAJOR.MINOR.PATCH name (32-bit parts), an existing definition, location,
  publishingProfile.targetRegions including location, and storageProfile.osDiskImage.source.id (or
  storageProfile.source.id) naming an existing disk that is not ActiveUpload. Creating one reads the disk's blob
  back (as ARM would copy it): its bytes go to --state/versions/NAME.vhd and its page ranges to NAME.ranges.json.
  GET with $expand=ReplicationStatus reports each target region. --fail-version MESSAGE makes the operation fail.
- PUT/POST/DELETE answer 201/202 with Azure-AsyncOperation (…/operations/ID: InProgress for --polls polls, then
  Succeeded or Failed with an error) and Location (…/operationResults/ID: 202 until done, then the result), with
  Retry-After: --retry-after seconds (default 0).
- Every request is appended to --state/requests.jsonl (method, path, query, status, body); the token never is.
"""

import argparse
import base64
import datetime
import http.server
import json
import os
import re
import threading
import time
import urllib.parse
import uuid

from azure.storage.blob import BlobServiceClient, BlobSasPermissions, generate_blob_sas
from httpbody import serve

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "disks"
MIB = 1 << 20

args = None
lock = threading.RLock()
tokens = set()
resources = {}  # lowercased resource id -> resource dict
disk_state = {}  # lowercased disk id -> {"state", "blob", "size"}


def arm_time(days_ago=0):
    """A timestamp as Resource Manager writes timeCreated and publishedDate: 7 fractional digits, +00:00."""
    at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days_ago)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+00:00"
operations = {}  # id -> {"polls", "status", "error", "result", "apply"}


def finish(op_id):
    """Ends an operation (once): applies its effect unless it fails."""
    with lock:
        op = operations.get(op_id)
        if op is None or op["done"]:
            return
        op["done"] = True
        if op["error"] is None and op["apply"] is not None:
            op["result"] = op["apply"]() or op["result"]


def schedule(op_id):
    timer = threading.Timer(args.polls * 1.0 + 0.5, finish, [op_id])
    timer.daemon = True
    timer.start()


def azurite():
    service = BlobServiceClient.from_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={args.azurite};")
    container = service.get_container_client(CONTAINER)
    try:
        container.create_container()
    except Exception:
        pass
    return container


def record(entry):
    with lock, open(os.path.join(args.state, "requests.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def arm_error(code, message):
    return {"error": {"code": code, "message": message}}


def api_version_ok(path, version):
    lowered = path.lower()
    if "/microsoft.compute/disks" in lowered:
        return version >= "2024-03-02"
    if "/microsoft.compute/galleries" in lowered:
        return version >= "2023-07-03"
    return bool(re.match(r"^\d{4}-\d{2}-\d{2}", version))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, status, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.status = status

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return raw

    def base(self):
        return f"https://127.0.0.1:{args.port}"

    def handle_any(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        raw = self.body()
        self.status = 0
        body = None
        try:
            if method == "POST" and url.path.endswith("/oauth2/v2.0/token"):
                self.token(url.path, raw)
                record({"method": method, "path": url.path, "status": self.status, "token_request": True})
                return
            body = json.loads(raw) if raw.strip() else None
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in tokens:
                self.answer(401, arm_error("AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing or invalid."))
            elif url.path.startswith("/operations/") or url.path.startswith("/operationResults/"):
                self.operation(url.path)
            elif "api-version" not in query:
                self.answer(400, arm_error("MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests."))
            elif not api_version_ok(url.path, query["api-version"]):
                self.answer(400, arm_error("InvalidApiVersionParameter", f"The api-version '{query['api-version']}' is invalid for {url.path}."))
            else:
                self.route(method, url.path, query, body)
        except Exception as e:  # a bug in the fake must show, not hang the client
            self.answer(500, arm_error("FakeError", repr(e)))
        finally:
            if not url.path.endswith("/oauth2/v2.0/token"):
                record({"method": method, "path": url.path, "query": query, "status": self.status, "body": body})

    do_GET = lambda self: self.handle_any("GET")
    do_PUT = lambda self: self.handle_any("PUT")
    do_POST = lambda self: self.handle_any("POST")
    do_DELETE = lambda self: self.handle_any("DELETE")

    # --- Entra ID -------------------------------------------------------------------------------------------------

    def token(self, path, raw):
        form = dict(urllib.parse.parse_qsl(raw.decode()))
        tenant = path.split("/")[1]
        expected_scope = self.base() + "/.default"
        if tenant != args.tenant:
            self.answer(400, {"error": "invalid_request", "error_description": f"AADSTS90002: Tenant '{tenant}' not found.", "error_codes": [90002]})
        elif form.get("grant_type") != "client_credentials":
            self.answer(400, {"error": "unsupported_grant_type", "error_description": "AADSTS70003: grant_type must be client_credentials", "error_codes": [70003]})
        elif form.get("client_id") != args.client_id:
            self.answer(400, {"error": "unauthorized_client", "error_description": f"AADSTS700016: Application '{form.get('client_id')}' was not found.", "error_codes": [700016]})
        elif "client_assertion" in form and (problem := self.assertion_problem(form, path)):
            self.answer(401, {"error": "invalid_client", "error_description": f"AADSTS700027: Client assertion failed: {problem}", "error_codes": [700027]})
        elif "client_assertion" not in form and form.get("client_secret") != args.client_secret:
            self.answer(401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided.", "error_codes": [7000215]})
        elif form.get("scope") != expected_scope:
            self.answer(400, {"error": "invalid_scope", "error_description": f"AADSTS70011: The provided scope '{form.get('scope')}' is not valid; expected {expected_scope}", "error_codes": [70011]})
        else:
            token = "arm-" + uuid.uuid4().hex
            with lock:
                tokens.add(token)
            self.answer(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token})

    def assertion_problem(self, form, path):
        """Checks a certificate client assertion as Entra does: type, PS256 signature by --client-cert, x5t#S256,
        audience, issuer, subject and lifetime."""
        if args.client_cert is None:
            return "certificate credentials are not registered for this application"
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return "client_assertion_type must be jwt-bearer"
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding
        def b64(part):
            return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        try:
            head, body, signature = form["client_assertion"].split(".")
            header, claims = json.loads(b64(head)), json.loads(b64(body))
        except ValueError:
            return "not a JWT"
        with open(args.client_cert, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        thumbprint = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256())).rstrip(b"=").decode()
        if header.get("alg") != "PS256" or header.get("x5t#S256") != thumbprint:
            return f"unknown key or algorithm {header}"
        try:
            cert.public_key().verify(b64(signature), f"{head}.{body}".encode(),
                                     padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
        except Exception:
            return "signature invalid"
        now = time.time()
        if claims.get("aud") != self.base() + path or claims.get("iss") != args.client_id or claims.get("sub") != args.client_id:
            return f"aud/iss/sub wrong: {claims}"
        if not (claims.get("nbf", now + 1) <= now + 5 and now < claims.get("exp", 0) <= now + 3600):
            return "assertion expired or not yet valid"
        return None

    # --- long-running operations ----------------------------------------------------------------------------------

    def start_operation(self, status, resource, apply, result=None, error=None, location_result=True):
        """Answers `status` (201/202) with operation headers; `apply` runs when the operation succeeds: after
        --polls polls, or on its own a moment later (an operation goes on when nobody polls it)."""
        op = uuid.uuid4().hex
        with lock:
            operations[op] = {"polls": 0, "apply": apply, "result": result, "error": error, "done": False}
        schedule(op)
        headers = {
            "Azure-AsyncOperation": f"{self.base()}/operations/{op}",
            "Retry-After": str(args.retry_after),
        }
        if location_result:
            headers["Location"] = f"{self.base()}/operationResults/{op}"
        self.answer(status, resource, headers)
        return op

    def progress(self, op_id):
        with lock:
            op = operations.get(op_id)
            if op is None:
                return None
            if not op["done"]:
                op["polls"] += 1
                if op["polls"] > args.polls:
                    finish(op_id)
            return op

    def operation(self, path):
        kind, op_id = path.strip("/").split("/", 1)
        op = self.progress(op_id)
        if op is None:
            self.answer(404, arm_error("OperationNotFound", "no such operation"))
        elif kind == "operations":
            if not op["done"]:
                self.answer(200, {"name": op_id, "status": "InProgress"}, {"Retry-After": str(args.retry_after)})
            elif op["error"] is not None:
                self.answer(200, {"name": op_id, "status": "Failed", "error": op["error"]})
            else:
                out = {"name": op_id, "status": "Succeeded"}
                if op["result"] is not None:
                    out["properties"] = {"output": op["result"]}
                self.answer(200, out)
        else:
            if not op["done"]:
                self.answer(202, None, {"Location": f"{self.base()}{path}", "Retry-After": str(args.retry_after)})
            elif op["error"] is not None:
                self.answer(500, {"error": op["error"]})
            elif op["result"] is None:
                self.answer(204)
            else:
                self.answer(200, op["result"])

    # --- resources ------------------------------------------------------------------------------------------------

    def route(self, method, path, query, body):
        parts = path.strip("/").split("/")
        lowered = [p.lower() for p in parts]
        rid = "/" + "/".join(parts)
        key = rid.lower()
        if len(parts) < 2 or lowered[0] != "subscriptions" or parts[1] != args.subscription:
            return self.answer(404, arm_error("SubscriptionNotFound", f"The subscription '{parts[1] if len(parts) > 1 else ''}' could not be found."))
        if len(parts) == 2:
            return self.answer(200, {"id": rid, "subscriptionId": parts[1], "displayName": "uplosi tests", "state": "Enabled"})
        if lowered[2] != "resourcegroups" or len(parts) < 4:
            return self.answer(404, arm_error("NotFound", "unknown path"))
        group = parts[3]
        if group.lower() not in [g.lower() for g in args.groups.split(",")]:
            return self.answer(404, arm_error("ResourceGroupNotFound", f"Resource group '{group}' could not be found."))
        if len(parts) == 4:
            return self.answer(200, {"id": rid, "name": group, "location": "eastus", "properties": {"provisioningState": "Succeeded"}})
        if len(parts) == 7 and lowered[4:7] == ["providers", "microsoft.compute", "disks"] and method == "GET":
            return self.collection(key + "/", lambda k: k.count("/") == key.count("/") + 1)
        if len(parts) < 8 or lowered[4:6] != ["providers", "microsoft.compute"]:
            return self.answer(404, arm_error("NotFound", "unknown path"))
        kind = lowered[6]
        rest = lowered[8:]
        if kind == "disks":
            action = rest[0] if rest else None
            disk_key = "/".join(key.split("/")[:9])
            return self.disk(method, "/".join(rid.split("/")[:9]), disk_key, parts[7], action, body)
        if kind == "galleries":
            if not rest:
                return self.gallery(method, rid, key, parts[7], body)
            if rest == ["share"]:
                return self.share(method, "/".join(rid.split("/")[:9]), body)
            if len(rest) == 2 and rest[0] == "images":
                return self.definition(method, rid, key, parts[9], body)
            if len(rest) == 3 and rest[0] == "images" and rest[2] == "versions" and method == "GET":
                if key.rsplit("/versions", 1)[0] not in resources:
                    return self.answer(404, arm_error("ResourceNotFound", "The image definition does not exist."))
                return self.collection(key + "/", lambda k: "/" not in k[len(key) + 1:])
            if len(rest) == 4 and rest[0] == "images" and rest[2] == "versions":
                return self.version(method, rid, key, parts[11], query, body)
        self.answer(404, arm_error("NotFound", "unknown path"))

    def collection(self, prefix, direct):
        """GET of a collection: {"value": [...]}, two per page with nextLink (as ARM pages, so clients follow it)."""
        with lock:
            items = [r for k, r in sorted(resources.items()) if k.startswith(prefix) and direct(k)]
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        start = int(query.get("$skiptoken", ["0"])[0])
        page = {"value": items[start:start + 2]}
        if start + 2 < len(items):
            page["nextLink"] = f"{self.base()}{urllib.parse.urlsplit(self.path).path}?api-version={query.get('api-version', [''])[0]}&$skiptoken={start + 2}"
        return self.answer(200, page)

    def get_or_delete(self, method, key, what, on_delete=None):
        with lock:
            found = resources.get(key)
        if found is None:
            return self.answer(404, arm_error("ResourceNotFound", f"The Resource '{what}' was not found."))
        if method == "GET":
            return self.answer(200, found)
        if on_delete is not None:
            refusal = on_delete()
            if refusal:
                return self.answer(409, arm_error(*refusal))

        def apply():
            with lock:
                resources.pop(key, None)
        self.start_operation(202, None, apply)

    def put(self, key, resource, status_code=None):
        """Creates the resource Creating, Succeeded when its operation ends."""
        resource = dict(resource)
        resource.setdefault("properties", {})["provisioningState"] = "Creating"
        existed = key in resources
        with lock:
            resources[key] = resource

        def apply():
            with lock:
                if key in resources:
                    resources[key]["properties"]["provisioningState"] = "Succeeded"
        return existed, apply

    def gallery(self, method, rid, key, name, body):
        if method != "PUT":
            def refuse():
                if any(k.startswith(key + "/images/") for k in resources):
                    return ("CannotDeleteResource", "The gallery has image definitions; delete them first.")
            return self.get_or_delete(method, key, name, refuse)
        if not body or not body.get("location"):
            return self.answer(400, arm_error("LocationRequired", "The location property is required for this definition."))
        sharing = (body.get("properties") or {}).get("sharingProfile") or {"permissions": "Private"}
        permission = sharing.get("permissions")
        if permission not in ("Private", "Community", "Groups"):
            return self.answer(400, arm_error("InvalidParameter", f"Sharing permission '{permission}' is not valid."))
        if permission == "Community":
            info = sharing.get("communityGalleryInfo") or {}
            missing = [k for k in ("publicNamePrefix", "eula", "publisherContact", "publisherUri") if not info.get(k)]
            if missing:
                return self.answer(400, arm_error("InvalidParameter", f"communityGalleryInfo is missing {', '.join(missing)}."))
            info = dict(info, communityGalleryEnabled=False)
            sharing = dict(sharing, communityGalleryInfo=info)
        resource = {"id": rid, "name": name, "type": "Microsoft.Compute/galleries", "location": body["location"],
                    "properties": {"description": (body.get("properties") or {}).get("description", ""),
                                   "identifier": {"uniqueName": f"{args.subscription}-{name.upper()}"},
                                   "sharingProfile": sharing}}
        existed, apply = self.put(key, resource)
        self.start_operation(200 if existed else 201, resource, apply, location_result=False)

    def share(self, method, gallery_rid, body):
        key = gallery_rid.lower()
        with lock:
            gallery = resources.get(key)
        if method != "POST":
            return self.answer(405, arm_error("MethodNotAllowed", "share is an action"))
        if gallery is None:
            return self.answer(404, arm_error("ResourceNotFound", "gallery not found"))
        if (body or {}).get("operationType") != "EnableCommunity":
            return self.answer(400, arm_error("InvalidParameter", f"operationType '{(body or {}).get('operationType')}' is not supported here."))
        info = gallery["properties"]["sharingProfile"].get("communityGalleryInfo")
        if gallery["properties"]["sharingProfile"].get("permissions") != "Community" or not info:
            return self.answer(409, arm_error("OperationNotAllowed", "Community sharing needs a gallery created with Community permissions."))

        def apply():
            with lock:
                info["communityGalleryEnabled"] = True
                info["publicNames"] = [f"{info['publicNamePrefix']}-{uuid.uuid4().hex[:8]}"]
            return {"operationType": "EnableCommunity"}
        self.start_operation(202, None, apply)

    def definition(self, method, rid, key, name, body):
        gallery_key = key.rsplit("/images/", 1)[0]
        if gallery_key not in resources:
            return self.answer(404, arm_error("ParentResourceNotFound", "The gallery does not exist."))
        if method != "PUT":
            def refuse():
                if any(k.startswith(key + "/versions/") for k in resources):
                    return ("CannotDeleteResource", "The image definition has versions; delete them first.")
            return self.get_or_delete(method, key, name, refuse)
        props = (body or {}).get("properties") or {}
        if not (body or {}).get("location"):
            return self.answer(400, arm_error("LocationRequired", "The location property is required for this definition."))
        ident = props.get("identifier") or {}
        missing = [k for k in ("publisher", "offer", "sku") if not ident.get(k)]
        if missing:
            return self.answer(400, arm_error("InvalidParameter", f"identifier is missing {', '.join(missing)}."))
        if props.get("osType") not in ("Linux", "Windows") or props.get("osState") not in ("Generalized", "Specialized"):
            return self.answer(400, arm_error("InvalidParameter", "osType and osState are required."))
        if props.get("hyperVGeneration") not in ("V1", "V2"):
            return self.answer(400, arm_error("InvalidParameter", "hyperVGeneration must be V1 or V2."))
        if props.get("architecture", "x64") not in ("x64", "Arm64"):
            return self.answer(400, arm_error("InvalidParameter", f"architecture '{props.get('architecture')}' is not valid."))
        resource = {"id": rid, "name": name, "type": "Microsoft.Compute/galleries/images", "location": body["location"],
                    "properties": dict(props)}
        existed, apply = self.put(key, resource)
        self.start_operation(200 if existed else 201, resource, apply, location_result=False)

    def disk(self, method, rid, key, name, action, body):
        with lock:
            state = disk_state.get(key)
        if action == "begingetaccess":
            if method != "POST" or state is None:
                return self.answer(404, arm_error("ResourceNotFound", f"Disk '{name}' not found."))
            if (body or {}).get("access") != "Write" or not (body or {}).get("durationInSeconds"):
                return self.answer(400, arm_error("InvalidParameter", "access Write and durationInSeconds are required for an upload."))
            if state["state"] not in ("ReadyToUpload", "ActiveUpload"):
                return self.answer(409, arm_error("OperationNotAllowed", f"Disk '{name}' is {state['state']}; write access needs ReadyToUpload."))
            blob = f"{name}-{uuid.uuid4().hex[:8]}"
            azurite().get_blob_client(blob).create_page_blob(size=state["size"])
            sas = generate_blob_sas(AZURITE_ACCOUNT, CONTAINER, blob, account_key=AZURITE_KEY,
                                    permission=BlobSasPermissions(read=True, write=True),
                                    expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=int(body["durationInSeconds"])))
            base = (args.sas_base or args.azurite).rstrip("/")
            access = {"accessSAS": f"{base}/{CONTAINER}/{blob}?{sas}"}

            with lock:
                state["blob"] = blob

            def apply():
                with lock:
                    state["state"] = "ActiveUpload"
                return access
            op = self.start_operation(202, None, apply, result=access)
            with lock:
                state["pending"] = op
            return op
        if action == "endgetaccess":
            if method != "POST" or state is None:
                return self.answer(404, arm_error("ResourceNotFound", f"Disk '{name}' not found."))
            # ARM runs the operations of one resource in order: a grant still running finishes first.
            if state.get("pending"):
                finish(state["pending"])

            def apply():
                with lock:
                    if state["state"] == "ActiveUpload":
                        state["state"] = "Unattached"
            return self.start_operation(202, None, apply)
        if action is not None:
            return self.answer(404, arm_error("NotFound", "unknown disk action"))
        if method == "DELETE":
            if state is not None and state["state"] == "ActiveUpload":
                return self.answer(409, arm_error("OperationNotAllowed", f"Disk '{name}' is in ActiveUpload state; revoke access first."))

            def on_delete():
                return None
            with lock:
                found = resources.get(key)
            if found is None:
                return self.answer(204)

            def apply():
                with lock:
                    resources.pop(key, None)
                    gone = disk_state.pop(key, None)
                if gone and gone.get("blob"):
                    try:
                        azurite().delete_blob(gone["blob"])
                    except Exception:
                        pass
            return self.start_operation(202, None, apply)
        if method == "GET":
            with lock:
                found = resources.get(key)
                if found is not None:
                    found["properties"]["diskState"] = disk_state[key]["state"]
            if found is None:
                return self.answer(404, arm_error("ResourceNotFound", f"The Resource 'Microsoft.Compute/disks/{name}' was not found."))
            return self.answer(200, found)
        props = (body or {}).get("properties") or {}
        creation = props.get("creationData") or {}
        if not (body or {}).get("location"):
            return self.answer(400, arm_error("LocationRequired", "The location property is required for this definition."))
        if creation.get("createOption") != "Upload":
            return self.answer(400, arm_error("InvalidParameter", "only createOption Upload is supported by this fake."))
        size = creation.get("uploadSizeBytes")
        if not isinstance(size, int) or size < 20 * MIB + 512 or size > (32 << 40) + 512 or (size - 512) % MIB != 0:
            return self.answer(400, arm_error("InvalidParameter", f"The specified uploadSizeBytes {size} must be a multiple of 1 MiB plus 512 bytes (the VHD footer), at least 20 MiB + 512."))
        if props.get("osType") not in (None, "Linux", "Windows") or props.get("hyperVGeneration") not in (None, "V1", "V2"):
            return self.answer(400, arm_error("InvalidParameter", "osType or hyperVGeneration is not valid."))
        if state is not None:
            return self.answer(409, arm_error("OperationNotAllowed", f"Disk '{name}' exists; an upload disk cannot be changed."))
        resource = {"id": rid, "name": name, "type": "Microsoft.Compute/disks", "location": body["location"],
                    "sku": body.get("sku"), "tags": body.get("tags") or {}, "properties": dict(props, timeCreated=arm_time())}
        with lock:
            disk_state[key] = {"state": "ReadyToUpload", "blob": None, "size": size}
        existed, apply = self.put(key, resource)
        self.start_operation(201, resource, apply, location_result=False)

    def version(self, method, rid, key, name, query, body):
        definition_key = key.rsplit("/versions/", 1)[0]
        if method != "PUT":
            with lock:
                found = resources.get(key)
            if method == "GET" and found is not None and query.get("$expand", "").lower() == "replicationstatus":
                regions = [r["name"] for r in found["properties"]["publishingProfile"]["targetRegions"]]
                done = found["properties"]["provisioningState"] == "Succeeded"
                summary = [{"region": r, "state": "Completed" if done else "Replicating", "progress": 100 if done else 50} for r in regions]
                return self.answer(200, dict(found, properties=dict(found["properties"], replicationStatus={"aggregatedState": "Completed" if done else "InProgress", "summary": summary})))
            return self.get_or_delete(method, key, name)
        if definition_key not in resources:
            return self.answer(404, arm_error("ParentResourceNotFound", "The image definition does not exist."))
        m = re.match(r"^(\d+)\.(\d+)\.(\d+)$", name)
        if not m or any(int(p) > 2147483647 for p in m.groups()):
            return self.answer(400, arm_error("InvalidParameter", f"The gallery image version name '{name}' must be MAJOR.MINOR.PATCH with 32-bit integers."))
        body = body or {}
        if not body.get("location"):
            return self.answer(400, arm_error("LocationRequired", "The location property is required for this definition."))
        props = body.get("properties") or {}
        targets = ((props.get("publishingProfile") or {}).get("targetRegions")) or []
        if body["location"] not in [t.get("name") for t in targets]:
            return self.answer(400, arm_error("InvalidParameter", "publishingProfile.targetRegions must include the version's location."))
        storage = props.get("storageProfile") or {}
        source = ((storage.get("osDiskImage") or {}).get("source") or storage.get("source") or {}).get("id", "")
        source_key = source.lower()
        with lock:
            disk = disk_state.get(source_key)
        if disk is None:
            return self.answer(400, arm_error("InvalidParameter", f"The source '{source}' does not exist."))
        if disk["state"] == "ActiveUpload":
            return self.answer(409, arm_error("OperationNotAllowed", "The source disk is in ActiveUpload state; revoke access first."))
        props = dict(props)
        props["publishingProfile"] = dict(props.get("publishingProfile") or {}, publishedDate=arm_time())
        resource = {"id": rid, "name": name, "type": "Microsoft.Compute/galleries/images/versions",
                    "location": body["location"], "tags": body.get("tags") or {}, "properties": props}
        blob = disk.get("blob")
        versions = os.path.join(args.state, "versions")
        os.makedirs(versions, exist_ok=True)
        if blob:
            client = azurite().get_blob_client(blob)
            if not args.no_content:
                with open(os.path.join(versions, name + ".vhd"), "wb") as f:
                    client.download_blob().readinto(f)
            ranges, _ = client.get_page_ranges()
            with open(os.path.join(versions, name + ".ranges.json"), "w") as f:
                json.dump([[r["start"], r["end"]] for r in ranges], f)
        existed, apply = self.put(key, resource)
        error = {"code": "InternalOperationError", "message": args.fail_version} if args.fail_version else None
        op = uuid.uuid4().hex
        with lock:
            operations[op] = {"polls": 0, "apply": apply, "result": None, "error": error, "done": False}
        schedule(op)
        self.answer(200 if existed else 201, resource, {
            "Azure-AsyncOperation": f"{self.base()}/operations/{op}",
            "Retry-After": str(args.retry_after),
        })


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--azurite", required=True, help="blob endpoint, e.g. http://127.0.0.1:PORT/devstoreaccount1")
    p.add_argument("--sas-base", default=None, help="the blob endpoint as uplosi should reach it (e.g. a proxy)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--client-secret", required=True)
    p.add_argument("--client-cert", default=None, help="PEM certificate whose key signs client assertions")
    p.add_argument("--subscription", required=True)
    p.add_argument("--groups", required=True)
    p.add_argument("--polls", type=int, default=1)
    p.add_argument("--retry-after", type=int, default=0, help="Retry-After of operation answers")
    p.add_argument("--fail-version", default=None)
    p.add_argument("--no-content", action="store_true", help="record only the page ranges of a version's disk")
    p.add_argument("--seed-disk", action="append", default=[], help="NAME[@DAYS] of a disk left over in the first group, created DAYS (30) days ago")
    args = p.parse_args()
    os.makedirs(args.state, exist_ok=True)
    group = args.groups.split(",")[0]
    for seed in args.seed_disk:
        name, _, days = seed.partition("@")
        rid = f"/subscriptions/{args.subscription}/resourceGroups/{group}/providers/Microsoft.Compute/disks/{name}"
        resources[rid.lower()] = {"id": rid, "name": name, "type": "Microsoft.Compute/disks", "location": "eastus",
                                  "tags": {}, "properties": {"provisioningState": "Succeeded", "diskState": "ReadyToUpload",
                                                                "timeCreated": arm_time(days_ago=int(days or 30))}}
        disk_state[rid.lower()] = {"state": "ReadyToUpload", "blob": None, "size": 20 << 20}
    serve(Handler, args.port, args.cert, args.key)


if __name__ == "__main__":
    main()
