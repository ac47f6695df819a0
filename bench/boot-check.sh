#!/usr/bin/env bash
# Seconds from `uplosi boot-check` starting to its verdict, under KVM and under TCG, for the bench image: a 2 GiB
# GPT image whose ESP holds a UKI on the newest systemd-stub the tests fetch (Debian sid), Debian bookworm's kernel
# and a busybox initrd that prints a marker (and the PCRs) and powers off. Three runs each; the verdict includes the
# comparison of every PCR 4/9/11/12/13 event. Where KVM does not work (nested hosts), the KVM row says why.
#
# Usage: bench/boot-check.sh [WORKDIR]   (default: a temporary directory, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="$PWD/bench"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/uplosi-target}"
export PATH="$PATH:/usr/sbin:/sbin"
for tool in objcopy objdump sfdisk mkfs.vfat mcopy /usr/bin/time qemu-system-x86_64 swtpm; do
    command -v "$tool" >/dev/null || [ -e "$tool" ] || { echo "bench needs $tool (apt-get install binutils fdisk dosfstools mtools time qemu-system-x86 ovmf swtpm)" >&2; exit 2; }
done

cargo build --release --quiet
UPLOSI="$CARGO_TARGET_DIR/release/uplosi"
PARTS="$CARGO_TARGET_DIR/tmp/debian-boot-parts-v1"
sh tests/support/debian-boot-parts.sh "$PARTS"
if [ $# -ge 1 ]; then WORK="$1"; mkdir -p "$WORK"; else WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi
cd "$WORK"

stub=$(ls -d "$PARTS"/stubs/* | sort -V | tail -n 1)/linuxx64.efi.stub
rm -rf root && mkdir -p root/bin root/proc root/sys
cp "$PARTS/busybox" root/bin/busybox
cat > root/init <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t sysfs sys /sys
for i in 4 9 11; do echo "PCR $i $(/bin/busybox cat /sys/class/tpm/tpm0/pcr-sha256/$i)"; done
echo "BENCH: up"
/bin/busybox poweroff -f
EOF
chmod +x root/init
(cd root && find . | "$PARTS/busybox" cpio -o -H newc 2>/dev/null) > initrd
printf 'console=ttyS0 panic=-1' > cmdline
printf 'ID=debian\nVERSION_ID=12\n' > osrel
# Each section after the stub's last one, at 4 KiB boundaries, as ukify lays them out.
end=$(objdump -h "$stub" | python3 -c 'import sys; print(max(int(f[3], 16) + int(f[2], 16) for f in (l.split() for l in sys.stdin) if len(f) > 3 and f[0].isdigit()))')
args=()
vma=$(( (end + 4095) / 4096 * 4096 ))
for pair in .osrel=osrel .cmdline=cmdline .linux="$PARTS/vmlinuz" .initrd=initrd; do
    args+=(--add-section "$pair" --change-section-vma "${pair%%=*}=$(printf '0x%x' $vma)")
    vma=$(( vma + ($(stat -L -c %s "${pair#*=}") + 4095) / 4096 * 4096 ))
done
objcopy "${args[@]}" "$stub" uki.efi
"$BENCH/uki-disk.sh" uki.efi disk.raw
echo "input: 2 GiB GPT image, UKI $(stat -c %s uki.efi) bytes on systemd-stub $(basename "$(dirname "$stub")"); $(nproc) cores"

for accel in kvm tcg; do
    times=()
    for _ in 1 2 3; do
        start=$(date +%s%N)
        if "$UPLOSI" -q boot-check disk.raw --accel "$accel" --expect 'BENCH: up' --output json > report.json 2> err.txt; then
            end=$(date +%s%N)
            times+=("$(python3 -c "import json; print(f'{($end - $start) / 1e9:.1f} s (VM {json.load(open(\"report.json\"))[\"seconds\"]} s)')")")
        else
            times=("not available: $(tail -n 1 err.txt)")
            break
        fi
    done
    echo "$accel: ${times[*]}"
done
