//! `uplosi measurements`: the TPM PCR values a UKI-booting image produces, read straight from the image file.
//!
//! The ESP is found through the GPT ([`esp`]), the UKI and what systemd-stub picks up next to it are read from its
//! FAT file system, the UKI's PE sections are parsed ([`pe`]), and the boot is replayed on a PCR bank
//! ([`replay`], [`pcr`]) as the UKI's own systemd-stub release does it ([`stub`], [`cpio`]): PCR 4 (the firmware
//! loading the UKI, its add-ons and, up to stub 257, the kernel), PCR 9 (the kernel command line and initrd
//! through LOAD_FILE2), PCR 11 (the stub measuring the UKI's sections), PCR 12 and 13 (credentials, extensions
//! and add-ons from the ESP). The output is the Go uplosi's JSON document; no mount, no root, no temporary file.

pub mod cpio;
pub mod esp;
pub mod pcr;
pub mod pe;
pub mod replay;
pub mod stub;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::image::{ImageError, SourceImage};
use pcr::{Simulator, hex};
pub use replay::{Consoles, Platform, Replay, UkiError};

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

/// The result: the PCR bank with its event log, the human summary the Go tool prints, and warnings.
pub struct Measurements {
    /// The simulated PCRs and events.
    pub simulator: Simulator,
    /// The summary for stderr.
    pub summary: String,
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

/// Measures the UKI at `uki_path` in the image at `image_path` (raw or qcow2) for a machine nothing is known about.
pub fn measure(image_path: &Path, uki_path: &str) -> Result<Measurements, MeasureError> {
    measure_image(&SourceImage::open(image_path)?, uki_path, &Platform::UNKNOWN)
}

/// Measures the UKI at `uki_path` in the already opened `image`, booted on `platform`.
pub fn measure_image(image: &SourceImage, uki_path: &str, platform: &Platform) -> Result<Measurements, MeasureError> {
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
    let mut found = None;
    for candidate in esp_candidates(uki_path) {
        if let Some(bytes) = esp.read(&candidate).map_err(fat_err)? {
            found = Some((candidate, bytes));
            break;
        }
    }
    let Some((location, uki)) = found else {
        return Err(MeasureError::UkiNotFound { path, uki: uki_path.to_string(), listing: esp.efi_boot_listing() });
    };
    let sidecars = replay::read_sidecars(&esp, &location).map_err(fat_err)?;
    measure_uki(&uki, &sidecars, platform).map_err(|e| match e {
        UkiError::NotPe(reason) => MeasureError::NotPe { path, uki: uki_path.into(), reason },
        UkiError::Missing { section, sections } => {
            MeasureError::MissingSection { path, uki: uki_path.into(), section, sections }
        }
    })
}

/// Replays the boot of the UKI `uki` with what the stub finds on the ESP (`sidecars`) on `platform`.
pub fn measure_uki(uki: &[u8], sidecars: &replay::Sidecars, platform: &Platform) -> Result<Measurements, UkiError> {
    let replay = replay::replay(uki, sidecars, platform)?;
    let mut simulator = replay.simulator.clone();
    simulator.machine_dependent = replay.machine_dependent.clone();
    let summary = summary(&replay, &simulator);
    Ok(Measurements { simulator, summary, warnings: replay.warnings.clone(), replay })
}

/// The summary the Go tool prints (boot stages, LOAD_FILE2, UKI sections, PCRs), plus what only uplosi knows: the
/// initrd's parts, the other PCRs the stub extended, and the stub release modelled.
fn summary(replay: &Replay, sim: &Simulator) -> String {
    let mut out = String::from("EFI Boot Stages:\n");
    let width = replay.stages.iter().map(|s| s.0.len()).max().unwrap_or(0);
    for (i, (name, digest)) in replay.stages.iter().enumerate() {
        let _ = writeln!(out, "  Stage {} - {name:<width$}:\t{}", i + 1, hex(digest));
    }
    let _ = writeln!(out, "Linux LOAD_FILE2 protocol:\n  cmdline: {}", pcr::go_quote(replay.cmdline.as_bytes()));
    if let Some(digest) = replay.initrd_digest {
        let _ = writeln!(out, "  initrd (digest {})", hex(&digest));
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
                hex(&Sha256::digest(&name)),
                hex(&s.digest)
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
    for index in [4, 9, 11, 12, 13, 15] {
        let note =
            if sim.machine_dependent.contains(&index) { " (depends on the machine, see the warnings)" } else { "" };
        let _ = writeln!(out, "PCR[{index:2}]: {}{note}", hex(&sim.bank[&index]));
    }
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
        match measure_uki(&pe, &replay::Sidecars::default(), &Platform::UNKNOWN) {
            Err(UkiError::Missing { section, sections }) => {
                assert_eq!(section, ".linux");
                assert_eq!(sections, [".text"]);
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("a plain PE is not a UKI"),
        }
        assert!(matches!(
            measure_uki(b"not a PE at all", &replay::Sidecars::default(), &Platform::UNKNOWN),
            Err(UkiError::NotPe(_))
        ));
    }
}
