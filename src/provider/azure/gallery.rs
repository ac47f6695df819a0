//! The Azure Compute Gallery side: resource paths and request bodies of the gallery, the image definition, the
//! upload disk and the image version, and the checks that an existing gallery or definition matches the config.

use base64::Engine;
use serde_json::{Value, json};

use super::error::AzureError;
use crate::config::AzureConfig;

/// The Go tool's community gallery placeholders, still the defaults (with a warning) so configs keep working.
pub const GO_EULA: &str = "none";
/// See [`GO_EULA`].
pub const GO_PUBLISHER_EMAIL: &str = "test@foo.bar";
/// See [`GO_EULA`].
pub const GO_PUBLISHER_URI: &str = "https://foo.bar";

/// Resource paths of one variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// `/subscriptions/S`.
    pub subscription: String,
    /// `…/resourceGroups/G`.
    pub group: String,
    /// `…/providers/Microsoft.Compute/galleries/N`.
    pub gallery: String,
    /// `…/images/D`.
    pub definition: String,
    /// `…/versions/V`.
    pub version: String,
    /// `…/providers/Microsoft.Compute/disks/N`.
    pub disk: String,
}

impl Paths {
    /// The paths of `z`'s resources for version `version`.
    pub fn new(z: &AzureConfig, version: &str) -> Self {
        let subscription = format!("/subscriptions/{}", z.subscription_id.as_deref().unwrap_or_default());
        let group = format!("{subscription}/resourceGroups/{}", z.resource_group.as_deref().unwrap_or_default());
        let gallery = format!(
            "{group}/providers/Microsoft.Compute/galleries/{}",
            z.shared_image_gallery.as_deref().unwrap_or_default()
        );
        let definition = format!("{gallery}/images/{}", z.image_definition_name);
        Self {
            version: format!("{definition}/versions/{version}"),
            disk: format!("{group}/providers/Microsoft.Compute/disks/{}", z.disk_name),
            subscription,
            group,
            gallery,
            definition,
        }
    }
}

/// The `SecurityType` feature of the image definition for an attestation variant.
pub fn security_type(attestation_variant: &str) -> &'static str {
    match attestation_variant {
        "azure-trustedlaunch" => "TrustedLaunch",
        // azure-sev-snp and azure-tdx: the image can boot as a confidential VM (no VMGS is uploaded).
        _ => "ConfidentialVMSupported",
    }
}

/// ARM's sharing permission for `sharingProfile`.
pub fn permission(sharing_profile: &str) -> &'static str {
    if sharing_profile == "community" { "Community" } else { "Private" }
}

/// The publisher details of a community gallery, with warnings where the Go tool's placeholders stand in.
pub fn community_info(z: &AzureConfig) -> Value {
    let pick = |value: &Option<String>, key: &str, placeholder: &'static str| match value {
        Some(v) if !v.is_empty() => v.clone(),
        _ => {
            tracing::warn!(
                "azure: {key} is not set; using the Go tool's placeholder \"{placeholder}\" in the public community \
                 gallery. Set {key} in [….azure]"
            );
            placeholder.to_string()
        }
    };
    json!({
        "publicNamePrefix": z.sharing_name_prefix.clone().unwrap_or_default(),
        "eula": pick(&z.community_eula, "communityEula", GO_EULA),
        "publisherContact": pick(&z.publisher_email, "publisherEmail", GO_PUBLISHER_EMAIL),
        "publisherUri": pick(&z.publisher_uri, "publisherUri", GO_PUBLISHER_URI),
    })
}

/// `PUT …/galleries/N`.
pub fn gallery_body(z: &AzureConfig) -> Value {
    let mut sharing = json!({"permissions": permission(&z.sharing_profile)});
    if z.sharing_profile == "community" {
        sharing["communityGalleryInfo"] = community_info(z);
    }
    json!({
        "location": z.location,
        "properties": {"description": "", "sharingProfile": sharing},
    })
}

/// Checks that an existing gallery is shared the way the config says.
pub fn check_gallery(z: &AzureConfig, gallery: &Value) -> Result<(), AzureError> {
    let existing =
        gallery.pointer("/properties/sharingProfile/permissions").and_then(Value::as_str).unwrap_or("Private");
    let wanted = permission(&z.sharing_profile);
    if !existing.eq_ignore_ascii_case(wanted) {
        return Err(AzureError::Mismatch {
            what: format!("gallery \"{}\"", z.shared_image_gallery.as_deref().unwrap_or_default()),
            key: "sharing".into(),
            existing: existing.into(),
            wanted: wanted.into(),
            hint: "Azure cannot change a gallery's sharing in place; set sharingProfile to match, or use another \
                   sharedImageGallery"
                .into(),
        });
    }
    Ok(())
}

