//! EBS snapshot state through the EC2 API: waiting for completion, and deletion during cleanup.

use std::time::Duration;

use aws_sdk_ec2::types::SnapshotState;

use super::error::{self, AwsError};
use crate::cancel::Cancel;
use crate::transfer::poll_until;

/// How long a snapshot may take to complete after the last block.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(3 * 3600);

/// Polls DescribeSnapshots until `snapshot_id` is completed.
pub async fn wait_completed(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    snapshot_id: &str,
    cancel: &Cancel,
) -> Result<(), AwsError> {
    poll_until(&format!("snapshot {snapshot_id} in {region} to complete"), COMPLETE_TIMEOUT, cancel, || async {
        let out = ec2
            .describe_snapshots()
            .snapshot_ids(snapshot_id)
            .send()
            .await
            .map_err(|e| error::call(region, "DescribeSnapshots", &e))?;
        let snapshot = out.snapshots().first();
        match snapshot.and_then(|s| s.state()) {
            Some(SnapshotState::Completed) => Ok(Some(())),
            Some(SnapshotState::Error) => {
                let message = snapshot.and_then(|s| s.state_message()).unwrap_or("no reason given");
                Err(AwsError::State {
                    region: region.into(),
                    what: format!("snapshot {snapshot_id} failed: {message}"),
                })
            }
            _ => Ok(None),
        }
    })
    .await
    .map_err(|stopped| error::stopped(region, &format!("snapshot {snapshot_id} to complete"), stopped))
}

/// Snapshots owned by this account whose Name tag is `name`.
pub async fn find_named(ec2: &aws_sdk_ec2::Client, region: &str, name: &str) -> Result<Vec<String>, AwsError> {
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(aws_sdk_ec2::types::Filter::builder().name("tag:Name").values(name).build())
        .send()
        .await
        .map_err(|e| error::call(region, "DescribeSnapshots", &e))?;
    Ok(out.snapshots().iter().filter_map(|s| s.snapshot_id().map(str::to_string)).collect())
}

/// Deletes a snapshot during cleanup; a failure is logged, not raised, so it does not hide the original error.
pub async fn delete(ec2: &aws_sdk_ec2::Client, region: &str, snapshot_id: &str) {
    match ec2.delete_snapshot().snapshot_id(snapshot_id).send().await {
        Ok(_) => tracing::info!("AWS {region}: deleted snapshot {snapshot_id}"),
        Err(e) if error::is_not_found(&e) => {}
        Err(e) => tracing::error!(
            "AWS {region}: could not delete snapshot {snapshot_id}: {}; delete it by hand",
            error::describe(&e)
        ),
    }
}
