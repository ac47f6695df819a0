//! Azure: put the image into an Azure Compute Gallery. The image goes as a fixed VHD straight into a managed disk
//! created for direct upload (only the data pages are written, in parallel), the gallery image version is created
//! from that disk and replicated to every region, and the disk is deleted again. The reference is the version's
//! resource ID, or its community ID for a community gallery.
//!
//! The management plane is Azure Resource Manager REST ([`arm`]), the data plane the official page-blob client
//! ([`pages`]), credentials the Entra ID chain of [`credential`].

pub mod arm;
pub mod certificate;
pub mod credential;
pub mod error;
pub mod gallery;
pub mod pages;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use error::AzureError;

use crate::cancel::Cancel;
use crate::config::{AzureConfig, VariantConfig};
use crate::format::{self, Layout};
use crate::image::{ImageError, SourceImage};
use crate::provider::{Reference, UploadOptions};
use crate::transfer::RetryPolicy;
use crate::transfer::session::Sessions;
use arm::{Arm, DISKS_API, GALLERIES_API, GROUPS_API, SUBSCRIPTIONS_API};
use gallery::Paths;

/// Creating, granting access to and deleting disks, galleries and definitions.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Creating and replicating a version: large images to many regions take hours.
const VERSION_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// How long the write SAS of the upload disk is valid (as the Go tool asks).
const ACCESS_SECONDS: u64 = 24 * 3600;

/// Signed-in Resource Manager clients by endpoint: the preflight signs in once and the uploads reuse it while it is
/// fresh (the credential refreshes its own tokens).
static SESSIONS: Sessions<Arm> = Sessions::new(Duration::from_secs(15 * 60));

async fn connect(z: &AzureConfig) -> Result<Arm, AzureError> {
    let endpoint = z.resource_manager_endpoint.trim_end_matches('/').to_string();
    if let Some(arm) = SESSIONS.get(&endpoint) {
        return Ok(arm);
    }
    let chosen = credential::find(&arm::token_scope(&endpoint)).await?;
    tracing::debug!("azure: Resource Manager at {endpoint}, signed in with {}", chosen.source.name());
    let arm = Arm::new(&endpoint, chosen.credential)?;
    SESSIONS.put(&endpoint, arm.clone());
    Ok(arm)
}

fn version_name(cfg: &VariantConfig) -> String {
    cfg.image_version.to_string()
}

/// Checks before any data moves: a token can be had, the subscription and resource group are reachable, an
/// existing gallery or definition matches the config, and nothing of the same name blocks the run.
pub async fn preflight(cfg: &VariantConfig) -> Result<(), AzureError> {
    let z = &cfg.azure;
    let arm = connect(z).await?;
    let paths = Paths::new(z, &version_name(cfg));
    let subscription = z.subscription_id.clone().unwrap_or_default();
    match arm.get(&paths.subscription, SUBSCRIPTIONS_API, &format!("reading subscription {subscription}")).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(AzureError::Subscription { subscription, message: "it does not exist".into() }),
        Err(AzureError::Api { status: 401 | 403, message, .. }) => {
            return Err(AzureError::Subscription { subscription, message });
        }
        Err(e) => return Err(e),
    }
    let group = z.resource_group.clone().unwrap_or_default();
    if arm.get(&paths.group, GROUPS_API, &format!("reading resource group {group}")).await?.is_none() {
        return Err(AzureError::ResourceGroup { group, subscription });
    }
    if let Some(existing) = arm.get(&paths.gallery, GALLERIES_API, "reading the gallery").await? {
        gallery::check_gallery(z, &existing)?;
    }
    if let Some(existing) = arm.get(&paths.definition, GALLERIES_API, "reading the image definition").await? {
        gallery::check_definition(z, &existing)?;
    }
    if !z.replace {
        let version = arm.get(&paths.version, GALLERIES_API, "reading the image version").await?;
        if let Some(id) = version.as_ref().map(|v| resource_id(v, &paths.version)) {
            return Err(AzureError::Exists { what: format!("image version {}", version_name(cfg)), id });
        }
        if let Some(disk) = arm.get(&paths.disk, DISKS_API, "reading the upload disk").await? {
            return Err(AzureError::Exists {
                what: format!("disk \"{}\"", z.disk_name),
                id: resource_id(&disk, &paths.disk),
            });
        }
    }
    gallery::version_body(z, &paths.disk).map(drop)
}

