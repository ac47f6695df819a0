//! qcow2 version 3, written front to back in one pass (qemu `docs/interop/qcow2.txt`).
//!
//! Because the extent map is known before the first byte is written, the whole layout is computed up front:
//!
//! ```text
//! cluster 0          header (+ end-of-extensions marker)
//! refcount table     points at the refcount blocks
//! refcount blocks    16-bit refcount 1 for every cluster used, 0 after
//! L1 table           points at the L2 tables
//! L2 tables          one per 512 MiB of guest space that holds data
//! data clusters      in guest order; clusters without data are not stored and read as zeros
//! ```
//!
//! No seeking back and no temporary file, so the same layout can feed an upload. 64 KiB clusters, as qemu-img
//! creates by default.

use super::{Layout, raw};
use crate::image::ExtentMap;

/// log2 of the cluster size.
pub const CLUSTER_BITS: u32 = 16;
/// Cluster size: 64 KiB.
pub const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Entries per L2 table (8-byte entries in one cluster).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// Refcounts per refcount block (16-bit refcounts in one cluster).
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
/// "Refcount is exactly one": lets qemu write in place without copy-on-write checks.
const COPIED: u64 = 1 << 63;
/// Version 3 header length (no compression-type field).
const HEADER_LEN: u32 = 104;

fn clusters_for(bytes: u64) -> u64 {
    bytes.div_ceil(CLUSTER)
}

/// Where everything goes, in clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    virtual_size: u64,
    data_clusters: Vec<u64>,
    l2_tables: Vec<u64>,
    l1_entries: u64,
    l1_clusters: u64,
    refcount_table_clusters: u64,
    refcount_blocks: u64,
}

impl Plan {
    fn new(map: &ExtentMap) -> Self {
        // qemu block devices are counted in 512-byte sectors.
        let virtual_size = map.size.div_ceil(512) * 512;
        let data_clusters: Vec<u64> =
            map.coarsen(CLUSTER).extents.iter().flat_map(|e| (e.start / CLUSTER)..e.end().div_ceil(CLUSTER)).collect();
        let mut l2_tables: Vec<u64> = data_clusters.iter().map(|c| c / L2_ENTRIES).collect();
        l2_tables.dedup();
        let l1_entries = clusters_for(virtual_size).div_ceil(L2_ENTRIES).max(1);
        let l1_clusters = clusters_for(l1_entries * 8);
        let fixed = 1 + l1_clusters + l2_tables.len() as u64 + data_clusters.len() as u64;
        // The refcount structures count themselves, so grow them until they cover everything.
        let (mut refcount_table_clusters, mut refcount_blocks) = (1, 1);
        loop {
            let total = fixed + refcount_table_clusters + refcount_blocks;
            let blocks = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let table = clusters_for(blocks * 8);
            if blocks == refcount_blocks && table == refcount_table_clusters {
                break;
            }
            refcount_blocks = blocks;
            refcount_table_clusters = table;
        }
        Self {
            virtual_size,
            data_clusters,
            l2_tables,
            l1_entries,
            l1_clusters,
            refcount_table_clusters,
            refcount_blocks,
        }
    }

    fn refcount_table_at(&self) -> u64 {
        1
    }
    fn refcount_blocks_at(&self) -> u64 {
        self.refcount_table_at() + self.refcount_table_clusters
    }
    fn l1_at(&self) -> u64 {
        self.refcount_blocks_at() + self.refcount_blocks
    }
    fn l2_at(&self) -> u64 {
        self.l1_at() + self.l1_clusters
    }
    fn data_at(&self) -> u64 {
        self.l2_at() + self.l2_tables.len() as u64
    }
    fn total_clusters(&self) -> u64 {
        self.data_at() + self.data_clusters.len() as u64
    }

