//! Bootable test images: UKIs on the systemd-boot-efi stubs of Debian bookworm (252), bookworm-backports (254),
//! trixie (257) and sid (the newest), with Debian's kernel and a busybox initrd whose `/init` prints what the
//! guest itself reads in `/sys/class/tpm/tpm0/pcr-sha256/N` (the tests' own evidence, independent of uplosi's
//! TPM log replay), prints a marker and powers off; in GPT images with an ESP. The Debian parts are fetched once
//! into the test cache by `debian-boot-parts.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::fixtures::run;
use super::uki;

/// The Debian parts.
pub struct Parts {
    dir: PathBuf,
}

/// The parts, fetched on first use.
pub fn parts() -> &'static Parts {
    static PARTS: OnceLock<Parts> = OnceLock::new();
    PARTS.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("debian-boot-parts-v1");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/debian-boot-parts.sh");
        run(Command::new("sh").arg(script).arg(&dir));
        Parts { dir }
    })
}

impl Parts {
    /// The stub of `release` (252, 254, 257), or the newest one fetched with `None`; with its Debian version.
    pub fn stub(&self, release: Option<u32>) -> (PathBuf, String) {
        let mut versions: Vec<String> = std::fs::read_dir(self.dir.join("stubs"))
            .expect("stubs")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        versions.sort_by_key(|v| major(v));
        let version = match release {
            Some(r) => versions.iter().find(|v| major(v) == r).cloned(),
            None => versions.last().cloned(),
        }
        .unwrap_or_else(|| panic!("no systemd-boot-efi {release:?} among {versions:?}"));
        (self.dir.join("stubs").join(&version).join("linuxx64.efi.stub"), version)
    }

    /// The kernel.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The static busybox.
    pub fn busybox(&self) -> PathBuf {
        self.dir.join("busybox")
    }
}

/// The release number of a Debian version (`252` of `252.39-1~deb12u2`).
pub fn major(version: &str) -> u32 {
    version.split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok()).unwrap_or(0)
}

/// The marker the reporting init prints last.
pub const DONE: &str = "UPLOSI-TEST: done";

/// An init that prints every SHA-256 PCR as `UPLOSI-PCR N HEX`, the command line and the files in `/.extra`, then
/// [`DONE`], and powers off.
pub const REPORT_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
for i in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
  echo "UPLOSI-PCR $i $(/bin/busybox cat /sys/class/tpm/tpm0/pcr-sha256/$i 2>/dev/null)"
done
echo "UPLOSI-CMDLINE $(/bin/busybox cat /proc/cmdline)"
/bin/busybox find /.extra 2>/dev/null | while read f; do echo "UPLOSI-EXTRA $f"; done
echo "UPLOSI-TEST: done"
/bin/busybox poweroff -f
"#;

/// An init that exits at once: the kernel panics ("Attempted to kill init").
pub const PANIC_INIT: &str = "#!/bin/busybox sh\necho 'UPLOSI-TEST: about to exit'\nexit 1\n";

/// An init that never finishes booting.
pub const HANG_INIT: &str =
    "#!/bin/busybox sh\necho 'UPLOSI-TEST: waiting forever'\nwhile :; do /bin/busybox sleep 60; done\n";

/// An init that stops where a boot waiting for a person does: systemd-firstboot's prompt, amid other lines, then
/// a quiet console.
pub const FIRSTBOOT_INIT: &str = r#"#!/bin/busybox sh
echo 'UPLOSI-TEST: waiting forever'
echo
echo 'Please configure your system!'
echo
echo '-- Press any key to proceed --'
i=0
while [ $i -lt 30 ]; do echo "UPLOSI-TEST: filler $i"; i=$((i+1)); done
while :; do /bin/busybox sleep 60; done
"#;

fn newc(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let header = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
    out.extend_from_slice(b"070701");
    for field in header {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().div_ceil(4) * 4, 0);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(4) * 4, 0);
}

