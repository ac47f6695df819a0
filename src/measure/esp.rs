//! Finding the EFI system partition through the GPT and reading files and directory listings out of its FAT file
//! system, straight from the image: no loop device, no mount, no root, no temporary file.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use crate::image::{ImageData, ReadAt, read_full_at};

/// The ESP's partition type GUID, C12A7328-F81F-11D2-BA4B-00A0C93EC93B, as GPT stores it (the first three
/// fields little-endian).
const ESP_TYPE: [u8; 16] =
    [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b];

/// Where the ESP is in the image, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    /// First byte.
    pub start: u64,
    /// Length.
    pub len: u64,
}

/// Why the ESP could not be found.
#[derive(Debug, PartialEq, Eq)]
pub enum EspLookup {
    /// No GPT header at LBA 1 for 512- or 4096-byte sectors.
    NoGpt,
    /// A GPT without an ESP entry; the partition type GUIDs found, for the message.
    NoEsp(Vec<String>),
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// Formats a GUID as stored by UEFI (mixed-endian: the first three fields little-endian) as upper-case text.
pub fn guid_text(g: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(g, 0),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10..16].iter().map(|b| format!("{b:02X}")).collect::<String>()
    )
}

/// Finds the ESP in the GPT of `disk` (`size` bytes). Tries 512-byte sectors, then 4096-byte ones.
pub fn find_esp<R: ReadAt + ?Sized>(disk: &R, size: u64) -> std::io::Result<Result<Partition, EspLookup>> {
    for sector in [512u64, 4096] {
        let mut header = [0u8; 92];
        if read_full_at(disk, &mut header, sector)? < header.len() || &header[..8] != b"EFI PART" {
            continue;
        }
        let entries_lba = le64(&header, 72);
        let count = u64::from(le32(&header, 80)).min(1024);
        let entry_size = u64::from(le32(&header, 84));
        if !(128..=4096).contains(&entry_size) {
            continue;
        }
        let mut table = vec![0u8; (count * entry_size) as usize];
        let got = read_full_at(disk, &mut table, entries_lba.saturating_mul(sector))?;
        let mut types = Vec::new();
        for entry in table[..got].chunks_exact(entry_size as usize) {
            let (kind, first, last) = (&entry[..16], le64(entry, 32), le64(entry, 40));
            if kind == [0u8; 16] {
                continue;
            }
            if kind == ESP_TYPE && last >= first {
                let start = first * sector;
                let len = ((last - first + 1) * sector).min(size.saturating_sub(start));
                return Ok(Ok(Partition { start, len }));
            }
            types.push(guid_text(kind));
        }
        return Ok(Err(EspLookup::NoEsp(types)));
    }
    Ok(Err(EspLookup::NoGpt))
}

/// A read-only window onto one partition of the image, as the FAT library wants a seekable device.
pub struct PartitionReader {
    data: Arc<ImageData>,
    part: Partition,
    pos: u64,
}

impl PartitionReader {
    /// A reader of `part` within `data`.
    pub fn new(data: Arc<ImageData>, part: Partition) -> Self {
        Self { data, part, pos: 0 }
    }
}

impl Read for PartitionReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.part.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = read_full_at(&*self.data, &mut buf[..n], self.part.start + self.pos)?;
        buf[got..n].fill(0);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PartitionReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.part.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.pos)
    }
}

impl Write for PartitionReader {
    /// The image is never written: the FAT library only writes when something changed, which reading does not.
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "the image is opened read-only"))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One file in an ESP directory, as the firmware's file protocol shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EspFile {
    /// Its name: the long name, or the short name with FAT's lower-case flags applied.
    pub name: String,
    /// The FAT read-only attribute.
    pub read_only: bool,
    /// Its size in bytes.
    pub size: u64,
}

/// The ESP's FAT file system, opened once, read-only.
pub struct Esp {
    fs: fatfs::FileSystem<PartitionReader>,
}

fn missing(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput)
}

