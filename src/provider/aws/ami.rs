//! AMIs: finding and replacing an existing one, registering, copying to other regions, waiting, tagging, and
//! sharing.

use std::time::Duration;

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter, ImageState, ImdsSupportValues,
    LaunchPermission, LaunchPermissionModifications, PermissionGroup, Tag, TpmSupportValues, VolumeType,
};

use super::error::{self, AwsError};
use crate::cancel::Cancel;
use crate::config::AwsConfig;
use crate::transfer::poll_until;

/// How long an AMI may take to become available (copies across regions can take long).
const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

/// An AMI and the snapshots behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ami {
    /// The AMI ID.
    pub id: String,
    /// Its backing snapshots.
    pub snapshots: Vec<String>,
}

/// AMIs owned by this account with exactly this name.
pub async fn find_owned(ec2: &aws_sdk_ec2::Client, region: &str, name: &str) -> Result<Vec<Ami>, AwsError> {
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("name").values(name).build())
        .send()
        .await
        .map_err(|e| error::call(region, "DescribeImages", &e))?;
    Ok(out
        .images()
        .iter()
        .filter(|i| i.name() == Some(name))
        .map(|i| Ami {
            id: i.image_id().unwrap_or_default().to_string(),
            snapshots: i
                .block_device_mappings()
                .iter()
                .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
                .collect(),
        })
        .collect())
}

/// Deregisters `ami` and deletes its snapshots.
pub async fn deregister(ec2: &aws_sdk_ec2::Client, region: &str, ami: &Ami) -> Result<(), AwsError> {
    match ec2.deregister_image().image_id(&ami.id).send().await {
        Ok(_) => {}
        Err(e) if error::is_not_found(&e) => {}
        Err(e) => return Err(error::call(region, "DeregisterImage", &e)),
    }
    for snapshot in &ami.snapshots {
        super::snapshot::delete(ec2, region, snapshot).await;
    }
    Ok(())
}

/// Deregisters an AMI during cleanup, logging instead of raising.
pub async fn remove_quietly(ec2: &aws_sdk_ec2::Client, region: &str, ami: &Ami) {
    match deregister(ec2, region, ami).await {
        Ok(()) => tracing::info!("AWS {region}: removed {}", ami.id),
        Err(e) => tracing::error!("could not remove {} ({e}); delete it by hand", ami.id),
    }
}

/// Registers the AMI from `snapshot_id` with the configured boot settings.
pub async fn register(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    cfg: &AwsConfig,
    snapshot_id: &str,
    uefi_data: Option<String>,
) -> Result<String, AwsError> {
    const ROOT: &str = "/dev/xvda";
    let mut request = ec2
        .register_image()
        .name(&cfg.ami_name)
        .description(&cfg.ami_description)
        .architecture(ArchitectureValues::from(cfg.architecture.as_str()))
        .root_device_name(ROOT)
        .virtualization_type("hvm")
        .ena_support(true)
        .boot_mode(BootModeValues::from(cfg.boot_mode.as_str()))
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(ROOT)
                .ebs(
                    EbsBlockDevice::builder()
                        .snapshot_id(snapshot_id)
                        .delete_on_termination(true)
                        .volume_type(VolumeType::from(cfg.volume_type.as_str()))
                        .build(),
                )
                .build(),
        )
        .set_uefi_data(uefi_data);
    if !cfg.tpm_support.is_empty() {
        request = request.tpm_support(TpmSupportValues::from(cfg.tpm_support.as_str()));
    }
    if !cfg.imds_support.is_empty() {
        request = request.imds_support(ImdsSupportValues::from(cfg.imds_support.as_str()));
    }
    let out = request.send().await.map_err(|e| {
        if e.code() == Some("InvalidAMIName.Duplicate") {
            error::call_with_hint(region, "RegisterImage", &e, "set `replace = true` or bump the version with -i")
        } else {
            error::call(region, "RegisterImage", &e)
        }
    })?;
    returned_id(region, "RegisterImage", out.image_id())
}

fn returned_id(region: &str, operation: &str, id: Option<&str>) -> Result<String, AwsError> {
    id.map(str::to_string)
        .ok_or_else(|| AwsError::State { region: region.into(), what: format!("{operation} returned no image ID") })
}

