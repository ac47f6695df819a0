//! OpenStack errors: each names the cloud or the image and says what to do; Glance's and Keystone's own messages
//! are quoted.

use std::path::PathBuf;

use thiserror::Error;

use crate::transfer::Verdict;

/// Why an OpenStack upload failed.
#[derive(Debug, Error)]
pub enum OpenStackError {
    /// No clouds.yaml in any of the standard places.
    #[error(
        "no clouds.yaml found (looked at {}); create one or point OS_CLIENT_CONFIG_FILE at it",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoCloudsFile {
        /// Where uplosi looked, in order.
        searched: Vec<PathBuf>,
    },
    /// clouds.yaml or secure.yaml could not be read or parsed.
    #[error("{}: {message}", path.display())]
    CloudsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Neither the `cloud` key nor OS_CLOUD names a cloud.
    #[error("no cloud selected: set `cloud` in [….openstack] or the OS_CLOUD environment variable")]
    NoCloudName,
    /// The named cloud is not in clouds.yaml.
    #[error("cloud \"{name}\" is not in {} (it has: {}); fix `cloud` or OS_CLOUD", path.display(), known.join(", "))]
    UnknownCloud {
        /// The cloud asked for.
        name: String,
        /// The clouds.yaml read.
        path: PathBuf,
        /// The clouds it defines.
        known: Vec<String>,
    },
    /// The cloud entry is incomplete or asks for something uplosi does not support.
    #[error("cloud \"{cloud}\" in {}: {message}", path.display())]
    CloudEntry {
        /// The cloud.
        cloud: String,
        /// The clouds.yaml read.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The HTTPS client could not be set up (e.g. a bad `cacert`).
    #[error("cloud \"{cloud}\": {source}")]
    Tls {
        /// The cloud.
        cloud: String,
        /// The cause.
        source: crate::transfer::http::HttpError,
    },
    /// Keystone refused the credentials.
    #[error("cloud \"{cloud}\": Keystone at {url} refused the credentials (HTTP {status}): {message}")]
    AuthRejected {
        /// The cloud.
        cloud: String,
        /// The token URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Keystone's message.
        message: String,
    },
    /// Keystone's catalog has no matching image endpoint.
    #[error(
        "cloud \"{cloud}\": the service catalog has no {interface} image endpoint{} (it has: {}); set region_name \
         or interface in clouds.yaml, or image_endpoint_override",
        region.as_ref().map(|r| format!(" in region {r}")).unwrap_or_default(),
        if available.is_empty() { "none".to_string() } else { available.join(", ") }
    )]
    NoImageEndpoint {
        /// The cloud.
        cloud: String,
        /// The region asked for.
        region: Option<String>,
        /// The interface asked for.
        interface: String,
        /// The image endpoints the catalog has, as "interface region url".
        available: Vec<String>,
    },
    /// A request could not be sent or got no answer.
    #[error("{what}: {message}")]
    Transport {
        /// What uplosi was doing.
        what: String,
        /// The transport error with its causes (and the URL, which holds no secrets).
        message: String,
        /// Whether another attempt may help.
        retry: bool,
    },
    /// The service answered with an error.
    #[error("{what}: HTTP {status}: {message}")]
    Api {
        /// What uplosi was doing.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The service's message.
        message: String,
        /// The pause the service asked for (`Retry-After`), if any.
        retry_after: Option<std::time::Duration>,
    },
    /// The service answered with something that is not the documented JSON.
    #[error("{what}: unexpected answer: {message}")]
    Unexpected {
        /// What uplosi was doing.
        what: String,
        /// What was wrong with it.
        message: String,
    },
    /// An image of that name exists and `replace = false`.
    #[error(
        "an image named \"{name}\" already exists ({id}); set `replace = true` in [….openstack] to replace it, or \
         bump the version with -i"
    )]
    Exists {
        /// The name.
        name: String,
        /// The existing image.
        id: String,
    },
    /// An image of that name exists and is protected.
    #[error(
        "an image named \"{name}\" already exists and is protected ({id}); unprotect it (openstack image set \
         --unprotected {id}) or choose another imageName"
    )]
    Protected {
        /// The name.
        name: String,
        /// The existing image.
        id: String,
    },
    /// Several images have that name.
    #[error(
        "{} images are named \"{name}\" ({}); uplosi replaces one image only: delete the extra ones or choose \
         another imageName",
        ids.len(), ids.join(", ")
    )]
    Ambiguous {
        /// The name.
        name: String,
        /// Their IDs.
        ids: Vec<String>,
    },
    /// The image reached a failed status.
    #[error("image {id} became {status} instead of active; Glance could not store the data")]
    Failed {
        /// The image.
        id: String,
        /// `killed` or `deleted`.
        status: String,
    },
    /// The image did not become active in time.
    #[error("image {id} is still {status} after {timeout}; raise `timeout` in [….openstack] if the cloud is slow")]
    Timeout {
        /// The image.
        id: String,
        /// Its last status.
        status: String,
        /// The configured timeout.
        timeout: String,
    },
    /// Glance stored different bytes than uplosi sent.
    #[error("image {id}: Glance's {algorithm} is {stored}, but the bytes sent have {sent}; the upload was corrupted")]
    Digest {
        /// The image.
        id: String,
        /// `sha512` or `md5`.
        algorithm: String,
        /// What Glance computed.
        stored: String,
        /// What uplosi computed.
        sent: String,
    },
    /// Reading the image failed.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// Reading the image during the upload failed.
    #[error("reading the image while uploading: {0}")]
    Read(#[source] std::io::Error),
    /// The user interrupted the run.
    #[error("interrupted")]
    Interrupted,
    /// The configuration cannot name the variant's images at any version.
    #[error("{0}")]
    Lifecycle(String),
}

impl OpenStackError {
    /// Whether another attempt of the same request may succeed: transport failures, throttling and 5xx.
    pub fn verdict(&self) -> Verdict {
        match self {
            OpenStackError::Transport { retry: true, .. } => Verdict::Retry,
            OpenStackError::Api { status, retry_after, .. } if is_transient_status(*status) => match retry_after {
                Some(pause) => Verdict::RetryAfter(*pause),
                None => Verdict::Retry,
            },
            _ => Verdict::Fail,
        }
    }

    /// Whether the problem was found before any data moved and is the user's to fix (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            OpenStackError::NoCloudsFile { .. }
                | OpenStackError::CloudsFile { .. }
                | OpenStackError::NoCloudName
                | OpenStackError::UnknownCloud { .. }
                | OpenStackError::CloudEntry { .. }
                | OpenStackError::Tls { .. }
                | OpenStackError::AuthRejected { .. }
                | OpenStackError::NoImageEndpoint { .. }
                | OpenStackError::Exists { .. }
                | OpenStackError::Protected { .. }
                | OpenStackError::Ambiguous { .. }
        )
    }
}

pub use crate::transfer::http::{is_transient_status, transport_message};
