//! Reliability under injected faults: a seeded proxy (`tests/support/fault_proxy.py`) between uplosi and each
//! emulator answers data-plane requests with 500, 503, 429 (Retry-After), connection resets or delays. At 20 % the
//! upload succeeds with byte-identical content; at 100 % it gives up within the retry budget and leaves nothing
//! behind. Every log is scanned for secrets.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::faults::FaultProxy;
use support::fixtures::{self, qemu_compare};
use support::glance::Glance;
use support::moto;

/// Glance's data plane: the image upload.
const GLANCE_DATA: &str = "^PUT /v2/images/[^/]+/file$";
/// EBS direct's data plane: block writes.
const EBS_DATA: &str = "^PUT /snapshots/[^/]+/blocks/";
/// The faults that never let a request through (a delay forwards it in the end).
const FAILING: &str = "500,503,429,reset";

fn assert_no_secrets(log: &str) {
    for secret in ["Signature=", "X-Amz-Signature", "Credential=", "SECRET_ACCESS", "X-Auth-Token:"] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
}

fn openstack_workspace(endpoint: &str, image: &Path) -> support::Workspace {
    let ws = support::Workspace::with_image(
        "[base]\nname = \"podvm\"\nimageVersionFile = \"version.txt\"\nprovider = \"openstack\"\n[base.openstack]\ncloud = \"test\"\n",
        image,
    );
    ws.write(
        "clouds.yaml",
        &format!("clouds:\n  test:\n    auth_type: none\n    image_endpoint_override: {endpoint}\n"),
    );
    ws
}

fn openstack_uplosi(ws: &support::Workspace) -> std::process::Command {
    support::glance::uplosi_in(ws.path())
}

