#!/usr/bin/env bash
# GCP upload figures against fake-gcs-server and the GCE fake of the tests, in one run on the same input:
#   - uplosi: conversion (sparse tar, parallel gzip) streamed into a resumable upload, from start until the object
#     is written and verified (read from uplosi's own log timestamps, so the images.insert that follows is
#     not counted), peak RSS of the whole run, bytes of the object, and whether any file appeared in TMPDIR or the
#     working directory;
#   - the Go tool's method: `tar -S | gzip -6` into a temporary file, then that file uploaded to the same
#     fake-gcs-server (one media upload with curl);
#   - two GCP variants (two buckets) in one uplosi run: each compresses its own stream; the wall time against one
#     variant is what sharing one compressed stream could save at most.
#
# Usage: bench/gcp.sh [WORKDIR]   (default: a temporary directory, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/uplosi-target}"
cargo build --release --quiet
UPLOSI="$CARGO_TARGET_DIR/release/uplosi"

if [ $# -ge 1 ]; then WORK="$1"; mkdir -p "$WORK"; KEEP=1; else WORK="$(mktemp -d)"; KEEP=0; fi
IMG="$WORK/system.raw"
[ -f "$IMG" ] || bench/make-image.sh "$IMG"

. bench/gcp-fakes.sh
start_gcp "$WORK/gcp"
stop() { kill $GCP_PIDS 2>/dev/null || true; wait 2>/dev/null || true; [ "$KEEP" = 1 ] || rm -rf "$WORK"; }
trap stop EXIT

cd "$WORK"
echo "input: $(du -h --apparent-size system.raw | cut -f1) apparent, $(du -h system.raw | cut -f1) allocated"
rm -rf run tmp && mkdir -p run tmp
cat > run/uplosi.conf <<CONF
[base]
name = "bench"
imageVersion = "1.0.0"
provider = "gcp"
[base.gcp]
project = "$GCP_PROJECT"
location = "europe-west3"
bucket = "bench-bucket"
computeEndpoint = "$GCP_COMPUTE_URL"
CONF

start=$(date +%s.%N)
(cd run && TMPDIR="$WORK/tmp" /usr/bin/time -o ../time.txt -f "%e %M" "$UPLOSI" upload ../system.raw -v \
    > ../uplosi.out 2> ../uplosi.log) || { cat uplosi.log >&2; exit 1; }
read -r u_total u_rss < time.txt
written=$(grep -m1 'written:' uplosi.log | cut -d' ' -f1)
u_time=$(python3 -c "
import datetime
t = datetime.datetime.fromisoformat('$written'.replace('Z', '+00:00')).timestamp()
print(f'{t - $start:.2f}')")
u_bytes=$(grep -m1 'written:' uplosi.log | sed -E 's/.* written: ([0-9]+) bytes.*/\1/')
leftovers=$(find tmp run -type f ! -name uplosi.conf | wc -l)

# The Go tool's method: a temporary tar.gz (GNU tar's sparse old format, gzip -6), then its upload.
ln -sf system.raw disk.raw
start=$(date +%s.%N)
tar -S -h --format=oldgnu -cf - disk.raw | gzip -6 > go.tar.gz
curl -fs -o /dev/null -X POST --data-binary @go.tar.gz -H 'Content-Type: application/gzip' \
    "$GCP_GCS_URL/upload/storage/v1/b/bench-bucket/o?uploadType=media&name=go.tar.gz"
end=$(date +%s.%N)
g_time=$(python3 -c "print(f'{$end - $start:.2f}')")
g_bytes=$(stat -c %s go.tar.gz)
rm -f go.tar.gz disk.raw

# Two variants in one run: the same image to two buckets.
mkdir -p two
sed -e 's/^bucket = .*/bucket = "bench-one"/' run/uplosi.conf > two/uplosi.conf
printf '[variant.one]\n[variant.two]\n[variant.two.gcp]\nbucket = "bench-two"\nimageName = "bench-two"\n' >> two/uplosi.conf
(cd two && /usr/bin/time -o ../time.txt -f "%e %M" "$UPLOSI" upload ../system.raw > ../two.out 2> ../two.log) \
    || { cat two.log >&2; exit 1; }
read -r two_total two_rss < time.txt

echo "uplosi: $u_bytes bytes in the object, ${u_time} s until it was written and verified (whole run with images.insert: ${u_total} s), peak RSS ${u_rss} KiB ($(python3 -c "print(f'{$u_rss / 1024:.0f}')") MiB), files written to TMPDIR or the working directory: $leftovers"
echo "tar -S | gzip -6 > tmp; upload tmp: $g_bytes bytes, ${g_time} s (temporary file of $g_bytes bytes)"
echo "time uplosi / Go method = $(python3 -c "print(f'{$u_time / $g_time:.3f}')")"
echo "two GCP variants in one run: ${two_total} s against ${u_total} s for one ($(python3 -c "print(f'{$two_total / $u_total:.2f}')")×), peak RSS ${two_rss} KiB"
