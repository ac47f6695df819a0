//! `provider = "file"`: the image exported to a local file (a libvirt directory pool, an artifact directory) as
//! part of the release run, through the same write path as `uplosi convert`: a temporary name next to the target,
//! renamed into place only when complete, so a failure or Ctrl-C leaves no partial file. The reference is the
//! absolute path.

use std::path::{Path, PathBuf};
use std::time::Instant;

use thiserror::Error;

use crate::config::VariantConfig;
use crate::convert::{self, ConvertError, ConvertOptions};
use crate::format::TargetFormat;
use crate::image::SourceImage;
use crate::provider::UploadOptions;

/// Why a file export failed.
#[derive(Debug, Error)]
pub enum FileError {
    /// The target exists and `replace` is false.
    #[error(
        "{} already exists; set `replace = true` in [….file] to overwrite it, or change `path` (e.g. include \
         {{{{.Version}}}})",
        path.display()
    )]
    Exists {
        /// The target.
        path: PathBuf,
    },
    /// The target is a directory.
    #[error("{} is a directory; `path` must name the file to write", path.display())]
    IsDirectory {
        /// The target.
        path: PathBuf,
    },
    /// The target's directory is missing or not writable.
    #[error("cannot write into {}: {source}; create the directory or fix `path`", dir.display())]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration is incomplete (validation normally catches this first).
    #[error("{0}")]
    Config(String),
    /// The conversion failed.
    #[error("writing {}: {source}", path.display())]
    Convert {
        /// The target.
        path: PathBuf,
        /// The cause.
        source: ConvertError,
    },
    /// Listing or deleting exported files failed.
    #[error("{what} {}: {source}", path.display())]
    Lifecycle {
        /// What was being done.
        what: &'static str,
        /// The file or pattern.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The conversion thread died.
    #[error("the conversion of {} stopped unexpectedly: {message}", path.display())]
    Join {
        /// The target.
        path: PathBuf,
        /// What happened.
        message: String,
    },
}

impl FileError {
    /// Whether the run was interrupted by a signal.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, FileError::Convert { source, .. } if source.is_interrupted())
    }

    /// Whether the problem was found before anything was written (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            FileError::Exists { .. }
                | FileError::IsDirectory { .. }
                | FileError::Directory { .. }
                | FileError::Config(_)
        )
    }
}

struct Target<'a> {
    path: &'a Path,
    format: TargetFormat,
    mode: u32,
}

fn target(cfg: &VariantConfig) -> Result<Target<'_>, FileError> {
    let f = &cfg.file;
    let path =
        f.path.as_deref().ok_or_else(|| FileError::Config(format!("{}: `file.path` is not set", cfg.label())))?;
    let format = TargetFormat::parse(&f.format)
        .ok_or_else(|| FileError::Config(format!("{}: unknown file.format \"{}\"", cfg.label(), f.format)))?;
    let mode =
        f.mode_bits().ok_or_else(|| FileError::Config(format!("{}: bad file.mode \"{}\"", cfg.label(), f.mode)))?;
    Ok(Target { path, format, mode })
}

/// Checks before any variant starts that the file can be written: its directory exists and is writable, and an
/// existing file is only there if `replace` allows replacing it.
pub fn preflight(cfg: &VariantConfig) -> Result<(), FileError> {
    let target = target(cfg)?;
    let path = target.path;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(FileError::IsDirectory { path: path.to_path_buf() }),
        Ok(_) if !cfg.file.replace => return Err(FileError::Exists { path: path.to_path_buf() }),
        _ => {}
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    // Creating (and dropping) a temporary file proves the directory exists and is writable, the way the export
    // itself will write.
    tempfile::Builder::new()
        .prefix(".uplosi-preflight.")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|source| FileError::Directory { dir: dir.to_path_buf(), source })
}

/// Writes `image` to the configured path and returns it as the reference.
pub async fn upload(
    cfg: &VariantConfig,
    image: &SourceImage,
    options: &UploadOptions,
) -> Result<Vec<String>, FileError> {
    let target = target(cfg)?;
    let path = target.path.to_path_buf();
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let convert_options = ConvertOptions {
        format: target.format,
        level: 6,
        force: cfg.file.replace,
        threads: cores,
        io_threads: cores.clamp(2, 4),
        mode: target.mode,
    };
    tracing::info!(
        "file: writing {} {} as {} to {}",
        cfg.name,
        cfg.image_version,
        target.format.name(),
        path.display()
    );
    // The conversion is synchronous and multi-threaded; on the blocking pool it runs alongside the cloud variants.
    let (image, cancel, out) = (image.clone(), options.cancel.clone(), path.clone());
    // The variant's span goes along, so the conversion's progress names its variant.
    let span = tracing::Span::current();
    let report = tokio::task::spawn_blocking(move || {
        let _variant = span.enter();
        convert::convert_image(&image, &out, &convert_options, &cancel, Instant::now())
    })
    .await
    .map_err(|e| FileError::Join { path: path.clone(), message: e.to_string() })?
    .map_err(|source| match source {
        ConvertError::Exists { path } => FileError::Exists { path },
        source => FileError::Convert { path: path.clone(), source },
    })?;
    tracing::info!(
        "file: wrote {} ({} bytes from {} bytes of data) in {:.2} s",
        path.display(),
        report.output_size,
        report.data_bytes,
        report.elapsed.as_secs_f64()
    );
    Ok(vec![path.display().to_string()])
}

/// The files `path` gives at any version, with their modification times.
pub fn list_stored(cfg: &VariantConfig) -> Result<Vec<crate::provider::Stored>, FileError> {
    use crate::config::names::NamePattern;
    let template = cfg.templates.get(&(crate::config::schema::Section::File, "path")).cloned().unwrap_or_default();
    // Absolute, as `path` is resolved for the export itself (and as glob returns it).
    let joined = cfg.config_dir.join(&template);
    let absolute = std::path::absolute(&joined).unwrap_or(joined);
    let pattern = NamePattern::new(&absolute.to_string_lossy(), &cfg.name)
        .ok_or_else(|| FileError::Config(format!("`file.path` = {template:?} does not contain the whole version")))?;
    let lifecycle = |path: &Path, source| FileError::Lifecycle { what: "listing", path: path.to_path_buf(), source };
    // The name with `*` for the version, everything else matched literally.
    let glob = glob::glob(&glob::Pattern::escape(pattern.glob()).replace("[*]", "*"))
        .map_err(|e| lifecycle(&absolute, std::io::Error::other(e.to_string())))?;
    let mut found = Vec::new();
    for entry in glob {
        let path = entry.map_err(|e| lifecycle(&absolute, std::io::Error::other(e.to_string())))?;
        let Some(version) = pattern.version_of(&path.to_string_lossy()) else { continue };
        let meta = std::fs::symlink_metadata(&path).map_err(|source| lifecycle(&path, source))?;
        if !meta.is_file() {
            continue;
        }
        let mut item = crate::provider::Stored::new(version, "file", path.display().to_string());
        item.created = meta.modified().ok();
        found.push(item);
    }
    Ok(found)
}

/// Deletes an exported file; one already gone counts as deleted.
pub fn delete_stored(item: &crate::provider::Stored) -> Result<(), FileError> {
    match std::fs::remove_file(&item.id) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(FileError::Lifecycle { what: "deleting", path: PathBuf::from(&item.id), source }),
    }
}
