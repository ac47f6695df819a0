//! The libvirt provider against Debian's libvirtd on its own socket, with a `dir` pool per test; read back with
//! virsh and qemu-img.

mod support;

use std::path::Path;
use std::process::Output;

use support::Workspace;
use support::libvirt::{self, Pool};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn config(pool: &Pool, extra: &str) -> String {
    format!(
        "[base]\nname = \"podvm\"\nimageVersionFile = \"version.txt\"\nprovider = \"libvirt\"\n\n[base.libvirt]\nuri = \"{}\"\npool = \"{}\"\n{extra}\n",
        libvirt::uri(),
        pool.name
    )
}

fn upload(ws: &Workspace, args: &[&str]) -> Output {
    ws.uplosi()
        .args(["upload", "system.raw"])
        .args(args)
        .timeout(std::time::Duration::from_secs(300))
        .output()
        .expect("run")
}

#[test]
fn a_qcow2_volume_is_created_with_its_capacity_filled_and_read_back() {
    let pool = Pool::new();
    let image = &support::fixtures::synthetic_cases()[1];
    let ws = Workspace::with_image(&config(&pool, "capacity = \"20G\""), &image.path);
    let out = upload(&ws, &["-i", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let volume = "podvm-1.2.3.qcow2";
    assert_eq!(pool.volumes(), [volume]);
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let path = pool.path(volume);
    assert_eq!(run["references"][0]["reference"], path.display().to_string(), "the volume's path");
    let details = &run["variants"][0]["details"];
    assert_eq!(details["key"], path.display().to_string(), "{details}");
    assert_eq!(details["pool"], pool.name);
    assert_eq!(pool.format(volume), "qcow2");
    let (capacity, allocation) = pool.info(volume);
    assert_eq!(capacity, 20 << 30, "as asked");
    assert!(allocation < 64 << 20, "only the data is stored: {allocation}");
    assert_eq!(details["capacity"], capacity);
    // The qcow2 is the image, and 20 GiB in size.
    let compare = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&path)
        .arg(&image.path)
        .output()
        .expect("qemu-img");
    let said = text(&compare.stdout);
    assert!(said.contains("Images are identical") || said.contains("size mismatch"), "{said}{}", text(&compare.stderr));
    let check = std::process::Command::new("qemu-img").arg("check").arg(&path).status().expect("qemu-img");
    assert!(check.success());
    // Equal up to the image's size, zeros after: convert back and compare the first part byte for byte.
    let back = ws.path().join("back.raw");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&path)
        .arg(&back)
        .status()
        .expect("convert");
    assert!(status.success());
    let original = std::fs::read(&image.path).expect("image");
    let mut file = std::fs::File::open(&back).expect("back");
    let mut head = vec![0u8; original.len()];
    std::io::Read::read_exact(&mut file, &mut head).expect("read");
    assert!(head == original, "the image is the volume's start");
    assert_eq!(ws.read("version.txt"), "1.2.4\n");
}

