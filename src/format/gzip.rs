//! Parallel gzip, pigz-style: one gzip member whose deflate stream is cut into blocks compressed on all cores.
//!
//! Each block is raw deflate primed with the previous block's last 32 KiB as dictionary and ended with a sync
//! flush, so the blocks concatenate into one valid deflate stream with almost the ratio of a serial `gzip`. The
//! CRC-32 of each block is computed by its worker and combined in order.
//!
//! Blocks that sample as incompressible (already-compressed files, encrypted partitions) are stored instead of
//! deflated: deflate would spend most of the CPU time for the same output size.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use super::FormatError;

/// Uncompressed bytes per block.
pub const BLOCK_SIZE: usize = 1 << 20;
/// Deflate's window: the dictionary carried from block to block.
const WINDOW: usize = 32 * 1024;

/// What compression did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GzipStats {
    /// Uncompressed bytes.
    pub input: u64,
    /// Compressed bytes written, header and trailer included.
    pub output: u64,
}

struct Job {
    seq: u64,
    dictionary: Vec<u8>,
    data: Vec<u8>,
    last: bool,
}

struct Done {
    seq: u64,
    compressed: Result<Vec<u8>, String>,
    crc: Crc,
}

/// Compresses `input` to `output` as gzip at `level` (0–9) on `threads` workers. `progress` gets uncompressed byte
/// counts as blocks are written; `cancel` is polled between blocks.
pub fn compress<R: Read, W: Write + Send>(
    mut input: R,
    output: W,
    level: u32,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<GzipStats, FormatError> {
    let threads = threads.max(1);
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads * 2);
    // Blocks between the reader and the writer, in any stage, are bounded: the reader takes a token per block and
    // the writer gives it back once the block is written. Without it, a slow output (an upload on a thin link)
    // let finished blocks pile up until the whole compressed image sat in memory.
    let in_flight = blocks_in_flight(threads);
    let (token_tx, token_rx) = mpsc::sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        let _ = token_tx.send(());
    }
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let failed = AtomicBool::new(false);

    std::thread::scope(|scope| {
        for _ in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let mut crc = Crc::new();
                    crc.update(&job.data);
                    let compressed = deflate_block(&job.data, &job.dictionary, level, job.last);
                    if done_tx.send(Done { seq: job.seq, compressed, crc }).is_err() {
                        return;
                    }
                }
            });
        }
        // Only the workers hold the job queue's receiver: when they stop (the writer is gone), a reader waiting to
        // queue a block is told so instead of waiting forever.
        drop(job_rx);
        drop(done_tx);

        // The writer owns the token sender: if it stops, the reader's wait for room ends too.
        let failed_flag = &failed;
        let writer = scope.spawn(move || write_in_order(output, done_rx, token_tx, progress, failed_flag));

        let read_result = read_blocks(&mut input, &job_tx, &token_rx, cancel, &failed);
        drop(job_tx);
        let write_result =
            writer.join().unwrap_or_else(|_| Err(FormatError::Compress("writer thread panicked".into())));
        read_result?;
        write_result
    })
}

/// How many blocks may be read but not yet written: enough to keep every worker busy with the next blocks queued
/// behind it (memory: this many uncompressed blocks at most, plus their compressed forms).
fn blocks_in_flight(threads: usize) -> usize {
    threads * 4
}

/// Reads blocks and queues them, each once a token says there is room; reads one block ahead to know which one is
/// last.
fn read_blocks<R: Read>(
    input: &mut R,
    jobs: &mpsc::SyncSender<Job>,
    room: &mpsc::Receiver<()>,
    cancel: &(dyn Fn() -> bool + Sync),
    failed: &AtomicBool,
) -> Result<(), FormatError> {
    let read_block = |input: &mut R| -> Result<Vec<u8>, FormatError> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        let mut filled = 0;
        while filled < buf.len() {
            match input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(FormatError::Read { offset: 0, source }),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    };
    let mut current = read_block(input)?;
    let mut dictionary = Vec::new();
    let mut seq = 0;
    loop {
        if cancel() {
            failed.store(true, Ordering::Relaxed);
            return Err(FormatError::Interrupted);
        }
        if failed.load(Ordering::Relaxed) {
            return Ok(()); // the writer reports its own error
        }
        let next = if current.is_empty() { Vec::new() } else { read_block(input)? };
        let last = next.is_empty();
        if room.recv().is_err() {
            return Ok(()); // the writer stopped and reports why
        }
        let next_dictionary = current[current.len().saturating_sub(WINDOW)..].to_vec();
        let job = Job { seq, dictionary: std::mem::take(&mut dictionary), data: current, last };
        if jobs.send(job).is_err() {
            return Ok(());
        }
        if last {
            return Ok(());
        }
        dictionary = next_dictionary;
        current = next;
        seq += 1;
    }
}

