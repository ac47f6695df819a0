//! `uplosi delete` and `uplosi prune` on AWS: the account's AMIs named by `amiName` at any version in the primary
//! and every replication region, the EBS snapshots behind them (from their block device mappings, and those the
//! upload tagged with the version), leftover snapshots named by `snapshotName`, and the `ssmParameter`, which keeps
//! the AMI it points to, or goes if it points at an AMI that no longer exists.

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_config::SdkConfig;
use aws_sdk_ec2::types::Filter;
use futures_util::future::join_all;

use super::error::{self, AwsError};
use super::{in_region, sdk_config};
use crate::config::VariantConfig;
use crate::config::names::NamePattern;
use crate::config::schema::Section;
use crate::provider::{Stored, TAG_NAME, TAG_VERSION, parse_timestamp};
use crate::transfer::RetryPolicy;
use crate::version::ImageVersion;

fn tag<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// Everything the variant left in every region (describe calls only).
pub async fn list_stored(cfg: &VariantConfig) -> Result<Vec<Stored>, AwsError> {
    let lifecycle = |e: crate::config::names::NoVersion| AwsError::Lifecycle(e.to_string());
    let ami_pattern = NamePattern::of(cfg, Section::Aws, "amiName").map_err(lifecycle)?;
    // Leftover snapshots are looked for only if their name tells the version.
    let snapshot_pattern = NamePattern::of(cfg, Section::Aws, "snapshotName").ok();
    let primary = cfg.aws.region.clone().unwrap_or_default();
    let base = sdk_config(&primary).await;
    let mut regions = vec![primary];
    regions.extend(cfg.aws.replication_regions.iter().cloned());
    let listed =
        join_all(regions.iter().map(|region| list_region(&base, region, cfg, &ami_pattern, snapshot_pattern.as_ref())))
            .await;
    let mut found = Vec::new();
    for items in listed {
        found.extend(items?);
    }
    Ok(found)
}

async fn list_region(
    base: &SdkConfig,
    region: &str,
    cfg: &VariantConfig,
    ami_pattern: &NamePattern,
    snapshot_pattern: Option<&NamePattern>,
) -> Result<Vec<Stored>, AwsError> {
    let ec2 = aws_sdk_ec2::Client::new(&in_region(base, region));
    let retry = RetryPolicy::default();
    let mut amis: Vec<Stored> = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = retry
            .run(
                |_| {
                    ec2.describe_images()
                        .owners("self")
                        .filters(Filter::builder().name("name").values(ami_pattern.glob()).build())
                        .set_next_token(token.clone())
                        .send()
                },
                error::verdict,
            )
            .await
            .map_err(|e| error::call(region, "DescribeImages", &e))?;
        for image in page.images() {
            let Some(version) = image.name().and_then(|n| ami_pattern.version_of(n)) else { continue };
            let mut item = Stored::new(version, "ami", image.image_id().unwrap_or_default());
            item.region = Some(region.to_string());
            item.created = image.creation_date().and_then(parse_timestamp);
            item.tag_name = tag(image.tags(), TAG_NAME).map(str::to_string);
            for mapping in image.block_device_mappings() {
                if let Some(snapshot) = mapping.ebs().and_then(|e| e.snapshot_id()) {
                    item.behind.push(("snapshot", snapshot.to_string()));
                }
            }
            amis.push(item);
        }
        token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
        if token.is_none() {
            break;
        }
    }

    // Snapshots the uploads tagged (with the version, or named by snapshotName): behind their version's AMI in
    // this region, or left over.
    let mut snapshots: BTreeMap<String, (ImageVersion, Option<String>, Option<SystemTime>)> = BTreeMap::new();
    let mut filters = vec![Filter::builder().name(format!("tag:{TAG_NAME}")).values(&cfg.name).build()];
    if let Some(pattern) = snapshot_pattern {
        filters.push(Filter::builder().name("tag:Name").values(pattern.glob()).build());
    }
    for filter in filters {
        let mut token: Option<String> = None;
        loop {
            let page = retry
                .run(
                    |_| {
                        ec2.describe_snapshots()
                            .owner_ids("self")
                            .filters(filter.clone())
                            .set_next_token(token.clone())
                            .send()
                    },
                    error::verdict,
                )
                .await
                .map_err(|e| error::call(region, "DescribeSnapshots", &e))?;
            for snapshot in page.snapshots() {
                let tags = snapshot.tags();
                let version = tag(tags, TAG_VERSION)
                    .and_then(|v| v.parse::<ImageVersion>().ok())
                    .or_else(|| snapshot_pattern.and_then(|p| p.version_of(tag(tags, "Name")?)));
                if let (Some(version), Some(id)) = (version, snapshot.snapshot_id()) {
                    let started = snapshot.start_time().and_then(|t| SystemTime::try_from(*t).ok());
                    snapshots.insert(id.to_string(), (version, tag(tags, TAG_NAME).map(str::to_string), started));
                }
            }
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                break;
            }
        }
    }
    let mut leftovers = Vec::new();
    for (id, (version, tag_name, started)) in snapshots {
        if amis.iter().any(|a| a.behind.iter().any(|(_, s)| *s == id)) {
            continue;
        }
        match amis.iter_mut().find(|a| a.version == version) {
            Some(ami) => ami.behind.push(("snapshot", id)),
            None => {
                let mut item = Stored::new(version, "snapshot", id);
                item.region = Some(region.to_string());
                item.created = started;
                item.tag_name = tag_name;
                leftovers.push(item);
            }
        }
    }

    // The SSM parameter keeps what it points to; pointing at an AMI that is gone, it goes.
    if let Some(parameter) = cfg.aws.ssm_parameter.as_deref() {
        let ssm = aws_sdk_ssm::Client::new(&in_region(base, region));
        let value = match retry.run(|_| ssm.get_parameter().name(parameter).send(), error::verdict).await {
            Ok(out) => out.parameter().and_then(|p| p.value()).map(str::to_string),
            Err(e) if error::is_not_found(&e) => None,
            Err(e) => return Err(error::call(region, "GetParameter", &e)),
        };
        if let Some(ami) = value {
            match amis.iter_mut().find(|a| a.id == ami) {
                Some(item) => item.keep = Some(format!("SSM parameter {parameter} points to it")),
                None if !exists(&ec2, region, &ami).await? => {
                    let mut item = Stored::new(cfg.image_version, "ssm-parameter", parameter);
                    item.region = Some(region.to_string());
                    item.dangling = true;
                    tracing::info!("AWS {region}: SSM parameter {parameter} points at {ami}, which no longer exists");
                    leftovers.push(item);
                }
                None => {}
            }
        }
    }
    amis.extend(leftovers);
    Ok(amis)
}

