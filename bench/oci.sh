#!/usr/bin/env bash
# OCI registry figures against Debian's docker-registry (distribution 2.8) on 127.0.0.1, in one run on the same
# input:
#   - uplosi `format = "qcow2"` against the peer `qemu-img convert -O qcow2` to a file, then that file pushed as
#     `oras push` pushes it: sha256sum for the digest, a monolithic blob upload (POST, then PUT with the body) and
#     the manifest PUT, done with curl;
#   - uplosi `format = "qcow2.tar.xz"` against `qemu-img convert` + `tar cJf` (xz -6) + the same push; the archive
#     sizes are compared too.
# Prints wall times, uplosi's peak RSS and the ratios.
#
# Usage: bench/oci.sh [WORKDIR]   (default: a temporary directory, removed afterwards; an existing
#                                   WORKDIR/system.raw is reused)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/uplosi-target}"
for tool in docker-registry qemu-img curl xz tar sha256sum; do
    command -v "$tool" >/dev/null || { echo "needs $tool (scripts/test.sh installs it)" >&2; exit 2; }
done
cargo build --release --quiet
UPLOSI="$CARGO_TARGET_DIR/release/uplosi"

KEEP_WORK=0
if [ $# -ge 1 ]; then WORK="$1"; KEEP_WORK=1; mkdir -p "$WORK"; else WORK="$(mktemp -d)"; fi
IMG="$WORK/system.raw"
[ -f "$IMG" ] || bench/make-image.sh "$IMG"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rm -rf "$WORK/registry" && mkdir -p "$WORK/registry"
cat > "$WORK/registry/config.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
YAML
docker-registry serve "$WORK/registry/config.yml" >/dev/null 2>&1 &
REGISTRY=$!
cleanup() {
    kill "$REGISTRY" 2>/dev/null || true
    wait "$REGISTRY" 2>/dev/null || true
    if [ "$KEEP_WORK" = 1 ]; then rm -rf "$WORK/registry" "$WORK/peer"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
URL="http://127.0.0.1:$PORT"
echo "input: $(du -h --apparent-size "$IMG" | cut -f1) apparent, $(du -h "$IMG" | cut -f1) allocated; $(nproc) cores"

now() { date +%s.%N; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

# The peer's push of FILE to REPO:TAG as oras pushes one file.
peer_push() { # REPO TAG FILE TITLE
    local digest size empty loc manifest
    digest="sha256:$(sha256sum "$3" | cut -d' ' -f1)"
    size=$(stat -c %s "$3")
    empty='{}'
    loc=$(curl -fsi -X POST "$URL/v2/$1/blobs/uploads/" | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    case "$loc" in http*) ;; *) loc="$URL$loc" ;; esac
    curl -fs -X PUT -H 'Content-Type: application/octet-stream' -T "$3" "$loc&digest=$digest" >/dev/null
    loc=$(curl -fsi -X POST "$URL/v2/$1/blobs/uploads/" | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    case "$loc" in http*) ;; *) loc="$URL$loc" ;; esac
    curl -fs -X PUT -H 'Content-Type: application/octet-stream' --data-binary "$empty" \
        "$loc&digest=sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a" >/dev/null
    manifest=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.unknown.artifact.v1","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"data":"e30="},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.title":"%s"}}]}' "$digest" "$size" "$4")
    curl -fs -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "$manifest" \
        "$URL/v2/$1/manifests/$2" >/dev/null
}

run_uplosi() { # NAME FORMAT FILENAME -> "seconds rss_kib layer_size"
    mkdir -p "$WORK/$1"
    cat > "$WORK/$1/uplosi.conf" <<CONF
[base]
name = "bench"
provider = "oci"
imageVersion = "1.0.0"
[base.oci]
repository = "127.0.0.1:$PORT/bench-$1"
format = "$2"
fileName = "$3"
CONF
    (cd "$WORK/$1" && /usr/bin/time -o time.txt -f "%e %M" "$UPLOSI" upload "$IMG" > ref.txt 2> log.txt) \
        || { cat "$WORK/$1/log.txt" >&2; exit 1; }
    read -r t rss < "$WORK/$1/time.txt"
    size=$(curl -fs -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$URL/v2/bench-$1/manifests/1.0.0" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][0]["size"])')
    echo "$t $rss $size"
}

read -r u_q_time u_q_rss u_q_size < <(run_uplosi qcow2 qcow2 podvm.qcow2)
read -r u_x_time u_x_rss u_x_size < <(run_uplosi xz qcow2.tar.xz podvm.tar.xz)

mkdir -p "$WORK/peer"
start=$(now)
qemu-img convert -f raw -O qcow2 "$IMG" "$WORK/peer/podvm.qcow2"
mid=$(now)
peer_push peer-qcow2 1.0.0 "$WORK/peer/podvm.qcow2" podvm.qcow2
end=$(now)
p_q_time=$(python3 -c "print(f'{$end - $start:.2f}')")
p_q_push=$(python3 -c "print(f'{$end - $mid:.2f}')")
start=$(now)
qemu-img convert -f raw -O qcow2 "$IMG" "$WORK/peer/podvm.qcow2"
(cd "$WORK/peer" && tar cJf podvm.tar.xz podvm.qcow2)
peer_push peer-xz 1.0.0 "$WORK/peer/podvm.tar.xz" podvm.tar.xz
end=$(now)
p_x_time=$(python3 -c "print(f'{$end - $start:.2f}')")
p_x_size=$(stat -c %s "$WORK/peer/podvm.tar.xz")

echo "qcow2:        uplosi ${u_q_time} s (peak RSS ${u_q_rss} KiB, layer $u_q_size bytes); qemu-img convert + push ${p_q_time} s (push ${p_q_push} s)"
echo "              time uplosi / peer = $(ratio "$u_q_time" "$p_q_time")"
echo "qcow2.tar.xz: uplosi ${u_x_time} s (peak RSS ${u_x_rss} KiB, layer $u_x_size bytes); qemu-img convert + tar cJf + push ${p_x_time} s (archive $p_x_size bytes)"
echo "              speed-up peer / uplosi = $(ratio "$p_x_time" "$u_x_time")   size uplosi / xz -6 = $(ratio "$u_x_size" "$p_x_size")"
