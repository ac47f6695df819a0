//! Cloud providers: each stages the data, registers the image, replicates and publishes it, and cleans up after
//! itself. No provider knows about another; this module only dispatches.

pub mod aws;
pub mod azure;
pub mod file;
pub mod gcp;
pub mod libvirt;
pub mod oci;
pub mod openstack;

use thiserror::Error;

use crate::cancel::Cancel;
use crate::config::{Provider, VariantConfig};
use crate::image::SourceImage;
use crate::version::ImageVersion;

/// Knobs shared by all providers.
#[derive(Clone)]
pub struct UploadOptions {
    /// Parallel block or part uploads.
    pub concurrency: usize,
    /// Raised by Ctrl-C.
    pub cancel: Cancel,
    /// The image's predicted measurements, when the run computed them (the OCI provider attaches them).
    pub measurements: Option<std::sync::Arc<crate::measure::Measurements>>,
}

impl std::fmt::Debug for UploadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadOptions")
            .field("concurrency", &self.concurrency)
            .field("measurements", &self.measurements.is_some())
            .finish()
    }
}

/// One reference a variant printed: an AMI ARN, a Glance image ID, a file path, …
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reference {
    /// The region (or cloud region) it lives in, if the provider has regions.
    pub region: Option<String>,
    /// The reference exactly as the Go tool prints it.
    pub value: String,
    /// More about it for the manifest (an OCI artifact's tags, a libvirt volume's key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl Reference {
    /// A reference without a region.
    pub fn global(value: impl Into<String>) -> Self {
        Self { region: None, value: value.into(), details: None }
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
    /// The OCI registry failed.
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    /// libvirt failed.
    #[error(transparent)]
    Libvirt(#[from] libvirt::LibvirtError),
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
            ProviderError::Oci(e) => matches!(e, oci::OciError::Interrupted),
            ProviderError::Libvirt(e) => matches!(e, libvirt::LibvirtError::Interrupted),
        }
    }

    /// Whether the problem was found before any work and is the user's to fix (exit code 2).
    pub fn is_usage(&self) -> bool {
        match self {
            ProviderError::Azure(e) => e.is_usage(),
            ProviderError::File(e) => e.is_usage(),
            ProviderError::Gcp(e) => e.is_usage(),
            ProviderError::OpenStack(e) => e.is_usage(),
            ProviderError::Oci(e) => e.is_usage(),
            ProviderError::Libvirt(e) => e.is_usage(),
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
        Provider::Oci => Ok(oci::preflight(cfg).await?),
        Provider::Libvirt => Ok(libvirt::preflight(cfg).await?),
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
            .map(|arn| Reference { region: arn.split(':').nth(3).map(str::to_string), value: arn, details: None })
            .collect()),
        Provider::Azure => Ok(azure::upload(cfg, image, options).await?),
        Provider::File => Ok(file::upload(cfg, image, options).await?.into_iter().map(Reference::global).collect()),
        Provider::Gcp => Ok(gcp::upload(cfg, image, options).await?),
        Provider::OpenStack => Ok(openstack::upload(cfg, image, options).await?),
        Provider::Oci => Ok(oci::upload(cfg, image, options).await?),
        Provider::Libvirt => Ok(libvirt::upload(cfg, image, options).await?),
    }
}

/// What a variant's uploads left in a cloud for one version: an image, with what stands behind it (an AMI's
/// snapshots), or a leftover (an upload disk, an object), as `uplosi delete` and `uplosi prune` find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The version read from its name.
    pub version: ImageVersion,
    /// The region, for providers with regions.
    pub region: Option<String>,
    /// What it is: `ami`, `image-version`, `image`, `disk`, `object`, `file`, `ssm-parameter`.
    pub kind: &'static str,
    /// The cloud's ID: AMI ID, gallery image version ID, GCE image name, Glance image ID, file path, ….
    pub id: String,
    /// When the cloud says it was created (a file's modification time).
    pub created: Option<std::time::SystemTime>,
    /// The `uplosi-name` tag (label, property) it carries, if any.
    pub tag_name: Option<String>,
    /// Why the cloud itself says it must stay (protected in Glance, an SSM parameter points to it).
    pub keep: Option<String>,
    /// What is deleted with it (kind, ID): an AMI's snapshots.
    pub behind: Vec<(&'static str, String)>,
    /// Left over from something already deleted (an SSM parameter pointing at a deregistered AMI): removed
    /// whatever the version.
    pub dangling: bool,
}

