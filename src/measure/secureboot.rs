//! PCR 7, the Secure Boot policy (TCG PC Client Platform Firmware Profile 3.3.4.8, EDK2's Tcg2Dxe and
//! DxeImageVerificationLib): the SecureBoot, PK, KEK, db and dbx variables as the firmware measures them, the
//! separator, then once per db entry the entry that verified an image (EV_EFI_VARIABLE_AUTHORITY).
//!
//! Secure Boot is off unless a platform key is given (a firmware with a PK is in user mode), as AWS's
//! `nitro-tpm-pcr-compute` has it; off, the firmware still measures SecureBoot = 0 and the empty key variables
//! (what Debian's OVMF does, proven by booting). On, each image the firmware loads must carry an Authenticode
//! signature whose certificate is a db entry or was issued by one, over the image's own hash, and must not be in
//! dbx: otherwise it would not boot, and measuring it would predict a boot that never happens.

use std::path::{Path, PathBuf};

use der::{Decode, Encode};
use thiserror::Error;

use super::digest::Digests;
use super::esl::{self, EslError, SignatureData};
use super::pcr::Simulator;
use super::pe::PeFile;

/// EFI_GLOBAL_VARIABLE 8be4df61-93ca-11d2-aa0d-00e098032b8c, as stored.
const EFI_GLOBAL_VARIABLE: [u8; 16] =
    [0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c];
/// EFI_IMAGE_SECURITY_DATABASE_GUID d719b2cb-3d3a-4596-a3bc-dad00e67656f, as stored.
const IMAGE_SECURITY_DATABASE: [u8; 16] =
    [0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f];
/// The EV_SEPARATOR event data.
const SEPARATOR: [u8; 4] = [0; 4];

/// Why the Secure Boot keys cannot be used.
#[derive(Debug, Error)]
pub enum SecureBootError {
    /// A key file cannot be read.
    #[error("{flag} {}: {source}", path.display())]
    Read {
        /// `--pk`, `--kek`, `--db` or `--dbx`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file is not an EFI signature list.
    #[error(
        "{flag} {} is not an EFI signature list ({source}); write one from a certificate with \
         `cert-to-efi-sig-list -g OWNER-GUID CERT.crt FILE.esl` (efitools)",
        path.display()
    )]
    NotEsl {
        /// The flag.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: EslError,
    },
    /// Keys without a platform key.
    #[error("{flag} was given without --pk: Secure Boot is on only with a platform key; add --pk PK.esl")]
    NoPlatformKey {
        /// The flag given.
        flag: &'static str,
    },
    /// A platform key without a db.
    #[error("--pk was given without --db: with Secure Boot on, nothing would verify the images; add --db db.esl")]
    NoDb,
}

/// The Secure Boot variables of the firmware that boots the image; having them means Secure Boot is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecureBootKeys {
    /// The PK variable's content.
    pub pk: Vec<u8>,
    /// The KEK variable's content (empty when not given).
    pub kek: Vec<u8>,
    /// The db variable's content.
    pub db: Vec<u8>,
    /// The dbx variable's content (empty when not given).
    pub dbx: Vec<u8>,
}

/// The key files of `--pk`, `--kek`, `--db`, `--dbx`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyFiles {
    /// `--pk`.
    pub pk: Option<PathBuf>,
    /// `--kek`.
    pub kek: Option<PathBuf>,
    /// `--db`.
    pub db: Option<PathBuf>,
    /// `--dbx`.
    pub dbx: Option<PathBuf>,
}

fn read_esl(flag: &'static str, path: &Path) -> Result<Vec<u8>, SecureBootError> {
    let bytes = std::fs::read(path).map_err(|source| SecureBootError::Read { flag, path: path.into(), source })?;
    esl::parse(&bytes).map_err(|source| SecureBootError::NotEsl { flag, path: path.into(), source })?;
    Ok(bytes)
}

