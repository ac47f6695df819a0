//! The Go tool's path, for accounts without EBS direct permissions: upload the raw image to S3 with a parallel
//! multipart upload, ImportSnapshot from there, and delete the object again.
//!
//! Parts are at least 8 MiB and large enough to stay under S3's 10 000-part limit; each carries its SHA-256 so S3
//! verifies it. A failed or interrupted upload is aborted, so no multipart upload is left to accrue storage costs.

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

use super::error::{self, AwsError};
use crate::config::VariantConfig;
use crate::image::SourceImage;
use crate::progress::Progress;
use crate::provider::UploadOptions;
use crate::transfer::{RetryPolicy, Stopped, poll_until, read_at, run_bounded};

const MIB: u64 = 1 << 20;
/// S3 allows at most this many parts.
const MAX_PARTS: u64 = 10_000;
/// Our smallest part (S3 allows 5 MiB); larger parts mean fewer requests.
const MIN_PART: u64 = 8 * MIB;

/// The part size for an object of `size` bytes: at least 8 MiB, whole MiB, and at most 10 000 parts.
pub fn part_size(size: u64) -> u64 {
    size.div_ceil(MAX_PARTS).div_ceil(MIB).max(1).saturating_mul(MIB).max(MIN_PART)
}

/// An S3 client; path-style addressing when an endpoint override is set (emulators have no bucket subdomains).
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(s3_config(config).build())
}

/// The S3 client for parts: no SDK retries, because every part has its own retry loop ([`RetryPolicy`]).
fn s3_data_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        s3_config(config).retry_config(aws_smithy_types::retry::RetryConfig::disabled()).build(),
    )
}

fn s3_config(config: &SdkConfig) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::from(config).force_path_style(config.endpoint_url().is_some())
}

/// Creates `bucket` if it does not exist.
pub async fn ensure_bucket(
    s3: &aws_sdk_s3::Client,
    region: &str,
    bucket: &str,
    location: Option<&str>,
) -> Result<(), AwsError> {
    match s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => return Ok(()),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {}
        Err(e) => return Err(error::call(region, "HeadBucket", &e)),
    }
    tracing::info!("AWS {region}: creating bucket {bucket}");
    let mut request = s3.create_bucket().bucket(bucket);
    if let Some(location) = location.filter(|l| *l != "us-east-1") {
        request = request.create_bucket_configuration(
            CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::from(location)).build(),
        );
    }
    request.send().await.map_err(|e| error::call(region, "CreateBucket", &e))?;
    Ok(())
}

