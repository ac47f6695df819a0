//! EFI signature lists (UEFI spec 32.4.1, `EFI_SIGNATURE_LIST`): the format of the Secure Boot variables PK, KEK,
//! db and dbx, as `cert-to-efi-sig-list` writes them and firmware stores them. Parsed strictly, so a file that is
//! not one is refused with where it goes wrong instead of being measured as if it were.

use thiserror::Error;

/// `EFI_CERT_X509_GUID` a5c059a1-94e4-4aa7-87b5-ab155c2bf072, as stored (first three fields little-endian).
pub const CERT_X509: [u8; 16] =
    [0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72];
/// `EFI_CERT_SHA256_GUID` c1c41626-504c-4092-aca9-41f936934328, as stored.
pub const CERT_SHA256: [u8; 16] =
    [0x26, 0x16, 0xc4, 0xc1, 0x4c, 0x50, 0x92, 0x40, 0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28];

/// Why bytes are not an EFI signature list.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EslError {
    /// Empty input where a list is required.
    #[error("it is empty; an EFI signature list holds at least one list header (28 bytes)")]
    Empty,
    /// A list header runs past the end.
    #[error("the signature list at byte {offset} needs a 28-byte header but {left} bytes are left")]
    ShortHeader {
        /// Where the list starts.
        offset: usize,
        /// Bytes left.
        left: usize,
    },
    /// The sizes in a header do not add up.
    #[error(
        "the signature list at byte {offset} says it is {list_size} bytes with a {header_size}-byte header and \
         {signature_size}-byte entries, which does not fit the {left} bytes left"
    )]
    BadSizes {
        /// Where the list starts.
        offset: usize,
        /// SignatureListSize.
        list_size: u32,
        /// SignatureHeaderSize.
        header_size: u32,
        /// SignatureSize.
        signature_size: u32,
        /// Bytes left from `offset`.
        left: usize,
    },
}

/// One entry of a list: its owner and its data (a DER certificate, a SHA-256 hash, …).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SignatureData {
    /// The list's SignatureType.
    pub kind: [u8; 16],
    /// SignatureOwner, as stored.
    pub owner: [u8; 16],
    /// The entry's data.
    pub data: Vec<u8>,
}

impl SignatureData {
    /// The entry as EFI_SIGNATURE_DATA stores it (owner, then data): what firmware measures as the authority
    /// that verified an image.
    pub fn stored(&self) -> Vec<u8> {
        let mut out = self.owner.to_vec();
        out.extend_from_slice(&self.data);
        out
    }

    /// Whether the entry is an X.509 certificate.
    pub fn is_x509(&self) -> bool {
        self.kind == CERT_X509
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Every entry of the signature lists in `bytes`, in order.
pub fn parse(bytes: &[u8]) -> Result<Vec<SignatureData>, EslError> {
    if bytes.is_empty() {
        return Err(EslError::Empty);
    }
    let mut out = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let left = bytes.len() - offset;
        if left < 28 {
            return Err(EslError::ShortHeader { offset, left });
        }
        let list = &bytes[offset..];
        let mut kind = [0u8; 16];
        kind.copy_from_slice(&list[..16]);
        let (list_size, header_size, signature_size) = (le32(list, 16), le32(list, 20), le32(list, 24));
        let bad = || EslError::BadSizes { offset, list_size, header_size, signature_size, left };
        let body = (list_size as usize).checked_sub(28 + header_size as usize).ok_or_else(bad)?;
        if list_size as usize > left || signature_size < 16 || !body.is_multiple_of(signature_size as usize) {
            return Err(bad());
        }
        let entries = &list[28 + header_size as usize..list_size as usize];
        for entry in entries.chunks_exact(signature_size as usize) {
            let mut owner = [0u8; 16];
            owner.copy_from_slice(&entry[..16]);
            out.push(SignatureData { kind, owner, data: entry[16..].to_vec() });
        }
        offset += list_size as usize;
    }
    Ok(out)
}

/// A GUID as text (`8be4df61-93ca-11d2-aa0d-00e098032b8c`) from its stored form.
pub fn guid_text(g: &[u8; 16]) -> String {
    super::esp::guid_text(g).to_ascii_lowercase()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One X.509 list as `cert-to-efi-sig-list -g OWNER` writes it.
    pub(crate) fn x509_list(owner: [u8; 16], der: &[u8]) -> Vec<u8> {
        let mut out = CERT_X509.to_vec();
        out.extend_from_slice(&(28 + 16 + der.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(16 + der.len() as u32).to_le_bytes());
        out.extend_from_slice(&owner);
        out.extend_from_slice(der);
        out
    }

    #[test]
    fn lists_parse_into_their_entries_in_order() {
        let mut bytes = x509_list([1; 16], b"first cert");
        bytes.extend(x509_list([2; 16], b"second"));
        let entries = parse(&bytes).unwrap_or_default();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].owner, [1; 16]);
        assert_eq!(entries[0].data, b"first cert");
        assert!(entries[1].is_x509());
        assert_eq!(entries[1].stored(), [&[2u8; 16][..], b"second"].concat());
    }

    #[test]
    fn a_file_that_is_not_a_signature_list_says_where_it_goes_wrong() {
        assert_eq!(parse(b""), Err(EslError::Empty));
        assert_eq!(parse(b"-----BEGIN CERTIFICATE-----"), Err(EslError::ShortHeader { offset: 0, left: 27 }));
        let mut truncated = x509_list([1; 16], b"cert");
        truncated.truncate(truncated.len() - 1);
        assert!(matches!(parse(&truncated), Err(EslError::BadSizes { offset: 0, .. })));
        let mut trailing = x509_list([1; 16], b"cert");
        trailing.extend_from_slice(&[0; 5]);
        assert!(matches!(parse(&trailing), Err(EslError::ShortHeader { left: 5, .. })));
        assert_eq!(guid_text(&CERT_X509), "a5c059a1-94e4-4aa7-87b5-ab155c2bf072");
    }
}
