//! AWS: upload the raw image as an EBS snapshot (EBS direct, or S3 + ImportSnapshot), register the AMI, copy it to
//! the replication regions in parallel, tag, share or publish it, record it in SSM, and print one ARN per region.
//!
//! Everything created is recorded; if a later step fails or the user interrupts, it is removed again, so a failed
//! run leaves no snapshots, AMIs or temporary objects behind.

pub mod ami;
pub mod ebs;
pub mod error;
pub mod import;
pub mod lifecycle;
pub mod snapshot;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use base64::Engine;
use tokio::task::JoinSet;

pub use error::AwsError;

use crate::config::VariantConfig;
use crate::image::SourceImage;
use crate::provider::UploadOptions;

/// The partition of a region, for ARNs.
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else {
        "aws"
    }
}

/// The ARN the Go tool prints for an AMI.
pub fn ami_arn(region: &str, account: &str, ami: &str) -> String {
    format!("arn:{}:ec2:{region}:{account}:image/{ami}", partition(region))
}

/// The shared SDK configuration: standard credential chain and endpoint overrides (AWS_ENDPOINT_URL), region set
/// per client.
pub(crate) async fn sdk_config(region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region.to_string())).load().await
}

pub(crate) fn in_region(base: &SdkConfig, region: &str) -> SdkConfig {
    base.to_builder().region(Region::new(region.to_string())).build()
}

/// Checks that credentials exist and work, and returns the account ID.
async fn account_id(config: &SdkConfig, region: &str) -> Result<String, AwsError> {
    let Some(provider) = config.credentials_provider() else {
        return Err(AwsError::NoCredentials { reason: "no credential provider configured".into() });
    };
    provider.provide_credentials().await.map_err(|e| AwsError::NoCredentials {
        reason: format!("{}", aws_smithy_types::error::display::DisplayErrorContext(e)),
    })?;
    let sts = aws_sdk_sts::Client::new(config);
    let identity = sts.get_caller_identity().send().await.map_err(|e| error::call(region, "GetCallerIdentity", &e))?;
    identity
        .account()
        .map(str::to_string)
        .ok_or_else(|| AwsError::State { region: region.into(), what: "GetCallerIdentity returned no account".into() })
}

/// Checks credentials before any data moves.
pub async fn preflight(cfg: &VariantConfig) -> Result<(), AwsError> {
    let region = cfg.aws.region.as_deref().unwrap_or_default();
    let config = sdk_config(region).await;
    account_id(&config, region).await.map(|_| ())
}

/// What was created so far, for cleanup on failure.
#[derive(Default)]
struct Created {
    snapshot: Option<(String, String)>,
    amis: Vec<(String, ami::Ami)>,
}

impl Created {
    async fn remove(self, base: &SdkConfig) {
        for (region, image) in self.amis.iter().rev() {
            let ec2 = aws_sdk_ec2::Client::new(&in_region(base, region));
            ami::remove_quietly(&ec2, region, image).await;
        }
        if let Some((region, snapshot)) = self.snapshot {
            let ec2 = aws_sdk_ec2::Client::new(&in_region(base, &region));
            snapshot::delete(&ec2, &region, &snapshot).await;
        }
    }
}

/// Uploads, registers, replicates and publishes; returns the AMI ARNs, primary region first.
pub async fn upload(
    cfg: &VariantConfig,
    image: &SourceImage,
    options: &UploadOptions,
) -> Result<Vec<String>, AwsError> {
    let a = &cfg.aws;
    let primary = a.region.clone().unwrap_or_default();
    let base = sdk_config(&primary).await;
    let account = account_id(&base, &primary).await?;
    tracing::info!("AWS: uploading {} {} to account {account}", cfg.name, cfg.image_version);
    let mut regions = vec![primary.clone()];
    regions.extend(a.replication_regions.iter().cloned());

    replace_existing(&base, &regions, cfg).await?;

    let mut created = Created::default();
    let _in_progress = crate::cancel::track(format!(
        "AWS {}: EBS snapshots described \"{}\" and AMIs named \"{}\" (aws ec2 describe-snapshots / describe-images)",
        regions.join(", "),
        a.snapshot_name,
        a.ami_name
    ));
    let result = publish_steps(&base, &regions, &account, cfg, image, options, &mut created).await;
    match result {
        Ok(refs) => Ok(refs),
        Err(e) => {
            tracing::warn!("AWS: removing what this run created");
            created.remove(&base).await;
            Err(e)
        }
    }
}

