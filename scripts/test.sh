#!/usr/bin/env bash
# Runs the whole uplosi test suite on a fresh Debian/Ubuntu machine.
#
# It installs the tools the tests drive (qemu-img checks every image we write and qemu-io makes qcow2 zero
# clusters; sfdisk, mkfs.ext4, mkfs.vfat and mtools build the GPT fixture image; pigz is a benchmark peer; moto is
# the AWS emulator the tests start on 127.0.0.1), then runs `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/uplosi-target}"

missing=()
for pair in qemu-img:qemu-utils qemu-io:qemu-utils sfdisk:fdisk mkfs.ext4:e2fsprogs mkfs.vfat:dosfstools mcopy:mtools pigz:pigz; do
    tool="${pair%%:*}" package="${pair##*:}"
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || [ -x "/sbin/$tool" ] || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"

if ! python3 -c "import moto.server, boto3" >/dev/null 2>&1; then
    echo "installing: moto[server] (PyPI)" >&2
    python3 -m pip install --quiet "moto[server]>=5"
fi

cargo test --no-fail-fast "$@"
