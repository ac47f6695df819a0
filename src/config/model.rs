//! The resolved, typed configuration of one variant: base and variant merged, defaults filled, version read,
//! templates rendered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::load::{Origin, Problem, Settings, Value};
use super::schema::{KeySpec, Section};
use super::template::{self, TemplateData};
use crate::version::ImageVersion;

/// The cloud a variant goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Amazon Web Services.
    Aws,
    /// Microsoft Azure.
    Azure,
    /// Google Cloud Platform.
    Gcp,
    /// OpenStack.
    #[serde(rename = "openstack")]
    OpenStack,
    /// A local file (libvirt export).
    File,
    /// An OCI registry, as oras pushes artifacts.
    Oci,
    /// A libvirt storage pool volume.
    Libvirt,
}

impl Provider {
    /// Parses the `provider` key's value.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "aws" => Provider::Aws,
            "azure" => Provider::Azure,
            "gcp" => Provider::Gcp,
            "openstack" => Provider::OpenStack,
            "file" => Provider::File,
            "oci" => Provider::Oci,
            "libvirt" => Provider::Libvirt,
            _ => return None,
        })
    }

    /// The name used in uplosi.conf.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Azure => "azure",
            Provider::Gcp => "gcp",
            Provider::OpenStack => "openstack",
            Provider::File => "file",
            Provider::Oci => "oci",
            Provider::Libvirt => "libvirt",
        }
    }
}

/// `[….aws]`, rendered.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct AwsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub replication_regions: Vec<String>,
    pub ami_name: String,
    pub ami_description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_location_constraint: Option<String>,
    pub blob_name: String,
    pub snapshot_name: String,
    pub publish: bool,
    pub upload_method: String,
    pub architecture: String,
    pub boot_mode: String,
    pub tpm_support: String,
    pub imds_support: String,
    /// Resolved against the config directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uefi_data: Option<PathBuf>,
    pub volume_type: String,
    pub tags: BTreeMap<String, String>,
    pub replace: bool,
    pub launch_permissions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssm_parameter: Option<String>,
}

/// `[….azure]`, rendered.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct AzureConfig {
    #[serde(rename = "subscriptionID", skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub replication_regions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    pub attestation_variant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_image_gallery: Option<String>,
    pub sharing_profile: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sharing_name_prefix: Option<String>,
    pub image_definition_name: String,
    pub offer: String,
    pub sku: String,
    pub publisher: String,
    pub disk_name: String,
    /// UEFI `db` certificates: paths of DER files (made absolute against the config directory) or inline base64 DER.
    pub additional_signatures: Vec<String>,
    /// Unset (`null` in the plan): the Go tool's placeholder, with a warning.
    pub community_eula: Option<String>,
    /// Unset (`null` in the plan): the Go tool's placeholder, with a warning.
    pub publisher_email: Option<String>,
    /// Unset (`null` in the plan): the Go tool's placeholder, with a warning.
    pub publisher_uri: Option<String>,
    pub architecture: String,
    pub replica_count: i64,
    pub storage_account_type: String,
    pub exclude_from_latest: bool,
    pub replace: bool,
    pub resource_manager_endpoint: String,
}

/// `[….gcp]`, rendered.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct GcpConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub image_name: String,
    pub image_family: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    pub blob_name: String,
    pub publish: bool,
    pub architecture: String,
    pub guest_os_features: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub description: String,
    /// Empty: the image is stored in `location`.
    pub storage_locations: Vec<String>,
    pub replace: bool,
    pub deprecate_older: bool,
    pub storage_endpoint: String,
    pub compute_endpoint: String,
}

/// `[….openstack]`, rendered.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct OpenStackConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud: Option<String>,
    pub image_name: String,
    pub visibility: String,
    pub hidden: bool,
    pub tags: Vec<String>,
    #[serde(rename = "minDiskGB")]
    pub min_disk_gb: i64,
    #[serde(rename = "minRamMB")]
    pub min_ram_mb: i64,
    pub protected: bool,
    pub properties: BTreeMap<String, String>,
    pub disk_format: String,
    pub replace: bool,
    pub architecture: String,
    /// How long to wait for the image to become `active`, as a Go duration ("30m", "1h30m", "90s").
    pub timeout: String,
}

impl OpenStackConfig {
    /// `timeout` as a duration, if it is a valid Go duration.
    pub fn timeout_duration(&self) -> Option<std::time::Duration> {
        parse_go_duration(&self.timeout)
    }
}