/// Removes AMIs of the same name (owned by this account) in every region, as the Go tool does; with
/// `replace = false` their existence is an error instead.
async fn replace_existing(base: &SdkConfig, regions: &[String], cfg: &VariantConfig) -> Result<(), AwsError> {
    let mut found = Vec::new();
    for region in regions {
        let ec2 = aws_sdk_ec2::Client::new(&in_region(base, region));
        for image in ami::find_owned(&ec2, region, &cfg.aws.ami_name).await? {
            if !cfg.aws.replace {
                return Err(AwsError::Duplicate {
                    region: region.clone(),
                    name: cfg.aws.ami_name.clone(),
                    ami: image.id,
                });
            }
            found.push((region.clone(), ec2.clone(), image));
        }
    }
    for (region, ec2, image) in found {
        tracing::info!(
            "AWS {region}: replacing existing image {} (\"{}\") and its snapshots",
            image.id,
            cfg.aws.ami_name
        );
        ami::deregister(&ec2, &region, &image).await?;
    }
    // Like the Go tool, also remove leftover snapshots carrying this snapshot name (e.g. from a run that was
    // killed between upload and registration).
    if cfg.aws.replace {
        let primary = &regions[0];
        let ec2 = aws_sdk_ec2::Client::new(&in_region(base, primary));
        for id in snapshot::find_named(&ec2, primary, &cfg.aws.snapshot_name).await? {
            tracing::info!("AWS {primary}: removing leftover snapshot {id} (\"{}\")", cfg.aws.snapshot_name);
            snapshot::delete(&ec2, primary, &id).await;
        }
    }
    Ok(())
}