/// Whether the AMI `id` exists (for anyone) in the region.
async fn exists(ec2: &aws_sdk_ec2::Client, region: &str, id: &str) -> Result<bool, AwsError> {
    match RetryPolicy::default().run(|_| ec2.describe_images().image_ids(id).send(), error::verdict).await {
        Ok(out) => Ok(!out.images().is_empty()),
        Err(e) if error::is_not_found(&e) => Ok(false),
        Err(e) => Err(error::call(region, "DescribeImages", &e)),
    }
}

/// Deletes `item` (deregisters an AMI, then deletes its snapshots); what is already gone counts as deleted.
pub async fn delete_stored(cfg: &VariantConfig, item: &Stored) -> Result<(), AwsError> {
    let region = item.region.clone().unwrap_or_default();
    let config = in_region(&sdk_config(&region).await, &region);
    let retry = RetryPolicy::default();
    match item.kind {
        "ami" => {
            let ec2 = aws_sdk_ec2::Client::new(&config);
            match retry.run(|_| ec2.deregister_image().image_id(&item.id).send(), error::verdict).await {
                Ok(_) => {}
                Err(e) if error::is_not_found(&e) => {}
                Err(e) => return Err(error::call(&region, "DeregisterImage", &e)),
            }
            for (_, snapshot) in &item.behind {
                delete_snapshot(&ec2, &region, snapshot).await?;
            }
        }
        "snapshot" => delete_snapshot(&aws_sdk_ec2::Client::new(&config), &region, &item.id).await?,
        "ssm-parameter" => {
            let ssm = aws_sdk_ssm::Client::new(&config);
            match retry.run(|_| ssm.delete_parameter().name(&item.id).send(), error::verdict).await {
                Ok(_) => {}
                Err(e) if error::is_not_found(&e) => {}
                Err(e) => return Err(error::call(&region, "DeleteParameter", &e)),
            }
        }
        other => return Err(AwsError::Lifecycle(format!("{}: cannot delete a {other}", cfg.label()))),
    }
    Ok(())
}

async fn delete_snapshot(ec2: &aws_sdk_ec2::Client, region: &str, id: &str) -> Result<(), AwsError> {
    match RetryPolicy::default().run(|_| ec2.delete_snapshot().snapshot_id(id).send(), error::verdict).await {
        Ok(_) => Ok(()),
        Err(e) if error::is_not_found(&e) => Ok(()),
        Err(e) => Err(error::call(region, "DeleteSnapshot", &e)),
    }
}