/// Parses a Go `time.Duration` string without sign: one or more decimal numbers with a unit each (`h`, `m`, `s`,
/// `ms`), e.g. "30m", "1h30m", "1.5h", "90s".
pub fn parse_go_duration(text: &str) -> Option<std::time::Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut seconds = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        rest = &rest[unit_len..];
        seconds += number * scale;
    }
    (seconds.is_finite() && seconds < 1e9).then(|| std::time::Duration::from_secs_f64(seconds))
}

/// An Azure region as Resource Manager compares them: case-insensitive, spaces ignored, so `GermanyWestCentral`
/// (the Go tool's own test configuration), `Germany West Central` and `germanywestcentral` are one region, written
/// in the lowercase form without spaces that requests and comparisons use. A name with other characters is kept
/// as written, for validation to refuse.
pub fn azure_region(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ') {
        name.chars().filter(|c| *c != ' ').map(|c| c.to_ascii_lowercase()).collect()
    } else {
        name.to_string()
    }
}

/// `replicationRegions` without the primary region and without repeats. Real configs list the primary region too
/// (cloud-api-adaptor documents `location = "eastus"` with `replicationRegions = ["eastus", "eastus2", …]`); the
/// image is already there, so the entry is skipped rather than refused.
fn replication_regions(primary: Option<&str>, listed: Vec<String>) -> Vec<String> {
    let mut kept: Vec<String> = Vec::with_capacity(listed.len());
    for region in listed {
        if Some(region.as_str()) == primary {
            tracing::debug!("replicationRegions: skipping the primary region \"{region}\"; the image is already there");
        } else if kept.contains(&region) {
            tracing::debug!("replicationRegions: skipping the repeated \"{region}\"");
        } else {
            kept.push(region);
        }
    }
    kept
}

/// `[….file]`, rendered.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct FileConfig {
    /// Rendered and resolved against the config directory, made absolute (it is the variant's reference).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    pub format: String,
    pub replace: bool,
    pub mode: String,
}

impl FileConfig {
    /// `mode` as permission bits, if it is a valid octal mode.
    pub fn mode_bits(&self) -> Option<u32> {
        let digits = self.mode.strip_prefix("0o").unwrap_or(&self.mode);
        u32::from_str_radix(digits, 8).ok().filter(|m| !digits.is_empty() && *m <= 0o7777)
    }
}

/// `[….oci]`, rendered.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct OciConfig {
    /// `registry/name`, e.g. `ghcr.io/org/podvm-amd64` (no tag).
    pub repository: String,
    /// The tags pushed, rendered.
    pub tags: Vec<String>,
    /// The tag templates as written, for `delete` and `prune` to read versions back.
    #[serde(skip)]
    pub tag_templates: Vec<String>,
    /// `qcow2`, `raw` or `qcow2.tar.xz`.
    pub format: String,
    /// The `org.opencontainers.image.title` of the layer.
    pub file_name: String,
    pub artifact_type: String,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "plainHTTP")]
    pub plain_http: bool,
    /// `None`: attach when measurements are computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_measurements: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount_from: Option<String>,
    pub replace: bool,
}

/// `[….libvirt]`, rendered.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct LibvirtConfig {
    /// The connection URI (`LIBVIRT_DEFAULT_URI`, else `qemu:///system`, when not set).
    pub uri: String,
    pub pool: String,
    pub volume_name: String,
    /// `qcow2` or `raw`.
    pub format: String,
    /// The volume's capacity as written (`20G`, bytes); empty: the image's virtual size.
    pub capacity: String,
    pub replace: bool,
}

