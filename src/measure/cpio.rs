//! The cpio archives systemd-stub generates for the initrd, byte for byte as its `cpio.c` writes them (the same in
//! every release from 252 to 262): "newc" headers with inodes counted from 1, mode, nlink 1, every other field
//! zero (no mtime, so measurements are stable), names and contents padded to 4 bytes relative to the archive's
//! start, the leading directories first (0555, the last one with the target's mode), and the trailer.

/// Where the stub puts a kind of file, with the modes it gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The directory inside the initrd, without a leading slash (`.extra/credentials`).
    pub directory: &'static str,
    /// Mode of that directory.
    pub dir_mode: u32,
    /// Mode of the files.
    pub file_mode: u32,
}

/// `/.extra/credentials` (`*.cred` next to the UKI).
pub const CREDENTIALS: Target = Target { directory: ".extra/credentials", dir_mode: 0o500, file_mode: 0o400 };
/// `/.extra/global_credentials` (`/loader/credentials/*.cred`).
pub const GLOBAL_CREDENTIALS: Target =
    Target { directory: ".extra/global_credentials", dir_mode: 0o500, file_mode: 0o400 };
/// `/.extra/sysext`.
pub const SYSEXT: Target = Target { directory: ".extra/sysext", dir_mode: 0o555, file_mode: 0o444 };
/// `/.extra/global_sysext`.
pub const GLOBAL_SYSEXT: Target = Target { directory: ".extra/global_sysext", dir_mode: 0o555, file_mode: 0o444 };
/// `/.extra/confext`.
pub const CONFEXT: Target = Target { directory: ".extra/confext", dir_mode: 0o555, file_mode: 0o444 };
/// `/.extra/global_confext`.
pub const GLOBAL_CONFEXT: Target = Target { directory: ".extra/global_confext", dir_mode: 0o555, file_mode: 0o444 };
/// `/.extra` itself, for the UKI's own sections passed on (`os-release`, `tpm2-pcr-public-key.pem`, …).
pub const META: Target = Target { directory: ".extra", dir_mode: 0o555, file_mode: 0o444 };

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// An archive being written, as `pack_cpio()` builds it.
struct Archive {
    bytes: Vec<u8>,
    inode: u32,
}

impl Archive {
    fn new() -> Self {
        Self { bytes: Vec::new(), inode: 1 }
    }

    fn pad4(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn header(&mut self, mode: u32, size: usize, name_size: usize) {
        self.bytes.extend_from_slice(b"070701");
        let fields = [self.inode, mode, 0, 0, 1, 0, size as u32, 0, 0, 0, 0, name_size as u32, 0];
        for field in fields {
            self.bytes.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.inode += 1;
    }

    fn directory(&mut self, path: &str, mode: u32) {
        self.header(mode | S_IFDIR, 0, path.len() + 1);
        self.bytes.extend_from_slice(path.as_bytes());
        self.bytes.push(0);
        self.pad4();
    }

    /// The target directory and each of its parents (`mkdir -p` order), parents with 0555.
    fn prefix(&mut self, target: &Target) {
        let dir = target.directory;
        for (at, _) in dir.match_indices('/').filter(|(at, _)| *at > 0) {
            self.directory(&dir[..at], 0o555);
        }
        self.directory(dir, target.dir_mode);
    }

    fn file(&mut self, target: &Target, name: &str, contents: &[u8]) {
        let path = format!("{}/{name}", target.directory);
        self.header(target.file_mode | S_IFREG, contents.len(), path.len() + 1);
        self.bytes.extend_from_slice(path.as_bytes());
        self.bytes.push(0);
        self.pad4();
        self.bytes.extend_from_slice(contents);
        self.pad4();
    }

    fn finish(mut self) -> Vec<u8> {
        // The trailer as a C string literal of 124 characters and its NUL: a multiple of 4 already.
        self.bytes.extend_from_slice(b"070701");
        for field in [0u32, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x0b, 0] {
            // The stub spells the name size "0000000B"; every other field is a digit.
            self.bytes.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(b"TRAILER!!!\0\0\0\0");
        self.bytes
    }
}

/// `pack_cpio_literal()`: one file `name` with `contents` in `target`.
pub fn literal(target: &Target, name: &str, contents: &[u8]) -> Vec<u8> {
    let mut archive = Archive::new();
    archive.prefix(target);
    archive.file(target, name, contents);
    archive.finish()
}

/// `pack_cpio()`: the files of a drop-in directory, already filtered, in the stub's order (sorted by UTF-16 code
/// units, which for the ASCII names it accepts is byte order). `None` when there are none: the stub then adds no
/// archive and measures nothing.
pub fn directory(target: &Target, files: &[(String, Vec<u8>)]) -> Option<Vec<u8>> {
    if files.is_empty() {
        return None;
    }
    let mut sorted: Vec<&(String, Vec<u8>)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut archive = Archive::new();
    archive.prefix(target);
    for (name, contents) in sorted {
        archive.file(target, name, contents);
    }
    Some(archive.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_archive_has_the_stubs_exact_bytes() {
        let archive = literal(&META, "os-release", b"ID=test\n");
        // .extra (inode 1, dir 0555), .extra/os-release (inode 2, file 0444, 8 bytes), trailer; as the stub of
        // 257 and 262 produced it in a boot (its digest gave the PCR 9 the guest read).
        let expected: &[u8] = b"070701000000010000416d0000000000000000000000010000000000000000000000000000000000000000000000000000000700000000\
            .extra\0\0\0\0\
            07070100000002000081240000000000000000000000010000000000000008000000000000000000000000000000000000001200000000\
            .extra/os-release\0ID=test\n\
            07070100000000000000000000000000000000000000010000000000000000000000000000000000000000000000000000000B00000000\
            TRAILER!!!\0\0\0\0";
        assert_eq!(String::from_utf8_lossy(&archive), String::from_utf8_lossy(expected));
        assert_eq!(archive.len() % 4, 0);
    }

    #[test]
    fn nested_targets_create_each_parent_and_sort_files() {
        let files = vec![("b.cred".to_string(), vec![1, 2, 3]), ("a.cred".to_string(), vec![4])];
        let archive = directory(&CREDENTIALS, &files).unwrap_or_default();
        let text = String::from_utf8_lossy(&archive);
        let at = |s: &str| text.find(s).unwrap_or(usize::MAX);
        assert!(at(".extra\0") < at(".extra/credentials\0"));
        assert!(at(".extra/credentials/a.cred") < at(".extra/credentials/b.cred"));
        // .extra/credentials is 0500 (0x4140), the files 0400 (0x8100).
        assert!(text.contains("00000002000041400000"), "{text}");
        assert!(text.contains("00000003000081000000"), "{text}");
        assert_eq!(directory(&CREDENTIALS, &[]), None);
    }
}
