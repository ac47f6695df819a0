#!/usr/bin/env bash
# The whole release run against local emulators (moto for AWS, Azurite and the ARM fake of the tests for Azure,
# fake-gcs-server and the GCE fake of the tests for GCP, Debian's glance-api for OpenStack) plus a file export, on
# the bench/make-image.sh image, in one run: each provider alone, then all variants in one `uplosi upload`. Prints
# the wall times, the ratio all-in-one / slowest alone, and peak RSS.
#
# With --bandwidth MIB_PER_S each provider's data plane (EBS blocks, Put Page, GCS chunks, the Glance upload) goes
# through tests/support/fault_proxy.py, which reads its request bodies at that rate, one rate per provider: the
# shape of a release step on a CI runner uploading to five clouds across the internet. With -v the runs log uplosi's
# timeline (timeline.*.log): when each variant checked, scanned, sent its first and last byte and waited for what.
#
# Usage: bench/release.sh [--bandwidth MIB_PER_S] [-v] [WORKDIR]   (default: a temporary directory, removed after)
set -euo pipefail
BANDWIDTH="" VERBOSE=()
while [ $# -ge 1 ]; do
    case "$1" in
        --bandwidth) BANDWIDTH="$2"; shift 2 ;;
        -v) VERBOSE=(-v); shift ;;
        *) break ;;
    esac
done
export BANDWIDTH
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/uplosi-target}"
python3 -c "import moto.server" 2>/dev/null || python3 -m pip install --quiet "moto[server]>=5"
command -v glance-api >/dev/null || { echo "needs glance-api (apt-get install glance-api)" >&2; exit 2; }
cargo build --release --quiet
UPLOSI="$CARGO_TARGET_DIR/release/uplosi"

if [ $# -ge 1 ]; then WORK="$1"; mkdir -p "$WORK"; KEEP=1; else WORK="$(mktemp -d)"; KEEP=0; fi
IMG="$WORK/system.raw"
[ -f "$IMG" ] || bench/make-image.sh "$IMG"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 600); do curl -s -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

. bench/glance.sh
start_glance "$WORK/glance"
. bench/azure-fakes.sh
start_azure "$WORK/azure"
AZURE_CA="$SSL_CERT_FILE"
. bench/gcp-fakes.sh
start_gcp "$WORK/gcp"
# One CA bundle for both HTTPS fakes.
cat "$AZURE_CA" "$SSL_CERT_FILE" > "$WORK/ca-bundle.pem"
export SSL_CERT_FILE="$WORK/ca-bundle.pem"
MPORT=$(free_port)
# EBS direct answering BlockSize 524288 as real EBS does (stock moto says 512).
python3 tests/support/moto_ebs.py -H 127.0.0.1 -p "$MPORT" >/dev/null 2>&1 &
MOTO=$!
PROXIES=""
AWS_URL="http://127.0.0.1:$MPORT"
if [ -n "$BANDWIDTH" ]; then
    for pair in "aws:$AWS_URL:^PUT /snapshots/" "glance:$GLANCE_URL:^PUT /v2/images/[^/]+/file"; do
        name=${pair%%:*}; rest=${pair#*:}; upstream=${rest%:*}; match=${rest##*:}
        port=$(free_port)
        python3 tests/support/fault_proxy.py --port "$port" --upstream "$upstream" --stats "$WORK/$name-proxy.json" \
            --match "$match" --rate 0 --bandwidth "$BANDWIDTH" &
        PROXIES="$PROXIES $!"
        eval "${name}_front=http://127.0.0.1:$port"
    done
    AWS_URL="$aws_front" GLANCE_URL="$glance_front"
fi
stop() { kill "$GLANCE" "$MOTO" $AZURE_PIDS $GCP_PIDS $PROXIES 2>/dev/null || true; wait 2>/dev/null || true; [ "$KEEP" = 1 ] || rm -rf "$WORK"; }
trap stop EXIT
wait_http "http://127.0.0.1:$MPORT/"

cd "$WORK"
cat > clouds.yaml <<YAML
clouds:
  bench:
    auth_type: none
    image_endpoint_override: $GLANCE_URL
YAML
export OS_CLIENT_CONFIG_FILE="$WORK/clouds.yaml"
export AWS_ENDPOINT_URL="$AWS_URL" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_EC2_METADATA_DISABLED=true
echo "input: $(du -h --apparent-size system.raw | cut -f1) apparent, $(du -h system.raw | cut -f1) allocated${BANDWIDTH:+; data planes capped at $BANDWIDTH MiB/s each}"

mkdir -p run
cat > run/uplosi.conf <<CONF
[base]
name = "bench"
imageVersion = "1.0.0"
[base.aws]
region = "us-east-1"
[base.openstack]
cloud = "bench"
[base.azure]
subscriptionID = "$AZURE_SUBSCRIPTION"
location = "eastus"
resourceGroup = "bench"
sharedImageGallery = "bench_gallery"
resourceManagerEndpoint = "$AZURE_ARM_URL"
[base.gcp]
project = "$GCP_PROJECT"
location = "europe-west3"
bucket = "bench-bucket"
computeEndpoint = "$GCP_COMPUTE_URL"
[base.file]
path = "$WORK/run/export-{{.Version}}.qcow2"
replace = true
[variant.aws]
provider = "aws"
[variant.openstack]
provider = "openstack"
[variant.azure]
provider = "azure"
[variant.gcp]
provider = "gcp"
[variant.file]
provider = "file"
CONF

timed() { # LABEL ARGS...: prints "seconds rss_kib"
    local label="$1"; shift
    (cd run && /usr/bin/time -o ../time.txt -f "%e %M" "$UPLOSI" "${VERBOSE[@]}" upload ../system.raw "$@" > "../$label.out" 2> "../$label.log") \
        || { cat "$label.log" >&2; exit 1; }
    grep "timeline" "$label.log" > "timeline.$label.log" || true
    cat time.txt
}

read -r aws_t aws_m < <(timed aws --enable-variant-glob aws)
read -r os_t os_m < <(timed openstack --enable-variant-glob openstack)
read -r az_t az_m < <(timed azure --enable-variant-glob azure)
read -r gcp_t gcp_m < <(timed gcp --enable-variant-glob gcp)
read -r file_t file_m < <(timed file --enable-variant-glob file)
read -r all_t all_m < <(timed all)
slowest=$(python3 -c "print(max($aws_t, $os_t, $az_t, $gcp_t, $file_t))")
echo "alone: aws ${aws_t} s (${aws_m} KiB), openstack ${os_t} s (${os_m} KiB), azure ${az_t} s (${az_m} KiB), gcp ${gcp_t} s (${gcp_m} KiB), file ${file_t} s (${file_m} KiB)"
echo "all five in one run: ${all_t} s, peak RSS ${all_m} KiB ($(python3 -c "print(f'{$all_m / 1024:.0f}')") MiB)"
echo "all-in-one / slowest alone = $(python3 -c "print(f'{$all_t / $slowest:.2f}')")"
