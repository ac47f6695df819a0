//! Fixed VHD, the only format Azure accepts for managed-disk upload.
//!
//! A fixed VHD is the raw data, padded with zeros to a whole MiB (Azure's rule), followed by a 512-byte footer
//! (Microsoft "Virtual Hard Disk Image Format Specification" v1.0). All footer fields are big-endian:
//!
//! | offset | field |
//! |---|---|
//! | 0 | cookie `conectix` |
//! | 8 | features, 0x2 (reserved bit, always set) |
//! | 12 | file format version 0x00010000 |
//! | 16 | data offset, all ones for fixed disks |
//! | 24 | timestamp, seconds since 2000-01-01 00:00:00 UTC |
//! | 28 | creator application |
//! | 32 | creator version |
//! | 36 | creator host OS |
//! | 40 | original size |
//! | 48 | current size |
//! | 56 | geometry: cylinders u16, heads u8, sectors per track u8 |
//! | 60 | disk type, 2 = fixed |
//! | 64 | checksum: one's complement of the byte sum with this field zeroed |
//! | 68 | unique id, 16 random bytes |
//! | 84 | saved state, 0 |
//! | 85 | zeros to 512 |
//!
//! The creator application is `win ` (Hyper-V, which Azure's own tooling writes). qemu's `vpc` driver takes the disk
//! size from "current size" for that creator but from the CHS geometry for others (`vpc `, `qemu`), where the
//! geometry would round the disk down; with `win `, `qemu-img info` reports exactly the aligned size.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Layout, raw};
use crate::image::ExtentMap;

/// Size of the footer.
pub const FOOTER_SIZE: u64 = 512;
/// Azure requires the virtual size to be a whole number of MiB.
pub const ALIGNMENT: u64 = 1 << 20;
/// Smallest virtual size Azure accepts for a managed disk upload.
pub const MIN_AZURE_SIZE: u64 = 20 << 20;
/// Largest virtual size Azure accepts.
pub const MAX_AZURE_SIZE: u64 = 32 << 40;

/// Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00:00 UTC).
const VHD_EPOCH: u64 = 946_684_800;

/// The raw size rounded up to a whole MiB: the disk size Azure and qemu see.
pub fn aligned_size(raw_size: u64) -> u64 {
    raw_size.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// CHS geometry per the VHD specification's appendix, for `total_sectors` 512-byte sectors.
pub fn geometry(total_sectors: u64) -> (u16, u8, u8) {
    let total = total_sectors.min(65535 * 16 * 255);
    let (sectors_per_track, heads, cylinder_times_heads);
    if total >= 65535 * 16 * 63 {
        sectors_per_track = 255;
        heads = 16;
        cylinder_times_heads = total / sectors_per_track;
    } else {
        let mut spt = 17;
        let mut cth = total / spt;
        let mut h = cth.div_ceil(1024).max(4);
        if cth >= h * 1024 || h > 16 {
            spt = 31;
            h = 16;
            cth = total / spt;
        }
        if cth >= h * 1024 {
            spt = 63;
            h = 16;
            cth = total / spt;
        }
        sectors_per_track = spt;
        heads = h;
        cylinder_times_heads = cth;
    }
    let cylinders = (cylinder_times_heads / heads).min(65535);
    (cylinders as u16, heads as u8, sectors_per_track as u8)
}

/// The footer for a disk of `disk_size` bytes (already MiB-aligned), with a given unique id and time.
pub fn footer(disk_size: u64, unique_id: [u8; 16], time: SystemTime) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    let unix = time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(VHD_EPOCH);
    f[24..28].copy_from_slice(&(unix.saturating_sub(VHD_EPOCH) as u32).to_be_bytes());
    f[28..32].copy_from_slice(b"win ");
    f[32..36].copy_from_slice(&0x000A_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&disk_size.to_be_bytes());
    f[48..56].copy_from_slice(&disk_size.to_be_bytes());
    let (cylinders, heads, sectors) = geometry(disk_size / 512);
    f[56..58].copy_from_slice(&cylinders.to_be_bytes());
    f[58] = heads;
    f[59] = sectors;
    f[60..64].copy_from_slice(&2u32.to_be_bytes());
    f[68..84].copy_from_slice(&unique_id);
    let checksum = checksum(&f);
    f[64..68].copy_from_slice(&checksum.to_be_bytes());
    f
}