/// Whether community sharing is on (the `share` action was done).
pub fn community_enabled(gallery: &Value) -> bool {
    gallery.pointer("/properties/sharingProfile/communityGalleryInfo/communityGalleryEnabled").and_then(Value::as_bool)
        == Some(true)
}

/// `PUT …/images/D`.
pub fn definition_body(z: &AzureConfig) -> Value {
    json!({
        "location": z.location,
        "properties": {
            "identifier": {"publisher": z.publisher, "offer": z.offer, "sku": z.sku},
            "osType": "Linux",
            "osState": "Generalized",
            "hyperVGeneration": "V2",
            "architecture": z.architecture,
            "features": [{"name": "SecurityType", "value": security_type(&z.attestation_variant)}],
        },
    })
}

/// Checks that an existing image definition has the configured security type, architecture and identifier.
pub fn check_definition(z: &AzureConfig, definition: &Value) -> Result<(), AzureError> {
    let what = format!("image definition \"{}\"", z.image_definition_name);
    let hint = "an image definition cannot change these; use another imageDefinitionName or fix the config";
    let mismatch = |key: &str, existing: String, wanted: String| AzureError::Mismatch {
        what: what.clone(),
        key: key.into(),
        existing,
        wanted,
        hint: hint.into(),
    };
    let properties = definition.get("properties").unwrap_or(&Value::Null);
    let security = properties
        .get("features")
        .and_then(Value::as_array)
        .and_then(|features| features.iter().find(|f| f.get("name").and_then(Value::as_str) == Some("SecurityType")))
        .and_then(|f| f.get("value").and_then(Value::as_str))
        .unwrap_or("Standard");
    let wanted_security = security_type(&z.attestation_variant);
    if !security.eq_ignore_ascii_case(wanted_security) {
        return Err(mismatch("SecurityType", format!("\"{security}\""), format!("\"{wanted_security}\"")));
    }
    let architecture = properties.get("architecture").and_then(Value::as_str).unwrap_or("x64");
    if !architecture.eq_ignore_ascii_case(&z.architecture) {
        return Err(mismatch("architecture", format!("\"{architecture}\""), format!("\"{}\"", z.architecture)));
    }
    let identifier = properties.get("identifier").unwrap_or(&Value::Null);
    let field = |k: &str| identifier.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let existing = (field("publisher"), field("offer"), field("sku"));
    if existing != (z.publisher.clone(), z.offer.clone(), z.sku.clone()) {
        return Err(mismatch(
            "identifier (publisher/offer/sku)",
            format!("{}/{}/{}", existing.0, existing.1, existing.2),
            format!("{}/{}/{}", z.publisher, z.offer, z.sku),
        ));
    }
    Ok(())
}

/// `PUT …/disks/N` for a direct upload of `upload_size` bytes (the whole fixed VHD).
pub fn disk_body(z: &AzureConfig, upload_size: u64) -> Value {
    json!({
        "location": z.location,
        "sku": {"name": "Standard_LRS"},
        "properties": {
            "osType": "Linux",
            "hyperVGeneration": "V2",
            "creationData": {"createOption": "Upload", "uploadSizeBytes": upload_size},
        },
    })
}

