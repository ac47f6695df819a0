//! The GCE tar.gz, compressed on all cores and sent to Cloud Storage as it is produced.
//!
//! A blocking thread runs the parallel gzip of [`format::gzip`] over the sparse tar of [`format::targz`] and hands
//! compressed pieces through a small bounded channel to a resumable upload ([`storage::Session`]), which sends them
//! in chunks of [`CHUNK`] (a multiple of 256 KiB, as GCS requires). A chunk stays in memory until GCS has persisted
//! it and is resent from its start after a transient error, on the same session URI: nothing is written to disk and
//! the image is read once. The CRC32C of the bytes sent is compared with the object's.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::error::{GcpError, verdict};
use super::storage::{ChunkResult, Gcs, Session};
use crate::cancel::Cancel;
use crate::format::{self, Layout};
use crate::image::SourceImage;
use crate::progress::Progress;
use crate::provider::UploadOptions;
use crate::transfer::RetryPolicy;
use crate::transfer::channel::ChannelWriter;

/// Bytes per resumable-upload request: 256 × 256 KiB (GCS wants multiples of 256 KiB). Two chunks are held (one in
/// flight for resending, one filling), so this is most of the upload's memory. Fewer, larger requests cost less per
/// byte, and fake-gcs-server even re-hashes the whole object on every chunk: for the bench image (bench/gcp.sh) the
/// upload took 15.5 s with 16 MiB chunks, 9.9–11.4 s with 48 MiB and 8.4–9.9 s with 64 MiB, at a peak RSS of about
/// 220 MiB. Above 32 MiB glibc serves each buffer with its own mapping and returns it when freed, so the peak stays
/// at two chunks.
pub const CHUNK: usize = 64 << 20;
/// Compressed bytes handed over at a time.
const PIECE: usize = 1 << 20;
/// Pieces waiting between the compressor and the upload.
const QUEUE: usize = 8;
/// Chunk buffers: one in flight (kept for resending) and one filling meanwhile.
const BUFFERS: usize = 2;
/// One chunk request may take this long (16 MiB at 0.5 Mbit/s).
const CHUNK_TIMEOUT: Duration = Duration::from_secs(300);
/// How long Ctrl-C waits for the answer to the last chunk, which finishes the object.
const LAST_CHUNK_GRACE: Duration = Duration::from_secs(30);

/// What went into the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Uncompressed tar bytes.
    pub tar_bytes: u64,
    /// Compressed bytes sent (the object's size).
    pub bytes: u64,
    /// CRC32C of the bytes sent.
    pub crc32c: u32,
    /// Chunk requests that failed and were sent again.
    pub retries: u32,
}

/// The tar stream of `image`: the allocated ranges only (no scan for zeros, so the image is read once), with the
/// disk size rounded up to a whole GiB.
pub fn tar_layout(image: &SourceImage) -> Result<Layout, GcpError> {
    let map = image.allocated()?;
    let mtime = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(format::targz::tar_layout(&map, mtime))
}

/// Compresses `layout` over `image` and streams it into `gs://bucket/object`.
pub async fn send(
    gcs: &Gcs,
    bucket: &str,
    object: &str,
    image: &SourceImage,
    layout: Layout,
    options: &UploadOptions,
) -> Result<Sent, GcpError> {
    let session = gcs.start_upload(bucket, object, "application/gzip").await?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let tar_bytes = layout.len();
    let progress = Progress::bytes(tar_bytes, "tar.gz → GCS");
    let compressor = {
        let (image, cancel, progress) = (image.clone(), options.cancel.clone(), progress.clone());
        let threads = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        tokio::task::spawn_blocking(move || {
            // An empty piece marks the end of a complete stream.
            let mut writer = ChannelWriter::new(tx, PIECE, |piece| piece);
            format::gzip::compress(
                layout.reader(&*image.data),
                &mut writer,
                6,
                threads,
                &|n| progress.inc(n),
                &|| cancel.is_cancelled(),
            )?;
            writer.send_buffer().map_err(|e| format::FormatError::from_write(e, 0))?;
            // The end marker: only a complete stream may finish the object.
            writer.send(Bytes::new()).map_err(format::FormatError::Write)
        })
    };
    let uploaded = send_chunks(gcs, &session, rx, &options.cancel).await;
    if uploaded.is_err() {
        // Nothing of an unfinished upload may stay; the compressor stops at its next write.
        gcs.cancel_upload(&session).await;
    }
    let compressed = compressor
        .await
        .map_err(|e| GcpError::Unexpected { what: "compressing the GCE tar.gz".into(), message: e.to_string() })?;
    if options.cancel.is_cancelled() {
        return Err(GcpError::Interrupted);
    }
    // A compressor that failed on its own (a read error) ended the stream early and explains the failure; one that
    // failed because the upload stopped has nothing to add.
    let (stored, mut sent) = match (uploaded, compressed) {
        (Ok(done), Ok(())) => done,
        (_, Err(format::FormatError::Interrupted)) => return Err(GcpError::Interrupted),
        (Err(e), Err(format::FormatError::Write(_))) => return Err(e),
        (_, Err(e)) => return Err(GcpError::Compress(e)),
        (Err(e), Ok(())) => return Err(e),
    };
    progress.finish();
    sent.tar_bytes = tar_bytes;
    check_object(&stored, &sent, bucket, object)?;
    Ok(sent)
}

