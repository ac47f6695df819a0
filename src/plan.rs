//! What an upload will do for each variant: the `--dry-run` output in text and JSON.

use std::path::Path;

use serde::Serialize;

use crate::config::{Provider, VariantConfig};

/// The plan of one variant: its rendered configuration and the steps an upload takes.
#[derive(Debug, Serialize)]
pub struct VariantPlan<'a> {
    /// The rendered configuration (serialized flat into this object).
    #[serde(flatten)]
    pub config: &'a VariantConfig,
    /// Human-readable steps, in order.
    pub steps: Vec<String>,
}

/// The whole plan, as printed by `--dry-run --output json`.
#[derive(Debug, Serialize)]
pub struct Plan<'a> {
    /// One entry per enabled variant, sorted by name.
    pub variants: Vec<VariantPlan<'a>>,
}

/// Builds the plan for `variants`; `image` is shown in the steps. With `boot_check` (its timeout), every variant's
/// steps start with the boot check that runs once, before any upload.
pub fn plan<'a>(variants: &'a [VariantConfig], image: &Path, boot_check: Option<&str>) -> Plan<'a> {
    let boot = boot_check.map(|timeout| {
        format!(
            "boot {} under OVMF with a software TPM (uplosi boot-check), once for the run and before any upload: it \
             must come up within {timeout} with the predicted PCR measurements, or nothing is uploaded",
            image.display()
        )
    });
    let variants = variants
        .iter()
        .map(|cfg| {
            let mut steps = steps(cfg, image);
            if let Some(boot) = &boot {
                steps.insert(usize::from(cfg.measurements_file.is_some()), boot.clone());
            }
            VariantPlan { config: cfg, steps }
        })
        .collect();
    Plan { variants }
}

fn list(items: &[String]) -> String {
    items.join(", ")
}