#[test]
fn a_raw_volume_keeps_its_holes() {
    let pool = Pool::new();
    let image = support::fixtures::huge_sparse();
    let ws = Workspace::with_image(
        &config(&pool, "format = \"raw\"\nvolumeName = \"{{.Name}}-{{.Version}}.img\""),
        &image.path,
    );
    let out = upload(&ws, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let volume = "podvm-1.2.3.img";
    assert_eq!(pool.format(volume), "raw");
    let (capacity, allocation) = pool.info(volume);
    let size = std::fs::metadata(&image.path).expect("image").len();
    assert_eq!(capacity, size);
    assert!(allocation < 64 << 20, "holes were sent as holes: {allocation} of {capacity} bytes allocated");
    support::fixtures::qemu_compare(&image.path, "raw", &pool.path(volume));
}

#[test]
fn replace_false_refuses_an_existing_volume_and_true_replaces_it() {
    let pool = Pool::new();
    let image = &support::fixtures::synthetic_cases()[1];
    let ws = Workspace::with_image(&config(&pool, "replace = false"), &image.path);
    assert!(upload(&ws, &[]).status.success());
    let before = std::fs::read(pool.path("podvm-1.2.3.qcow2")).expect("volume");
    let out = upload(&ws, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("volume \"podvm-1.2.3.qcow2\" exists") && stderr.contains("replace = false"), "{stderr}");
    assert_eq!(std::fs::read(pool.path("podvm-1.2.3.qcow2")).expect("volume"), before, "untouched");
    ws.write("uplosi.conf", &config(&pool, "replace = true"));
    let out = upload(&ws, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("replacing volume"), "{}", text(&out.stderr));
    assert_eq!(pool.volumes(), ["podvm-1.2.3.qcow2"]);
}

/// A 2 GiB image of data (one random MiB repeated): long enough to interrupt.
fn big_image(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::FileExt;
    let path = dir.join("big.raw");
    let file = std::fs::File::create(&path).expect("image");
    let mut state = 7u64;
    let block = support::fixtures::xorshift_bytes(&mut state, 1 << 20, true);
    for mib in 0..2048u64 {
        file.write_all_at(&block, mib << 20).expect("write");
    }
    path
}

#[test]
fn ctrl_c_deletes_the_volume_it_created() {
    let pool = Pool::new();
    let dir = tempfile::tempdir().expect("dir");
    let image = big_image(dir.path());
    let ws = Workspace::with_image(&config(&pool, "format = \"raw\""), &image);
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("uplosi"))
        .current_dir(ws.path())
        .env_remove("RUST_LOG")
        .args(["upload", "system.raw"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    support::wait_until("the volume", std::time::Duration::from_secs(60), || pool.path("podvm-1.2.3.qcow2").exists());
    std::thread::sleep(std::time::Duration::from_millis(100));
    support::interrupt(&child);
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(pool.volumes().is_empty(), "the volume is gone: {stderr}");
    assert_eq!(ws.read("version.txt"), "1.2.3\n");
}

#[test]
fn delete_and_prune_read_versions_back_from_volume_names() {
    let pool = Pool::new();
    let image = &support::fixtures::synthetic_cases()[1];
    let ws = Workspace::with_image(&config(&pool, ""), &image.path);
    for version in ["1.2.3", "1.2.4", "1.2.5"] {
        ws.write("version.txt", &format!("{version}\n"));
        assert!(upload(&ws, &[]).status.success());
    }
    libvirt::virsh(&["vol-create-as", &pool.name, "podvm-latest.qcow2", "1M", "--format", "qcow2"]);
    let out = ws.uplosi().args(["delete", "1.2.3", "--yes", "--output", "json"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(pool.volumes(), ["podvm-1.2.4.qcow2", "podvm-1.2.5.qcow2", "podvm-latest.qcow2"]);
    let out = ws.uplosi().args(["prune", "--keep", "1", "--yes"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        pool.volumes(),
        ["podvm-1.2.5.qcow2", "podvm-latest.qcow2"],
        "a name without a version is never touched"
    );
}

#[test]
fn bad_libvirt_settings_are_exit_2_naming_them() {
    let pool = Pool::new();
    let image = &support::fixtures::synthetic_cases()[1];
    let ws = Workspace::with_image(&config(&pool, "format = \"vmdk\"\ncapacity = \"lots\""), &image.path);
    let err = ws.config_error(&[]);
    assert!(err.contains("format \"vmdk\" must be one of qcow2, raw"), "{err}");
    assert!(err.contains("capacity \"lots\" is not a size"), "{err}");
    ws.write("uplosi.conf", &config(&pool, "capacity = \"1M\""));
    let out = upload(&ws, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is smaller than the image"), "{}", text(&out.stderr));
    ws.write(
        "uplosi.conf",
        &config(&pool, "").replace(&format!("pool = \"{}\"", pool.name), "pool = \"no-such-pool\""),
    );
    let out = upload(&ws, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("storage pool \"no-such-pool\" cannot be found"), "{}", text(&out.stderr));
    assert!(pool.volumes().is_empty());
}
