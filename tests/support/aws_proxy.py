#!/usr/bin/env python3
"""An HTTP proxy in front of moto that stands in for what moto lacks and injects faults.

- ImportSnapshot / DescribeImportSnapshotTasks (EC2 query API), which moto does not implement: the proxy reads the
  S3 object named in the request from moto, turns it into a real moto snapshot through the EBS direct API (only
  non-zero 512 KiB blocks, as AWS stores them), and answers with the EC2 XML shapes, reporting the task as
  "active" on the first describe and "completed" afterwards, like the real asynchronous task.
- Fault rules for uplosi's error paths:
    --fail-block N          every PutSnapshotBlock of block N gets HTTP 500 InternalServerException
    --deny-start-snapshot   StartSnapshot gets HTTP 403 AccessDeniedException
    --slow-blocks SECONDS   every PutSnapshotBlock is held this long before it is forwarded (for Ctrl-C tests)
    --fail-part N           every S3 UploadPart of part N gets HTTP 500 InternalError
- Everything else is forwarded to moto unchanged. Request counts per operation, and the parameters of the last
  RegisterImage (which moto mostly ignores), are written to --stats as JSON.
"""

import argparse
import http.client
import http.server
import json
import re
import threading
import time
import urllib.parse
import uuid
from xml.sax.saxutils import escape

import boto3

from httpbody import read_body

BLOCK = 512 * 1024
EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"

args = None
lock = threading.Lock()
stats = {}
tasks = {}


def count(op):
    with lock:
        stats[op] = stats.get(op, 0) + 1
        with open(args.stats, "w") as f:
            json.dump(stats, f)


def client(service, region):
    return boto3.client(
        service,
        endpoint_url=args.upstream,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def region_of(headers):
    match = re.search(r"Credential=[^/]+/\d+/([^/]+)/([^/]+)/", headers.get("Authorization", ""))
    return (match.group(1), match.group(2)) if match else ("us-east-1", "")


def import_snapshot(params, region):
    bucket = params["DiskContainer.UserBucket.S3Bucket"][0]
    key = params["DiskContainer.UserBucket.S3Key"][0]
    data = client("s3", region).get_object(Bucket=bucket, Key=key)["Body"].read()
    ebs = client("ebs", region)
    size_gib = max(1, -(-len(data) // (1 << 30)))
    snap = ebs.start_snapshot(VolumeSize=size_gib, Description=params.get("Description", [""])[0])
    sid = snap["SnapshotId"]
    for index in range(0, -(-len(data) // BLOCK)):
        block = data[index * BLOCK : (index + 1) * BLOCK].ljust(BLOCK, b"\0")
        if block.strip(b"\0"):
            ebs.put_snapshot_block(
                SnapshotId=sid, BlockIndex=index, BlockData=block, DataLength=BLOCK,
                Checksum="", ChecksumAlgorithm="SHA256",
            )
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0)
    task = "import-snap-" + uuid.uuid4().hex[:17]
    with lock:
        tasks[task] = {"snapshot": sid, "size": len(data), "polls": 0}
    body = (
        f'<ImportSnapshotResponse xmlns="{EC2_NS}"><requestId>{uuid.uuid4()}</requestId>'
        f"<importTaskId>{task}</importTaskId><description>{escape(params.get('Description', [''])[0])}</description>"
        f"<snapshotTaskDetail><status>active</status><progress>0</progress></snapshotTaskDetail>"
        f"</ImportSnapshotResponse>"
    )
    return 200, body


def describe_import_tasks(params):
    items = []
    for key, values in params.items():
        if key.startswith("ImportTaskId"):
            for task in values:
                with lock:
                    entry = tasks.get(task)
                    if entry is None:
                        continue
                    entry["polls"] += 1
                    done = entry["polls"] > 1
                detail = (
                    f"<status>completed</status><snapshotId>{entry['snapshot']}</snapshotId>"
                    f"<diskImageSize>{entry['size']}</diskImageSize><format>RAW</format>"
                    if done
                    else "<status>active</status><progress>50</progress>"
                )
                items.append(f"<item><importTaskId>{task}</importTaskId><snapshotTaskDetail>{detail}</snapshotTaskDetail></item>")
    body = (
        f'<DescribeImportSnapshotTasksResponse xmlns="{EC2_NS}"><requestId>{uuid.uuid4()}</requestId>'
        f"<importSnapshotTaskSet>{''.join(items)}</importSnapshotTaskSet></DescribeImportSnapshotTasksResponse>"
    )
    return 200, body


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def read_body(self):
        return read_body(self)

    def reply(self, status, body, content_type, extra=None):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def json_error(self, status, code, message):
        self.reply(status, json.dumps({"message": message}), "application/json", {"x-amzn-ErrorType": code})

    def handle_any(self):
        body = self.read_body()
        region, service = region_of(self.headers)
        path = urllib.parse.urlparse(self.path).path
        if service == "ebs":
            if self.command == "POST" and path == "/snapshots":
                count("StartSnapshot")
                if args.deny_start_snapshot:
                    return self.json_error(403, "AccessDeniedException", "User is not authorized to perform: ebs:StartSnapshot")
            block = re.match(r"^/snapshots/[^/]+/blocks/(\d+)$", path)
            if self.command == "PUT" and block:
                count("PutSnapshotBlock")
                if args.slow_blocks:
                    time.sleep(args.slow_blocks)
                if args.fail_block is not None and int(block.group(1)) == args.fail_block:
                    count("PutSnapshotBlockFailed")
                    return self.json_error(500, "InternalServerException", "injected failure for block %s" % block.group(1))
        if service == "s3" and self.command == "PUT":
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            if "partNumber" in query:
                count("UploadPart")
                if args.fail_part is not None and int(query["partNumber"][0]) == args.fail_part:
                    count("UploadPartFailed")
                    xml = "<Error><Code>InternalError</Code><Message>injected failure for part %s</Message></Error>" % query["partNumber"][0]
                    return self.reply(500, xml, "application/xml")
        if service == "ec2" and self.command == "POST":
            params = urllib.parse.parse_qs(body.decode(errors="replace"))
            action = params.get("Action", [""])[0]
            count(action)
            if action == "RegisterImage":
                # moto ignores most RegisterImage parameters; record them so tests can check what was asked for.
                with lock:
                    stats["RegisterImageParams"] = {k: v[0] for k, v in params.items()}
                count("RegisterImage:recorded")
            if action == "ImportSnapshot":
                status, xml = import_snapshot(params, region)
                return self.reply(status, xml, "text/xml")
            if action == "DescribeImportSnapshotTasks":
                status, xml = describe_import_tasks(params)
                return self.reply(status, xml, "text/xml")
        self.forward(body)

    def forward(self, body):
        parsed = urllib.parse.urlparse(args.upstream)
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "content-length", "connection")}
        headers["Content-Length"] = str(len(body))
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        # moto answers CompleteMultipartUpload with the root element CompleteMultipartUploadResponse; S3 (and the
        # SDKs) use CompleteMultipartUploadResult. Fix the name so the SDK sees what S3 sends.
        data = data.replace(b"<CompleteMultipartUploadResponse", b"<CompleteMultipartUploadResult").replace(
            b"</CompleteMultipartUploadResponse>", b"</CompleteMultipartUploadResult>")
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection", "date", "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


def main():
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--fail-block", type=int)
    parser.add_argument("--deny-start-snapshot", action="store_true")
    parser.add_argument("--slow-blocks", type=float, default=0)
    parser.add_argument("--fail-part", type=int)
    args = parser.parse_args()
    with open(args.stats, "w") as f:
        json.dump({}, f)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
