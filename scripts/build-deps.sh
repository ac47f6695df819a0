#!/usr/bin/env bash
# Installs what building uplosi needs beyond Rust on a Debian/Ubuntu machine: pkg-config and libvirt's client
# library headers (libvirt-dev), which the `virt` crate of the libvirt provider links against. Does nothing when
# pkg-config already finds libvirt.
set -euo pipefail
if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libvirt; then
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: pkg-config libvirt-dev" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends pkg-config libvirt-dev >/dev/null
