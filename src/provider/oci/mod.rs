//! OCI registries: the image as an artifact laid out as `oras push` lays out one file (an OCI 1.1 image manifest
//! with an `artifactType`, the empty config, one `application/vnd.oci.image.layer.v1.tar` layer titled with its
//! file name), pushed by digest, then tagged; the measurements, when computed, as a second artifact whose `subject`
//! is the first, listed through the referrers API or, where the registry has none, the `sha256-<hex>` tag index,
//! as `oras attach` does. The reference is `REPOSITORY@sha256:DIGEST`.
//!
//! The layer is the qcow2 (or raw) stream of the image, or that qcow2 as the only member of a tar compressed with
//! xz on every core (`qcow2.tar.xz`, what cloud-api-adaptor publishes for `oras pull` and `tar xJf`). It goes
//! straight into one blob upload session as it is produced; no temporary file. A blob the repository has, or can
//! mount from `mountFrom`, is not sent again: its digest is known from a pass over the image before anything is
//! sent (for `qcow2.tar.xz`, the qcow2's digest, matched against the `dev.uplosi.payload.digest` annotation of
//! the layers the tags already point to).
//!
//! On any failure or Ctrl-C what the run pushed is removed again: the upload session, the manifest (and with it
//! the tags the run set) and its measurements referrer. Blobs nothing references are left to the registry's
//! garbage collection, as every registry client does.

pub mod auth;
pub mod blob;
pub mod error;
pub mod manifest;
pub mod registry;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::Method;
use sha2::{Digest, Sha256};

pub use error::OciError;

use crate::config::registry::Repository;
use crate::config::{OciConfig, VariantConfig};
use crate::format::{self, Layout};
use crate::image::{ImageError, SourceImage};
use crate::progress::Progress;
use crate::provider::{Reference, Stored, UploadOptions};
use crate::transfer::channel::ChannelWriter;
use crate::transfer::stream::{self, ChunkSink};
use blob::{Presence, Produced};
use manifest::{Descriptor, Manifest};
use registry::{Call, Registry};

/// The manifest media types a `HEAD`/`GET` of a tag accepts.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json";

/// Connects to the variant's repository with the credentials the standard files hold.
async fn connect(o: &OciConfig) -> Result<Registry, OciError> {
    connect_to(&o.repository, o.plain_http).await
}

async fn connect_to(repository: &str, plain_http: bool) -> Result<Registry, OciError> {
    // Validated with the configuration.
    let parsed = Repository::parse(repository).map_err(|message| OciError::Lifecycle(message.clone()))?;
    let credentials = auth::lookup(&parsed, &auth::search_path())?;
    if let Some(c) = &credentials {
        tracing::debug!("oci: credentials for {} from {}", parsed.registry, c.source);
    }
    Registry::connect(&parsed, repository, plain_http, credentials).await
}

/// The digest `tag` points to, if it exists.
async fn tag_digest(registry: &Registry, tag: &str) -> Result<Option<String>, OciError> {
    let call = Call::new(Method::HEAD, registry.path(&format!("manifests/{tag}")), "pull").header("Accept", ACCEPT);
    let response = registry.send(call, &format!("looking up tag {tag}"), &[200, 404]).await?;
    if response.status().as_u16() == 404 {
        return Ok(None);
    }
    let digest = response.headers().get("Docker-Content-Digest").and_then(|v| v.to_str().ok()).map(str::to_string);
    Ok(Some(digest.unwrap_or_default()))
}

/// The manifest at `reference` (a tag or digest), parsed, with its digest; `None` when there is none.
async fn get_manifest(registry: &Registry, reference: &str) -> Result<Option<(Manifest, String)>, OciError> {
    let call =
        Call::new(Method::GET, registry.path(&format!("manifests/{reference}")), "pull").header("Accept", ACCEPT);
    let response = registry.send(call, &format!("reading manifest {reference}"), &[200, 404]).await?;
    if response.status().as_u16() == 404 {
        return Ok(None);
    }
    let body = response.bytes().await.map_err(|e| OciError::Transport {
        repository: registry.shown.clone(),
        what: format!("reading manifest {reference}"),
        message: e.to_string(),
    })?;
    let digest = manifest::digest(&body);
    Ok(serde_json::from_slice::<Manifest>(&body).ok().map(|m| (m, digest)))
}