impl KeyFiles {
    /// Reads and checks the files: `None` when no key is given (Secure Boot off).
    pub fn load(&self) -> Result<Option<SecureBootKeys>, SecureBootError> {
        let Some(pk) = &self.pk else {
            let given = [("--kek", &self.kek), ("--db", &self.db), ("--dbx", &self.dbx)];
            return match given.iter().find(|(_, p)| p.is_some()) {
                Some((flag, _)) => Err(SecureBootError::NoPlatformKey { flag }),
                None => Ok(None),
            };
        };
        let Some(db) = &self.db else { return Err(SecureBootError::NoDb) };
        let optional = |flag, path: &Option<PathBuf>| path.as_deref().map(|p| read_esl(flag, p)).transpose();
        Ok(Some(SecureBootKeys {
            pk: read_esl("--pk", pk)?,
            kek: optional("--kek", &self.kek)?.unwrap_or_default(),
            db: read_esl("--db", db)?,
            dbx: optional("--dbx", &self.dbx)?.unwrap_or_default(),
        }))
    }
}

/// UEFI_VARIABLE_DATA: the variable's GUID, name length (characters), data length, name (UTF-16LE, no NUL),
/// data. Its hash is what EV_EFI_VARIABLE_DRIVER_CONFIG and EV_EFI_VARIABLE_AUTHORITY extend.
pub fn variable_data(guid: &[u8; 16], name: &str, data: &[u8]) -> Vec<u8> {
    let utf16: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut out = guid.to_vec();
    out.extend_from_slice(&(name.encode_utf16().count() as u64).to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&utf16);
    out.extend_from_slice(data);
    out
}

/// Extends PCR 7 with the Secure Boot configuration as the firmware measures it before it boots anything:
/// SecureBoot, PK, KEK, db, dbx, separator.
pub fn measure_policy(sim: &mut Simulator, keys: Option<&SecureBootKeys>) {
    let empty = Vec::new();
    let on = [u8::from(keys.is_some())];
    let (pk, kek, db, dbx) = match keys {
        Some(k) => (&k.pk, &k.kek, &k.db, &k.dbx),
        None => (&empty, &empty, &empty, &empty),
    };
    let variables: [(&[u8; 16], &str, &[u8]); 5] = [
        (&EFI_GLOBAL_VARIABLE, "SecureBoot", &on),
        (&EFI_GLOBAL_VARIABLE, "PK", pk),
        (&EFI_GLOBAL_VARIABLE, "KEK", kek),
        (&IMAGE_SECURITY_DATABASE, "db", db),
        (&IMAGE_SECURITY_DATABASE, "dbx", dbx),
    ];
    for (guid, name, data) in variables {
        let description = format!("EV_EFI_VARIABLE_DRIVER_CONFIG: {name} ({} bytes)", data.len());
        sim.extend_data(7, variable_data(guid, name, data), description);
    }
    sim.extend(7, Digests::of(&SEPARATOR), Some(SEPARATOR.to_vec()), "EV_SEPARATOR".into());
}

/// Extends PCR 7 with the db entry that verified an image, unless an earlier image's verification measured it
/// already (`measured` holds those).
pub fn measure_authority(sim: &mut Simulator, entry: &SignatureData, measured: &mut Vec<SignatureData>) {
    if measured.contains(entry) {
        return;
    }
    measured.push(entry.clone());
    let description = format!(
        "EV_EFI_VARIABLE_AUTHORITY: db entry of owner {} ({} bytes)",
        esl::guid_text(&entry.owner),
        entry.data.len()
    );
    sim.extend_data(7, variable_data(&IMAGE_SECURITY_DATABASE, "db", &entry.stored()), description);
}

