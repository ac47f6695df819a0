//! `uplosi convert` on realistic and edge-case images, with every output checked by tools no one here wrote:
//! qemu-img info/check/compare, gzip -t, GNU tar -tvzf and -xzf.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::Command as Cmd;
use support::fixtures::{self, Fixture, qemu_compare, run};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn uplosi() -> Cmd {
    let mut cmd = Cmd::cargo_bin("uplosi").unwrap();
    cmd.env_remove("RUST_LOG");
    cmd
}

fn convert(image: &Path, format: &str, out: &Path) {
    uplosi().args(["convert"]).arg(image).args(["--format", format, "-o"]).arg(out).assert().success();
}

fn qemu_json(args: &[&str], path: &Path) -> serde_json::Value {
    let out = run(Command::new("qemu-img").args(args).args(["--output", "json"]).arg(path));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Decodes a VHD footer independently of the implementation under test.
fn check_vhd_footer(path: &Path, raw_size: u64) {
    let bytes = std::fs::read(path).map(|b| b[b.len() - 512..].to_vec()).unwrap_or_default();
    let aligned = raw_size.div_ceil(MIB) * MIB;
    let be64 = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
    let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(&bytes[0..8], b"conectix");
    assert_eq!(be32(8), 2, "features");
    assert_eq!(be32(12), 0x0001_0000, "version");
    assert_eq!(be64(16), u64::MAX, "data offset of a fixed disk");
    assert_eq!(be64(40), aligned, "original size");
    assert_eq!(be64(48), aligned, "current size");
    assert_eq!(be32(60), 2, "disk type fixed");
    let sum: u32 = bytes.iter().enumerate().filter(|(i, _)| !(64..68).contains(i)).map(|(_, b)| u32::from(*b)).sum();
    assert_eq!(be32(64), !sum, "checksum");
    assert!(bytes[68..84].iter().any(|b| *b != 0), "unique id is random, not zero");
    assert!(bytes[85..].iter().all(|b| *b == 0));
}

fn verify_vhd(f: &Fixture, out: &Path) {
    let raw = size(&f.path);
    let aligned = raw.div_ceil(MIB) * MIB;
    assert_eq!(size(out), aligned + 512, "{}: VHD = aligned data + footer", f.name);
    let info = qemu_json(&["info", "-f", "vpc"], out);
    assert_eq!(info["virtual-size"].as_u64(), Some(aligned), "{}: qemu-img sees exactly the aligned size", f.name);
    check_vhd_footer(out, raw);
    qemu_compare(&f.path, "vpc", out);
}

fn verify_qcow2(f: &Fixture, out: &Path) {
    let check = qemu_json(&["check", "-f", "qcow2"], out);
    assert_eq!(check["check-errors"].as_u64(), Some(0), "{}: {check}", f.name);
    assert!(check.get("corruptions").is_none() && check.get("leaks").is_none(), "{}: {check}", f.name);
    let info = qemu_json(&["info", "-f", "qcow2"], out);
    assert_eq!(info["virtual-size"].as_u64(), Some(size(&f.path).div_ceil(512) * 512), "{}", f.name);
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1", "{}: qcow2 v3", f.name);
    assert_eq!(info["cluster-size"].as_u64(), Some(65536));
    qemu_compare(&f.path, "qcow2", out);
}

fn verify_targz(f: &Fixture, out: &Path, dir: &Path) {
    run(Command::new("gzip").arg("-t").arg(out));
    let listing = String::from_utf8(run(Command::new("tar").arg("-tvzf").arg(out)).stdout).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 1, "{}: exactly one member: {listing}", f.name);
    let member_size = size(&f.path).div_ceil(GIB) * GIB;
    assert!(lines[0].ends_with(" disk.raw"), "{listing}");
    assert!(lines[0].contains(&format!(" {member_size} ")), "{}: size rounded to GiB: {listing}", f.name);
    let extract = dir.join("extract");
    std::fs::create_dir_all(&extract).unwrap();
    run(Command::new("tar").arg("-xzf").arg(out).arg("-C").arg(&extract));
    let disk = extract.join("disk.raw");
    assert_eq!(size(&disk), member_size);
    qemu_compare(&f.path, "raw", &disk);
    std::fs::remove_file(&disk).unwrap();
}

fn verify_raw(f: &Fixture, out: &Path) {
    assert_eq!(size(out), size(&f.path));
    qemu_compare(&f.path, "raw", out);
    let input_blocks = std::fs::metadata(&f.path).unwrap().blocks();
    let output_blocks = std::fs::metadata(out).unwrap().blocks();
    assert!(output_blocks <= input_blocks + 8 * 64, "{}: raw copy must stay sparse", f.name);
}