/// Refuses existing tags when `replace = false`; returns the digests the tags point to now.
async fn check_tags(registry: &Registry, o: &OciConfig) -> Result<Vec<String>, OciError> {
    let mut old = Vec::new();
    for tag in &o.tags {
        if let Some(digest) = tag_digest(registry, tag).await? {
            if !o.replace {
                return Err(OciError::Exists { repository: o.repository.clone(), tag: tag.to_string(), digest });
            }
            tracing::info!("oci: {}:{tag} exists ({digest}); it will point to the new artifact", o.repository);
            if !old.contains(&digest) {
                old.push(digest);
            }
        }
    }
    Ok(old)
}

/// How many tags uplosi looks through to see whether a replaced artifact is still tagged.
const REPLACED_SCAN_LIMIT: usize = 500;

/// Removes the artifacts the tags pointed to before (and their measurements), as other providers delete the
/// image they replace, unless another tag of the repository still points to one.
async fn remove_replaced(registry: &Registry, old: &[String], new: &str) {
    let old: Vec<&String> = old.iter().filter(|d| d.as_str() != new).collect();
    if old.is_empty() {
        return;
    }
    let Ok(all) = tags(registry).await else { return };
    let plain: Vec<&String> = all.iter().filter(|t| !t.starts_with("sha256-")).collect();
    if plain.len() > REPLACED_SCAN_LIMIT {
        tracing::info!(
            "oci: {} has {} tags; the replaced artifacts are left to the registry",
            registry.shown,
            plain.len()
        );
        return;
    }
    let mut tagged = std::collections::BTreeSet::new();
    for tag in plain {
        if let Ok(Some(digest)) = tag_digest(registry, tag).await {
            tagged.insert(digest);
        }
    }
    for digest in old.into_iter().filter(|d| !tagged.contains(*d)) {
        tracing::info!("oci: removing the replaced artifact {}@{digest}", registry.shown);
        remove(registry, digest).await;
    }
}

/// Checks before any data moves that the registry answers, the credentials work, and no tag stops the run.
pub async fn preflight(cfg: &VariantConfig) -> Result<(), OciError> {
    let registry = connect(&cfg.oci).await?;
    // A push-scoped request, so a registry that lets anyone pull but not push says so now.
    blob::presence(&registry, &manifest::Descriptor::empty_config().digest, None).await?;
    check_tags(&registry, &cfg.oci).await.map(drop)
}

/// SHA-256 and size of a stream, on the reading thread.
#[derive(Default)]
struct Sha256Sink(Sha256);

impl ChunkSink for Sha256Sink {
    fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }
}

/// The name of the qcow2 inside a `qcow2.tar.xz` titled `file_name`: without `.tar.xz`, ending in `.qcow2`
/// (`podvm.tar.xz` holds `podvm.qcow2`, `podvm-1.2.3.qcow2.tar.xz` holds `podvm-1.2.3.qcow2`).
pub fn member_name(file_name: &str) -> String {
    let stem = file_name.strip_suffix(".tar.xz").or_else(|| file_name.strip_suffix(".txz")).unwrap_or(file_name);
    if stem.ends_with(".qcow2") { stem.to_string() } else { format!("{stem}.qcow2") }
}

/// The repository (name inside the registry) `mount_from` names: `registry/name` or a bare name in `registry`.
pub fn mount_source(mount_from: &str, registry: &str) -> String {
    mount_from.strip_prefix(&format!("{registry}/")).unwrap_or(mount_from).to_string()
}

