//! Cloud providers: each stages the data, registers the image, replicates and publishes it, and cleans up after
//! itself. No provider knows about another; this module only dispatches.

pub mod aws;
pub mod azure;
pub mod file;
pub mod gcp;
pub mod openstack;

use thiserror::Error;

use crate::cancel::Cancel;
use crate::config::{Provider, VariantConfig};
use crate::image::SourceImage;

/// Knobs shared by all providers.
#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// Parallel block or part uploads.
    pub concurrency: usize,
    /// Raised by Ctrl-C.
    pub cancel: Cancel,
}

/// One reference a variant printed: an AMI ARN, a Glance image ID, a file path, …
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reference {
    /// The region (or cloud region) it lives in, if the provider has regions.
    pub region: Option<String>,
    /// The reference exactly as the Go tool prints it.
    pub value: String,
}

impl Reference {
    /// A reference without a region.
    pub fn global(value: impl Into<String>) -> Self {
        Self { region: None, value: value.into() }
    }
}

/// Why an upload failed.
#[derive(Debug, Error)]
pub enum ProviderError {
    /// AWS failed.
    #[error(transparent)]
    Aws(#[from] aws::AwsError),
    /// Azure failed.
    #[error(transparent)]
    Azure(#[from] azure::AzureError),
    /// The local file export failed.
    #[error(transparent)]
    File(#[from] file::FileError),
    /// GCP failed.
    #[error(transparent)]
    Gcp(#[from] gcp::GcpError),
    /// OpenStack failed.
    #[error(transparent)]
    OpenStack(#[from] openstack::OpenStackError),
}

impl ProviderError {
    /// Whether the run was interrupted by a signal.
    pub fn is_interrupted(&self) -> bool {
        match self {
            ProviderError::Aws(e) => matches!(e, aws::AwsError::Interrupted),
            ProviderError::Azure(e) => matches!(e, azure::AzureError::Interrupted),
            ProviderError::File(e) => e.is_interrupted(),
            ProviderError::Gcp(e) => matches!(e, gcp::GcpError::Interrupted),
            ProviderError::OpenStack(e) => matches!(e, openstack::OpenStackError::Interrupted),
        }
    }

    /// Whether the problem was found before any work and is the user's to fix (exit code 2).
    pub fn is_usage(&self) -> bool {
        match self {
            ProviderError::Azure(e) => e.is_usage(),
            ProviderError::File(e) => e.is_usage(),
            ProviderError::Gcp(e) => e.is_usage(),
            ProviderError::OpenStack(e) => e.is_usage(),
            ProviderError::Aws(_) => false,
        }
    }
}

/// Checks credentials and reachability for `cfg` before any data moves.
pub async fn preflight(cfg: &VariantConfig) -> Result<(), ProviderError> {
    match cfg.provider {
        Provider::Aws => Ok(aws::preflight(cfg).await?),
        Provider::Azure => Ok(azure::preflight(cfg).await?),
        Provider::File => Ok(file::preflight(cfg)?),
        Provider::Gcp => Ok(gcp::preflight(cfg).await?),
        Provider::OpenStack => Ok(openstack::preflight(cfg).await?),
    }
}

/// Uploads `image` as configured by `cfg` and returns the references to print.
pub async fn upload(
    cfg: &VariantConfig,
    image: &SourceImage,
    options: &UploadOptions,
) -> Result<Vec<Reference>, ProviderError> {
    match cfg.provider {
        // An AMI ARN names its region: arn:PARTITION:ec2:REGION:ACCOUNT:image/AMI.
        Provider::Aws => Ok(aws::upload(cfg, image, options)
            .await?
            .into_iter()
            .map(|arn| Reference { region: arn.split(':').nth(3).map(str::to_string), value: arn })
            .collect()),
        Provider::Azure => Ok(azure::upload(cfg, image, options).await?),
        Provider::File => Ok(file::upload(cfg, image, options).await?.into_iter().map(Reference::global).collect()),
        Provider::Gcp => Ok(gcp::upload(cfg, image, options).await?),
        Provider::OpenStack => Ok(openstack::upload(cfg, image, options).await?),
    }
}
