//! The UKI as a PE file: its sections and the Authenticode (PE/COFF image) hash that firmware measures.
//!
//! The Authenticode hash follows EDK2 (Tcg2Dxe `MeasurePeImageAndExtend`, DxeImageVerificationLib): the image
//! without the checksum, the certificate-table directory entry and the certificates, sections in file order, then
//! the trailing data, **without** padding the file to a multiple of 8 bytes. go-uefi (the Go tool) and goblin
//! follow the newer Authenticode document and pad; for an 8-byte-aligned file (what signing tools write) the two
//! agree, for any other file the firmware's value is the unpadded one.

use std::borrow::Cow;

use super::digest::{Digests, MultiHasher};

/// One PE section: its name, its size in memory, and the digests of that many bytes as loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The name (`.linux`, …).
    pub name: String,
    /// VirtualSize: the bytes measured.
    pub size: u32,
    /// The hashes of the section as loaded: the raw data, zero-filled to VirtualSize.
    pub digest: Digests,
}

/// A parsed PE file.
pub struct PeFile<'a> {
    bytes: &'a [u8],
    pe: goblin::pe::PE<'a>,
}

/// Why a file is not a usable PE image.
#[derive(Debug)]
pub struct NotPe(pub String);

impl<'a> PeFile<'a> {
    /// Parses `bytes` as a PE image (headers and section table only).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, NotPe> {
        let mut opts = goblin::pe::options::ParseOptions::default();
        // Certificates must be parsed: goblin excludes the certificate table from the Authenticode ranges only
        // then, and signed kernels (Debian's are) carry one.
        opts.parse_attribute_certificates = true;
        opts.parse_tls_data = false;
        opts.parse_resources = false;
        opts.parse_imports = false;
        let pe = goblin::pe::PE::parse_with_opts(bytes, &opts).map_err(|e| NotPe(e.to_string()))?;
        for section in &pe.sections {
            let end = u64::from(section.pointer_to_raw_data) + u64::from(section.size_of_raw_data);
            if end > bytes.len() as u64 {
                return Err(NotPe(format!(
                    "section {} ends at byte {end}, past the end of the {}-byte file",
                    section_name(section),
                    bytes.len()
                )));
            }
        }
        Ok(Self { bytes, pe })
    }

    /// The Authenticode hashes (every bank), as firmware measures the image (see the module docs on padding).
    pub fn authenticode(&self) -> Digests {
        let ranges: Vec<&[u8]> = self.pe.authenticode_ranges().collect();
        // goblin appends (8 - size % 8) zero bytes as its last range when the size is not a multiple of 8;
        // EDK2 hashes no such padding.
        let unpadded =
            if !self.bytes.len().is_multiple_of(8) { &ranges[..ranges.len().saturating_sub(1)] } else { &ranges[..] };
        let mut hash = MultiHasher::new();
        for range in unpadded {
            hash.update(range);
        }
        hash.finish()
    }

    /// The Authenticode signatures in the certificate table (`WIN_CERT_TYPE_PKCS_SIGNED_DATA` entries), as DER.
    pub fn signatures(&self) -> Vec<&'a [u8]> {
        const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;
        self.pe
            .certificates
            .iter()
            .filter(|c| c.certificate_type as u16 == WIN_CERT_TYPE_PKCS_SIGNED_DATA)
            .map(|c| c.certificate)
            .collect()
    }

    /// The section's bytes as loaded into memory: VirtualSize bytes, the raw data zero-filled past SizeOfRawData
    /// (borrowed from the file unless zero-filling is needed, so a 50 MB UKI is not copied again).
    pub fn section_data(&self, name: &str) -> Option<Cow<'a, [u8]>> {
        let section = self.pe.sections.iter().find(|s| section_name(s) == name)?;
        Some(self.loaded(section))
    }

    fn loaded(&self, section: &goblin::pe::section_table::SectionTable) -> Cow<'a, [u8]> {
        let bytes: &'a [u8] = self.bytes;
        let start = section.pointer_to_raw_data as usize;
        let raw = (section.size_of_raw_data.min(section.virtual_size)) as usize;
        let data = &bytes[start..start + raw];
        if raw == section.virtual_size as usize {
            Cow::Borrowed(data)
        } else {
            let mut filled = data.to_vec();
            filled.resize(section.virtual_size as usize, 0);
            Cow::Owned(filled)
        }
    }

    /// The PE machine type (0x8664 for x86_64, 0xaa64 for aarch64).
    pub fn machine(&self) -> u16 {
        self.pe.header.coff_header.machine
    }

    /// The number of sections in the table.
    pub fn section_count(&self) -> usize {
        self.pe.sections.len()
    }

    /// The raw 8-byte name field of section `index` (systemd-stub before 256 compares names by prefix on it).
    pub fn raw_name(&self, index: usize) -> [u8; 8] {
        self.pe.sections.get(index).map(|s| s.name).unwrap_or_default()
    }

    /// The name of section `index`.
    pub fn name_at(&self, index: usize) -> String {
        self.pe.sections.get(index).map(section_name).unwrap_or_default()
    }

    /// The bytes of section `index` as loaded (VirtualSize bytes, zero-filled).
    pub fn loaded_at(&self, index: usize) -> Cow<'a, [u8]> {
        self.pe.sections.get(index).map_or(Cow::Borrowed(&[][..]), |s| self.loaded(s))
    }

    /// Every section with its digest, in file order.
    pub fn sections(&self) -> Vec<Section> {
        self.sections_with(|_| None)
    }

    /// Every section, in file order, with the digest `known` has for its index, else hashed here.
    pub fn sections_with(&self, known: impl Fn(usize) -> Option<Digests>) -> Vec<Section> {
        self.pe
            .sections
            .iter()
            .enumerate()
            .map(|(i, s)| Section {
                size: s.virtual_size,
                digest: known(i).unwrap_or_else(|| Digests::of(&self.loaded(s))),
                name: section_name(s),
            })
            .collect()
    }

    /// The section names, for messages.
    pub fn section_names(&self) -> Vec<String> {
        self.pe.sections.iter().map(section_name).collect()
    }
}

