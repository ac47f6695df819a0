//! `uplosi measurements`: the TPM PCR values a UKI-booting image produces, read straight from the image file.
//!
//! The ESP is found through the GPT ([`esp`]), the UKI and what systemd-stub picks up next to it are read from its
//! FAT file system, the UKI's PE sections are parsed ([`pe`]), and the boot is replayed on a PCR bank
//! ([`replay`], [`pcr`]) as the UKI's own systemd-stub release does it ([`stub`], [`cpio`]): PCR 4 (the firmware
//! loading the UKI, its add-ons and, up to stub 257, the kernel), PCR 9 (the kernel command line and initrd
//! through LOAD_FILE2), PCR 11 (the stub measuring the UKI's sections), PCR 12 and 13 (credentials, extensions
//! and add-ons from the ESP). The output is the Go uplosi's JSON document; no mount, no root, no temporary file.

pub mod cpio;
pub mod digest;
pub mod document;
pub mod esl;
pub mod esp;
pub mod loader;
pub mod pcr;
pub mod pe;
pub mod phases;
pub mod replay;
pub mod secureboot;
pub mod stub;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::image::{ImageError, SourceImage};
use loader::BootFile;
use pcr::{Simulator, hex};
pub use replay::{Chain, Consoles, Platform, Replay, UkiError};
pub use secureboot::{KeyFiles, SecureBootError, SecureBootKeys};

/// Where mkosi images keep the UKI, as the ESP is mounted at `/boot`: the Go tool's default.
pub const DEFAULT_UKI_PATH: &str = "/boot/EFI/BOOT/BOOTX64.EFI";

/// Why measuring failed.
#[derive(Debug, Error)]
pub enum MeasureError {
    /// The image cannot be opened.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Reading the image failed.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The image.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No GPT.
    #[error("{} has no GPT partition table (no \"EFI PART\" header at LBA 1); measurements need a GPT disk image with an EFI system partition", path.display())]
    NoGpt {
        /// The image.
        path: PathBuf,
    },
    /// No ESP.
    #[error("{} has no EFI system partition (type C12A7328-F81F-11D2-BA4B-00A0C93EC93B) in its GPT; partition types found: {}", path.display(), if found.is_empty() { "none".to_string() } else { found.join(", ") })]
    NoEsp {
        /// The image.
        path: PathBuf,
        /// The partition types present.
        found: Vec<String>,
    },
    /// The ESP holds no FAT file system uplosi can read.
    #[error("the EFI system partition of {} is not a readable FAT file system: {source}", path.display())]
    BadFat {
        /// The image.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The UKI is not there.
    #[error("{uki} not found in the EFI system partition of {}; EFI/BOOT holds: {}; pass the UKI's path with -u/--uki-path", path.display(), if listing.is_empty() { "nothing".to_string() } else { listing.join(", ") })]
    UkiNotFound {
        /// The image.
        path: PathBuf,
        /// The UKI path asked for.
        uki: String,
        /// What EFI/BOOT holds.
        listing: Vec<String>,
    },
    /// The UKI is not a PE image.
    #[error("{uki} in {} is not a PE/EFI image: {reason}", path.display())]
    NotPe {
        /// The image.
        path: PathBuf,
        /// The UKI path.
        uki: String,
        /// What is wrong.
        reason: String,
    },
    /// A section a UKI must have is missing.
    #[error("{uki} in {} is not a unified kernel image: it has no {section} section (its sections: {})", path.display(), sections.join(" "))]
    MissingSection {
        /// The image.
        path: PathBuf,
        /// The UKI path.
        uki: String,
        /// The missing section.
        section: &'static str,
        /// The sections it has.
        sections: Vec<String>,
    },
    /// The boot path cannot be followed.
    #[error(transparent)]
    Path(#[from] PathError),
}

/// Why the boot path cannot be followed (part of [`MeasureError`]).
#[derive(Debug, Error)]
pub enum PathError {
    /// The firmware's boot file is a boot loader uplosi does not model.
    #[error(
        "{file} in {} is {name} ({evidence}); uplosi predicts the PCRs of a UKI the firmware starts directly or          through systemd-boot, not through {name}, and would predict a boot that does not happen",
        path.display()
    )]
    Unmodelled {
        /// The image.
        path: PathBuf,
        /// The boot file.
        file: String,
        /// shim, GRUB.
        name: &'static str,
        /// How it was recognised.
        evidence: String,
    },
    /// The firmware's boot file is a PE image that is neither a UKI nor systemd-boot.
    #[error(
        "{file} in {} is neither a unified kernel image (no .linux section) nor systemd-boot (no \
         \"systemd-boot\" in .sdmagic; its sections: {}); uplosi cannot tell what it would measure",
        path.display(),
        sections.join(" ")
    )]
    Unknown {
        /// The image.
        path: PathBuf,
        /// The boot file.
        file: String,
        /// Its sections.
        sections: Vec<String>,
    },
    /// systemd-boot finds nothing to boot.
    #[error(
        "systemd-boot {version} ({file}) in {} finds no boot entry: no UKI with an .osrel in EFI/Linux/ and no          loader/entries/*.conf; it would show its menu and wait. Put the UKI into EFI/Linux/ or pass -u",
        path.display()
    )]
    NoEntry {
        /// The image.
        path: PathBuf,
        /// The boot file.
        file: String,
        /// systemd-boot's version.
        version: String,
    },
    /// systemd-boot boots a Type #1 entry.
    #[error(
        "systemd-boot {version} in {} boots {entry}, a Type #1 entry (a kernel and initrd, not a UKI), which          uplosi does not model; make a UKI in EFI/Linux/ the default (loader/loader.conf `default`) or pass -u",
        path.display()
    )]
    Type1 {
        /// The image.
        path: PathBuf,
        /// systemd-boot's version.
        version: String,
        /// The entry file.
        entry: String,
    },
    /// With Secure Boot on, an image on the path would not start.
    #[error("with Secure Boot on (--pk/--kek/--db/--dbx), {image} in {} would not start: {refusal}", path.display())]
    NotSigned {
        /// The disk image.
        path: PathBuf,
        /// Which image on the boot path.
        image: String,
        /// Why.
        refusal: secureboot::Refusal,
    },
}

