//! The boot of a UKI replayed on a PCR bank, event by event, as the firmware (EDK2's Tcg2Dxe), the image's own
//! systemd-stub release ([`StubModel`]) and the Linux EFI stub (LOAD_FILE2 initrd protocol) extend PCRs 4, 9,
//! 11, 12 and 13, including what the stub picks up from the ESP (credentials, system and configuration
//! extensions, add-ons) and the cpios it generates.
//!
//! The boot path is the firmware starting the UKI itself or through systemd-boot ([`Chain`]), with Secure Boot
//! off or on with given keys (PCR 7, [`secureboot`](super::secureboot)). Assumed: no shim, no initrd registered
//! before the stub, no SMBIOS `io.systemd.stub.kernel-cmdline-extra`, not a confidential VM that makes the stub
//! drop load options.

use std::collections::BTreeSet;

use super::cpio::{self, Target};
use super::digest::{Digests, MultiHasher};
use super::esp::Esp;
use super::loader::SystemdBootModel;
use super::pcr::{Simulator, hex};
use super::pe::{PeFile, Section};
use super::secureboot::{self, Refusal, SecureBootKeys};
use super::stub::{AddonMeasurement, InitrdLayout, StubModel};

/// What the machine that boots the image offers, where it changes what the stub measures. `None` is unknown:
/// the value is then predicted for a machine without it, and the PCR is marked as depending on the machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Platform {
    /// Whether the firmware offers an RNG (EFI_RNG_PROTOCOL); systemd-stub 261+ then adds a boot secret.
    pub rng: Option<bool>,
    /// The consoles systemd-stub 261+ detects when the command line has no `console=`.
    pub consoles: Option<Consoles>,
}

/// The consoles systemd-stub detects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Consoles {
    /// The COM port (0 = COM1 at 0x3f8) the firmware's console output goes to, if it is a 16550 UART.
    pub serial: Option<u32>,
    /// A VirtIO console PCI device.
    pub virtio: bool,
    /// A graphics output (GOP).
    pub graphics: bool,
}

impl Platform {
    /// A machine nothing is known about (`uplosi measurements`).
    pub const UNKNOWN: Platform = Platform { rng: None, consoles: None };
}

/// A file the stub picks up from the ESP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarFile {
    /// Its name.
    pub name: String,
    /// Its contents.
    pub data: Vec<u8>,
}

/// What the stub finds on the ESP besides the UKI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sidecars {
    /// `<UKI>.extra.d/`: credentials, sysexts, confexts and add-ons of this UKI.
    pub extra_d: Vec<SidecarFile>,
    /// `/loader/credentials/`.
    pub loader_credentials: Vec<SidecarFile>,
    /// `/loader/addons/`.
    pub loader_addons: Vec<SidecarFile>,
    /// `/loader/extensions/`.
    pub loader_extensions: Vec<SidecarFile>,
    /// Whether `/loader/random-seed` exists with the read-only attribute.
    pub random_seed_read_only: bool,
    /// Whether `/loader/boot-secret-mixin` keeps the boot secret off: empty and read-only, or shorter than the
    /// 32 bytes the stub needs (it then neither fills nor uses it).
    pub boot_secret_blocked: bool,
}

/// The suffixes the stub reads, so other files (a second UKI, a README) are not read at all.
const SIDECAR_SUFFIXES: [&str; 3] = [".cred", ".raw", ".addon.efi"];