use aws_sdk_ec2::error::ProvideErrorMetadata;

/// Copies `source_ami` from `source_region` into the region of `ec2`, with its tags.
pub async fn copy(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    source_region: &str,
    source_ami: &str,
    cfg: &AwsConfig,
) -> Result<String, AwsError> {
    let out = ec2
        .copy_image()
        .source_region(source_region)
        .source_image_id(source_ami)
        .name(&cfg.ami_name)
        .description(&cfg.ami_description)
        .copy_image_tags(true)
        .send()
        .await
        .map_err(|e| error::call(region, "CopyImage", &e))?;
    returned_id(region, "CopyImage", out.image_id())
}

/// Waits until `ami` is available and returns it with its snapshots.
pub async fn wait_available(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    ami: &str,
    cancel: &Cancel,
) -> Result<Ami, AwsError> {
    poll_until(&format!("AMI {ami} in {region} to be available"), AVAILABLE_TIMEOUT, cancel, || async {
        let out =
            ec2.describe_images().image_ids(ami).send().await.map_err(|e| error::call(region, "DescribeImages", &e))?;
        let Some(image) = out.images().first() else { return Ok(None) };
        match image.state() {
            Some(ImageState::Available) => Ok(Some(Ami {
                id: ami.to_string(),
                snapshots: image
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
                    .collect(),
            })),
            Some(ImageState::Failed) | Some(ImageState::Error) | Some(ImageState::Invalid) => {
                let reason = image.state_reason().and_then(|r| r.message()).unwrap_or("no reason given");
                Err(AwsError::State { region: region.into(), what: format!("image {ami} failed: {reason}") })
            }
            _ => Ok(None),
        }
    })
    .await
    .map_err(|stopped| error::stopped(region, &format!("image {ami} to become available"), stopped))
}

/// Tags the AMI and its snapshots.
pub async fn tag(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    ami: &Ami,
    tags: &[(String, String)],
) -> Result<(), AwsError> {
    let mut request = ec2.create_tags().resources(&ami.id);
    for snapshot in &ami.snapshots {
        request = request.resources(snapshot);
    }
    for (key, value) in tags {
        request = request.tags(Tag::builder().key(key).value(value).build());
    }
    request.send().await.map_err(|e| error::call(region, "CreateTags", &e))?;
    Ok(())
}

/// Makes the AMI public (`publish = true`) and/or shares it with accounts, organizations and OUs.
pub async fn share(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    ami: &Ami,
    public: bool,
    permissions: &[String],
) -> Result<(), AwsError> {
    let mut launch = Vec::new();
    let mut volume_groups = Vec::new();
    let mut volume_users = Vec::new();
    if public {
        launch.push(LaunchPermission::builder().group(PermissionGroup::All).build());
        volume_groups.push("all".to_string());
    }
    for p in permissions {
        if p.contains(":organization/") {
            launch.push(LaunchPermission::builder().organization_arn(p).build());
        } else if p.contains(":ou/") {
            launch.push(LaunchPermission::builder().organizational_unit_arn(p).build());
        } else {
            launch.push(LaunchPermission::builder().user_id(p).build());
            volume_users.push(p.clone());
        }
    }
    if launch.is_empty() {
        return Ok(());
    }
    ec2.modify_image_attribute()
        .image_id(&ami.id)
        .launch_permission(LaunchPermissionModifications::builder().set_add(Some(launch)).build())
        .send()
        .await
        .map_err(|e| error::call(region, "ModifyImageAttribute", &e))?;
    if !volume_groups.is_empty() || !volume_users.is_empty() {
        for snapshot in &ami.snapshots {
            // The flat form (OperationType, GroupNames, UserIds) is the documented equivalent of the
            // CreateVolumePermission structure, and the one every implementation, moto included, understands.
            ec2.modify_snapshot_attribute()
                .snapshot_id(snapshot)
                .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
                .operation_type(aws_sdk_ec2::types::OperationType::Add)
                .set_group_names((!volume_groups.is_empty()).then(|| volume_groups.clone()))
                .set_user_ids((!volume_users.is_empty()).then(|| volume_users.clone()))
                .send()
                .await
                .map_err(|e| error::call(region, "ModifySnapshotAttribute", &e))?;
        }
    }
    Ok(())
}