impl MeasureError {
    /// Whether the input is at fault (exit code 2) rather than I/O (exit code 1).
    pub fn is_usage(&self) -> bool {
        match self {
            MeasureError::Image(e) => !matches!(e, ImageError::Read { .. } | ImageError::Interrupted),
            MeasureError::Read { .. } => false,
            _ => true,
        }
    }
}

/// What to measure, and how the firmware is set up.
#[derive(Clone, Debug, Default)]
pub struct MeasureOptions {
    /// `-u`: the UKI, picked by hand; `None`: the one the firmware's boot path reaches.
    pub uki_path: Option<String>,
    /// The Secure Boot variables; `None`: Secure Boot off.
    pub keys: Option<SecureBootKeys>,
}

impl MeasureOptions {
    /// The UKI the firmware's path reaches, Secure Boot off.
    pub fn firmware_path() -> Self {
        Self::default()
    }
}

/// The result: the PCRs with their event log, and warnings.
pub struct Measurements {
    /// The simulated PCRs and events.
    pub simulator: Simulator,
    /// What the user should know about the prediction (log them as warnings).
    pub warnings: Vec<String>,
    /// The replayed boot, for the boot check.
    pub replay: Replay,
}

/// The paths inside the ESP to try for `uki_path`: as given relative to the ESP root, then without a leading
/// `boot/` or `efi/` (where images mount the ESP).
pub fn esp_candidates(uki_path: &str) -> Vec<String> {
    let relative = uki_path.trim_start_matches('/').to_string();
    let mut candidates = vec![relative.clone()];
    for mount in ["boot/", "efi/"] {
        if let Some(rest) = relative.strip_prefix(mount) {
            candidates.insert(0, rest.to_string());
        }
    }
    candidates
}