fn ends_with_no_case(name: &str, suffix: &str) -> bool {
    name.len() >= suffix.len() && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// The files of ESP directory `dir` the stub would consider: regular, not starting with `.`, ASCII, at most 255
/// characters (`pack_cpio()`, `load_addons_from_dir()`), and with a suffix it reads.
fn sidecar_files(esp: &Esp, dir: &str) -> std::io::Result<Vec<SidecarFile>> {
    let mut out = Vec::new();
    for file in esp.files(dir)?.unwrap_or_default() {
        let name = file.name;
        if name.starts_with('.') || !name.is_ascii() || name.len() > 255 {
            continue;
        }
        if !SIDECAR_SUFFIXES.iter().any(|s| ends_with_no_case(&name, s)) {
            continue;
        }
        let data = esp.read(&format!("{dir}/{name}"))?.unwrap_or_default();
        out.push(SidecarFile { name, data });
    }
    Ok(out)
}

/// Reads what the stub would find next to the UKI at `uki` (ESP-relative, `/`-separated).
pub fn read_sidecars(esp: &Esp, uki: &str) -> std::io::Result<Sidecars> {
    let mixin = esp.file("loader/boot-secret-mixin")?;
    Ok(Sidecars {
        extra_d: sidecar_files(esp, &format!("{uki}.extra.d"))?,
        loader_credentials: sidecar_files(esp, "loader/credentials")?,
        loader_addons: sidecar_files(esp, "loader/addons")?,
        loader_extensions: sidecar_files(esp, "loader/extensions")?,
        random_seed_read_only: esp.file("loader/random-seed")?.is_some_and(|f| f.read_only),
        boot_secret_blocked: mixin.is_some_and(|m| (m.size == 0 && m.read_only) || (1..32).contains(&m.size)),
    })
}

/// What runs before the UKI and how the firmware checks what it loads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Chain<'a> {
    /// systemd-boot in front of the UKI, if the firmware starts it first.
    pub loader: Option<Loader<'a>>,
    /// The Secure Boot variables, if Secure Boot is on.
    pub keys: Option<&'a SecureBootKeys>,
}

/// systemd-boot as it sits on the boot path.
#[derive(Clone, Copy, Debug)]
pub struct Loader<'a> {
    /// Its PE image.
    pub image: &'a [u8],
    /// Its version text, for descriptions.
    pub version: &'a str,
    /// What its release measures.
    pub model: SystemdBootModel,
}

/// Why a UKI cannot be replayed.
#[derive(Debug)]
pub enum UkiError {
    /// Not a PE image.
    NotPe(String),
    /// With Secure Boot on, the firmware would refuse to start an image on the path.
    Refused {
        /// Which image (`systemd-boot`, `the UKI`).
        image: String,
        /// Why.
        refusal: Refusal,
    },
    /// A required section is missing.
    Missing {
        /// Which.
        section: &'static str,
        /// The sections present.
        sections: Vec<String>,
    },
}

/// One part of the initrd the stub hands to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitrdPart {
    /// What it is (`.initrd`, `/.extra/os-release cpio`, …).
    pub name: String,
    /// Its length before padding.
    pub len: usize,
}

/// The replayed boot.
pub struct Replay {
    /// The PCR bank and every event.
    pub simulator: Simulator,
    /// The stub's version text from `.sdmagic`, if any.
    pub stub_version: Option<String>,
    /// The release whose behaviour was replayed.
    pub model: StubModel,
    /// The UKI's PE machine type.
    pub machine: Option<u16>,
    /// The boot path, in words (`firmware → systemd-boot 257.13 → UKI`).
    pub path: String,
    /// Whether Secure Boot was on.
    pub secure_boot: bool,
    /// PE images loaded through the firmware (measured into PCR 4), with their Authenticode hashes.
    pub stages: Vec<(String, Digests)>,
    /// The command line the kernel gets.
    pub cmdline: String,
    /// The parts of the initrd, in order.
    pub initrd: Vec<InitrdPart>,
    /// The hashes of the initrd the kernel measures.
    pub initrd_digest: Option<Digests>,
    /// The UKI's sections, for the summary (measured ones in the stub's order first).
    pub sections: Vec<Section>,
    /// The PCR 11 section list of the model.
    pub measured: &'static [&'static str],
    /// PCRs whose predicted value depends on the machine (see the warnings).
    pub machine_dependent: BTreeSet<u32>,
    /// Things the user should know about the prediction.
    pub warnings: Vec<String>,
}

/// The sections of a PE image the stub works with, found as that release finds them.
struct Found<'a> {
    pe: &'a PeFile<'a>,
    /// Index into the section table, per name in the model's list.
    index: Vec<(&'static str, usize)>,
}

