//! Uploading the image as an EBS snapshot through the EBS direct APIs (as awslabs/coldsnap does).
//!
//! Blocks are always 524288 bytes, with indexes in 512 KiB units: PutSnapshotBlock's `DataLength` has exactly that
//! one valid value (EBS API reference). StartSnapshot's `BlockSize` answer is not followed: real EBS answers
//! 524288 anyway, and moto answers 512, which would cut a 50 MiB image into 100,000 requests. Only blocks that hold data are read and sent: holes and all-zero blocks never leave the machine, and a
//! new snapshot reads them as zeros. Each block carries its SHA-256; CompleteSnapshot gets the block count and the
//! linear aggregate checksum (SHA-256 over the blocks' checksums in index order), so AWS verifies the whole.
//! Blocks go up on a bounded number of concurrent requests; each request has its own retry loop with jittered
//! backoff ([`RetryPolicy`]) and the SDK's own retries are off, with coldsnap's timeouts (read 12 s, attempt 20 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

use super::error::{self, AwsError};
use crate::image::{ExtentMap, SourceImage};
use crate::progress::Progress;
use crate::provider::UploadOptions;
use crate::transfer::{RetryPolicy, read_at, run_bounded};

/// The one block size PutSnapshotBlock takes (and the granularity the image is scanned at).
pub const BLOCK_SIZE: u64 = 512 * 1024;
const GIB: u64 = 1 << 30;

/// What the upload did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Blocks sent.
    pub blocks: u64,
    /// Bytes sent (block payloads).
    pub bytes: u64,
}

/// The IAM actions the EBS direct path needs, for the access-denied hint.
const EBS_ACTIONS_HINT: &str = "the EBS direct upload needs ebs:StartSnapshot, ebs:PutSnapshotBlock and \
ebs:CompleteSnapshot (plus ec2:DescribeSnapshots and ec2:DeleteSnapshot); roles made for the Go uplosi may lack \
them. Grant them, or set uploadMethod = \"import-snapshot\" to upload through S3 instead";

/// Where a snapshot goes: the EBS data plane and EC2 control plane clients of one region.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    /// EBS direct clients (see [`clients`]); blocks are spread over them.
    pub ebs: &'a [aws_sdk_ebs::Client],
    /// EC2 client, for waiting and cleanup.
    pub ec2: &'a aws_sdk_ec2::Client,
    /// The region, for messages.
    pub region: &'a str,
}

/// Uploads the blocks of `map` (coarsened to 512 KiB) as a new snapshot and waits until it is completed.
/// On any failure or interruption the snapshot is deleted before returning.
pub async fn upload(
    target: Target<'_>,
    image: &SourceImage,
    map: &ExtentMap,
    tags: &[(String, String)],
    description: &str,
    options: &UploadOptions,
) -> Result<(String, UploadStats), AwsError> {
    let Target { ebs: clients, ec2, region } = target;
    let Some(ebs) = clients.first() else {
        return Err(AwsError::State { region: region.into(), what: "no EBS client".into() });
    };
    let volume_gib = image.size.div_ceil(GIB).max(1) as i64;
    let tags: Vec<Tag> = tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
    let client_token = format!("uplosi-{:032x}", rand::random::<u128>());
    let retry = RetryPolicy::default();
    let started = retry
        .run(
            |_| {
                ebs.start_snapshot()
                    .volume_size(volume_gib)
                    .client_token(&client_token)
                    .description(description)
                    .set_tags(Some(tags.clone()))
                    .timeout(60)
                    .send()
            },
            error::verdict,
        )
        .await
        .map_err(|e| {
            if error::is_access_denied(&e) {
                error::call_with_hint(region, "StartSnapshot", &e, EBS_ACTIONS_HINT)
            } else {
                error::call(region, "StartSnapshot", &e)
            }
        })?;
    let snapshot_id = started.snapshot_id().unwrap_or_default().to_string();
    if snapshot_id.is_empty() {
        return Err(AwsError::State { region: region.into(), what: "StartSnapshot returned no snapshot ID".into() });
    }
    tracing::info!("AWS {region}: uploading {} as snapshot {snapshot_id}", image.path.display());
    // PutSnapshotBlock takes 524288-byte blocks only, whatever StartSnapshot answers (moto answers 512).
    if let Some(answered) = started.block_size().filter(|&b| u64::try_from(b).ok() != Some(BLOCK_SIZE)) {
        tracing::debug!(
            "AWS {region}: StartSnapshot answered BlockSize {answered} for {snapshot_id}; writing {BLOCK_SIZE}-byte \
             blocks, the only DataLength PutSnapshotBlock takes"
        );
    }

    let result = async {
        let stats = put_blocks(clients, region, &snapshot_id, image, map, options).await?;
        super::snapshot::wait_completed(ec2, region, &snapshot_id, &options.cancel).await?;
        Ok::<_, AwsError>(stats)
    }
    .await;
    match result {
        Ok(stats) => Ok((snapshot_id, stats)),
        Err(e) => {
            tracing::warn!("AWS {region}: deleting incomplete snapshot {snapshot_id}");
            super::snapshot::delete(ec2, region, &snapshot_id).await;
            Err(e)
        }
    }
}

