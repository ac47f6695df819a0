//! Blobs into a repository: a stream goes into one upload session in chunked `PATCH`es as it is produced, and the
//! session is closed with `PUT ?digest=` once the producer has hashed the last byte, so nothing is written to disk.
//! A chunk that fails is resent from where the registry says it got (`GET` of the session: `Range: 0-N`); only
//! the chunk in flight is kept for that. Small blobs (the empty config, the measurements) go up in one request.

use bytes::{Bytes, BytesMut};
use reqwest::Method;
use tokio::sync::mpsc;

use super::error::OciError;
use super::registry::{Call, Registry};
use crate::cancel::Cancel;
use crate::transfer::RetryPolicy;

/// Bytes per `PATCH`: large enough that a request's overhead does not count, small enough that the one chunk kept
/// for resending costs little memory.
pub const CHUNK: usize = 32 << 20;

/// Where a blob stands in the repository before anything is sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Presence {
    /// The registry has it already.
    Present,
    /// It was mounted from another repository of the registry.
    Mounted,
    /// It must be sent; the mount attempt may have opened this upload session.
    Absent(Option<String>),
}

/// Whether the repository has blob `digest`, mounting it from `mount_from` when that repository has it.
pub async fn presence(registry: &Registry, digest: &str, mount_from: Option<&str>) -> Result<Presence, OciError> {
    let head = registry
        .send(
            Call::new(Method::HEAD, registry.path(&format!("blobs/{digest}")), "pull"),
            "checking a blob",
            &[200, 404],
        )
        .await?;
    if head.status().as_u16() == 200 {
        return Ok(Presence::Present);
    }
    let Some(from) = mount_from else { return Ok(Presence::Absent(None)) };
    let mut call =
        Call::new(Method::POST, format!("{}?mount={digest}&from={from}", registry.path("blobs/uploads/")), "pull,push");
    call.also_pull = Some(from.to_string());
    let response = registry.send(call, "mounting a blob", &[201, 202]).await?;
    if response.status().as_u16() == 201 {
        return Ok(Presence::Mounted);
    }
    Ok(Presence::Absent(location_of(&response)))
}

fn location_of(response: &reqwest::Response) -> Option<String> {
    response.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The bytes stored, from the `Range: 0-N` header (N+1 bytes). Distribution says `0-0` for an empty upload too;
/// uplosi never has a 1-byte chunk in flight, so `0-0` is read as nothing stored.
fn stored(response: &reqwest::Response) -> Option<u64> {
    let range = response.headers().get(reqwest::header::RANGE)?.to_str().ok()?;
    let end: u64 = range.trim().trim_start_matches("bytes=").split_once('-')?.1.parse().ok()?;
    Some(if end == 0 { 0 } else { end + 1 })
}

/// How long Ctrl-C waits for the chunk request in flight: its answer carries the session's new state, without
/// which a registry will not let the session be cancelled.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// An open upload session.
pub struct Session<'a> {
    registry: &'a Registry,
    location: String,
    /// Listed as a leftover until committed or cancelled (a second Ctrl-C names it).
    _leftover: crate::cancel::Leftover,
    /// Bytes the registry has.
    pub offset: u64,
    /// Chunks resent after a failure.
    pub resent: u32,
}

impl<'a> Session<'a> {
    /// Opens a session (or takes over `location`, one a mount attempt opened).
    pub async fn open(registry: &'a Registry, location: Option<String>) -> Result<Self, OciError> {
        let location = match location {
            Some(l) => l,
            None => {
                let call = Call::new(Method::POST, registry.path("blobs/uploads/"), "pull,push");
                let response = registry.send(call, "starting a blob upload", &[202]).await?;
                location_of(&response).ok_or_else(|| OciError::Resume {
                    repository: registry.shown.clone(),
                    message: "the registry started an upload without a Location".into(),
                })?
            }
        };
        let leftover = crate::cancel::track(format!(
            "blob upload session {} (the registry expires it; or DELETE it)",
            registry.absolute(&location)
        ));
        Ok(Self { registry, location, _leftover: leftover, offset: 0, resent: 0 })
    }