impl<'a> Found<'a> {
    /// Looks up `names` in `pe`: up to 255 the last section whose name starts with the wanted name wins (a
    /// prefix `memcmp`); from 256 the first exact match; from 257 only the base sections (before the first
    /// `.profile`) and then those of profile 0, which override them.
    fn locate(pe: &'a PeFile<'a>, model: &StubModel, names: &[&'static str]) -> Self {
        let mut index: Vec<(&'static str, usize)> = Vec::new();
        let count = pe.section_count();
        let matches = |i: usize, name: &str| -> bool {
            let raw = pe.raw_name(i);
            if model.release <= 255 { raw.starts_with(name.as_bytes()) } else { pe.name_at(i) == name }
        };
        let assign = |range: std::ops::Range<usize>, index: &mut Vec<(&'static str, usize)>| {
            for name in names {
                let hit = if model.release <= 255 {
                    range.clone().rfind(|&i| matches(i, name))
                } else {
                    range.clone().find(|&i| matches(i, name))
                };
                if let Some(i) = hit.filter(|&i| !pe.loaded_at(i).is_empty()) {
                    index.retain(|(n, _)| n != name);
                    index.push((name, i));
                }
            }
        };
        if model.profiles() {
            let profiles: Vec<usize> = (0..count).filter(|&i| pe.name_at(i) == ".profile").collect();
            let base_end = profiles.first().copied().unwrap_or(count);
            assign(0..base_end, &mut index);
            if let Some(&start) = profiles.first() {
                let end = profiles.get(1).copied().unwrap_or(count);
                assign(start..end, &mut index);
            }
        } else {
            assign(0..count, &mut index);
        }
        Self { pe, index }
    }

    fn get(&self, name: &str) -> Option<std::borrow::Cow<'a, [u8]>> {
        self.index.iter().find(|(n, _)| *n == name).map(|&(_, i)| self.pe.loaded_at(i))
    }

    /// The section table index `name` was found at.
    fn position(&self, name: &str) -> Option<usize> {
        self.index.iter().find(|(n, _)| *n == name).map(|&(_, i)| i)
    }

    fn has(&self, name: &str) -> bool {
        self.index.iter().any(|(n, _)| *n == name)
    }
}

/// The names every stub looks up (measured or not): the PCR 11 list plus `.pcrsig`.
fn lookup_names(model: &StubModel) -> Vec<&'static str> {
    let mut names = model.pcr11_sections().to_vec();
    names.push(".pcrsig");
    names
}

/// `xstrn8_to_16()` then `mangle_stub_cmdline()`: up to the first NUL, control characters become spaces,
/// trailing spaces go.
fn stub_cmdline(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    mangle(&String::from_utf8_lossy(&bytes[..end]))
}

fn mangle(text: &str) -> String {
    let replaced: String = text.chars().map(|c| if (c as u32) <= 0x1f { ' ' } else { c }).collect();
    replaced.trim_end_matches(' ').to_string()
}

/// UTF-16LE with the terminating NUL, as the stub passes and measures command lines.
fn utf16z(text: &str) -> Vec<u8> {
    text.encode_utf16().chain(std::iter::once(0)).flat_map(u16::to_le_bytes).collect()
}

fn pad4(len: usize) -> usize {
    len.div_ceil(4) * 4
}

/// One add-on the stub loads.
struct Addon {
    /// Where it is, for descriptions (`loader/addons/x.addon.efi`).
    label: String,
    authenticode: Digests,
    /// The db entry that verified it (Secure Boot on).
    authority: Option<super::esl::SignatureData>,
    cmdline: Option<String>,
    initrd: Option<Vec<u8>>,
    ucode: Option<Vec<u8>>,
}

