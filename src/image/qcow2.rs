//! Reading qcow2 images (versions 2 and 3) as a source: the header, the L1/L2 tables, and the data clusters they
//! point at (qemu `docs/interop/qcow2.txt`).
//!
//! Why not the `qcow2-rs` crate: its device API is async-only (a tokio/io_uring device per image and an `await` per
//! read or per mapping lookup), while every writer here reads with positioned reads from plain threads; and it
//! would pull a CLI's dependencies (clap, env_logger, nix, bincode) into the library. What uplosi needs is small:
//! the mapping of guest clusters, which also gives the extent map for free, and positioned reads through it.
//!
//! The L2 tables are read once at open (their size is about 1/8192 of the data), so a read never touches metadata
//! again. Unallocated and zero clusters read as zeros and are never read from the file; compressed clusters
//! (deflate, what `qemu-img convert -c` writes) are inflated, with the last one cached because neighbouring reads
//! usually want the rest of it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use super::extents::{Extent, ExtentMap};

const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Incompatible feature bits (version 3).
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTENDED_L2;
/// Bits 9-55 of L1 and standard L2 entries hold a host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;
/// L1 and L2 tables larger than this are refused instead of allocated (qemu's own limit for L1 is 32 MiB).
const MAX_TABLE_BYTES: u64 = 256 << 20;

/// Why a qcow2 image cannot be read. Each message says what to do about it.
#[derive(Debug, Error)]
pub enum Qcow2Error {
    /// Reading the file failed.
    #[error("reading at offset {offset}: {source}")]
    Io {
        /// Where.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The image depends on another file.
    #[error(
        "it has a backing file ({backing}); uplosi needs a self-contained image: flatten it first with \
         `qemu-img convert -O qcow2 IMAGE flat.qcow2` (or `-O raw … system.raw`)"
    )]
    Backing {
        /// The backing file name stored in the header.
        backing: String,
    },
    /// The image is encrypted.
    #[error(
        "it is encrypted (method {method}); decrypt it first with `qemu-img convert --object secret,id=sec0,data=… \
         --image-opts encrypt.key-secret=sec0,file.filename=IMAGE -O raw system.raw`"
    )]
    Encrypted {
        /// The header's crypt_method.
        method: u32,
    },
    /// The guest data lives in an external file.
    #[error("its data is in an external data file; flatten it first with `qemu-img convert -O qcow2 IMAGE flat.qcow2`")]
    ExternalData,
    /// A feature uplosi does not read.
    #[error(
        "it uses {what}, which uplosi does not read; convert it first with `qemu-img convert -O qcow2 IMAGE plain.qcow2`"
    )]
    Unsupported {
        /// The feature.
        what: String,
    },
    /// qemu marked the image corrupt.
    #[error("qemu marked it corrupt; repair it with `qemu-img check -r all IMAGE` first")]
    MarkedCorrupt,
    /// The structure is inconsistent or cut short.
    #[error("it is truncated or corrupt: {what}; check it with `qemu-img check IMAGE`")]
    Corrupt {
        /// What is wrong.
        what: String,
    },
}

/// Where one guest cluster's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cluster {
    /// Reads as zeros (unallocated or the zero flag).
    Zero,
    /// Stored uncompressed at this host offset.
    Data(u64),
    /// Deflate-compressed: host offset and the most bytes it can take.
    Compressed(u64, u64),
}