/// `body` with the `uplosi-name` and `uplosi-version` tags, by which `delete` and `prune` tell whose it is.
fn with_ownership(mut body: Value, cfg: &VariantConfig) -> Value {
    let tags: serde_json::Map<String, Value> =
        crate::provider::ownership_tags(cfg).into_iter().map(|(k, v)| (k.to_string(), Value::String(v))).collect();
    body["tags"] = Value::Object(tags);
    body
}

fn resource_id(resource: &Value, fallback: &str) -> String {
    resource.get("id").and_then(Value::as_str).unwrap_or(fallback).to_string()
}

/// The image as a fixed VHD, holes found at 4 KiB.
async fn build_layout(image: &SourceImage, options: &UploadOptions) -> Result<Layout, AzureError> {
    let (image, cancel) = (image.clone(), options.cancel.clone());
    let io_threads = std::thread::available_parallelism().map(usize::from).unwrap_or(1).clamp(2, 4);
    let layout = tokio::task::spawn_blocking(move || -> Result<Layout, ImageError> {
        let map = image.extents(crate::image::extents::ZERO_BLOCK, io_threads, &|| cancel.is_cancelled())?;
        Ok(format::vhd::layout(&map))
    })
    .await
    .map_err(|e| AzureError::Read(std::io::Error::other(e.to_string())))?;
    layout.map_err(|e| match e {
        ImageError::Interrupted => AzureError::Interrupted,
        e => AzureError::Image(e),
    })
}

/// Uploads `image` as configured by `cfg` and returns the gallery image version's reference.
pub async fn upload(
    cfg: &VariantConfig,
    image: &SourceImage,
    options: &UploadOptions,
) -> Result<Vec<Reference>, AzureError> {
    let z = &cfg.azure;
    let version = version_name(cfg);
    let paths = Paths::new(z, &version);
    let arm = connect(z).await?;
    let layout = build_layout(image, options).await?;
    let disk_size = layout.len() - format::vhd::FOOTER_SIZE;
    if !(format::vhd::MIN_AZURE_SIZE..=format::vhd::MAX_AZURE_SIZE).contains(&disk_size) {
        return Err(AzureError::Unexpected {
            what: format!("sizing disk \"{}\"", z.disk_name),
            message: format!(
                "the image is {disk_size} bytes as a VHD; Azure managed disks take 20 MiB to 32 TiB. Enlarge the image"
            ),
        });
    }
    ensure_gallery(&arm, z, &paths, &options.cancel).await?;
    ensure_definition(&arm, z, &paths, &options.cancel).await?;
    if let Some(old) = arm.get(&paths.version, GALLERIES_API, "reading the image version").await? {
        let id = resource_id(&old, &paths.version);
        if !z.replace {
            return Err(AzureError::Exists { what: format!("image version {version}"), id });
        }
        tracing::info!("azure: deleting the existing image version {id}");
        arm.delete(
            &paths.version,
            GALLERIES_API,
            &format!("deleting image version {version}"),
            VERSION_TIMEOUT,
            &options.cancel,
        )
        .await?;
    }
    if let Some(old) = arm.get(&paths.disk, DISKS_API, "reading the upload disk").await? {
        let id = resource_id(&old, &paths.disk);
        if !z.replace {
            return Err(AzureError::Exists { what: format!("disk \"{}\"", z.disk_name), id });
        }
        tracing::info!("azure: deleting the leftover disk {id}");
        remove_disk(&arm, &paths.disk, &z.disk_name).await?;
    }
    tracing::info!("azure: creating disk \"{}\" for a {} byte upload", z.disk_name, layout.len());
    let _leftover = crate::cancel::track(format!(
        "Azure disk {} (revoke access and delete it: az disk revoke-access / az disk delete --ids {})",
        paths.disk, paths.disk
    ));
    let created = arm
        .put(
            &paths.disk,
            DISKS_API,
            &with_ownership(gallery::disk_body(z, layout.len()), cfg),
            &format!("creating disk \"{}\"", z.disk_name),
            CONTROL_TIMEOUT,
            &options.cancel,
        )
        .await;
    let result = match created {
        Ok(disk) => publish(&arm, cfg, &paths, &resource_id(&disk, &paths.disk), image, layout, options).await,
        Err(e) => Err(e),
    };
    // Afterwards, on failure and after Ctrl-C alike: the disk only carried the data to the version.
    if let Err(e) = remove_disk(&arm, &paths.disk, &z.disk_name).await {
        tracing::error!(
            "azure: could not delete the upload disk {} ({e}); delete it with `az disk revoke-access --ids {0}` and \
             `az disk delete --ids {0}`",
            paths.disk
        );
    }
    result
}

