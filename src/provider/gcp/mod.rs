//! GCP: put the image on Compute Engine. The sparse tar of the image is gzip-compressed on all cores and streamed
//! into a Cloud Storage object as it is produced ([`upload`]), `images.insert` makes the image in its family from
//! that object ([`compute`]), and the object is deleted again. Publishing (`allAuthenticatedUsers` as image user)
//! happens only with `publish = true`; `deprecateOlder` deprecates the family's older images. The reference is
//! `projects/PROJECT/global/images/NAME`, as the Go tool prints it.

pub mod compute;
pub mod credential;
pub mod error;
pub mod storage;
pub mod upload;

use std::time::{Duration, Instant};

pub use error::GcpError;

use crate::cancel::Cancel;
use crate::config::{GcpConfig, VariantConfig};
use crate::image::SourceImage;
use crate::provider::{Reference, UploadOptions};
use crate::transfer::RetryPolicy;
use crate::transfer::session::Sessions;
use compute::Compute;
use storage::Gcs;

/// Creating an image from a large archive takes GCE many minutes.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// Deleting an image.
const DELETE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The clients of one project and endpoint pair.
#[derive(Clone)]
struct Session {
    compute: Compute,
    gcs: Gcs,
}

/// Signed-in clients: the preflight loads the credentials and checks them once; the uploads reuse the clients.
static SESSIONS: Sessions<Session> = Sessions::new(Duration::from_secs(15 * 60));

async fn connect(g: &GcpConfig) -> Result<Session, GcpError> {
    let project = g.project.clone().unwrap_or_default();
    let (storage_endpoint, emulated) = storage::endpoint(&g.storage_endpoint);
    let key = format!("{project} {} {storage_endpoint}", g.compute_endpoint);
    if let Some(session) = SESSIONS.get(&key) {
        return Ok(session);
    }
    let credentials = credential::load()?;
    // The first token proves the credentials before any work (and fails fast without any).
    credential::headers(&credentials).await?;
    let storage_credentials = if emulated { credential::anonymous() } else { credentials.clone() };
    if emulated {
        tracing::debug!("gcp: Cloud Storage at {storage_endpoint} (STORAGE_EMULATOR_HOST), without credentials");
    }
    let session = Session {
        compute: Compute::new(&g.compute_endpoint, &project, credentials).await?,
        gcs: Gcs::new(&storage_endpoint, storage_credentials)?,
    };
    SESSIONS.put(&key, session.clone());
    Ok(session)
}

/// Checks before any data moves: the credentials give a token, the project is reachable, the bucket is readable
/// (or absent, to be created), and `replace = false` finds no image of the same name.
pub async fn preflight(cfg: &VariantConfig) -> Result<(), GcpError> {
    let g = &cfg.gcp;
    let session = connect(g).await?;
    let project = session.compute.project().to_string();
    match session.compute.probe().await {
        Ok(()) => {}
        Err(GcpError::Api { status: 401 | 403 | 404, message, .. }) => {
            return Err(GcpError::Project { project, message });
        }
        Err(e) => return Err(e),
    }
    let bucket = g.bucket.clone().unwrap_or_default();
    match session.gcs.bucket(&bucket).await {
        Ok(Some(_)) => {}
        Ok(None) => tracing::info!("gcp: bucket {bucket} does not exist; it will be created in {}", location(g)),
        Err(GcpError::Api { status: 401 | 403, message, .. }) => return Err(GcpError::Bucket { bucket, message }),
        Err(e) => return Err(e),
    }
    if !g.replace
        && let Some(existing) = session.compute.get(&g.image_name).await?
    {
        return Err(GcpError::Exists {
            name: g.image_name.clone(),
            link: compute::reference(&project, &g.image_name, existing.self_link.as_deref()),
        });
    }
    Ok(())
}

fn location(g: &GcpConfig) -> String {
    g.location.clone().unwrap_or_default()
}

