#!/usr/bin/env bash
# Compares `uplosi convert` with the tools people use today, on the same input, in one run:
#   VHD     vs qemu-img convert -O vpc -o subformat=fixed,force_size=on
#   qcow2   vs qemu-img convert -O qcow2
#   tar.gz  vs tar -S --format=oldgnu | gzip -6   (and | pigz -6)
# and, from a qcow2 input (qemu-img convert -O qcow2 of the same image):
#   qcow2 -> VHD     vs qemu-img convert -f qcow2 -O vpc -o subformat=fixed,force_size=on
#   qcow2 -> tar.gz  vs qemu-img convert -f qcow2 -O raw, then tar -S --format=oldgnu | gzip -6
# and reports peak RSS of uplosi on an 8 GiB sparse image.
#
# The input is a 2.5 GiB GPT image (ESP + ext4 root) holding about 600 MiB of mixed data: random bytes, text, and
# real binaries and libraries from /usr. Each command runs 3 times on a warm page cache; the best time counts.
#
# Usage: bench/convert.sh [WORKDIR]   (default: a temporary directory, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/uplosi-target}"
export PATH="$PATH:/usr/sbin:/sbin"

for tool in qemu-img pigz /usr/bin/time python3; do
    command -v "$tool" >/dev/null || { echo "bench needs $tool (apt-get install qemu-utils pigz time e2fsprogs dosfstools fdisk mtools)" >&2; exit 2; }
done

cargo build --release --quiet
UPLOSI="$CARGO_TARGET_DIR/release/uplosi"

if [ $# -ge 1 ]; then WORK="$1"; mkdir -p "$WORK"; else WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi
IMG="$WORK/system.raw"

[ -f "$IMG" ] || bench/make-image.sh "$IMG"
cat "$IMG" > /dev/null # warm the page cache
echo "input: $(du -h --apparent-size "$IMG" | cut -f1) apparent, $(du -h "$IMG" | cut -f1) allocated"

# best_time LABEL OUTPUT CMD...: runs CMD 3 times (removing OUTPUT before each), prints and records the best time.
declare -A BEST SIZE RSS
best_time() {
    local label="$1" out="$2"; shift 2
    local best="" rss=""
    for _ in 1 2 3; do
        rm -f "$out"
        local t
        /usr/bin/time -o "$WORK/time.txt" -f "%e %M" bash -c "$*" >/dev/null 2>&1
        t=$(tail -1 "$WORK/time.txt")
        local e="${t% *}" m="${t#* }"
        if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $e < $best else 1)"; then best="$e"; rss="$m"; fi
    done
    BEST[$label]="$best"; SIZE[$label]="$(stat -c %s "$out")"; RSS[$label]="$rss"
    printf '%-14s %8.2f s  %12d bytes  peak RSS %6d KiB\n' "$label" "$best" "${SIZE[$label]}" "$rss"
}

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

cd "$WORK"
ln -sf system.raw disk.raw
best_time "ours vhd"      o.vhd   "$UPLOSI -q convert system.raw --format vhd -o o.vhd"
best_time "qemu-img vhd"  q.vhd   "qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on system.raw q.vhd"
best_time "ours qcow2"    o.qcow2 "$UPLOSI -q convert system.raw --format qcow2 -o o.qcow2"
best_time "qemu-img qcow2" q.qcow2 "qemu-img convert -f raw -O qcow2 system.raw q.qcow2"
best_time "ours tar.gz"   o.tar.gz "$UPLOSI -q convert system.raw --format tar.gz -o o.tar.gz"
best_time "tar|gzip -6"   t.tar.gz "tar -S --format=oldgnu -hcf - disk.raw | gzip -6 > t.tar.gz"
best_time "tar|pigz -6"   p.tar.gz "tar -S --format=oldgnu -hcf - disk.raw | pigz -6 > p.tar.gz"

qemu-img convert -f raw -O qcow2 system.raw in.qcow2
cat in.qcow2 > /dev/null
mkdir -p q2r
best_time "ours q->vhd"     qo.vhd "$UPLOSI -q convert in.qcow2 --format vhd -o qo.vhd"
best_time "qemu-img q->vhd" qq.vhd "qemu-img convert -f qcow2 -O vpc -o subformat=fixed,force_size=on in.qcow2 qq.vhd"
best_time "ours q->tar.gz"  qo.tar.gz "$UPLOSI -q convert in.qcow2 --format tar.gz -o qo.tar.gz"
best_time "qemu-img|tar|gzip" qt.tar.gz "rm -f q2r/disk.raw && qemu-img convert -f qcow2 -O raw in.qcow2 q2r/disk.raw && tar -S --format=oldgnu -C q2r -cf - disk.raw | gzip -6 > qt.tar.gz"

echo
echo "ratios (time, lower is better; size for tar.gz):"
echo "  vhd    ours/qemu-img      = $(ratio "${BEST[ours vhd]}" "${BEST[qemu-img vhd]}")"
echo "  qcow2  ours/qemu-img      = $(ratio "${BEST[ours qcow2]}" "${BEST[qemu-img qcow2]}")"
echo "  tar.gz ours/(tar|gzip -6) = $(ratio "${BEST[ours tar.gz]}" "${BEST[tar|gzip -6]}")   size $(ratio "${SIZE[ours tar.gz]}" "${SIZE[tar|gzip -6]}")"
echo "  tar.gz pigz/(tar|gzip -6) = $(ratio "${BEST[tar|pigz -6]}" "${BEST[tar|gzip -6]}")   size $(ratio "${SIZE[tar|pigz -6]}" "${SIZE[tar|gzip -6]}")"
echo "  tar.gz ours/pigz          = $(ratio "${BEST[ours tar.gz]}" "${BEST[tar|pigz -6]}")"
echo "  qcow2->vhd    ours/qemu-img            = $(ratio "${BEST[ours q->vhd]}" "${BEST[qemu-img q->vhd]}")"
echo "  qcow2->tar.gz ours/(qemu-img|tar|gzip) = $(ratio "${BEST[ours q->tar.gz]}" "${BEST[qemu-img|tar|gzip]}")   size $(ratio "${SIZE[ours q->tar.gz]}" "${SIZE[qemu-img|tar|gzip]}")"

# Peak RSS on an 8 GiB sparse image (the same data, more holes).
cp --sparse=always system.raw big.raw && truncate -s 8G big.raw
echo
echo "peak RSS on an 8 GiB sparse image:"
for fmt in vhd qcow2 tar.gz raw; do
    rm -f "big-out.$fmt"
    /usr/bin/time -o "$WORK/time.txt" -f "%M" "$UPLOSI" -q convert big.raw --format "$fmt" -o "big-out.$fmt" >/dev/null 2>&1
    m=$(tail -1 "$WORK/time.txt")
    printf '  %-7s %6d KiB\n' "$fmt" "$m"
    rm -f "big-out.$fmt"
done
rm -rf big.raw o.* q.* qo.* qq.vhd qt.tar.gz in.qcow2 q2r t.tar.gz p.tar.gz time.txt
