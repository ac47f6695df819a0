#!/usr/bin/env bash
# Compares `uplosi convert` with the tools people use today, on the same input, in one run:
#   VHD     vs qemu-img convert -O vpc -o subformat=fixed,force_size=on
#   qcow2   vs qemu-img convert -O qcow2
#   tar.gz  vs tar -S --format=oldgnu | gzip -6   (and | pigz -6)
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

for tool in qemu-img pigz /usr/bin/time mkfs.ext4 mkfs.vfat sfdisk mcopy python3; do
    command -v "$tool" >/dev/null || { echo "bench needs $tool (apt-get install qemu-utils pigz time e2fsprogs dosfstools fdisk mtools)" >&2; exit 2; }
done

cargo build --release --quiet
UPLOSI="$CARGO_TARGET_DIR/release/uplosi"

if [ $# -ge 1 ]; then WORK="$1"; mkdir -p "$WORK"; else WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi
IMG="$WORK/system.raw"

build_image() {
    local tree="$WORK/tree"
    rm -rf "$tree" && mkdir -p "$tree/usr" "$tree/data"
    head -c $((150 << 20)) /dev/urandom > "$tree/data/random.bin"
    python3 - "$tree/data/text.txt" <<'PY'
import random, sys
random.seed(1)
words = open("/usr/share/dict/words").read().split() if __import__("os").path.exists("/usr/share/dict/words") else \
    "image kernel initrd systemd confidential attestation measured boot secure enclave policy".split()
with open(sys.argv[1], "w") as f:
    written = 0
    while written < 150 << 20:
        line = " ".join(random.choice(words) for _ in range(12)) + "\n"
        f.write(line); written += len(line)
PY
    # Real binaries: copy /usr/lib and /usr/bin until about 300 MiB.
    python3 - "$tree/usr" <<'PY'
import os, shutil, sys
budget, dest = 300 << 20, sys.argv[1]
for root in ("/usr/lib", "/usr/bin", "/usr/libexec", "/usr/share"):
    for dirpath, _, files in os.walk(root):
        for name in files:
            src = os.path.join(dirpath, name)
            if os.path.islink(src) or not os.path.isfile(src):
                continue
            size = os.path.getsize(src)
            if size > budget:
                continue
            dst = os.path.join(dest, os.path.relpath(src, "/usr"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            try:
                shutil.copyfile(src, dst)
            except OSError:
                continue
            budget -= size
            if budget <= 0:
                sys.exit(0)
PY
    truncate -s 2560M "$IMG"
    printf 'label: gpt\n,64MiB,U\n,,L\n' | sfdisk --quiet "$IMG"
    local esp_start esp_size root_start root_size
    read -r esp_start esp_size root_start root_size < <(sfdisk --json "$IMG" | python3 -c '
import json, sys
p = json.load(sys.stdin)["partitiontable"]["partitions"]
print(p[0]["start"], p[0]["size"], p[1]["start"], p[1]["size"])')
    mkfs.vfat -C "$WORK/esp.img" $((esp_size / 2)) >/dev/null
    head -c $((20 << 20)) /dev/urandom > "$WORK/BOOTX64.EFI"
    mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT && mcopy -i "$WORK/esp.img" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/
    truncate -s $((root_size * 512)) "$WORK/root.img"
    mkfs.ext4 -q -F -E root_owner=0:0 -d "$tree" "$WORK/root.img"
    dd if="$WORK/esp.img" of="$IMG" bs=512 seek="$esp_start" conv=notrunc,sparse status=none
    dd if="$WORK/root.img" of="$IMG" bs=1M seek=$((root_start * 512)) oflag=seek_bytes conv=notrunc,sparse status=none
    rm -rf "$tree" "$WORK/esp.img" "$WORK/root.img" "$WORK/BOOTX64.EFI"
}

[ -f "$IMG" ] || build_image
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

echo
echo "ratios (time, lower is better; size for tar.gz):"
echo "  vhd    ours/qemu-img      = $(ratio "${BEST[ours vhd]}" "${BEST[qemu-img vhd]}")"
echo "  qcow2  ours/qemu-img      = $(ratio "${BEST[ours qcow2]}" "${BEST[qemu-img qcow2]}")"
echo "  tar.gz ours/(tar|gzip -6) = $(ratio "${BEST[ours tar.gz]}" "${BEST[tar|gzip -6]}")   size $(ratio "${SIZE[ours tar.gz]}" "${SIZE[tar|gzip -6]}")"
echo "  tar.gz pigz/(tar|gzip -6) = $(ratio "${BEST[tar|pigz -6]}" "${BEST[tar|gzip -6]}")   size $(ratio "${SIZE[tar|pigz -6]}" "${SIZE[tar|gzip -6]}")"
echo "  tar.gz ours/pigz          = $(ratio "${BEST[ours tar.gz]}" "${BEST[tar|pigz -6]}")"

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
rm -f big.raw o.* q.* t.tar.gz p.tar.gz time.txt