/// Fills the disk, creates the version from it and reads back the reference.
async fn publish(
    arm: &Arm,
    cfg: &VariantConfig,
    paths: &Paths,
    disk_id: &str,
    image: &SourceImage,
    layout: Layout,
    options: &UploadOptions,
) -> Result<Vec<Reference>, AzureError> {
    let z = &cfg.azure;
    let version = version_name(cfg);
    let writes = pages::plan(&layout).map_err(|message| AzureError::Unexpected {
        what: format!("planning the upload of {}", z.disk_name),
        message,
    })?;
    let access = arm
        .post(
            &format!("{}/beginGetAccess", paths.disk),
            DISKS_API,
            Some(&json!({"access": "Write", "durationInSeconds": ACCESS_SECONDS})),
            &format!("granting write access to disk \"{}\"", z.disk_name),
            CONTROL_TIMEOUT,
            &options.cancel,
        )
        .await?;
    let sas = access.get("accessSAS").and_then(Value::as_str).ok_or_else(|| AzureError::Unexpected {
        what: format!("granting write access to disk \"{}\"", z.disk_name),
        message: "the answer has no accessSAS".into(),
    })?;
    let blob = pages::client(sas)
        .map(std::sync::Arc::new)
        .map_err(|message| AzureError::Unexpected { what: format!("opening disk \"{}\"", z.disk_name), message })?;
    let payload: u64 = writes.iter().map(|w| w.len).sum();
    tracing::info!(
        "azure: writing {payload} of {} bytes into disk \"{}\" ({} Put Page requests; holes are skipped)",
        layout.len(),
        z.disk_name,
        writes.len()
    );
    let started = Instant::now();
    let sent = pages::upload(&blob, &z.disk_name, image, writes, options).await?;
    tracing::info!(
        "azure: disk \"{}\" written: {} bytes in {} requests, {:.1} s",
        z.disk_name,
        sent.bytes,
        sent.requests,
        started.elapsed().as_secs_f64()
    );
    revoke(arm, &paths.disk, &z.disk_name, &options.cancel).await?;
    tracing::info!(
        "azure: creating image version {version} of {} in {}",
        z.image_definition_name,
        regions(z).join(", ")
    );
    let body = with_ownership(gallery::version_body(z, disk_id)?, cfg);
    let what = format!("creating image version {version}");
    let _unfinished = crate::cancel::track(format!(
        "Azure gallery image version {} (unfinished; az sig image-version delete --ids {0})",
        paths.version
    ));
    let created = tokio::select! {
        created = arm.put(&paths.version, GALLERIES_API, &body, &what, VERSION_TIMEOUT, &options.cancel) => created,
        never = watch_replication(arm, paths, regions(z).len()) => match never {},
    };
    let created = match created {
        Ok(created) => created,
        Err(e) => {
            // A version that failed or was interrupted half-way is not a release: remove it before the disk.
            remove_version(arm, paths, &version).await;
            return Err(e);
        }
    };
    let id = resource_id(&created, &paths.version);
    let status = arm
        .get(&format!("{}?$expand=ReplicationStatus", paths.version), GALLERIES_API, "reading the replication status")
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let states = replication_states(&status);
    tracing::info!(
        "azure: image version {id} created; replication: {}",
        if states.is_empty() { regions(z).join(", ") } else { states.join(", ") }
    );
    let value = if z.sharing_profile == "community" {
        let gallery = arm.get(&paths.gallery, GALLERIES_API, "reading the gallery").await?.unwrap_or_default();
        gallery::community_reference(&gallery, &z.image_definition_name, &version).ok_or_else(|| {
            AzureError::Unexpected {
                what: format!("reading the community name of gallery {}", paths.gallery),
                message: "the gallery is shared with the community but has no public name".into(),
            }
        })?
    } else {
        id
    };
    Ok(vec![Reference::global(value)])
}

fn regions(z: &AzureConfig) -> Vec<String> {
    z.location.iter().chain(&z.replication_regions).cloned().collect()
}

