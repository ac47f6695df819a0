//! Disk image fixtures, built with the same tools an image build uses (sfdisk, mkfs.vfat, mtools, mkfs.ext4 -d),
//! plus small synthetic edge cases. Built once under the target directory and reused by later runs; bump
//! `RECIPE` when a recipe changes. Each is built under a temporary name and renamed, so parallel test processes
//! never see half an image.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rand::{Rng, SeedableRng};

/// A fixture: the image path and a short name for messages.
#[derive(Clone, Debug)]
pub struct Fixture {
    /// Short name.
    pub name: &'static str,
    /// The raw image.
    pub path: PathBuf,
}

/// Version of the fixture recipes.
const RECIPE: u32 = 1;

fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fixtures-v{RECIPE}"));
        std::fs::create_dir_all(&dir).expect("fixture dir");
        dir
    })
}

/// Returns `dir/name`, building it with `build(tmp_path)` first if it does not exist yet.
fn cached(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let path = fixture_dir().join(name);
    if !path.exists() {
        let tmp = fixture_dir().join(format!(".{name}.tmp-{}", std::process::id()));
        build(&tmp);
        std::fs::rename(&tmp, &path).expect("rename fixture");
    }
    path
}

/// Runs a command and panics with its output if it fails.
pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `qemu-img compare` of the raw image `raw` against `other` in `other_format`, failing with qemu's own message.
pub fn qemu_compare(raw: &Path, other_format: &str, other: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", other_format])
        .arg(raw)
        .arg(other)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        raw.display(),
        other.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sbin(tool: &str) -> Command {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return Command::new(p);
        }
    }
    Command::new(tool)
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill(&mut v[..]);
    v
}

fn text_bytes(len: usize) -> Vec<u8> {
    let words = ["image", "kernel", "initrd", "systemd", "confidential", "attestation", "measured", "boot", "\n"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        v.extend_from_slice(words[rng.random_range(0..words.len())].as_bytes());
        v.push(b' ');
    }
    v.truncate(len);
    v
}

/// Copies `src` into `dst` at `offset`, skipping zero blocks so `dst` stays sparse.
fn splice_sparse(dst: &Path, src: &Path, offset: u64) {
    let dst = std::fs::OpenOptions::new().write(true).open(dst).expect("open image");
    let data = std::fs::read(src).expect("read part");
    for (i, block) in data.chunks(65536).enumerate() {
        if block.iter().any(|b| *b != 0) {
            dst.write_all_at(block, offset + i as u64 * 65536).expect("write part");
        }
    }
}

