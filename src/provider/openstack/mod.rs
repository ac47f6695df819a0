//! OpenStack: authenticate from clouds.yaml (Keystone v3, or none with an explicit endpoint), create the Glance
//! image record, stream the image into it as qcow2 (only clusters with data) or raw, wait until it is `active`,
//! check Glance's sha512 and md5 against the bytes sent, then set visibility and protection. The reference is the
//! image ID.
//!
//! A record that never became a finished image is deleted again on any failure or Ctrl-C, so a failed run leaves
//! nothing behind.

pub mod clouds;
pub mod error;
pub mod glance;
pub mod keystone;

use std::sync::Arc;

use md5::Md5;
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

pub use error::OpenStackError;

use crate::config::{OpenStackConfig, VariantConfig};
use crate::format::{self, Layout};
use crate::image::{ImageError, SourceImage};
use crate::progress::Progress;
use crate::provider::{Reference, UploadOptions};
use crate::transfer::http::{self, TlsOptions};
use crate::transfer::session::Sessions;
use crate::transfer::stream::{self, ChunkSink};
use crate::transfer::{RetryPolicy, Stopped, poll_until};
use glance::{Glance, ImageRecord};

/// A cloud, authenticated, with its image service.
#[derive(Clone)]
struct Target {
    cloud: clouds::Cloud,
    glance: Glance,
    project_id: Option<String>,
}

/// Sessions by cloud name: the preflight authenticates once, and the upload and other variants of the same cloud
/// reuse its token instead of logging in again, while it is fresh. Keystone tokens live an hour by default; a
/// variant that waited for its turn (`--jobs`) logs in again, so its token outlives the upload and the wait for
/// `active`.
static SESSIONS: Sessions<Target> = Sessions::new(std::time::Duration::from_secs(15 * 60));

async fn connect(cfg: &VariantConfig) -> Result<Target, OpenStackError> {
    let name = clouds::cloud_name(cfg.openstack.cloud.as_deref())?;
    if let Some(target) = SESSIONS.get(&name) {
        return Ok(target);
    }
    let target = login(&name).await?;
    SESSIONS.put(&name, target.clone());
    Ok(target)
}

async fn login(name: &str) -> Result<Target, OpenStackError> {
    let name = name.to_string();
    let cloud = clouds::load(&clouds::SearchPath::from_env(), &name)?;
    let tls = TlsOptions { extra_ca: cloud.cacert.clone(), insecure: !cloud.verify };
    let client = http::client(&tls).map_err(|source| OpenStackError::Tls { cloud: name.clone(), source })?;
    let session = keystone::authenticate(&client, &cloud).await?;
    tracing::debug!(
        "openstack: cloud \"{name}\" from {}, image service at {}{}",
        cloud.file.display(),
        session.image_url,
        session.project_id.as_deref().map(|p| format!(", project {p}")).unwrap_or_default()
    );
    Ok(Target { glance: Glance::new(client, &session.image_url, session.token), project_id: session.project_id, cloud })
}

/// The image of the same name that will be replaced, if any; errors when it may not be.
async fn existing(target: &Target, o: &OpenStackConfig) -> Result<Option<ImageRecord>, OpenStackError> {
    let mut found = target.glance.images_named(&o.image_name, target.project_id.as_deref()).await?;
    match found.len() {
        0 => Ok(None),
        1 => {
            let image = found.remove(0);
            if image.protected {
                Err(OpenStackError::Protected { name: o.image_name.clone(), id: image.id })
            } else if !o.replace {
                Err(OpenStackError::Exists { name: o.image_name.clone(), id: image.id })
            } else {
                Ok(Some(image))
            }
        }
        _ => Err(OpenStackError::Ambiguous {
            name: o.image_name.clone(),
            ids: found.into_iter().map(|i| i.id).collect(),
        }),
    }
}

/// Checks before any data moves that the cloud entry exists, a token can be had, the image endpoint answers, and
/// an image of the same name does not stop the run.
pub async fn preflight(cfg: &VariantConfig) -> Result<(), OpenStackError> {
    let target = connect(cfg).await?;
    existing(&target, &cfg.openstack).await.map(drop)
}

