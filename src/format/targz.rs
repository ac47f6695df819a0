//! The GCE import archive: a tar with one member `disk.raw`, gzip-compressed (see [`gzip`](super::gzip)).
//!
//! Compute Engine wants the member size rounded up to a whole GiB. The member is written as an old-GNU sparse file
//! (type `S`, as `tar -S --format=oldgnu` and coreos-assembler write it): the header lists the data extents and only
//! their bytes follow, so holes and zero blocks are neither read nor compressed. Numeric fields that do not fit in
//! 11 octal digits (8 GiB and more) use GNU base-256 encoding.

use super::{Layout, Piece};
use crate::image::ExtentMap;

/// GCE rounds disk sizes to whole GiB.
pub const GIB: u64 = 1 << 30;
/// The member name GCE looks for.
pub const MEMBER_NAME: &str = "disk.raw";

const BLOCK: usize = 512;
/// Sparse entries in the main header.
const HEADER_SPARSE: usize = 4;
/// Sparse entries per extension block.
const EXTENSION_SPARSE: usize = 21;

/// Writes `value` into a numeric field: zero-padded octal with a NUL when it fits, else base-256.
fn put_number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if digits < 22 && value < (1u64 << (3 * digits)) {
        let text = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(text.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        let bytes = value.to_be_bytes();
        let n = bytes.len().min(field.len() - 1);
        let at = field.len() - n;
        field[at..].copy_from_slice(&bytes[bytes.len() - n..]);
    }
}

fn put_sparse(entry: &mut [u8], offset: u64, len: u64) {
    put_number(&mut entry[0..12], offset);
    put_number(&mut entry[12..24], len);
}

/// The header block and extension blocks for a sparse member of apparent size `real_size` whose stored data is
/// `entries` (offset, length) in order.
fn sparse_headers(real_size: u64, entries: &[(u64, u64)], mtime: u64) -> Vec<u8> {
    let stored: u64 = entries.iter().map(|e| e.1).sum();
    let extension_blocks = entries.len().saturating_sub(HEADER_SPARSE).div_ceil(EXTENSION_SPARSE);
    let mut out = vec![0u8; BLOCK * (1 + extension_blocks)];
    {
        let h = &mut out[..BLOCK];
        h[..MEMBER_NAME.len()].copy_from_slice(MEMBER_NAME.as_bytes());
        put_number(&mut h[100..108], 0o644);
        put_number(&mut h[108..116], 0);
        put_number(&mut h[116..124], 0);
        put_number(&mut h[124..136], stored);
        put_number(&mut h[136..148], mtime);
        h[156] = b'S';
        h[257..265].copy_from_slice(b"ustar  \0");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        for (i, &(offset, len)) in entries.iter().take(HEADER_SPARSE).enumerate() {
            put_sparse(&mut h[386 + i * 24..410 + i * 24], offset, len);
        }
        h[482] = u8::from(extension_blocks > 0);
        put_number(&mut h[483..495], real_size);
        // The checksum is computed with its own field as spaces, stored as 6 octal digits, NUL, space.
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    }
    for block in 0..extension_blocks {
        let ext = &mut out[BLOCK * (1 + block)..BLOCK * (2 + block)];
        let first = HEADER_SPARSE + block * EXTENSION_SPARSE;
        for (i, &(offset, len)) in entries.iter().skip(first).take(EXTENSION_SPARSE).enumerate() {
            put_sparse(&mut ext[i * 24..(i + 1) * 24], offset, len);
        }
        ext[504] = u8::from(block + 1 < extension_blocks);
    }
    out
}

/// The uncompressed tar stream for the image described by `map`.
pub fn tar_layout(map: &ExtentMap, mtime: u64) -> Layout {
    let real_size = map.size.div_ceil(GIB).max(1) * GIB;
    let mut entries: Vec<(u64, u64)> = map.extents.iter().map(|e| (e.start, e.len)).collect();
    // GNU tar ends a map whose last data stops before the end with an empty entry at the end of the file, so the
    // apparent size is explicit in the map, too.
    if entries.last().is_none_or(|&(o, l)| o + l < real_size) {
        entries.push((real_size, 0));
    }
    let mut layout = Layout::new();
    layout.bytes(sparse_headers(real_size, &entries, mtime));
    for e in &map.extents {
        layout.source(e.start, e.len);
    }
    let stored = map.data_bytes();
    layout.zeros(stored.next_multiple_of(BLOCK as u64) - stored);
    // End of archive: two zero blocks.
    layout.zeros(2 * BLOCK as u64);
    layout
}

