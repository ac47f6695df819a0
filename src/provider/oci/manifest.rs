//! The OCI 1.1 documents uplosi pushes, laid out as `oras push` and `oras attach` lay them out: an image manifest
//! with an `artifactType`, the empty config and one layer titled with its file name; a referrer (the measurements)
//! whose `subject` is that manifest; and the `sha256-<hex>` tag index that lists referrers where a registry has no
//! referrers API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An OCI image manifest.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index.
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The empty config of artifacts.
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// oras' layer media type for a file.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// The artifact type of uplosi's measurements referrer.
pub const MEASUREMENTS_TYPE: &str = "application/vnd.uplosi.measurements.v1+json";
/// The annotation naming a layer's file.
pub const TITLE: &str = "org.opencontainers.image.title";
/// The annotation with the creation time.
pub const CREATED: &str = "org.opencontainers.image.created";
/// The annotation with the SHA-256 of what a compressed layer holds (the qcow2 of a `qcow2.tar.xz`), so a later
/// run can find the compressed blob without compressing again.
pub const PAYLOAD: &str = "dev.uplosi.payload.digest";

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type.
    pub media_type: String,
    /// `sha256:…`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// The artifact type (in an index's descriptors of referrers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Inline content (the empty config's `e30=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl Descriptor {
    /// A descriptor of `content`.
    pub fn of(media_type: &str, content: &[u8]) -> Self {
        Self {
            media_type: media_type.to_string(),
            digest: digest(content),
            size: content.len() as u64,
            artifact_type: None,
            annotations: BTreeMap::new(),
            data: None,
        }
    }

    /// The empty config `{}` with its content inline, as oras writes it.
    pub fn empty_config() -> Self {
        Self { data: Some("e30=".into()), ..Self::of(EMPTY, b"{}") }
    }
}

/// `sha256:<hex>` of `content`.
pub fn digest(content: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(content)))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An image manifest (also the shape of an artifact manifest in OCI 1.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// 2.
    pub schema_version: u32,
    /// [`MANIFEST`].
    pub media_type: String,
    /// The artifact's type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config.
    pub config: Descriptor,
    /// The layers.
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// An artifact of `artifact_type` with the one `layer`.
    pub fn artifact(artifact_type: &str, layer: Descriptor, annotations: BTreeMap<String, String>) -> Self {
        Self {
            schema_version: 2,
            media_type: MANIFEST.to_string(),
            artifact_type: Some(artifact_type.to_string()),
            config: Descriptor::empty_config(),
            layers: vec![layer],
            subject: None,
            annotations,
        }
    }

    /// The bytes pushed (and so digested).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An image index (the referrers tag schema's list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// 2.
    pub schema_version: u32,
    /// [`INDEX`].
    pub media_type: String,
    /// The referrers.
    pub manifests: Vec<Descriptor>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self { schema_version: 2, media_type: INDEX.to_string(), manifests: Vec::new() }
    }

    /// The bytes pushed.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

/// The tag the referrers tag schema lists `digest`'s referrers under: `sha256-<hex>`.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// Now, as RFC 3339 UTC (`2026-12-08T04:05:06Z`), for `org.opencontainers.image.created`.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_config_is_orass() {
        let config = Descriptor::empty_config();
        assert_eq!(config.digest, "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
        assert_eq!((config.size, config.data.as_deref()), (2, Some("e30=")));
    }

    #[test]
    fn an_artifact_manifest_has_orass_shape() {
        let mut layer = Descriptor::of(LAYER_TAR, b"qcow2 bytes");
        layer.annotations.insert(TITLE.into(), "podvm.qcow2".into());
        let annotations = BTreeMap::from([(CREATED.to_string(), now_rfc3339())]);
        let manifest = Manifest::artifact("application/vnd.unknown.artifact.v1", layer, annotations);
        let json: serde_json::Value = serde_json::from_slice(&manifest.to_bytes()).unwrap_or_default();
        assert_eq!(json["schemaVersion"], 2);
        assert_eq!(json["mediaType"], MANIFEST);
        assert_eq!(json["artifactType"], "application/vnd.unknown.artifact.v1");
        assert_eq!(json["config"]["mediaType"], EMPTY);
        assert_eq!(json["layers"][0]["annotations"][TITLE], "podvm.qcow2");
        assert!(json.get("subject").is_none());
        assert_eq!(json["annotations"][CREATED].as_str().map(str::len), Some(20));
        assert_eq!(referrers_tag("sha256:abcd"), "sha256-abcd");
    }
}
