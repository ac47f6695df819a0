//! Every key uplosi.conf accepts, its type, whether it is a template, and its default.
//!
//! This table is the single source of truth: the loader checks keys and types against it, the resolver fills
//! defaults from it, and a test checks that `uplosi.conf.example` documents every entry.

/// The type a key's value must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A TOML string.
    String,
    /// `true` or `false`.
    Bool,
    /// A TOML integer.
    Integer,
    /// An array of strings.
    StringList,
    /// A table of string values.
    StringMap,
}

impl Kind {
    /// How the type is named in error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::Bool => "a boolean (true or false)",
            Kind::Integer => "an integer",
            Kind::StringList => "an array of strings",
            Kind::StringMap => "a table of strings",
        }
    }
}

/// One key of a section.
#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    /// The key as written in uplosi.conf (camelCase, as in the Go tool).
    pub name: &'static str,
    /// The value's type.
    pub kind: Kind,
    /// Whether the value is rendered as a template.
    pub template: bool,
    /// The default, in TOML syntax, or `None` when the key has no default.
    pub default: Option<&'static str>,
}

const fn key(name: &'static str, kind: Kind) -> KeySpec {
    KeySpec { name, kind, template: false, default: None }
}

const fn tmpl(name: &'static str, default: Option<&'static str>) -> KeySpec {
    KeySpec { name, kind: Kind::String, template: true, default }
}

const fn with_default(name: &'static str, kind: Kind, default: &'static str) -> KeySpec {
    KeySpec { name, kind, template: false, default: Some(default) }
}

/// A section of a `[base]` or `[variant.NAME]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    /// Keys directly in `[base]` / `[variant.NAME]`.
    Common,
    /// `[….aws]`
    Aws,
    /// `[….azure]`
    Azure,
    /// `[….gcp]`
    Gcp,
    /// `[….openstack]`
    OpenStack,
    /// `[….file]`
    File,
    /// `[….oci]`
    Oci,
    /// `[….libvirt]`
    Libvirt,
}

impl Section {
    /// The provider sections, in the order they appear in output.
    pub const PROVIDERS: [Section; 7] =
        [Section::Aws, Section::Azure, Section::Gcp, Section::OpenStack, Section::File, Section::Oci, Section::Libvirt];

    /// The sub-table name (`aws`, …), empty for [`Section::Common`].
    pub fn table_name(self) -> &'static str {
        match self {
            Section::Common => "",
            Section::Aws => "aws",
            Section::Azure => "azure",
            Section::Gcp => "gcp",
            Section::OpenStack => "openstack",
            Section::File => "file",
            Section::Oci => "oci",
            Section::Libvirt => "libvirt",
        }
    }

    /// Finds a provider section by its sub-table name.
    pub fn from_table_name(name: &str) -> Option<Section> {
        Section::PROVIDERS.into_iter().find(|s| s.table_name() == name)
    }

    /// The keys this section accepts.
    pub fn keys(self) -> &'static [KeySpec] {
        match self {
            Section::Common => COMMON_KEYS,
            Section::Aws => AWS_KEYS,
            Section::Azure => AZURE_KEYS,
            Section::Gcp => GCP_KEYS,
            Section::OpenStack => OPENSTACK_KEYS,
            Section::File => FILE_KEYS,
            Section::Oci => OCI_KEYS,
            Section::Libvirt => LIBVIRT_KEYS,
        }
    }

    /// Looks a key up.
    pub fn spec(self, name: &str) -> Option<&'static KeySpec> {
        self.keys().iter().find(|k| k.name == name)
    }
}

/// Keys of `[base]` and `[variant.NAME]` themselves.
pub const COMMON_KEYS: &[KeySpec] = &[
    key("provider", Kind::String),
    with_default("imageVersion", Kind::String, "\"0.0.0\""),
    key("imageVersionFile", Kind::String),
    key("name", Kind::String),
    tmpl("measurementsFile", None),
    with_default("measurementsFormat", Kind::String, "\"uplosi\""),
    with_default("bootCheck", Kind::Bool, "false"),
    key("bootCheckExpect", Kind::String),
    with_default("bootCheckTimeout", Kind::String, "\"5m\""),
];

