//! What each systemd-stub release does when it boots a UKI, as its own sources say (`src/boot/efi/stub.c`,
//! `linux.c`, `cpio.c`, `pe.c` and `src/fundamental/*`, from 257 on `src/boot/*.c`, at each release tag).
//!
//! Read from: the Debian source packages of 252.39, 254.26, 257.13 and 262; the upstream sources of the 256 cycle
//! and systemd's NEWS for the releases in between. Booted (OVMF + swtpm) to confirm: 252, 254, 257 and 262.
//!
//! | from | change that moves a PCR |
//! |---|---|
//! | 252 | PCR 11: `.linux .osrel .cmdline .initrd .splash .dtb .pcrpkey`; PCR 12: ESP credentials as cpio; PCR 13: sysexts as cpio; the generated cpios (and `.pcrsig`/`.pcrpkey` as `/.extra/…`) are appended to the initrd after padding it to 4 bytes |
//! | 254 | PCR 11 adds `.uname` and `.sbat`; `.cmdline` add-ons (`*.addon.efi`, loaded with LoadImage, so PCR 4 gets their Authenticode hash) are appended to the command line, measured into PCR 12 per directory |
//! | 255 | all add-on command lines are measured into PCR 12 together, once |
//! | 256 | PCR 11 adds `.ucode`; `.ucode` goes first in the initrd; confexts (`*.confext.raw`, PCR 12); every initrd part is padded to 4 bytes |
//! | 257 | PCR 11 adds `.profile .dtbauto .hwids`; multi-profile UKIs (profile 0 boots); `.osrel` and `.profile` are passed as `/.extra/os-release` and `/.extra/profile` cpios; `.initrd`/`.ucode` add-ons |
//! | 258 | PCR 11 adds `.efifw`; the kernel is started without the firmware's LoadImage(), so PCR 4 no longer gets `.linux`; global sysexts/confexts from `/loader/extensions` |
//! | 261 | a per-machine boot secret cpio (where the firmware offers an RNG); `console=` is appended to a command line that has none |

/// The newest release whose sources the model follows; newer stubs are measured as this one, with a warning.
pub const NEWEST: u32 = 262;
/// The oldest release modelled (the first that measures into PCR 11).
pub const OLDEST: u32 = 252;

/// The behaviour of one systemd-stub release, as far as it decides PCR 4, 9, 11, 12 and 13.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StubModel {
    /// The release modelled (the stub's own, clamped to [`OLDEST`]..=[`NEWEST`]).
    pub release: u32,
}

/// How the stub joins the initrd parts it hands to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitrdLayout {
    /// 252–255: `.initrd` padded to 4 bytes, then the generated cpios (already 4-byte multiples); `.initrd` alone
    /// when nothing was generated.
    InitrdThenExtras,
    /// 256 on: every part padded to 4 bytes; a single part is passed as it is.
    PadEach,
}

/// How `.cmdline` add-ons are measured into PCR 12.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddonMeasurement {
    /// 252–253: no add-ons.
    None,
    /// 254: one measurement per directory (global, then the UKI's own).
    PerDirectory,
    /// 255 on: all add-on command lines together, once.
    Joined,
}

impl StubModel {
    /// The model for a stub that says it is `release` (`None`: no `.sdmagic`, modelled as the newest).
    pub fn for_release(release: Option<u32>) -> Self {
        Self { release: release.unwrap_or(NEWEST).clamp(OLDEST, NEWEST) }
    }