    fn header(&self) -> Vec<u8> {
        let mut h = vec![0u8; CLUSTER as usize];
        h[0..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        // 8..20: no backing file.
        h[20..24].copy_from_slice(&CLUSTER_BITS.to_be_bytes());
        h[24..32].copy_from_slice(&self.virtual_size.to_be_bytes());
        // 32..36: no encryption.
        h[36..40].copy_from_slice(&(self.l1_entries as u32).to_be_bytes());
        h[40..48].copy_from_slice(&(self.l1_at() * CLUSTER).to_be_bytes());
        h[48..56].copy_from_slice(&(self.refcount_table_at() * CLUSTER).to_be_bytes());
        h[56..60].copy_from_slice(&(self.refcount_table_clusters as u32).to_be_bytes());
        // 60..72: no snapshots; 72..96: no incompatible, compatible or autoclear features.
        h[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount_order 4: 16-bit refcounts
        h[100..104].copy_from_slice(&HEADER_LEN.to_be_bytes());
        // 104..112 stays zero: the end-of-header-extensions marker.
        h
    }

    fn refcount_table(&self) -> Vec<u8> {
        let mut t = vec![0u8; (self.refcount_table_clusters * CLUSTER) as usize];
        for i in 0..self.refcount_blocks {
            let at = (i * 8) as usize;
            t[at..at + 8].copy_from_slice(&((self.refcount_blocks_at() + i) * CLUSTER).to_be_bytes());
        }
        t
    }

    fn refcount_blocks(&self) -> Vec<u8> {
        let mut b = vec![0u8; (self.refcount_blocks * CLUSTER) as usize];
        for cluster in 0..self.total_clusters() {
            let at = (cluster * 2) as usize;
            b[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
        }
        b
    }

    fn l1_table(&self) -> Vec<u8> {
        let mut t = vec![0u8; (self.l1_clusters * CLUSTER) as usize];
        for (i, l1_index) in self.l2_tables.iter().enumerate() {
            let at = (l1_index * 8) as usize;
            let offset = (self.l2_at() + i as u64) * CLUSTER;
            t[at..at + 8].copy_from_slice(&(offset | COPIED).to_be_bytes());
        }
        t
    }

    fn l2_tables(&self) -> Vec<u8> {
        let mut t = vec![0u8; self.l2_tables.len() * CLUSTER as usize];
        let mut table_index = 0usize;
        for (i, guest) in self.data_clusters.iter().enumerate() {
            let l1_index = guest / L2_ENTRIES;
            while self.l2_tables[table_index] != l1_index {
                table_index += 1;
            }
            let at = table_index * CLUSTER as usize + ((guest % L2_ENTRIES) * 8) as usize;
            let offset = (self.data_at() + i as u64) * CLUSTER;
            t[at..at + 8].copy_from_slice(&(offset | COPIED).to_be_bytes());
        }
        t
    }
}

/// The qcow2 image of the image described by `map`.
pub fn layout(map: &ExtentMap) -> Layout {
    let plan = Plan::new(map);
    let mut layout = Layout::new();
    layout.bytes(plan.header());
    layout.bytes(plan.refcount_table());
    layout.bytes(plan.refcount_blocks());
    layout.bytes(plan.l1_table());
    layout.bytes(plan.l2_tables());
    // Data clusters are stored in guest order, so each run of consecutive guest clusters is one contiguous range
    // of the image; only its data extents are read, the rest (and the tail of the last cluster) is zeros.
    let mut i = 0;
    while i < plan.data_clusters.len() {
        let first = plan.data_clusters[i];
        let mut j = i + 1;
        while j < plan.data_clusters.len() && plan.data_clusters[j] == first + (j - i) as u64 {
            j += 1;
        }
        raw::append_range(&mut layout, map, first * CLUSTER, (first + (j - i) as u64) * CLUSTER);
        i = j;
    }
    layout
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Extent;

    #[test]
    fn empty_image_has_only_metadata() {
        let plan = Plan::new(&ExtentMap::from_extents(1 << 30, vec![]));
        assert!(plan.data_clusters.is_empty());
        assert!(plan.l2_tables.is_empty());
        assert_eq!(plan.l1_entries, 2);
        assert_eq!(plan.total_clusters(), 4);
        assert_eq!(layout(&ExtentMap::from_extents(1 << 30, vec![])).len(), 4 * CLUSTER);
    }

    #[test]
    fn only_clusters_with_data_are_stored() {
        let map = ExtentMap::from_extents(
            3 << 30,
            vec![Extent { start: 0, len: 1 }, Extent { start: (2 << 30) + 70_000, len: 100_000 }],
        );
        let plan = Plan::new(&map);
        let first = (2u64 << 30) / CLUSTER + 1;
        assert_eq!(plan.data_clusters, vec![0, first, first + 1]);
        assert_eq!(plan.l2_tables, vec![0, 4]);
        assert_eq!(layout(&map).len(), plan.total_clusters() * CLUSTER);
    }

    #[test]
    fn refcount_blocks_grow_to_cover_themselves() {
        // 3 GiB of data = 49152 data clusters, more than one refcount block covers.
        let map = ExtentMap::from_extents(3 << 30, vec![Extent { start: 0, len: 3 << 30 }]);
        let plan = Plan::new(&map);
        assert!(plan.refcount_blocks * REFCOUNTS_PER_BLOCK >= plan.total_clusters());
        assert_eq!(plan.refcount_blocks, 2);
    }
}
