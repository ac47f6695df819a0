//! GCP errors: each names the project, bucket, object or image and says what to do; Google's own status and
//! message are quoted.

use std::time::Duration;

use thiserror::Error;

use crate::format::FormatError;
use crate::image::ImageError;
use crate::transfer::Verdict;
use crate::transfer::http::is_transient_status;

/// Why a GCP upload failed.
#[derive(Debug, Error)]
pub enum GcpError {
    /// Application Default Credentials could not be loaded or gave no token.
    #[error(
        "no usable Google Cloud credentials: {message}. Set GOOGLE_APPLICATION_CREDENTIALS to a service-account or \
         authorized-user JSON file, or run `gcloud auth application-default login`"
    )]
    Credentials {
        /// Why.
        message: String,
    },
    /// The project cannot be read with these credentials.
    #[error(
        "project {project} is not reachable with these credentials ({message}); check `project` and that the \
         identity has roles/compute.storageAdmin on it"
    )]
    Project {
        /// The project ID.
        project: String,
        /// Google's message.
        message: String,
    },
    /// The bucket is there but not readable, or cannot be created.
    #[error("bucket {bucket}: {message}; check `bucket` and that the identity has roles/storage.admin on it")]
    Bucket {
        /// The bucket name.
        bucket: String,
        /// Google's message.
        message: String,
    },
    /// `replace = false` and the image exists.
    #[error(
        "image {name} already exists ({link}); delete it, choose another imageName, or set replace = true to replace it"
    )]
    Exists {
        /// The image name.
        name: String,
        /// Its self link.
        link: String,
    },
    /// The HTTPS client could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::transfer::http::HttpError),
    /// A Google API answered with an error.
    #[error("{what}: Google answered HTTP {status}: {message}")]
    Api {
        /// The call, with the resource.
        what: String,
        /// The HTTP status.
        status: u16,
        /// Google's message.
        message: String,
        /// The `Retry-After` of a throttled answer.
        retry_after: Option<Duration>,
    },
    /// The request did not reach Google or got no answer.
    #[error("{what}: {message}")]
    Transport {
        /// The call, with the resource.
        what: String,
        /// The cause.
        message: String,
    },
    /// A Compute Engine operation ended with an error.
    #[error("{what}: the operation {operation} failed: {message}")]
    Operation {
        /// The call, with the resource.
        what: String,
        /// The operation's name.
        operation: String,
        /// Every error of the operation: code, location and message.
        message: String,
    },
    /// The object's CRC32C differs from the bytes sent.
    #[error(
        "gs://{bucket}/{object}: the stored object's CRC32C is {stored}, the bytes sent have {sent}; the upload was \
         corrupted on the way and is not used"
    )]
    Checksum {
        /// The bucket.
        bucket: String,
        /// The object.
        object: String,
        /// CRC32C of the bytes sent (base64, as GCS prints it).
        sent: String,
        /// CRC32C GCS reported.
        stored: String,
    },
    /// The source image could not be read.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Compressing the tar stream failed.
    #[error("compressing the GCE tar.gz: {0}")]
    Compress(#[from] FormatError),
    /// A wait ran out of time.
    #[error("{what}: no result after {} s; it may still finish, check it in the console", timeout.as_secs())]
    TimedOut {
        /// The wait.
        what: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// Something answered in a way uplosi does not understand.
    #[error("{what}: {message}")]
    Unexpected {
        /// The call.
        what: String,
        /// What was odd.
        message: String,
    },
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// The configuration cannot name the variant's images at any version.
    #[error("{0}")]
    Lifecycle(String),
}

impl GcpError {
    /// Whether the problem was found before any work and is the user's to fix (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            GcpError::Credentials { .. } | GcpError::Project { .. } | GcpError::Bucket { .. } | GcpError::Exists { .. }
        )
    }

    /// An error of a Google client library call, `what` naming the call.
    pub fn from_google(what: impl Into<String>, err: &google_cloud_gax::error::Error) -> Self {
        let what = what.into();
        if err.is_authentication() {
            return GcpError::Credentials { message: full_message(err) };
        }
        match err.http_status_code() {
            Some(status) => GcpError::Api {
                what,
                status,
                message: err.status().map(|s| s.message.clone()).filter(|m| !m.is_empty()).unwrap_or_else(|| {
                    err.http_payload()
                        .map(|p| crate::transfer::http::error_text(&String::from_utf8_lossy(p)))
                        .unwrap_or_else(|| full_message(err))
                }),
                retry_after: err.http_headers().and_then(crate::transfer::http::retry_after),
            },
            None => GcpError::Transport { what, message: full_message(err) },
        }
    }
}

pub use crate::transfer::http::error_chain as full_message;

/// How the one retry policy treats an error of a Google API call.
pub fn verdict(err: &GcpError) -> Verdict {
    match err {
        GcpError::Api { retry_after: Some(after), status, .. } if is_transient_status(*status) => {
            Verdict::RetryAfter(*after)
        }
        GcpError::Api { status, .. } if is_transient_status(*status) => Verdict::Retry,
        GcpError::Transport { .. } => Verdict::Retry,
        _ => Verdict::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, retry_after: Option<Duration>) -> GcpError {
        GcpError::Api { what: "x".into(), status, message: "m".into(), retry_after }
    }

    #[test]
    fn throttling_and_server_errors_are_retried_and_validation_is_not() {
        assert_eq!(verdict(&api(503, None)), Verdict::Retry);
        assert_eq!(verdict(&api(429, Some(Duration::from_secs(3)))), Verdict::RetryAfter(Duration::from_secs(3)));
        assert_eq!(verdict(&api(400, None)), Verdict::Fail);
        assert_eq!(verdict(&api(409, None)), Verdict::Fail);
        assert_eq!(verdict(&GcpError::Transport { what: "x".into(), message: "reset".into() }), Verdict::Retry);
        assert_eq!(verdict(&GcpError::Interrupted), Verdict::Fail);
    }

    #[test]
    fn only_preflight_findings_are_usage_errors() {
        assert!(GcpError::Credentials { message: "m".into() }.is_usage());
        assert!(GcpError::Exists { name: "n".into(), link: "l".into() }.is_usage());
        assert!(!api(500, None).is_usage());
        assert!(!GcpError::Interrupted.is_usage());
    }
}