/// A tar stream of one regular member `name` whose content is `content` (another format's stream, a qcow2 for
/// the OCI `qcow2.tar.xz` artifact, which `tar xJf` unpacks).
pub fn member_layout(name: &str, content: &Layout, mtime: u64) -> Layout {
    let mut header = vec![0u8; BLOCK];
    let name = &name.as_bytes()[..name.len().min(99)];
    header[..name.len()].copy_from_slice(name);
    put_number(&mut header[100..108], 0o644);
    put_number(&mut header[108..116], 0);
    put_number(&mut header[116..124], 0);
    put_number(&mut header[124..136], content.len());
    put_number(&mut header[136..148], mtime);
    header[156] = b'0';
    header[257..265].copy_from_slice(b"ustar  \0");
    header[265..269].copy_from_slice(b"root");
    header[297..301].copy_from_slice(b"root");
    header[148..156].fill(b' ');
    let sum: u64 = header.iter().map(|b| u64::from(*b)).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut layout = Layout::new();
    layout.bytes(header);
    layout.append(content);
    layout.zeros(content.len().next_multiple_of(BLOCK as u64) - content.len());
    // End of archive, then padding to GNU tar's 10 KiB record, as `tar cf` writes it.
    layout.zeros(2 * BLOCK as u64);
    let record = 20 * BLOCK as u64;
    layout.zeros(layout.len().next_multiple_of(record) - layout.len());
    layout
}

/// Number of bytes of image data inside the tar stream (for progress).
pub fn source_bytes(layout: &Layout) -> u64 {
    layout.pieces().iter().filter(|p| matches!(p, Piece::Source { .. })).map(Piece::len).sum()
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;

    use super::*;
    use crate::image::Extent;

    #[test]
    fn numbers_switch_to_base256_at_8_gib() -> TestResult {
        let mut f = [0u8; 12];
        put_number(&mut f, (8u64 << 30) - 1);
        assert_eq!(&f, b"77777777777\0");
        put_number(&mut f, 8u64 << 30);
        assert_eq!(f[0], 0x80);
        assert_eq!(u64::from_be_bytes(f[4..12].try_into()?), 8u64 << 30);
        let mut m = [0u8; 8];
        put_number(&mut m, 0o644);
        assert_eq!(&m, b"0000644\0");
        Ok(())
    }

    #[test]
    fn header_checksum_is_valid() -> TestResult {
        let h = sparse_headers(GIB, &[(0, 4096), (GIB, 0)], 0);
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154])?, 8)?;
        let mut copy = h[..512].to_vec();
        copy[148..156].fill(b' ');
        assert_eq!(stored, copy.iter().map(|b| u64::from(*b)).sum::<u64>());
        assert_eq!(h[156], b'S');
        assert_eq!(&h[257..265], b"ustar  \0");
        Ok(())
    }

    #[test]
    fn many_extents_use_extension_blocks() -> TestResult {
        let entries: Vec<(u64, u64)> = (0..30).map(|i| (i * 8192, 4096)).collect();
        let h = sparse_headers(GIB, &entries, 0);
        assert_eq!(h.len(), 512 * 3, "4 in the header, 21 + 5 in two extension blocks");
        assert_eq!(h[482], 1);
        assert_eq!(h[512 + 504], 1);
        assert_eq!(h[1024 + 504], 0);
        Ok(())
    }

    #[test]
    fn member_size_rounds_up_to_whole_gib() -> TestResult {
        let map = ExtentMap::from_extents(GIB + 1, vec![Extent { start: 0, len: 1000 }]);
        let l = tar_layout(&map, 0);
        let header = match &l.pieces()[0] {
            Piece::Bytes(b) => b.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(&header[483..495], format!("{:011o}\0", 2 * GIB).as_bytes());
        assert_eq!(l.len() % 512, 0);
        assert_eq!(source_bytes(&l), 1000);
        Ok(())
    }
}
