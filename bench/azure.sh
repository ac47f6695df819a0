#!/usr/bin/env bash
# Azure upload figures against a real Azurite (npm `azurite`) behind the ARM fake of the tests
# (tests/support/arm.py), in one run on the same input (bench/make-image.sh):
#   - uplosi: the whole Azure flow (scan, VHD layout, parallel Put Page of the data pages only, version), wall time,
#     peak RSS, and the bytes the disk received (its page ranges) against the image's non-zero 4 KiB blocks;
#   - the Go tool's method: a sequential loop of 4 MiB Put Page requests over the whole fixed VHD (zeros included)
#     into a page blob of the same size, on one HTTP connection (Python `requests`); the VHD is written by
#     `uplosi convert` beforehand and that time is not counted, so the peer is favoured.
#
# Usage: bench/azure.sh [WORKDIR]   (default: a temporary directory, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/uplosi-target}"
cargo build --release --quiet
UPLOSI="$CARGO_TARGET_DIR/release/uplosi"

CREATED=""
if [ $# -ge 1 ]; then WORK="$1"; mkdir -p "$WORK"; else WORK="$(mktemp -d)"; CREATED=1; fi
IMG="$WORK/system.raw"
[ -f "$IMG" ] || bench/make-image.sh "$IMG"

. bench/azure-fakes.sh
start_azure "$WORK"
trap 'kill $AZURE_PIDS 2>/dev/null || true; wait 2>/dev/null || true; if [ -n "$CREATED" ]; then rm -rf "$WORK"; else rm -rf "$WORK/run" "$WORK/arm" "$WORK/system.vhd"; fi' EXIT
SUB="$AZURE_SUBSCRIPTION"
BLOB="$AZURE_BLOB_URL"
ARM_URL="$AZURE_ARM_URL"
cd "$WORK"

echo "input: $(du -h --apparent-size system.raw | cut -f1) apparent, $(du -h system.raw | cut -f1) allocated"
nonzero=$(python3 - system.raw <<'PY'
import sys
zero = bytes(1 << 20)
count = 0
with open(sys.argv[1], "rb") as f:
    while chunk := f.read(1 << 20):
        if chunk == zero[: len(chunk)]:
            continue
        for i in range(0, len(chunk), 4096):
            if any(chunk[i : i + 4096]):
                count += 4096
print(count)
PY
)

mkdir -p run
cat > run/uplosi.conf <<CONF
[base]
name = "bench"
provider = "azure"
imageVersion = "1.0.0"
[base.azure]
subscriptionID = "$SUB"
location = "eastus"
resourceGroup = "bench"
sharedImageGallery = "bench_gallery"
resourceManagerEndpoint = "$ARM_URL"
CONF
(cd run && /usr/bin/time -o ../time.txt -f "%e %M" "$UPLOSI" upload ../system.raw > ref.txt 2> log.txt) \
    || { cat run/log.txt; exit 1; }
read -r u_time u_rss < time.txt
sent=$(python3 -c 'import json,sys; print(sum(e - s + 1 for s, e in json.load(open(sys.argv[1]))))' arm/versions/1.0.0.ranges.json)

# The Go tool's method on the same bytes: the fixed VHD, every 4 MiB of it, one request after the other.
"$UPLOSI" convert system.raw --format vhd --output system.vhd --force 2>/dev/null
read -r g_time g_sent < <(python3 - system.vhd "$BLOB" <<'PY'
import base64, datetime, hashlib, os, sys, time
import requests
from azure.storage.blob import BlobServiceClient, BlobSasPermissions, generate_blob_sas
key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
path, endpoint = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
service = BlobServiceClient.from_connection_string(
    f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};BlobEndpoint={endpoint};")
container = service.get_container_client("gobench")
container.create_container()
container.get_blob_client("disk.vhd").create_page_blob(size=size)
sas = generate_blob_sas("devstoreaccount1", "gobench", "disk.vhd", account_key=key,
                        permission=BlobSasPermissions(write=True),
                        expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2))
url = f"{endpoint}/gobench/disk.vhd?comp=page&{sas}"
session = requests.Session()
sent = 0
start = time.monotonic()
with open(path, "rb") as f:
    offset = 0
    while chunk := f.read(4 << 20):
        r = session.put(url, data=chunk, headers={
            "x-ms-page-write": "update", "x-ms-range": f"bytes={offset}-{offset + len(chunk) - 1}",
            "x-ms-version": "2021-12-02", "Content-Type": "application/octet-stream"})
        r.raise_for_status()
        offset += len(chunk)
        sent += len(chunk)
print(f"{time.monotonic() - start:.2f} {sent}")
PY
)

ratio() { python3 -c "print(f'{$1 / $2:.3f}')"; }
echo "non-zero 4 KiB blocks of the image: $nonzero bytes"
echo "uplosi:            $sent bytes into the disk ($(ratio "$sent" "$nonzero") of the non-zero blocks), ${u_time} s, peak RSS ${u_rss} KiB (reference $(cat run/ref.txt))"
echo "sequential 4 MiB:  $g_sent bytes, ${g_time} s (upload only, VHD prepared beforehand)"
echo "time uplosi / sequential whole-VHD Put Page loop = $(ratio "$u_time" "$g_time")"