#[test]
fn openstack_upload_survives_faults_and_gives_up_cleanly_when_every_upload_fails() {
    let glance = Glance::start();
    let image = fixtures::gpt_image();

    // Seed 18 resets the first upload after it was sent in full; the second attempt goes through.
    let proxy = FaultProxy::start(&glance.url, GLANCE_DATA, 0.2, 18, "500,503,429,reset,delay");
    let ws = openstack_workspace(&proxy.url, &image.path);
    let out = openstack_uplosi(&ws).args(["upload", "system.raw", "-i", "-v"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(proxy.stats()["faults"], serde_json::json!({"reset": 1}), "{}", proxy.stats());
    assert!(stderr.contains("sending the data again (attempt 2)"), "{stderr}");
    let id = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    let downloaded = ws.path().join("downloaded.qcow2");
    glance.download(&id, &downloaded);
    let converted = ws.path().join("converted.qcow2");
    let convert = openstack_uplosi(&ws)
        .args(["convert", "system.raw", "-f", "qcow2", "-o"])
        .arg(&converted)
        .output()
        .expect("run");
    assert!(convert.status.success());
    assert!(std::fs::read(&downloaded).expect("read") == std::fs::read(&converted).expect("read"));
    qemu_compare(&image.path, "qcow2", &downloaded);
    assert_no_secrets(&stderr);

    // Every upload fails: the retry budget runs out, the record is deleted, the version stays.
    let proxy = FaultProxy::start(&glance.url, GLANCE_DATA, 1.0, 5, FAILING);
    let ws = openstack_workspace(&proxy.url, &image.path);
    // Another name, so the first image is not replaced.
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"podvm\"\nimageVersionFile = \"version.txt\"\nprovider = \"openstack\"\n[base.openstack]\ncloud = \"test\"\nimageName = \"faulty\"\n",
    );
    let started = Instant::now();
    let out = openstack_uplosi(&ws).args(["upload", "system.raw", "-i"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(150), "gave up after {:?}", started.elapsed());
    assert_eq!(proxy.stats()["matched"], 8, "eight attempts in all: {}", proxy.stats());
    assert!(stderr.contains("deleted the unfinished image"), "{stderr}");
    let images = glance.images().expect("list");
    assert_eq!(images.len(), 1, "only the first test's image is left: {images:?}");
    assert_eq!(images[0]["id"], id.as_str());
    assert_eq!(ws.read("version.txt").trim(), "1.2.3");
    assert_no_secrets(&stderr);
}

/// No AMI named podvm-1.2.3 and no snapshot uplosi started for it (StartSnapshot sets the description).
fn assert_nothing_in_aws(runtime: &tokio::runtime::Runtime, moto_url: &str, context: &str) {
    runtime.block_on(async {
        let conf = moto::sdk_config(moto_url, "us-east-1").await;
        assert!(moto::images_named(&conf, "podvm-1.2.3").await.is_empty(), "AMI left {context}");
        let ec2 = aws_sdk_ec2::Client::new(&conf);
        let left = ec2.describe_snapshots().owner_ids("self").send().await.expect("DescribeSnapshots");
        let ours: Vec<_> = left
            .snapshots()
            .iter()
            .filter(|s| s.description() == Some("podvm-1.2.3"))
            .map(|s| s.snapshot_id())
            .collect();
        assert!(ours.is_empty(), "snapshots left {context}: {ours:?}");
    });
}

fn aws_workspace(image: &Path) -> support::Workspace {
    support::Workspace::with_image(
        "[base]\nname = \"podvm\"\nimageVersionFile = \"version.txt\"\nprovider = \"aws\"\n[base.aws]\nregion = \"us-east-1\"\n",
        image,
    )
}

#[test]
fn aws_upload_survives_faults_on_a_fifth_of_the_blocks_and_gives_up_cleanly_at_all() {
    let server = moto::start();
    let image = fixtures::gpt_image();

    let proxy = FaultProxy::start(&server.url, EBS_DATA, 0.2, 7, "500,503,429,reset,delay");
    let ws = aws_workspace(&image.path);
    let out =
        moto::uplosi_command(ws.path(), &proxy.url).args(["upload", "system.raw", "-i", "-v"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(proxy.faults() >= 5, "faults were injected: {}", proxy.stats());
    assert_eq!(ws.read("version.txt").trim(), "1.2.4");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let snapshots: Vec<String> = runtime.block_on(async {
        let conf = moto::sdk_config(&server.url, "us-east-1").await;
        let amis = moto::images_named(&conf, "podvm-1.2.3").await;
        assert_eq!(amis.len(), 1);
        amis[0]
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
            .collect()
    });
    assert!(!snapshots.is_empty());
    let line = stderr.lines().find(|l| l.contains("snapshot snap-") && l.contains("complete")).expect("snapshot line");
    let uploaded = line.split_whitespace().find(|w| w.starts_with("snap-")).expect("snapshot id");
    moto::assert_snapshot_equals_image(&server.url, uploaded, &image.path);
    assert_no_secrets(&stderr);

    // Every block write fails: the upload gives up within the retry budget and deletes its snapshot.
    let server = moto::start();
    let proxy = FaultProxy::start(&server.url, EBS_DATA, 1.0, 3, FAILING);
    let ws = aws_workspace(&image.path);
    let started = Instant::now();
    let out = moto::uplosi_command(ws.path(), &proxy.url).args(["upload", "system.raw", "-i"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(240), "gave up after {:?}", started.elapsed());
    assert_nothing_in_aws(&runtime, &server.url, "after giving up");
    assert_eq!(ws.read("version.txt").trim(), "1.2.3");
    assert_no_secrets(&stderr);
}

/// Seeded points in time (ms) between `from` and `to`: xorshift, so every run interrupts at the same points.
fn points(seed: u64, count: usize, from: u64, to: u64) -> Vec<u64> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            from + state % (to - from)
        })
        .collect()
}

/// Runs `cmd`, sends SIGINT after `after_ms`, and returns its exit code and stderr.
fn interrupt_after(mut cmd: std::process::Command, after_ms: u64) -> (Option<i32>, String) {
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn");
    std::thread::sleep(Duration::from_millis(after_ms));
    support::interrupt(&child);
    let out = child.wait_with_output().expect("wait");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn ctrl_c_at_seeded_points_leaves_nothing_in_glance_and_the_version_unchanged() {
    let glance = Glance::start();
    // Every image upload held 10 s by the proxy: the points fall into checking, scanning, creating and sending.
    let proxy = FaultProxy::start_with_delay(&glance.url, GLANCE_DATA, 1.0, 1, "delay", 10.0);
    let image = fixtures::gpt_image();
    for at in points(11, 5, 100, 2500) {
        let ws = openstack_workspace(&proxy.url, &image.path);
        let mut cmd = openstack_uplosi(&ws);
        cmd.args(["upload", "system.raw", "-i"]);
        let (code, stderr) = interrupt_after(cmd, at);
        assert_eq!(code, Some(130), "SIGINT after {at} ms: {stderr}");
        assert_eq!(glance.images().expect("list"), Vec::<serde_json::Value>::new(), "after {at} ms: {stderr}");
        assert_eq!(ws.read("version.txt").trim(), "1.2.3", "after {at} ms");
        assert_no_secrets(&stderr);
    }
}

#[test]
fn ctrl_c_at_seeded_points_leaves_no_snapshot_or_ami_in_aws() {
    let server = moto::start();
    // Every block write held 10 s: the points fall into checking, scanning and uploading.
    let proxy = FaultProxy::start_with_delay(&server.url, EBS_DATA, 1.0, 1, "delay", 10.0);
    let image = fixtures::gpt_image();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for at in points(23, 5, 100, 3000) {
        let ws = aws_workspace(&image.path);
        let mut cmd = moto::uplosi_command(ws.path(), &proxy.url);
        cmd.args(["upload", "system.raw", "-i"]);
        let (code, stderr) = interrupt_after(cmd, at);
        assert_eq!(code, Some(130), "SIGINT after {at} ms: {stderr}");
        assert_nothing_in_aws(&runtime, &server.url, &format!("after SIGINT at {at} ms: {stderr}"));
        assert_eq!(ws.read("version.txt").trim(), "1.2.3", "after {at} ms");
        assert_no_secrets(&stderr);
    }
}

#[test]
fn ctrl_c_at_seeded_points_leaves_no_file_behind() {
    use std::os::unix::fs::FileExt;
    // 192 MiB of random letters (compressible, so deflate works hard) as tar.gz: long enough that every point
    // falls before the end.
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("data.raw");
    let file = std::fs::File::create(&image).expect("create");
    file.set_len(512 << 20).expect("size");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut chunk = vec![0u8; 16 << 20];
    for i in 0..12u64 {
        for b in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = b'a' + (state % 16) as u8;
        }
        file.write_all_at(&chunk, (i * 40) << 20).expect("write");
    }
    for at in points(31, 5, 100, 900) {
        let ws = support::Workspace::new();
        ws.write(
            "uplosi.conf",
            "[base]\nname = \"podvm\"\nimageVersionFile = \"version.txt\"\nprovider = \"file\"\n[base.file]\n\
             path = \"pool/{{.Name}}-{{.Version}}.tar.gz\"\nformat = \"tar.gz\"\n",
        )
        .write("version.txt", "1.2.3\n");
        std::fs::create_dir_all(ws.path().join("pool")).expect("pool");
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("uplosi"));
        cmd.current_dir(ws.path()).env_remove("RUST_LOG").arg("upload").arg(&image).arg("-i");
        let (code, stderr) = interrupt_after(cmd, at);
        assert_eq!(code, Some(130), "SIGINT after {at} ms: {stderr}");
        let left: Vec<_> = std::fs::read_dir(ws.path().join("pool")).expect("pool").collect();
        assert!(left.is_empty(), "after {at} ms: {left:?}");
        assert_eq!(ws.read("version.txt").trim(), "1.2.3", "after {at} ms");
    }
}
