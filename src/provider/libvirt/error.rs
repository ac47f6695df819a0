//! libvirt errors: each names the connection, pool and volume, and quotes libvirt's own message.

use thiserror::Error;

/// Why a libvirt upload, list or delete failed.
#[derive(Debug, Error)]
pub enum LibvirtError {
    /// The connection cannot be opened.
    #[error(
        "cannot connect to libvirt at {uri}: {message}; check the URI (`uri`, LIBVIRT_DEFAULT_URI) and that the \
         daemon runs and lets this user in"
    )]
    Connect {
        /// The URI.
        uri: String,
        /// libvirt's message.
        message: String,
    },
    /// The pool is not there or not running.
    #[error("{uri}: storage pool \"{pool}\" {problem}")]
    Pool {
        /// The URI.
        uri: String,
        /// The pool.
        pool: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The volume exists and `replace = false`.
    #[error(
        "{uri}: volume \"{volume}\" exists in pool \"{pool}\" ({path}) and replace = false; set replace = true, bump \
         the version with -i, or delete it with `uplosi delete`"
    )]
    Exists {
        /// The URI.
        uri: String,
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
        /// Its path.
        path: String,
    },
    /// `capacity` is smaller than the image.
    #[error("capacity {capacity} bytes is smaller than the image ({image} bytes); raise `capacity` or leave it unset")]
    Capacity {
        /// Asked for.
        capacity: u64,
        /// The image's virtual size.
        image: u64,
    },
    /// A libvirt call failed.
    #[error("{uri}: {what} failed: {message}")]
    Call {
        /// The URI.
        uri: String,
        /// What was being done.
        what: String,
        /// libvirt's message.
        message: String,
    },
    /// The volume read back is not what was asked for.
    #[error("{uri}: volume \"{volume}\" in pool \"{pool}\" reads back wrong after the upload: {problem}")]
    Mismatch {
        /// The URI.
        uri: String,
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
        /// What differs.
        problem: String,
    },
    /// Reading or converting the image failed.
    #[error("converting the image: {0}")]
    Format(#[from] crate::format::FormatError),
    /// The image cannot be read.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// A worker failed unexpectedly.
    #[error("{what}: {message}")]
    Unexpected {
        /// What was running.
        what: String,
        /// What happened.
        message: String,
    },
    /// The configuration cannot name the variant's volumes at any version.
    #[error("{0}")]
    Lifecycle(String),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

impl LibvirtError {
    /// Whether the problem is the user's to fix and was found before any work (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            LibvirtError::Connect { .. }
                | LibvirtError::Pool { .. }
                | LibvirtError::Exists { .. }
                | LibvirtError::Capacity { .. }
                | LibvirtError::Lifecycle(_)
        )
    }
}