/// Measures the image at `image_path` (raw or qcow2) as `options` say, for a machine nothing is known about.
pub fn measure(image_path: &Path, options: &MeasureOptions) -> Result<Measurements, MeasureError> {
    measure_image(&SourceImage::open(image_path)?, options, &Platform::UNKNOWN)
}

/// The file the firmware boots: the first fallback path that exists, with its bytes.
fn firmware_file(esp: &esp::Esp) -> std::io::Result<Option<(String, Vec<u8>)>> {
    for path in loader::FALLBACK_PATHS {
        if let Some(bytes) = esp.read(path)? {
            return Ok(Some((path.to_string(), bytes)));
        }
    }
    Ok(None)
}

/// Where the firmware's path leads: the UKI and systemd-boot in front of it, if any.
struct BootPath {
    /// The UKI's path in the ESP.
    location: String,
    /// The UKI.
    uki: Vec<u8>,
    /// systemd-boot's image, version text and model.
    systemd_boot: Option<(Vec<u8>, String, loader::SystemdBootModel)>,
}

impl BootPath {
    fn direct((location, uki): (String, Vec<u8>)) -> Self {
        Self { location, uki, systemd_boot: None }
    }
}

/// Follows the firmware's boot path in `esp`: the UKI at the fallback path, or systemd-boot there and the entry it
/// picks; `-u` overrides the entry.
fn boot_path(esp: &esp::Esp, image: &Path, uki_path: Option<&str>) -> Result<BootPath, MeasureError> {
    let fat_err = |source| MeasureError::BadFat { path: image.to_path_buf(), source };
    let firmware = firmware_file(esp).map_err(fat_err)?;
    let picked = match uki_path {
        Some(wanted) => {
            let mut found = None;
            for candidate in esp_candidates(wanted) {
                if let Some(bytes) = esp.read(&candidate).map_err(fat_err)? {
                    found = Some((candidate, bytes));
                    break;
                }
            }
            let Some(found) = found else {
                return Err(MeasureError::UkiNotFound {
                    path: image.into(),
                    uki: wanted.to_string(),
                    listing: esp.efi_boot_listing(),
                });
            };
            Some(found)
        }
        None => None,
    };
    let Some((file, bytes)) = firmware else {
        return match picked {
            // No fallback boot file: the UKI picked by hand is taken as what the firmware starts.
            Some(found) => Ok(BootPath::direct(found)),
            None => Err(MeasureError::UkiNotFound {
                path: image.into(),
                uki: DEFAULT_UKI_PATH.to_string(),
                listing: esp.efi_boot_listing(),
            }),
        };
    };
    let kind = match pe::PeFile::parse(&bytes) {
        Ok(pe) => (loader::classify(&pe), pe.section_names()),
        // Not a PE image at all: measured as the UKI it should be, which names what is wrong with it.
        Err(_) => (BootFile::Uki, Vec::new()),
    };
    match kind {
        (BootFile::Unmodelled { name, evidence }, _) => {
            Err(PathError::Unmodelled { path: image.into(), file, name, evidence }.into())
        }
        (BootFile::SystemdBoot { version, release }, _) => {
            let model = loader::SystemdBootModel::for_release(release);
            let (location, uki) = match picked {
                Some(found) => found,
                None => {
                    let entries = loader::entries(esp).map_err(fat_err)?;
                    let conf = esp.read("loader/loader.conf").map_err(fat_err)?;
                    let conf = conf.map(|c| String::from_utf8_lossy(&c).into_owned());
                    let Some(entry) = loader::default_entry(entries, conf.as_deref()) else {
                        return Err(PathError::NoEntry { path: image.into(), file, version }.into());
                    };
                    if !entry.uki {
                        return Err(PathError::Type1 { path: image.into(), version, entry: entry.path }.into());
                    }
                    let bytes = esp.read(&entry.path).map_err(fat_err)?.unwrap_or_default();
                    (entry.path, bytes)
                }
            };
            Ok(BootPath { location, uki, systemd_boot: Some((bytes, version, model)) })
        }
        (BootFile::Uki, _) => Ok(BootPath::direct(picked.unwrap_or((file, bytes)))),
        // A boot file uplosi cannot read is left to the user who picked the UKI by hand.
        (BootFile::Unknown, sections) => match picked {
            Some(found) => Ok(BootPath::direct(found)),
            None => Err(PathError::Unknown { path: image.into(), file, sections }.into()),
        },
    }
}

