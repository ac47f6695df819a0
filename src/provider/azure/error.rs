//! Azure errors: each names the resource and says what to do; Azure Resource Manager's own code and message are
//! quoted.

use std::time::Duration;

use thiserror::Error;

use crate::image::ImageError;
use crate::transfer::Verdict;
use crate::transfer::http::is_transient_status;

/// Why an Azure upload failed.
#[derive(Debug, Error)]
pub enum AzureError {
    /// `AZURE_TOKEN_CREDENTIALS` names no known credential.
    #[error("AZURE_TOKEN_CREDENTIALS=\"{value}\" is not one of: {allowed}")]
    CredentialSelector {
        /// The value set.
        value: String,
        /// What it may be.
        allowed: String,
    },
    /// No credential of the chain could give a token.
    #[error(
        "no Azure credentials found{}; tried: {}. Set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET for a \
         service principal, or sign in with `az login`",
        selector.as_ref().map(|s| format!(" (AZURE_TOKEN_CREDENTIALS={s})")).unwrap_or_default(),
        tried.join("; ")
    )]
    NoCredentials {
        /// Each credential tried and why it gave no token.
        tried: Vec<String>,
        /// `AZURE_TOKEN_CREDENTIALS`, if set.
        selector: Option<String>,
    },
    /// A configured credential was refused.
    #[error("Azure sign-in with {credential} failed: {message}")]
    SignIn {
        /// Which credential.
        credential: String,
        /// Entra ID's message.
        message: String,
    },
    /// The HTTPS client could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::transfer::http::HttpError),
    /// Resource Manager answered with an error.
    #[error("{what}: Azure answered HTTP {status}{}: {message}", code.as_ref().map(|c| format!(" {c}")).unwrap_or_default())]
    Api {
        /// The call, with the resource.
        what: String,
        /// The HTTP status.
        status: u16,
        /// ARM's error code (`ResourceGroupNotFound`, `OperationNotAllowed`, …).
        code: Option<String>,
        /// ARM's message.
        message: String,
        /// The `Retry-After` of a throttled answer.
        retry_after: Option<Duration>,
    },
    /// The request did not reach Azure or got no answer.
    #[error("{what}: {message}")]
    Transport {
        /// The call, with the resource.
        what: String,
        /// The cause.
        message: String,
    },
    /// The subscription is not visible to the credential.
    #[error(
        "subscription {subscription} is not reachable with these credentials ({message}); check subscriptionID and \
         that the identity has a role on it"
    )]
    Subscription {
        /// The subscription ID.
        subscription: String,
        /// Why.
        message: String,
    },
    /// The resource group does not exist.
    #[error(
        "resource group \"{group}\" does not exist in subscription {subscription}; create it (az group create -n \
         {group} -l LOCATION) or fix resourceGroup: uplosi does not create resource groups"
    )]
    ResourceGroup {
        /// The group.
        group: String,
        /// The subscription.
        subscription: String,
    },
    /// Something of the same name exists and `replace = false`.
    #[error("{what} already exists ({id}); delete it or set replace = true in [….azure]")]
    Exists {
        /// What.
        what: String,
        /// Its resource ID.
        id: String,
    },
    /// An existing gallery or image definition differs from the config.
    #[error("{what} exists with {key} {existing}, but the config asks for {wanted}; {hint}")]
    Mismatch {
        /// The resource.
        what: String,
        /// The property.
        key: String,
        /// Its value in Azure.
        existing: String,
        /// The configured value.
        wanted: String,
        /// What to do.
        hint: String,
    },
    /// A long-running operation ended in failure.
    #[error("{what}: the operation ended {status}: {message}")]
    Operation {
        /// The operation.
        what: String,
        /// `Failed` or `Canceled`.
        status: String,
        /// ARM's error.
        message: String,
    },
    /// A long-running operation did not finish in time.
    #[error("{what}: not finished after {} minutes", timeout.as_secs() / 60)]
    Timeout {
        /// The operation.
        what: String,
        /// How long uplosi waited.
        timeout: Duration,
    },
    /// An answer lacked something Azure always sends.
    #[error("{what}: unexpected answer: {message}")]
    Unexpected {
        /// The call.
        what: String,
        /// What was missing.
        message: String,
    },
    /// A page range could not be written.
    #[error("writing bytes {offset}..{end} of disk {disk}: {message}")]
    Pages {
        /// The disk.
        disk: String,
        /// First byte.
        offset: u64,
        /// One past the last byte.
        end: u64,
        /// The storage error.
        message: String,
        /// Whether another attempt may help.
        retry: Verdict,
    },
    /// Reading the image failed.
    #[error("reading the image: {0}")]
    Read(std::io::Error),
    /// Scanning the image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// An `additionalSignatures` entry could not be read.
    #[error("additionalSignatures entry \"{0}\" is neither a DER certificate file nor base64 of one")]
    Signature(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

impl AzureError {
    /// Whether another attempt may help.
    pub fn verdict(&self) -> Verdict {
        match self {
            AzureError::Transport { .. } => Verdict::Retry,
            AzureError::Api { status, retry_after, .. } if is_transient_status(*status) => match retry_after {
                Some(pause) => Verdict::RetryAfter(*pause),
                None => Verdict::Retry,
            },
            AzureError::Pages { retry, .. } => *retry,
            _ => Verdict::Fail,
        }
    }

    /// Whether the problem was found before any data moved and is the user's to fix (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            AzureError::CredentialSelector { .. }
                | AzureError::NoCredentials { .. }
                | AzureError::SignIn { .. }
                | AzureError::Tls(_)
                | AzureError::Subscription { .. }
                | AzureError::ResourceGroup { .. }
                | AzureError::Exists { .. }
                | AzureError::Mismatch { .. }
                | AzureError::Signature(_)
        )
    }
}
