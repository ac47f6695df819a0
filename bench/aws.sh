#!/usr/bin/env bash
# AWS upload figures against a local moto server, in one run on the same input:
#   - EBS direct (default): bytes sent vs the image's data bytes, wall time, peak RSS at default concurrency;
#   - import-snapshot: uplosi's parallel S3 multipart upload vs `aws s3 cp` (awscli from PyPI) to the same endpoint.
# moto has no ImportSnapshot; tests/support/aws_proxy.py stands in for it (its time is not counted: the S3 upload
# time comes from uplosi's own log line).
#
# Usage: bench/aws.sh [WORKDIR]   (default: a temporary directory, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/uplosi-target}"
python3 -c "import moto.server, boto3" 2>/dev/null || python3 -m pip install --quiet "moto[server]>=5"
command -v aws >/dev/null || python3 -m pip install --quiet awscli
cargo build --release --quiet
UPLOSI="$CARGO_TARGET_DIR/release/uplosi"

if [ $# -ge 1 ]; then WORK="$1"; mkdir -p "$WORK"; else WORK="$(mktemp -d)"; fi
IMG="$WORK/system.raw"
[ -f "$IMG" ] || bench/make-image.sh "$IMG"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
MOTO_PORT=$(free_port)
# EBS direct answering BlockSize 524288 as real EBS does (stock moto says 512).
python3 tests/support/moto_ebs.py -H 127.0.0.1 -p "$MOTO_PORT" >/dev/null 2>&1 &
MOTO=$!
PROXY_PORT=$(free_port)
python3 tests/support/aws_proxy.py --port "$PROXY_PORT" --upstream "http://127.0.0.1:$MOTO_PORT" --stats "$WORK/proxy.json" &
PROXY=$!
cleanup() { kill "$MOTO" "$PROXY" 2>/dev/null || true; [ $# -ge 1 ] || true; }
trap cleanup EXIT
wait_port "$MOTO_PORT" && wait_port "$PROXY_PORT"

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
mkdir -p "$WORK/ebs" "$WORK/s3"
cat > "$WORK/ebs/uplosi.conf" <<CONF
[base]
name = "bench"
provider = "aws"
imageVersion = "1.0.0"
[base.aws]
region = "us-east-1"
CONF
sed 's/^region = .*/&\nuploadMethod = "import-snapshot"\nbucket = "bench-upload"/' "$WORK/ebs/uplosi.conf" > "$WORK/s3/uplosi.conf"

cd "$WORK"
echo "input: $(du -h --apparent-size system.raw | cut -f1) apparent, $(du -h system.raw | cut -f1) allocated"

AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT" /usr/bin/time -o time.txt -f "%e %M" \
    "$UPLOSI" upload system.raw -c ebs 2> ebs.log >/dev/null || { cat ebs.log; exit 1; }
read -r ebs_time ebs_rss < time.txt
line=$(grep -o '[0-9]* blocks, [0-9]* bytes sent' ebs.log)
sent=$(echo "$line" | awk '{print $3}')
# The image's data bytes: allocated 4 KiB blocks (SEEK_DATA) that are not all zeros.
data=$(python3 - system.raw <<'PY'
import os, sys
fd, zero, total = os.open(sys.argv[1], os.O_RDONLY), bytes(4096), 0
size, pos = os.fstat(fd).st_size, 0
while pos < size:
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    end = os.lseek(fd, start, os.SEEK_HOLE)
    start -= start % 4096
    while start < end:
        chunk = os.pread(fd, 4096, start)
        total += len(chunk) if chunk != zero[: len(chunk)] else 0
        start += 4096
    pos = end
print(total)
PY
)
echo "EBS direct:   $line for $data bytes of data (non-zero 4 KiB blocks)"
echo "              bytes sent / data bytes = $(python3 -c "print(f'{$sent / $data:.4f}')"); ${ebs_time} s; peak RSS ${ebs_rss} KiB"

AWS_ENDPOINT_URL="http://127.0.0.1:$PROXY_PORT" /usr/bin/time -o time.txt -f "%e %M" \
    "$UPLOSI" upload system.raw -c s3 2> s3.log >/dev/null || { cat s3.log; exit 1; }
read -r _ s3_rss < time.txt
ours=$(grep -o 'in [0-9.]* s' s3.log | head -1 | awk '{print $2}')
aws --endpoint-url "http://127.0.0.1:$MOTO_PORT" s3 mb s3://bench-peer >/dev/null
start=$(date +%s.%N)
aws --endpoint-url "http://127.0.0.1:$MOTO_PORT" s3 cp --quiet system.raw s3://bench-peer/system.raw
end=$(date +%s.%N)
peer=$(python3 -c "print(f'{$end - $start:.2f}')")
echo "S3 upload:    uplosi ${ours} s (peak RSS ${s3_rss} KiB), aws s3 cp ${peer} s, ratio $(python3 -c "print(f'{$ours / $peer:.2f}')")"
cd "$ROOT"
[ $# -ge 1 ] || rm -rf "$WORK"