/// Measures the already opened `image` as `options` say, booted on `platform`.
pub fn measure_image(
    image: &SourceImage,
    options: &MeasureOptions,
    platform: &Platform,
) -> Result<Measurements, MeasureError> {
    let path = image.path.clone();
    let read_err = |source| MeasureError::Read { path: path.clone(), source };
    let partition = match esp::find_esp(&*image.data, image.size).map_err(read_err)? {
        Ok(p) => p,
        Err(esp::EspLookup::NoGpt) => return Err(MeasureError::NoGpt { path }),
        Err(esp::EspLookup::NoEsp(found)) => return Err(MeasureError::NoEsp { path, found }),
    };
    let fat_err = |source| MeasureError::BadFat { path: path.clone(), source };
    let esp =
        esp::Esp::open(esp::PartitionReader::new(std::sync::Arc::clone(&image.data), partition)).map_err(fat_err)?;
    let BootPath { location, uki, systemd_boot } = boot_path(&esp, &path, options.uki_path.as_deref())?;
    let sidecars = replay::read_sidecars(&esp, &location).map_err(fat_err)?;
    let chain = Chain {
        loader: systemd_boot.as_ref().map(|(image, version, model)| replay::Loader { image, version, model: *model }),
        keys: options.keys.as_ref(),
    };
    let shown = format!("/{location}");
    measure_uki(&uki, &sidecars, platform, &chain).map_err(|e| match e {
        UkiError::NotPe(reason) => MeasureError::NotPe { path, uki: shown, reason },
        UkiError::Missing { section, sections } => MeasureError::MissingSection { path, uki: shown, section, sections },
        UkiError::Refused { image: what, refusal } => PathError::NotSigned { path, image: what, refusal }.into(),
    })
}

/// Replays the boot of the UKI `uki` with what the stub finds on the ESP (`sidecars`) on `platform`, reached
/// through `chain`.
pub fn measure_uki(
    uki: &[u8],
    sidecars: &replay::Sidecars,
    platform: &Platform,
    chain: &Chain<'_>,
) -> Result<Measurements, UkiError> {
    let replay = replay::replay(uki, sidecars, platform, chain)?;
    let mut simulator = replay.simulator.clone();
    simulator.machine_dependent = replay.machine_dependent.clone();
    Ok(Measurements { simulator, warnings: replay.warnings.clone(), replay })
}

impl Measurements {
    /// The summary the Go tool prints (boot stages, LOAD_FILE2, UKI sections, PCRs), in `bank`, plus what only
    /// uplosi knows: the boot path, the initrd's parts, the other PCRs the stub extended, the stub release
    /// modelled.
    pub fn summary(&self, bank: digest::Bank) -> String {
        summary(&self.replay, &self.simulator, bank)
    }

    /// The document verifiers read, in `format`.
    pub fn document(&self, format: document::Format, bank: digest::Bank, phases: &[String]) -> String {
        let source =
            document::Source { simulator: &self.simulator, bank, phases, secure_boot: self.replay.secure_boot };
        document::render(format, &source)
    }
}