/// An opened qcow2 image with its whole cluster mapping in memory.
#[derive(Debug)]
pub struct Qcow2Image {
    file: File,
    /// The guest (virtual) size.
    virtual_size: u64,
    cluster_bits: u32,
    /// One L2 table per L1 entry; `None` where the L1 entry is unallocated.
    l2: Vec<Option<Box<[u64]>>>,
    /// The last inflated cluster: (guest cluster index, bytes).
    last_inflated: Mutex<Option<(u64, Arc<[u8]>)>>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

fn corrupt(what: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Corrupt { what: what.into() }
}

impl Qcow2Image {
    /// Reads the header and every L2 table of the qcow2 image in `file`, refusing what it cannot read faithfully.
    pub fn open(file: File) -> Result<Self, Qcow2Error> {
        let file_len = file.metadata().map_err(|source| Qcow2Error::Io { offset: 0, source })?.len();
        let mut header = [0u8; 112];
        let got = super::read_full_at(&file, &mut header, 0).map_err(|source| Qcow2Error::Io { offset: 0, source })?;
        if got < 72 || &header[..4] != MAGIC {
            return Err(corrupt(format!("the header is cut short ({got} bytes)")));
        }
        let version = be32(&header, 4);
        if !(2..=3).contains(&version) {
            return Err(Qcow2Error::Unsupported { what: format!("qcow2 version {version}") });
        }
        let backing_offset = be64(&header, 8);
        let backing_len = be32(&header, 16);
        let cluster_bits = be32(&header, 20);
        let virtual_size = be64(&header, 24);
        let crypt_method = be32(&header, 32);
        let l1_entries = u64::from(be32(&header, 36));
        let l1_offset = be64(&header, 40);
        if backing_offset != 0 {
            let mut name = vec![0u8; backing_len.min(1023) as usize];
            let _ = super::read_full_at(&file, &mut name, backing_offset);
            return Err(Qcow2Error::Backing { backing: String::from_utf8_lossy(&name).into_owned() });
        }
        if crypt_method != 0 {
            return Err(Qcow2Error::Encrypted { method: crypt_method });
        }
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(format!("cluster_bits {cluster_bits} is outside 9..=21")));
        }
        if version == 3 {
            if got < 104 {
                return Err(corrupt("the version 3 header is cut short"));
            }
            let incompatible = be64(&header, 72);
            let header_len = be32(&header, 100);
            if incompatible & INCOMPAT_DATA_FILE != 0 {
                return Err(Qcow2Error::ExternalData);
            }
            if incompatible & INCOMPAT_CORRUPT != 0 {
                return Err(Qcow2Error::MarkedCorrupt);
            }
            if incompatible & INCOMPAT_EXTENDED_L2 != 0 {
                return Err(Qcow2Error::Unsupported { what: "extended L2 entries (subclusters)".into() });
            }
            if incompatible & !INCOMPAT_KNOWN != 0 {
                return Err(Qcow2Error::Unsupported {
                    what: format!("unknown incompatible features {:#x}", incompatible & !INCOMPAT_KNOWN),
                });
            }
            if incompatible & INCOMPAT_COMPRESSION != 0 && header_len > 104 && header[104] != 0 {
                return Err(Qcow2Error::Unsupported { what: "zstd-compressed clusters".into() });
            }
            // A dirty image has stale refcounts after a crash; the L1/L2 mapping, the only thing read here, is
            // still valid (qemu itself only repairs refcounts when opening one).
        }

