//! The boot path the firmware takes: what `EFI/BOOT/BOOTX64.EFI` is (a UKI, systemd-boot, or a boot loader uplosi
//! does not model), and for systemd-boot, which entry it boots by itself and what that release measures.
//!
//! systemd-boot's choice follows its sources (`src/boot/efi/boot.c` of 252 and 254, `src/boot/boot.c` of 257):
//! Type #1 entries (`loader/entries/*.conf`) and Type #2 UKIs (`EFI/Linux/*.efi` with an `.osrel` naming the
//! OS) are sorted by sort key (os-release `IMAGE_ID` or `ID`), machine ID, version downwards, then ID downwards
//! (`strverscmp_improved`), entries without tries left last; the default is the first entry matching
//! `loader/loader.conf`'s `default` glob, else the first entry. EFI variables (`LoaderEntryDefault`,
//! `LoaderEntryOneShot`, `@saved`) cannot be set in an image that was never booted, so they play no part.

use super::esp::Esp;
use super::pe::PeFile;

/// The fallback paths firmware boots without boot entries, per machine type.
pub const FALLBACK_PATHS: [&str; 2] = ["EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/BOOTAA64.EFI"];

/// What a PE image on the boot path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootFile {
    /// A unified kernel image (it has a `.linux` section).
    Uki,
    /// systemd-boot, with its version text (`257.13-1~deb13u1`) and release (`257`) from `.sdmagic`.
    SystemdBoot {
        /// The version text.
        version: String,
        /// The release number.
        release: Option<u32>,
    },
    /// A boot loader uplosi does not model (`shim`, `GRUB`), with how it was recognised.
    Unmodelled {
        /// Its name.
        name: &'static str,
        /// What gave it away.
        evidence: String,
    },
    /// A PE image that is none of these.
    Unknown,
}

/// The first field of each SBAT line after the header (`shim`, `grub`, `systemd`, …).
fn sbat_components(pe: &PeFile<'_>) -> Vec<String> {
    let Some(sbat) = pe.section_data(".sbat") else { return Vec::new() };
    String::from_utf8_lossy(&sbat)
        .lines()
        .filter_map(|l| l.split(',').next())
        .map(|c| c.trim_matches(char::from(0)).trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "sbat")
        .collect()
}

/// What `pe` is.
pub fn classify(pe: &PeFile<'_>) -> BootFile {
    if let Some(magic) = pe.section_data(".sdmagic") {
        let text = String::from_utf8_lossy(&magic);
        if let Some(rest) = text.split("systemd-boot ").nth(1) {
            let version: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != '\0').collect();
            let release = version.split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok());
            return BootFile::SystemdBoot { version, release };
        }
    }
    if pe.section_names().iter().any(|n| n == ".linux") {
        return BootFile::Uki;
    }
    let components = sbat_components(pe);
    let names = pe.section_names();
    // PE section names are 8 bytes: tools that cannot write longer ones cut `.vendor_cert` to `.vendor_`.
    let vendor_cert = names.iter().any(|n| n.starts_with(".vendor_"));
    if components.iter().any(|c| c == "shim") || vendor_cert {
        let evidence =
            if vendor_cert { "it has a .vendor_cert section".to_string() } else { "its .sbat names shim".to_string() };
        return BootFile::Unmodelled { name: "shim", evidence };
    }
    if components.iter().any(|c| c == "grub") || names.iter().any(|n| n == "mods") {
        let evidence = if names.iter().any(|n| n == "mods") { "it has a mods section" } else { "its .sbat names grub" };
        return BootFile::Unmodelled { name: "GRUB", evidence: evidence.to_string() };
    }
    BootFile::Unknown
}

/// What a systemd-boot release measures on the way to a UKI, as its sources say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemdBootModel {
    /// The release (clamped to what is modelled).
    pub release: u32,
}

impl SystemdBootModel {
    /// The model for a systemd-boot that says it is `release` (`None`: the newest).
    pub fn for_release(release: Option<u32>) -> Self {
        Self { release: release.unwrap_or(super::stub::NEWEST).clamp(super::stub::OLDEST, super::stub::NEWEST) }
    }

    /// Whether it passes a UKI's own `.cmdline` to it as load options, measured into PCR 12 (up to 254; from 255
    /// the command line embedded in a UKI is implied and not passed, systemd PR 28924).
    pub fn passes_uki_cmdline(&self) -> bool {
        self.release <= 254
    }
}

