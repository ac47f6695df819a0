//! The extent map: which byte ranges of the image hold non-zero data.
//!
//! Built in two passes. First SEEK_DATA/SEEK_HOLE lists the allocated ranges, so holes are never read. Then the
//! allocated ranges are read once and blocks that are all zeros are dropped, so zero runs that were written out
//! (common in filesystem images) are never sent either. Every writer and uploader consumes this map.

use std::fs::File;
use std::os::fd::AsRawFd;

use thiserror::Error;

use super::ReadAt;

/// Granularity of zero detection: 4 KiB, the page and filesystem block size (and qemu-img's default `-S`).
pub const ZERO_BLOCK: u64 = 4096;

/// How much is read per call while scanning: 256 KiB keeps the buffer in the CPU cache (faster than 4 MiB).
const SCAN_CHUNK: usize = 256 << 10;

/// A run of bytes `[start, start + len)` that may hold non-zero data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub start: u64,
    /// Length in bytes, never 0.
    pub len: u64,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Why scanning failed.
#[derive(Debug, Error)]
pub enum ScanError {
    /// An I/O error at `offset`.
    #[error("at offset {offset}: {source}")]
    Io {
        /// Where.
        offset: u64,
        /// The error.
        source: std::io::Error,
    },
    /// The cancel callback asked to stop.
    #[error("interrupted")]
    Interrupted,
}

/// Sorted, non-overlapping, non-adjacent extents of an image of `size` bytes. Bytes outside all extents read as 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentMap {
    /// The image size.
    pub size: u64,
    /// The data extents.
    pub extents: Vec<Extent>,
}

impl ExtentMap {
    /// Normalizes arbitrary extents: clips to `size`, drops empty ones, sorts, and merges overlapping or adjacent ones.
    pub fn from_extents(size: u64, mut extents: Vec<Extent>) -> Self {
        extents.retain(|e| e.len > 0 && e.start < size);
        extents.sort_by_key(|e| e.start);
        let mut merged: Vec<Extent> = Vec::with_capacity(extents.len());
        for e in extents {
            let e = Extent { start: e.start, len: e.end().min(size) - e.start };
            match merged.last_mut() {
                Some(last) if e.start <= last.end() => last.len = last.len.max(e.end() - last.start),
                _ => merged.push(e),
            }
        }
        Self { size, extents: merged }
    }

    /// An image that is all data (no holes known).
    pub fn full(size: u64) -> Self {
        Self::from_extents(size, vec![Extent { start: 0, len: size }])
    }