    /// How many bytes the registry has stored (`GET` of the session).
    async fn status(&mut self) -> Result<u64, OciError> {
        let call = Call::new(Method::GET, self.location.clone(), "pull,push");
        let response = self.registry.send(call, "asking how far the blob upload got", &[204]).await?;
        if let Some(l) = location_of(&response) {
            self.location = l;
        }
        Ok(stored(&response).unwrap_or(0))
    }

    /// Sends `data`, which starts at [`Session::offset`]; a failed request is resumed from the registry's `Range`.
    /// Ctrl-C stops the request in flight.
    pub async fn patch(&mut self, mut data: Bytes, cancel: &Cancel) -> Result<(), OciError> {
        let policy = RetryPolicy::default();
        let mut attempt = 1;
        while !data.is_empty() {
            let end = self.offset + data.len() as u64 - 1;
            let call = Call::new(Method::PATCH, self.location.clone(), "pull,push")
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{}-{end}", self.offset))
                .body(data.clone());
            let send = self.registry.send_unretried(call, "sending a blob chunk");
            tokio::pin!(send);
            let sent = tokio::select! {
                sent = &mut send => sent,
                () = cancel.cancelled() => {
                    if let Ok(Ok(response)) = tokio::time::timeout(CANCEL_GRACE, &mut send).await
                        && response.status().as_u16() == 202
                        && let Some(l) = location_of(&response)
                    {
                        self.location = l;
                        self.offset = end + 1;
                    }
                    return Err(OciError::Interrupted);
                }
            };
            let result = match sent {
                Ok(response) if response.status().as_u16() == 202 => Ok(response),
                Ok(response) => Err(self.registry.error(response, "sending a blob chunk").await),
                Err(e) => Err(e),
            };
            match result {
                Ok(response) => {
                    if let Some(l) = location_of(&response) {
                        self.location = l;
                    }
                    self.offset = end + 1;
                    return Ok(());
                }
                Err(error) if attempt < policy.max_attempts && (error.verdict().is_retry() || is_range(&error)) => {
                    tracing::warn!("oci: {error}; resuming the blob upload (attempt {})", attempt + 1);
                    tokio::time::sleep(policy.pause(attempt, error.verdict())).await;
                    attempt += 1;
                    self.resent += 1;
                    let have = self.status().await?;
                    if have < self.offset || have > end + 1 {
                        return Err(OciError::Resume {
                            repository: self.registry.shown.clone(),
                            message: format!("it has {have} bytes, but the chunk in hand covers {}-{end}", self.offset),
                        });
                    }
                    data = data.slice((have - self.offset) as usize..);
                    self.offset = have;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Closes the session: the registry checks the bytes against `digest` and stores the blob.
    pub async fn commit(self, digest: &str) -> Result<(), OciError> {
        let separator = if self.location.contains('?') { '&' } else { '?' };
        let call = Call::new(Method::PUT, format!("{}{separator}digest={digest}", self.location), "pull,push")
            .header("Content-Type", "application/octet-stream");
        let response = self.registry.send(call, "finishing the blob upload", &[201]).await?;
        let stored = response.headers().get("Docker-Content-Digest").and_then(|v| v.to_str().ok());
        match stored {
            Some(got) if got != digest => Err(OciError::Digest {
                repository: self.registry.shown.clone(),
                expected: digest.to_string(),
                got: got.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Cancels the session (the registry drops what it got); it runs after Ctrl-C too. A chunk request dropped on
    /// the way may still be written at the registry for a moment, and a registry refuses to cancel a session whose
    /// size is not the one its state token says: so the session's state is read until it stops changing, and the
    /// cancel goes to the `Location` that state comes with.
    pub async fn abort(mut self) {
        let mut last = None;
        for _ in 0..50 {
            match self.status().await {
                Ok(n) if last == Some(n) => break,
                Ok(n) => last = Some(n),
                Err(_) => break,
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let call = Call::new(Method::DELETE, self.location.clone(), "pull,push");
        match self.registry.send(call, "cancelling the blob upload", &[204, 404]).await {
            Ok(r) if r.status().as_u16() == 204 => tracing::info!("oci: cancelled the unfinished blob upload"),
            Ok(_) => tracing::info!("oci: the unfinished blob upload is gone already"),
            Err(e) => tracing::warn!("oci: could not cancel the blob upload session ({e}); the registry expires it"),
        }
    }
}

fn is_range(error: &OciError) -> bool {
    matches!(error, OciError::Registry { status: 416, .. } | OciError::Registry { status: 400, .. })
}

/// What a produced stream was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Produced {
    /// `sha256:…` of the bytes.
    pub digest: String,
    /// Their count.
    pub size: u64,
}

/// Streams `pieces` into a new blob (or the session `location` a mount attempt opened) in chunks of [`CHUNK`];
/// `finished` yields the digest and size once the producer is done. On any failure or Ctrl-C the session is
/// cancelled.
pub async fn push_stream<F>(
    registry: &Registry,
    location: Option<String>,
    mut pieces: mpsc::Receiver<std::io::Result<Bytes>>,
    finished: F,
    on_sent: &(dyn Fn(u64) + Sync),
    cancel: &Cancel,
) -> Result<(Produced, u32), OciError>
where
    F: std::future::Future<Output = Result<Produced, OciError>>,
{
    let mut session = Session::open(registry, location).await?;
    let sent = async {
        let mut chunk = BytesMut::with_capacity(CHUNK);
        loop {
            let piece = tokio::select! {
                piece = pieces.recv() => piece,
                () = cancel.cancelled() => return Err(OciError::Interrupted),
            };
            match piece {
                Some(Ok(bytes)) => {
                    chunk.extend_from_slice(&bytes);
                    if chunk.len() >= CHUNK {
                        let len = chunk.len() as u64;
                        session.patch(chunk.split().freeze(), cancel).await?;
                        on_sent(len);
                    }
                }
                // The producer's own error is what `finished` reports.
                Some(Err(_)) => break,
                None => break,
            }
        }
        if !chunk.is_empty() {
            let len = chunk.len() as u64;
            session.patch(chunk.freeze(), cancel).await?;
            on_sent(len);
        }
        Ok(())
    }
    .await;
    // Stop the producer if the upload failed, then hear what it made of the stream.
    drop(pieces);
    let produced = finished.await;
    let result = match (sent, produced) {
        (Ok(()), Ok(produced)) if produced.size == session.offset => Ok(produced),
        (Ok(()), Ok(produced)) => Err(OciError::Unexpected {
            what: "streaming the blob".into(),
            message: format!("{} bytes were produced, {} sent", produced.size, session.offset),
        }),
        (Err(OciError::Interrupted), _) | (_, Err(OciError::Interrupted)) => Err(OciError::Interrupted),
        (_, Err(e @ (OciError::Format(_) | OciError::Image(_)))) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e),
    };
    match result {
        Ok(produced) => {
            let resent = session.resent;
            match session.commit(&produced.digest).await {
                Ok(()) => Ok((produced, resent)),
                Err(e) => Err(e),
            }
        }
        Err(e) => {
            session.abort().await;
            Err(e)
        }
    }
}

/// Pushes `content` as one blob (unless the registry has it), returning its digest.
pub async fn push_small(registry: &Registry, content: Bytes) -> Result<String, OciError> {
    let digest = super::manifest::digest(&content);
    if presence(registry, &digest, None).await? == Presence::Present {
        return Ok(digest);
    }
    let session = Session::open(registry, None).await?;
    let separator = if session.location.contains('?') { '&' } else { '?' };
    let call = Call::new(Method::PUT, format!("{}{separator}digest={digest}", session.location), "pull,push")
        .header("Content-Type", "application/octet-stream")
        .body(content);
    match registry.send(call, "uploading a blob", &[201]).await {
        Ok(_) => Ok(digest),
        Err(e) => {
            session.abort().await;
            Err(e)
        }
    }
}