/// Why an image would not pass Secure Boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No Authenticode signature.
    Unsigned,
    /// Signed, but by no certificate in db (nor one issued by a db certificate).
    NotInDb {
        /// The subjects of the certificates the signatures carry.
        signers: Vec<String>,
    },
    /// The signature is over other bytes than the image has.
    DigestMismatch,
    /// The image's hash or its signing certificate is in dbx.
    Revoked(String),
    /// The signature cannot be read.
    Malformed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unsigned => f.write_str("it is not signed by any db certificate: it has no signature at all"),
            Refusal::NotInDb { signers } => write!(
                f,
                "it is not signed by any db certificate: its signature is by {}, which neither is in db nor was \
                 issued by a db certificate",
                signers.join(", ")
            ),
            Refusal::DigestMismatch => f.write_str(
                "it is not signed by any db certificate: its signature is over another image (the signed hash \
                 differs from the image's own; it was changed after signing)",
            ),
            Refusal::Revoked(what) => write!(f, "it is revoked by dbx: {what}"),
            Refusal::Malformed(why) => {
                write!(f, "it is not signed by any db certificate: its signature cannot be read ({why})")
            }
        }
    }
}

/// A certificate's subject, for messages (`CN=uplosi test db`).
fn subject(cert: &x509_cert::Certificate) -> String {
    cert.tbs_certificate.subject.to_string()
}

/// The certificates of one Authenticode signature, after checking it is over the image `authenticode`.
fn signature_certificates(signature: &[u8], authenticode: &Digests) -> Result<Vec<Vec<u8>>, Refusal> {
    let parsed =
        authenticode::AuthenticodeSignature::from_bytes(signature).map_err(|e| Refusal::Malformed(format!("{e:?}")))?;
    let algorithm = parsed.digest_algorithm().oid.to_string();
    let expected: &[u8] = match algorithm.as_str() {
        "2.16.840.1.101.3.4.2.1" => &authenticode.sha256,
        "2.16.840.1.101.3.4.2.2" => &authenticode.sha384,
        "1.3.14.3.2.26" => &authenticode.sha1,
        other => return Err(Refusal::Malformed(format!("digest algorithm {other} is not SHA-1, SHA-256 or SHA-384"))),
    };
    if parsed.digest() != expected {
        return Err(Refusal::DigestMismatch);
    }
    // The certificates, read again with the CMS parser (the Authenticode parser panics on signatures without).
    let mut reader = der::SliceReader::new(signature).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let info = cms::content_info::ContentInfo::decode(&mut reader).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let signed: cms::signed_data::SignedData =
        info.content.decode_as().map_err(|e| Refusal::Malformed(e.to_string()))?;
    let mut out = Vec::new();
    for choice in signed.certificates.map(|c| c.0.into_vec()).unwrap_or_default() {
        if let cms::cert::CertificateChoices::Certificate(cert) = choice {
            out.push(cert.to_der().map_err(|e| Refusal::Malformed(e.to_string()))?);
        }
    }
    Ok(out)
}

/// The db entry that lets `image` boot under `keys`, as the firmware finds it: the first X.509 entry of db (in db
/// order) that is one of the signature's certificates or issued one of them.
pub fn verify(image: &PeFile<'_>, keys: &SecureBootKeys) -> Result<SignatureData, Refusal> {
    let authenticode = image.authenticode();
    let db = esl::parse(&keys.db).unwrap_or_default();
    let dbx = if keys.dbx.is_empty() { Vec::new() } else { esl::parse(&keys.dbx).unwrap_or_default() };
    if dbx.iter().any(|e| e.kind == esl::CERT_SHA256 && e.data == authenticode.sha256) {
        return Err(Refusal::Revoked(format!("its SHA-256 {} is listed", super::pcr::hex(&authenticode.sha256))));
    }
    let signatures = image.signatures();
    if signatures.is_empty() {
        return Err(Refusal::Unsigned);
    }
    let mut signers = Vec::new();
    let mut last_error = None;
    for signature in signatures {
        let certificates = match signature_certificates(signature, &authenticode) {
            Ok(c) => c,
            Err(e) => {
                last_error = Some(e);
                continue;
            }
        };
        let parsed: Vec<x509_cert::Certificate> =
            certificates.iter().filter_map(|der| x509_cert::Certificate::from_der(der).ok()).collect();
        if let Some(revoked) = dbx.iter().filter(|e| e.is_x509()).find(|e| certificates.contains(&e.data)) {
            let name = x509_cert::Certificate::from_der(&revoked.data).map(|c| subject(&c)).unwrap_or_default();
            return Err(Refusal::Revoked(format!("its signing certificate {name} is listed")));
        }
        for entry in db.iter().filter(|e| e.is_x509()) {
            if certificates.contains(&entry.data) {
                return Ok(entry.clone());
            }
            // A db CA: its subject is the issuer of a certificate in the signature.
            if let Ok(ca) = x509_cert::Certificate::from_der(&entry.data) {
                let ca_subject = ca.tbs_certificate.subject.to_der().unwrap_or_default();
                if parsed.iter().any(|c| c.tbs_certificate.issuer.to_der().unwrap_or_default() == ca_subject) {
                    return Ok(entry.clone());
                }
            }
        }
        signers.extend(parsed.iter().map(subject));
    }
    match (signers.is_empty(), last_error) {
        (true, Some(e)) => Err(e),
        _ => Err(Refusal::NotInDb { signers }),
    }
}