fn convert_and_verify_all(f: &Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let out = |ext: &str| -> PathBuf { dir.path().join(format!("{}.{ext}", f.name)) };
    convert(&f.path, "vhd", &out("vhd"));
    verify_vhd(f, &out("vhd"));
    convert(&f.path, "qcow2", &out("qcow2"));
    verify_qcow2(f, &out("qcow2"));
    convert(&f.path, "tar.gz", &out("tar.gz"));
    verify_targz(f, &out("tar.gz"), dir.path());
    convert(&f.path, "raw", &out("raw"));
    verify_raw(f, &out("raw"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("uplosi-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn gpt_image_converts_to_every_format() {
    convert_and_verify_all(&fixtures::gpt_image());
}

#[test]
fn synthetic_edge_cases_convert_to_every_format() {
    for f in fixtures::synthetic_cases() {
        convert_and_verify_all(f);
    }
}

#[test]
fn images_over_8_gib_convert_to_every_format() {
    convert_and_verify_all(&fixtures::huge_sparse());
}

#[test]
fn qcow2_stores_only_clusters_with_data() {
    let f = fixtures::gpt_image();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.qcow2");
    convert(&f.path, "qcow2", &out);
    let map = run(Command::new("qemu-img").args(["map", "-f", "qcow2", "--output", "json"]).arg(&out)).stdout;
    let map: serde_json::Value = serde_json::from_slice(&map).unwrap();
    let allocated: u64 =
        map.as_array().unwrap().iter().filter(|e| e["data"] == true).map(|e| e["length"].as_u64().unwrap()).sum();
    let input_blocks = std::fs::metadata(&f.path).unwrap().blocks() * 512;
    assert!(allocated <= input_blocks + 64 * 65536, "allocated {allocated} of {input_blocks} data bytes");
    assert!(size(&out) < input_blocks + 4 * MIB, "file holds data clusters plus a little metadata");
}

#[test]
fn targz_skips_holes_and_compresses() {
    let f = fixtures::huge_sparse();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.tar.gz");
    convert(&f.path, "tar.gz", &out);
    assert!(size(&out) < MIB, "9 GiB of mostly holes must compress to almost nothing, got {}", size(&out));
}

#[test]
fn convert_refuses_to_overwrite_without_force() {
    let f = &fixtures::synthetic_cases()[1];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.qcow2");
    std::fs::write(&out, "precious").unwrap();
    let assert = uplosi().arg("convert").arg(&f.path).args(["--format", "qcow2", "-o"]).arg(&out).assert().code(2);
    assert!(String::from_utf8_lossy(&assert.get_output().stderr).contains("pass --force"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious");
    uplosi().arg("convert").arg(&f.path).args(["--format", "qcow2", "--force", "-o"]).arg(&out).assert().success();
    verify_qcow2(f, &out);
}

fn convert_error(image: &Path, out: &Path, code: i32) -> String {
    let assert = uplosi().arg("convert").arg(image).args(["--format", "vhd", "-o"]).arg(out).assert().code(code);
    String::from_utf8_lossy(&assert.get_output().stderr).into_owned()
}

#[test]
fn convert_rejects_bad_inputs_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.vhd");
    let err = convert_error(&dir.path().join("missing.raw"), &out, 2);
    assert!(err.contains("missing.raw") && err.contains("No such file"), "{err}");
    let err = convert_error(dir.path(), &out, 2);
    assert!(err.contains("is a directory"), "{err}");

    let vmdk = dir.path().join("in.vmdk");
    run(Command::new("qemu-img").args(["create", "-q", "-f", "vmdk"]).arg(&vmdk).arg("16M"));
    let err = convert_error(&vmdk, &out, 2);
    assert!(err.contains("is a VMDK image") && err.contains("qemu-img convert -O raw"), "{err}");

    let gz = dir.path().join("in.raw.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]).unwrap();
    let err = convert_error(&gz, &out, 2);
    assert!(err.contains("gzip-compressed") && err.contains("decompress"), "{err}");

    let empty = dir.path().join("empty.raw");
    std::fs::write(&empty, "").unwrap();
    assert!(convert_error(&empty, &out, 2).contains("is empty"));
    assert!(!out.exists());
}

#[test]
fn convert_rejects_bad_outputs_clearly() {
    let f = &fixtures::synthetic_cases()[1];
    let dir = tempfile::tempdir().unwrap();
    let err = convert_error(&f.path, dir.path(), 2);
    assert!(err.contains("is a directory; give a file name"), "{err}");
    let err = convert_error(&f.path, &f.path, 2);
    assert!(err.contains("is the input image itself"), "{err}");
    let err = convert_error(&f.path, &dir.path().join("no/such/dir/o.vhd"), 1);
    assert!(err.contains("cannot create a temporary file in"), "{err}");
}

/// Unmounts on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_fails_clearly_and_leaves_nothing() {
    let f = fixtures::gpt_image();
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("mount").args(["-t", "tmpfs", "-o", "size=4M", "tmpfs"]).arg(dir.path()).status();
    assert!(status.is_ok_and(|s| s.success()), "this test needs root to mount a 4 MiB tmpfs (CI runs as root)");
    let _mount = Mount(dir.path().to_path_buf());
    let out = dir.path().join("o.qcow2");
    let assert = uplosi().arg("convert").arg(&f.path).args(["--format", "qcow2", "-o"]).arg(&out).assert().code(1);
    let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(err.contains("no space left"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the temporary file must be removed");
}

#[test]
fn interrupted_convert_leaves_no_half_file() {
    let f = fixtures::gpt_image();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.tar.gz");
    let bin = assert_cmd::cargo::cargo_bin("uplosi");
    let child = Command::new(bin)
        .arg("convert")
        .arg(&f.path)
        .args(["--format", "tar.gz", "--level", "9", "-o"])
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the temporary output exists, then interrupt.
    let started = std::time::Instant::now();
    while std::fs::read_dir(dir.path()).unwrap().count() == 0 && started.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    support::interrupt(&child);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "a level-9 tar.gz of 200 MiB cannot finish in milliseconds: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no half-written file may remain");
}
