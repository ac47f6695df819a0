//! Real unified kernel images for the measurement tests, built the way the systemd documentation describes: the
//! kernel of Debian's `linux-image-amd64` (downloaded once with `apt-get download` and cached under the target
//! directory), `systemd-boot-efi`'s `linuxx64.efi.stub`, and `objcopy --add-section … --change-section-vma`.
//! Also GPT disk images whose EFI system partition (FAT12, FAT16 or FAT32, made by mkfs.vfat and filled with
//! mtools) holds them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::fixtures::run;

/// The systemd stub that UKIs start with.
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

fn sbin(tool: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(tool))
}

/// The kernel image (`vmlinuz`) of Debian's current `linux-image-amd64`.
pub fn kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("debian-kernel");
        let find = |dir: &Path| -> Option<PathBuf> {
            std::fs::read_dir(dir.join("boot"))
                .ok()?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        };
        if let Some(found) = find(&dir) {
            return found;
        }
        let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kernel-work-{}", std::process::id()));
        std::fs::create_dir_all(&work).unwrap();
        let depends =
            String::from_utf8(run(Command::new("apt-cache").args(["depends", "linux-image-amd64"])).stdout).unwrap();
        let package = depends
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .expect("apt-cache knows linux-image-amd64 (run apt-get update)")
            .to_string();
        run(Command::new("apt-get").args(["download", "-q", &package]).current_dir(&work));
        let deb = std::fs::read_dir(&work).unwrap().filter_map(Result::ok).map(|e| e.path()).next().unwrap();
        let extract = work.join("x");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extract));
        // Publish atomically: parallel test processes may race here.
        let _ = std::fs::rename(&extract, &dir);
        let _ = std::fs::remove_dir_all(&work);
        find(&dir).expect("the kernel package holds boot/vmlinuz-*")
    })
}

/// The parts of a UKI; `None` leaves a section out.
pub struct Parts<'a> {
    /// `.cmdline` content.
    pub cmdline: Option<&'a [u8]>,
    /// `.initrd` content.
    pub initrd: Option<&'a [u8]>,
    /// Pad the file with zeros to a multiple of 8 bytes, as signing tools do.
    pub align8: bool,
}

impl Default for Parts<'_> {
    fn default() -> Self {
        Self { cmdline: Some(b"console=ttyS0 root=PARTUUID=6c1e0d3a & quiet"), initrd: Some(b""), align8: true }
    }
}

/// Builds a UKI in `dir` from the stub, the kernel, an os-release, a PEM public key and `parts`; returns its path
/// and the section files it was made from (name, path), for `systemd-measure`.
pub fn build(dir: &Path, name: &str, parts: &Parts<'_>) -> (PathBuf, Vec<(&'static str, PathBuf)>) {
    let file = |n: &str, bytes: &[u8]| -> PathBuf {
        let p = dir.join(format!("{name}.{n}"));
        std::fs::write(&p, bytes).unwrap();
        p
    };
    // A deterministic 300 KB initrd unless one is given.
    let initrd: Vec<u8> = match parts.initrd {
        Some(b) if !b.is_empty() => b.to_vec(),
        _ => (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect(),
    };
    let mut sections: Vec<(&'static str, PathBuf)> = vec![
        (".osrel", file("osrel", b"ID=debian\nVERSION_ID=12\nPRETTY_NAME=\"uplosi test\"\n")),
        (
            ".pcrpkey",
            file(
                "pcrpkey",
                b"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n",
            ),
        ),
        (".linux", kernel().to_path_buf()),
    ];
    if let Some(cmdline) = parts.cmdline {
        sections.push((".cmdline", file("cmdline", cmdline)));
    }
    if parts.initrd.is_some() {
        sections.push((".initrd", file("initrd", &initrd)));
    }
    let out = dir.join(format!("{name}.efi"));
    let with_paths: Vec<(&str, &Path)> = sections.iter().map(|(n, p)| (*n, p.as_path())).collect();
    add_sections(Path::new(STUB), &out, &with_paths);
    if parts.align8 {
        let len = std::fs::metadata(&out).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&out).unwrap().set_len(len.div_ceil(8) * 8).unwrap();
    }
    (out, sections)
}

/// Writes `stub` with `sections` (name, file) added to `out`, as ukify lays them out: each at the next 4 KiB
/// boundary after the stub's last section (the newer stubs link at a high image base, so fixed addresses would
/// overlap them).
pub fn add_sections(stub: &Path, out: &Path, sections: &[(&str, &Path)]) {
    let headers = String::from_utf8(run(Command::new("objdump").arg("-h").arg(stub)).stdout).unwrap();
    let mut end = 0u64;
    for line in headers.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 4 && fields[0].parse::<u32>().is_ok() {
            let size = u64::from_str_radix(fields[2], 16).unwrap();
            let vma = u64::from_str_radix(fields[3], 16).unwrap();
            end = end.max(vma + size);
        }
    }
    let mut vma = end.div_ceil(0x1000) * 0x1000;
    let mut objcopy = Command::new("objcopy");
    for (name, path) in sections {
        objcopy
            .arg("--add-section")
            .arg(format!("{name}={}", path.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={vma:#x}"));
        vma += std::fs::metadata(path).unwrap().len().div_ceil(0x1000) * 0x1000;
    }
    run(objcopy.arg(stub).arg(out));
}

/// A GPT disk at `out`: an EFI system partition of `esp_mib` MiB formatted FAT`fat` holding `files` (path inside
/// the ESP, source), then a small Linux partition.
pub fn esp_disk(out: &Path, fat: u8, esp_mib: u64, files: &[(&str, &Path)]) {
    let work = out.with_extension("work");
    std::fs::create_dir_all(&work).unwrap();
    let size = (esp_mib + 4) << 20;
    std::fs::File::create(out).unwrap().set_len(size).unwrap();
    let mut sfdisk = Command::new(sbin("sfdisk"));
    sfdisk.arg("--quiet").arg(out).stdin(Stdio::piped());
    let mut child = sfdisk.spawn().expect("sfdisk");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("label: gpt\n,{esp_mib}MiB,U\n,,L\n").as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");

    let esp = work.join("esp.img");
    // Cluster sizes chosen so each FAT type's cluster-count range is met at these sizes.
    let sectors_per_cluster = match fat {
        12 => "16",
        16 => "4",
        _ => "1",
    };
    run(Command::new(sbin("mkfs.vfat"))
        .args(["-F", &fat.to_string(), "-s", sectors_per_cluster, "-C"])
        .arg(&esp)
        .arg((esp_mib * 1024).to_string())
        .stdout(Stdio::null()));
    for (inside, source) in files {
        let mut dir = String::from("::");
        let parents: Vec<&str> = inside.split('/').collect();
        for part in &parents[..parents.len() - 1] {
            dir.push('/');
            dir.push_str(part);
            let _ = Command::new("mmd").arg("-i").arg(&esp).arg(&dir).output();
        }
        run(Command::new("mcopy").arg("-i").arg(&esp).arg(source).arg(format!("::/{inside}")));
    }
    let data = std::fs::read(&esp).unwrap();
    let disk = std::fs::OpenOptions::new().write(true).open(out).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&disk, &data, 1 << 20).unwrap();
    std::fs::remove_dir_all(&work).unwrap();
}