/// A chunk ready to send, with the buffer permit it holds until GCS has persisted it.
struct Chunk {
    data: Bytes,
    last: bool,
    _buffer: OwnedSemaphorePermit,
}

/// Cuts the compressed pieces into chunks of exactly [`CHUNK`] bytes (the last may be shorter, even empty) while
/// the previous chunk is being sent. A permit of `buffers` is taken before a chunk is filled, so at most
/// [`BUFFERS`] chunks exist: one in flight, one filling.
async fn assemble(
    mut pieces: mpsc::Receiver<Bytes>,
    chunks: mpsc::Sender<Chunk>,
    buffers: Arc<Semaphore>,
    cancel: &Cancel,
) -> Result<(), GcpError> {
    let mut carry = Bytes::new();
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&buffers).acquire_owned() => permit.map_err(|e| GcpError::Unexpected {
                what: "buffering the upload".into(),
                message: e.to_string(),
            })?,
            () = cancel.cancelled() => return Err(GcpError::Interrupted),
        };
        let mut data = Vec::with_capacity(CHUNK);
        data.extend_from_slice(&std::mem::take(&mut carry));
        let mut last = false;
        while data.len() < CHUNK {
            let piece = tokio::select! {
                piece = pieces.recv() => piece,
                () = cancel.cancelled() => return Err(GcpError::Interrupted),
            };
            match piece {
                Some(piece) if piece.is_empty() => {
                    last = true;
                    break;
                }
                Some(piece) => {
                    let room = CHUNK - data.len();
                    if piece.len() > room {
                        data.extend_from_slice(&piece[..room]);
                        carry = piece.slice(room..);
                    } else {
                        data.extend_from_slice(&piece);
                    }
                }
                None => {
                    return Err(GcpError::Unexpected {
                        what: "compressing the GCE tar.gz".into(),
                        message: "the compressor stopped before the end".into(),
                    });
                }
            }
        }
        if chunks.send(Chunk { data: Bytes::from(data), last, _buffer: permit }).await.is_err() || last {
            // The uploader stopped (and says why), or this was the end.
            return Ok(());
        }
    }
}