/// The stream of the image in the variant's format: qcow2, raw, or the qcow2 as a tar member (compressed later).
/// Returns the layout pushed (or compressed) and, for `qcow2.tar.xz`, the qcow2 layout inside.
async fn layouts(o: &OciConfig, image: &SourceImage, options: &UploadOptions) -> Result<(Layout, Layout), OciError> {
    let (image, cancel, format) = (image.clone(), options.cancel.clone(), o.format.clone());
    let member = member_name(&o.file_name);
    let io_threads = std::thread::available_parallelism().map(usize::from).unwrap_or(1).clamp(2, 4);
    let built = tokio::task::spawn_blocking(move || -> Result<(Layout, Layout), ImageError> {
        if format == "raw" {
            let layout = format::raw::layout(&image.allocated()?);
            return Ok((layout.clone(), layout));
        }
        let qcow2 =
            format::qcow2::layout(&image.extents(format::qcow2::CLUSTER, io_threads, &|| cancel.is_cancelled())?);
        if format == "qcow2.tar.xz" {
            let mtime = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            return Ok((format::targz::member_layout(&member, &qcow2, mtime), qcow2));
        }
        Ok((qcow2.clone(), qcow2))
    })
    .await
    .map_err(|e| OciError::Unexpected { what: "laying out the image".into(), message: e.to_string() })?;
    built.map_err(|e| match e {
        ImageError::Interrupted => OciError::Interrupted,
        e => OciError::Image(e),
    })
}

/// The digest of `layout` read over the image: one pass, before anything is sent.
async fn digest_of(layout: Arc<Layout>, image: &SourceImage, options: &UploadOptions) -> Result<Produced, OciError> {
    let running = stream::spawn(layout, Arc::clone(&image.data), Sha256Sink::default(), options.cancel.clone());
    let mut body = running.body;
    while body.recv().await.is_some() {}
    finished(running.reader).await
}

async fn finished(reader: tokio::task::JoinHandle<std::io::Result<(Sha256Sink, u64)>>) -> Result<Produced, OciError> {
    let (sink, size) = reader
        .await
        .map_err(|e| OciError::Unexpected { what: "reading the image".into(), message: e.to_string() })?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::Interrupted => OciError::Interrupted,
            _ => OciError::Format(format::FormatError::Read { offset: 0, source: e }),
        })?;
    Ok(Produced { digest: format!("sha256:{}", manifest::hex(&sink.0.finalize())), size })
}

/// A layer that is already in the repository (or in `mountFrom`) for this payload, found through the tags'
/// manifests: a `qcow2.tar.xz` whose `dev.uplosi.payload.digest` is the qcow2's.
async fn earlier_layer(registry: &Registry, o: &OciConfig, payload: &str) -> Result<Option<Descriptor>, OciError> {
    let mut candidates = Vec::new();
    for tag in &o.tags {
        if let Some((m, _)) = get_manifest(registry, tag).await? {
            candidates.extend(
                m.layers
                    .into_iter()
                    .filter(|l| l.annotations.get(manifest::PAYLOAD).map(String::as_str) == Some(payload)),
            );
        }
    }
    if candidates.is_empty()
        && let Some(from) = &o.mount_from
        && let Ok(source) = connect_to(
            &format!("{}/{}", registry.repository.registry, mount_source(from, &registry.repository.registry)),
            o.plain_http,
        )
        .await
    {
        for tag in &o.tags {
            if let Some((m, _)) = get_manifest(&source, tag).await? {
                candidates.extend(
                    m.layers
                        .into_iter()
                        .filter(|l| l.annotations.get(manifest::PAYLOAD).map(String::as_str) == Some(payload)),
                );
            }
        }
    }
    Ok(candidates.into_iter().next())
}