/// The tags of AMIs and snapshots: `Name`, the configured ones, and `uplosi-name`/`uplosi-version`, by which
/// `delete` and `prune` tell whose they are.
fn tags(cfg: &VariantConfig, name: &str) -> Vec<(String, String)> {
    let ours = crate::provider::ownership_tags(cfg);
    let mut tags = vec![("Name".to_string(), name.to_string())];
    tags.extend(
        cfg.aws
            .tags
            .iter()
            .filter(|(k, _)| k.as_str() != "Name" && !ours.iter().any(|(o, _)| o == k))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    tags.extend(ours.into_iter().map(|(k, v)| (k.to_string(), v)));
    tags
}

async fn publish_steps(
    base: &SdkConfig,
    regions: &[String],
    account: &str,
    cfg: &VariantConfig,
    image: &SourceImage,
    options: &UploadOptions,
    created: &mut Created,
) -> Result<Vec<String>, AwsError> {
    let a = &cfg.aws;
    let primary = &regions[0];
    let primary_config = in_region(base, primary);
    let ec2 = aws_sdk_ec2::Client::new(&primary_config);

    let snapshot_tags = tags(cfg, &a.snapshot_name);
    let snapshot_id = if a.upload_method == "import-snapshot" {
        import::upload(&primary_config, primary, image, cfg, &snapshot_tags, options).await?
    } else {
        // Block granularity is all the upload needs; the scan then reads only the first 4 KiB of most data blocks.
        // On the blocking pool: the scan reads the image (or waits for another variant's scan of it).
        let (scanned, cancel) = (image.clone(), options.cancel.clone());
        let map = tokio::task::spawn_blocking(move || scanned.extents(ebs::BLOCK_SIZE, 4, &|| cancel.is_cancelled()))
            .await
            .map_err(|e| AwsError::Read { offset: 0, source: std::io::Error::other(e.to_string()) })?
            .map_err(|e| match e {
                crate::image::ImageError::Interrupted => AwsError::Interrupted,
                other => AwsError::Read { offset: 0, source: std::io::Error::other(other.to_string()) },
            })?;
        let ebs_clients = ebs::clients(&primary_config);
        let (id, stats) = ebs::upload(
            ebs::Target { ebs: &ebs_clients, ec2: &ec2, region: primary },
            image,
            &map,
            &snapshot_tags,
            &a.snapshot_name,
            options,
        )
        .await?;
        tracing::info!(
            "AWS {primary}: snapshot {id} complete: {} blocks, {} bytes sent of a {}-byte image",
            stats.blocks,
            stats.bytes,
            image.size
        );
        id
    };
    created.snapshot = Some((primary.clone(), snapshot_id.clone()));

    let uefi_data = match &a.uefi_data {
        Some(path) => Some(
            std::fs::read(path)
                .map(|bytes| {
                    // uefiData may be given raw (as written by python-uefivars) or already base64-encoded.
                    match std::str::from_utf8(&bytes) {
                        Ok(text) if base64::engine::general_purpose::STANDARD.decode(text.trim()).is_ok() => {
                            text.trim().to_string()
                        }
                        _ => base64::engine::general_purpose::STANDARD.encode(&bytes),
                    }
                })
                .map_err(|source| AwsError::Read { offset: 0, source })?,
        ),
        None => None,
    };
    let ami_id = ami::register(&ec2, primary, a, &snapshot_id, uefi_data).await?;
    created.snapshot = None;
    created.amis.push((primary.clone(), ami::Ami { id: ami_id.clone(), snapshots: vec![snapshot_id.clone()] }));
    tracing::info!("AWS {primary}: registered {ami_id} (\"{}\")", a.ami_name);
    let mut primary_ami = ami::wait_available(&ec2, primary, &ami_id, &options.cancel).await?;
    if !primary_ami.snapshots.contains(&snapshot_id) {
        primary_ami.snapshots.push(snapshot_id.clone());
    }
    created.amis[0].1 = primary_ami.clone();

    // Copies run in parallel; each waits for its own region.
    let mut copies = JoinSet::new();
    for region in &regions[1..] {
        let (ec2, region, source, cfg, cancel) = (
            aws_sdk_ec2::Client::new(&in_region(base, region)),
            region.clone(),
            primary.clone(),
            a.clone(),
            options.cancel.clone(),
        );
        let source_ami = ami_id.clone();
        copies.spawn(async move {
            let copied = ami::copy(&ec2, &region, &source, &source_ami, &cfg).await;
            let outcome = match copied {
                Ok(id) => {
                    tracing::info!("AWS {region}: copying to {id}");
                    ami::wait_available(&ec2, &region, &id, &cancel)
                        .await
                        .map_err(|e| (Some(ami::Ami { id: id.clone(), snapshots: Vec::new() }), e))
                }
                Err(e) => Err((None, e)),
            };
            (region, outcome)
        });
    }
    let mut images = vec![(primary.clone(), primary_ami)];
    let mut failure = None;
    while let Some(joined) = copies.join_next().await {
        match joined {
            Ok((region, Ok(image))) => {
                created.amis.push((region.clone(), image.clone()));
                images.push((region, image));
            }
            Ok((region, Err((partial, e)))) => {
                if let Some(partial) = partial {
                    created.amis.push((region, partial));
                }
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure
                    .get_or_insert(AwsError::State { region: primary.clone(), what: format!("copy task failed: {e}") });
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    images.sort_by_key(|(region, _)| regions.iter().position(|r| r == region));

    let ami_tags = tags(cfg, &a.ami_name);
    for (region, image) in &images {
        let config = in_region(base, region);
        let ec2 = aws_sdk_ec2::Client::new(&config);
        ami::tag(&ec2, region, image, &ami_tags).await?;
        ami::share(&ec2, region, image, a.publish, &a.launch_permissions).await?;
        if a.publish {
            tracing::info!("AWS {region}: {} is public", image.id);
        }
        if let Some(parameter) = &a.ssm_parameter {
            let ssm = aws_sdk_ssm::Client::new(&config);
            ssm.put_parameter()
                .name(parameter)
                .value(&image.id)
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .data_type("aws:ec2:image")
                .overwrite(true)
                .send()
                .await
                .map_err(|e| error::call(region, "PutParameter", &e))?;
            tracing::info!("AWS {region}: {parameter} = {}", image.id);
        }
    }
    Ok(images.iter().map(|(region, image)| ami_arn(region, account, &image.id)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_use_the_partition_of_the_region() {
        assert_eq!(ami_arn("eu-west-1", "123456789012", "ami-1"), "arn:aws:ec2:eu-west-1:123456789012:image/ami-1");
        assert_eq!(partition("cn-north-1"), "aws-cn");
        assert_eq!(partition("us-gov-west-1"), "aws-us-gov");
    }
}