    /// Total bytes inside extents.
    pub fn data_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }

    /// The extents widened to multiples of `granularity` (clipped to the image size) and merged: the units (qcow2
    /// clusters, EBS blocks, …) that hold data.
    pub fn coarsen(&self, granularity: u64) -> ExtentMap {
        let widened = self
            .extents
            .iter()
            .map(|e| {
                let start = e.start / granularity * granularity;
                let end = e.end().div_ceil(granularity) * granularity;
                Extent { start, len: end - start }
            })
            .collect();
        Self::from_extents(self.size, widened)
    }

    /// The allocated ranges by SEEK_DATA/SEEK_HOLE alone, without reading anything. Writers that can skip zero
    /// blocks while copying use this to read the data only once.
    pub fn allocated(file: &File, size: u64) -> Result<Self, ScanError> {
        Ok(Self::from_extents(size, allocated_ranges(file, size)?))
    }

    /// Scans `file` (`size` bytes): allocated ranges by SEEK_DATA/SEEK_HOLE, then drops all-zero `block`-sized
    /// blocks, reading on `threads` threads. `block` is [`ZERO_BLOCK`] or a multiple of it; coarser blocks are
    /// probed at their start first, which reads far less of a dense image. `cancel` is polled between reads.
    pub fn scan(
        file: &File,
        size: u64,
        block: u64,
        threads: usize,
        cancel: &(dyn Fn() -> bool + Sync),
    ) -> Result<Self, ScanError> {
        Self::scan_ranges(file, &Self::allocated(file, size)?, block, threads, cancel)
    }

    /// Like [`ExtentMap::scan`], over the ranges of `allocated` (the only ones that can hold data) of any source.
    pub fn scan_ranges<R: ReadAt + ?Sized>(
        file: &R,
        allocated: &ExtentMap,
        block: u64,
        threads: usize,
        cancel: &(dyn Fn() -> bool + Sync),
    ) -> Result<Self, ScanError> {
        let size = allocated.size;
        // Split the allocated ranges into block-aligned chunks that threads take in turn.
        let chunk_len = (SCAN_CHUNK as u64).max(block) / block * block;
        let mut chunks = Vec::new();
        for range in allocated.extents.iter().copied() {
            let mut pos = range.start / block * block;
            let end = range.end().div_ceil(block).saturating_mul(block).min(size);
            while pos < end {
                let len = (end - pos).min(chunk_len);
                chunks.push(Extent { start: pos, len });
                pos += len;
            }
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results = std::sync::Mutex::new(Vec::new());
        let scan_chunks = || -> Result<(), ScanError> {
            let zeros = vec![0u8; block as usize];
            let mut found: Vec<Extent> = Vec::new();
            let mut buf = vec![0u8; chunk_len as usize];
            let mut push = |start: u64, len: u64| match found.last_mut() {
                Some(last) if last.end() == start => last.len += len,
                _ => found.push(Extent { start, len }),
            };
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(chunk) = chunks.get(i) else { break };
                if cancel() {
                    return Err(ScanError::Interrupted);
                }
                if block > ZERO_BLOCK {
                    // Coarse units (qcow2 clusters): most data units have data in their first 4 KiB, so probe that
                    // and read the rest only when it is zero.
                    let mut at = chunk.start;
                    while at < chunk.end() {
                        let len = block.min(chunk.end() - at);
                        let probe = ZERO_BLOCK.min(len) as usize;
                        read_exact_at(file, &mut buf[..probe], at)?;
                        let mut data = buf[..probe] != zeros[..probe];
                        if !data && len as usize > probe {
                            let rest = &mut buf[probe..len as usize];
                            read_exact_at(file, rest, at + probe as u64)?;
                            data = rest != &zeros[..rest.len()];
                        }
                        if data {
                            push(at, len);
                        }
                        at += len;
                    }
                    continue;
                }
                let buf = &mut buf[..chunk.len as usize];
                read_exact_at(file, buf, chunk.start)?;
                for (j, data) in buf.chunks(block as usize).enumerate() {
                    if data != &zeros[..data.len()] {
                        push(chunk.start + j as u64 * block, data.len() as u64);
                    }
                }
            }
            if let Ok(mut all) = results.lock() {
                all.append(&mut found);
            }
            Ok(())
        };
        let outcomes: Vec<Result<(), ScanError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads.max(1)).map(|_| scope.spawn(scan_chunks)).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(Err(ScanError::Interrupted))).collect()
        });
        for outcome in outcomes {
            outcome?;
        }
        let found = results.into_inner().unwrap_or_default();
        Ok(Self::from_extents(size, found))
    }
}

fn read_exact_at<R: ReadAt + ?Sized>(file: &R, buf: &mut [u8], offset: u64) -> Result<(), ScanError> {
    super::read_zero_padded_at(file, buf, offset).map_err(|source| ScanError::Io { offset, source })
}

/// The allocated ranges of `file` by SEEK_DATA/SEEK_HOLE; the whole file when the filesystem cannot tell.
fn allocated_ranges(file: &File, size: u64) -> Result<Vec<Extent>, ScanError> {
    let fd = file.as_raw_fd();
    let mut ranges = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on a valid, open descriptor has no memory-safety preconditions.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(ranges),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(vec![Extent { start: 0, len: size }]),
                _ => Err(ScanError::Io { offset: pos, source: err }),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(ScanError::Io { offset: data as u64, source: std::io::Error::last_os_error() });
        }
        let (start, end) = (data as u64, (hole as u64).min(size));
        if end > start {
            ranges.push(Extent { start, len: end - start });
        }
        pos = end.max(start + 1);
    }
    Ok(ranges)
}