fn write_in_order<W: Write>(
    mut output: W,
    done: mpsc::Receiver<Done>,
    room: mpsc::SyncSender<()>,
    progress: &(dyn Fn(u64) + Sync),
    failed: &AtomicBool,
) -> Result<GzipStats, FormatError> {
    let fail = |e: FormatError| {
        failed.store(true, Ordering::Relaxed);
        e
    };
    // Header: magic, deflate, no flags, mtime 0 (reproducible output), no extra flags, OS unix.
    let header = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    output.write_all(&header).map_err(|e| fail(FormatError::Write(e)))?;
    let mut stats = GzipStats { input: 0, output: header.len() as u64 };
    let mut crc = Crc::new();
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    let mut finished = false;
    for d in done {
        pending.insert(d.seq, d);
        while let Some(d) = pending.remove(&next) {
            let bytes = d.compressed.map_err(|e| fail(FormatError::Compress(e)))?;
            output.write_all(&bytes).map_err(|e| fail(FormatError::Write(e)))?;
            stats.output += bytes.len() as u64;
            stats.input += u64::from(d.crc.amount());
            progress(u64::from(d.crc.amount()));
            crc.combine(&d.crc);
            next += 1;
            // Never blocks: at most as many tokens are out as the channel holds.
            let _ = room.try_send(());
        }
    }
    if !failed.load(Ordering::Relaxed) {
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&crc.sum().to_le_bytes());
        trailer[4..].copy_from_slice(&(stats.input as u32).to_le_bytes());
        output.write_all(&trailer).map_err(|e| fail(FormatError::Write(e)))?;
        output.flush().map_err(|e| fail(FormatError::Write(e)))?;
        stats.output += 8;
        finished = true;
    }
    if finished { Ok(stats) } else { Err(FormatError::Interrupted) }
}

/// Whether `data` samples as incompressible: four 8 KiB samples that level-1 deflate cannot shrink by 3%.
fn looks_incompressible(data: &[u8]) -> bool {
    const SAMPLE: usize = 8 * 1024;
    if data.len() < 8 * SAMPLE {
        return false;
    }
    (0..4).all(|i| {
        let at = data.len() / 4 * i;
        let sample = &data[at..at + SAMPLE];
        let mut c = Compress::new(Compression::fast(), false);
        let mut out = Vec::with_capacity(SAMPLE * 2);
        match c.compress_vec(sample, &mut out, FlushCompress::Finish) {
            Ok(_) => out.len() * 100 >= sample.len() * 97,
            Err(_) => false,
        }
    })
}

