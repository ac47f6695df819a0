//! Recognising disk image and archive formats by their magic bytes, so a qcow2 or a compressed image given where a
//! raw one is expected fails with a clear message instead of being uploaded as garbage.

use std::fmt;
use std::fs::File;

/// What a file looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectedFormat {
    /// No known signature: a raw disk image.
    Raw,
    /// qcow2 (`QFI\xfb`).
    Qcow2,
    /// Dynamic or differencing VHD (footer copy at offset 0).
    VhdDynamic,
    /// Fixed VHD (raw data followed by a `conectix` footer).
    VhdFixed,
    /// VHDX.
    Vhdx,
    /// VMDK (sparse extent or descriptor).
    Vmdk,
    /// gzip-compressed.
    Gzip,
    /// xz-compressed.
    Xz,
    /// zstd-compressed.
    Zstd,
    /// bzip2-compressed.
    Bzip2,
    /// A tar archive.
    Tar,
}

impl fmt::Display for DetectedFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DetectedFormat::Raw => "a raw image",
            DetectedFormat::Qcow2 => "a qcow2 image",
            DetectedFormat::VhdDynamic => "a dynamic VHD image",
            DetectedFormat::VhdFixed => "a fixed VHD image",
            DetectedFormat::Vhdx => "a VHDX image",
            DetectedFormat::Vmdk => "a VMDK image",
            DetectedFormat::Gzip => "gzip-compressed",
            DetectedFormat::Xz => "xz-compressed",
            DetectedFormat::Zstd => "zstd-compressed",
            DetectedFormat::Bzip2 => "bzip2-compressed",
            DetectedFormat::Tar => "a tar archive",
        })
    }
}

impl DetectedFormat {
    /// What the user can do about it.
    pub fn hint(self) -> String {
        match self {
            DetectedFormat::Raw => String::new(),
            DetectedFormat::VhdFixed => {
                "a fixed VHD is the raw image plus a footer: pass the raw image it was made from".into()
            }
            DetectedFormat::Qcow2 | DetectedFormat::VhdDynamic | DetectedFormat::Vhdx | DetectedFormat::Vmdk => {
                "convert it first, e.g. `qemu-img convert -O raw IN system.raw`".into()
            }
            DetectedFormat::Gzip => "decompress it first, e.g. `gunzip -k IMAGE`".into(),
            DetectedFormat::Xz => "decompress it first, e.g. `xz -dk IMAGE`".into(),
            DetectedFormat::Zstd => "decompress it first, e.g. `zstd -d IMAGE`".into(),
            DetectedFormat::Bzip2 => "decompress it first, e.g. `bunzip2 -k IMAGE`".into(),
            DetectedFormat::Tar => "extract the disk image from it first".into(),
        }
    }
}

/// Looks at the first bytes (and the VHD footer position) of a `size`-byte file.
pub fn detect(file: &File, size: u64) -> std::io::Result<DetectedFormat> {
    let mut head = [0u8; 512];
    let n = super::read_full_at(file, &mut head, 0)?;
    let head = &head[..n];
    let starts = |magic: &[u8]| head.starts_with(magic);
    let format = if starts(b"QFI\xfb") {
        DetectedFormat::Qcow2
    } else if starts(b"conectix") {
        DetectedFormat::VhdDynamic
    } else if starts(b"vhdxfile") {
        DetectedFormat::Vhdx
    } else if starts(b"KDMV") || starts(b"# Disk DescriptorFile") {
        DetectedFormat::Vmdk
    } else if starts(&[0x1f, 0x8b]) {
        DetectedFormat::Gzip
    } else if starts(b"\xfd7zXZ\x00") {
        DetectedFormat::Xz
    } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        DetectedFormat::Zstd
    } else if starts(b"BZh") && head.get(3).is_some_and(|c| (b'1'..=b'9').contains(c)) {
        DetectedFormat::Bzip2
    } else if head.len() >= 263 && &head[257..262] == b"ustar" {
        DetectedFormat::Tar
    } else if size >= 1024 && size.is_multiple_of(512) && {
        let mut footer = [0u8; 8];
        super::read_full_at(file, &mut footer, size - 512)? == 8 && &footer == b"conectix"
    } {
        DetectedFormat::VhdFixed
    } else {
        DetectedFormat::Raw
    };
    Ok(format)
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;

    use super::*;
    use std::io::Write;

    fn detect_bytes(bytes: &[u8]) -> DetectedFormat {
        let mut f = tempfile::tempfile().expect("temp file");
        f.write_all(bytes).expect("write");
        detect(&f, bytes.len() as u64).expect("detect")
    }

    #[test]
    fn recognises_magic_bytes() -> TestResult {
        assert_eq!(detect_bytes(b"QFI\xfb\0\0\0\x03"), DetectedFormat::Qcow2);
        assert_eq!(detect_bytes(b"conectix...."), DetectedFormat::VhdDynamic);
        assert_eq!(detect_bytes(b"vhdxfile"), DetectedFormat::Vhdx);
        assert_eq!(detect_bytes(b"KDMV"), DetectedFormat::Vmdk);
        assert_eq!(detect_bytes(&[0x1f, 0x8b, 8, 0]), DetectedFormat::Gzip);
        assert_eq!(detect_bytes(b"\xfd7zXZ\x00"), DetectedFormat::Xz);
        assert_eq!(detect_bytes(&[0x28, 0xb5, 0x2f, 0xfd]), DetectedFormat::Zstd);
        assert_eq!(detect_bytes(b"BZh9"), DetectedFormat::Bzip2);
        let mut tar = vec![0u8; 1024];
        tar[257..263].copy_from_slice(b"ustar\0");
        assert_eq!(detect_bytes(&tar), DetectedFormat::Tar);
        let mut fixed = vec![0u8; 4096];
        fixed[4096 - 512..4096 - 504].copy_from_slice(b"conectix");
        assert_eq!(detect_bytes(&fixed), DetectedFormat::VhdFixed);
        Ok(())
    }

    #[test]
    fn anything_else_is_raw() -> TestResult {
        assert_eq!(detect_bytes(&[0u8; 4096]), DetectedFormat::Raw);
        let mut mbr = vec![0u8; 4096];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(detect_bytes(&mbr), DetectedFormat::Raw);
        assert_eq!(detect_bytes(b"x"), DetectedFormat::Raw);
        Ok(())
    }
}