/// A boot entry systemd-boot lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its ID: the file name, lower case, without a boot counter.
    pub id: String,
    /// The file on the ESP (`EFI/Linux/x.efi`, `loader/entries/x.conf`).
    pub path: String,
    /// Whether it is a Type #2 UKI (else a Type #1 entry file).
    pub uki: bool,
    /// The sort key (os-release IMAGE_ID or ID; `sort-key`).
    pub sort_key: Option<String>,
    /// The version (os-release IMAGE_VERSION, VERSION, VERSION_ID, BUILD_ID; `version`).
    pub version: Option<String>,
    /// `machine-id` of a Type #1 entry.
    pub machine_id: Option<String>,
    /// Boot counting: tries left (-1: none).
    pub tries_left: i64,
    /// Boot counting: tries done.
    pub tries_done: i64,
}

/// `KEY=VALUE` (or `KEY VALUE`) lines as systemd-boot reads them: trimmed, `#` comments skipped, one pair of
/// matching quotes removed.
pub fn key_values(text: &str, separators: &[char]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.split(['\n', '\r']) {
        let line = line.trim_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(split) = line.find(separators) else { continue };
        let key = &line[..split];
        let mut value = line[split..].trim_start_matches(separators);
        for quote in ['"', '\''] {
            if value.len() >= 2 && value.starts_with(quote) && line.ends_with(quote) {
                value = &value[1..value.len() - 1];
                break;
            }
        }
        out.push((key.to_string(), value.to_string()));
    }
    out
}

fn last<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Splits a boot counter (`name+3-1.efi`) off a file name: the ID without it, tries left, tries done.
fn parse_tries(file: &str, suffix: &str) -> (String, i64, i64) {
    let lower = file.to_ascii_lowercase();
    let none = (lower.clone(), -1, -1);
    let Some(plus) = file.rfind('+') else { return none };
    let Some(stem_end) = lower.strip_suffix(suffix).map(str::len) else { return none };
    if stem_end <= plus {
        return none;
    }
    let counter = &file[plus + 1..stem_end];
    let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
    match (left.parse::<i64>(), done.parse::<i64>()) {
        (Ok(l), Ok(d)) if !left.is_empty() && !done.is_empty() => (format!("{}{suffix}", &lower[..plus]), l, d),
        _ => none,
    }
}

/// The entries systemd-boot finds on `esp`: Type #1 entry files and Type #2 UKIs.
pub fn entries(esp: &Esp) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for file in esp.files("loader/entries")?.unwrap_or_default() {
        let name = file.name;
        if name.starts_with('.') || !name.to_ascii_lowercase().ends_with(".conf") {
            continue;
        }
        let path = format!("loader/entries/{name}");
        let text = String::from_utf8_lossy(&esp.read(&path)?.unwrap_or_default()).into_owned();
        let pairs = key_values(&text, &[' ', '\t']);
        let (id, tries_left, tries_done) = parse_tries(&name, ".conf");
        out.push(Entry {
            id,
            path,
            uki: false,
            sort_key: last(&pairs, "sort-key").map(str::to_string),
            version: last(&pairs, "version").map(str::to_string),
            machine_id: last(&pairs, "machine-id").map(str::to_string),
            tries_left,
            tries_done,
        });
    }
    for file in esp.files("EFI/Linux")?.unwrap_or_default() {
        let name = file.name;
        let lower = name.to_ascii_lowercase();
        if name.starts_with('.') || !lower.ends_with(".efi") || lower.starts_with("auto-") {
            continue;
        }
        let path = format!("EFI/Linux/{name}");
        let bytes = esp.read(&path)?.unwrap_or_default();
        let Ok(pe) = PeFile::parse(&bytes) else { continue };
        let Some(osrel) = pe.section_data(".osrel").filter(|o| !o.is_empty()) else { continue };
        let pairs = key_values(&String::from_utf8_lossy(&osrel), &['=']);
        let get = |k: &str| last(&pairs, k);
        let name_found = get("PRETTY_NAME").or(get("IMAGE_ID")).or(get("NAME")).or(get("ID"));
        if name_found.is_none() {
            continue;
        }
        let version = get("IMAGE_VERSION").or(get("VERSION")).or(get("VERSION_ID")).or(get("BUILD_ID"));
        let (id, tries_left, tries_done) = parse_tries(&name, ".efi");
        out.push(Entry {
            id,
            path,
            uki: true,
            sort_key: get("IMAGE_ID").or(get("ID")).map(str::to_string),
            version: version.map(str::to_string),
            machine_id: None,
            tries_left,
            tries_done,
        });
    }
    Ok(out)
}