/// `PUT …/versions/V`, straight from the uploaded disk (no managed image in between).
pub fn version_body(z: &AzureConfig, disk_id: &str) -> Result<Value, AzureError> {
    let location = z.location.clone().unwrap_or_default();
    let regions: Vec<Value> = std::iter::once(&location)
        .chain(&z.replication_regions)
        .map(|name| {
            json!({
                "name": name,
                "regionalReplicaCount": z.replica_count,
                "storageAccountType": z.storage_account_type,
            })
        })
        .collect();
    let mut body = json!({
        "location": location,
        "properties": {
            "publishingProfile": {
                "targetRegions": regions,
                "replicaCount": z.replica_count,
                "storageAccountType": z.storage_account_type,
                "replicationMode": "Full",
                "excludeFromLatest": z.exclude_from_latest,
            },
            "storageProfile": {"osDiskImage": {"hostCaching": "ReadOnly", "source": {"id": disk_id}}},
        },
    });
    if !z.additional_signatures.is_empty() {
        let db = z
            .additional_signatures
            .iter()
            .map(|entry| {
                crate::config::certificate::signature_der(entry)
                    .map(
                        |der| json!({"type": "x509", "value": [base64::engine::general_purpose::STANDARD.encode(der)]}),
                    )
                    .ok_or_else(|| AzureError::Signature(entry.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        body["properties"]["securityProfile"] = json!({"uefiSettings": {"additionalSignatures": {"db": db}}});
    }
    Ok(body)
}

/// The community reference `/CommunityGalleries/PUBLICNAME/Images/DEF/Versions/VER`, if the gallery has a public
/// name.
pub fn community_reference(gallery: &Value, definition: &str, version: &str) -> Option<String> {
    let name =
        gallery.pointer("/properties/sharingProfile/communityGalleryInfo/publicNames/0").and_then(Value::as_str)?;
    Some(format!("/CommunityGalleries/{name}/Images/{definition}/Versions/{version}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AzureConfig {
        AzureConfig {
            subscription_id: Some("00000000-0000-0000-0000-000000000001".into()),
            location: Some("eastus".into()),
            replication_regions: vec!["westeurope".into(), "northeurope".into()],
            resource_group: Some("rg".into()),
            attestation_variant: "azure-tdx".into(),
            shared_image_gallery: Some("gal".into()),
            sharing_profile: "private".into(),
            sharing_name_prefix: None,
            image_definition_name: "podvm".into(),
            offer: "Linux".into(),
            sku: "podvm-1".into(),
            publisher: "Contoso".into(),
            disk_name: "podvm-1.2.3".into(),
            additional_signatures: vec![],
            community_eula: None,
            publisher_email: None,
            publisher_uri: None,
            architecture: "x64".into(),
            replica_count: 2,
            storage_account_type: "Standard_ZRS".into(),
            exclude_from_latest: true,
            replace: true,
            resource_manager_endpoint: "https://management.azure.com".into(),
        }
    }

    #[test]
    fn version_targets_every_region_from_the_disk() -> Result<(), AzureError> {
        let body = version_body(&config(), "/subscriptions/x/disks/d")?;
        let regions = &body["properties"]["publishingProfile"]["targetRegions"];
        let names: Vec<&str> = regions.as_array().into_iter().flatten().filter_map(|r| r["name"].as_str()).collect();
        assert_eq!(names, ["eastus", "westeurope", "northeurope"]);
        assert_eq!(regions[1]["regionalReplicaCount"], 2);
        assert_eq!(regions[2]["storageAccountType"], "Standard_ZRS");
        assert_eq!(body["properties"]["storageProfile"]["osDiskImage"]["source"]["id"], "/subscriptions/x/disks/d");
        assert_eq!(body["properties"]["publishingProfile"]["excludeFromLatest"], true);
        assert!(body["properties"].get("securityProfile").is_none());
        Ok(())
    }

    #[test]
    fn definitions_that_differ_are_named() {
        let z = config();
        let mut existing = definition_body(&z);
        assert!(check_definition(&z, &existing).is_ok());
        existing["properties"]["features"][0]["value"] = "TrustedLaunch".into();
        let err = check_definition(&z, &existing).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("\"TrustedLaunch\"") && err.contains("\"ConfidentialVMSupported\""), "{err}");
        let mut arm = definition_body(&z);
        arm["properties"]["architecture"] = "Arm64".into();
        assert!(check_definition(&z, &arm).is_err());
    }

    #[test]
    fn security_types_follow_the_attestation_variant() {
        assert_eq!(security_type("azure-sev-snp"), "ConfidentialVMSupported");
        assert_eq!(security_type("azure-tdx"), "ConfidentialVMSupported");
        assert_eq!(security_type("azure-trustedlaunch"), "TrustedLaunch");
    }

    #[test]
    fn community_reference_uses_the_first_public_name() {
        let gallery =
            json!({"properties": {"sharingProfile": {"communityGalleryInfo": {"publicNames": ["pfx-1a2b"]}}}});
        assert_eq!(
            community_reference(&gallery, "podvm", "1.2.3").as_deref(),
            Some("/CommunityGalleries/pfx-1a2b/Images/podvm/Versions/1.2.3")
        );
        assert_eq!(community_reference(&json!({}), "d", "1.0.0"), None);
    }
}