/// A "newc" cpio (uncompressed, which the kernel unpacks as well) with the static busybox and `init` as `/init`.
pub fn initrd(init: &str) -> Vec<u8> {
    let busybox = std::fs::read(parts().busybox()).expect("busybox");
    let mut out = Vec::new();
    for (i, dir) in ["bin", "proc", "sys", "dev"].iter().enumerate() {
        newc(&mut out, i as u32 + 1, dir, 0o040755, &[]);
    }
    newc(&mut out, 10, "bin/busybox", 0o100755, &busybox);
    newc(&mut out, 11, "init", 0o100755, init.as_bytes());
    newc(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// A microcode cpio as the kernel's early loader looks for it (content is not real microcode; the loader
/// ignores what it cannot use).
pub fn ucode() -> Vec<u8> {
    let mut out = Vec::new();
    for (i, dir) in ["kernel", "kernel/x86", "kernel/x86/microcode"].iter().enumerate() {
        newc(&mut out, i as u32 + 1, dir, 0o040755, &[]);
    }
    newc(&mut out, 5, "kernel/x86/microcode/GenuineIntel.bin", 0o100644, b"not microcode");
    newc(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// What goes into a test UKI.
pub struct Spec<'a> {
    /// The stub's release (`None`: the newest).
    pub release: Option<u32>,
    /// `/init`.
    pub init: &'a str,
    /// Extra sections (name, content), e.g. `.ucode`.
    pub extra: Vec<(&'a str, Vec<u8>)>,
    /// Extra files on the ESP (path, content), e.g. `EFI/BOOT/BOOTX64.EFI.extra.d/x.cred`.
    pub esp: Vec<(&'a str, Vec<u8>)>,
}

impl<'a> Spec<'a> {
    /// A UKI on `release` reporting its PCRs.
    pub fn report(release: Option<u32>) -> Self {
        Self { release, init: REPORT_INIT, extra: Vec::new(), esp: Vec::new() }
    }
}

/// Builds the UKI of `spec` (with `.osrel`, `.cmdline`, `.pcrpkey`, `.linux`, `.initrd`) into a GPT image in
/// `dir`; returns the image and the stub's Debian version.
pub fn image(dir: &Path, name: &str, spec: &Spec<'_>) -> (PathBuf, String) {
    let parts = parts();
    let (stub, version) = parts.stub(spec.release);
    let write = |suffix: &str, bytes: &[u8]| {
        let path = dir.join(format!("{name}.{suffix}"));
        std::fs::write(&path, bytes).expect("write part");
        path
    };
    let osrel = write("osrel", b"ID=debian\nVERSION_ID=12\nPRETTY_NAME=\"uplosi boot test\"\n");
    let cmdline = write("cmdline", b"console=ttyS0 panic=-1\n");
    let pcrpkey = write(
        "pcrpkey",
        b"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n",
    );
    let initrd = write("initrd", &initrd(spec.init));
    let kernel = parts.kernel();
    let mut sections: Vec<(&str, PathBuf)> =
        vec![(".osrel", osrel), (".cmdline", cmdline), (".pcrpkey", pcrpkey), (".linux", kernel), (".initrd", initrd)];
    for (section, bytes) in &spec.extra {
        sections.push((section, write(section.trim_start_matches('.'), bytes)));
    }
    let uki = dir.join(format!("{name}.efi"));
    let with_paths: Vec<(&str, &Path)> = sections.iter().map(|(n, p)| (*n, p.as_path())).collect();
    uki::add_sections(&stub, &uki, &with_paths);
    let mut files: Vec<(String, PathBuf)> = vec![("EFI/BOOT/BOOTX64.EFI".into(), uki)];
    for (i, (inside, bytes)) in spec.esp.iter().enumerate() {
        files.push((inside.to_string(), write(&format!("esp{i}"), bytes)));
    }
    let refs: Vec<(&str, &Path)> = files.iter().map(|(i, p)| (i.as_str(), p.as_path())).collect();
    let disk = dir.join(format!("{name}.raw"));
    uki::esp_disk(&disk, 32, 64, &refs);
    (disk, version)
}

/// The PCR values the guest printed (`UPLOSI-PCR N HEX`), lowercase.
pub fn guest_pcrs(console: &str) -> BTreeMap<u32, String> {
    console
        .lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').split("UPLOSI-PCR ").nth(1)?;
            let (index, value) = rest.split_once(' ')?;
            Some((index.parse().ok()?, value.trim().to_ascii_lowercase()))
        })
        .collect()
}