fn section_name(section: &goblin::pe::section_table::SectionTable) -> String {
    section.name().map(|n| n.trim_end_matches('\0').to_string()).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// A minimal PE32+ image: DOS stub, PE header, optional header with 16 data directories, one `.text` section.
    pub(crate) fn tiny_pe(payload: &[u8], trailing: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[0..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        let pe = 0x80;
        b[pe..pe + 4].copy_from_slice(b"PE\0\0");
        b[pe + 4..pe + 6].copy_from_slice(&0x8664u16.to_le_bytes()); // machine
        b[pe + 6..pe + 8].copy_from_slice(&1u16.to_le_bytes()); // sections
        b[pe + 20..pe + 22].copy_from_slice(&240u16.to_le_bytes()); // optional header size
        b[pe + 22..pe + 24].copy_from_slice(&0x22u16.to_le_bytes());
        let opt = pe + 24;
        b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        b[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes()); // section alignment
        b[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes()); // file alignment
        b[opt + 56..opt + 60].copy_from_slice(&0x2000u32.to_le_bytes()); // size of image
        b[opt + 60..opt + 64].copy_from_slice(&0x200u32.to_le_bytes()); // size of headers
        b[opt + 64..opt + 68].copy_from_slice(&0xdeadbeefu32.to_le_bytes()); // checksum: excluded from the hash
        b[opt + 68..opt + 70].copy_from_slice(&10u16.to_le_bytes()); // subsystem EFI application
        b[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let sect = opt + 240;
        b[sect..sect + 8].copy_from_slice(b".text\0\0\0");
        let raw = payload.len().div_ceil(0x200) * 0x200;
        b[sect + 8..sect + 12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b[sect + 12..sect + 16].copy_from_slice(&0x1000u32.to_le_bytes());
        b[sect + 16..sect + 20].copy_from_slice(&(raw as u32).to_le_bytes());
        b[sect + 20..sect + 24].copy_from_slice(&0x200u32.to_le_bytes());
        let mut data = payload.to_vec();
        data.resize(raw, 0);
        b.extend_from_slice(&data);
        b.extend_from_slice(trailing);
        b
    }

    /// The Authenticode hash by the spec's steps, written out independently of goblin.
    fn reference_hash(b: &[u8]) -> [u8; 32] {
        let opt = 0x80 + 24;
        let checksum = opt + 64;
        let cert_dir = opt + 112 + 4 * 8;
        let mut h = Sha256::new();
        h.update(&b[..checksum]);
        h.update(&b[checksum + 4..cert_dir]);
        h.update(&b[cert_dir + 8..0x200]);
        h.update(&b[0x200..]);
        h.finalize().into()
    }

    #[test]
    fn authenticode_skips_checksum_and_does_not_pad() -> Result<(), NotPe> {
        let aligned = tiny_pe(b"hello", &[]);
        assert_eq!(PeFile::parse(&aligned)?.authenticode().sha256, reference_hash(&aligned));
        let mut changed = aligned.clone();
        changed[0x80 + 24 + 64] ^= 0xff;
        assert_eq!(PeFile::parse(&changed)?.authenticode().sha256, reference_hash(&aligned), "checksum is excluded");
        let unaligned = tiny_pe(b"hello", b"tail");
        assert_eq!(unaligned.len() % 8, 4);
        assert_eq!(PeFile::parse(&unaligned)?.authenticode().sha256, reference_hash(&unaligned), "no 8-byte padding");
        Ok(())
    }

    #[test]
    fn sections_hash_virtual_size_bytes() -> Result<(), NotPe> {
        let pe = tiny_pe(b"hello", &[]);
        let file = PeFile::parse(&pe)?;
        let sections = file.sections();
        assert_eq!(sections.len(), 1);
        assert_eq!(sections[0].name, ".text");
        assert_eq!(sections[0].size, 5);
        assert_eq!(sections[0].digest, Digests::of(b"hello"));
        assert!(PeFile::parse(b"MZ not a pe").is_err());
        Ok(())
    }
}