/// Keys of `[….aws]`.
pub const AWS_KEYS: &[KeySpec] = &[
    key("region", Kind::String),
    with_default("replicationRegions", Kind::StringList, "[]"),
    tmpl("amiName", Some("\"{{.Name}}-{{.Version}}\"")),
    tmpl("amiDescription", Some("\"{{.Name}}-{{.Version}}\"")),
    tmpl("bucket", None),
    key("bucketLocationConstraint", Kind::String),
    tmpl("blobName", Some("\"{{.Name}}-{{.Version}}.raw\"")),
    tmpl("snapshotName", Some("\"{{.Name}}-{{.Version}}\"")),
    with_default("publish", Kind::Bool, "false"),
    with_default("uploadMethod", Kind::String, "\"ebs-direct\""),
    with_default("architecture", Kind::String, "\"x86_64\""),
    with_default("bootMode", Kind::String, "\"uefi\""),
    with_default("tpmSupport", Kind::String, "\"v2.0\""),
    with_default("imdsSupport", Kind::String, "\"v2.0\""),
    key("uefiData", Kind::String),
    with_default("volumeType", Kind::String, "\"gp3\""),
    with_default("tags", Kind::StringMap, "{}"),
    with_default("replace", Kind::Bool, "true"),
    with_default("launchPermissions", Kind::StringList, "[]"),
    tmpl("ssmParameter", None),
];

/// Keys of `[….azure]`.
pub const AZURE_KEYS: &[KeySpec] = &[
    key("subscriptionID", Kind::String),
    key("location", Kind::String),
    with_default("replicationRegions", Kind::StringList, "[]"),
    tmpl("resourceGroup", None),
    tmpl("attestationVariant", Some("\"azure-sev-snp\"")),
    tmpl("sharedImageGallery", None),
    tmpl("sharingProfile", Some("\"private\"")),
    tmpl("sharingNamePrefix", None),
    tmpl("imageDefinitionName", Some("\"{{.Name}}\"")),
    tmpl("offer", Some("\"Linux\"")),
    tmpl("sku", Some("\"{{.Name}}-{{.VersionMajor}}\"")),
    tmpl("publisher", Some("\"Contoso\"")),
    tmpl("diskName", Some("\"{{.Name}}-{{.Version}}\"")),
    with_default("additionalSignatures", Kind::StringList, "[]"),
    // Community gallery publisher details; unset, the Go tool's placeholders are used with a warning.
    key("communityEula", Kind::String),
    key("publisherEmail", Kind::String),
    key("publisherUri", Kind::String),
    with_default("architecture", Kind::String, "\"x64\""),
    with_default("replicaCount", Kind::Integer, "1"),
    with_default("storageAccountType", Kind::String, "\"Standard_LRS\""),
    with_default("excludeFromLatest", Kind::Bool, "false"),
    with_default("replace", Kind::Bool, "true"),
    with_default("resourceManagerEndpoint", Kind::String, "\"https://management.azure.com\""),
];

/// Keys of `[….gcp]`.
pub const GCP_KEYS: &[KeySpec] = &[
    key("project", Kind::String),
    key("location", Kind::String),
    tmpl("imageName", Some("\"{{.Name}}-{{replaceAll .Version \\\".\\\" \\\"-\\\"}}\"")),
    tmpl("imageFamily", Some("\"{{.Name}}\"")),
    tmpl("bucket", None),
    tmpl("blobName", Some("\"{{.Name}}-{{replaceAll .Version \\\".\\\" \\\"-\\\"}}.tar.gz\"")),
    with_default("publish", Kind::Bool, "false"),
    with_default("architecture", Kind::String, "\"X86_64\""),
    // The Go tool's set; a list in the config replaces it.
    with_default(
        "guestOsFeatures",
        Kind::StringList,
        "[\"GVNIC\", \"SEV_CAPABLE\", \"SEV_SNP_CAPABLE\", \"VIRTIO_SCSI_MULTIQUEUE\", \"UEFI_COMPATIBLE\"]",
    ),
    with_default("labels", Kind::StringMap, "{}"),
    with_default("description", Kind::String, "\"\""),
    with_default("storageLocations", Kind::StringList, "[]"),
    with_default("replace", Kind::Bool, "true"),
    with_default("deprecateOlder", Kind::Bool, "false"),
    with_default("storageEndpoint", Kind::String, "\"https://storage.googleapis.com\""),
    with_default("computeEndpoint", Kind::String, "\"https://compute.googleapis.com\""),
];