/// Collects pieces into chunks and sends each, retrying it from its start; the next chunk fills while one is in
/// flight. Ctrl-C stops it between requests and aborts a chunk in flight, except the last: that one finishes the
/// object, so it is given [`LAST_CHUNK_GRACE`] to land, and the cleanup then finds and deletes the object instead
/// of racing with it.
async fn send_chunks(
    gcs: &Gcs,
    session: &Session,
    pieces: mpsc::Receiver<Bytes>,
    cancel: &Cancel,
) -> Result<(serde_json::Value, Sent), GcpError> {
    let (chunk_tx, mut chunk_rx) = mpsc::channel(1);
    let assembler = assemble(pieces, chunk_tx, Arc::new(Semaphore::new(BUFFERS)), cancel);
    // It owns the chunk receiver, so an uploader that stops makes the assembler's next send fail, ending it too.
    let uploader = async move {
        let policy = RetryPolicy::default();
        let mut sent = Sent { tar_bytes: 0, bytes: 0, crc32c: 0, retries: 0 };
        while let Some(Chunk { data, last, _buffer }) = chunk_rx.recv().await {
            let offset = sent.bytes;
            let total = last.then(|| offset + data.len() as u64);
            sent.crc32c = crc32c::crc32c_append(sent.crc32c, &data);
            let mut start = 0usize;
            let mut attempt = 1;
            let result = loop {
                let part = data.slice(start..);
                let request = gcs.put_chunk(session, offset + start as u64, part, total, CHUNK_TIMEOUT);
                tokio::pin!(request);
                let answer = tokio::select! {
                    answer = &mut request => answer,
                    () = cancel.cancelled() => {
                        if total.is_some() {
                            let _ = tokio::time::timeout(LAST_CHUNK_GRACE, request).await;
                        }
                        return Err(GcpError::Interrupted);
                    }
                };
                match answer {
                    Ok(ChunkResult::Persisted(upto)) if upto >= offset + data.len() as u64 || total.is_some() => {
                        break ChunkResult::Persisted(upto);
                    }
                    Ok(ChunkResult::Persisted(upto)) => {
                        // GCS kept only part of the chunk: send the rest (a short Range is not an error).
                        start = usize::try_from(upto.saturating_sub(offset)).unwrap_or(0).min(data.len());
                    }
                    Ok(done) => break done,
                    Err(e) if attempt < policy.max_attempts && verdict(&e).is_retry() => {
                        tracing::debug!("gcp: chunk at {offset} failed (attempt {attempt}), sending it again: {e}");
                        tokio::select! {
                            () = tokio::time::sleep(policy.pause(attempt, verdict(&e))) => {}
                            () = cancel.cancelled() => return Err(GcpError::Interrupted),
                        }
                        attempt += 1;
                        sent.retries += 1;
                        start = 0;
                    }
                    Err(e) => return Err(e),
                }
            };
            sent.bytes += data.len() as u64;
            match result {
                ChunkResult::Finished(object) => return Ok((object, sent)),
                ChunkResult::Persisted(upto) if total.is_some() => {
                    return Err(GcpError::Unexpected {
                        what: format!("finishing the upload ({} bytes)", sent.bytes),
                        message: format!("GCS did not finish the object after its last chunk (it has {upto} bytes)"),
                    });
                }
                ChunkResult::Persisted(_) => {}
            }
        }
        Err(GcpError::Unexpected {
            what: "uploading the GCE tar.gz".into(),
            message: "the stream ended without its last chunk".into(),
        })
    };
    // The assembler's error (the compressor stopped) and the uploader's both end the upload; the uploader's result
    // is the object.
    let (assembled, uploaded) = futures_util::future::join(assembler, uploader).await;
    match (assembled, uploaded) {
        (_, Ok(done)) => Ok(done),
        (Err(e), Err(_)) | (Ok(()), Err(e)) => Err(e),
    }
}

/// Checks the finished object against what was sent: size and CRC32C.
fn check_object(stored: &serde_json::Value, sent: &Sent, bucket: &str, object: &str) -> Result<(), GcpError> {
    let b64 = |crc: u32| base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes());
    let size = stored.get("size").and_then(|v| v.as_str().and_then(|s| s.parse::<u64>().ok()).or(v.as_u64()));
    if size != Some(sent.bytes) {
        return Err(GcpError::Unexpected {
            what: format!("uploading gs://{bucket}/{object}"),
            message: format!(
                "the object has {} bytes, {} were sent",
                size.map_or("no".into(), |s| s.to_string()),
                sent.bytes
            ),
        });
    }
    match stored.get("crc32c").and_then(|v| v.as_str()) {
        Some(stored_crc) if stored_crc != b64(sent.crc32c) => Err(GcpError::Checksum {
            bucket: bucket.to_string(),
            object: object.to_string(),
            sent: b64(sent.crc32c),
            stored: stored_crc.to_string(),
        }),
        Some(_) => {
            tracing::debug!("gcp: gs://{bucket}/{object}: {} bytes, crc32c {}", sent.bytes, b64(sent.crc32c));
            Ok(())
        }
        None => {
            tracing::warn!("gcp: gs://{bucket}/{object} has no CRC32C to compare with the bytes sent");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_chunk_is_a_multiple_of_256_kib() {
        assert_eq!(CHUNK % (256 << 10), 0);
    }

    #[test]
    fn the_object_must_have_the_size_and_crc32c_sent() {
        let sent = Sent { tar_bytes: 10, bytes: 5, crc32c: crc32c::crc32c(b"hello"), retries: 0 };
        let crc = base64::engine::general_purpose::STANDARD.encode(sent.crc32c.to_be_bytes());
        assert!(check_object(&json!({"size": "5", "crc32c": crc}), &sent, "b", "o").is_ok());
        let wrong_crc = check_object(&json!({"size": "5", "crc32c": "AAAAAA=="}), &sent, "b", "o");
        assert!(matches!(wrong_crc, Err(GcpError::Checksum { .. })));
        let truncated = check_object(&json!({"size": "4", "crc32c": crc}), &sent, "b", "o");
        assert!(matches!(truncated, Err(GcpError::Unexpected { .. })));
    }
}