/// Pushes the image layer; returns its descriptor and what was sent.
async fn push_layer(
    registry: &Registry,
    o: &OciConfig,
    image: &SourceImage,
    options: &UploadOptions,
) -> Result<(Descriptor, u64), OciError> {
    let (pushed, payload) = layouts(o, image, options).await?;
    let compressed = o.format == "qcow2.tar.xz";
    let layer = |digest: String, size: u64, payload_digest: Option<&str>| {
        let mut d = Descriptor { digest, size, ..Descriptor::of(manifest::LAYER_TAR, b"") };
        d.annotations.insert(manifest::TITLE.into(), o.file_name.clone());
        if let Some(p) = payload_digest {
            d.annotations.insert(manifest::PAYLOAD.into(), p.to_string());
        }
        d
    };
    let payload = Arc::new(payload);
    let known = digest_of(Arc::clone(&payload), image, options).await?;
    let mount_from = o.mount_from.as_deref().map(|m| mount_source(m, &registry.repository.registry));
    let mount_from = mount_from.as_deref();
    let session = if compressed {
        match earlier_layer(registry, o, &known.digest).await? {
            Some(found) => match blob::presence(registry, &found.digest, mount_from).await? {
                Presence::Present | Presence::Mounted => {
                    tracing::info!(
                        "oci: the registry has this {} already ({}); not sent again",
                        o.format,
                        found.digest
                    );
                    return Ok((layer(found.digest, found.size, Some(&known.digest)), 0));
                }
                Presence::Absent(location) => location,
            },
            None => None,
        }
    } else {
        match blob::presence(registry, &known.digest, mount_from).await? {
            Presence::Present => {
                tracing::info!("oci: {} has blob {} already; not sent again", o.repository, known.digest);
                return Ok((layer(known.digest, known.size, None), 0));
            }
            Presence::Mounted => {
                tracing::info!("oci: mounted blob {} from {}", known.digest, mount_from.unwrap_or_default());
                return Ok((layer(known.digest, known.size, None), 0));
            }
            Presence::Absent(location) => location,
        }
    };
    let progress = Progress::bytes(pushed.len(), if compressed { "qcow2.tar.xz → OCI" } else { "OCI" });
    let (produced, resent) = if compressed {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let (image, cancel, bar) = (image.clone(), options.cancel.clone(), progress.clone());
        let threads = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        let compressor = tokio::task::spawn_blocking(move || -> Result<Produced, OciError> {
            let mut writer = HashingWriter { inner: ChannelWriter::new(tx, 1 << 20, Ok), sha: Sha256::new(), size: 0 };
            let stats =
                format::xz::compress(pushed.reader(&*image.data), &mut writer, threads, &|n| bar.inc(n), &|| {
                    cancel.is_cancelled()
                });
            let stats = stats.map_err(|e| match e {
                format::FormatError::Interrupted => OciError::Interrupted,
                e => OciError::Format(e),
            })?;
            writer.inner.send_buffer().map_err(|e| OciError::Format(format::FormatError::Write(e)))?;
            tracing::debug!("oci: xz {} → {} bytes", stats.input, stats.output);
            Ok(Produced { digest: format!("sha256:{}", manifest::hex(&writer.sha.finalize())), size: writer.size })
        });
        let done = async {
            compressor.await.map_err(|e| OciError::Unexpected { what: "compressing".into(), message: e.to_string() })?
        };
        blob::push_stream(registry, session, rx, done, &|_| {}, &options.cancel).await?
    } else {
        let running =
            stream::spawn(Arc::clone(&payload), Arc::clone(&image.data), Sha256Sink::default(), options.cancel.clone());
        let bar = progress.clone();
        blob::push_stream(
            registry,
            session,
            running.body,
            finished(running.reader),
            &move |n| bar.inc(n),
            &options.cancel,
        )
        .await?
    };
    progress.finish();
    if !compressed && produced.digest != known.digest {
        return Err(OciError::Digest {
            repository: o.repository.clone(),
            expected: known.digest,
            got: produced.digest,
        });
    }
    if resent > 0 {
        tracing::info!("oci: {resent} chunk(s) were resumed after a failure");
    }
    let payload_digest = compressed.then_some(known.digest.as_str());
    Ok((layer(produced.digest, produced.size, payload_digest), produced.size))
}