/// Keys of `[….openstack]`.
pub const OPENSTACK_KEYS: &[KeySpec] = &[
    key("cloud", Kind::String),
    tmpl("imageName", Some("\"{{.Name}}-{{.Version}}\"")),
    // Not the Go tool's "public": Glance lets only admins publicize images, and nothing is public unless asked.
    with_default("visibility", Kind::String, "\"private\""),
    with_default("hidden", Kind::Bool, "false"),
    with_default("tags", Kind::StringList, "[]"),
    with_default("minDiskGB", Kind::Integer, "0"),
    with_default("minRamMB", Kind::Integer, "0"),
    with_default("protected", Kind::Bool, "false"),
    with_default("properties", Kind::StringMap, "{}"),
    with_default("diskFormat", Kind::String, "\"qcow2\""),
    with_default("replace", Kind::Bool, "true"),
    with_default("architecture", Kind::String, "\"x86_64\""),
    with_default("timeout", Kind::String, "\"30m\""),
];

/// Keys of `[….file]`: a local export (e.g. into a libvirt directory pool).
pub const FILE_KEYS: &[KeySpec] = &[
    tmpl("path", None),
    with_default("format", Kind::String, "\"qcow2\""),
    with_default("replace", Kind::Bool, "false"),
    with_default("mode", Kind::String, "\"0644\""),
];

/// Keys of `[….oci]`: an OCI registry, the artifact laid out as `oras push` lays it out.
pub const OCI_KEYS: &[KeySpec] = &[
    tmpl("repository", None),
    KeySpec { name: "tags", kind: Kind::StringList, template: true, default: Some("[\"{{.Version}}\"]") },
    with_default("format", Kind::String, "\"qcow2\""),
    tmpl("fileName", None),
    with_default("artifactType", Kind::String, "\"application/vnd.unknown.artifact.v1\""),
    KeySpec { name: "annotations", kind: Kind::StringMap, template: true, default: Some("{}") },
    with_default("plainHTTP", Kind::Bool, "false"),
    key("attachMeasurements", Kind::Bool),
    tmpl("mountFrom", None),
    with_default("replace", Kind::Bool, "true"),
];

/// Keys of `[….libvirt]`: a volume in a libvirt storage pool.
pub const LIBVIRT_KEYS: &[KeySpec] = &[
    key("uri", Kind::String),
    with_default("pool", Kind::String, "\"default\""),
    tmpl("volumeName", Some("\"{{.Name}}-{{.Version}}.qcow2\"")),
    with_default("format", Kind::String, "\"qcow2\""),
    key("capacity", Kind::String),
    with_default("replace", Kind::Bool, "true"),
];

/// The closest known name to `unknown`, if one is close enough to be a likely typo.
pub fn suggest<'a>(unknown: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = unknown.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            let other = c.to_ascii_lowercase();
            // Jaro-Winkler ranks long keys well; a single edit (swapped letters included) catches short ones.
            let close = strsim::damerau_levenshtein(&lower, &other) <= 1;
            let score = strsim::jaro_winkler(&lower, &other) + if close { 1.0 } else { 0.0 };
            (score, c)
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestion_finds_typos_but_not_unrelated_words() {
        assert_eq!(suggest("regoin", AWS_KEYS.iter().map(|k| k.name)), Some("region"));
        assert_eq!(suggest("subscriptionId", AZURE_KEYS.iter().map(|k| k.name)), Some("subscriptionID"));
        assert_eq!(
            suggest("bucketRegionConstraint", AWS_KEYS.iter().map(|k| k.name)),
            Some("bucketLocationConstraint")
        );
        assert_eq!(suggest("zzzz", AWS_KEYS.iter().map(|k| k.name)), None);
    }

    #[test]
    fn every_default_is_valid_toml_of_its_kind() {
        for section in [Section::Common].into_iter().chain(Section::PROVIDERS) {
            for spec in section.keys() {
                if let Some(default) = spec.default {
                    let doc = format!("v = {default}");
                    let table: toml::Table = toml::from_str(&doc).expect(spec.name);
                    let v = &table["v"];
                    let ok = match spec.kind {
                        Kind::String => v.is_str(),
                        Kind::Bool => v.is_bool(),
                        Kind::Integer => v.is_integer(),
                        Kind::StringList => v.is_array(),
                        Kind::StringMap => v.is_table(),
                    };
                    assert!(ok, "default of {} has the wrong type", spec.name);
                }
            }
        }
    }
}
