//! The checks a resolved variant must pass before any work starts: required keys per provider and each cloud's
//! naming rules, so a typo fails in a second instead of after a 20-minute upload.

use super::load::{Origin, Problem};
use super::model::{Provider, VariantConfig};
use super::schema::Section;

/// Every problem with `cfg`; empty when it is ready to upload.
pub fn validate(cfg: &VariantConfig) -> Vec<Problem> {
    let mut v = Checker { cfg, problems: Vec::new() };
    v.measurements();
    v.boot_check();
    match cfg.provider {
        Provider::Aws => v.aws(),
        Provider::Azure => v.azure(),
        Provider::Gcp => v.gcp(),
        Provider::OpenStack => v.openstack(),
        Provider::File => v.file(),
        Provider::Oci => v.oci(),
        Provider::Libvirt => v.libvirt(),
    }
    v.problems
}

struct Checker<'a> {
    cfg: &'a VariantConfig,
    problems: Vec<Problem>,
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`, the RFC 1035 label GCE uses for image names and families.
pub fn is_gce_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.chars().last().is_some_and(is_lower_alnum)
        && s.len() <= 63
}

impl Checker<'_> {
    /// `measurementsFormat` names a document uplosi writes.
    fn measurements(&mut self) {
        let cfg = self.cfg;
        if crate::measure::document::Format::from_name(&cfg.measurements_format).is_none() {
            let message = format!(
                "measurementsFormat \"{}\" is not a document uplosi writes; use \"uplosi\" (the Go uplosi's JSON), \
                 \"nitro\" (nitro-tpm-pcr-compute's), \"aws-kms\" (a KMS key-policy condition) or \"rvps\" \
                 (Trustee's RVPS message)",
                cfg.measurements_format
            );
            self.fail(Section::Common, "measurementsFormat", message);
        }
    }

    /// `bootCheckTimeout` and `bootCheckExpect` are checked even with `bootCheck = false`, as `--boot-check` uses
    /// them too.
    fn boot_check(&mut self) {
        let cfg = self.cfg;
        if super::model::parse_go_duration(&cfg.boot_check_timeout).is_none_or(|d| d.is_zero()) {
            let message = format!(
                "bootCheckTimeout \"{}\" is not a positive duration like \"5m\", \"90s\" or \"1h\"",
                cfg.boot_check_timeout
            );
            self.fail(Section::Common, "bootCheckTimeout", message);
        }
        if let Some(Err(e)) = cfg.boot_check_expect.as_deref().map(regex::Regex::new) {
            self.fail(Section::Common, "bootCheckExpect", format!("bootCheckExpect is not a regular expression: {e}"));
        }
    }

    fn origin(&self, section: Section, key: &str) -> Option<Origin> {
        self.cfg.origins.get(&(section, key)).cloned()
    }

    fn fail(&mut self, section: Section, key: &str, message: String) {
        let origin = self.origin(section, key);
        let from_default = origin.is_none() && section.spec(key).is_some_and(|s| s.default.is_some());
        let message = if from_default {
            format!("{message} (this value comes from the default `{key}`; set `{key}` explicitly)")
        } else {
            message
        };
        self.problems.push(Problem { origin, message: format!("{}: {message}", self.cfg.label()) });
    }

    fn required(&mut self, section: Section, key: &str, value: Option<&str>) {
        if value.is_none_or(str::is_empty) {
            let table = match &self.cfg.variant {
                Some(v) => format!("[variant.{v}.{}]", section.table_name()),
                None => format!("[base.{}]", section.table_name()),
            };
            let message = format!(
                "required key `{key}` for provider {} is missing: set it in {table} or [base.{}]",
                self.cfg.provider.as_str(),
                section.table_name()
            );
            self.problems.push(Problem {
                origin: self.origin(section, key),
                message: format!("{}: {message}", self.cfg.label()),
            });
        }
    }

    /// Primary-region and repeated entries were already dropped when the config was resolved.
    fn regions(&mut self, section: Section, regions: &[String]) {
        if regions.iter().any(|r| r.trim().is_empty()) {
            self.fail(section, "replicationRegions", "replicationRegions contains an empty entry".into());
        }
    }

    fn aws(&mut self) {
        let a = &self.cfg.aws;
        use Section::Aws;
        self.required(Aws, "region", a.region.as_deref());
        match a.upload_method.as_str() {
            "ebs-direct" => {}
            "import-snapshot" => self.required(Aws, "bucket", a.bucket.as_deref()),
            other => self.fail(
                Aws,
                "uploadMethod",
                format!("uploadMethod \"{other}\" must be \"ebs-direct\" or \"import-snapshot\""),
            ),
        }
        let choices: [(&str, &str, &[&str]); 5] = [
            ("architecture", &a.architecture, &["x86_64", "arm64"]),
            ("bootMode", &a.boot_mode, &["uefi", "legacy-bios", "uefi-preferred"]),
            ("tpmSupport", &a.tpm_support, &["v2.0", ""]),
            ("imdsSupport", &a.imds_support, &["v2.0", ""]),
            ("volumeType", &a.volume_type, &["gp3", "gp2", "io1", "io2", "standard"]),
        ];
        for (key, value, allowed) in choices {
            if !allowed.contains(&value) {
                let shown: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
                self.fail(Aws, key, format!("{key} \"{value}\" must be one of {}", shown.join(", ")));
            }
        }
        if a.tpm_support == "v2.0" && a.boot_mode == "legacy-bios" {
            self.fail(
                Aws,
                "tpmSupport",
                "tpmSupport \"v2.0\" needs UEFI: set bootMode = \"uefi\" or tpmSupport = \"\"".into(),
            );
        }
        if let Some(path) = &a.uefi_data
            && !path.is_file()
        {
            self.fail(Aws, "uefiData", format!("uefiData file {} does not exist", path.display()));
        }
        for permission in &a.launch_permissions {
            let account = permission.len() == 12 && permission.chars().all(|c| c.is_ascii_digit());
            let org = permission.starts_with("arn:")
                && (permission.contains(":organization/") || permission.contains(":ou/"));
            if !account && !org {
                self.fail(
                    Aws,
                    "launchPermissions",
                    format!("launchPermissions entry \"{permission}\" must be a 12-digit account ID or an organization or OU ARN"),
                );
            }
        }
        if let Some(name) = &a.ssm_parameter
            && !name.starts_with('/')
            && name.contains('/')
        {
            self.fail(Aws, "ssmParameter", format!("ssmParameter \"{name}\" must start with `/` when it has a path"));
        }
        self.regions(Aws, &a.replication_regions);
        // AWS RegisterImage: 3-128 characters of letters, digits, ( ) [ ] space . / - ' @ _
        let ami_ok = |c: char| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c);
        let n = a.ami_name.chars().count();
        if !(3..=128).contains(&n) {
            self.fail(Aws, "amiName", format!("amiName \"{}\" must be 3 to 128 characters long, is {n}", a.ami_name));
        } else if let Some(bad) = a.ami_name.chars().find(|c| !ami_ok(*c)) {
            self.fail(
                Aws,
                "amiName",
                format!(
                    "amiName \"{}\" contains `{bad}`; AMI names allow letters, digits, spaces and ( ) [ ] . / - ' @ _",
                    a.ami_name
                ),
            );
        }
        if a.ami_description.chars().count() > 255 {
            self.fail(Aws, "amiDescription", "amiDescription must be at most 255 characters".into());
        }
        if let Some(bucket) = a.bucket.as_deref().filter(|b| !b.is_empty())
            && let Some(why) = s3_bucket_problem(bucket)
        {
            self.fail(Aws, "bucket", format!("bucket \"{bucket}\" {why}"));
        }
        if a.blob_name.is_empty() || a.blob_name.len() > 1024 {
            self.fail(Aws, "blobName", "blobName must be 1 to 1024 bytes long".into());
        }
        if let Some(c) = a.bucket_location_constraint.as_deref()
            && !is_region_like(c)
            && c != "EU"
        {
            self.fail(
                Aws,
                "bucketLocationConstraint",
                format!("bucketLocationConstraint \"{c}\" is not an AWS region such as \"eu-central-1\""),
            );
        }
        for region in a.region.iter().chain(&a.replication_regions) {
            if !region.is_empty() && !is_region_like(region) {
                let key = if Some(region) == a.region.as_ref() { "region" } else { "replicationRegions" };
                self.fail(Aws, key, format!("\"{region}\" is not an AWS region name such as \"eu-central-1\""));
            }
        }
    }

    fn azure(&mut self) {
        let z = &self.cfg.azure;
        use Section::Azure;
        self.required(Azure, "subscriptionID", z.subscription_id.as_deref());
        self.required(Azure, "location", z.location.as_deref());
        self.required(Azure, "resourceGroup", z.resource_group.as_deref());
        self.required(Azure, "sharedImageGallery", z.shared_image_gallery.as_deref());
        self.regions(Azure, &z.replication_regions);
        if let Some(id) = z.subscription_id.as_deref().filter(|s| !s.is_empty())
            && !is_guid(id)
        {
            self.fail(
                Azure,
                "subscriptionID",
                format!("subscriptionID \"{id}\" must be a GUID such as 00000000-0000-0000-0000-000000000000"),
            );
        }
        const VARIANTS: [&str; 3] = ["azure-sev-snp", "azure-tdx", "azure-trustedlaunch"];
        if !VARIANTS.contains(&z.attestation_variant.as_str()) {
            self.fail(
                Azure,
                "attestationVariant",
                format!("attestationVariant \"{}\" must be one of {}", z.attestation_variant, VARIANTS.join(", ")),
            );
        }
        match z.sharing_profile.as_str() {
            "private" => {}
            "community" => match z.sharing_name_prefix.as_deref() {
                None | Some("") => self.fail(
                    Azure,
                    "sharingNamePrefix",
                    "sharingProfile \"community\" needs `sharingNamePrefix` (5 to 16 letters and digits)".into(),
                ),
                Some(_) => {}
            },
            "groups" => self.fail(
                Azure,
                "sharingProfile",
                "sharingProfile \"groups\" is not supported; use \"private\" or \"community\"".into(),
            ),
            other => self.fail(
                Azure,
                "sharingProfile",
                format!("sharingProfile \"{other}\" must be \"private\" or \"community\""),
            ),
        }
        if let Some(prefix) = z.sharing_name_prefix.as_deref().filter(|p| !p.is_empty())
            && (!(5..=16).contains(&prefix.len()) || !prefix.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            self.fail(
                Azure,
                "sharingNamePrefix",
                format!("sharingNamePrefix \"{prefix}\" must be 5 to 16 letters and digits"),
            );
        }
        if let Some(g) = z.shared_image_gallery.as_deref().filter(|g| !g.is_empty())
            && !(g.len() <= 80
                && g.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                && g.starts_with(|c: char| c.is_ascii_alphanumeric())
                && g.ends_with(|c: char| c.is_ascii_alphanumeric()))
        {
            self.fail(
                Azure,
                "sharedImageGallery",
                format!("sharedImageGallery \"{g}\" must be 1 to 80 letters, digits, `_` and `.`, starting and ending with a letter or digit (no hyphens)"),
            );
        }
        if let Some(rg) = z.resource_group.as_deref().filter(|g| !g.is_empty())
            && !(rg.chars().count() <= 90
                && rg.chars().all(|c| c.is_alphanumeric() || "_-.()".contains(c))
                && !rg.ends_with('.'))
        {
            self.fail(
                Azure,
                "resourceGroup",
                format!("resourceGroup \"{rg}\" must be 1 to 90 letters, digits, `_ - . ( )`, not ending in `.`"),
            );
        }
        let dashed_name = |s: &str| {
            !s.is_empty() && s.len() <= 80 && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        };
        if !(dashed_name(&z.image_definition_name)
            && z.image_definition_name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && z.image_definition_name.ends_with(|c: char| c.is_ascii_alphanumeric()))
        {
            self.fail(
                Azure,
                "imageDefinitionName",
                format!("imageDefinitionName \"{}\" must be 1 to 80 letters, digits, `_ - .`, starting and ending with a letter or digit", z.image_definition_name),
            );
        }
        if !(dashed_name(&z.disk_name)
            && z.disk_name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && z.disk_name.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        {
            self.fail(
                Azure,
                "diskName",
                format!(
                    "diskName \"{}\" must be 1 to 80 letters, digits, `_ - .`, starting with a letter or digit and ending with a letter, digit or `_`",
                    z.disk_name
                ),
            );
        }
        let choices: [(&str, &str, &[&str]); 2] = [
            ("architecture", &z.architecture, &["x64", "Arm64"]),
            ("storageAccountType", &z.storage_account_type, &["Standard_LRS", "Standard_ZRS", "Premium_LRS"]),
        ];
        for (key, value, allowed) in choices {
            if !allowed.contains(&value) {
                let shown: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
                self.fail(Azure, key, format!("{key} \"{value}\" must be one of {}", shown.join(", ")));
            }
        }
        if !(1..=100).contains(&z.replica_count) {
            self.fail(Azure, "replicaCount", format!("replicaCount {} must be 1 to 100", z.replica_count));
        }
        for region in z.location.iter().chain(&z.replication_regions) {
            // Names were normalised when the configuration was resolved; what is left unnormalised has other
            // characters than letters, digits and spaces.
            if !region.is_empty() && !region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
                let key = if Some(region) == z.location.as_ref() { "location" } else { "replicationRegions" };
                self.fail(
                    Azure,
                    key,
                    format!(
                        "{key} \"{region}\" is not an Azure region name: only letters, digits and spaces, as in \
                         \"eastus\", \"Germany West Central\" or \"GermanyWestCentral\""
                    ),
                );
            }
        }
        match z.resource_manager_endpoint.split_once("://") {
            Some(("https", host)) if !host.is_empty() => {}
            _ => self.fail(
                Azure,
                "resourceManagerEndpoint",
                format!(
                    "resourceManagerEndpoint \"{}\" must be an https URL such as \"https://management.azure.com\"",
                    z.resource_manager_endpoint
                ),
            ),
        }
        if let Some(email) = z.publisher_email.as_deref()
            && !email.contains('@')
        {
            self.fail(Azure, "publisherEmail", format!("publisherEmail \"{email}\" is not an email address"));
        }
        if let Some(uri) = z.publisher_uri.as_deref()
            && !(uri.starts_with("https://") || uri.starts_with("http://"))
        {
            self.fail(Azure, "publisherUri", format!("publisherUri \"{uri}\" must be an http(s) URL"));
        }
        for entry in &z.additional_signatures {
            if super::certificate::signature_der(entry).is_none() {
                self.fail(
                    Azure,
                    "additionalSignatures",
                    format!(
                        "additionalSignatures entry \"{entry}\" is neither a DER certificate file (paths are relative to the config file) nor base64 of one"
                    ),
                );
            }
        }
        for (key, value) in [("offer", &z.offer), ("sku", &z.sku), ("publisher", &z.publisher)] {
            if value.is_empty() || value.len() > 128 {
                self.fail(Azure, key, format!("{key} must be 1 to 128 characters"));
            }
        }
        let v = self.cfg.image_version;
        if [v.major, v.minor, v.patch].iter().any(|p| *p > i32::MAX as u64) {
            self.fail(
                Section::Common,
                "imageVersion",
                format!("image version {v} cannot be an Azure gallery version: each part must be at most {}", i32::MAX),
            );
        }
    }

    fn gcp(&mut self) {
        let g = &self.cfg.gcp;
        use Section::Gcp;
        self.required(Gcp, "project", g.project.as_deref());
        self.required(Gcp, "location", g.location.as_deref());
        self.required(Gcp, "bucket", g.bucket.as_deref());
        if let Some(p) = g.project.as_deref().filter(|p| !p.is_empty())
            && !((6..=30).contains(&p.len()) && is_gce_name(p))
        {
            self.fail(
                Gcp,
                "project",
                format!(
                    "project \"{p}\" must be 6 to 30 lowercase letters, digits and hyphens, starting with a letter"
                ),
            );
        }
        for (key, value) in [("imageName", &g.image_name), ("imageFamily", &g.image_family)] {
            if !is_gce_name(value) {
                self.fail(
                    Gcp,
                    key,
                    format!("{key} \"{value}\" must match [a-z]([-a-z0-9]*[a-z0-9])? and be at most 63 characters"),
                );
            }
        }
        if let Some(b) = g.bucket.as_deref().filter(|b| !b.is_empty())
            && !((3..=63).contains(&b.len())
                && b.chars().all(|c| is_lower_alnum(c) || "-_.".contains(c))
                && b.starts_with(is_lower_alnum)
                && b.ends_with(is_lower_alnum))
        {
            self.fail(
                Gcp,
                "bucket",
                format!("bucket \"{b}\" must be 3 to 63 lowercase letters, digits, `- _ .`, starting and ending with a letter or digit"),
            );
        }
        if g.blob_name.is_empty() || g.blob_name.len() > 1024 {
            self.fail(Gcp, "blobName", "blobName must be 1 to 1024 bytes long".into());
        }
        if !["X86_64", "ARM64"].contains(&g.architecture.as_str()) {
            self.fail(
                Gcp,
                "architecture",
                format!("architecture \"{}\" must be \"X86_64\" or \"ARM64\"", g.architecture),
            );
        }
        for feature in &g.guest_os_features {
            if !GUEST_OS_FEATURES.contains(&feature.as_str()) {
                let hint = super::schema::suggest(feature, GUEST_OS_FEATURES.iter().copied())
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                self.fail(
                    Gcp,
                    "guestOsFeatures",
                    format!("guestOsFeatures entry \"{feature}\" is not a Compute Engine guest OS feature{hint}"),
                );
            }
        }
        // Compute Engine labels: at most 64; keys start with a lowercase letter; keys and values are at most 63
        // lowercase letters, digits, `_` and `-`.
        let label_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if g.labels.len() > 64 {
            self.fail(Gcp, "labels", format!("labels has {} entries; Compute Engine allows 64", g.labels.len()));
        }
        for (key, value) in &g.labels {
            let key_ok = (1..=63).contains(&key.len())
                && key.starts_with(|c: char| c.is_ascii_lowercase())
                && key.chars().all(label_char);
            if !key_ok || value.len() > 63 || !value.chars().all(label_char) {
                self.fail(
                    Gcp,
                    "labels",
                    format!(
                        "label {key} = \"{value}\": keys start with a lowercase letter, and keys and values are at most 63 lowercase letters, digits, `_` and `-`"
                    ),
                );
            }
        }
        if g.description.chars().count() > 2048 {
            self.fail(Gcp, "description", "description must be at most 2048 characters".into());
        }
        for location in &g.storage_locations {
            if location.is_empty()
                || !location.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                self.fail(
                    Gcp,
                    "storageLocations",
                    format!(
                        "storageLocations entry \"{location}\" is not a location such as \"eu\" or \"europe-west3\""
                    ),
                );
            }
        }
        for (key, url) in [("storageEndpoint", &g.storage_endpoint), ("computeEndpoint", &g.compute_endpoint)] {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() < 10 {
                self.fail(Gcp, key, format!("{key} \"{url}\" must be an http(s) URL"));
            }
        }
    }

    fn openstack(&mut self) {
        let o = &self.cfg.openstack;
        use Section::OpenStack;
        // Like every OpenStack client, OS_CLOUD names the cloud when the config does not.
        if std::env::var("OS_CLOUD").map_or(true, |c| c.is_empty()) {
            self.required(OpenStack, "cloud", o.cloud.as_deref());
        }
        const VISIBILITY: [&str; 4] = ["public", "private", "shared", "community"];
        if !VISIBILITY.contains(&o.visibility.as_str()) {
            self.fail(
                OpenStack,
                "visibility",
                format!("visibility \"{}\" must be one of {}", o.visibility, VISIBILITY.join(", ")),
            );
        }
        if o.image_name.is_empty() || o.image_name.chars().count() > 255 {
            self.fail(OpenStack, "imageName", "imageName must be 1 to 255 characters".into());
        }
        for (key, value) in [("minDiskGB", o.min_disk_gb), ("minRamMB", o.min_ram_mb)] {
            if !(0..=i64::from(i32::MAX)).contains(&value) {
                self.fail(OpenStack, key, format!("{key} must be between 0 and {}, is {value}", i32::MAX));
            }
        }
        const DISK_FORMATS: [&str; 2] = ["qcow2", "raw"];
        if !DISK_FORMATS.contains(&o.disk_format.as_str()) {
            self.fail(
                OpenStack,
                "diskFormat",
                format!("diskFormat \"{}\" must be \"qcow2\" or \"raw\"", o.disk_format),
            );
        }
        // Nova's names for the architectures images are commonly built for (nova.objects.fields.Architecture).
        const ARCHITECTURES: [&str; 7] = ["x86_64", "aarch64", "i686", "ppc64le", "s390x", "riscv64", "armv7l"];
        if !ARCHITECTURES.contains(&o.architecture.as_str()) {
            let hint = match o.architecture.as_str() {
                "amd64" | "x64" | "X86_64" => " (OpenStack calls it \"x86_64\")",
                "arm64" | "Arm64" | "ARM64" => " (OpenStack calls it \"aarch64\")",
                _ => "",
            };
            self.fail(
                OpenStack,
                "architecture",
                format!("architecture \"{}\"{hint} must be one of {}", o.architecture, ARCHITECTURES.join(", ")),
            );
        }
        if let Some(set) = o.properties.get("hw_architecture")
            && *set != o.architecture
        {
            self.fail(
                OpenStack,
                "properties",
                format!(
                    "properties.hw_architecture \"{set}\" contradicts architecture \"{}\"; set `architecture` only",
                    o.architecture
                ),
            );
        }
        // Glance refuses these as properties: they are the image's own attributes, set through their keys.
        const RESERVED: [&str; 22] = [
            "id",
            "name",
            "status",
            "visibility",
            "protected",
            "os_hidden",
            "tags",
            "min_disk",
            "min_ram",
            "disk_format",
            "container_format",
            "size",
            "virtual_size",
            "checksum",
            "os_hash_algo",
            "os_hash_value",
            "owner",
            "created_at",
            "updated_at",
            "locations",
            "direct_url",
            "stores",
        ];
        for key in o.properties.keys().filter(|k| RESERVED.contains(&k.as_str())) {
            self.fail(
                OpenStack,
                "properties",
                format!("property \"{key}\" is a reserved image attribute in Glance; use uplosi's own key for it"),
            );
        }
        match o.timeout_duration() {
            Some(d) if !d.is_zero() => {}
            _ => self.fail(
                OpenStack,
                "timeout",
                format!("timeout \"{}\" is not a positive duration like \"30m\", \"1h\" or \"90s\"", o.timeout),
            ),
        }
    }
}

impl Checker<'_> {
    fn oci(&mut self) {
        use super::registry::{Repository, valid_media_type, valid_tag};
        let o = &self.cfg.oci;
        use Section::Oci;
        self.required(Oci, "repository", Some(o.repository.as_str()));
        let repository = if o.repository.is_empty() {
            None
        } else {
            match Repository::parse(&o.repository) {
                Ok(r) => Some(r),
                Err(e) => {
                    let message = format!("repository \"{}\" is not a repository reference: {e}", o.repository);
                    self.fail(Oci, "repository", message);
                    None
                }
            }
        };
        if o.tags.is_empty() {
            self.fail(Oci, "tags", "tags is empty; give at least one tag, e.g. [\"{{.Version}}\"]".into());
        }
        for tag in o.tags.iter().filter(|t| !valid_tag(t)) {
            let message = format!(
                "tag \"{tag}\" is not a valid tag (letters, digits, '_', '.', '-', not starting with '.' or '-', at \
                 most 128 characters)"
            );
            self.fail(Oci, "tags", message);
        }
        const FORMATS: [&str; 3] = ["qcow2", "raw", "qcow2.tar.xz"];
        if !FORMATS.contains(&o.format.as_str()) {
            self.fail(Oci, "format", format!("format \"{}\" must be one of {}", o.format, FORMATS.join(", ")));
        }
        if o.file_name.is_empty() || o.file_name.contains('/') {
            let message = format!("fileName \"{}\" must be a file name (not empty, no '/')", o.file_name);
            self.fail(Oci, "fileName", message);
        }
        if !valid_media_type(&o.artifact_type) {
            let message = format!(
                "artifactType \"{}\" is not a media type such as \"application/vnd.unknown.artifact.v1\"",
                o.artifact_type
            );
            self.fail(Oci, "artifactType", message);
        }
        if o.annotations.keys().any(String::is_empty) {
            self.fail(Oci, "annotations", "annotations has an empty key".into());
        }
        if let (Some(from), Some(target)) = (&o.mount_from, &repository) {
            // A name in the same registry, or a repository reference there.
            let prefixed = format!("{}/{from}", target.registry);
            let checked = match from.strip_prefix(&format!("{}/", target.registry)) {
                Some(_) => Repository::parse(from),
                None if Repository::parse(from).is_ok_and(|r| r.registry == "docker.io")
                    && !from.starts_with("docker.io/") =>
                {
                    Repository::parse(&prefixed)
                }
                None => Repository::parse(from),
            };
            match checked {
                Err(e) => {
                    self.fail(Oci, "mountFrom", format!("mountFrom \"{from}\" is not a repository reference: {e}"))
                }
                Ok(source) if source.registry != target.registry => {
                    let message = format!(
                        "mountFrom \"{from}\" is in registry {}, the repository in {}: blobs are mounted only \
                         within one registry",
                        source.registry, target.registry
                    );
                    self.fail(Oci, "mountFrom", message);
                }
                Ok(_) => {}
            }
        }
    }

    fn libvirt(&mut self) {
        let l = &self.cfg.libvirt;
        use Section::Libvirt;
        if !l.uri.contains(':') {
            let message = format!("uri \"{}\" is not a libvirt connection URI such as \"qemu:///system\"", l.uri);
            self.fail(Libvirt, "uri", message);
        }
        self.required(Libvirt, "pool", Some(l.pool.as_str()));
        self.required(Libvirt, "volumeName", Some(l.volume_name.as_str()));
        if l.volume_name.contains('/') {
            self.fail(Libvirt, "volumeName", format!("volumeName \"{}\" must not contain '/'", l.volume_name));
        }
        const FORMATS: [&str; 2] = ["qcow2", "raw"];
        if !FORMATS.contains(&l.format.as_str()) {
            self.fail(Libvirt, "format", format!("format \"{}\" must be one of {}", l.format, FORMATS.join(", ")));
        }
        if !l.capacity.is_empty() && super::registry::parse_capacity(&l.capacity).is_none() {
            let message =
                format!("capacity \"{}\" is not a size such as \"20G\", \"20GiB\" or a number of bytes", l.capacity);
            self.fail(Libvirt, "capacity", message);
        }
    }

    fn file(&mut self) {
        let f = &self.cfg.file;
        use Section::File;
        self.required(File, "path", f.path.as_ref().map(|p| p.to_str().unwrap_or("?")));
        if let Some(path) = &f.path
            && (path.as_os_str().to_string_lossy().ends_with('/') || path.file_name().is_none())
        {
            self.fail(File, "path", format!("path \"{}\" names a directory; give a file name", path.display()));
        }
        const FORMATS: [&str; 4] = ["qcow2", "vhd", "tar.gz", "raw"];
        if !FORMATS.contains(&f.format.as_str()) {
            self.fail(File, "format", format!("format \"{}\" must be one of {}", f.format, FORMATS.join(", ")));
        }
        if f.mode_bits().is_none() {
            self.fail(File, "mode", format!("mode \"{}\" must be an octal file mode such as \"0644\"", f.mode));
        }
    }
}

fn is_region_like(s: &str) -> bool {
    // e.g. eu-central-1, us-gov-west-1, ap-southeast-3; loose on purpose so new regions need no release.
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[..parts.len() - 1].iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts.last().is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

fn is_guid(s: &str) -> bool {
    let s = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')).unwrap_or(s);
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Why `bucket` breaks the S3 bucket naming rules, if it does.
fn s3_bucket_problem(bucket: &str) -> Option<&'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Some("must be 3 to 63 characters long");
    }
    if !bucket.chars().all(|c| is_lower_alnum(c) || c == '.' || c == '-') {
        return Some("may contain only lowercase letters, digits, `.` and `-`");
    }
    if !bucket.starts_with(is_lower_alnum) || !bucket.ends_with(is_lower_alnum) {
        return Some("must begin and end with a letter or digit");
    }
    if bucket.contains("..") {
        return Some("must not contain two adjacent periods");
    }
    if bucket.starts_with("xn--") || bucket.starts_with("sthree-") {
        return Some("must not start with `xn--` or `sthree-`");
    }
    if bucket.ends_with("-s3alias") || bucket.ends_with("--ol-s3") {
        return Some("must not end with `-s3alias` or `--ol-s3`");
    }
    if bucket.split('.').count() == 4 && bucket.split('.').all(|p| p.parse::<u8>().is_ok()) {
        return Some("must not look like an IP address");
    }
    None
}

/// The guest OS feature types `images.insert` accepts.
const GUEST_OS_FEATURES: &[&str] = &[
    "BARE_METAL_LINUX_COMPATIBLE",
    "GVNIC",
    "IDPF",
    "MULTI_IP_SUBNET",
    "SECURE_BOOT",
    "SEV_CAPABLE",
    "SEV_LIVE_MIGRATABLE",
    "SEV_LIVE_MIGRATABLE_V2",
    "SEV_SNP_CAPABLE",
    "SNP_SVSM_CAPABLE",
    "SUSPEND_RESUME_COMPATIBLE",
    "TDX_CAPABLE",
    "UEFI_COMPATIBLE",
    "VIRTIO_SCSI_MULTIQUEUE",
    "WINDOWS",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gce_names_follow_rfc1035() {
        assert!(is_gce_name("my-image-1-2-3"));
        assert!(is_gce_name("a"));
        for bad in ["", "1abc", "abc-", "ABC", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_gce_name(bad), "{bad}");
        }
        assert!(is_gce_name(&"a".repeat(63)));
    }

    #[test]
    fn s3_bucket_rules() {
        assert_eq!(s3_bucket_problem("my-bucket"), None);
        assert!(s3_bucket_problem("My_Bucket").is_some());
        assert!(s3_bucket_problem("ab").is_some());
        assert!(s3_bucket_problem("a..b").is_some());
        assert!(s3_bucket_problem("192.168.1.1").is_some());
        assert!(s3_bucket_problem("x-s3alias").is_some());
    }

    #[test]
    fn guid_and_region_shapes() {
        assert!(is_guid("00000000-0000-0000-0000-000000000000"));
        assert!(is_guid("{0A000000-0000-0000-0000-00000000000f}"));
        assert!(!is_guid("0000-0000"));
        assert!(is_region_like("eu-central-1"));
        assert!(is_region_like("us-gov-west-1"));
        assert!(!is_region_like("eucentral1"));
        assert!(!is_region_like("eu-central"));
    }
}
