#!/bin/sh
# Fetches, once, the Debian parts the boot-check tests build their images from, into OUT (the test cache):
# systemd-boot-efi's stub and systemd-boot from bookworm (252), bookworm-backports (254), trixie (257) and sid (the
# newest),
# busybox-static and the kernel of linux-image-amd64 from bookworm.
#
# apt-get download runs through a private apt directory whose sources list names those suites, so the system's
# apt configuration, lists and dpkg status are not touched. OUT appears complete or not at all (built under a
# temporary name, then renamed), so test processes racing here are safe.
#
# Usage: debian-boot-parts.sh OUT
#   OUT/stubs/VERSION/linuxx64.efi.stub   one per suite, VERSION as Debian spells it (252.39-1~deb12u2)
#   OUT/stubs/VERSION/systemd-bootx64.efi systemd-boot of the same release
#   OUT/vmlinuz                           the kernel
#   OUT/busybox                           a static busybox
set -eu
out=$1
[ -d "$out" ] && exit 0
work=$(mktemp -d "$out.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/debs" "$work/x" "$work/out/stubs"
: > "$work/apt/status"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
for suite in bookworm bookworm-backports trixie sid; do
    echo "deb [signed-by=$keyring] http://deb.debian.org/debian $suite main"
done > "$work/apt/sources.list"
apt() {
    "$@" -q -o Dir::Etc::SourceList="$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$work/apt/lists" -o Dir::State::Status="$work/apt/status" \
        -o Dir::Cache="$work/apt/cache" -o APT::Architecture=amd64 -o APT::Default-Release=bookworm \
        -o Debug::NoLocking=1 -o APT::Sandbox::User=root
}
apt apt-get update >/dev/null
kernel=$(apt apt-cache depends linux-image-amd64/bookworm | sed -n 's/^ *Depends: //p' | head -n 1)
[ -n "$kernel" ] || { echo "linux-image-amd64 of bookworm names no kernel package" >&2; exit 1; }
cd "$work/debs"
apt apt-get download systemd-boot-efi/bookworm systemd-boot-efi/bookworm-backports systemd-boot-efi/trixie \
    systemd-boot-efi/sid busybox-static/bookworm "$kernel/bookworm" >/dev/null
for deb in *.deb; do
    dpkg-deb -x "$deb" "$work/x/${deb%.deb}"
done
for dir in "$work"/x/systemd-boot-efi_*; do
    version=${dir##*/systemd-boot-efi_}
    version=${version%_amd64}
    mkdir -p "$work/out/stubs/$version"
    cp "$dir/usr/lib/systemd/boot/efi/linuxx64.efi.stub" "$dir/usr/lib/systemd/boot/efi/systemd-bootx64.efi" \
        "$work/out/stubs/$version/"
done
cp "$work"/x/linux-image-*/boot/vmlinuz-* "$work/out/vmlinuz"
cp "$work"/x/busybox-static_*/bin/busybox "$work/out/busybox"
[ "$(ls "$work/out/stubs" | wc -l)" -eq 4 ] || { echo "expected 4 systemd-boot-efi versions, got: $(ls "$work/out/stubs")" >&2; exit 1; }
mv "$work/out" "$out" 2>/dev/null || [ -d "$out" ]