/// Uploads `image` as configured by `cfg` and returns the image path.
pub async fn upload(
    cfg: &VariantConfig,
    image: &SourceImage,
    options: &UploadOptions,
) -> Result<Vec<Reference>, GcpError> {
    let g = &cfg.gcp;
    let session = connect(g).await?;
    let bucket = g.bucket.clone().unwrap_or_default();
    if session.gcs.bucket(&bucket).await?.is_none() {
        tracing::info!("gcp: creating bucket {bucket} in {}", location(g));
        let project = session.compute.project().to_string();
        session.gcs.create_bucket(&project, &bucket, &location(g)).await.map_err(|e| match e {
            GcpError::Api { status: 401 | 403, message, .. } => GcpError::Bucket { bucket: bucket.clone(), message },
            e => e,
        })?;
    }
    let object = g.blob_name.clone();
    let _leftover = crate::cancel::track(format!(
        "Cloud Storage object gs://{bucket}/{object} (delete it: gcloud storage rm gs://{bucket}/{object})"
    ));
    let result = create_image(&session, cfg, &bucket, image, options).await;
    // Afterwards, on failure and after Ctrl-C alike: the object only carried the data to the image.
    remove_object(&session.gcs, &bucket, &object).await;
    result
}

/// Streams the archive, creates the image from it, and publishes and deprecates as configured.
async fn create_image(
    session: &Session,
    cfg: &VariantConfig,
    bucket: &str,
    image: &SourceImage,
    options: &UploadOptions,
) -> Result<Vec<Reference>, GcpError> {
    let g = &cfg.gcp;
    let project = session.compute.project().to_string();
    let name = &g.image_name;
    let layout = upload::tar_layout(image)?;
    tracing::info!(
        "gcp: compressing and uploading {} bytes of tar to gs://{bucket}/{} on {} threads",
        layout.len(),
        g.blob_name,
        std::thread::available_parallelism().map(usize::from).unwrap_or(1)
    );
    let started = Instant::now();
    let sent = upload::send(&session.gcs, bucket, &g.blob_name, image, layout, options).await?;
    tracing::info!(
        "gcp: gs://{bucket}/{} written: {} bytes ({:.1}% of {} tar bytes) in {:.1} s, {} chunk(s) sent again, \
         CRC32C verified",
        g.blob_name,
        sent.bytes,
        sent.bytes as f64 * 100.0 / sent.tar_bytes.max(1) as f64,
        sent.tar_bytes,
        started.elapsed().as_secs_f64(),
        sent.retries
    );
    if let Some(old) = session.compute.get(name).await? {
        let link = compute::reference(&project, name, old.self_link.as_deref());
        if !g.replace {
            return Err(GcpError::Exists { name: name.clone(), link });
        }
        tracing::info!("gcp: deleting the existing image {link}");
        session.compute.delete(name, DELETE_TIMEOUT, &options.cancel).await?;
    }
    tracing::info!(
        "gcp: creating image {name} in family {} ({}, features {})",
        g.image_family,
        g.architecture,
        g.guest_os_features.join(", ")
    );
    let body = compute::image_body(cfg, &compute::source_url(bucket, &g.blob_name));
    let _unfinished = crate::cancel::track(format!(
        "Compute Engine image projects/{project}/global/images/{name} (unfinished; gcloud compute images delete {name} \
         --project {project})"
    ));
    if let Err(e) = session.compute.create(body, IMAGE_TIMEOUT, &options.cancel).await {
        // An image that failed or was interrupted half-way is not a release.
        remove_image(&session.compute, name).await;
        return Err(e);
    }
    let created = session.compute.get(name).await?;
    let link = compute::reference(&project, name, created.as_ref().and_then(|i| i.self_link.as_deref()));
    tracing::info!("gcp: image {link} created");
    if g.publish {
        tracing::info!("gcp: publishing: granting {} to {}", compute::PUBLISH_ROLE, compute::PUBLISH_MEMBER);
        if !session.compute.grant(name, compute::PUBLISH_ROLE, compute::PUBLISH_MEMBER).await? {
            tracing::info!("gcp: the image was already published");
        }
    }
    if g.deprecate_older {
        deprecate_older(&session.compute, g, created.as_ref().and_then(|i| i.self_link.clone()), &options.cancel)
            .await?;
    }
    Ok(vec![Reference::global(link)])
}

/// Marks the family's other READY images DEPRECATED, with the new image as their replacement.
async fn deprecate_older(
    compute: &Compute,
    g: &GcpConfig,
    self_link: Option<String>,
    cancel: &Cancel,
) -> Result<(), GcpError> {
    let replacement =
        self_link.unwrap_or_else(|| format!("projects/{}/global/images/{}", compute.project(), g.image_name));
    let older: Vec<String> = compute
        .family(&g.image_family)
        .await?
        .into_iter()
        .filter(|i| i.name.as_deref() != Some(g.image_name.as_str()))
        .filter(|i| i.status.as_ref().and_then(|s| s.name()) == Some("READY"))
        .filter(|i| {
            i.deprecated.as_ref().and_then(|d| d.state.as_ref()).and_then(|s| s.name()).is_none_or(|s| s == "ACTIVE")
        })
        .filter_map(|i| i.name)
        .collect();
    for old in &older {
        tracing::info!("gcp: deprecating image {old} (replaced by {})", g.image_name);
        compute.deprecate(old, &replacement, cancel).await?;
    }
    if older.is_empty() {
        tracing::info!("gcp: no older READY image in family {} to deprecate", g.image_family);
    }
    Ok(())
}