impl Esp {
    /// Opens the FAT12/16/32 file system in `esp`.
    pub fn open(esp: PartitionReader) -> std::io::Result<Self> {
        Ok(Self { fs: fatfs::FileSystem::new(esp, fatfs::FsOptions::new())? })
    }

    /// The bytes of the file at `path` (relative to the ESP root, `/`-separated, case-insensitive as FAT is), or
    /// `None` when there is no such file.
    pub fn read(&self, path: &str) -> std::io::Result<Option<Vec<u8>>> {
        match self.fs.root_dir().open_file(path) {
            Ok(mut file) => {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                Ok(Some(bytes))
            }
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The regular files directly in directory `dir` (`""` is the root), in directory order; `None` when there
    /// is no such directory.
    pub fn files(&self, dir: &str) -> std::io::Result<Option<Vec<EspFile>>> {
        let root = self.fs.root_dir();
        let dir = match dir {
            "" => root,
            path => match root.open_dir(path) {
                Ok(dir) => dir,
                Err(e) if missing(&e) => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        let mut files = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            if entry.is_file() {
                let read_only = entry.attributes().contains(fatfs::FileAttributes::READ_ONLY);
                files.push(EspFile { name: entry.file_name(), read_only, size: entry.len() });
            }
        }
        Ok(Some(files))
    }

    /// The file at `path` (`dir/name`), if there is one.
    pub fn file(&self, path: &str) -> std::io::Result<Option<EspFile>> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        Ok(self.files(dir)?.unwrap_or_default().into_iter().find(|f| f.name.eq_ignore_ascii_case(name)))
    }

    /// What `EFI/BOOT` holds, for the message when the UKI is not found.
    pub fn efi_boot_listing(&self) -> Vec<String> {
        match self.fs.root_dir().open_dir("EFI/BOOT") {
            Ok(dir) => dir
                .iter()
                .filter_map(Result::ok)
                .map(|entry| entry.file_name())
                .filter(|name| name != "." && name != "..")
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;

    use super::*;
    use std::os::unix::fs::FileExt;

    fn gpt(sector: u64, entries: &[([u8; 16], u64, u64)]) -> Result<std::fs::File, std::io::Error> {
        let f = tempfile::tempfile()?;
        f.set_len(64 * sector)?;
        let mut header = [0u8; 92];
        header[..8].copy_from_slice(b"EFI PART");
        header[72..80].copy_from_slice(&2u64.to_le_bytes());
        header[80..84].copy_from_slice(&128u32.to_le_bytes());
        header[84..88].copy_from_slice(&128u32.to_le_bytes());
        f.write_all_at(&header, sector)?;
        for (i, (kind, first, last)) in entries.iter().enumerate() {
            let mut entry = [0u8; 128];
            entry[..16].copy_from_slice(kind);
            entry[32..40].copy_from_slice(&first.to_le_bytes());
            entry[40..48].copy_from_slice(&last.to_le_bytes());
            f.write_all_at(&entry, 2 * sector + i as u64 * 128)?;
        }
        Ok(f)
    }

    #[test]
    fn finds_the_esp_by_type_on_512_and_4096_byte_sectors() -> TestResult {
        let linux = [0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4];
        for sector in [512, 4096] {
            let f = gpt(sector, &[(linux, 40, 50), (ESP_TYPE, 34, 39)])?;
            let found = find_esp(&f, 64 * sector)?;
            assert_eq!(found, Ok(Partition { start: 34 * sector, len: 6 * sector }));
        }
        let f = gpt(512, &[(linux, 40, 50)])?;
        match find_esp(&f, 64 * 512)? {
            Err(EspLookup::NoEsp(types)) => assert_eq!(types, vec!["0FC63DAF-8483-4772-8E79-3D69D8477DE4"]),
            other => panic!("{other:?}"),
        }
        let f = tempfile::tempfile()?;
        f.set_len(1 << 20)?;
        assert_eq!(find_esp(&f, 1 << 20)?, Err(EspLookup::NoGpt));
        Ok(())
    }
}
