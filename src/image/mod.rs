//! The source image: opening it, recognising what it is, and mapping where its data lives.
//!
//! A source is a raw disk image or a qcow2 image ([`qcow2`]). Everything downstream sees only guest bytes through
//! [`ReadAt`] and the [`ExtentMap`] of where they are, so every writer and uploader works unchanged on both.

pub mod detect;
pub mod extents;
pub mod qcow2;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use thiserror::Error;

pub use detect::DetectedFormat;
pub use extents::{Extent, ExtentMap};
pub use qcow2::{Qcow2Error, Qcow2Image};

/// Positioned reads of guest bytes, shareable between threads.
pub trait ReadAt: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many, 0 at the end. May return fewer than asked.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for Qcow2Image {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        Qcow2Image::read_at(self, buf, offset)
    }
}

/// The guest bytes of a source image, whatever its format.
#[derive(Debug)]
pub enum ImageData {
    /// A raw image: guest bytes are file bytes.
    Raw(File),
    /// A qcow2 image, read through its cluster mapping.
    Qcow2(Qcow2Image),
}

impl ReadAt for ImageData {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        match self {
            ImageData::Raw(file) => ReadAt::read_at(file, buf, offset),
            ImageData::Qcow2(image) => image.read_at(buf, offset),
        }
    }
}