/// The steps for one variant.
pub fn steps(cfg: &VariantConfig, image: &Path) -> Vec<String> {
    let image = image.display();
    let version = cfg.image_version;
    let mut s = Vec::new();
    if let Some(file) = &cfg.measurements_file {
        s.push(format!(
            "write the TPM PCR measurements of {image}'s UKI to {} as {}",
            file.display(),
            cfg.measurements_format
        ));
    }
    match cfg.provider {
        Provider::Aws => {
            let a = &cfg.aws;
            let region = a.region.as_deref().unwrap_or_default();
            if a.upload_method == "import-snapshot" {
                let bucket = a.bucket.as_deref().unwrap_or_default();
                s.push(format!("upload {image} to s3://{bucket}/{} (parallel multipart)", a.blob_name));
                s.push(format!(
                    "import it as EBS snapshot \"{}\" in {region}, then delete the object",
                    a.snapshot_name
                ));
            } else {
                s.push(format!(
                    "upload {image} as EBS snapshot \"{}\" in {region} with the EBS direct APIs (holes and zero blocks skipped)",
                    a.snapshot_name
                ));
            }
            s.push(format!(
                "register AMI \"{}\" (\"{}\") in {region}, replacing an AMI of the same name owned by this account",
                a.ami_name, a.ami_description
            ));
            if !a.replication_regions.is_empty() {
                s.push(format!(
                    "copy the AMI to {} in parallel and wait until available",
                    list(&a.replication_regions)
                ));
            }
            s.push(if a.publish {
                "publish: grant launch permission to all AWS accounts".to_string()
            } else {
                "keep the AMI private (publish = false)".to_string()
            });
            if !a.launch_permissions.is_empty() {
                s.push(format!("share with {}", list(&a.launch_permissions)));
            }
            if let Some(parameter) = &a.ssm_parameter {
                s.push(format!("set SSM parameter {parameter} to the AMI ID in every region"));
            }
            s.push("print the AMI ARN of every region".to_string());
        }
        Provider::Azure => {
            let z = &cfg.azure;
            let rg = z.resource_group.as_deref().unwrap_or_default();
            let location = z.location.as_deref().unwrap_or_default();
            s.push(format!(
                "check the Entra ID credentials, subscription {} and resource group \"{rg}\" at {}",
                z.subscription_id.as_deref().unwrap_or_default(),
                z.resource_manager_endpoint
            ));
            s.push(format!(
                "ensure gallery \"{}\" in {location} (sharing: {}) and image definition \"{}\" ({}/{}/{}, {}, {}, {})",
                z.shared_image_gallery.as_deref().unwrap_or_default(),
                z.sharing_profile,
                z.image_definition_name,
                z.publisher,
                z.offer,
                z.sku,
                crate::provider::azure::gallery::security_type(&z.attestation_variant),
                z.architecture,
                "Generalized Linux, HyperV V2"
            ));
            if z.replace {
                s.push(format!("delete an existing version {version} and a leftover disk \"{}\"", z.disk_name));
            } else {
                s.push(format!("stop if version {version} or disk \"{}\" exists (replace = false)", z.disk_name));
            }
            s.push(format!(
                "create upload disk \"{}\" and write {image} as a fixed VHD into it (data pages only, parallel Put \
                 Page of at most 4 MiB with Content-MD5, footer last)",
                z.disk_name
            ));
            let mut regions = vec![location.to_string()];
            regions.extend(z.replication_regions.iter().cloned());
            s.push(format!(
                "create gallery image version {version} from the disk in {} ({} replica(s) each, {}{})",
                list(&regions),
                z.replica_count,
                z.storage_account_type,
                if z.exclude_from_latest { ", excluded from latest" } else { "" }
            ));
            if !z.additional_signatures.is_empty() {
                s.push(format!("add {} UEFI db certificate(s)", z.additional_signatures.len()));
            }
            s.push(format!("revoke access to and delete the disk \"{}\"", z.disk_name));
            s.push(if z.sharing_profile == "community" {
                "print the community gallery image version ID".to_string()
            } else {
                "print the gallery image version ID".to_string()
            });
        }
        Provider::Gcp => {
            let g = &cfg.gcp;
            let bucket = g.bucket.as_deref().unwrap_or_default();
            s.push(format!("convert {image} to a GCE tar.gz (sparse disk.raw, size rounded up to a whole GiB)"));
            s.push(format!("upload to gs://{bucket}/{}", g.blob_name));
            // Empty is Compute Engine's default, as with the Go tool: the multi-region nearest the archive's bucket.
            let locations = if g.storage_locations.is_empty() {
                "the multi-region nearest the bucket".to_string()
            } else {
                list(&g.storage_locations)
            };
            s.push(format!(
                "create image \"{}\" in family \"{}\" in project {} ({}, features {}, storage location {locations}){}",
                g.image_name,
                g.image_family,
                g.project.as_deref().unwrap_or_default(),
                g.architecture,
                list(&g.guest_os_features),
                if g.replace { ", replacing an image of the same name" } else { ", stopping if the name is taken" }
            ));
            if g.deprecate_older {
                s.push(format!("deprecate the other READY images of family \"{}\"", g.image_family));
            }
            s.push(if g.publish {
                "publish: grant roles/compute.imageUser to allAuthenticatedUsers".to_string()
            } else {
                "keep the image private (publish = false)".to_string()
            });
            s.push(format!("delete gs://{bucket}/{}", g.blob_name));
            s.push("print the image path".to_string());
        }
        Provider::OpenStack => {
            let o = &cfg.openstack;
            let cloud = o.cloud.clone().or_else(|| std::env::var("OS_CLOUD").ok()).unwrap_or_default();
            s.push(format!("authenticate with cloud \"{cloud}\" from clouds.yaml and find its image endpoint"));
            s.push(if o.replace {
                format!("delete an existing image named \"{}\" of this project", o.image_name)
            } else {
                format!("stop if an image named \"{}\" exists (replace = false)", o.image_name)
            });
            s.push(format!(
                "create image \"{}\" ({}, bare, {}, hidden {}, min disk {} GB, min RAM {} MB, tags [{}])",
                o.image_name,
                o.disk_format,
                o.architecture,
                o.hidden,
                o.min_disk_gb,
                o.min_ram_mb,
                o.tags.join(", ")
            ));
            s.push(if o.disk_format == "qcow2" {
                format!("stream {image} as qcow2 (data clusters only) to Glance, checking its sha512 and md5")
            } else {
                format!("stream {image} as raw to Glance, checking its sha512 and md5")
            });
            s.push(format!("wait up to {} for the image to become active", o.timeout));
            s.push(format!("set visibility {} and protected {}", o.visibility, o.protected));
            s.push("print the Glance image ID".to_string());
        }
        Provider::File => {
            let f = &cfg.file;
            let path = f.path.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
            s.push(format!(
                "convert {image} to {} at {path} (mode {}, written under a temporary name and renamed when complete)",
                f.format, f.mode
            ));
            s.push(if f.replace {
                "replace the file if it exists (replace = true)".to_string()
            } else {
                "refuse to run if the file exists (replace = false)".to_string()
            });
            s.push("print the absolute path".to_string());
        }
        Provider::Oci => {
            let o = &cfg.oci;
            s.push(format!(
                "log in to the registry of {} with the credentials of oras/skopeo/podman/docker",
                o.repository
            ));
            s.push(if o.replace {
                format!("move existing tags {} to the new artifact (replace = true)", o.tags.join(", "))
            } else {
                format!("stop if a tag of {} exists (replace = false)", o.tags.join(", "))
            });
            let compression =
                if o.format == "qcow2.tar.xz" { ", as the only member of a tar, xz on every core" } else { "" };
            s.push(format!(
                "convert {image} to {}{compression} and stream it into one blob upload (chunked PATCH), unless the \
                 repository{} has the blob",
                if o.format == "raw" { "raw" } else { "qcow2" },
                o.mount_from.as_deref().map(|m| format!(" or {m}")).unwrap_or_default()
            ));
            s.push(format!(
                "push the manifest (artifactType {}, layer titled \"{}\") and tag it {}",
                o.artifact_type,
                o.file_name,
                o.tags.join(", ")
            ));
            if o.attach_measurements != Some(false) {
                s.push("attach the measurements as a referrer, when they are computed".to_string());
            }
            s.push("print REPOSITORY@sha256:DIGEST".to_string());
        }
        Provider::Libvirt => {
            let l = &cfg.libvirt;
            s.push(format!("connect to {} and find storage pool \"{}\"", l.uri, l.pool));
            s.push(if l.replace {
                format!("delete an existing volume \"{}\" (replace = true)", l.volume_name)
            } else {
                format!("stop if volume \"{}\" exists (replace = false)", l.volume_name)
            });
            let capacity = if l.capacity.is_empty() { "the image's size".to_string() } else { l.capacity.clone() };
            s.push(format!(
                "create volume \"{}\" ({}, capacity {capacity}) and upload {image} into it through a sparse stream \
                 (zero runs as holes)",
                l.volume_name, l.format
            ));
            s.push("refresh the pool, check the volume's format and capacity, print its path".to_string());
        }
    }
    s
}

