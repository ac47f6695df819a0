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
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("debian-boot-parts-v2");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/debian-boot-parts.sh");
        run(Command::new("sh").arg(script).arg(&dir));
        Parts { dir }
    })
}

impl Parts {
    /// systemd-boot of `release` (as [`Parts::stub`]).
    pub fn systemd_boot(&self, release: Option<u32>) -> PathBuf {
        let (stub, _) = self.stub(release);
        stub.with_file_name("systemd-bootx64.efi")
    }

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

/// An init that prints every SHA-256 PCR as `UPLOSI-PCR N HEX` (and those of the other banks the TPM has as
/// `UPLOSI-PCR-BANK N HEX`), the command line and the files in `/.extra`, then [`DONE`], and powers off. Files
/// `/phase-N` in the initrd are TPM2_PCR_Extend commands it sends first, as systemd-pcrphase would.
pub const REPORT_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
for f in /phase-*; do
  [ -e "$f" ] || continue
  [ -e /dev/tpm0 ] || /bin/busybox mount -t devtmpfs dev /dev
  /bin/busybox dd if="$f" of=/dev/tpm0 bs=4096 2>/dev/null
  /bin/busybox dd if=/dev/tpm0 of=/dev/null bs=4096 count=1 2>/dev/null
  echo "UPLOSI-PHASE $f"
done
for i in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
  echo "UPLOSI-PCR $i $(/bin/busybox cat /sys/class/tpm/tpm0/pcr-sha256/$i 2>/dev/null)"
  for b in sha1 sha384; do
    [ -e /sys/class/tpm/tpm0/pcr-$b/$i ] && echo "UPLOSI-PCR-$b $i $(/bin/busybox cat /sys/class/tpm/tpm0/pcr-$b/$i)"
  done
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

/// A "newc" cpio (uncompressed, which the kernel unpacks as well) with the static busybox, `init` as `/init`
/// and `files` (name, content) in the root.
pub fn initrd(init: &str, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let busybox = std::fs::read(parts().busybox()).expect("busybox");
    let mut out = Vec::new();
    for (i, dir) in ["bin", "proc", "sys", "dev"].iter().enumerate() {
        newc(&mut out, i as u32 + 1, dir, 0o040755, &[]);
    }
    newc(&mut out, 10, "bin/busybox", 0o100755, &busybox);
    newc(&mut out, 11, "init", 0o100755, init.as_bytes());
    for (i, (name, data)) in files.iter().enumerate() {
        newc(&mut out, 20 + i as u32, name, 0o100644, data);
    }
    newc(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// A TPM2_PCR_Extend of PCR `pcr` with the SHA-256 and SHA-384 of `word` (no NUL), with an empty password
/// session: what systemd-pcrphase sends for a phase on a TPM with those two banks.
pub fn pcr_extend_command(pcr: u32, word: &str) -> Vec<u8> {
    use sha2::Digest;
    let mut body = pcr.to_be_bytes().to_vec();
    let auth = [0x40, 0, 0, 9, 0, 0, 1, 0, 0]; // TPM_RS_PW, empty nonce, continueSession, empty password
    body.extend_from_slice(&(auth.len() as u32).to_be_bytes());
    body.extend_from_slice(&auth);
    body.extend_from_slice(&2u32.to_be_bytes());
    body.extend_from_slice(&0x000bu16.to_be_bytes());
    body.extend_from_slice(&sha2::Sha256::digest(word.as_bytes()));
    body.extend_from_slice(&0x000cu16.to_be_bytes());
    body.extend_from_slice(&sha2::Sha384::digest(word.as_bytes()));
    let mut cmd = vec![0x80, 0x02];
    cmd.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
    cmd.extend_from_slice(&0x0182u32.to_be_bytes());
    cmd.extend(body);
    cmd
}

/// Secure Boot test keys: PK, KEK and db certificates (openssl), their EFI signature lists
/// (`cert-to-efi-sig-list`), and db's key to sign with (`sbsign`).
pub struct Keys {
    /// Where they are.
    pub dir: PathBuf,
}

/// The owner GUID of the test keys' signature list entries.
pub const KEY_OWNER: &str = "11111111-2222-3333-4444-555555555555";

impl Keys {
    /// Makes them in `dir`.
    pub fn new(dir: &Path) -> Self {
        for name in ["PK", "KEK", "db"] {
            run(Command::new("openssl")
                .args(["req", "-quiet", "-newkey", "rsa:2048", "-nodes", "-new", "-x509", "-sha256", "-days", "3650"])
                .arg("-subj")
                .arg(format!("/CN=uplosi test {name}/"))
                .arg("-keyout")
                .arg(dir.join(format!("{name}.key")))
                .arg("-out")
                .arg(dir.join(format!("{name}.crt"))));
            run(Command::new("cert-to-efi-sig-list")
                .args(["-g", KEY_OWNER])
                .arg(dir.join(format!("{name}.crt")))
                .arg(dir.join(format!("{name}.esl"))));
        }
        Self { dir: dir.to_path_buf() }
    }

    /// The file of `name` (`PK.esl`, `db.crt`).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `--pk … --kek … --db …` for uplosi.
    pub fn args(&self) -> Vec<String> {
        ["pk:PK", "kek:KEK", "db:db"]
            .iter()
            .flat_map(|pair| {
                let (flag, name) = pair.split_once(':').unwrap_or_default();
                [format!("--{flag}"), self.file(&format!("{name}.esl")).display().to_string()]
            })
            .collect()
    }

    /// Signs `efi` in place with db's key.
    pub fn sign(&self, efi: &Path) {
        let signed = efi.with_extension("signed");
        run(Command::new("sbsign")
            .arg("--key")
            .arg(self.file("db.key"))
            .arg("--cert")
            .arg(self.file("db.crt"))
            .arg("--output")
            .arg(&signed)
            .arg(efi)
            .stderr(std::process::Stdio::null()));
        std::fs::rename(&signed, efi).expect("rename the signed image");
    }

    /// A copy of Debian's OVMF variable store template at `out` with these keys enrolled and Secure Boot on
    /// (virt-fw-vars), and the dbx it wrote there (an EFI signature list file next to it), for `--dbx`.
    pub fn enrolled_vars(&self, out: &Path) -> PathBuf {
        run(Command::new("virt-fw-vars")
            .args(["-i", "/usr/share/OVMF/OVMF_VARS_4M.fd", "-o"])
            .arg(out)
            .args(["--set-pk", KEY_OWNER])
            .arg(self.file("PK.crt"))
            .args(["--add-kek", KEY_OWNER])
            .arg(self.file("KEK.crt"))
            .args(["--add-db", KEY_OWNER])
            .arg(self.file("db.crt"))
            .arg("--sb")
            .stderr(std::process::Stdio::null()));
        let dbx = out.with_extension("dbx.esl");
        let script = "import sys\nfrom virt.firmware.varstore import edk2\n\
                      vl = edk2.Edk2VarStore(sys.argv[1]).get_varlist()\n\
                      open(sys.argv[2], 'wb').write(vl['dbx'].data)\n";
        run(Command::new("python3").arg("-c").arg(script).arg(out).arg(&dbx));
        dbx
    }
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

/// How the ESP is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The UKI at EFI/BOOT/BOOTX64.EFI (mkosi's `Bootloader=uki`).
    Uki,
    /// systemd-boot of the stub's release at EFI/BOOT/BOOTX64.EFI, the UKI in EFI/Linux/ (mkosi's default
    /// `Bootloader=systemd-boot`).
    SystemdBoot,
}

/// What goes into a test UKI.
pub struct Spec<'a> {
    /// The stub's release (`None`: the newest).
    pub release: Option<u32>,
    /// `/init`.
    pub init: &'a str,
    /// More files in the initrd's root (name, content).
    pub initrd_files: Vec<(String, Vec<u8>)>,
    /// Where the UKI goes.
    pub layout: Layout,
    /// Secure Boot keys to sign the UKI (and systemd-boot) with.
    pub sign: Option<&'a Keys>,
    /// Extra sections (name, content), e.g. `.ucode`.
    pub extra: Vec<(&'a str, Vec<u8>)>,
    /// Extra files on the ESP (path, content), e.g. `EFI/BOOT/BOOTX64.EFI.extra.d/x.cred`.
    pub esp: Vec<(&'a str, Vec<u8>)>,
}

impl<'a> Spec<'a> {
    /// A UKI on `release` reporting its PCRs.
    pub fn report(release: Option<u32>) -> Self {
        Self {
            release,
            init: REPORT_INIT,
            initrd_files: Vec::new(),
            layout: Layout::Uki,
            sign: None,
            extra: Vec::new(),
            esp: Vec::new(),
        }
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
    let initrd = write("initrd", &initrd(spec.init, &spec.initrd_files));
    let kernel = parts.kernel();
    let mut sections: Vec<(&str, PathBuf)> =
        vec![(".osrel", osrel), (".cmdline", cmdline), (".pcrpkey", pcrpkey), (".linux", kernel), (".initrd", initrd)];
    for (section, bytes) in &spec.extra {
        sections.push((section, write(section.trim_start_matches('.'), bytes)));
    }
    let uki = dir.join(format!("{name}.efi"));
    let with_paths: Vec<(&str, &Path)> = sections.iter().map(|(n, p)| (*n, p.as_path())).collect();
    uki::add_sections(&stub, &uki, &with_paths);
    if let Some(keys) = spec.sign {
        keys.sign(&uki);
    }
    let mut files: Vec<(String, PathBuf)> = match spec.layout {
        Layout::Uki => vec![("EFI/BOOT/BOOTX64.EFI".into(), uki)],
        Layout::SystemdBoot => {
            let loader = dir.join(format!("{name}.systemd-boot.efi"));
            std::fs::copy(parts.systemd_boot(spec.release), &loader).expect("copy systemd-boot");
            if let Some(keys) = spec.sign {
                keys.sign(&loader);
            }
            // mkosi names the UKI after the image and its version.
            vec![("EFI/BOOT/BOOTX64.EFI".into(), loader), (format!("EFI/Linux/{name}_1.0.efi"), uki)]
        }
    };
    for (i, (inside, bytes)) in spec.esp.iter().enumerate() {
        files.push((inside.to_string(), write(&format!("esp{i}"), bytes)));
    }
    let refs: Vec<(&str, &Path)> = files.iter().map(|(i, p)| (i.as_str(), p.as_path())).collect();
    let disk = dir.join(format!("{name}.raw"));
    uki::esp_disk(&disk, 32, 64, &refs);
    (disk, version)
}

/// The SHA-256 PCR values the guest printed (`UPLOSI-PCR N HEX`), lowercase.
pub fn guest_pcrs(console: &str) -> BTreeMap<u32, String> {
    guest_pcrs_in(console, "sha256")
}

/// The PCR values of `bank` (`sha1`, `sha256`, `sha384`) the guest printed, lowercase.
pub fn guest_pcrs_in(console: &str, bank: &str) -> BTreeMap<u32, String> {
    let marker = if bank == "sha256" { "UPLOSI-PCR ".to_string() } else { format!("UPLOSI-PCR-{bank} ") };
    console
        .lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').split(marker.as_str()).nth(1)?;
            let (index, value) = rest.split_once(' ')?;
            Some((index.parse().ok()?, value.trim().to_ascii_lowercase()))
        })
        .collect()
}