/// systemd's `strverscmp_improved()`: versions compared segment by segment, `~` older, then `-`, `^`, `.`
/// separators, numeric segments newer than alphabetic ones.
pub fn strverscmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let valid = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.');
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0usize, 0usize);
    let at = |s: &[u8], k: usize| s.get(k).copied().unwrap_or(0);
    loop {
        while at(a, i) != 0 && !valid(at(a, i)) {
            i += 1;
        }
        while at(b, j) != 0 && !valid(at(b, j)) {
            j += 1;
        }
        // A separator on one side only decides (the side without it is newer); on both, it is skipped.
        let separator = |sep: u8, i: &mut usize, j: &mut usize| -> Option<Ordering> {
            if at(a, *i) != sep && at(b, *j) != sep {
                return None;
            }
            let r = (at(a, *i) != sep).cmp(&(at(b, *j) != sep));
            *i += 1;
            *j += 1;
            (r != Ordering::Equal).then_some(r)
        };
        if let Some(r) = separator(b'~', &mut i, &mut j) {
            return r;
        }
        if at(a, i) == 0 || at(b, j) == 0 {
            return at(a, i).cmp(&at(b, j));
        }
        for sep in [b'-', b'^', b'.'] {
            if let Some(r) = separator(sep, &mut i, &mut j) {
                return r;
            }
        }
        if at(a, i).is_ascii_digit() || at(b, j).is_ascii_digit() {
            let (ea, eb) = (
                i + a[i.min(a.len())..].iter().take_while(|c| c.is_ascii_digit()).count(),
                j + b[j.min(b.len())..].iter().take_while(|c| c.is_ascii_digit()).count(),
            );
            let r = (ea != i).cmp(&(eb != j));
            if r != Ordering::Equal {
                return r;
            }
            while at(a, i) == b'0' && i < ea {
                i += 1;
            }
            while at(b, j) == b'0' && j < eb {
                j += 1;
            }
            let r = (ea - i).cmp(&(eb - j)).then_with(|| a[i..ea].cmp(&b[j..eb]));
            if r != Ordering::Equal {
                return r;
            }
            (i, j) = (ea, eb);
        } else {
            let (ea, eb) = (
                i + a[i.min(a.len())..].iter().take_while(|c| c.is_ascii_alphabetic()).count(),
                j + b[j.min(b.len())..].iter().take_while(|c| c.is_ascii_alphabetic()).count(),
            );
            let n = (ea - i).min(eb - j);
            let r = a[i..i + n].cmp(&b[j..j + n]).then((ea - i).cmp(&(eb - j)));
            if r != Ordering::Equal {
                return r;
            }
            (i, j) = (ea, eb);
        }
    }
}

/// systemd-boot's `boot_entry_compare()`.
fn compare(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let r = (a.tries_left == 0).cmp(&(b.tries_left == 0)).then((a.sort_key.is_none()).cmp(&b.sort_key.is_none()));
    if r != Ordering::Equal {
        return r;
    }
    if let (Some(ka), Some(kb)) = (&a.sort_key, &b.sort_key) {
        let r = ka
            .cmp(kb)
            .then_with(|| a.machine_id.as_deref().unwrap_or("").cmp(b.machine_id.as_deref().unwrap_or("")))
            .then_with(|| strverscmp(a.version.as_deref().unwrap_or(""), b.version.as_deref().unwrap_or("")).reverse());
        if r != Ordering::Equal {
            return r;
        }
    }
    let r = strverscmp(&a.id, &b.id).reverse();
    if r != Ordering::Equal || a.tries_left < 0 || b.tries_left < 0 {
        return r;
    }
    b.tries_left.cmp(&a.tries_left).then(a.tries_done.cmp(&b.tries_done))
}

