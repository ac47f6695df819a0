//! Uploading the image as an EBS snapshot through the EBS direct APIs (as awslabs/coldsnap does).
//!
//! Blocks are as large as StartSnapshot says (EBS: 512 KiB; any power of two from 512 bytes to 16 MiB is served).
//! Only blocks that hold data are read and sent: holes and all-zero blocks never leave the machine, and a
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

/// The block size real EBS answers in StartSnapshot (and the granularity the image is scanned at).
pub const BLOCK_SIZE: u64 = 512 * 1024;
/// The largest block size uplosi accepts from StartSnapshot.
const MAX_BLOCK_SIZE: u64 = 16 << 20;
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
    // The size StartSnapshot answers is the one PutSnapshotBlock must use (EBS answers 524288).
    let block_size = started.block_size().map_or(BLOCK_SIZE, |b| u64::try_from(b).unwrap_or(0));

    let result = async {
        if !block_size.is_power_of_two() || !(512..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(AwsError::BlockSize { region: region.into(), snapshot: snapshot_id.clone(), size: block_size });
        }
        let stats = put_blocks(clients, region, &snapshot_id, image, map, block_size, options).await?;
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

/// Sends the blocks of `map` in blocks of `block_size` (a power of two). The image was scanned in 512 KiB units:
/// a larger block size coarsens them; a smaller one cuts each unit into blocks and sends only those with data (a
/// new snapshot reads the others as zeros).
async fn put_blocks(
    clients: &[aws_sdk_ebs::Client],
    region: &str,
    snapshot_id: &str,
    image: &SourceImage,
    map: &ExtentMap,
    block_size: u64,
    options: &UploadOptions,
) -> Result<UploadStats, AwsError> {
    let unit = block_size.max(BLOCK_SIZE);
    let per_unit = unit / block_size;
    let units: Vec<u64> =
        map.coarsen(unit).extents.iter().flat_map(|e| (e.start / unit)..e.end().div_ceil(unit)).collect();
    let progress = Progress::bytes(units.len() as u64 * unit, "EBS");
    let file = Arc::clone(&image.data);
    let sent = Arc::new(AtomicU64::new(0));
    let result = run_bounded(units, options.concurrency, &options.cancel, |unit_index| {
        let ebs = clients[unit_index as usize % clients.len()].clone();
        let (file, sent, progress) = (Arc::clone(&file), Arc::clone(&sent), progress.clone());
        let (snapshot_id, region) = (snapshot_id.to_string(), region.to_string());
        async move {
            let offset = unit_index * unit;
            let data =
                read_at(file, offset, unit as usize).await.map_err(|source| AwsError::Read { offset, source })?;
            let data = bytes::Bytes::from(data);
            let mut digests = Vec::with_capacity(per_unit as usize);
            for piece in 0..per_unit {
                let body = data.slice((piece * block_size) as usize..((piece + 1) * block_size) as usize);
                if per_unit > 1 && body.iter().all(|&b| b == 0) {
                    continue;
                }
                let index = unit_index * per_unit + piece;
                let digest: [u8; 32] = Sha256::digest(&body).into();
                put_block(&ebs, &region, &snapshot_id, index, body, &digest).await?;
                sent.fetch_add(block_size, Ordering::Relaxed);
                digests.push((index, digest));
            }
            progress.inc(unit);
            Ok::<_, AwsError>(digests)
        }
    })
    .await;
    progress.finish();
    let mut checksums: Vec<(u64, [u8; 32])> =
        result.map_err(|stopped| error::stopped(region, "the block upload", stopped))?.into_iter().flatten().collect();

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
