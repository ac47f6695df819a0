//! The outcome of a release run: references as text lines (the Go tool's stdout) and the JSON manifest that
//! `--output json` prints and `--manifest FILE` writes, from which `--retry-failed` re-runs what did not finish.
//!
//! The manifest extends the JSON uplosi printed before without breaking it: `references` keeps its shape; the
//! version, whether it was bumped, and one entry per variant with its status are added.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Provider;
use crate::provider::Reference;

/// Why a manifest could not be read or written.
#[derive(Debug, Error)]
pub enum ReportError {
    /// The file could not be read.
    #[error("cannot read the manifest {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a manifest.
    #[error("{} is not an uplosi manifest: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde said.
        message: String,
    },
    /// The file could not be written.
    #[error("cannot write the manifest {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How a variant ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Uploaded; its references are valid.
    Ok,
    /// Failed or was interrupted; what it created was removed.
    Failed,
    /// Never started (`--fail-fast`, Ctrl-C, or not selected for a retry and not done before).
    Skipped,
}

/// One entry of `references`, the shape uplosi has always printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceEntry {
    /// The variant name (`null` for the unnamed `[base]` variant).
    pub variant: Option<String>,
    /// The provider.
    pub provider: Provider,
    /// The reference.
    pub reference: String,
}

/// One variant's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantReport {
    /// The variant name (`null` for the unnamed `[base]` variant).
    pub variant: Option<String>,
    /// The provider.
    pub provider: Provider,
    /// How it ended.
    pub status: Status,
    /// Its references, in the order printed.
    pub references: Vec<String>,
    /// Reference per region, for providers with regions.
    pub regions: BTreeMap<String, String>,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// More about the references (an OCI artifact's repository, digest and tags; a libvirt volume's key and pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// What the cloud's TPM reports for the image (`{"bank", "pcrs"}`), when measurements were computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<serde_json::Value>,
}

impl VariantReport {
    /// A report for a variant that ended with `status`.
    pub fn new(
        variant: Option<String>,
        provider: Provider,
        status: Status,
        refs: &[Reference],
        error: Option<String>,
    ) -> Self {
        Self {
            variant,
            provider,
            status,
            references: refs.iter().map(|r| r.value.clone()).collect(),
            regions: refs.iter().filter_map(|r| Some((r.region.clone()?, r.value.clone()))).collect(),
            error,
            details: refs.iter().find_map(|r| r.details.clone()),
            attestation: None,
        }
    }
}

/// The whole run's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Every reference of every successful variant, in the order printed.
    pub references: Vec<ReferenceEntry>,
    /// The image version the run uploaded.
    pub version: String,
    /// Whether `-i` incremented the version file(s) (only when every variant succeeded).
    pub version_bumped: bool,
    /// One entry per variant.
    pub variants: Vec<VariantReport>,
    /// The boot check's outcome (`uplosi boot-check --output json` without the event lists), when one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_check: Option<serde_json::Value>,
    /// The PCR values `uplosi measurements` predicts for the image (PCR index to SHA-256 hex), when they were
    /// computed: the reference values to publish next to the image IDs; under `variants`, per variant, what that
    /// cloud's TPM attests with (`{"attestation": {"bank", "pcrs"}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurements: Option<serde_json::Value>,
}

impl Manifest {
    /// A manifest of `variants` for `version`; `references` is derived from them.
    pub fn new(version: String, variants: Vec<VariantReport>) -> Self {
        let references = variants
            .iter()
            .filter(|v| v.status == Status::Ok)
            .flat_map(|v| {
                v.references.iter().map(|r| ReferenceEntry {
                    variant: v.variant.clone(),
                    provider: v.provider,
                    reference: r.clone(),
                })
            })
            .collect();
        Self { references, version, version_bumped: false, variants, boot_check: None, measurements: None }
    }

    /// Whether every variant succeeded.
    pub fn all_ok(&self) -> bool {
        self.variants.iter().all(|v| v.status == Status::Ok)
    }

    /// The references as the Go tool prints them: one per line.
    pub fn text(&self) -> String {
        self.references.iter().map(|r| format!("{}\n", r.reference)).collect()
    }

    /// The manifest as pretty JSON with a final newline.
    pub fn json(&self) -> String {
        // Serialising plain strings, maps and enums cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Reads a manifest written by `--manifest`.
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ReportError::Read { path: path.to_path_buf(), source })?;
        serde_json::from_str(&text).map_err(|e| ReportError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Writes the manifest atomically.
    pub fn write(&self, path: &Path) -> Result<(), ReportError> {
        use std::os::unix::fs::PermissionsExt;
        crate::atomic::write_file(path, self.json().as_bytes(), std::fs::Permissions::from_mode(0o644))
            .map_err(|source| ReportError::Write { path: path.to_path_buf(), source })
    }

    /// The entry of `variant`, if the manifest has one.
    pub fn variant(&self, variant: Option<&str>) -> Option<&VariantReport> {
        self.variants.iter().find(|v| v.variant.as_deref() == variant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_keeps_the_old_references_shape_and_round_trips() {
        let refs = [
            Reference {
                region: Some("eu-west-1".into()),
                value: "arn:aws:ec2:eu-west-1:1:image/ami-1".into(),
                details: None,
            },
            Reference {
                region: Some("us-east-2".into()),
                value: "arn:aws:ec2:us-east-2:1:image/ami-2".into(),
                details: None,
            },
        ];
        let manifest = Manifest::new(
            "1.2.3".into(),
            vec![
                VariantReport::new(Some("aws".into()), Provider::Aws, Status::Ok, &refs, None),
                VariantReport::new(
                    Some("os".into()),
                    Provider::OpenStack,
                    Status::Failed,
                    &[],
                    Some("HTTP 503".into()),
                ),
                VariantReport::new(None, Provider::File, Status::Skipped, &[], Some("--fail-fast".into())),
            ],
        );
        let json: serde_json::Value = serde_json::from_str(&manifest.json()).expect("JSON");
        assert_eq!(
            json["references"],
            serde_json::json!([
                {"variant": "aws", "provider": "aws", "reference": "arn:aws:ec2:eu-west-1:1:image/ami-1"},
                {"variant": "aws", "provider": "aws", "reference": "arn:aws:ec2:us-east-2:1:image/ami-2"}
            ])
        );
        assert_eq!(json["version"], "1.2.3");
        assert_eq!(json["versionBumped"], false);
        assert_eq!(json["variants"][0]["regions"]["us-east-2"], "arn:aws:ec2:us-east-2:1:image/ami-2");
        assert_eq!(json["variants"][1]["status"], "failed");
        assert_eq!(json["variants"][1]["error"], "HTTP 503");
        assert_eq!(json["variants"][2]["variant"], serde_json::Value::Null);
        assert!(json["variants"][0].get("error").is_none());
        assert!(!manifest.all_ok());
        assert_eq!(manifest.text().lines().count(), 2);

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("manifest.json");
        manifest.write(&path).expect("write");
        assert_eq!(Manifest::read(&path).expect("read"), manifest);
        std::fs::write(&path, "{}").expect("write");
        assert!(Manifest::read(&path).unwrap_err().to_string().contains("is not an uplosi manifest"));
    }
}