fn patient_policy() -> RetryPolicy {
    RetryPolicy { max_attempts: 12, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(10) }
}

/// Deletes the archive object; runs after Ctrl-C too and is patient, because the failure may have been Google
/// going away for a moment.
async fn remove_object(gcs: &Gcs, bucket: &str, object: &str) {
    match gcs.with_retry(patient_policy()).delete_object(bucket, object).await {
        Ok(true) => tracing::info!("gcp: deleted gs://{bucket}/{object}"),
        Ok(false) => {}
        Err(e) => tracing::error!(
            "gcp: could not delete gs://{bucket}/{object} ({e}); delete it with `gcloud storage rm gs://{bucket}/{object}`"
        ),
    }
}

/// Deletes an image whose creation failed or was interrupted, with a fresh cancel flag.
async fn remove_image(compute: &Compute, name: &str) {
    let project = compute.project().to_string();
    match compute.with_retry(patient_policy()).delete(name, DELETE_TIMEOUT, &Cancel::new()).await {
        Ok(true) => tracing::info!("gcp: deleted the unfinished image {name}"),
        Ok(false) => {}
        Err(e) => tracing::error!(
            "gcp: could not delete the unfinished image {name} ({e}); delete it with `gcloud compute images delete \
             {name} --project {project}`"
        ),
    }
}

/// The variant's images in the project (in its family, when it has one) at any version, and leftover archive
/// objects named by `blobName` (`uplosi delete`, `uplosi prune`).
pub async fn list_stored(cfg: &VariantConfig) -> Result<Vec<crate::provider::Stored>, GcpError> {
    use crate::config::names::NamePattern;
    use crate::config::schema::Section;
    use crate::provider::{Stored, TAG_NAME, parse_timestamp};
    let g = &cfg.gcp;
    let pattern = NamePattern::of(cfg, Section::Gcp, "imageName").map_err(|e| GcpError::Lifecycle(e.to_string()))?;
    let session = connect(g).await?;
    let mut found = Vec::new();
    for image in session.compute.all().await? {
        let Some(version) = image.name.as_deref().and_then(|n| pattern.version_of(n)) else { continue };
        if !g.image_family.is_empty() && image.family.as_deref().is_some_and(|f| f != g.image_family) {
            continue;
        }
        let mut item = Stored::new(version, "image", image.name.clone().unwrap_or_default());
        item.created = image.creation_timestamp.as_deref().and_then(parse_timestamp);
        // Labels hold the name as a label value; the variant's own name, so written, is the variant's.
        item.tag_name = image
            .labels
            .get(TAG_NAME)
            .map(|label| if *label == compute::label_value(&cfg.name) { cfg.name.clone() } else { label.clone() });
        found.push(item);
    }
    if let (Ok(objects), Some(bucket)) = (NamePattern::of(cfg, Section::Gcp, "blobName"), g.bucket.as_deref()) {
        let prefix = objects.glob().split('*').next().unwrap_or_default().to_string();
        for (name, time_created) in session.gcs.list_objects(bucket, &prefix).await? {
            if let Some(version) = objects.version_of(&name) {
                let mut item = Stored::new(version, "object", format!("gs://{bucket}/{name}"));
                item.created = time_created.as_deref().and_then(parse_timestamp);
                found.push(item);
            }
        }
    }
    Ok(found)
}

/// Deletes an image (waiting for its operation) or an object; what is gone already counts as deleted. A
/// deletion in flight is not interrupted.
pub async fn delete_stored(cfg: &VariantConfig, item: &crate::provider::Stored) -> Result<(), GcpError> {
    let session = connect(&cfg.gcp).await?;
    match item.kind {
        "object" => {
            let rest = item.id.strip_prefix("gs://").unwrap_or(&item.id);
            let (bucket, object) = rest.split_once('/').unwrap_or((rest, ""));
            session.gcs.delete_object(bucket, object).await.map(drop)
        }
        _ => session.compute.delete(&item.id, DELETE_TIMEOUT, &Cancel::new()).await.map(drop),
    }
}
