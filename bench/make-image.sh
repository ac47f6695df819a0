#!/usr/bin/env bash
# Builds the benchmark input: a 2.5 GiB GPT image (64 MiB ESP + ext4 root) holding about 600 MiB of mixed data:
# 150 MiB of random bytes, 150 MiB of text, and about 300 MiB of real binaries and libraries copied from /usr.
# Usage: bench/make-image.sh OUT.raw
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
IMG="$1"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
for tool in mkfs.ext4 mkfs.vfat sfdisk mcopy mmd python3; do
    command -v "$tool" >/dev/null || { echo "make-image needs $tool (apt-get install e2fsprogs dosfstools fdisk mtools)" >&2; exit 2; }
done

tree="$WORK/tree"
mkdir -p "$tree/usr" "$tree/data"
head -c $((150 << 20)) /dev/urandom > "$tree/data/random.bin"
python3 - "$tree/data/text.txt" <<'PY'
import os, random, sys
random.seed(1)
if os.path.exists("/usr/share/dict/words"):
    words = open("/usr/share/dict/words").read().split()
else:
    words = "image kernel initrd systemd confidential attestation measured boot secure enclave policy".split()
with open(sys.argv[1], "w") as f:
    written = 0
    while written < 150 << 20:
        line = " ".join(random.choice(words) for _ in range(12)) + "\n"
        f.write(line)
        written += len(line)
PY
# Real binaries: copy files from /usr until about 300 MiB.
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
