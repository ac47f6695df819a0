#!/usr/bin/env bash
# libvirt figures against Debian's libvirtd (started here on its own socket, a `dir` pool in the work directory),
# in one run on the same input: uplosi `provider = "libvirt"` (qcow2) against the peer cloud-api-adaptor uses,
# `qemu-img convert -O qcow2` to a file, then `virsh vol-create-as … --format qcow2` and
# `virsh vol-upload --sparse`. Prints wall times, uplosi's peak RSS, the volumes' allocation and the ratio.
#
# Usage: bench/libvirt.sh [WORKDIR]   (default: a temporary directory, removed afterwards; an existing
#                                      WORKDIR/system.raw is reused)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/uplosi-target}"
export PATH="$PATH:/usr/sbin:/sbin"
for tool in libvirtd virsh qemu-img; do
    command -v "$tool" >/dev/null || { echo "needs $tool (scripts/test.sh installs it)" >&2; exit 2; }
done
cargo build --release --quiet
UPLOSI="$CARGO_TARGET_DIR/release/uplosi"

KEEP_WORK=0
if [ $# -ge 1 ]; then WORK="$1"; KEEP_WORK=1; mkdir -p "$WORK"; else WORK="$(mktemp -d)"; fi
IMG="$WORK/system.raw"
[ -f "$IMG" ] || bench/make-image.sh "$IMG"

D="$WORK/libvirt"
rm -rf "$D" && mkdir -p "$D/run" "$D/pool"
printf 'unix_sock_dir = "%s"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\nunix_sock_rw_perms = "0700"\n' "$D/run" \
    > "$D/libvirtd.conf"
libvirtd -f "$D/libvirtd.conf" -p "$D/libvirtd.pid" >/dev/null 2>"$D/libvirtd.log" &
DAEMON=$!
cleanup() {
    kill "$DAEMON" 2>/dev/null || true
    wait "$DAEMON" 2>/dev/null || true
    if [ "$KEEP_WORK" = 1 ]; then rm -rf "$D" "$WORK/peer.qcow2"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
export LIBVIRT_DEFAULT_URI="qemu+unix:///system?socket=$D/run/libvirt-sock"
for _ in $(seq 300); do virsh version >/dev/null 2>&1 && break; sleep 0.1; done
virsh pool-create-as bench dir --target "$D/pool" >/dev/null
echo "input: $(du -h --apparent-size "$IMG" | cut -f1) apparent, $(du -h "$IMG" | cut -f1) allocated; $(nproc) cores"

now() { date +%s.%N; }
mkdir -p "$WORK/uplosi-libvirt"
cat > "$WORK/uplosi-libvirt/uplosi.conf" <<CONF
[base]
name = "bench"
provider = "libvirt"
imageVersion = "1.0.0"
[base.libvirt]
pool = "bench"
volumeName = "ours.qcow2"
CONF
(cd "$WORK/uplosi-libvirt" && /usr/bin/time -o time.txt -f "%e %M" "$UPLOSI" upload "$IMG" > ref.txt 2> log.txt) \
    || { cat "$WORK/uplosi-libvirt/log.txt" >&2; exit 1; }
read -r u_time u_rss < "$WORK/uplosi-libvirt/time.txt"
rm -rf "$WORK/uplosi-libvirt"

start=$(now)
qemu-img convert -f raw -O qcow2 "$IMG" "$WORK/peer.qcow2"
virsh vol-create-as bench peer.qcow2 "$(stat -c %s "$IMG")" --format qcow2 >/dev/null
virsh vol-upload --pool bench peer.qcow2 "$WORK/peer.qcow2" --sparse
end=$(now)
p_time=$(python3 -c "print(f'{$end - $start:.2f}')")

alloc() { virsh vol-info --pool bench --bytes "$1" | awk '/Allocation/ {print $2}'; }
qemu-img compare -f qcow2 -F raw "$D/pool/ours.qcow2" "$IMG" >/dev/null || { echo "ours.qcow2 differs from the image" >&2; exit 1; }
echo "uplosi:                                   ${u_time} s, peak RSS ${u_rss} KiB, volume allocation $(alloc ours.qcow2) bytes"
echo "qemu-img convert + virsh vol-upload --sparse: ${p_time} s, volume allocation $(alloc peer.qcow2) bytes"
echo "time uplosi / peer = $(python3 -c "print(f'{$u_time / $p_time:.2f}')")"