/// The `*.addon.efi` files of one directory in the stub's order, each as far as the stub uses it. Files that are
/// not PE images fail LoadImage() and are neither measured nor used.
fn load_addons(
    files: &[SidecarFile],
    dir: &str,
    model: &StubModel,
    uname: Option<&[u8]>,
    keys: Option<&SecureBootKeys>,
    warnings: &mut Vec<String>,
) -> Vec<Addon> {
    let mut files: Vec<&SidecarFile> = files.iter().filter(|f| ends_with_no_case(&f.name, ".addon.efi")).collect();
    files.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let names = lookup_names(model);
    let mut out = Vec::new();
    for file in files {
        let label = format!("{dir}/{}", file.name);
        let Ok(pe) = PeFile::parse(&file.data) else {
            warnings.push(format!("{label} is not a PE image: the firmware refuses to load it, so it is ignored"));
            continue;
        };
        // With Secure Boot on, LoadImage() refuses an add-on db does not verify: it is neither measured nor used.
        let authority = match keys.map(|k| secureboot::verify(&pe, k)) {
            Some(Err(refusal)) => {
                warnings.push(format!("{label} would not load with Secure Boot on ({refusal}), so it is ignored"));
                continue;
            }
            Some(Ok(entry)) => Some(entry),
            None => None,
        };
        let found = Found::locate(&pe, model, &names);
        let mut addon =
            Addon { label, authenticode: pe.authenticode(), authority, cmdline: None, initrd: None, ucode: None };
        // An add-on must not be a UKI, and a .uname, where both have one, must match the UKI's.
        let is_uki = found.has(".linux");
        let uname_mismatch = match (uname, found.get(".uname")) {
            (Some(ours), Some(theirs)) => !ours.starts_with(&theirs) || ours.len() != theirs.len(),
            _ => false,
        };
        if !is_uki && !uname_mismatch {
            addon.cmdline = found.get(".cmdline").map(|c| stub_cmdline(&c));
            if model.addon_initrds() {
                addon.initrd = found.get(".initrd").map(|b| b.into_owned());
                addon.ucode = found.get(".ucode").map(|b| b.into_owned());
            }
        }
        out.push(addon);
    }
    out
}

/// Files of `files` with `suffix` (case-insensitive), without those with `exclude`.
fn with_suffix(files: &[SidecarFile], suffix: &str, exclude: Option<&str>) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .filter(|f| ends_with_no_case(&f.name, suffix) && !exclude.is_some_and(|e| ends_with_no_case(&f.name, e)))
        .map(|f| (f.name.clone(), f.data.clone()))
        .collect()
}

/// A cpio the stub generates from ESP files, measured into a PCR.
struct Sidecar {
    description: &'static str,
    target: Target,
    pcr: u32,
    archive: Vec<u8>,
}