/// systemd-boot's glob (`efi_fnmatch()`): `*`, `?`, `[…]` sets with ranges, `\` escapes.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    fn set(p: &[char], c: char) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, length of the set including ']').
        let mut k = 0;
        let mut matched = false;
        let mut first = true;
        loop {
            let ch = *p.get(k)?;
            if ch == ']' && !first {
                return Some((matched, k + 1));
            }
            if ch == '\\' {
                k += 1;
                matched |= *p.get(k)? == c;
            } else if p.get(k + 1) == Some(&'-') && p.get(k + 2).is_some_and(|&e| e != ']') {
                let high = if p[k + 2] == '\\' { *p.get(k + 3)? } else { p[k + 2] };
                matched |= ch <= c && c <= high;
                k += if p[k + 2] == '\\' { 3 } else { 2 };
            } else {
                matched |= ch == c;
            }
            first = false;
            k += 1;
        }
    }
    fn go(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => (0..=s.len()).any(|k| go(&p[1..], &s[k..])),
            Some('?') => !s.is_empty() && go(&p[1..], &s[1..]),
            Some('[') => match (s.first(), set(&p[1..], *s.first().unwrap_or(&'\0'))) {
                (Some(_), Some((true, len))) => go(&p[1 + len..], &s[1..]),
                _ => false,
            },
            Some('\\') => p.get(1).is_some_and(|c| s.first() == Some(c)) && go(&p[2..], &s[1..]),
            Some(c) => s.first() == Some(c) && go(&p[1..], &s[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    go(&p, &s)
}

/// The entry systemd-boot boots by itself: `loader_conf`'s `default` glob, else the first in its order.
pub fn default_entry(mut entries: Vec<Entry>, loader_conf: Option<&str>) -> Option<Entry> {
    entries.sort_by(compare);
    let pattern = loader_conf
        .map(|text| key_values(text, &[' ', '\t']))
        .and_then(|pairs| last(&pairs, "default").map(str::to_ascii_lowercase))
        .filter(|p| !p.starts_with('@'));
    if let Some(found) = pattern.and_then(|p| entries.iter().position(|e| fnmatch(&p, &e.id))) {
        return Some(entries.swap_remove(found));
    }
    entries.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn versions_compare_as_systemd_does() {
        // The order of the strverscmp_improved() documentation, oldest first.
        let order = [
            "122.1",
            "123~rc1-1",
            "123",
            "123-a",
            "123-a.1",
            "123-1",
            "123-1.1",
            "123^post1",
            "123.a-1",
            "123.1-1",
            "123a-1",
            "124-1",
        ];
        for pair in order.windows(2) {
            assert_eq!(strverscmp(pair[0], pair[1]), Ordering::Less, "{} < {}", pair[0], pair[1]);
            assert_eq!(strverscmp(pair[1], pair[0]), Ordering::Greater, "{} > {}", pair[1], pair[0]);
        }
        assert_eq!(strverscmp("00123", "123"), Ordering::Equal);
        assert_eq!(strverscmp("uki.efi", "uki.efi"), Ordering::Equal);
    }

    fn uki(id: &str, version: &str) -> Entry {
        Entry {
            id: id.into(),
            path: format!("EFI/Linux/{id}"),
            uki: true,
            sort_key: Some("debian".into()),
            version: Some(version.into()),
            machine_id: None,
            tries_left: -1,
            tries_done: -1,
        }
    }

    #[test]
    fn the_newest_version_boots_unless_loader_conf_says_otherwise() {
        let entries = vec![uki("podvm-1.2.efi", "1.2"), uki("podvm-1.10.efi", "1.10"), uki("podvm-1.9.efi", "1.9")];
        assert_eq!(default_entry(entries.clone(), None).map(|e| e.id), Some("podvm-1.10.efi".into()));
        let conf = "# comment\ntimeout 3\ndefault podvm-1.9*\n";
        assert_eq!(default_entry(entries.clone(), Some(conf)).map(|e| e.id), Some("podvm-1.9.efi".into()));
        let saved = "default @saved\n";
        assert_eq!(default_entry(entries.clone(), Some(saved)).map(|e| e.id), Some("podvm-1.10.efi".into()));
        let nothing = "default no-such-entry.efi\n";
        assert_eq!(default_entry(entries, Some(nothing)).map(|e| e.id), Some("podvm-1.10.efi".into()));
        assert_eq!(default_entry(Vec::new(), None), None);
    }

    #[test]
    fn entries_without_tries_left_go_last_and_counters_leave_the_id() {
        assert_eq!(parse_tries("podvm+3-1.efi", ".efi"), ("podvm.efi".into(), 3, 1));
        assert_eq!(parse_tries("Podvm+2.EFI", ".efi"), ("podvm.efi".into(), 2, 0));
        assert_eq!(parse_tries("podvm.efi", ".efi"), ("podvm.efi".into(), -1, -1));
        let mut spent = uki("podvm-2.efi", "2");
        spent.tries_left = 0;
        let entries = vec![spent, uki("podvm-1.efi", "1")];
        assert_eq!(default_entry(entries, None).map(|e| e.id), Some("podvm-1.efi".into()));
    }

    #[test]
    fn globs_match_as_efi_fnmatch() {
        assert!(fnmatch("podvm-*.efi", "podvm-1.2.3.efi"));
        assert!(fnmatch("p?dvm.efi", "podvm.efi"));
        assert!(fnmatch("[a-c]x", "bx") && !fnmatch("[a-c]x", "dx"));
        assert!(fnmatch("\\*", "*") && !fnmatch("\\*", "a"));
        assert!(!fnmatch("podvm", "podvm.efi"));
        assert!(!fnmatch("[", "a"), "an unterminated set matches nothing");
    }

    #[test]
    fn key_values_are_read_as_systemd_boot_reads_them() {
        let pairs = key_values("  ID=debian\n# x\nPRETTY_NAME=\"Debian GNU/Linux\"\r\nNAME='x'\nBAD\n", &['=']);
        assert_eq!(
            pairs,
            [
                ("ID".to_string(), "debian".to_string()),
                ("PRETTY_NAME".to_string(), "Debian GNU/Linux".to_string()),
                ("NAME".to_string(), "x".to_string())
            ]
        );
    }
}