    /// The sections measured into PCR 11, in the stub's order (`unified_sections[]`). `.pcrsig` is never measured:
    /// it holds signatures over PCR 11 itself.
    pub fn pcr11_sections(&self) -> &'static [&'static str] {
        const V252: &[&str] = &[".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey"];
        const V254: &[&str] =
            &[".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".uname", ".sbat", ".pcrpkey"];
        const V256: &[&str] =
            &[".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".pcrpkey"];
        const V257: &[&str] = &[
            ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".pcrpkey",
            ".profile", ".dtbauto", ".hwids",
        ];
        const V258: &[&str] = &[
            ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".pcrpkey",
            ".profile", ".dtbauto", ".hwids", ".efifw",
        ];
        match self.release {
            ..=253 => V252,
            254..=255 => V254,
            256 => V256,
            257 => V257,
            _ => V258,
        }
    }

    /// Whether the kernel is started through the firmware's LoadImage(), which measures `.linux` into PCR 4.
    /// From 258 on the stub loads it itself when Secure Boot is off or no shim is involved (systemd PR 37372).
    pub fn kernel_through_load_image(&self) -> bool {
        self.release <= 257
    }

    /// Whether `.profile` sections split the UKI into profiles (the default profile 0 is what boots).
    pub fn profiles(&self) -> bool {
        self.release >= 257
    }

    /// How the initrd parts are joined.
    pub fn initrd_layout(&self) -> InitrdLayout {
        if self.release >= 256 { InitrdLayout::PadEach } else { InitrdLayout::InitrdThenExtras }
    }

    /// How add-on command lines are measured.
    pub fn addon_measurement(&self) -> AddonMeasurement {
        match self.release {
            ..=253 => AddonMeasurement::None,
            254 => AddonMeasurement::PerDirectory,
            _ => AddonMeasurement::Joined,
        }
    }

    /// Whether `.initrd` and `.ucode` sections of add-ons are used (each measured into PCR 12).
    pub fn addon_initrds(&self) -> bool {
        self.release >= 257
    }

    /// Whether `*.confext.raw` files are passed as confexts (PCR 12) rather than as sysexts.
    pub fn confexts(&self) -> bool {
        self.release >= 256
    }

    /// Whether `/loader/extensions/` holds global sysexts and confexts.
    pub fn global_extensions(&self) -> bool {
        self.release >= 258
    }

    /// Whether `.osrel` and `.profile` are passed to the initrd as `/.extra/os-release` and `/.extra/profile`.
    pub fn osrel_cpio(&self) -> bool {
        self.release >= 257
    }

    /// Whether a per-machine boot secret may be added to the initrd (`/.extra/boot-secret`).
    pub fn boot_secret(&self) -> bool {
        self.release >= 261
    }

    /// Whether a read-only `/loader/random-seed` turns the stub's random seed (and so the boot secret) off.
    pub fn respects_read_only_seed(&self) -> bool {
        self.release >= 262
    }

    /// Whether `console=` is appended to a command line without one.
    pub fn console_autodetect(&self) -> bool {
        self.release >= 261
    }

    /// 256 only: the sources of the 256 cycle store the sysext cpio in the confext slot and the confext cpio in
    /// the sysext slot, so confexts come before sysexts in the initrd (257 puts them right).
    pub fn confext_before_sysext(&self) -> bool {
        self.release == 256
    }
}

/// The systemd-stub release (`252` of `252.39-1~deb12u2`) from the UKI's `.sdmagic` section
/// (`#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####`).
pub fn release_of(sdmagic: &[u8]) -> Option<u32> {
    version_text(sdmagic)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The full version text of `.sdmagic` (`252.39-1~deb12u2`), for messages.
pub fn version_text(sdmagic: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(sdmagic);
    let rest = &text[text.find("systemd-stub ")? + "systemd-stub ".len()..];
    let version: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != '\0').collect();
    (!version.is_empty()).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_comes_from_sdmagic() {
        assert_eq!(release_of(b"#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####\0"), Some(252));
        assert_eq!(release_of(b"#### LoaderInfo: systemd-stub 262.1-1 ####"), Some(262));
        assert_eq!(release_of(b"#### LoaderInfo: systemd-stub 258~rc1 ####"), Some(258));
        assert_eq!(
            version_text(b"#### LoaderInfo: systemd-stub 257.13-1~deb13u1 ####").as_deref(),
            Some("257.13-1~deb13u1")
        );
        assert_eq!(release_of(b"garbage"), None);
    }

    #[test]
    fn section_lists_follow_each_release() {
        let has = |r: u32, s: &str| StubModel::for_release(Some(r)).pcr11_sections().contains(&s);
        // .uname (PR 27358) and .sbat (PR 28187) came in 254, not 253.
        assert!(!has(253, ".uname") && !has(253, ".sbat"));
        assert!(has(254, ".uname") && has(254, ".sbat") && !has(255, ".ucode"));
        assert!(has(256, ".ucode") && !has(256, ".profile"));
        assert!(has(257, ".profile") && has(257, ".hwids") && !has(257, ".efifw"));
        assert!(has(258, ".efifw"));
        assert!(!has(262, ".pcrsig"));
    }

    #[test]
    fn unknown_and_out_of_range_stubs_use_the_nearest_model() {
        assert_eq!(StubModel::for_release(None).release, NEWEST);
        assert_eq!(StubModel::for_release(Some(300)).release, NEWEST);
        assert_eq!(StubModel::for_release(Some(250)).release, OLDEST);
        assert!(StubModel::for_release(Some(257)).kernel_through_load_image());
        assert!(!StubModel::for_release(Some(258)).kernel_through_load_image());
    }
}