/// Replays the boot of `uki` with `sidecars` on `platform`, reached through `chain`.
pub fn replay(uki: &[u8], sidecars: &Sidecars, platform: &Platform, chain: &Chain<'_>) -> Result<Replay, UkiError> {
    let file = PeFile::parse(uki).map_err(|e| UkiError::NotPe(e.0))?;
    let stub_version = file.section_data(".sdmagic").and_then(|magic| super::stub::version_text(&magic));
    let release = file.section_data(".sdmagic").and_then(|magic| super::stub::release_of(&magic));
    let model = StubModel::for_release(release);
    let mut warnings = Vec::new();
    match release {
        Some(r) if r > super::stub::NEWEST => warnings.push(format!(
            "systemd-stub {} is newer than the newest release uplosi models ({}); measured as {}",
            stub_version.as_deref().unwrap_or("?"),
            super::stub::NEWEST,
            super::stub::NEWEST
        )),
        Some(r) if r < super::stub::OLDEST => warnings.push(format!(
            "systemd-stub {} is older than {}, the first that measures into PCR 11; measured as {}",
            stub_version.as_deref().unwrap_or("?"),
            super::stub::OLDEST,
            super::stub::OLDEST
        )),
        None => warnings.push(format!(
            "the UKI has no systemd-stub version in .sdmagic; measured as systemd-stub {}",
            super::stub::NEWEST
        )),
        _ => {}
    }

    let measured = model.pcr11_sections();
    let found = Found::locate(&file, &model, &lookup_names(&model));
    let require = |name: &'static str| {
        if found.has(name) { Ok(()) } else { Err(UkiError::Missing { section: name, sections: file.section_names() }) }
    };
    require(".linux")?;
    require(".cmdline")?;
    require(".initrd")?;
    let linux = found.get(".linux").unwrap_or_default();
    let kernel = PeFile::parse(&linux).map_err(|e| UkiError::NotPe(format!("its .linux section: {}", e.0)))?;
    if found.has(".dtbauto") {
        warnings.push(
            "the UKI has .dtbauto sections; on x86 machines without a firmware devicetree and matching .hwids the \
             stub selects none, and so does this prediction"
                .to_string(),
        );
    }

    let mut sim = Simulator::default();
    let mut machine_dependent = BTreeSet::new();

    // PCR 7: the Secure Boot policy, then (Secure Boot on) the db entry that verified each image as the firmware
    // loads it: systemd-boot, the UKI, its add-ons. The kernel is not verified: the stub (252+) starts it past the
    // firmware's checks, so it is not measured into PCR 4 either.
    // PCR 7's events go last in the log (it is ordered by PCR as the Go tool's was, 4, 9, 11, 12, 13 first).
    let mut policy = Simulator::default();
    secureboot::measure_policy(&mut policy, chain.keys);
    let mut authorities = Vec::new();
    let loader_pe = match chain.loader {
        Some(loader) => {
            Some(PeFile::parse(loader.image).map_err(|e| UkiError::NotPe(format!("systemd-boot: {}", e.0)))?)
        }
        None => None,
    };
    if let Some(keys) = chain.keys {
        if let (Some(pe), Some(loader)) = (&loader_pe, chain.loader) {
            let entry = secureboot::verify(pe, keys)
                .map_err(|refusal| UkiError::Refused { image: format!("systemd-boot {}", loader.version), refusal })?;
            secureboot::measure_authority(&mut policy, &entry, &mut authorities);
        }
        let entry = secureboot::verify(&file, keys)
            .map_err(|refusal| UkiError::Refused { image: "the UKI".to_string(), refusal })?;
        secureboot::measure_authority(&mut policy, &entry, &mut authorities);
    }

    // PCR 11: the stub measures its sections first of all, name then content.
    // Each section is hashed once: the summary's table reuses these digests (section table index to digests).
    let mut measured_sections = Vec::new();
    let mut digests: std::collections::BTreeMap<usize, Digests> = std::collections::BTreeMap::new();
    for name in measured {
        if let (Some(data), Some(index)) = (found.get(name), found.position(name)) {
            let digest = Digests::of(&data);
            digests.insert(index, digest);
            measured_sections.push(Section { name: name.to_string(), size: data.len() as u32, digest });
        }
    }

    // PE add-ons (254+): global ones, then the UKI's own; the firmware measures each into PCR 4 as it loads it.
    let uname = found.get(".uname").map(|u| u.into_owned());
    let (global_addons, local_addons) = if model.addon_measurement() == AddonMeasurement::None {
        (Vec::new(), Vec::new())
    } else {
        (
            load_addons(&sidecars.loader_addons, "loader/addons", &model, uname.as_deref(), chain.keys, &mut warnings),
            load_addons(&sidecars.extra_d, "<UKI>.extra.d", &model, uname.as_deref(), chain.keys, &mut warnings),
        )
    };

    for addon in global_addons.iter().chain(&local_addons) {
        if let Some(entry) = &addon.authority {
            secureboot::measure_authority(&mut policy, entry, &mut authorities);
        }
    }

    // PCR 4: the firmware's boot-option action and separator, systemd-boot, the UKI, the add-ons, and the kernel
    // where the stub starts it through the firmware's LoadImage() (up to 257, and only with Secure Boot off).
    let mut stages = Vec::new();
    if let (Some(pe), Some(loader)) = (&loader_pe, chain.loader) {
        stages.push((format!("systemd-boot {}", loader.version), pe.authenticode()));
    }
    stages.push(("Unified Kernel Image (UKI)".to_string(), file.authenticode()));
    for addon in global_addons.iter().chain(&local_addons) {
        stages.push((format!("PE add-on {}", addon.label), addon.authenticode));
    }
    if model.kernel_through_load_image() && chain.keys.is_none() {
        stages.push(("Linux".to_string(), kernel.authenticode()));
    }
    // Events of PCRs 12 and 13 follow those of 4, 9 and 11 in the log, as the Go tool orders its log by PCR.
    let mut later = Simulator::default();

    // The command line: the UKI's (or what systemd-boot up to 254 passes, the same mangled text, which the stub
    // takes with Secure Boot off), then the add-ons' (measured into PCR 12), then detected consoles (261+).
    let uki_cmdline = found.get(".cmdline").filter(|c| !c.is_empty());
    let mut cmdline = stub_cmdline(&found.get(".cmdline").unwrap_or_default());
    if let (Some(loader), Some(raw)) = (chain.loader, &uki_cmdline)
        && loader.model.passes_uki_cmdline()
    {
        let options = stub_cmdline(raw);
        let quoted = super::pcr::go_quote(options.as_bytes());
        // systemd-boot measures what it passes; the stub measures it again when it takes it (Secure Boot off, or
        // no .cmdline; and the first character must be printable).
        later.extend_data(12, utf16z(&options), format!("EV_IPL: systemd-boot load options {quoted}"));
        if chain.keys.is_none() && options.chars().next().is_some_and(|c| c as u32 > 0x1f) {
            later.extend_data(12, utf16z(&options), format!("EV_IPL: systemd-stub load options {quoted}"));
            cmdline = options;
        }
    }
    let join = |base: &str, extra: &str| if base.is_empty() { extra.to_string() } else { format!("{base} {extra}") };
    // 254 measures each directory's add-on command lines on their own, 255+ all of them together.
    let groups: Vec<Vec<&Addon>> = match model.addon_measurement() {
        AddonMeasurement::None => Vec::new(),
        AddonMeasurement::PerDirectory => vec![global_addons.iter().collect(), local_addons.iter().collect()],
        AddonMeasurement::Joined => vec![global_addons.iter().chain(&local_addons).collect()],
    };
    for group in groups {
        let joined = group.iter().filter_map(|a| a.cmdline.as_deref()).fold(String::new(), |acc, c| join(&acc, c));
        let joined = mangle(&joined);
        if !joined.is_empty() {
            let description =
                format!("EV_IPL: kernel command line add-ons {}", super::pcr::go_quote(joined.as_bytes()));
            later.extend_data(12, utf16z(&joined), description);
            cmdline = join(&cmdline, &joined);
        }
    }
    if model.console_autodetect() && !has_console(&cmdline) {
        match platform.consoles {
            Some(consoles) => {
                for arg in console_args(&model, &consoles) {
                    cmdline = join(&cmdline, arg);
                }
            }
            None => {
                machine_dependent.insert(9);
                warnings.push(format!(
                    "systemd-stub {} appends console= for the machine's serial, VirtIO and graphical consoles to a \
                     command line without one, and the kernel measures that command line into PCR 9: the PCR 9 \
                     value assumes none is found; put console= into the UKI's .cmdline to make it exact",
                    model.release
                ));
            }
        }
    }

    // The cpios from the ESP (credentials and confexts into PCR 12, sysexts into PCR 13).
    let confext_suffix = ".confext.raw";
    let mut generated: Vec<Sidecar> = Vec::new();
    let mut add = |description: &'static str, target: Target, pcr: u32, files: Vec<(String, Vec<u8>)>| {
        if let Some(archive) = cpio::directory(&target, &files) {
            generated.push(Sidecar { description, target, pcr, archive });
        }
    };
    add("Credentials initrd", cpio::CREDENTIALS, 12, with_suffix(&sidecars.extra_d, ".cred", None));
    add(
        "Global credentials initrd",
        cpio::GLOBAL_CREDENTIALS,
        12,
        with_suffix(&sidecars.loader_credentials, ".cred", None),
    );
    let sysext_exclude = model.confexts().then_some(confext_suffix);
    add("System extension initrd", cpio::SYSEXT, 13, with_suffix(&sidecars.extra_d, ".raw", sysext_exclude));
    if model.global_extensions() {
        add(
            "Global system extension initrd",
            cpio::GLOBAL_SYSEXT,
            13,
            with_suffix(&sidecars.loader_extensions, ".raw", Some(confext_suffix)),
        );
    }
    if model.confexts() {
        add("Configuration extension initrd", cpio::CONFEXT, 12, with_suffix(&sidecars.extra_d, confext_suffix, None));
    }
    if model.global_extensions() {
        add(
            "Global configuration extension initrd",
            cpio::GLOBAL_CONFEXT,
            12,
            with_suffix(&sidecars.loader_extensions, confext_suffix, None),
        );
    }
    for sidecar in &generated {
        let digest = Digests::of(&sidecar.archive);
        later.extend(
            sidecar.pcr,
            digest,
            None,
            format!("EV_IPL: {} (digest {})", sidecar.description, hex(&digest.sha256)),
        );
    }
    if model.confext_before_sysext() {
        // 256 stores them in each other's slot, so the initrd has confexts first.
        let sysext = generated.iter().position(|s| s.target == cpio::SYSEXT);
        let confext = generated.iter().position(|s| s.target == cpio::CONFEXT);
        if let (Some(a), Some(b)) = (sysext, confext) {
            generated.swap(a, b);
        }
    }

    // Add-on initrds and microcode (257+), measured into PCR 12: microcode in reverse order, as the stub does.
    let addons: Vec<&Addon> = global_addons.iter().chain(&local_addons).collect();
    let ucode_addons: Vec<&Addon> = addons.iter().rev().copied().filter(|a| a.ucode.is_some()).collect();
    for addon in &ucode_addons {
        let data = addon.ucode.as_deref().unwrap_or_default();
        later.extend(12, Digests::of(data), None, format!("EV_EVENT_TAG: microcode add-on {}", addon.label));
    }
    let initrd_addons: Vec<&Addon> = addons.iter().copied().filter(|a| a.initrd.is_some()).collect();
    for addon in &initrd_addons {
        let data = addon.initrd.as_deref().unwrap_or_default();
        later.extend(12, Digests::of(data), None, format!("EV_EVENT_TAG: initrd add-on {}", addon.label));
    }

    // The boot secret (261+): per machine, unpredictable, unless the ESP keeps it off.
    let secret_possible = model.boot_secret()
        && !sidecars.boot_secret_blocked
        && !(model.respects_read_only_seed() && sidecars.random_seed_read_only);
    let boot_secret = secret_possible && platform.rng == Some(true);
    if secret_possible && platform.rng.is_none() {
        machine_dependent.insert(9);
        warnings.push(format!(
            "systemd-stub {} adds a per-machine boot secret to the initrd when the firmware offers an RNG (most \
             cloud firmware does), and the kernel measures the initrd into PCR 9: the PCR 9 value holds only where \
             there is none; an empty, read-only loader/boot-secret-mixin on the ESP keeps the secret off{}",
            model.release,
            if model.respects_read_only_seed() { " (so does a read-only loader/random-seed)" } else { "" }
        ));
    }

    // The initrd the kernel gets, in the stub's order.
    let mut parts: Vec<(String, std::borrow::Cow<'_, [u8]>)> = Vec::new();
    let meta = |section: &str, name: &str| -> Option<(String, std::borrow::Cow<'_, [u8]>)> {
        let data = found.get(section)?;
        Some((format!("/.extra/{name} cpio"), std::borrow::Cow::Owned(cpio::literal(&cpio::META, name, &data))))
    };
    for addon in &ucode_addons {
        parts.push((
            format!("microcode of {}", addon.label),
            std::borrow::Cow::Borrowed(addon.ucode.as_deref().unwrap_or_default()),
        ));
    }
    // Only 256+ know .ucode, so only they find it.
    if let Some(ucode) = found.get(".ucode") {
        parts.push((".ucode".to_string(), ucode));
    }
    if let Some(initrd) = found.get(".initrd") {
        parts.push((".initrd".to_string(), initrd));
    }
    for sidecar in &generated {
        parts.push((format!("/{} cpio", sidecar.target.directory), std::borrow::Cow::Borrowed(&sidecar.archive[..])));
    }
    parts.extend(meta(".pcrsig", "tpm2-pcr-signature.json"));
    parts.extend(meta(".pcrpkey", "tpm2-pcr-public-key.pem"));
    if model.osrel_cpio() {
        parts.extend(meta(".osrel", "os-release"));
        parts.extend(meta(".profile", "profile"));
    }
    if boot_secret {
        machine_dependent.insert(9);
        warnings
            .push("the boot secret systemd-stub adds to the initrd is per machine: PCR 9 cannot be predicted".into());
    }
    for addon in &initrd_addons {
        parts.push((
            format!("initrd of {}", addon.label),
            std::borrow::Cow::Borrowed(addon.initrd.as_deref().unwrap_or_default()),
        ));
    }

    let mut hash = MultiHasher::new();
    let mut total = 0usize;
    let single = parts.len() == 1;
    let only_initrd = parts.iter().all(|(n, _)| n == ".initrd");
    for (name, data) in &parts {
        hash.update(data);
        total += data.len();
        let pad = match model.initrd_layout() {
            InitrdLayout::PadEach => !single,
            // Only .initrd can be unaligned; it is padded when something follows it.
            InitrdLayout::InitrdThenExtras => name == ".initrd" && !only_initrd,
        };
        if pad {
            let padding = pad4(data.len()) - data.len();
            hash.update(&[0u8; 3][..padding]);
            total += padding;
        }
    }
    let initrd_digest: Option<Digests> = (total > 0).then(|| hash.finish());

    let stage_refs: Vec<(&str, Digests)> = stages.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    sim.boot_stages(&stage_refs);
    // PCR 9: the Linux EFI stub measures the command line it got and the initrd it loaded.
    sim.linux_load2(&cmdline, initrd_digest);
    sim.uki_sections_measured(&measured_sections);
    for event in later.events.into_iter().chain(policy.events) {
        sim.extend(event.pcr, event.digest, event.data, event.description);
    }

    let sections = super::pcr::order_sections(file.sections_with(|index| digests.get(&index).copied()), measured);
    Ok(Replay {
        simulator: sim,
        stub_version,
        model,
        machine: Some(file.machine()),
        path: match chain.loader {
            Some(loader) => format!("firmware → systemd-boot {} → UKI", loader.version),
            None => "firmware → UKI".to_string(),
        },
        secure_boot: chain.keys.is_some(),
        stages,
        cmdline,
        initrd: parts.iter().map(|(name, data)| InitrdPart { name: name.clone(), len: data.len() }).collect(),
        initrd_digest,
        sections,
        measured,
        machine_dependent,
        warnings,
    })
}

