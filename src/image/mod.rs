//! The source image: opening it, recognising what it is, and mapping where its data lives.

pub mod detect;
pub mod extents;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use detect::DetectedFormat;
pub use extents::{Extent, ExtentMap};

/// Reads into `buf` at `offset` until it is full or the file ends; returns how many bytes were read.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
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
pub fn read_zero_padded_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
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
    /// The file is an image format other than raw.
    #[error("image {} is {format}, but uplosi needs a raw disk image; {hint}", path.display())]
    NotRaw {
        /// The image path.
        path: PathBuf,
        /// What it looks like.
        format: DetectedFormat,
        /// What to do.
        hint: String,
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

/// An opened raw disk image.
#[derive(Debug)]
pub struct SourceImage {
    /// The open file, read with positioned reads so it can be shared between threads.
    pub file: File,
    /// The path, for messages.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

impl SourceImage {
    /// Opens `path`, checks that it is a regular file or block device holding a raw image.
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
        if format != DetectedFormat::Raw {
            return Err(ImageError::NotRaw { path: path.to_path_buf(), hint: format.hint(), format });
        }
        Ok(Self { file, path: path.to_path_buf(), size })
    }

    /// Maps where the image's non-zero data is at `block` granularity, reading on `threads` threads (see
    /// [`ExtentMap::scan`]).
    pub fn extents(
        &self,
        block: u64,
        threads: usize,
        cancel: &(dyn Fn() -> bool + Sync),
    ) -> Result<ExtentMap, ImageError> {
        ExtentMap::scan(&self.file, self.size, block, threads, cancel).map_err(|e| self.scan_error(e))
    }

    /// Maps the allocated ranges only, reading nothing (see [`ExtentMap::allocated`]).
    pub fn allocated(&self) -> Result<ExtentMap, ImageError> {
        ExtentMap::allocated(&self.file, self.size).map_err(|e| self.scan_error(e))
    }

    fn scan_error(&self, e: extents::ScanError) -> ImageError {
        match e {
            extents::ScanError::Interrupted => ImageError::Interrupted,
            extents::ScanError::Io { offset, source } => ImageError::Read { path: self.path.clone(), offset, source },
        }
    }
}
