//! OCI registry errors: each names the repository (and tag or digest) and quotes the registry's own error code and
//! message from the distribution spec's `{"errors": [{"code", "message"}]}` body.

use std::path::PathBuf;

use thiserror::Error;

use crate::transfer::Verdict;

/// Why an OCI push, list or delete failed.
#[derive(Debug, Error)]
pub enum OciError {
    /// A credentials file cannot be read or parsed.
    #[error("{}: {message}", path.display())]
    CredentialsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A credential helper failed.
    #[error("the credential helper docker-credential-{helper} (named in {}) failed for {registry}: {message}", path.display())]
    CredentialHelper {
        /// The helper's suffix.
        helper: String,
        /// The config naming it.
        path: PathBuf,
        /// The registry.
        registry: String,
        /// What went wrong.
        message: String,
    },
    /// The registry refused the credentials, or wants some and none were found.
    #[error("{registry}: {message}")]
    Auth {
        /// The registry.
        registry: String,
        /// What happened and what to do.
        message: String,
    },
    /// The HTTPS client could not be set up.
    #[error("{registry}: {source}")]
    Tls {
        /// The registry.
        registry: String,
        /// The cause.
        source: crate::transfer::http::HttpError,
    },
    /// A tag exists and `replace = false`.
    #[error(
        "{repository}:{tag} already exists ({digest}) and replace = false; set replace = true, bump the version \
         with -i, or delete it with `uplosi delete`"
    )]
    Exists {
        /// The repository.
        repository: String,
        /// The tag.
        tag: String,
        /// What it points to.
        digest: String,
    },
    /// The registry answered with an error.
    #[error("{repository}: {what} failed: HTTP {status}{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Registry {
        /// The repository.
        repository: String,
        /// What was being done.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The distribution spec error code (`BLOB_UPLOAD_INVALID`, `UNSUPPORTED`, …).
        code: Option<String>,
        /// The registry's message.
        message: String,
        /// Whether a retry may help (5xx, 429).
        retry: bool,
    },
    /// The registry could not be reached or the connection broke.
    #[error("{repository}: {what}: {message}")]
    Transport {
        /// The repository.
        repository: String,
        /// What was being done.
        what: String,
        /// The transport error.
        message: String,
    },
    /// The registry does not delete (`UNSUPPORTED`, 405): deleting is off in its configuration.
    #[error(
        "{repository}: the registry refuses to delete {what} (HTTP {status}{}); deletion is off in its \
         configuration (distribution: storage.delete.enabled)",
        code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
    )]
    DeleteUnsupported {
        /// The repository.
        repository: String,
        /// What was to be deleted.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The error code, if any.
        code: Option<String>,
    },
    /// The registry stored other bytes than were sent.
    #[error("{repository}: the registry stored {got} for the blob uplosi sent as {expected}")]
    Digest {
        /// The repository.
        repository: String,
        /// The digest of the bytes sent.
        expected: String,
        /// The digest the registry reports.
        got: String,
    },
    /// An upload session cannot go on (the registry lost bytes it had acknowledged).
    #[error("{repository}: the blob upload cannot resume: {message}")]
    Resume {
        /// The repository.
        repository: String,
        /// What the registry said.
        message: String,
    },
    /// Reading or converting the image failed.
    #[error("converting the image: {0}")]
    Format(#[from] crate::format::FormatError),
    /// The image cannot be read.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// A worker task failed unexpectedly.
    #[error("{what}: {message}")]
    Unexpected {
        /// What was running.
        what: String,
        /// What happened.
        message: String,
    },
    /// The configuration cannot name the variant's artifacts at any version.
    #[error("{0}")]
    Lifecycle(String),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

impl OciError {
    /// Whether another attempt may help.
    pub fn verdict(&self) -> Verdict {
        match self {
            OciError::Registry { retry: true, .. } | OciError::Transport { .. } => Verdict::Retry,
            _ => Verdict::Fail,
        }
    }

    /// Whether the problem is the user's to fix and was found before any work (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            OciError::CredentialsFile { .. } | OciError::Auth { .. } | OciError::Exists { .. } | OciError::Lifecycle(_)
        )
    }
}