/// How the summary names the Secure Boot state.
pub fn describe(on: bool) -> &'static str {
    if on { "on (SecureBoot = 1, the given PK, KEK, db, dbx)" } else { "off (SecureBoot = 0, no keys enrolled)" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::digest::Bank;
    use crate::measure::pcr::hex;

    #[test]
    fn secure_boot_off_is_what_debians_ovmf_measures() {
        // The guest's PCR 7 after a boot under Debian's OVMF_CODE_4M.fd and swtpm (tests/boot_check.rs).
        let mut sim = Simulator::default();
        measure_policy(&mut sim, None);
        assert_eq!(
            hex(&sim.value(7, Bank::Sha256)),
            "65caf8dd1e0ea7a6347b635d2b379c93b9a1351edc2afc3ecda700e534eb3068"
        );
        assert_eq!(
            hex(&sim.value(7, Bank::Sha384)),
            "98441c7f7625d10058c47683aec486ce311c633235eb555593a7ee791121e3578ae72d04ecef661f272d59058b77af35"
        );
        assert_eq!(hex(&sim.value(7, Bank::Sha1)), "518bd167271fbb64589c61e43d8c0165861431d8");
        assert_eq!(sim.events.len(), 6);
    }

    #[test]
    fn variable_data_is_laid_out_as_uefi_variable_data() {
        let data = variable_data(&EFI_GLOBAL_VARIABLE, "PK", b"xy");
        assert_eq!(&data[..16], &EFI_GLOBAL_VARIABLE);
        assert_eq!(&data[16..24], &2u64.to_le_bytes(), "name length in characters");
        assert_eq!(&data[24..32], &2u64.to_le_bytes(), "data length");
        assert_eq!(&data[32..36], &[b'P', 0, b'K', 0]);
        assert_eq!(&data[36..], b"xy");
    }

    #[test]
    fn an_authority_is_measured_once() {
        let mut sim = Simulator::default();
        let entry = SignatureData { kind: esl::CERT_X509, owner: [9; 16], data: b"cert".to_vec() };
        let mut measured = Vec::new();
        measure_authority(&mut sim, &entry, &mut measured);
        measure_authority(&mut sim, &entry, &mut measured);
        assert_eq!(sim.events.len(), 1);
    }

    #[test]
    fn keys_need_a_platform_key_and_a_db() {
        assert!(matches!(KeyFiles::default().load(), Ok(None)));
        let only_db = KeyFiles { db: Some("db.esl".into()), ..KeyFiles::default() };
        assert!(matches!(only_db.load(), Err(SecureBootError::NoPlatformKey { flag: "--db" })));
        let no_db = KeyFiles { pk: Some("pk.esl".into()), ..KeyFiles::default() };
        assert!(matches!(no_db.load(), Err(SecureBootError::NoDb)));
    }
}
