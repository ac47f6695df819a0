#!/usr/bin/env bash
# Writes a 2 GiB GPT image at OUT whose first partition, a 256 MiB FAT32 ESP, holds UKI at EFI/BOOT/BOOTX64.EFI
# (what firmware boots with no boot entries), followed by an empty Linux partition. Shared by the benches that
# measure or boot a UKI.
# Usage: bench/uki-disk.sh UKI OUT
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
uki="$1"
out="$2"
esp="$out.esp"
rm -f "$esp" "$out"
mkfs.vfat -F 32 -C "$esp" $((256 * 1024)) >/dev/null
mmd -i "$esp" ::/EFI ::/EFI/BOOT
mcopy -i "$esp" "$uki" ::/EFI/BOOT/BOOTX64.EFI
truncate -s 2G "$out"
printf 'label: gpt\n,256MiB,U\n,,L\n' | sfdisk -q "$out"
dd if="$esp" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$esp"