/// The `POST /v2/images` body. The record starts private and unprotected; visibility and protection are set once
/// the data is in, so a half-uploaded image is never visible to others and can always be deleted. It carries the
/// `uplosi-name` and `uplosi-version` properties, by which `delete` and `prune` tell whose it is.
fn create_body(cfg: &VariantConfig) -> Value {
    let o = &cfg.openstack;
    let mut body = json!({
        "name": o.image_name,
        "disk_format": o.disk_format,
        "container_format": "bare",
        "visibility": "private",
        "os_hidden": o.hidden,
        "tags": o.tags,
        "min_disk": o.min_disk_gb,
        "min_ram": o.min_ram_mb,
        "hw_architecture": o.architecture,
        "hw_firmware_type": "uefi",
    });
    for (key, value) in &o.properties {
        body[key] = Value::String(value.clone());
    }
    for (key, value) in crate::provider::ownership_tags(cfg) {
        body[key] = Value::String(value);
    }
    body
}

/// The images of the variant in Glance at any version (`uplosi delete`, `uplosi prune`).
pub async fn list_stored(cfg: &VariantConfig) -> Result<Vec<crate::provider::Stored>, OpenStackError> {
    use crate::config::names::NamePattern;
    let pattern = NamePattern::of(cfg, crate::config::schema::Section::OpenStack, "imageName")
        .map_err(|e| OpenStackError::Lifecycle(e.to_string()))?;
    let target = connect(cfg).await?;
    let images = target.glance.images(target.project_id.as_deref()).await?;
    Ok(images
        .into_iter()
        .filter_map(|record| {
            let version = pattern.version_of(record.name.as_deref()?)?;
            let mut item = crate::provider::Stored::new(version, "image", record.id);
            item.region = target.cloud.region_name.clone();
            item.created = record.created_at.as_deref().and_then(crate::provider::parse_timestamp);
            item.tag_name = record.uplosi_name;
            item.keep = record.protected.then(|| "protected in Glance".to_string());
            Some(item)
        })
        .collect())
}

/// Deletes a Glance image; one already gone counts as deleted.
pub async fn delete_stored(cfg: &VariantConfig, item: &crate::provider::Stored) -> Result<(), OpenStackError> {
    connect(cfg).await?.glance.delete(&item.id).await
}

/// The image as the configured disk format, laid out for streaming.
async fn build_layout(
    image: &SourceImage,
    disk_format: &str,
    options: &UploadOptions,
) -> Result<Layout, OpenStackError> {
    let (image, cancel, qcow2) = (image.clone(), options.cancel.clone(), disk_format == "qcow2");
    let io_threads = std::thread::available_parallelism().map(usize::from).unwrap_or(1).clamp(2, 4);
    let layout = tokio::task::spawn_blocking(move || -> Result<Layout, ImageError> {
        Ok(if qcow2 {
            // The same map as `uplosi convert --format qcow2`, so Glance stores exactly the file convert writes.
            format::qcow2::layout(&image.extents(format::qcow2::CLUSTER, io_threads, &|| cancel.is_cancelled())?)
        } else {
            format::raw::layout(&image.allocated()?)
        })
    })
    .await
    .map_err(|e| OpenStackError::Read(std::io::Error::other(e.to_string())))?;
    layout.map_err(|e| match e {
        ImageError::Interrupted => OpenStackError::Interrupted,
        e => OpenStackError::Image(e),
    })
}

/// An upload attempt that moves no data for this long is abandoned (and retried): a server that stopped reading is
/// otherwise only noticed by TCP keepalive much later.
const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// sha512 and md5 of the bytes sent, computed as they are read.
struct Digests {
    sha512: Sha512,
    md5: Md5,
}