/// Sends the 512 KiB blocks of `map` that hold data and completes the snapshot.
async fn put_blocks(
    clients: &[aws_sdk_ebs::Client],
    region: &str,
    snapshot_id: &str,
    image: &SourceImage,
    map: &ExtentMap,
    options: &UploadOptions,
) -> Result<UploadStats, AwsError> {
    let blocks: Vec<u64> = map
        .coarsen(BLOCK_SIZE)
        .extents
        .iter()
        .flat_map(|e| (e.start / BLOCK_SIZE)..e.end().div_ceil(BLOCK_SIZE))
        .collect();
    let progress = Progress::bytes(blocks.len() as u64 * BLOCK_SIZE, "EBS");
    let file = Arc::clone(&image.data);
    let sent = Arc::new(AtomicU64::new(0));
    let result = run_bounded(blocks, options.concurrency, &options.cancel, |index| {
        let ebs = clients[index as usize % clients.len()].clone();
        let (file, sent, progress) = (Arc::clone(&file), Arc::clone(&sent), progress.clone());
        let (snapshot_id, region) = (snapshot_id.to_string(), region.to_string());
        async move {
            let offset = index * BLOCK_SIZE;
            let data =
                read_at(file, offset, BLOCK_SIZE as usize).await.map_err(|source| AwsError::Read { offset, source })?;
            let body = bytes::Bytes::from(data);
            let digest: [u8; 32] = Sha256::digest(&body).into();
            put_block(&ebs, &region, &snapshot_id, index, body, &digest).await?;
            sent.fetch_add(BLOCK_SIZE, Ordering::Relaxed);
            progress.inc(BLOCK_SIZE);
            Ok::<_, AwsError>((index, digest))
        }
    })
    .await;
    progress.finish();
    let mut checksums: Vec<(u64, [u8; 32])> =
        result.map_err(|stopped| error::stopped(region, "the block upload", stopped))?;
    checksums.sort_by_key(|(index, _)| *index);
    let mut aggregate = Sha256::new();
    for (_, digest) in &checksums {
        aggregate.update(digest);
    }
    let aggregate = BASE64.encode(aggregate.finalize());
    // CompleteSnapshot is limited to 10 requests per second per account: retries back off.
    let ebs = &clients[0];
    RetryPolicy { max_attempts: 10, ..RetryPolicy::default() }
        .run(
            |_| {
                ebs.complete_snapshot()
                    .snapshot_id(snapshot_id)
                    .changed_blocks_count(checksums.len() as i32)
                    .checksum(&aggregate)
                    .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                    .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
                    .send()
            },
            error::verdict,
        )
        .await
        .map_err(|e| error::call(region, "CompleteSnapshot", &e))?;
    Ok(UploadStats { blocks: checksums.len() as u64, bytes: sent.load(Ordering::Relaxed) })
}

/// One PutSnapshotBlock, with its own retry loop.
async fn put_block(
    ebs: &aws_sdk_ebs::Client,
    region: &str,
    snapshot_id: &str,
    index: u64,
    body: bytes::Bytes,
    digest: &[u8; 32],
) -> Result<(), AwsError> {
    let checksum = BASE64.encode(digest);
    let length = body.len() as i32;
    RetryPolicy::default()
        .run(
            |_| {
                ebs.put_snapshot_block()
                    .snapshot_id(snapshot_id)
                    .block_index(index as i32)
                    .block_data(ByteStream::from(body.clone()))
                    .data_length(length)
                    .checksum(&checksum)
                    .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                    .send()
            },
            error::verdict,
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            if error::is_access_denied(&e) {
                error::call_with_hint(region, "PutSnapshotBlock", &e, EBS_ACTIONS_HINT)
            } else {
                error::call(region, "PutSnapshotBlock", &e)
            }
        })
}

/// How many EBS clients share the block uploads. Each has its own HTTP client and connection pool, so the
/// connections spread over the endpoint's addresses instead of queueing in one pool (as coldsnap found).
pub const CLIENTS: usize = 4;

/// EBS data plane clients: coldsnap's timeouts, and no SDK retries because every block has its own retry loop.
pub fn clients(config: &aws_config::SdkConfig) -> Vec<aws_sdk_ebs::Client> {
    let timeouts = aws_smithy_types::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(12))
        .operation_attempt_timeout(Duration::from_secs(20))
        .build();
    (0..CLIENTS)
        .map(|_| {
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .build_https();
            let conf = aws_sdk_ebs::config::Builder::from(config)
                .http_client(http)
                .timeout_config(timeouts.clone())
                .retry_config(aws_smithy_types::retry::RetryConfig::disabled())
                .build();
            aws_sdk_ebs::Client::from_conf(conf)
        })
        .collect()
}
