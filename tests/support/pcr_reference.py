#!/usr/bin/env python3
"""An independent reference for PCR 4 and PCR 9 of a UKI without ESP side files, for tests/measurements.rs.

Parses the PE headers with pefile (not with anything uplosi uses) and computes the Authenticode hash by the steps
of the PE/COFF spec as EDK2's Tcg2Dxe does: no padding of the file to 8 bytes. `4_padded` is the go-uefi variant
that pads, for the test showing where the two differ. PCR 9 follows systemd-stub's C sources (`stub.c`,
`cpio.c`) written out again here: the command line as the stub mangles it, and the initrd with the cpios the stub
generates from `.pcrsig`, `.pcrpkey` and (from 257) `.osrel`, joined as that release joins them. Booting such
UKIs under OVMF and swtpm (tests/boot_check.rs) gave the same values.

Usage: pcr_reference.py UKI  ->  JSON {"4": hex, "4_padded": hex, "9": hex}
"""
import hashlib
import json
import sys

import pefile


def authenticode(data: bytes, pad: bool) -> bytes:
    pe = pefile.PE(data=data, fast_load=True)
    opt = pe.OPTIONAL_HEADER.get_file_offset()
    checksum = opt + 64
    cert_entry = pe.OPTIONAL_HEADER.DATA_DIRECTORY[4]
    cert_dir = cert_entry.get_file_offset()
    headers = pe.OPTIONAL_HEADER.SizeOfHeaders
    h = hashlib.sha256()
    h.update(data[:checksum])
    h.update(data[checksum + 4:cert_dir])
    h.update(data[cert_dir + 8:headers])
    hashed = headers
    for s in sorted(pe.sections, key=lambda s: s.PointerToRawData):
        if s.SizeOfRawData == 0:
            continue
        h.update(data[s.PointerToRawData:s.PointerToRawData + s.SizeOfRawData])
        hashed += s.SizeOfRawData
    extra = len(data) - cert_entry.Size - hashed
    if extra > 0:
        h.update(data[hashed:hashed + extra])
    if pad and len(data) % 8:
        h.update(b"\0" * (8 - len(data) % 8))
    return h.digest()


def section(data: bytes, name: bytes, required: bool = True):
    pe = pefile.PE(data=data, fast_load=True)
    for s in pe.sections:
        if s.Name.rstrip(b"\0") == name:
            raw = data[s.PointerToRawData:s.PointerToRawData + min(s.SizeOfRawData, s.Misc_VirtualSize)]
            return raw + b"\0" * (s.Misc_VirtualSize - len(raw))
    if required:
        raise SystemExit(f"no {name!r} section")
    return None


def stub_release(uki: bytes) -> int:
    magic = section(uki, b".sdmagic", required=False) or b""
    text = magic.decode("ascii", "replace")
    digits = text.split("systemd-stub ", 1)[1] if "systemd-stub " in text else "262"
    return int("".join(c for c in digits[:3] if c.isdigit()) or "262")


def pad4(b: bytes) -> bytes:
    return b + b"\0" * ((-len(b)) % 4)


def cpio_header(ino: int, mode: int, size: int, name: bytes) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
    return b"070701" + b"".join(b"%08x" % f for f in fields) + name + b"\0"


def cpio_literal(name: str, data: bytes) -> bytes:
    """pack_cpio_literal(): the .extra directory (0555) and one file (0444) in it, then the trailer."""
    out = pad4(cpio_header(1, 0o040555, 0, b".extra"))
    out += pad4(pad4(out + cpio_header(2, 0o100444, len(data), b".extra/" + name.encode()))[len(out):] + data)
    trailer = b"070701" + b"00000000" * 4 + b"00000001" + b"00000000" * 6 + b"0000000B" + b"00000000"
    return out + trailer + b"TRAILER!!!\0\0\0\0"


def extend(pcr: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(pcr + digest).digest()


def pcr4(uki: bytes, pad: bool) -> bytes:
    pcr = bytes(32)
    pcr = extend(pcr, hashlib.sha256(b"Calling EFI Application from Boot Option").digest())
    pcr = extend(pcr, hashlib.sha256(b"\0\0\0\0").digest())
    pcr = extend(pcr, authenticode(uki, pad))
    if stub_release(uki) >= 258:
        # From 258 the stub starts the kernel itself, so the firmware does not measure it.
        return pcr
    return extend(pcr, authenticode(section(uki, b".linux"), pad))


def pcr9(uki: bytes) -> bytes:
    release = stub_release(uki)
    cmdline = section(uki, b".cmdline").split(b"\0")[0].decode("utf-8")
    cmdline = "".join(" " if ord(c) <= 0x1F else c for c in cmdline).rstrip(" ") + "\0"
    pcr = extend(bytes(32), hashlib.sha256(cmdline.encode("utf-16-le")).digest())
    initrd = section(uki, b".initrd")
    extras = []
    for name, file in [(b".pcrsig", "tpm2-pcr-signature.json"), (b".pcrpkey", "tpm2-pcr-public-key.pem")] + (
        [(b".osrel", "os-release")] if release >= 257 else []
    ):
        data = section(uki, name, required=False)
        if data:
            extras.append(cpio_literal(file, data))
    if not extras:
        final = initrd
    elif release >= 256:
        final = b"".join(pad4(p) for p in [initrd] + extras)
    else:
        final = pad4(initrd) + b"".join(extras)
    return extend(pcr, hashlib.sha256(final).digest())


uki = open(sys.argv[1], "rb").read()
print(json.dumps({"4": pcr4(uki, False).hex(), "4_padded": pcr4(uki, True).hex(), "9": pcr9(uki).hex()}))