/// Raw-deflates one block, primed with `dictionary`; a sync flush ends every block but the last, which finishes
/// the stream.
fn deflate_block(data: &[u8], dictionary: &[u8], level: u32, last: bool) -> Result<Vec<u8>, String> {
    let level = if looks_incompressible(data) { 0 } else { level };
    let mut c = Compress::new(Compression::new(level), false);
    if !dictionary.is_empty() {
        c.set_dictionary(dictionary).map_err(|e| e.to_string())?;
    }
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    loop {
        let consumed = c.total_in() as usize;
        let status = c.compress_vec(&data[consumed..], &mut out, flush).map_err(|e| e.to_string())?;
        let all_in = c.total_in() as usize == data.len();
        match status {
            Status::StreamEnd => break,
            // A sync flush is complete once all input is consumed and deflate left output space unused.
            _ if !last && all_in && out.len() < out.capacity() => break,
            _ => out.reserve(out.capacity().max(64 * 1024)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;

    use super::*;
    use rand::{Rng, SeedableRng};

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data).read_to_end(&mut out).unwrap();
        out
    }

    fn mixed(len: usize) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut data = vec![0u8; len];
        for (i, chunk) in data.chunks_mut(300_000).enumerate() {
            if i % 2 == 0 {
                rng.fill(chunk);
            } else {
                for (j, b) in chunk.iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog "[j % 44];
                }
            }
        }
        data
    }

    #[test]
    fn round_trips_across_many_blocks_and_threads() -> TestResult {
        let data = mixed(BLOCK_SIZE * 5 + 12345);
        for threads in [1, 3] {
            let mut out = Vec::new();
            let stats = compress(&data[..], &mut out, 6, threads, &|_| {}, &|| false)?;
            assert_eq!(stats.input, data.len() as u64);
            assert_eq!(stats.output, out.len() as u64);
            assert_eq!(gunzip(&out), data);
        }
        Ok(())
    }

    #[test]
    fn empty_input_is_a_valid_gzip() -> TestResult {
        let mut out = Vec::new();
        compress(&[][..], &mut out, 6, 2, &|_| {}, &|| false)?;
        assert!(gunzip(&out).is_empty());
        Ok(())
    }

    #[test]
    fn ratio_is_close_to_serial_gzip() -> TestResult {
        let data = mixed(BLOCK_SIZE * 4);
        let mut ours = Vec::new();
        compress(&data[..], &mut ours, 6, 2, &|_| {}, &|| false)?;
        let mut serial = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        serial.write_all(&data)?;
        let serial = serial.finish()?;
        assert!(ours.len() as f64 <= serial.len() as f64 * 1.01, "{} vs {}", ours.len(), serial.len());
        Ok(())
    }

    #[test]
    fn random_data_is_stored_not_deflated() -> TestResult {
        let mut data = vec![0u8; 256 * 1024];
        rand::rngs::StdRng::seed_from_u64(1).fill(&mut data[..]);
        assert!(looks_incompressible(&data));
        let text: Vec<u8> = (0..256 * 1024).map(|i| b"abcdefgh"[i % 8]).collect();
        assert!(!looks_incompressible(&text));
        Ok(())
    }

    #[test]
    fn cancel_aborts() -> TestResult {
        let data = mixed(BLOCK_SIZE * 3);
        let mut out = Vec::new();
        let err = compress(&data[..], &mut out, 6, 2, &|_| {}, &|| true).unwrap_err();
        assert!(matches!(err, FormatError::Interrupted));
        Ok(())
    }

    /// Counts what was read from it.
    struct CountingReader<'a> {
        data: &'a [u8],
        read: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Read for CountingReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.data.read(buf)?;
            self.read.fetch_add(n, Ordering::SeqCst);
            Ok(n)
        }
    }

    /// An output that takes its first write, then waits for `go` before each of the next (a stalled upload), or
    /// fails them when `go` is gone.
    struct StalledWriter {
        out: Vec<u8>,
        go: mpsc::Receiver<()>,
        writes: usize,
    }

    impl Write for StalledWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.writes += 1;
            if self.writes > 1 && self.go.recv().is_err() {
                return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped"));
            }
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_output_stops_the_reading_after_a_few_blocks() -> TestResult {
        let data = mixed(BLOCK_SIZE * 40);
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (go_tx, go_rx) = mpsc::channel();
        let input = CountingReader { data: &data, read: Arc::clone(&read) };
        let output = Arc::new(Mutex::new(None));
        let result = std::thread::scope(|scope| {
            // Owned here, so a failed assertion drops it and the stalled writer gives up instead of hanging the test.
            let go_tx = go_tx;
            let output = Arc::clone(&output);
            let compressing = scope.spawn(move || {
                let mut writer = StalledWriter { out: Vec::new(), go: go_rx, writes: 0 };
                let stats = compress(input, &mut writer, 6, 2, &|_| {}, &|| false);
                *output.lock().unwrap() = Some(writer.out);
                stats
            });
            // While the output is stalled, the reader gets at most the blocks in flight ahead (plus the one it reads
            // ahead to find the last) — not the whole input, as before.
            std::thread::sleep(std::time::Duration::from_millis(1500));
            let ahead = read.load(Ordering::SeqCst);
            let bound = (blocks_in_flight(2) + 2) * BLOCK_SIZE;
            assert!(ahead <= bound, "read {ahead} bytes ahead of a stalled output, bound {bound}");
            assert!(ahead >= BLOCK_SIZE, "nothing was read");
            // Released, it finishes and the stream is whole.
            while !compressing.is_finished() {
                let _ = go_tx.send(());
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            compressing.join().unwrap()
        })?;
        assert_eq!(result.input, data.len() as u64);
        let out = output.lock().unwrap().take().unwrap_or_default();
        assert_eq!(gunzip(&out), data);
        Ok(())
    }

    #[test]
    fn an_output_that_fails_while_the_reader_waits_for_room_ends_the_compression() {
        let data = mixed(BLOCK_SIZE * 40);
        let (go_tx, go_rx) = mpsc::channel::<()>();
        drop(go_tx);
        let mut writer = StalledWriter { out: Vec::new(), go: go_rx, writes: 0 };
        let err = compress(&data[..], &mut writer, 6, 2, &|_| {}, &|| false).unwrap_err();
        assert!(matches!(err, FormatError::Write(_)), "{err:?}");
    }
}