/// A [`std::io::Write`] that hashes and counts what passes through.
struct HashingWriter<W> {
    inner: W,
    sha: Sha256,
    size: u64,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.sha.update(&data[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Pushes `content` as the manifest `reference` (a digest or a tag).
async fn put_manifest(
    registry: &Registry,
    reference: &str,
    media_type: &str,
    content: &[u8],
) -> Result<reqwest::Response, OciError> {
    let call = Call::new(Method::PUT, registry.path(&format!("manifests/{reference}")), "pull,push")
        .header("Content-Type", media_type)
        .body(Bytes::copy_from_slice(content));
    registry.send(call, &format!("pushing manifest {reference}"), &[201]).await
}

/// Deletes the manifest `digest` (and so every tag pointing to it); one already gone counts as deleted.
async fn delete_manifest(registry: &Registry, digest: &str) -> Result<(), OciError> {
    let call = Call::new(Method::DELETE, registry.path(&format!("manifests/{digest}")), "delete");
    registry.send(call, &format!("deleting manifest {digest}"), &[202, 200, 204, 404]).await.map(drop)
}

/// The referrers of `digest`: through the referrers API, or the `sha256-<hex>` tag index where there is none.
async fn referrers(registry: &Registry, digest: &str) -> Result<(Vec<Descriptor>, Option<String>), OciError> {
    let call =
        Call::new(Method::GET, registry.path(&format!("referrers/{digest}")), "pull").header("Accept", manifest::INDEX);
    let response = registry.send(call, "listing referrers", &[200, 404, 400, 405]).await?;
    let is_index = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with(manifest::INDEX));
    if response.status().as_u16() == 200 && is_index {
        let index: manifest::Index = response.json().await.unwrap_or_default();
        return Ok((index.manifests, None));
    }
    let tag = manifest::referrers_tag(digest);
    let call =
        Call::new(Method::GET, registry.path(&format!("manifests/{tag}")), "pull").header("Accept", manifest::INDEX);
    let response = registry.send(call, "reading the referrers tag index", &[200, 404]).await?;
    if response.status().as_u16() == 404 {
        return Ok((Vec::new(), None));
    }
    let body = response.bytes().await.unwrap_or_default();
    let index: manifest::Index = serde_json::from_slice(&body).unwrap_or_default();
    Ok((index.manifests, Some(manifest::digest(&body))))
}

/// Pushes the measurements as a referrer of `subject`, and lists it in the tag index where the registry has no
/// referrers API. Returns the referrer's digest.
async fn attach(
    registry: &Registry,
    subject: &Descriptor,
    file_name: &str,
    document: Vec<u8>,
    created: &str,
) -> Result<String, OciError> {
    let blob_digest = blob::push_small(registry, Bytes::from(document.clone())).await?;
    blob::push_small(registry, Bytes::from_static(b"{}")).await?;
    let mut layer = Descriptor { digest: blob_digest, ..Descriptor::of("application/json", &document) };
    layer.annotations.insert(manifest::TITLE.into(), file_name.to_string());
    let annotations = BTreeMap::from([(manifest::CREATED.to_string(), created.to_string())]);
    let mut referrer = Manifest::artifact(manifest::MEASUREMENTS_TYPE, layer, annotations);
    referrer.subject = Some(Descriptor { annotations: BTreeMap::new(), artifact_type: None, ..subject.clone() });
    let bytes = referrer.to_bytes();
    let digest = manifest::digest(&bytes);
    let response = put_manifest(registry, &digest, manifest::MANIFEST, &bytes).await?;
    if response.headers().contains_key("OCI-Subject") {
        return Ok(digest);
    }
    // No referrers API: add it to the index tagged sha256-<subject hex>, as oras attach does.
    let (mut listed, _) = referrers(registry, &subject.digest).await?;
    let mut entry = Descriptor::of(manifest::MANIFEST, &bytes);
    entry.artifact_type = Some(manifest::MEASUREMENTS_TYPE.to_string());
    entry.annotations = referrer.annotations.clone();
    if !listed.iter().any(|d| d.digest == digest) {
        listed.push(entry);
    }
    let index = manifest::Index { manifests: listed, ..manifest::Index::new() };
    put_manifest(registry, &manifest::referrers_tag(&subject.digest), manifest::INDEX, &index.to_bytes()).await?;
    Ok(digest)
}

/// Uploads `image` as configured by `cfg`; returns `REPOSITORY@sha256:DIGEST`.
pub async fn upload(
    cfg: &VariantConfig,
    image: &SourceImage,
    options: &UploadOptions,
) -> Result<Vec<Reference>, OciError> {
    let o = &cfg.oci;
    let registry = connect(o).await?;
    let replaced = check_tags(&registry, o).await?;
    let (layer, sent) = push_layer(&registry, o, image, options).await?;
    if options.cancel.is_cancelled() {
        return Err(OciError::Interrupted);
    }
    blob::push_small(&registry, Bytes::from_static(b"{}")).await?;
    let created = manifest::now_rfc3339();
    let mut annotations = BTreeMap::from([(manifest::CREATED.to_string(), created.clone())]);
    for (key, value) in crate::provider::ownership_tags(cfg) {
        annotations.insert(key.to_string(), value);
    }
    annotations.extend(o.annotations.clone());
    let artifact = Manifest::artifact(&o.artifact_type, layer, annotations);
    let bytes = artifact.to_bytes();
    let digest = manifest::digest(&bytes);
    let subject = Descriptor::of(manifest::MANIFEST, &bytes);
    put_manifest(&registry, &digest, manifest::MANIFEST, &bytes).await?;
    let leftover = crate::cancel::track(format!("manifest {}@{digest}", o.repository));
    let finish = async {
        for tag in &o.tags {
            if options.cancel.is_cancelled() {
                return Err(OciError::Interrupted);
            }
            put_manifest(&registry, tag, manifest::MANIFEST, &bytes).await?;
        }
        let attach_wanted = o.attach_measurements.unwrap_or(true);
        let mut referrer = None;
        if let (true, Some(measured)) = (attach_wanted, &options.measurements) {
            let format = crate::measure::document::Format::from_name(&cfg.measurements_format).unwrap_or_default();
            let bank = format.bank(None).unwrap_or_default();
            let document = measured.document(format, bank, &[]).into_bytes();
            let name = format!("measurements-{}.json", format.name());
            referrer = Some(attach(&registry, &subject, &name, document, &created).await?);
        }
        Ok(referrer)
    }
    .await;
    let referrer = match finish {
        Ok(referrer) => referrer,
        Err(e) => {
            // The tags set so far go with the manifest.
            tracing::warn!("oci: removing the unfinished artifact {}@{digest}", o.repository);
            remove(&registry, &digest).await;
            return Err(e);
        }
    };
    drop(leftover);
    remove_replaced(&registry, &replaced, &digest).await;
    let reference = format!("{}@{digest}", o.repository);
    tracing::info!("oci: pushed {reference} ({} bytes sent) as {}", sent, o.tags.join(", "));
    let details = serde_json::json!({
        "repository": o.repository,
        "digest": digest,
        "tags": o.tags,
        "mediaType": manifest::MANIFEST,
        "artifactType": o.artifact_type,
        "measurements": referrer,
    });
    Ok(vec![Reference { region: None, value: reference, details: Some(details) }])
}

/// Removes the manifest `digest` and its referrers (the tag index too); it runs after Ctrl-C as well.
async fn remove(registry: &Registry, digest: &str) {
    if let Ok((listed, index)) = referrers(registry, digest).await {
        for referrer in listed {
            if let Err(e) = delete_manifest(registry, &referrer.digest).await {
                tracing::warn!("oci: could not delete referrer {}: {e}", referrer.digest);
            }
        }
        if let Some(index) = index
            && let Err(e) = delete_manifest(registry, &index).await
        {
            tracing::warn!("oci: could not delete the referrers index: {e}");
        }
    }
    if let Err(e) = delete_manifest(registry, digest).await {
        tracing::error!("oci: could not delete {}@{digest} ({e}); delete it by hand", registry.shown);
    }
}

/// Every tag of the repository, following `Link` pages.
async fn tags(registry: &Registry) -> Result<Vec<String>, OciError> {
    let mut out = Vec::new();
    let mut url = registry.path("tags/list?n=1000");
    loop {
        let response = registry.send(Call::new(Method::GET, url.clone(), "pull"), "listing tags", &[200, 404]).await?;
        if response.status().as_u16() == 404 {
            return Ok(out);
        }
        let next = response
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.split(';').next())
            .map(|l| l.trim().trim_start_matches('<').trim_end_matches('>').to_string());
        let page: serde_json::Value = response.json().await.unwrap_or_default();
        out.extend(page["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_string)));
        match next {
            Some(next) if !next.is_empty() => url = next,
            _ => return Ok(out),
        }
    }
}

/// The artifacts of the variant at any version (`uplosi delete`, `uplosi prune`): the tags the tag templates name
/// with the version left open, one item per manifest.
pub async fn list_stored(cfg: &VariantConfig) -> Result<Vec<Stored>, OciError> {
    use crate::config::names::NamePattern;
    let o = &cfg.oci;
    let patterns: Vec<NamePattern> = o.tag_templates.iter().filter_map(|t| NamePattern::new(t, &cfg.name)).collect();
    if patterns.is_empty() {
        return Err(OciError::Lifecycle(format!(
            "`oci.tags` = {:?} has no tag with the whole version ({{{{.Version}}}}), so the artifacts of different \
             versions cannot be told apart; refusing to delete or prune by it",
            o.tag_templates
        )));
    }
    let registry = connect(o).await?;
    let mut by_digest: BTreeMap<String, Stored> = BTreeMap::new();
    for tag in tags(&registry).await? {
        let Some(version) = patterns.iter().find_map(|p| p.version_of(&tag)) else { continue };
        let Some((m, digest)) = get_manifest(&registry, &tag).await? else { continue };
        let item = by_digest.entry(digest.clone()).or_insert_with(|| {
            let mut item = Stored::new(version, "manifest", format!("{}@{digest}", o.repository));
            item.created = m.annotations.get(manifest::CREATED).and_then(|t| crate::provider::parse_timestamp(t));
            item.tag_name = m.annotations.get(crate::provider::TAG_NAME).cloned();
            item
        });
        item.behind.push(("tag", format!("{}:{tag}", o.repository)));
    }
    Ok(by_digest.into_values().collect())
}

/// Deletes an artifact with its measurements referrer; one already gone counts as deleted. A registry that does
/// not delete says so ([`OciError::DeleteUnsupported`]) and nothing changes.
pub async fn delete_stored(cfg: &VariantConfig, item: &Stored) -> Result<(), OciError> {
    let registry = connect(&cfg.oci).await?;
    let digest = item.id.rsplit_once('@').map_or(item.id.as_str(), |(_, d)| d);
    let (listed, index) = referrers(&registry, digest).await?;
    // The manifest first: a registry that refuses deletes refuses it before anything else changed.
    delete_manifest(&registry, digest).await?;
    for referrer in listed {
        delete_manifest(&registry, &referrer.digest).await?;
    }
    if let Some(index) = index {
        delete_manifest(&registry, &index).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tar_member_is_the_qcow2_the_title_names() {
        assert_eq!(member_name("podvm.tar.xz"), "podvm.qcow2");
        assert_eq!(member_name("podvm-1.2.3.qcow2.tar.xz"), "podvm-1.2.3.qcow2");
        assert_eq!(member_name("disk"), "disk.qcow2");
    }

    #[test]
    fn mount_from_is_a_name_in_the_registry_or_a_reference_there() {
        assert_eq!(mount_source("staging/podvm", "ghcr.io"), "staging/podvm");
        assert_eq!(mount_source("ghcr.io/staging/podvm", "ghcr.io"), "staging/podvm");
    }
}