/// Uploads the whole image to `bucket/key` as a parallel multipart upload (parts through `data`); aborts it on
/// failure.
pub async fn put_object(
    s3: &aws_sdk_s3::Client,
    data: &aws_sdk_s3::Client,
    region: &str,
    bucket: &str,
    key: &str,
    image: &SourceImage,
    options: &UploadOptions,
) -> Result<(), AwsError> {
    let created = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .map_err(|e| error::call(region, "CreateMultipartUpload", &e))?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    let started = std::time::Instant::now();
    let result = upload_parts(data, region, bucket, key, &upload_id, image, options).await;
    let parts = match result {
        Ok(parts) => parts,
        Err(e) => {
            abort(s3, region, bucket, key, &upload_id).await;
            return Err(e);
        }
    };
    let completed = s3
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await;
    if let Err(e) = completed {
        abort(s3, region, bucket, key, &upload_id).await;
        return Err(error::call(region, "CompleteMultipartUpload", &e));
    }
    tracing::info!(
        "AWS {region}: uploaded s3://{bucket}/{key} ({} bytes) in {:.2} s",
        image.size,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn abort(s3: &aws_sdk_s3::Client, region: &str, bucket: &str, key: &str, upload_id: &str) {
    match s3.abort_multipart_upload().bucket(bucket).key(key).upload_id(upload_id).send().await {
        Ok(_) => tracing::info!("AWS {region}: aborted multipart upload of s3://{bucket}/{key}"),
        Err(e) => tracing::error!(
            "AWS {region}: could not abort multipart upload {upload_id} of s3://{bucket}/{key}: {}; abort it by hand",
            error::describe(&e)
        ),
    }
}

async fn upload_parts(
    s3: &aws_sdk_s3::Client,
    region: &str,
    bucket: &str,
    key: &str,
    upload_id: &str,
    image: &SourceImage,
    options: &UploadOptions,
) -> Result<Vec<CompletedPart>, AwsError> {
    let part = part_size(image.size);
    let count = image.size.div_ceil(part);
    let progress = Progress::bytes(image.size, "S3");
    let file = Arc::clone(&image.data);
    // Parts are large, so fewer of them are in flight than EBS blocks: memory stays bounded.
    let limit = (options.concurrency / 8).clamp(1, 16);
    let result = run_bounded(1..=count, limit, &options.cancel, |number| {
        let (s3, file, progress) = (s3.clone(), Arc::clone(&file), progress.clone());
        let (region, bucket, key, upload_id) =
            (region.to_string(), bucket.to_string(), key.to_string(), upload_id.to_string());
        let offset = (number - 1) * part;
        let len = part.min(image.size - offset);
        async move {
            let data = read_at(file, offset, len as usize).await.map_err(|source| AwsError::Read { offset, source })?;
            let checksum = BASE64.encode(Sha256::digest(&data));
            let body = bytes::Bytes::from(data);
            let out = RetryPolicy::default()
                .run(
                    |_| {
                        s3.upload_part()
                            .bucket(&bucket)
                            .key(&key)
                            .upload_id(&upload_id)
                            .part_number(number as i32)
                            .checksum_sha256(&checksum)
                            .body(ByteStream::from(body.clone()))
                            // The part's SHA-256 above already protects the bytes; signing the payload as well
                            // would hash every part a second time.
                            .customize()
                            .disable_payload_signing()
                            .send()
                    },
                    error::verdict,
                )
                .await
                .map_err(|e| error::call(&region, "UploadPart", &e))?;
            progress.inc(len);
            Ok::<_, AwsError>(
                CompletedPart::builder()
                    .part_number(number as i32)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .checksum_sha256(checksum)
                    .build(),
            )
        }
    })
    .await;
    progress.finish();
    let mut parts = result.map_err(|stopped| error::stopped(region, "the S3 upload", stopped))?;
    parts.sort_by_key(|p| p.part_number());
    Ok(parts)
}

const VMIMPORT_HINT: &str = "ImportSnapshot needs the `vmimport` service role with read access to the bucket; see \
https://docs.aws.amazon.com/vm-import/latest/userguide/required-permissions.html, or use the default \
uploadMethod = \"ebs-direct\"";

/// S3 upload, ImportSnapshot, wait, delete the object: returns the snapshot ID.
pub async fn upload(
    config: &SdkConfig,
    region: &str,
    image: &SourceImage,
    cfg: &VariantConfig,
    tags: &[(String, String)],
    options: &UploadOptions,
) -> Result<String, AwsError> {
    let a = &cfg.aws;
    let bucket = a.bucket.as_deref().unwrap_or_default();
    let s3 = s3_client(config);
    ensure_bucket(&s3, region, bucket, a.bucket_location_constraint.as_deref()).await?;
    put_object(&s3, &s3_data_client(config), region, bucket, &a.blob_name, image, options).await?;
    let imported = import_snapshot(config, region, bucket, &a.blob_name, &a.snapshot_name, tags, options).await;
    match s3.delete_object().bucket(bucket).key(&a.blob_name).send().await {
        Ok(_) => tracing::info!("AWS {region}: deleted s3://{bucket}/{}", a.blob_name),
        Err(e) => {
            tracing::error!("AWS {region}: could not delete s3://{bucket}/{}: {}", a.blob_name, error::describe(&e))
        }
    }
    imported
}

async fn import_snapshot(
    config: &SdkConfig,
    region: &str,
    bucket: &str,
    key: &str,
    description: &str,
    tags: &[(String, String)],
    options: &UploadOptions,
) -> Result<String, AwsError> {
    use aws_sdk_ec2::types::{ResourceType, SnapshotDiskContainer, Tag, TagSpecification, UserBucket};
    let ec2 = aws_sdk_ec2::Client::new(config);
    let tag_spec = TagSpecification::builder()
        .resource_type(ResourceType::ImportSnapshotTask)
        .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
        .build();
    let started = ec2
        .import_snapshot()
        .description(description)
        .disk_container(
            SnapshotDiskContainer::builder()
                .description(description)
                .format("RAW")
                .user_bucket(UserBucket::builder().s3_bucket(bucket).s3_key(key).build())
                .build(),
        )
        .tag_specifications(tag_spec)
        .send()
        .await
        .map_err(|e| error::call_with_hint(region, "ImportSnapshot", &e, VMIMPORT_HINT))?;
    let task = started.import_task_id().unwrap_or_default().to_string();
    tracing::info!("AWS {region}: import task {task} started");
    let what = format!("import task {task} in {region}");
    let polled = poll_until(&what, Duration::from_secs(3 * 3600), &options.cancel, || async {
        let out = ec2
            .describe_import_snapshot_tasks()
            .import_task_ids(&task)
            .send()
            .await
            .map_err(|e| error::call(region, "DescribeImportSnapshotTasks", &e))?;
        let detail = out.import_snapshot_tasks().first().and_then(|t| t.snapshot_task_detail());
        match detail.and_then(|d| d.status()) {
            Some("completed") => {
                detail.and_then(|d| d.snapshot_id()).map(|id| Some(id.to_string())).ok_or_else(|| AwsError::State {
                    region: region.into(),
                    what: format!("import task {task} completed without a snapshot ID"),
                })
            }
            Some("deleted") | Some("deleting") | Some("error") => {
                let message = detail.and_then(|d| d.status_message()).unwrap_or("no reason given");
                Err(AwsError::State {
                    region: region.into(),
                    what: format!("import task {task} failed: {message}\n       ({VMIMPORT_HINT})"),
                })
            }
            _ => Ok(None),
        }
    })
    .await;
    if matches!(polled, Err(Stopped::Interrupted)) {
        let _ = ec2.cancel_import_task().import_task_id(&task).send().await;
    }
    polled.map_err(|stopped| error::stopped(region, &format!("import task {task}"), stopped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_respects_s3_limits() {
        assert_eq!(part_size(1), MIN_PART);
        assert_eq!(part_size(2 << 30), MIN_PART);
        let huge = 5u64 << 40;
        let p = part_size(huge);
        assert!(huge.div_ceil(p) <= MAX_PARTS);
        assert_eq!(p % MIB, 0);
    }
}