/// Renders the plan as text for a terminal.
pub fn render_text(plan: &Plan<'_>) -> String {
    let mut out = String::new();
    for v in &plan.variants {
        let c = v.config;
        let title = match &c.variant {
            Some(name) => format!("variant {name}"),
            None => "base".to_string(),
        };
        out.push_str(&format!("{title}: {} {} on {}\n", c.name, c.image_version, c.provider.as_str()));
        if let Some(file) = &c.image_version_file {
            out.push_str(&format!("  version from {}\n", file.display()));
        }
        let section = match c.provider {
            Provider::Aws => serde_json::to_value(&c.aws),
            Provider::Azure => serde_json::to_value(&c.azure),
            Provider::Gcp => serde_json::to_value(&c.gcp),
            Provider::OpenStack => serde_json::to_value(&c.openstack),
            Provider::File => serde_json::to_value(&c.file),
            Provider::Oci => serde_json::to_value(&c.oci),
            Provider::Libvirt => serde_json::to_value(&c.libvirt),
        };
        if let Ok(serde_json::Value::Object(map)) = section {
            for (key, value) in map {
                out.push_str(&format!("  {}.{key} = {value}\n", c.provider.as_str()));
            }
        }
        out.push_str("  steps:\n");
        for (i, step) in v.steps.iter().enumerate() {
            out.push_str(&format!("    {}. {step}\n", i + 1));
        }
    }
    out
}