/// A realistic GPT disk: a 32 MiB FAT ESP with a boot file and an ext4 root holding incompressible, compressible
/// and zero-filled files. The size (200 MiB + 7 sectors) is deliberately not a multiple of 1 MiB.
pub fn gpt_image() -> Fixture {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    let path = IMG
        .get_or_init(|| {
            cached("gpt.raw", |image| {
                let dir = fixture_dir().join(format!("gpt-work-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let size: u64 = (200 << 20) + 7 * 512;
                std::fs::File::create(image).unwrap().set_len(size).unwrap();
                let mut sfdisk = sbin("sfdisk");
                sfdisk.arg("--quiet").arg(image).stdin(std::process::Stdio::piped());
                let mut child = sfdisk.spawn().expect("sfdisk");
                use std::io::Write;
                child.stdin.take().unwrap().write_all(b"label: gpt\n,32MiB,U\n,,L\n").unwrap();
                assert!(child.wait().unwrap().success(), "sfdisk failed");
                let json = run(sbin("sfdisk").arg("--json").arg(image)).stdout;
                let table: serde_json::Value = serde_json::from_slice(&json).unwrap();
                let parts = table["partitiontable"]["partitions"].as_array().unwrap().clone();
                let sector = |p: &serde_json::Value, k: &str| p[k].as_u64().unwrap() * 512;

                let esp = dir.join("esp.img");
                run(sbin("mkfs.vfat").arg("-C").arg(&esp).arg((sector(&parts[0], "size") / 1024).to_string()));
                let efi = dir.join("BOOTX64.EFI");
                std::fs::write(&efi, random_bytes(1 << 20, 1)).unwrap();
                run(Command::new("mmd").arg("-i").arg(&esp).args(["::/EFI", "::/EFI/BOOT"]));
                run(Command::new("mcopy").arg("-i").arg(&esp).arg(&efi).arg("::/EFI/BOOT/BOOTX64.EFI"));
                splice_sparse(image, &esp, sector(&parts[0], "start"));

                let tree = dir.join("root");
                std::fs::create_dir_all(tree.join("usr/share")).unwrap();
                std::fs::write(tree.join("usr/share/incompressible.bin"), random_bytes(12 << 20, 2)).unwrap();
                std::fs::write(tree.join("usr/share/compressible.txt"), text_bytes(12 << 20)).unwrap();
                std::fs::write(tree.join("usr/share/zeros.bin"), vec![0u8; 6 << 20]).unwrap();
                let root = dir.join("root.img");
                std::fs::File::create(&root).unwrap().set_len(sector(&parts[1], "size")).unwrap();
                run(sbin("mkfs.ext4").args(["-q", "-F", "-E", "root_owner=0:0", "-d"]).arg(&tree).arg(&root));
                splice_sparse(image, &root, sector(&parts[1], "start"));
                std::fs::remove_dir_all(&dir).unwrap();
            })
        })
        .clone();
    Fixture { name: "gpt", path }
}

/// Writes a synthetic image of `size` bytes with `(offset, bytes)` written into an otherwise sparse file.
fn synthetic(name: &'static str, size: u64, writes: &[(u64, Vec<u8>)]) -> Fixture {
    let path = cached(&format!("{name}.raw"), |tmp| {
        let f = std::fs::File::create(tmp).unwrap();
        f.set_len(size).unwrap();
        for (offset, bytes) in writes {
            f.write_all_at(bytes, *offset).unwrap();
        }
    });
    Fixture { name, path }
}

/// The small synthetic edge cases.
pub fn synthetic_cases() -> &'static [Fixture] {
    static CASES: OnceLock<Vec<Fixture>> = OnceLock::new();
    CASES.get_or_init(|| {
        vec![
            synthetic("all-holes", 64 << 20, &[]),
            synthetic("all-data", (3 << 20) + 512, &[(0, random_bytes((3 << 20) + 512, 3))]),
            synthetic("data-at-end", 48 << 20, &[((48 << 20) - 1000, random_bytes(1000, 4))]),
            synthetic("under-1mib", 300 * 1024, &[(0, text_bytes(50_000)), (200 * 1024, random_bytes(4096, 5))]),
            synthetic("exactly-1mib", 1 << 20, &[(4096, random_bytes(8192, 6))]),
        ]
    })
}

/// A sparse image over 8 GiB (9 GiB + 1 MiB) with data at the start, past 4 GiB and at the very end.
pub fn huge_sparse() -> Fixture {
    static IMG: OnceLock<Fixture> = OnceLock::new();
    IMG.get_or_init(|| {
        let size: u64 = (9 << 30) + (1 << 20);
        synthetic(
            "huge-sparse",
            size,
            &[(0, random_bytes(65536, 7)), (4 << 30, text_bytes(200_000)), (size - 4096, random_bytes(4096, 8))],
        )
    })
    .clone()
}

/// `len` pseudo-random bytes from an xorshift generator whose state is `state` (deterministic, incompressible);
/// with `nonzero`, no byte is zero, so no 4 KiB block of the result is a hole.
pub fn xorshift_bytes(state: &mut u64, len: u64, nonzero: bool) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            (*state >> 24) as u8 | u8::from(nonzero)
        })
        .collect()
}