/// Reads into `buf` at `offset` until it is full or the source ends; returns how many bytes were read.
pub fn read_full_at<R: ReadAt + ?Sized>(file: &R, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Fills `buf` from `offset`; bytes past the end of the file read as zeros, like a hole (the image may be shorter
/// than expected if it shrank while uplosi runs).
pub fn read_zero_padded_at<R: ReadAt + ?Sized>(file: &R, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let filled = read_full_at(file, buf, offset)?;
    buf[filled..].fill(0);
    Ok(())
}

/// Why a source image cannot be used.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The path cannot be opened.
    #[error("image {}: {source}; give the path of the raw disk image, e.g. build/system.raw", path.display())]
    Open {
        /// The image path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path is a directory or a special file.
    #[error("image {} is a {kind}, not a regular file or block device", path.display())]
    NotAFile {
        /// The image path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The file is an image format other than raw or qcow2.
    #[error("image {} is {format}, but uplosi needs a raw or qcow2 disk image; {hint}", path.display())]
    NotRaw {
        /// The image path.
        path: PathBuf,
        /// What it looks like.
        format: DetectedFormat,
        /// What to do.
        hint: String,
    },
    /// The file is a qcow2 image uplosi cannot read.
    #[error("qcow2 image {}: {}", path.display(), source.to_string().replace("IMAGE", &path.display().to_string()))]
    Qcow2 {
        /// The image path.
        path: PathBuf,
        /// What is wrong.
        source: Qcow2Error,
    },
    /// The file is empty.
    #[error("image {} is empty", path.display())]
    Empty {
        /// The image path.
        path: PathBuf,
    },
    /// Reading failed.
    #[error("reading image {} at offset {offset}: {source}", path.display())]
    Read {
        /// The image path.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The user interrupted the scan.
    #[error("interrupted")]
    Interrupted,
}

/// An opened source image. Cloning it is cheap and shares the open file, so parallel variants and threads read
/// the same image.
#[derive(Clone, Debug)]
pub struct SourceImage {
    /// The guest bytes, read with positioned reads so they can be shared between threads.
    pub data: Arc<ImageData>,
    /// The path, for messages.
    pub path: PathBuf,
    /// The guest (virtual) size in bytes: the disk size for every format.
    pub size: u64,
    /// Scans already made, shared by the clones: variants running together read the image for its map once.
    scans: Arc<ScanCache>,
}

/// Extent maps by block size; each slot is locked while its scan runs, so a second variant waits for the first
/// one's scan instead of reading the image again.
type ScanCache = Mutex<BTreeMap<u64, Arc<Mutex<Option<ExtentMap>>>>>;

/// Scans use this block size when the one asked for is a multiple of it (qcow2 clusters and EBS blocks are), and
/// coarsen the result: the map of a coarser block is exactly the finer map widened to its blocks.
const SHARED_SCAN_BLOCK: u64 = 64 * 1024;

impl SourceImage {
    /// Opens `path`, checks that it is a regular file or block device holding a raw or qcow2 image.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let open_err = |source| ImageError::Open { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        let kind = meta.file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            let kind = if kind.is_dir() { "directory" } else { "special file" };
            return Err(ImageError::NotAFile { path: path.to_path_buf(), kind });
        }
        let mut file = File::open(path).map_err(open_err)?;
        // metadata().len() is 0 for block devices; seeking to the end works for both.
        let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        if size == 0 {
            return Err(ImageError::Empty { path: path.to_path_buf() });
        }
        let format = detect::detect(&file, size).map_err(|source| ImageError::Read {
            path: path.to_path_buf(),
            offset: 0,
            source,
        })?;
        match format {
            DetectedFormat::Raw => Ok(Self::new(ImageData::Raw(file), path, size)),
            DetectedFormat::Qcow2 => {
                let image =
                    Qcow2Image::open(file).map_err(|source| ImageError::Qcow2 { path: path.to_path_buf(), source })?;
                let size = image.virtual_size();
                if size == 0 {
                    return Err(ImageError::Empty { path: path.to_path_buf() });
                }
                Ok(Self::new(ImageData::Qcow2(image), path, size))
            }
            other => Err(ImageError::NotRaw { path: path.to_path_buf(), hint: other.hint(), format: other }),
        }
    }

    fn new(data: ImageData, path: &Path, size: u64) -> Self {
        Self { data: Arc::new(data), path: path.to_path_buf(), size, scans: Arc::default() }
    }

    /// The image's format: `raw` or `qcow2`.
    pub fn format_name(&self) -> &'static str {
        match *self.data {
            ImageData::Raw(_) => "raw",
            ImageData::Qcow2(_) => "qcow2",
        }
    }

    /// Maps where the image's non-zero data is at `block` granularity, reading on `threads` threads (see
    /// [`ExtentMap::scan`]).
    pub fn extents(
        &self,
        block: u64,
        threads: usize,
        cancel: &(dyn Fn() -> bool + Sync),
    ) -> Result<ExtentMap, ImageError> {
        let base = if block.is_multiple_of(SHARED_SCAN_BLOCK) { SHARED_SCAN_BLOCK } else { block };
        let slot = Arc::clone(self.scans.lock().unwrap_or_else(|p| p.into_inner()).entry(base).or_default());
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        let map = match &*slot {
            Some(map) => map.clone(),
            None => {
                crate::timeline::note(format_args!("image scan at {base} B blocks started"));
                let map = self.scan(base, threads, cancel)?;
                crate::timeline::note(format_args!("image scan done: {} B of data", map.data_bytes()));
                *slot = Some(map.clone());
                map
            }
        };
        Ok(if base == block { map } else { map.coarsen(block) })
    }

    fn scan(&self, block: u64, threads: usize, cancel: &(dyn Fn() -> bool + Sync)) -> Result<ExtentMap, ImageError> {
        let result = match &*self.data {
            ImageData::Raw(file) => ExtentMap::scan(file, self.size, block, threads, cancel),
            // The clusters the L2 tables map are the allocated ranges; zero blocks inside them are found by reading
            // through the mapping, so unallocated and zero clusters are never read.
            ImageData::Qcow2(image) => ExtentMap::scan_ranges(image, &image.allocated(), block, threads, cancel),
        };
        result.map_err(|e| self.scan_error(e))
    }

    /// Maps the allocated ranges only, reading nothing (see [`ExtentMap::allocated`]); for qcow2, the clusters
    /// its L2 tables map.
    pub fn allocated(&self) -> Result<ExtentMap, ImageError> {
        match &*self.data {
            ImageData::Raw(file) => ExtentMap::allocated(file, self.size).map_err(|e| self.scan_error(e)),
            ImageData::Qcow2(image) => Ok(image.allocated()),
        }
    }

    fn scan_error(&self, e: extents::ScanError) -> ImageError {
        match e {
            extents::ScanError::Interrupted => ImageError::Interrupted,
            extents::ScanError::Io { offset, source } => ImageError::Read { path: self.path.clone(), offset, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn shared_scans_give_the_same_maps_as_direct_scans_of_every_block_size() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let size = (5 << 20) + 12_345;
        file.as_file().set_len(size).expect("size");
        for (offset, len) in [(0u64, 10usize), (70_000, 1), (600_000, 200_000), (3 << 20, 65_536), (size - 5, 5)] {
            file.as_file().write_all_at(&vec![0xa5; len], offset).expect("write");
        }
        let image = SourceImage::open(file.path()).expect("open");
        let never = || false;
        for block in [512 * 1024, 64 * 1024, 4096, 512 * 1024, 64 * 1024] {
            let direct = ExtentMap::scan(file.as_file(), size, block, 2, &never).expect("scan");
            assert_eq!(image.extents(block, 2, &never).expect("shared"), direct, "block {block}");
        }
        let cached = image.scans.lock().expect("lock").keys().copied().collect::<Vec<_>>();
        assert_eq!(cached, vec![4096, 64 * 1024], "512 KiB maps come from the 64 KiB scan");
    }
}