impl ChunkSink for Digests {
    fn update(&mut self, chunk: &[u8]) {
        // The two digests run side by side so hashing keeps up with the network.
        let (sha512, md5) = (&mut self.sha512, &mut self.md5);
        std::thread::scope(|s| {
            s.spawn(|| md5.update(chunk));
            sha512.update(chunk);
        });
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Uploads `image` as configured by `cfg` and returns the Glance image ID.
pub async fn upload(
    cfg: &VariantConfig,
    image: &SourceImage,
    options: &UploadOptions,
) -> Result<Vec<Reference>, OpenStackError> {
    let o = &cfg.openstack;
    let target = connect(cfg).await?;
    let layout = build_layout(image, &o.disk_format, options).await?;
    if let Some(old) = existing(&target, o).await? {
        tracing::info!("openstack: deleting the existing image \"{}\" ({}, {})", o.image_name, old.id, old.status);
        target.glance.delete(&old.id).await?;
    }
    let record = target.glance.create(&create_body(cfg)).await?;
    tracing::info!(
        "openstack: created image \"{}\" ({}) in cloud \"{}\"; sending {} bytes of {}",
        o.image_name,
        record.id,
        target.cloud.name,
        layout.len(),
        o.disk_format
    );
    let _unfinished = crate::cancel::track(format!(
        "Glance image {} (\"{}\") in cloud \"{}\": openstack image delete {}",
        record.id, o.image_name, target.cloud.name, record.id
    ));
    match fill(&target, &record.id, o, image, layout, options).await {
        Ok(()) => Ok(vec![Reference { region: target.cloud.region_name.clone(), value: record.id, details: None }]),
        Err(e) => {
            remove_unfinished(&target.glance, &record.id).await;
            Err(e)
        }
    }
}

/// Deletes the record of a failed or interrupted upload. It runs after Ctrl-C too: the cancel flag is not
/// consulted. It is patient (about a minute at most) because the failure may have been Glance itself going away
/// for a moment, and a record left behind is worse than a late exit.
async fn remove_unfinished(glance: &Glance, id: &str) {
    let patient = RetryPolicy {
        max_attempts: 12,
        base_delay: std::time::Duration::from_millis(500),
        max_delay: std::time::Duration::from_secs(10),
    };
    match glance.with_retry(patient).delete(id).await {
        Ok(()) => tracing::info!("openstack: deleted the unfinished image {id}"),
        Err(e) => tracing::error!(
            "openstack: could not delete the unfinished image {id} ({e}); delete it with `openstack image delete {id}`"
        ),
    }
}

/// Streams the data, waits for `active`, checks the digests and sets visibility and protection.
async fn fill(
    target: &Target,
    id: &str,
    o: &OpenStackConfig,
    image: &SourceImage,
    layout: Layout,
    options: &UploadOptions,
) -> Result<(), OpenStackError> {
    let (digests, sent) = send_data(target, id, image, layout, options).await?;
    let timeout = o.timeout_duration().unwrap_or(std::time::Duration::from_secs(1800));
    let last_status = std::sync::Mutex::new(String::new());
    let what = format!("Glance image {id} to become active");
    let active = poll_until(&what, timeout, &options.cancel, || async {
        let record = target.glance.get(id).await?;
        *last_status.lock().unwrap_or_else(|p| p.into_inner()) = record.status.clone();
        match record.status.as_str() {
            "active" => Ok(Some(record)),
            "killed" | "deleted" => Err(OpenStackError::Failed { id: id.to_string(), status: record.status }),
            _ => Ok(None),
        }
    })
    .await
    .map_err(|stopped| match stopped {
        Stopped::Failed(e) => e,
        Stopped::Interrupted => OpenStackError::Interrupted,
        Stopped::TimedOut => OpenStackError::Timeout {
            id: id.to_string(),
            status: last_status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            timeout: o.timeout.clone(),
        },
        Stopped::Panicked(message) => OpenStackError::Unexpected { what: format!("waiting for {id}"), message },
    })?;
    verify(id, &active, digests, sent)?;
    let mut ops = Vec::new();
    if active.visibility.as_deref() != Some(o.visibility.as_str()) {
        ops.push(json!({"op": "replace", "path": "/visibility", "value": o.visibility}));
    }
    if o.protected {
        ops.push(json!({"op": "replace", "path": "/protected", "value": true}));
    }
    if !ops.is_empty() {
        target.glance.patch(id, &Value::Array(ops)).await?;
    }
    tracing::info!("openstack: image {id} is active ({} bytes, visibility {})", sent, o.visibility);
    Ok(())
}

/// Compares what Glance computed with what was sent.
fn verify(id: &str, record: &ImageRecord, digests: Digests, sent: u64) -> Result<(), OpenStackError> {
    let mismatch = |algorithm: &str, stored: &str, sent: String| OpenStackError::Digest {
        id: id.to_string(),
        algorithm: algorithm.to_string(),
        stored: stored.to_string(),
        sent,
    };
    if let Some(size) = record.size
        && size != sent
    {
        return Err(mismatch("size", &size.to_string(), sent.to_string()));
    }
    let md5 = hex(&digests.md5.finalize());
    match record.checksum.as_deref() {
        Some(stored) if stored != md5 => return Err(mismatch("md5", stored, md5)),
        Some(_) => {}
        None => tracing::warn!("openstack: Glance reported no checksum for {id}; md5 not compared"),
    }
    let sha512 = hex(&digests.sha512.finalize());
    match (record.os_hash_algo.as_deref(), record.os_hash_value.as_deref()) {
        (Some("sha512"), Some(stored)) if stored != sha512 => return Err(mismatch("sha512", stored, sha512)),
        (Some("sha512"), Some(_)) => {}
        (algo, _) => tracing::warn!(
            "openstack: Glance hashes with {} here, not sha512; only md5 was compared for {id}",
            algo.unwrap_or("nothing")
        ),
    }
    tracing::debug!("openstack: {id}: {sent} bytes, md5 {md5}, sha512 matches");
    Ok(())
}

/// Streams `layout` into the image, retrying the whole request on transient failures while Glance still has the
/// record `queued` (it resets a failed upload to `queued`; anything else means the data cannot be sent again).
async fn send_data(
    target: &Target,
    id: &str,
    image: &SourceImage,
    layout: Layout,
    options: &UploadOptions,
) -> Result<(Digests, u64), OpenStackError> {
    let layout = Arc::new(layout);
    let progress = Progress::bytes(layout.len(), "glance");
    let policy = RetryPolicy::default();
    let mut attempt = 1;
    let result = loop {
        if options.cancel.is_cancelled() {
            break Err(OpenStackError::Interrupted);
        }
        progress.reset();
        let digests = Digests { sha512: Sha512::new(), md5: Md5::new() };
        let running = stream::spawn(Arc::clone(&layout), Arc::clone(&image.data), digests, options.cancel.clone());
        let bar = progress.clone();
        let watch = Arc::new(stream::BodyWatch::default());
        let body = stream::body(running.body, Arc::clone(&watch), move |n| bar.inc(n));
        let sent = tokio::select! {
            sent = target.glance.upload(id, body) => sent,
            () = options.cancel.cancelled() => Err(OpenStackError::Interrupted),
            () = stream::stalled(&watch, STALL_LIMIT) => Err(OpenStackError::Transport {
                what: format!("uploading the data of Glance image {id}"),
                message: format!(
                    "Glance took no data for {} s after {} bytes; giving up on this attempt",
                    STALL_LIMIT.as_secs(),
                    watch.sent()
                ),
                retry: true,
            }),
        };
        let read = running.reader.await.map_err(|e| std::io::Error::other(e.to_string())).and_then(|r| r);
        let error = match (sent, read) {
            (Ok(()), Ok(done)) => break Ok(done),
            (_, Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => break Err(OpenStackError::Interrupted),
            (Err(OpenStackError::Interrupted), _) => break Err(OpenStackError::Interrupted),
            // Reading the image failed: final, whatever the request made of its aborted body.
            (_, Err(e)) if e.kind() != std::io::ErrorKind::BrokenPipe => break Err(OpenStackError::Read(e)),
            // The reader stops with a broken pipe when the request ended first; the request's error says why.
            (Err(e), _) => e,
            (Ok(()), Err(e)) => break Err(OpenStackError::Read(e)),
        };
        if attempt >= policy.max_attempts || !error.verdict().is_retry() {
            break Err(error);
        }
        match target.glance.get(id).await {
            Ok(record) if record.status == "queued" => {}
            Ok(record) => {
                tracing::warn!("openstack: image {id} is {} after a failed upload; not retrying", record.status);
                break Err(error);
            }
            Err(_) => break Err(error),
        }
        tracing::warn!("openstack: {error}; sending the data again (attempt {})", attempt + 1);
        tokio::time::sleep(policy.pause(attempt, error.verdict())).await;
        attempt += 1;
    };
    progress.finish();
    result
}