        let cluster = 1u64 << cluster_bits;
        let l2_entries = cluster / 8;
        let needed_l1 = virtual_size.div_ceil(cluster).div_ceil(l2_entries);
        if l1_entries < needed_l1 {
            return Err(corrupt(format!("the L1 table has {l1_entries} entries, the size needs {needed_l1}")));
        }
        let l1 = read_table(&file, file_len, l1_offset, needed_l1, "the L1 table")?;
        let mut l2 = Vec::with_capacity(l1.len());
        for (index, entry) in l1.iter().enumerate() {
            let offset = entry & OFFSET_MASK;
            l2.push(if offset == 0 {
                None
            } else {
                let what = format!("L2 table {index}");
                Some(read_table(&file, file_len, offset, l2_entries, &what)?.into_boxed_slice())
            });
        }
        let image = Self { file, virtual_size, cluster_bits, l2, last_inflated: Mutex::new(None) };
        image.check_clusters_inside(file_len)?;
        Ok(image)
    }

    /// The guest size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn cluster(&self, index: u64) -> Cluster {
        let per_table = self.cluster_size() / 8;
        let Some(Some(table)) = self.l2.get((index / per_table) as usize) else { return Cluster::Zero };
        let entry = table[(index % per_table) as usize];
        if entry & L2_COMPRESSED != 0 {
            // Bits 0..x-1 hold the offset and x..61 the extra 512-byte sectors, with x = 62 - (cluster_bits - 8).
            let x = 62 - (self.cluster_bits - 8);
            let offset = entry & ((1 << x) - 1);
            let sectors = ((entry & ((1 << 62) - 1)) >> x) + 1;
            return Cluster::Compressed(offset, sectors * 512 - (offset & 511));
        }
        let offset = entry & OFFSET_MASK;
        if entry & L2_ZERO != 0 || offset == 0 { Cluster::Zero } else { Cluster::Data(offset) }
    }

    /// How many guest bytes cluster `index` holds (the last one may be short).
    fn cluster_len(&self, index: u64) -> u64 {
        self.cluster_size().min(self.virtual_size - index * self.cluster_size())
    }

    /// Fails if a data cluster lies past the end of the file: the image was cut short.
    fn check_clusters_inside(&self, file_len: u64) -> Result<(), Qcow2Error> {
        for index in 0..self.virtual_size.div_ceil(self.cluster_size()) {
            let (offset, len) = match self.cluster(index) {
                Cluster::Zero => continue,
                Cluster::Data(offset) => (offset, self.cluster_len(index)),
                // The compressed length is rounded up to whole sectors, so only the start must be inside.
                Cluster::Compressed(offset, _) => (offset, 1),
            };
            if offset.saturating_add(len) > file_len {
                return Err(corrupt(format!(
                    "guest cluster {index} points at bytes {offset}..{} but the file has only {file_len} bytes",
                    offset + len
                )));
            }
        }
        Ok(())
    }

    /// The guest ranges backed by stored clusters, at cluster granularity, without reading any data.
    pub fn allocated(&self) -> ExtentMap {
        let cluster = self.cluster_size();
        let extents = (0..self.virtual_size.div_ceil(cluster))
            .filter(|&i| self.cluster(i) != Cluster::Zero)
            .map(|i| Extent { start: i * cluster, len: cluster })
            .collect();
        ExtentMap::from_extents(self.virtual_size, extents)
    }

    /// Reads guest bytes at `offset` into `buf`, stopping at the end of a cluster; returns the count, 0 at the
    /// end of the image.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if offset >= self.virtual_size || buf.is_empty() {
            return Ok(0);
        }
        let index = offset >> self.cluster_bits;
        let within = offset - (index << self.cluster_bits);
        let n = (self.cluster_len(index) - within).min(buf.len() as u64) as usize;
        let out = &mut buf[..n];
        match self.cluster(index) {
            Cluster::Zero => out.fill(0),
            Cluster::Data(host) => {
                let got = super::read_full_at(&self.file, out, host + within)?;
                if got < n {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("qcow2 data cluster at {host} ends early: the file was truncated"),
                    ));
                }
            }
            Cluster::Compressed(host, max_len) => {
                let data = self.inflated(index, host, max_len)?;
                out.copy_from_slice(&data[within as usize..within as usize + n]);
            }
        }
        Ok(n)
    }

    fn inflated(&self, index: u64, host: u64, max_len: u64) -> std::io::Result<Arc<[u8]>> {
        if let Ok(last) = self.last_inflated.lock()
            && let Some((cached, data)) = last.as_ref()
            && *cached == index
        {
            return Ok(Arc::clone(data));
        }
        let mut compressed = vec![0u8; max_len as usize];
        let got = super::read_full_at(&self.file, &mut compressed, host)?;
        compressed.truncate(got);
        let len = self.cluster_len(index) as usize;
        let mut data = vec![0u8; self.cluster_size() as usize];
        // Raw deflate (no zlib header), as qemu writes it.
        let mut inflater = flate2::Decompress::new(false);
        let status = inflater.decompress(&compressed, &mut data, flate2::FlushDecompress::Finish);
        let produced = inflater.total_out() as usize;
        if status.is_err() || produced < len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "compressed qcow2 cluster {index} at offset {host} inflates to {produced} of {len} bytes: the \
                     file is truncated or corrupt"
                ),
            ));
        }
        data.truncate(len);
        let data: Arc<[u8]> = data.into();
        if let Ok(mut last) = self.last_inflated.lock() {
            *last = Some((index, Arc::clone(&data)));
        }
        Ok(data)
    }
}

