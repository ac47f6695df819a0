//! A [`Write`] into a bounded channel: a compressor on a blocking thread writes its output here, and an upload on
//! the async side takes it piece by piece. The compressor blocks while the upload is behind, so memory stays at
//! a few pieces whatever the image size.

use std::io::Write;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Buffers written bytes into pieces of a fixed size and sends each, wrapped by `wrap`, over `tx`.
pub struct ChannelWriter<T> {
    tx: mpsc::Sender<T>,
    wrap: fn(Bytes) -> T,
    buffer: Vec<u8>,
    piece: usize,
}

impl<T> ChannelWriter<T> {
    /// A writer sending pieces of `piece` bytes, each as `wrap(bytes)`.
    pub fn new(tx: mpsc::Sender<T>, piece: usize, wrap: fn(Bytes) -> T) -> Self {
        Self { tx, wrap, buffer: Vec::with_capacity(piece), piece }
    }

    /// Sends what is buffered.
    pub fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(self.piece)));
        self.send((self.wrap)(piece))
    }

    /// Sends `item` as it is (an end marker, an error).
    pub fn send(&self, item: T) -> std::io::Result<()> {
        self.tx
            .blocking_send(item)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl<T> Write for ChannelWriter<T> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let taken = data.len().min(self.piece - self.buffer.len());
        self.buffer.extend_from_slice(&data[..taken]);
        if self.buffer.len() == self.piece {
            self.send_buffer()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_come_out_whole_and_in_order_and_a_closed_channel_is_a_broken_pipe() {
        let (tx, mut rx) = mpsc::channel::<Bytes>(8);
        let mut writer = ChannelWriter::new(tx, 4, |b| b);
        writer.write_all(b"abcdefghij").unwrap_or_default();
        writer.send_buffer().unwrap_or_default();
        let mut got = Vec::new();
        while let Ok(piece) = rx.try_recv() {
            got.push(piece);
        }
        assert_eq!(got, [Bytes::from_static(b"abcd"), Bytes::from_static(b"efgh"), Bytes::from_static(b"ij")]);
        drop(rx);
        let error = writer.write_all(b"abcd").err().map(|e| e.kind());
        assert_eq!(error, Some(std::io::ErrorKind::BrokenPipe));
    }
}