/// One variant, ready to upload.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VariantConfig {
    /// The variant's name; `None` when the file has no variants and `[base]` is the one unnamed variant.
    pub variant: Option<String>,
    /// The target cloud.
    pub provider: Provider,
    /// `name`, the `{{.Name}}` of templates.
    pub name: String,
    /// The effective version (from `imageVersionFile` if set).
    pub image_version: ImageVersion,
    /// The version file, resolved against the config directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_version_file: Option<PathBuf>,
    /// Where `uplosi upload` writes the image's PCR measurements first, resolved against the config directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurements_file: Option<PathBuf>,
    /// `measurementsFormat`: the document written there (`uplosi`, `nitro`, `aws-kms`, `rvps`).
    pub measurements_format: String,
    /// `bootCheck`: boot the image (`uplosi boot-check`) before anything is uploaded.
    pub boot_check: bool,
    /// `bootCheckExpect`: what the console must show (a regular expression); `None` is boot-check's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_check_expect: Option<String>,
    /// `bootCheckTimeout`: how long the boot may take, as a Go duration.
    pub boot_check_timeout: String,
    /// AWS settings.
    pub aws: AwsConfig,
    /// Azure settings.
    pub azure: AzureConfig,
    /// GCP settings.
    pub gcp: GcpConfig,
    /// OpenStack settings.
    pub openstack: OpenStackConfig,
    /// Local file settings.
    pub file: FileConfig,
    /// OCI registry settings.
    pub oci: OciConfig,
    /// libvirt settings.
    pub libvirt: LibvirtConfig,
    /// Where each explicitly written key came from, for error messages.
    #[serde(skip)]
    pub origins: BTreeMap<(Section, &'static str), Origin>,
    /// The unrendered text of every template key (written or default), so `delete` and `prune` can render the
    /// names with the version left open.
    #[serde(skip)]
    pub templates: BTreeMap<(Section, &'static str), String>,
    /// The directory of the configuration, which relative paths are resolved against.
    #[serde(skip)]
    pub config_dir: PathBuf,
}

impl VariantConfig {
    /// A label for messages: `variant \`foo\`` or `[base]`.
    pub fn label(&self) -> String {
        match &self.variant {
            Some(v) => format!("variant `{v}`"),
            None => "[base]".to_string(),
        }
    }
}

/// Reads values out of merged settings, falling back to schema defaults and rendering templates.
struct Resolver<'a> {
    settings: &'a Settings,
    data: TemplateData,
    problems: Vec<Problem>,
}

impl Resolver<'_> {
    fn raw(&self, section: Section, key: &str) -> Option<(&'static KeySpec, Option<&Value>)> {
        let spec = section.spec(key)?;
        Some((spec, self.settings.get(&(section, spec.name)).map(|s| &s.value)))
    }

    fn default_value(spec: &KeySpec) -> Option<Value> {
        let text = spec.default?;
        let table: toml::Table = toml::from_str(&format!("v = {text}")).ok()?;
        Some(match table.get("v")? {
            toml::Value::String(s) => Value::String(s.clone()),
            toml::Value::Boolean(b) => Value::Bool(*b),
            toml::Value::Integer(i) => Value::Integer(*i),
            toml::Value::Array(a) => Value::StringList(a.iter().filter_map(|v| v.as_str().map(String::from)).collect()),
            toml::Value::Table(t) => {
                Value::StringMap(t.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            }
            _ => return None,
        })
    }

    fn value(&self, section: Section, key: &str) -> Option<Value> {
        let (spec, written) = self.raw(section, key)?;
        written.cloned().or_else(|| Self::default_value(spec))
    }

    fn opt_string(&mut self, section: Section, key: &str) -> Option<String> {
        let Some(Value::String(s)) = self.value(section, key) else { return None };
        let Some(spec) = section.spec(key) else { return Some(s) };
        if !spec.template {
            return Some(s);
        }
        match template::render(&s, &self.data) {
            Ok(rendered) => Some(rendered),
            Err(e) => {
                let origin = self.settings.get(&(section, spec.name)).map(|s| s.origin.clone());
                let label = match section {
                    Section::Common => spec.name.to_string(),
                    other => format!("{}.{}", other.table_name(), spec.name),
                };
                self.problems.push(Problem { origin, message: format!("template in `{label}`: {e}") });
                Some(s)
            }
        }
    }

    fn string(&mut self, section: Section, key: &str) -> String {
        self.opt_string(section, key).unwrap_or_default()
    }

    fn bool(&self, section: Section, key: &str) -> bool {
        matches!(self.value(section, key), Some(Value::Bool(true)))
    }

    fn int(&self, section: Section, key: &str) -> i64 {
        match self.value(section, key) {
            Some(Value::Integer(i)) => i,
            _ => 0,
        }
    }

    fn list(&self, section: Section, key: &str) -> Vec<String> {
        match self.value(section, key) {
            Some(Value::StringList(l)) => l,
            _ => Vec::new(),
        }
    }

    fn map(&self, section: Section, key: &str) -> BTreeMap<String, String> {
        match self.value(section, key) {
            Some(Value::StringMap(m)) => m,
            _ => BTreeMap::new(),
        }
    }

    /// Renders `text`, a template of `key` in `section`, noting a broken template as a problem.
    fn render(&mut self, section: Section, key: &str, text: &str) -> String {
        match template::render(text, &self.data) {
            Ok(rendered) => rendered,
            Err(e) => {
                let origin = section.spec(key).and_then(|spec| self.settings.get(&(section, spec.name)));
                let origin = origin.map(|s| s.origin.clone());
                let label = format!("{}.{key}", section.table_name());
                self.problems.push(Problem { origin, message: format!("template in `{label}`: {e}") });
                text.to_string()
            }
        }
    }

    /// A list whose items are templates, rendered.
    fn rendered_list(&mut self, section: Section, key: &str) -> Vec<String> {
        self.list(section, key).iter().map(|item| self.render(section, key, item)).collect()
    }

    /// A table whose values are templates, rendered.
    fn rendered_map(&mut self, section: Section, key: &str) -> BTreeMap<String, String> {
        self.map(section, key).into_iter().map(|(k, v)| (k, self.render(section, key, &v))).collect()
    }
}

