//! `uplosi convert`: the image → extent map → format layout → output file pipeline, written under a temporary
//! name and renamed into place only when complete.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::cancel::Cancel;
use crate::format::{self, FormatError, TargetFormat};
use crate::image::extents::ZERO_BLOCK;
use crate::image::{ImageError, SourceImage};
use crate::progress::Progress;

/// What to write.
#[derive(Clone, Copy, Debug)]
pub struct ConvertOptions {
    /// The output format.
    pub format: TargetFormat,
    /// gzip level for tar.gz.
    pub level: u32,
    /// Replace an existing output.
    pub force: bool,
    /// Compression threads for tar.gz.
    pub threads: usize,
    /// Copy threads for the other formats.
    pub io_threads: usize,
    /// Permission bits of the finished file.
    pub mode: u32,
}

/// What a conversion did.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// Size of the source image.
    pub image_size: u64,
    /// Non-zero data in the source image.
    pub data_bytes: u64,
    /// Size of the output file.
    pub output_size: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a conversion failed.
#[derive(Debug, Error)]
pub enum ConvertError {
    /// The source image is unusable.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The output exists and `--force` was not given.
    #[error("{} already exists; pass --force to replace it", path.display())]
    Exists {
        /// The output path.
        path: PathBuf,
    },
    /// The output is a directory.
    #[error("{} is a directory; give a file name for -o", path.display())]
    OutputIsDirectory {
        /// The output path.
        path: PathBuf,
    },
    /// The output is the input.
    #[error("-o {} is the input image itself; choose another output", path.display())]
    SameFile {
        /// The output path.
        path: PathBuf,
    },
    /// The temporary output could not be created.
    #[error("cannot create a temporary file in {}: {source}", dir.display())]
    CreateTemp {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing or reading failed while converting.
    #[error("converting {} to {}: {source}", input.display(), output.display())]
    Format {
        /// The input.
        input: PathBuf,
        /// The output.
        output: PathBuf,
        /// The cause.
        source: FormatError,
    },
    /// The finished file could not be moved into place.
    #[error("cannot move the finished file to {}: {source}", path.display())]
    Persist {
        /// The output path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ConvertError {
    /// Whether the error is the user's input (exit code 2) rather than a failure during the work.
    pub fn is_usage(&self) -> bool {
        match self {
            ConvertError::Image(e) => !matches!(e, ImageError::Read { .. } | ImageError::Interrupted),
            ConvertError::Exists { .. } | ConvertError::OutputIsDirectory { .. } | ConvertError::SameFile { .. } => {
                true
            }
            _ => false,
        }
    }

    /// Whether the run was interrupted by a signal.
    pub fn is_interrupted(&self) -> bool {
        matches!(
            self,
            ConvertError::Image(ImageError::Interrupted)
                | ConvertError::Format { source: FormatError::Interrupted, .. }
        )
    }
}

/// Checks that `output` can be written for `input`: not a directory, not the input itself, and only replaced with
/// `force`.
fn check_output(input: &Path, output: &Path, force: bool) -> Result<(), ConvertError> {
    match std::fs::metadata(output) {
        Ok(meta) if meta.is_dir() => Err(ConvertError::OutputIsDirectory { path: output.to_path_buf() }),
        Ok(_) => {
            let same = match (std::fs::canonicalize(input), std::fs::canonicalize(output)) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            };
            if same {
                Err(ConvertError::SameFile { path: output.to_path_buf() })
            } else if !force {
                Err(ConvertError::Exists { path: output.to_path_buf() })
            } else {
                Ok(())
            }
        }
        Err(_) => Ok(()),
    }
}

/// Converts `input` to `output`.
pub fn convert(
    input: &Path,
    output: &Path,
    options: &ConvertOptions,
    cancel: &Cancel,
) -> Result<ConvertReport, ConvertError> {
    let started = Instant::now();
    let image = SourceImage::open(input)?;
    convert_image(&image, output, options, cancel, started)
}

/// Converts the open `image` to `output`: the one write path of `uplosi convert` and the `file` provider. The
/// output appears under its name only when complete; on any error or interruption the temporary file is removed.
pub fn convert_image(
    image: &SourceImage,
    output: &Path,
    options: &ConvertOptions,
    cancel: &Cancel,
    started: Instant,
) -> Result<ConvertReport, ConvertError> {
    let input = image.path.as_path();
    check_output(input, output, options.force)?;
    // qcow2 and tar.gz lay out their metadata before the data, so they need the exact map first. Raw and VHD put
    // the data at the same offsets as the source: they copy the allocated ranges and drop zero blocks as they go,
    // reading the data once instead of twice.
    let cancelled = || cancel.is_cancelled();
    let map = match options.format {
        // qcow2 allocates whole clusters; the writer still leaves zero blocks inside them as holes.
        TargetFormat::Qcow2 => image.extents(format::qcow2::CLUSTER, options.io_threads, &cancelled)?,
        TargetFormat::TarGz => image.extents(ZERO_BLOCK, options.io_threads, &cancelled)?,
        TargetFormat::Vhd | TargetFormat::Raw => image.allocated()?,
    };
    tracing::debug!(
        "{} ({}): {} bytes, {} bytes allocated or data in {} extents",
        input.display(),
        image.format_name(),
        image.size,
        map.data_bytes(),
        map.extents.len()
    );
    if options.format == TargetFormat::Vhd && format::vhd::aligned_size(image.size) < format::vhd::MIN_AZURE_SIZE {
        tracing::warn!("the VHD is smaller than 20 MiB; Azure rejects managed disks that small");
    }

    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "output".into());
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".uplosi-tmp")
        .tempfile_in(&dir)
        .map_err(|source| ConvertError::CreateTemp { dir: dir.clone(), source })?;
    let _temporary = crate::cancel::track(format!("temporary file {}", temp.path().display()));
    let format_err = |source| ConvertError::Format { input: input.to_path_buf(), output: output.to_path_buf(), source };

    let write = || -> Result<(), FormatError> {
        let file: &File = temp.as_file();
        match options.format {
            TargetFormat::TarGz => {
                let mtime = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let tar = format::targz::tar_layout(&map, mtime);
                let progress = Progress::bytes(tar.len(), "tar.gz");
                let out = BufWriter::with_capacity(1 << 20, file);
                let stats = format::gzip::compress(
                    tar.reader(&*image.data),
                    out,
                    options.level,
                    options.threads,
                    &|n| progress.inc(n),
                    &|| cancel.is_cancelled(),
                )?;
                progress.finish();
                tracing::debug!("gzip: {} -> {} bytes", stats.input, stats.output);
            }
            other => {
                let layout = match other {
                    TargetFormat::Vhd => format::vhd::layout(&map),
                    TargetFormat::Qcow2 => format::qcow2::layout(&map),
                    _ => format::raw::layout(&map),
                };
                let progress = Progress::bytes(layout.payload_bytes(), other.name());
                format::write::layout_to_file(
                    &layout,
                    &*image.data,
                    file,
                    options.io_threads,
                    &|n| progress.inc(n),
                    &|| cancel.is_cancelled(),
                )?;
                progress.finish();
            }
        }
        Ok(())
    };
    write().map_err(format_err)?;

    use std::os::unix::fs::PermissionsExt;
    let _ = temp.as_file().set_permissions(std::fs::Permissions::from_mode(options.mode));
    let output_size = temp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
    let persisted = if options.force { temp.persist(output) } else { temp.persist_noclobber(output) };
    persisted.map_err(|e| ConvertError::Persist { path: output.to_path_buf(), source: e.error })?;
    Ok(ConvertReport { image_size: image.size, data_bytes: map.data_bytes(), output_size, elapsed: started.elapsed() })
}
