//! Streaming a [`Layout`] into an HTTP request body as it is read: a blocking thread reads the layout in chunks
//! and hands them through a small bounded channel, so memory stays at a few chunks whatever the image size and no
//! temporary file is written. Every chunk also goes through a [`ChunkSink`] (digests of the bytes sent).

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cancel::Cancel;
use crate::format::Layout;
use crate::image::ReadAt;

/// Bytes per chunk handed to the HTTP client.
pub const CHUNK: usize = 4 << 20;
/// Chunks buffered between the reader and the connection.
pub const DEPTH: usize = 4;

/// Sees every chunk of a stream, in order, on the reading thread.
pub trait ChunkSink: Send + 'static {
    /// Called with each chunk before it is sent.
    fn update(&mut self, chunk: &[u8]);
}

/// A running stream: the body to send, and the reader whose result is the sink and the byte count.
#[derive(Debug)]
pub struct LayoutStream<S> {
    /// The chunks; an error item aborts the request.
    pub body: mpsc::Receiver<std::io::Result<Bytes>>,
    /// Finishes when the layout is read or the body was dropped.
    pub reader: JoinHandle<std::io::Result<(S, u64)>>,
}

/// Starts reading `layout` over `source` on the blocking pool. Cancelling, or dropping the body, stops the reader.
pub fn spawn<R, S>(layout: Arc<Layout>, source: Arc<R>, mut sink: S, cancel: Cancel) -> LayoutStream<S>
where
    R: ReadAt + ?Sized + 'static,
    S: ChunkSink,
{
    let (tx, rx) = mpsc::channel(DEPTH);
    let reader = tokio::task::spawn_blocking(move || {
        let mut reader = layout.reader(&*source);
        let mut sent = 0u64;
        loop {
            if cancel.is_cancelled() {
                let err = std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted");
                let _ = tx.blocking_send(Err(std::io::Error::new(err.kind(), "interrupted")));
                return Err(err);
            }
            let mut chunk = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match reader.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                }
            }
            if filled == 0 {
                return Ok((sink, sent));
            }
            chunk.truncate(filled);
            sink.update(&chunk);
            sent += filled as u64;
            if tx.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the request stopped taking data"));
            }
        }
    });
    LayoutStream { body: rx, reader }
}

/// How far a request body has got, for [`stalled`].
#[derive(Debug, Default)]
pub struct BodyWatch {
    sent: AtomicU64,
    done: AtomicBool,
}

impl BodyWatch {
    /// Bytes handed to the connection so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// The chunks of `body` as a request body stream; `on_chunk` sees each length as it is handed to the connection,
/// and `watch` records the progress.
pub fn body(
    body: mpsc::Receiver<std::io::Result<Bytes>>,
    watch: Arc<BodyWatch>,
    on_chunk: impl Fn(u64) + Send + Sync + 'static,
) -> reqwest::Body {
    let stream = futures_util::stream::unfold((body, watch, on_chunk), |(mut rx, watch, on_chunk)| async move {
        let Some(item) = rx.recv().await else {
            watch.done.store(true, Ordering::Relaxed);
            return None;
        };
        if let Ok(chunk) = &item {
            watch.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            on_chunk(chunk.len() as u64);
        }
        Some((item, (rx, watch, on_chunk)))
    });
    reqwest::Body::wrap_stream(stream)
}

/// Resolves when the body has taken no data for `limit` while not yet complete: the server stopped reading, and
/// no TCP timeout would notice for a long time. Once the body is complete it never resolves (the server may take
/// its time to answer; that wait has its own timeout).
pub async fn stalled(watch: &BodyWatch, limit: Duration) {
    let tick = (limit / 4).max(Duration::from_millis(10));
    let (mut last, mut since) = (watch.sent(), tokio::time::Instant::now());
    loop {
        tokio::time::sleep(tick).await;
        if watch.done.load(Ordering::Relaxed) {
            return std::future::pending().await;
        }
        let now = watch.sent();
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= limit {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    struct Collect(Vec<u8>);

    impl ChunkSink for Collect {
        fn update(&mut self, chunk: &[u8]) {
            self.0.extend_from_slice(chunk);
        }
    }

    #[tokio::test]
    async fn the_stream_yields_the_layout_and_the_sink_sees_the_same_bytes() {
        let file = tempfile::tempfile().expect("temp file");
        let data: Vec<u8> = (0..(CHUNK * 2 + 1000)).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&data, 0).expect("write");
        let mut layout = Layout::new();
        layout.bytes(b"head".to_vec());
        layout.source(0, data.len() as u64);
        layout.zeros(5000);
        let expected: Vec<u8> = b"head".iter().copied().chain(data.iter().copied()).chain(vec![0u8; 5000]).collect();

        let mut stream = spawn(Arc::new(layout), Arc::new(file), Collect(Vec::new()), Cancel::new());
        let mut got = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = stream.body.recv().await {
            let chunk = chunk.expect("no read error");
            assert!(chunk.len() <= CHUNK);
            got.extend_from_slice(&chunk);
            chunks += 1;
        }
        let (sink, sent) = stream.reader.await.expect("join").expect("read");
        assert_eq!(got, expected);
        assert_eq!(sink.0, expected);
        assert_eq!(sent, expected.len() as u64);
        assert_eq!(chunks, 3);
    }

    #[tokio::test]
    async fn a_body_that_takes_no_data_is_stalled_and_a_finished_one_is_not() {
        let watch = BodyWatch::default();
        let started = std::time::Instant::now();
        stalled(&watch, Duration::from_millis(200)).await;
        assert!(started.elapsed() >= Duration::from_millis(200));

        let watch = BodyWatch::default();
        watch.done.store(true, Ordering::Relaxed);
        let waited = tokio::time::timeout(Duration::from_millis(300), stalled(&watch, Duration::from_millis(50))).await;
        assert!(waited.is_err(), "a complete body never counts as stalled");
    }

    #[tokio::test]
    async fn cancelling_ends_the_body_with_an_error() {
        let file = tempfile::tempfile().expect("temp file");
        let mut layout = Layout::new();
        layout.zeros(64 * CHUNK as u64);
        let cancel = Cancel::new();
        cancel.cancel();
        let mut stream = spawn(Arc::new(layout), Arc::new(file), Collect(Vec::new()), cancel);
        let first = stream.body.recv().await.expect("an item");
        assert_eq!(first.unwrap_err().kind(), std::io::ErrorKind::Interrupted);
        assert!(stream.reader.await.expect("join").is_err());
    }
}