impl Stored {
    /// An item of `kind` with ID `id` at `version`, nothing else known yet.
    pub fn new(version: ImageVersion, kind: &'static str, id: impl Into<String>) -> Self {
        Self {
            version,
            region: None,
            kind,
            id: id.into(),
            created: None,
            tag_name: None,
            keep: None,
            behind: Vec::new(),
            dangling: false,
        }
    }
}

/// An RFC 3339 timestamp as the clouds write creation times (`2024-05-03T04:05:06.123Z`, `…-07:00`).
pub fn parse_timestamp(text: &str) -> Option<std::time::SystemTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok().map(Into::into)
}

/// The tags (labels, properties) every image uplosi creates carries, so `delete` and `prune` can tell whose it is.
pub fn ownership_tags(cfg: &VariantConfig) -> [(&'static str, String); 2] {
    [(TAG_NAME, cfg.name.clone()), (TAG_VERSION, cfg.image_version.to_string())]
}

/// The tag with the variant's `name`.
pub const TAG_NAME: &str = "uplosi-name";
/// The tag with the image's version.
pub const TAG_VERSION: &str = "uplosi-version";

/// The key whose template names the variant's images; it must hold the whole version for `delete` and `prune` to
/// tell versions apart. Azure's gallery image versions are the versions themselves.
pub fn name_key(provider: Provider) -> Option<(crate::config::schema::Section, &'static str)> {
    use crate::config::schema::Section;
    match provider {
        Provider::Aws => Some((Section::Aws, "amiName")),
        Provider::Azure => None,
        Provider::Gcp => Some((Section::Gcp, "imageName")),
        Provider::OpenStack => Some((Section::OpenStack, "imageName")),
        Provider::File => Some((Section::File, "path")),
        Provider::Oci => Some((Section::Oci, "tags")),
        Provider::Libvirt => Some((Section::Libvirt, "volumeName")),
    }
}

/// Everything the variant's uploads left in its cloud, at any version (list and describe calls only).
pub async fn list_stored(cfg: &VariantConfig) -> Result<Vec<Stored>, ProviderError> {
    match cfg.provider {
        Provider::File => Ok(file::list_stored(cfg)?),
        Provider::OpenStack => Ok(openstack::list_stored(cfg).await?),
        Provider::Aws => Ok(aws::lifecycle::list_stored(cfg).await?),
        Provider::Gcp => Ok(gcp::list_stored(cfg).await?),
        Provider::Azure => Ok(azure::list_stored(cfg).await?),
        Provider::Oci => Ok(oci::list_stored(cfg).await?),
        Provider::Libvirt => Ok(libvirt::list_stored(cfg).await?),
    }
}

/// Deletes `item` and what stands behind it; something already gone counts as deleted.
pub async fn delete_stored(cfg: &VariantConfig, item: &Stored) -> Result<(), ProviderError> {
    match cfg.provider {
        Provider::File => Ok(file::delete_stored(item)?),
        Provider::OpenStack => Ok(openstack::delete_stored(cfg, item).await?),
        Provider::Aws => Ok(aws::lifecycle::delete_stored(cfg, item).await?),
        Provider::Gcp => Ok(gcp::delete_stored(cfg, item).await?),
        Provider::Azure => Ok(azure::delete_stored(cfg, item).await?),
        Provider::Oci => Ok(oci::delete_stored(cfg, item).await?),
        Provider::Libvirt => Ok(libvirt::delete_stored(cfg, item).await?),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_timestamp;
    use std::time::{Duration, SystemTime};

    #[test]
    fn each_clouds_creation_time_is_read() {
        let at = |secs: u64, nanos: u32| SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        // AWS CreationDate, Glance created_at, GCE creationTimestamp, Azure timeCreated/publishedDate (7 digits).
        assert_eq!(parse_timestamp("2024-01-02T03:04:05.000Z"), Some(at(1_704_164_645, 0)));
        assert_eq!(parse_timestamp("2024-01-02T03:04:05Z"), Some(at(1_704_164_645, 0)));
        assert_eq!(parse_timestamp("2024-01-01T19:04:05.123-08:00"), Some(at(1_704_164_645, 123_000_000)));
        assert_eq!(parse_timestamp("2024-01-02T03:04:05.1234567+00:00"), Some(at(1_704_164_645, 123_456_700)));
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