/// Resolves one variant from its merged settings. `dir` is the config directory that relative version files are
/// resolved against; `declared_at` points at `[variant.NAME]` for messages about missing keys.
pub fn resolve(
    variant: Option<&str>,
    settings: &Settings,
    dir: &Path,
    declared_at: Option<&Origin>,
) -> Result<(VariantConfig, Vec<Problem>), Vec<Problem>> {
    let mut problems = Vec::new();
    let at = |key: &str| settings.get(&(Section::Common, key)).map(|s| s.origin.clone());
    let table = variant.map(|v| format!("[variant.{v}]")).unwrap_or_else(|| "[base]".to_string());
    let string = |key: &str| match settings.get(&(Section::Common, key)).map(|s| &s.value) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };

    let provider = match string("provider") {
        None => {
            problems.push(Problem {
                origin: declared_at.cloned(),
                message: format!(
                    "{} has no provider: set `provider` to \"aws\", \"azure\", \"gcp\", \"openstack\", \"oci\", \"libvirt\" or \"file\" in {table} or [base]",
                    variant.map(|v| format!("variant `{v}`")).unwrap_or_else(|| "[base]".into())
                ),
            });
            None
        }
        Some(p) => match Provider::parse(&p) {
            Some(p) => Some(p),
            None => {
                let hint = super::schema::suggest(&p, ["aws", "azure", "gcp", "openstack", "oci", "libvirt", "file"])
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                problems.push(Problem {
                    origin: at("provider"),
                    message: format!(
                        "unknown provider \"{p}\"{hint}: use \"aws\", \"azure\", \"gcp\", \"openstack\", \"oci\", \"libvirt\" or \"file\""
                    ),
                });
                None
            }
        },
    };

    let name = string("name").unwrap_or_default();
    if name.is_empty() {
        problems.push(Problem {
            origin: at("name").or_else(|| declared_at.cloned()),
            message: if variant.is_some() {
                format!("required key `name` is missing or empty: set it in {table} or [base]")
            } else {
                "required key `name` is missing or empty: set it in [base]".to_string()
            },
        });
    }

    let image_version_file = string("imageVersionFile").filter(|f| !f.is_empty()).map(|f| dir.join(f));
    let version_text = match &image_version_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text.trim().to_string()),
            Err(e) => {
                problems.push(Problem {
                    origin: at("imageVersionFile"),
                    message: format!("cannot read imageVersionFile {}: {e}", path.display()),
                });
                None
            }
        },
        None => Some(string("imageVersion").unwrap_or_else(|| "0.0.0".to_string())),
    };
    let image_version = version_text.as_deref().and_then(|text| match text.parse::<ImageVersion>() {
        Ok(v) => Some(v),
        Err(e) => {
            let (origin, source) = match &image_version_file {
                Some(path) => (at("imageVersionFile"), format!(" (read from {})", path.display())),
                None => (at("imageVersion"), String::new()),
            };
            problems.push(Problem { origin, message: format!("{e}{source}") });
            None
        }
    });

    let mut r = Resolver {
        settings,
        data: TemplateData::new(&name, version_text.as_deref().unwrap_or("")),
        problems: Vec::new(),
    };
    use Section::*;
    let measurements_file = r.opt_string(Common, "measurementsFile").filter(|p| !p.is_empty()).map(|p| dir.join(p));
    let measurements_format = r.string(Common, "measurementsFormat");
    let boot_check = r.bool(Common, "bootCheck");
    let boot_check_expect = r.opt_string(Common, "bootCheckExpect").filter(|e| !e.is_empty());
    let boot_check_timeout = r.string(Common, "bootCheckTimeout");
    let aws_region = r.opt_string(Aws, "region");
    let aws = AwsConfig {
        replication_regions: replication_regions(aws_region.as_deref(), r.list(Aws, "replicationRegions")),
        region: aws_region,
        ami_name: r.string(Aws, "amiName"),
        ami_description: r.string(Aws, "amiDescription"),
        bucket: r.opt_string(Aws, "bucket"),
        bucket_location_constraint: r.opt_string(Aws, "bucketLocationConstraint"),
        blob_name: r.string(Aws, "blobName"),
        snapshot_name: r.string(Aws, "snapshotName"),
        publish: r.bool(Aws, "publish"),
        upload_method: r.string(Aws, "uploadMethod"),
        architecture: r.string(Aws, "architecture"),
        boot_mode: r.string(Aws, "bootMode"),
        tpm_support: r.string(Aws, "tpmSupport"),
        imds_support: r.string(Aws, "imdsSupport"),
        uefi_data: r.opt_string(Aws, "uefiData").filter(|p| !p.is_empty()).map(|p| dir.join(p)),
        volume_type: r.string(Aws, "volumeType"),
        tags: r.map(Aws, "tags"),
        replace: r.bool(Aws, "replace"),
        launch_permissions: r.list(Aws, "launchPermissions"),
        ssm_parameter: r.opt_string(Aws, "ssmParameter").filter(|p| !p.is_empty()),
    };
    let azure_location = r.opt_string(Azure, "location").map(|l| azure_region(&l));
    let azure_regions = r.list(Azure, "replicationRegions").iter().map(|l| azure_region(l)).collect();
    let azure = AzureConfig {
        subscription_id: r.opt_string(Azure, "subscriptionID"),
        replication_regions: replication_regions(azure_location.as_deref(), azure_regions),
        location: azure_location,
        resource_group: r.opt_string(Azure, "resourceGroup"),
        attestation_variant: r.string(Azure, "attestationVariant"),
        shared_image_gallery: r.opt_string(Azure, "sharedImageGallery"),
        sharing_profile: r.string(Azure, "sharingProfile"),
        sharing_name_prefix: r.opt_string(Azure, "sharingNamePrefix"),
        image_definition_name: r.string(Azure, "imageDefinitionName"),
        offer: r.string(Azure, "offer"),
        sku: r.string(Azure, "sku"),
        publisher: r.string(Azure, "publisher"),
        disk_name: r.string(Azure, "diskName"),
        additional_signatures: r
            .list(Azure, "additionalSignatures")
            .into_iter()
            .map(|entry| {
                // A path (relative to the config directory) to a DER certificate, or the Go tool's inline base64.
                let path = dir.join(&entry);
                if !entry.is_empty() && path.is_file() { path.to_string_lossy().into_owned() } else { entry }
            })
            .collect(),
        community_eula: r.opt_string(Azure, "communityEula"),
        publisher_email: r.opt_string(Azure, "publisherEmail"),
        publisher_uri: r.opt_string(Azure, "publisherUri"),
        architecture: r.string(Azure, "architecture"),
        replica_count: r.int(Azure, "replicaCount"),
        storage_account_type: r.string(Azure, "storageAccountType"),
        exclude_from_latest: r.bool(Azure, "excludeFromLatest"),
        replace: r.bool(Azure, "replace"),
        resource_manager_endpoint: r.string(Azure, "resourceManagerEndpoint"),
    };
    let gcp = GcpConfig {
        project: r.opt_string(Gcp, "project"),
        location: r.opt_string(Gcp, "location"),
        image_name: r.string(Gcp, "imageName"),
        image_family: r.string(Gcp, "imageFamily"),
        bucket: r.opt_string(Gcp, "bucket"),
        blob_name: r.string(Gcp, "blobName"),
        publish: r.bool(Gcp, "publish"),
        architecture: r.string(Gcp, "architecture"),
        guest_os_features: r.list(Gcp, "guestOsFeatures"),
        labels: r.map(Gcp, "labels"),
        description: r.string(Gcp, "description"),
        storage_locations: r.list(Gcp, "storageLocations"),
        replace: r.bool(Gcp, "replace"),
        deprecate_older: r.bool(Gcp, "deprecateOlder"),
        storage_endpoint: r.string(Gcp, "storageEndpoint"),
        compute_endpoint: r.string(Gcp, "computeEndpoint"),
    };
    let openstack = OpenStackConfig {
        cloud: r.opt_string(OpenStack, "cloud"),
        image_name: r.string(OpenStack, "imageName"),
        visibility: r.string(OpenStack, "visibility"),
        hidden: r.bool(OpenStack, "hidden"),
        tags: r.list(OpenStack, "tags"),
        min_disk_gb: r.int(OpenStack, "minDiskGB"),
        min_ram_mb: r.int(OpenStack, "minRamMB"),
        protected: r.bool(OpenStack, "protected"),
        properties: r.map(OpenStack, "properties"),
        disk_format: r.string(OpenStack, "diskFormat"),
        replace: r.bool(OpenStack, "replace"),
        architecture: r.string(OpenStack, "architecture"),
        timeout: r.string(OpenStack, "timeout"),
    };
    let file = FileConfig {
        path: r.opt_string(File, "path").filter(|p| !p.is_empty()).map(|p| {
            let joined = dir.join(p);
            std::path::absolute(&joined).unwrap_or(joined)
        }),
        format: r.string(File, "format"),
        replace: r.bool(File, "replace"),
        mode: r.string(File, "mode"),
    };
    let oci_format = r.string(Oci, "format");
    let oci_file_name = r.opt_string(Oci, "fileName").filter(|f| !f.is_empty()).unwrap_or_else(|| {
        let extension = if oci_format.is_empty() { "qcow2" } else { oci_format.as_str() };
        format!("{}-{}.{extension}", name, version_text.as_deref().unwrap_or(""))
    });
    let oci = OciConfig {
        repository: r.string(Oci, "repository"),
        tags: r.rendered_list(Oci, "tags"),
        tag_templates: r.list(Oci, "tags"),
        format: oci_format,
        file_name: oci_file_name,
        artifact_type: r.string(Oci, "artifactType"),
        annotations: r.rendered_map(Oci, "annotations"),
        plain_http: r.bool(Oci, "plainHTTP"),
        attach_measurements: match r.value(Oci, "attachMeasurements") {
            Some(Value::Bool(b)) => Some(b),
            _ => None,
        },
        mount_from: r.opt_string(Oci, "mountFrom").filter(|m| !m.is_empty()),
        replace: r.bool(Oci, "replace"),
    };
    let libvirt = LibvirtConfig {
        uri: r
            .opt_string(Libvirt, "uri")
            .filter(|u| !u.is_empty())
            .or_else(|| std::env::var("LIBVIRT_DEFAULT_URI").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "qemu:///system".to_string()),
        pool: r.string(Libvirt, "pool"),
        volume_name: r.string(Libvirt, "volumeName"),
        format: r.string(Libvirt, "format"),
        capacity: r.string(Libvirt, "capacity"),
        replace: r.bool(Libvirt, "replace"),
    };
    problems.append(&mut r.problems);
    let mut templates = BTreeMap::new();
    for section in [Common].into_iter().chain(Section::PROVIDERS) {
        for spec in section.keys().iter().filter(|k| k.template) {
            match r.value(section, spec.name) {
                Some(Value::String(text)) => {
                    templates.insert((section, spec.name), text);
                }
                // A list of name templates (the OCI tags): the one that names versions, for delete and prune.
                Some(Value::StringList(items)) => {
                    let versioned = items.iter().find(|t| super::names::NamePattern::new(t, &name).is_some());
                    if let Some(text) = versioned.or(items.first()) {
                        templates.insert((section, spec.name), text.clone());
                    }
                }
                _ => {}
            }
        }
    }

    match (provider, image_version) {
        // A missing name or a broken template still lets the provider checks run, so all problems show at once.
        (Some(provider), Some(image_version)) => Ok((
            VariantConfig {
                variant: variant.map(str::to_string),
                provider,
                name,
                image_version,
                image_version_file,
                measurements_file,
                measurements_format,
                boot_check,
                boot_check_expect,
                boot_check_timeout,
                aws,
                azure,
                gcp,
                openstack,
                file,
                oci,
                libvirt,
                origins: settings.iter().map(|(k, s)| (*k, s.origin.clone())).collect(),
                templates,
                config_dir: dir.to_path_buf(),
            },
            problems,
        )),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn replication_regions_drop_the_primary_and_repeats() {
        let listed = ["eastus", "eastus2", "westeurope", "eastus2", "northeurope"].map(String::from).to_vec();
        assert_eq!(replication_regions(Some("eastus"), listed), ["eastus2", "westeurope", "northeurope"]);
        assert_eq!(replication_regions(None, vec!["a".into(), "a".into()]), ["a"]);
    }

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "30", "m", "30 minutes", "-5m", "1d", "1h30"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }
}
