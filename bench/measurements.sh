#!/usr/bin/env bash
# Times `uplosi measurements` on a 2 GiB GPT image whose 256 MiB FAT32 ESP holds a real UKI (Debian's kernel and
# systemd stub joined with objcopy), and reports its peak RSS. If systemd-dissect is installed, the Go tool's method
# runs on the same image in the same run: `systemd-dissect --copy-from` of the UKI (root, loop device) followed by
# hashing it, and the ratio is printed.
#
# Usage: bench/measurements.sh [WORKDIR]   (default: a temporary directory, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="$PWD/bench"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/uplosi-target}"
export PATH="$PATH:/usr/sbin:/sbin"
STUB=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
for tool in objcopy sfdisk mkfs.vfat mcopy /usr/bin/time dpkg-deb "$STUB"; do
    command -v "$tool" >/dev/null || [ -e "$tool" ] || { echo "bench needs $tool (apt-get install binutils fdisk dosfstools mtools time systemd-boot-efi)" >&2; exit 2; }
done

cargo build --release --quiet
UPLOSI="$CARGO_TARGET_DIR/release/uplosi"
if [ $# -ge 1 ]; then WORK="$1"; mkdir -p "$WORK"; else WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi
cd "$WORK"

kernel=$(ls "$CARGO_TARGET_DIR"/tmp/debian-kernel/boot/vmlinuz-* 2>/dev/null | head -1 || true)
if [ -z "$kernel" ]; then
    package=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: //p' | head -1)
    apt-get download -q "$package" >/dev/null 2>&1
    dpkg-deb -x ./*.deb kernel && kernel=$(ls kernel/boot/vmlinuz-* | head -1)
fi
printf 'console=ttyS0 quiet' > cmdline
printf 'ID=debian\n' > osrel
head -c $((40 << 20)) /dev/urandom > initrd
objcopy --add-section .osrel=osrel --change-section-vma .osrel=0x20000 \
    --add-section .cmdline=cmdline --change-section-vma .cmdline=0x30000 \
    --add-section .linux="$kernel" --change-section-vma .linux=0x2000000 \
    --add-section .initrd=initrd --change-section-vma .initrd=0x3000000 "$STUB" uki.efi
"$BENCH/uki-disk.sh" uki.efi disk.raw
# Fill the root partition with data so the image is a realistic 2 GiB.
dd if=/dev/urandom of=disk.raw bs=1M seek=300 count=1024 conv=notrunc status=none
cat disk.raw > /dev/null
echo "input: 2 GiB GPT image, UKI $(stat -c %s uki.efi) bytes ($(( $(stat -c %s initrd) >> 20 )) MiB initrd)"

best=""
for _ in 1 2 3; do
    /usr/bin/time -o t.txt -f "%e %M" "$UPLOSI" -q measurements disk.raw -o m.json 2>/dev/null
    read -r e m < t.txt
    if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $e < ${best% *} else 1)"; then best="$e $m"; fi
done
printf 'ours: %s s, peak RSS %s KiB, temporary files: none (reads the ESP in place)\n' "${best% *}" "${best#* }"

# Every document and bank: one replay each, every bank computed in the same pass over the UKI.
for args in "--format uplosi" "--format uplosi --bank sha1" "--format uplosi --bank sha384 --phase enter-initrd:leave-initrd" \
    "--format nitro" "--format aws-kms" "--format rvps --phase enter-initrd:leave-initrd:sysinit:ready"; do
    fbest=""
    for _ in 1 2 3; do
        # shellcheck disable=SC2086
        /usr/bin/time -o t.txt -f "%e %M" "$UPLOSI" -q measurements disk.raw $args >/dev/null
        read -r e m < t.txt
        if [ -z "$fbest" ] || python3 -c "import sys; sys.exit(0 if $e < ${fbest% *} else 1)"; then fbest="$e $m"; fi
    done
    printf '  %-62s %s s, peak RSS %s KiB\n' "$args" "${fbest% *}" "${fbest#* }"
done
if command -v nitro-tpm-pcr-compute >/dev/null; then
    uplosi_nitro=$("$UPLOSI" -q measurements disk.raw --format nitro)
    nitro=$(nitro-tpm-pcr-compute --image uki.efi)
    /usr/bin/time -o t.txt -f "%e %M" nitro-tpm-pcr-compute --image uki.efi >/dev/null
    read -r e m < t.txt
    printf 'nitro-tpm-pcr-compute on the UKI file itself: %s s, peak RSS %s KiB; same document: %s\n' "$e" "$m" \
        "$([ "$uplosi_nitro" = "$nitro" ] && echo yes || echo NO)"
fi

if command -v systemd-dissect >/dev/null && [ "$(id -u)" -eq 0 ] \
    && ! systemd-dissect --copy-from disk.raw /boot/EFI/BOOT/BOOTX64.EFI uki-copy.efi >dissect.log 2>&1; then
    echo "systemd-dissect cannot dissect the image here ($(head -1 dissect.log)): ours alone"
elif command -v systemd-dissect >/dev/null && [ "$(id -u)" -eq 0 ]; then
    peer=""
    for _ in 1 2 3; do
        rm -f uki-copy.efi
        /usr/bin/time -o t.txt -f "%e %M" bash -c \
            'systemd-dissect --copy-from disk.raw /boot/EFI/BOOT/BOOTX64.EFI uki-copy.efi && sha256sum uki-copy.efi' >/dev/null 2>&1 || true
        read -r e m < t.txt
        if [ -z "$peer" ] || python3 -c "import sys; sys.exit(0 if $e < ${peer% *} else 1)"; then peer="$e $m"; fi
    done
    printf 'systemd-dissect --copy-from + sha256sum: %s s (writes a %s-byte temporary copy)\n' "${peer% *}" "$(stat -c %s uki-copy.efi)"
    python3 -c "print(f'ratio ours/systemd-dissect = {${best% *} / ${peer% *}:.2f}')"
else
    echo "systemd-dissect is not installed (or not root): ours alone"
fi
