//! TPM PCR banks and the digests of one measurement in every bank uplosi reports.
//!
//! A TPM with several banks allocated extends each of them with that bank's hash of the same event, so a
//! replayed boot carries every event's digest in SHA-1, SHA-256 and SHA-384 at once ([`Digests`]). They are
//! computed in one pass over the bytes ([`MultiHasher`]), so asking for another bank never reads the image again.

use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha384};

/// A PCR bank: the hash algorithm of one set of PCRs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Bank {
    /// SHA-1 (20 bytes); still allocated by most firmware.
    Sha1,
    /// SHA-256 (32 bytes); what systemd and most verifiers use.
    #[default]
    Sha256,
    /// SHA-384 (48 bytes); what AWS NitroTPM attests with.
    Sha384,
}

impl Bank {
    /// Every bank, in TPM algorithm order.
    pub const ALL: [Bank; 3] = [Bank::Sha1, Bank::Sha256, Bank::Sha384];

    /// `sha1`, `sha256`, `sha384` (as Linux names `/sys/class/tpm/tpm0/pcr-NAME/` and swtpm_setup its banks).
    pub fn name(self) -> &'static str {
        match self {
            Bank::Sha1 => "sha1",
            Bank::Sha256 => "sha256",
            Bank::Sha384 => "sha384",
        }
    }

    /// The digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Bank::Sha1 => 20,
            Bank::Sha256 => 32,
            Bank::Sha384 => 48,
        }
    }

    /// The TPM_ALG_ID (TCG Algorithm Registry).
    pub fn tpm_alg(self) -> u16 {
        match self {
            Bank::Sha1 => 0x0004,
            Bank::Sha256 => 0x000b,
            Bank::Sha384 => 0x000c,
        }
    }

    /// The bank of a TPM_ALG_ID, if uplosi knows it.
    pub fn from_tpm_alg(alg: u16) -> Option<Bank> {
        Bank::ALL.into_iter().find(|b| b.tpm_alg() == alg)
    }

    /// This bank's hash of `data`.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Bank::Sha1 => Sha1::digest(data).to_vec(),
            Bank::Sha256 => Sha256::digest(data).to_vec(),
            Bank::Sha384 => Sha384::digest(data).to_vec(),
        }
    }

    /// PCR = H(PCR || digest) in this bank.
    pub fn extend(self, pcr: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut joined = Vec::with_capacity(pcr.len() + digest.len());
        joined.extend_from_slice(pcr);
        joined.extend_from_slice(digest);
        self.hash(&joined)
    }

    /// A PCR's value at reset: all zeros.
    pub fn zero(self) -> Vec<u8> {
        vec![0; self.digest_len()]
    }
}

impl std::fmt::Display for Bank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One measurement's digest in each bank.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digests {
    /// SHA-1.
    pub sha1: [u8; 20],
    /// SHA-256.
    pub sha256: [u8; 32],
    /// SHA-384.
    pub sha384: [u8; 48],
}

impl std::fmt::Debug for Digests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digests(sha256={})", super::pcr::hex(&self.sha256))
    }
}

impl Digests {
    /// All zeros in every bank (a PCR at reset).
    pub const ZERO: Digests = Digests { sha1: [0; 20], sha256: [0; 32], sha384: [0; 48] };

    /// The digests of `data`.
    pub fn of(data: &[u8]) -> Self {
        let mut hasher = MultiHasher::new();
        hasher.update(data);
        hasher.finish()
    }

    /// The same bytes in every bank, where the value is not a hash but given (a test vector): `byte` repeated.
    pub fn filled(byte: u8) -> Self {
        Digests { sha1: [byte; 20], sha256: [byte; 32], sha384: [byte; 48] }
    }

    /// The digest in `bank`.
    pub fn get(&self, bank: Bank) -> &[u8] {
        match bank {
            Bank::Sha1 => &self.sha1,
            Bank::Sha256 => &self.sha256,
            Bank::Sha384 => &self.sha384,
        }
    }

    /// Every bank extended with `digest`: self = H(self || digest).
    pub fn extend(&mut self, digest: &Digests) {
        let mut sha1 = Sha1::new();
        sha1.update(self.sha1);
        sha1.update(digest.sha1);
        self.sha1 = sha1.finalize().into();
        let mut sha256 = Sha256::new();
        sha256.update(self.sha256);
        sha256.update(digest.sha256);
        self.sha256 = sha256.finalize().into();
        let mut sha384 = Sha384::new();
        sha384.update(self.sha384);
        sha384.update(digest.sha384);
        self.sha384 = sha384.finalize().into();
    }
}

/// From this size on, [`MultiHasher::update`] hashes on two threads.
const PARALLEL_FROM: usize = 1 << 20;

/// SHA-1, SHA-256 and SHA-384 over the same bytes, fed once.
#[derive(Clone, Default)]
pub struct MultiHasher {
    sha1: Sha1,
    sha256: Sha256,
    sha384: Sha384,
}

impl MultiHasher {
    /// A hasher over nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `data`. SHA-384 has no CPU instructions of its own and takes as long as the other two together, so
    /// for large inputs (UKI sections, a kernel) it runs on a second thread while this one does SHA-1 and SHA-256.
    pub fn update(&mut self, data: &[u8]) {
        let Self { sha1, sha256, sha384 } = self;
        if data.len() < PARALLEL_FROM {
            sha1.update(data);
            sha256.update(data);
            sha384.update(data);
            return;
        }
        std::thread::scope(|scope| {
            scope.spawn(|| sha384.update(data));
            // In 64 KiB pieces, so each piece is still in the cache when the second algorithm reads it.
            for piece in data.chunks(64 << 10) {
                sha1.update(piece);
                sha256.update(piece);
            }
        });
    }

    /// The digests of everything added.
    pub fn finish(self) -> Digests {
        Digests {
            sha1: self.sha1.finalize().into(),
            sha256: self.sha256.finalize().into(),
            sha384: self.sha384.finalize().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::pcr::hex;

    #[test]
    fn digests_are_the_standard_hashes_of_each_bank() {
        let d = Digests::of(b"abc");
        assert_eq!(hex(&d.sha1), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(hex(&d.sha256), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(
            hex(&d.sha384),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
        );
        let mut split = MultiHasher::new();
        split.update(b"a");
        split.update(b"bc");
        assert_eq!(split.finish(), d, "fed in pieces, the same");
        let large: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut parallel = MultiHasher::new();
        parallel.update(&large[..1]);
        parallel.update(&large[1..]);
        let whole = Digests::of(&large);
        assert_eq!(parallel.finish(), whole, "on two threads, the same");
        assert_eq!(whole.sha384.to_vec(), Bank::Sha384.hash(&large));
        for bank in Bank::ALL {
            assert_eq!(bank.hash(b"abc"), d.get(bank), "{bank}");
            assert_eq!(bank.zero().len(), bank.digest_len());
        }
    }

    #[test]
    fn extending_every_bank_equals_extending_each() {
        let mut pcr = Digests::ZERO;
        let event = Digests::of(b"event");
        pcr.extend(&event);
        for bank in Bank::ALL {
            assert_eq!(pcr.get(bank), bank.extend(&bank.zero(), event.get(bank)), "{bank}");
        }
        assert_eq!(Bank::from_tpm_alg(0x000c), Some(Bank::Sha384));
        assert_eq!(Bank::from_tpm_alg(0x000d), None, "SHA-512 is not a bank uplosi reports");
    }
}