/// Whether the command line already names a console (`console=*` or `* console=*`).
fn has_console(cmdline: &str) -> bool {
    cmdline.starts_with("console=") || cmdline.contains(" console=")
}

/// The `console=` arguments the stub appends for `consoles`: 262 adds every detected one (serial, then VirtIO,
/// then `tty0` when graphics is there too); 261 only the best one.
fn console_args(model: &StubModel, consoles: &Consoles) -> Vec<&'static str> {
    const SERIAL: [&str; 4] =
        ["console=uart,io,0x3f8", "console=uart,io,0x2f8", "console=uart,io,0x3e8", "console=uart,io,0x2e8"];
    let mut args = Vec::new();
    if let Some(port) = consoles.serial.and_then(|p| SERIAL.get(p as usize)) {
        args.push(*port);
    }
    if consoles.virtio {
        args.push("console=hvc0");
    }
    if model.release <= 261 {
        // One console only; graphics needs none (the kernel's default).
        if consoles.graphics {
            return Vec::new();
        }
        return args.into_iter().next_back().into_iter().collect();
    }
    if !args.is_empty() && consoles.graphics {
        args.push("console=tty0");
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_mangles_command_lines() {
        assert_eq!(stub_cmdline(b"console=ttyS0 quiet\n"), "console=ttyS0 quiet");
        assert_eq!(stub_cmdline(b"a\tb\0ignored"), "a b");
        assert_eq!(stub_cmdline(b"  x  \r\n"), "  x");
        assert_eq!(utf16z("ab"), [b'a', 0, b'b', 0, 0, 0]);
    }

    #[test]
    fn consoles_follow_262_and_261() {
        let m262 = StubModel::for_release(Some(262));
        let m261 = StubModel::for_release(Some(261));
        let serial = Consoles { serial: Some(0), virtio: false, graphics: false };
        assert_eq!(console_args(&m262, &serial), ["console=uart,io,0x3f8"]);
        let all = Consoles { serial: Some(1), virtio: true, graphics: true };
        assert_eq!(console_args(&m262, &all), ["console=uart,io,0x2f8", "console=hvc0", "console=tty0"]);
        assert!(console_args(&m262, &Consoles { serial: None, virtio: false, graphics: true }).is_empty());
        assert_eq!(console_args(&m261, &serial), ["console=uart,io,0x3f8"]);
        assert!(has_console("console=ttyS0 quiet") && has_console("quiet console=tty0") && !has_console("xconsole=1"));
    }
}