/// One's complement of the byte sum, with the checksum field (64..68) counted as zero.
pub fn checksum(footer: &[u8; 512]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |acc, (_, b)| acc.wrapping_add(u32::from(*b)));
    !sum
}

/// The fixed VHD of the image described by `map`: data, zero padding to a whole MiB, footer.
pub fn layout(map: &ExtentMap) -> Layout {
    let disk_size = aligned_size(map.size);
    let mut layout = raw::layout(map);
    layout.zeros(disk_size - map.size);
    layout.bytes(footer(disk_size, rand::random(), SystemTime::now()).to_vec());
    layout
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;

    use super::*;
    use std::time::Duration;

    #[test]
    fn footer_fields_match_the_spec() -> TestResult {
        let time = UNIX_EPOCH + Duration::from_secs(VHD_EPOCH + 1234);
        let f = footer(64 << 20, [7; 16], time);
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(&f[8..12], &[0, 0, 0, 2]);
        assert_eq!(&f[12..16], &[0, 1, 0, 0]);
        assert_eq!(&f[16..24], &[0xff; 8]);
        assert_eq!(u32::from_be_bytes(f[24..28].try_into()?), 1234);
        assert_eq!(u64::from_be_bytes(f[40..48].try_into()?), 64 << 20);
        assert_eq!(u64::from_be_bytes(f[48..56].try_into()?), 64 << 20);
        assert_eq!(&f[60..64], &[0, 0, 0, 2]);
        assert_eq!(&f[68..84], &[7; 16]);
        assert!(f[84..].iter().all(|b| *b == 0));
        Ok(())
    }

    #[test]
    fn footer_checksum_matches_spec() -> TestResult {
        let f = footer(20 << 20, [0xab; 16], SystemTime::now());
        let stored = u32::from_be_bytes(f[64..68].try_into()?);
        let mut zeroed = f;
        zeroed[64..68].fill(0);
        let sum: u32 = zeroed.iter().map(|b| u32::from(*b)).sum();
        assert_eq!(stored, !sum);
        Ok(())
    }

    #[test]
    fn geometry_follows_the_spec_appendix() -> TestResult {
        // 20 MiB: 40960 sectors -> 17 spt path.
        assert_eq!(geometry(40960), (602, 4, 17));
        // Anything at or above 65535*16*255 sectors is capped at the maximum.
        assert_eq!(geometry(u64::MAX / 512), (65535, 16, 255));
        // 127 GiB uses 255 sectors per track.
        let (c, h, s) = geometry((127u64 << 30) / 512);
        assert_eq!((h, s), (16, 255));
        assert!(u64::from(c) * 16 * 255 <= (127u64 << 30) / 512);
        Ok(())
    }

    #[test]
    fn alignment_rounds_up_to_whole_mib_only_when_needed() -> TestResult {
        assert_eq!(aligned_size(1), 1 << 20);
        assert_eq!(aligned_size(1 << 20), 1 << 20);
        assert_eq!(aligned_size((1 << 20) + 1), 2 << 20);
        Ok(())
    }

    #[test]
    fn layout_is_aligned_data_plus_footer() -> TestResult {
        let map = ExtentMap::from_extents(3_000_000, vec![crate::image::Extent { start: 0, len: 4096 }]);
        let l = layout(&map);
        assert_eq!(l.len(), (3 << 20) + 512);
        assert_eq!(l.payload_bytes(), 4096 + 512);
        Ok(())
    }
}