/// Logs each region's replication state as it changes, until dropped.
async fn watch_replication(arm: &Arm, paths: &Paths, total: usize) -> std::convert::Infallible {
    let url = format!("{}?$expand=ReplicationStatus", paths.version);
    let mut seen: Vec<String> = Vec::new();
    let mut pause = Duration::from_secs(2);
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
        let Ok(Some(version)) = arm.get(&url, GALLERIES_API, "reading the replication status").await else { continue };
        let now = replication_states(&version);
        if now != seen {
            let done = now.iter().filter(|state| state.ends_with(" Completed")).count();
            tracing::info!("azure: replicate {done}/{total}: {}", now.join(", "));
            seen = now;
        }
    }
}

/// "REGION STATE" of each region in a version read with `$expand=ReplicationStatus`.
fn replication_states(version: &Value) -> Vec<String> {
    let summary = version.pointer("/properties/replicationStatus/summary").and_then(Value::as_array);
    summary
        .into_iter()
        .flatten()
        .map(|r| {
            let field = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
            format!("{} {}", field("region"), field("state"))
        })
        .collect()
}

/// Ends the write access to the disk at `path` (`endGetAccess`).
async fn revoke(arm: &Arm, path: &str, disk: &str, cancel: &Cancel) -> Result<(), AzureError> {
    arm.post(
        &format!("{path}/endGetAccess"),
        DISKS_API,
        None,
        &format!("revoking access to disk \"{disk}\""),
        CONTROL_TIMEOUT,
        cancel,
    )
    .await
    .map(drop)
}

/// Deletes a version whose creation failed or was interrupted; patient and not cancellable, like [`remove_disk`].
async fn remove_version(arm: &Arm, paths: &Paths, version: &str) {
    let patient = arm.with_retry(patient_policy());
    match patient
        .delete(
            &paths.version,
            GALLERIES_API,
            &format!("deleting image version {version}"),
            CONTROL_TIMEOUT,
            &Cancel::new(),
        )
        .await
    {
        Ok(true) => tracing::info!("azure: deleted the unfinished image version {version}"),
        Ok(false) => {}
        Err(e) => tracing::error!(
            "azure: could not delete the unfinished image version {} ({e}); delete it with `az sig image-version \
             delete --ids {0}`",
            paths.version
        ),
    }
}

fn patient_policy() -> RetryPolicy {
    RetryPolicy { max_attempts: 12, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(10) }
}

