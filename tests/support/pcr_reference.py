#!/usr/bin/env python3
"""An independent reference for PCR 4 and PCR 9 of a UKI, for tests/measurements.rs.

Parses the PE headers with pefile (not with anything uplosi uses) and computes the Authenticode hash by the steps
of the PE/COFF spec as EDK2's Tcg2Dxe does: no padding of the file to 8 bytes. `4_padded` is the go-uefi variant
that pads, for the test showing where the two differ.

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


def section(data: bytes, name: bytes) -> bytes:
    pe = pefile.PE(data=data, fast_load=True)
    for s in pe.sections:
        if s.Name.rstrip(b"\0") == name:
            raw = data[s.PointerToRawData:s.PointerToRawData + min(s.SizeOfRawData, s.Misc_VirtualSize)]
            return raw + b"\0" * (s.Misc_VirtualSize - len(raw))
    raise SystemExit(f"no {name!r} section")


def extend(pcr: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(pcr + digest).digest()


def pcr4(uki: bytes, pad: bool) -> bytes:
    pcr = bytes(32)
    pcr = extend(pcr, hashlib.sha256(b"Calling EFI Application from Boot Option").digest())
    pcr = extend(pcr, hashlib.sha256(b"\0\0\0\0").digest())
    pcr = extend(pcr, authenticode(uki, pad))
    return extend(pcr, authenticode(section(uki, b".linux"), pad))


def pcr9(uki: bytes) -> bytes:
    cmdline = section(uki, b".cmdline")
    if not cmdline.endswith(b"\0"):
        cmdline += b"\0"
    pcr = extend(bytes(32), hashlib.sha256(cmdline.decode("utf-8").encode("utf-16-le")).digest())
    return extend(pcr, hashlib.sha256(section(uki, b".initrd")).digest())


uki = open(sys.argv[1], "rb").read()
print(json.dumps({"4": pcr4(uki, False).hex(), "4_padded": pcr4(uki, True).hex(), "9": pcr9(uki).hex()}))