/// Reads `entries` big-endian u64s at `offset`, checking they lie inside the file.
fn read_table(file: &File, file_len: u64, offset: u64, entries: u64, what: &str) -> Result<Vec<u64>, Qcow2Error> {
    let bytes = entries * 8;
    if bytes > MAX_TABLE_BYTES {
        return Err(corrupt(format!("{what} would be {bytes} bytes")));
    }
    if !offset.is_multiple_of(512) || offset.saturating_add(bytes) > file_len {
        return Err(corrupt(format!(
            "{what} at bytes {offset}..{} lies outside the {file_len}-byte file",
            offset.saturating_add(bytes)
        )));
    }
    let mut raw = vec![0u8; bytes as usize];
    file.read_exact_at(&mut raw, offset).map_err(|source| Qcow2Error::Io { offset, source })?;
    Ok(raw.chunks_exact(8).map(|c| be64(c, 0)).collect())
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;

    use super::*;
    use crate::format;
    use crate::image::extents::tests::sparse_file;
    use proptest::prelude::*;

    /// Our qcow2 writer's output for `raw`.
    fn our_qcow2(raw: &File, size: u64) -> Result<File, Box<dyn std::error::Error>> {
        let map = ExtentMap::scan(raw, size, format::qcow2::CLUSTER, 2, &|| false)?;
        let out = tempfile::tempfile()?;
        format::write::layout_to_file(&format::qcow2::layout(&map), raw, &out, 2, &|_| {}, &|| false)?;
        Ok(out)
    }

    fn read_all(image: &Qcow2Image) -> Vec<u8> {
        let mut all = vec![0u8; image.virtual_size() as usize];
        crate::image::read_zero_padded_at(image, &mut all, 0).unwrap();
        all
    }

    #[test]
    fn reads_back_what_our_writer_wrote() -> TestResult {
        let size = (3 << 20) + 1000;
        let raw = sparse_file(size, &[(0, 5000, 1), (1 << 20, 70_000, 2), (size - 10, 10, 3)]);
        let image = Qcow2Image::open(our_qcow2(&raw, size)?)?;
        let mut expected = vec![0u8; size as usize];
        raw.read_exact_at(&mut expected, 0)?;
        // The writer rounds the guest size up to whole sectors; the extra bytes read as zeros.
        assert_eq!(image.virtual_size(), size.div_ceil(512) * 512);
        let all = read_all(&image);
        assert!(all[..size as usize] == expected[..] && all[size as usize..].iter().all(|b| *b == 0));
        Ok(())
    }

    #[test]
    fn backing_files_and_bad_headers_are_refused() -> TestResult {
        let f = tempfile::tempfile()?;
        let mut header = vec![0u8; 512];
        header[..4].copy_from_slice(MAGIC);
        header[7] = 3;
        header[15] = 200; // backing file offset
        header[19] = 4; // backing file length
        header[200..204].copy_from_slice(b"base");
        header[23] = 16;
        f.write_all_at(&header, 0)?;
        let err = Qcow2Image::open(f.try_clone()?).unwrap_err();
        assert!(err.to_string().contains("backing file (base)"), "{err}");
        assert!(err.to_string().contains("qemu-img convert -O qcow2"), "{err}");

        header[15] = 0;
        header[35] = 1; // AES
        f.write_all_at(&header, 0)?;
        assert!(matches!(Qcow2Image::open(f.try_clone()?), Err(Qcow2Error::Encrypted { method: 1 })));

        header[35] = 0;
        header[79] = INCOMPAT_DATA_FILE as u8;
        f.write_all_at(&header, 0)?;
        assert!(matches!(Qcow2Image::open(f.try_clone()?), Err(Qcow2Error::ExternalData)));

        header[79] = 0;
        header[31] = 1; // 1-byte guest, but the L1 table at offset 0 is empty
        header[39] = 1;
        header[47] = 0;
        f.write_all_at(&header, 0)?;
        f.set_len(4)?;
        assert!(matches!(Qcow2Image::open(f), Err(Qcow2Error::Corrupt { .. })));
        Ok(())
    }

    #[test]
    fn a_truncated_image_is_reported_not_read_as_zeros() -> TestResult {
        let size = 4 << 20;
        let raw = sparse_file(size, &[(3 << 20, 1 << 20, 9)]);
        let out = our_qcow2(&raw, size)?;
        let len = out.metadata()?.len();
        out.set_len(len - 4096)?;
        let err = Qcow2Image::open(out).unwrap_err();
        assert!(err.to_string().contains("truncated or corrupt"), "{err}");
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// raw → qcow2 (ours) → extent map from the L2 tables equals the raw image's map at cluster granularity,
        /// and the bytes read through the mapping equal the raw bytes.
        #[test]
        fn extent_map_from_qcow2_equals_the_raw_map(
            size in 1u64..3_000_000,
            writes in proptest::collection::vec((0u64..3_000_000, 1usize..150_000, prop_oneof![Just(0u8), 1u8..=255]), 0..10),
        ) {
            let raw = sparse_file(size, &writes);
            let image = Qcow2Image::open(our_qcow2(&raw, size).unwrap()).unwrap();
            let from_raw = ExtentMap::scan(&raw, size, format::qcow2::CLUSTER, 2, &|| false).unwrap();
            // The writer rounds the guest size up to whole sectors; compare within the raw image's size.
            let from_qcow2 = ExtentMap::from_extents(size, image.allocated().extents);
            prop_assert_eq!(from_qcow2.extents, from_raw.extents);
            let mut expected = vec![0u8; size as usize];
            raw.read_exact_at(&mut expected, 0).unwrap();
            prop_assert!(read_all(&image)[..size as usize] == expected[..]);
        }
    }
}
