#!/usr/bin/env bash
# OpenStack upload figures against a real glance-api (Debian's package, configured like the tests:
# tests/support/glance/), in one run on the same input:
#   - uplosi with diskFormat qcow2 (the default): bytes sent to Glance against the raw disk, wall time, peak RSS;
#   - the Go tool's method: `curl -T` of the whole raw file into an image record (what gophercloud's
#     imagedata.Upload sends), wall time;
#   - uplosi with diskFormat raw, for the same bytes as curl.
#
# Usage: bench/openstack.sh [WORKDIR]   (default: a temporary directory, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/uplosi-target}"
command -v glance-api >/dev/null || { echo "needs glance-api (apt-get install glance-api)" >&2; exit 2; }
cargo build --release --quiet
UPLOSI="$CARGO_TARGET_DIR/release/uplosi"

if [ $# -ge 1 ]; then WORK="$1"; mkdir -p "$WORK"; else WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi
IMG="$WORK/system.raw"
[ -f "$IMG" ] || bench/make-image.sh "$IMG"

. bench/glance.sh
start_glance "$WORK/glance"
stop() { kill "$GLANCE" 2>/dev/null || true; wait "$GLANCE" 2>/dev/null || true; }
trap 'stop; [ $# -ge 1 ] || rm -rf "$WORK"' EXIT
URL="$GLANCE_URL"

cd "$WORK"
cat > clouds.yaml <<YAML
clouds:
  bench:
    auth_type: none
    image_endpoint_override: $URL
YAML
export OS_CLIENT_CONFIG_FILE="$WORK/clouds.yaml"
raw_size=$(stat -c %s system.raw)
echo "input: $(du -h --apparent-size system.raw | cut -f1) apparent, $(du -h system.raw | cut -f1) allocated"

run_uplosi() { # NAME DISKFORMAT
    mkdir -p "$1"
    cat > "$1/uplosi.conf" <<CONF
[base]
name = "bench-$1"
provider = "openstack"
imageVersion = "1.0.0"
[base.openstack]
cloud = "bench"
diskFormat = "$2"
CONF
    (cd "$1" && /usr/bin/time -o ../time.txt -f "%e %M" "$UPLOSI" upload ../system.raw > id.txt 2> log.txt) \
        || { cat "$1/log.txt"; exit 1; }
    read -r t rss < time.txt
    id=$(cat "$1/id.txt")
    size=$(curl -fs "$URL/v2/images/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["size"])')
    echo "$t $rss $size"
}

read -r q_time q_rss q_sent < <(run_uplosi qcow2 qcow2)
read -r r_time r_rss r_sent < <(run_uplosi raw raw)

# The Go tool's upload: an image record, then the whole raw file (zeros included) in one PUT.
id=$(curl -fs -X POST "$URL/v2/images" -H 'Content-Type: application/json' \
    -d '{"name": "bench-curl", "disk_format": "raw", "container_format": "bare"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
start=$(date +%s.%N)
curl -fs -T system.raw -H 'Content-Type: application/octet-stream' "$URL/v2/images/$id/file"
end=$(date +%s.%N)
c_time=$(python3 -c "print(f'{$end - $start:.2f}')")

ratio() { python3 -c "print(f'{$1 / $2:.3f}')"; }
echo "uplosi qcow2: $q_sent bytes sent ($(ratio "$q_sent" "$raw_size") of the raw disk), ${q_time} s, peak RSS ${q_rss} KiB"
echo "uplosi raw:   $r_sent bytes sent, ${r_time} s, peak RSS ${r_rss} KiB"
echo "curl -T raw:  $raw_size bytes sent, ${c_time} s"
echo "time uplosi qcow2 / curl -T = $(ratio "$q_time" "$c_time")   time uplosi raw / curl -T = $(ratio "$r_time" "$c_time")"