#[cfg(test)]
pub(crate) mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;

    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::FileExt;

    fn never() -> bool {
        false
    }

    /// Writes `(offset, len, byte)` runs into a sparse temp file of `size` bytes; shared with the qcow2 tests.
    pub(crate) fn sparse_file(size: u64, writes: &[(u64, usize, u8)]) -> File {
        let f = tempfile::tempfile().unwrap();
        f.set_len(size).unwrap();
        for &(off, len, byte) in writes {
            let len = len.min((size - off.min(size)) as usize);
            f.write_all_at(&vec![byte; len], off).unwrap();
        }
        f
    }

    /// The blocks a naive full read finds non-zero.
    fn naive(file: &File, size: u64, block: u64) -> ExtentMap {
        let mut all = vec![0u8; size as usize];
        file.read_exact_at(&mut all, 0).unwrap();
        let extents = all
            .chunks(block as usize)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|b| *b != 0))
            .map(|(i, c)| Extent { start: i as u64 * block, len: c.len() as u64 })
            .collect();
        ExtentMap::from_extents(size, extents)
    }

    #[test]
    fn holes_and_zero_blocks_are_dropped() -> TestResult {
        let f = sparse_file(1 << 20, &[(0, 100, 1), (8192, 4096, 0), (65536, 5000, 7)]);
        let map = ExtentMap::scan(&f, 1 << 20, 4096, 2, &never)?;
        assert_eq!(
            map.extents,
            vec![Extent { start: 0, len: 4096 }, Extent { start: 65536, len: 8192 }],
            "written zeros at 8192 are not data"
        );
        assert_eq!(map.data_bytes(), 12288);
        Ok(())
    }

    #[test]
    fn all_holes_is_empty_and_tail_block_is_partial() -> TestResult {
        let f = sparse_file(10_000, &[]);
        assert!(ExtentMap::scan(&f, 10_000, 4096, 2, &never)?.extents.is_empty());
        let f = sparse_file(10_000, &[(9_999, 1, 9)]);
        let map = ExtentMap::scan(&f, 10_000, 4096, 2, &never)?;
        assert_eq!(map.extents, vec![Extent { start: 8192, len: 1808 }]);
        Ok(())
    }

    #[test]
    fn cancel_stops_the_scan() -> TestResult {
        let f = sparse_file(1 << 20, &[(0, 1 << 20, 1)]);
        assert!(matches!(ExtentMap::scan(&f, 1 << 20, 4096, 2, &|| true), Err(ScanError::Interrupted)));
        Ok(())
    }

    #[test]
    fn coarsen_rounds_to_units() -> TestResult {
        let map = ExtentMap::from_extents(
            200_000,
            vec![
                Extent { start: 4096, len: 4096 },
                Extent { start: 70_000, len: 10 },
                Extent { start: 196_608, len: 3392 },
            ],
        );
        let c = map.coarsen(65536);
        assert_eq!(c.extents, vec![Extent { start: 0, len: 131072 }, Extent { start: 196_608, len: 3392 }]);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn scan_matches_a_naive_reader(
            size in 1u64..600_000,
            writes in proptest::collection::vec((0u64..600_000, 1usize..20_000, prop_oneof![Just(0u8), 1u8..=255]), 0..12),
        ) {
            let f = sparse_file(size, &writes);
            let scanned = ExtentMap::scan(&f, size, 4096, 3, &never).unwrap();
            prop_assert_eq!(&scanned, &naive(&f, size, 4096));
            for w in scanned.extents.windows(2) {
                prop_assert!(w[0].end() < w[1].start, "extents must be sorted and not adjacent");
            }
        }

        #[test]
        fn coarse_scan_matches_a_naive_reader(
            size in 1u64..600_000,
            writes in proptest::collection::vec((0u64..600_000, 1usize..20_000, prop_oneof![Just(0u8), 1u8..=255]), 0..12),
        ) {
            let f = sparse_file(size, &writes);
            let scanned = ExtentMap::scan(&f, size, 65536, 2, &never).unwrap();
            prop_assert_eq!(&scanned, &naive(&f, size, 65536));
        }

        #[test]
        fn from_extents_normalizes(size in 1u64..10_000, raw in proptest::collection::vec((0u64..12_000, 0u64..3_000), 0..10)) {
            let map = ExtentMap::from_extents(size, raw.iter().map(|&(start, len)| Extent { start, len }).collect());
            let mut covered = vec![false; size as usize];
            for &(s, l) in &raw {
                for b in s..(s + l).min(size) { covered[b as usize] = true; }
            }
            let mut from_map = vec![false; size as usize];
            for e in &map.extents {
                prop_assert!(e.len > 0 && e.end() <= size);
                for b in e.start..e.end() { from_map[b as usize] = true; }
            }
            prop_assert_eq!(covered, from_map);
            for w in map.extents.windows(2) { prop_assert!(w[0].end() < w[1].start); }
        }
    }
}