fn summary(replay: &Replay, sim: &Simulator, bank: digest::Bank) -> String {
    let mut out = String::from("EFI Boot Stages:\n");
    let width = replay.stages.iter().map(|s| s.0.len()).max().unwrap_or(0);
    for (i, (name, digest)) in replay.stages.iter().enumerate() {
        let _ = writeln!(out, "  Stage {} - {name:<width$}:\t{}", i + 1, hex(digest.get(bank)));
    }
    let _ = writeln!(out, "Linux LOAD_FILE2 protocol:\n  cmdline: {}", pcr::go_quote(replay.cmdline.as_bytes()));
    if let Some(digest) = replay.initrd_digest {
        let _ = writeln!(out, "  initrd (digest {})", hex(digest.get(bank)));
    }
    if replay.initrd.len() > 1 {
        let parts: Vec<String> = replay.initrd.iter().map(|p| format!("{} ({} bytes)", p.name, p.len)).collect();
        let _ = writeln!(out, "  initrd parts: {}", parts.join(", "));
    }
    out.push_str("UKI sections:\n");
    let width = replay.sections.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for (i, s) in replay.sections.iter().enumerate() {
        if pcr::is_measured(s, replay.measured) {
            let mut name = s.name.as_bytes().to_vec();
            name.push(0);
            let _ = writeln!(
                out,
                "  Section {:2} - {:<width$} ({:10} bytes):\t{}, {}",
                i + 1,
                s.name,
                s.size,
                hex(digest::Digests::of(&name).get(bank)),
                hex(s.digest.get(bank))
            );
        } else {
            let _ = writeln!(out, "  Section {:2} - {:<width$}:\tnot measured", i + 1, s.name);
        }
    }
    let extra: Vec<&pcr::Event> = sim.events.iter().filter(|e| e.pcr == 12 || e.pcr == 13).collect();
    if !extra.is_empty() {
        out.push_str("systemd-stub measurements from the ESP:\n");
        for e in extra {
            let _ = writeln!(out, "  PCR[{}] {}", e.pcr, e.description);
        }
    }
    for index in [4, 7, 9, 11, 12, 13, 15] {
        let note =
            if sim.machine_dependent.contains(&index) { " (depends on the machine, see the warnings)" } else { "" };
        let _ = writeln!(out, "PCR[{index:2}]: {}{note}", hex(&sim.value(index, bank)));
    }
    let _ = writeln!(out, "boot path: {} ({} bank)", replay.path, bank);
    let _ = writeln!(out, "Secure Boot: {}", secureboot::describe(replay.secure_boot));
    let _ = writeln!(
        out,
        "systemd-stub: {} (measured as release {})",
        replay.stub_version.as_deref().unwrap_or("unknown"),
        replay.model.release
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uki_path_resolves_mount_points_and_esp_relative_paths() {
        assert_eq!(esp_candidates("/boot/EFI/BOOT/BOOTX64.EFI"), ["EFI/BOOT/BOOTX64.EFI", "boot/EFI/BOOT/BOOTX64.EFI"]);
        assert_eq!(esp_candidates("/efi/EFI/Linux/uki.efi"), ["EFI/Linux/uki.efi", "efi/EFI/Linux/uki.efi"]);
        assert_eq!(esp_candidates("EFI/BOOT/BOOTX64.EFI"), ["EFI/BOOT/BOOTX64.EFI"]);
        assert_eq!(esp_candidates("/EFI/BOOT/BOOTX64.EFI"), ["EFI/BOOT/BOOTX64.EFI"]);
    }

    #[test]
    fn a_pe_without_uki_sections_is_refused_by_name() {
        let pe = pe::tests::tiny_pe(b"code", &[]);
        match measure_uki(&pe, &replay::Sidecars::default(), &Platform::UNKNOWN, &Chain::default()) {
            Err(UkiError::Missing { section, sections }) => {
                assert_eq!(section, ".linux");
                assert_eq!(sections, [".text"]);
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("a plain PE is not a UKI"),
        }
        assert!(matches!(
            measure_uki(b"not a PE at all", &replay::Sidecars::default(), &Platform::UNKNOWN, &Chain::default()),
            Err(UkiError::NotPe(_))
        ));
    }
}