/// Revokes access to the upload disk and deletes it. It runs after Ctrl-C too (with its own cancel flag) and is
/// patient, because the failure may have been Azure going away for a moment. A grant of access still running when
/// the run was interrupted can make the delete conflict (409); access is then revoked again.
async fn remove_disk(arm: &Arm, path: &str, disk: &str) -> Result<(), AzureError> {
    let patient = arm.with_retry(patient_policy());
    let fresh = Cancel::new();
    let mut round = 1;
    loop {
        if let Err(e) = revoke(&patient, path, disk, &fresh).await {
            tracing::debug!("azure: revoking access to disk \"{disk}\": {e}");
        }
        let what = format!("deleting disk \"{disk}\"");
        match arm.delete(path, DISKS_API, &what, CONTROL_TIMEOUT, &fresh).await {
            Ok(deleted) => {
                if deleted {
                    tracing::info!("azure: deleted the upload disk \"{disk}\"");
                }
                return Ok(());
            }
            Err(AzureError::Api { status: 409, .. }) if round < 5 => {
                tracing::debug!("azure: disk \"{disk}\" is still busy; revoking access again");
                tokio::time::sleep(Duration::from_secs(round)).await;
                round += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn ensure_gallery(arm: &Arm, z: &AzureConfig, paths: &Paths, cancel: &Cancel) -> Result<(), AzureError> {
    let name = z.shared_image_gallery.clone().unwrap_or_default();
    let mut existing = arm.get(&paths.gallery, GALLERIES_API, &format!("reading gallery {name}")).await?;
    match &existing {
        Some(found) => gallery::check_gallery(z, found)?,
        None => {
            tracing::info!("azure: creating gallery \"{name}\" ({} sharing)", z.sharing_profile);
            let body = gallery::gallery_body(z);
            existing = Some(
                arm.put(
                    &paths.gallery,
                    GALLERIES_API,
                    &body,
                    &format!("creating gallery {name}"),
                    CONTROL_TIMEOUT,
                    cancel,
                )
                .await?,
            );
        }
    }
    if z.sharing_profile == "community" && !existing.as_ref().is_some_and(gallery::community_enabled) {
        tracing::info!("azure: enabling community sharing of gallery \"{name}\"");
        arm.post(
            &format!("{}/share", paths.gallery),
            GALLERIES_API,
            Some(&json!({"operationType": "EnableCommunity"})),
            &format!("enabling community sharing of gallery {name}"),
            CONTROL_TIMEOUT,
            cancel,
        )
        .await?;
    }
    Ok(())
}

async fn ensure_definition(arm: &Arm, z: &AzureConfig, paths: &Paths, cancel: &Cancel) -> Result<(), AzureError> {
    let name = &z.image_definition_name;
    match arm.get(&paths.definition, GALLERIES_API, &format!("reading image definition {name}")).await? {
        Some(found) => gallery::check_definition(z, &found),
        None => {
            tracing::info!(
                "azure: creating image definition \"{name}\" ({}, {})",
                gallery::security_type(&z.attestation_variant),
                z.architecture
            );
            let body = gallery::definition_body(z);
            arm.put(
                &paths.definition,
                GALLERIES_API,
                &body,
                &format!("creating image definition {name}"),
                CONTROL_TIMEOUT,
                cancel,
            )
            .await
            .map(drop)
        }
    }
}

/// The variant's gallery image versions (every version of its image definition) and leftover upload disks named by
/// `diskName` (`uplosi delete`, `uplosi prune`).
pub async fn list_stored(cfg: &VariantConfig) -> Result<Vec<crate::provider::Stored>, AzureError> {
    use crate::config::names::NamePattern;
    use crate::provider::{Stored, TAG_NAME, parse_timestamp};
    let z = &cfg.azure;
    let arm = connect(z).await?;
    let paths = Paths::new(z, &version_name(cfg));
    let mut found = Vec::new();
    let what = format!("listing the versions of image definition {}", z.image_definition_name);
    for version in arm.list(&format!("{}/versions", paths.definition), GALLERIES_API, &what).await? {
        let name = version.get("name").and_then(Value::as_str).unwrap_or_default();
        let Ok(parsed) = name.parse::<crate::version::ImageVersion>() else { continue };
        let mut item = Stored::new(
            parsed,
            "image-version",
            resource_id(&version, &format!("{}/versions/{name}", paths.definition)),
        );
        item.region = version.get("location").and_then(Value::as_str).map(crate::config::model::azure_region);
        item.created = version
            .pointer("/properties/publishingProfile/publishedDate")
            .and_then(Value::as_str)
            .and_then(parse_timestamp);
        item.tag_name = version.pointer(&format!("/tags/{TAG_NAME}")).and_then(Value::as_str).map(str::to_string);
        found.push(item);
    }
    // Leftover upload disks are looked for only if their name tells the version.
    if let Ok(pattern) = NamePattern::of(cfg, crate::config::schema::Section::Azure, "diskName") {
        let disks = format!("{}/providers/Microsoft.Compute/disks", paths.group);
        for disk in arm.list(&disks, DISKS_API, "listing the disks of the resource group").await? {
            let name = disk.get("name").and_then(Value::as_str).unwrap_or_default();
            if let Some(version) = pattern.version_of(name) {
                let mut item = Stored::new(version, "disk", resource_id(&disk, &format!("{disks}/{name}")));
                item.region = disk.get("location").and_then(Value::as_str).map(crate::config::model::azure_region);
                item.created =
                    disk.pointer("/properties/timeCreated").and_then(Value::as_str).and_then(parse_timestamp);
                item.tag_name = disk.pointer(&format!("/tags/{TAG_NAME}")).and_then(Value::as_str).map(str::to_string);
                found.push(item);
            }
        }
    }
    Ok(found)
}

/// Deletes an image version (waiting for its operation) or a leftover disk (revoking its access first); what is
/// gone already counts as deleted. A deletion in flight is not interrupted.
pub async fn delete_stored(cfg: &VariantConfig, item: &crate::provider::Stored) -> Result<(), AzureError> {
    let arm = connect(&cfg.azure).await?;
    let name = item.id.rsplit('/').next().unwrap_or_default();
    match item.kind {
        "disk" => remove_disk(&arm, &item.id, name).await,
        _ => {
            let what = format!("deleting image version {name}");
            arm.delete(&item.id, GALLERIES_API, &what, CONTROL_TIMEOUT, &Cancel::new()).await.map(drop)
        }
    }
}
