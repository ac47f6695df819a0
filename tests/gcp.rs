//! GCP against a real fake-gcs-server (Cloud Storage) behind the fault proxy, and `tests/support/gce.py`, the HTTPS
//! fake of the Compute Engine images API, reached through the standard ways: `GOOGLE_APPLICATION_CREDENTIALS` (a
//! service-account key), `STORAGE_EMULATOR_HOST`, `computeEndpoint` and `SSL_CERT_FILE`.

mod support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::gcp::{self, Gcp, Options};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const IMAGE: &str = "podvm-1-2-3";
const OBJECT: &str = "podvm-1-2-3.tar.gz";
const BUCKET: &str = "podvm-uploads";

/// A 148 MiB + 4097 byte image (not MiB-aligned) with incompressible data in several runs, 140 MiB of it in one run
/// so the archive takes three chunks (64 + 64 + 12 MiB), a zero block inside data, a long hole, and data up to the
/// last byte.
fn image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.raw");
    let size = 148 * MIB + 4097;
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(size).expect("size");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = |len: u64| support::fixtures::xorshift_bytes(&mut state, len, false);
    for (at, len) in [(0, 64 << 10), (MIB, 140 * MIB), (142 * MIB, 4096), (142 * MIB + 8192, 4096), (size - 9000, 9000)]
    {
        file.write_all_at(&random(len), at).expect("write");
    }
    path
}

fn config(gcp: &Gcp, extra: &str) -> String {
    format!(
        r#"[base]
name = "podvm"
imageVersionFile = "version.txt"
provider = "gcp"

[base.gcp]
{keys}bucket = "{BUCKET}"
{extra}

[variant.default]
"#,
        keys = gcp.config(BUCKET).replace(&format!("bucket = \"{BUCKET}\"\n"), ""),
    )
}

fn workspace(gcp: &Gcp, extra: &str) -> (support::Workspace, PathBuf) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let raw = image(scratch.path());
    let ws = support::Workspace::with_image(&config(gcp, extra), &raw);
    let kept = ws.adopt_image(&raw);
    (ws, kept)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// No private key material or bearer token in the log.
fn assert_no_secrets(stderr: &str) {
    assert!(!stderr.contains("PRIVATE KEY"), "key in the log:\n{stderr}");
    assert!(!stderr.contains("Bearer ey"), "token in the log:\n{stderr}");
}

/// The disk the fake unpacked equals the image padded with zeros to a whole GiB.
fn assert_disk_is_the_padded_image(gcp: &Gcp, raw: &Path) {
    let disk = gcp.disk(IMAGE);
    let size = std::fs::metadata(&disk).expect("unpacked disk").len();
    assert_eq!(size, GIB, "disk.raw is the image size rounded up to a whole GiB");
    let padded = raw.with_extension("padded");
    std::fs::copy(raw, &padded).expect("copy");
    std::fs::OpenOptions::new().write(true).open(&padded).expect("open").set_len(GIB).expect("pad");
    let cmp = std::process::Command::new("cmp").arg(&padded).arg(&disk).output().expect("cmp");
    assert!(cmp.status.success(), "disk.raw differs from the padded image: {}", text(&cmp.stdout));
    std::fs::remove_file(&padded).expect("remove");
}

#[test]
fn end_to_end_streams_the_archive_and_creates_a_private_image_in_its_family() {
    let gcp = Gcp::start(Options::default());
    let extra = r#"architecture = "ARM64"
guestOsFeatures = ["GVNIC", "SEV_SNP_CAPABLE", "TDX_CAPABLE", "UEFI_COMPATIBLE"]
labels = { team = "podvm", release = "stable" }
description = "podvm image"
storageLocations = ["eu"]"#;
    let (ws, raw) = workspace(&gcp, extra);
    assert!(gcp.bucket(BUCKET).is_none());
    let out = support::upload_to(&gcp, &ws, &["-v"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(text(&out.stdout), format!("projects/{}/global/images/{IMAGE}\n", gcp::PROJECT));

    let images = gcp.images();
    let image = &images[IMAGE];
    assert_eq!(image["status"], "READY");
    assert_eq!(image["family"], "podvm");
    assert_eq!(image["architecture"], "ARM64");
    assert_eq!(image["description"], "podvm image");
    assert_eq!(image["storageLocations"], serde_json::json!(["eu"]));
    assert_eq!(
        image["labels"],
        serde_json::json!({"team": "podvm", "release": "stable", "uplosi-name": "podvm", "uplosi-version": "1-2-3"}),
        "the configured labels and uplosi's own"
    );
    let features: Vec<&str> =
        image["guestOsFeatures"].as_array().expect("features").iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(features, ["GVNIC", "SEV_SNP_CAPABLE", "TDX_CAPABLE", "UEFI_COMPATIBLE"]);
    assert_eq!(image["rawDisk"]["source"], format!("https://storage.googleapis.com/{BUCKET}/{OBJECT}"));
    assert_eq!(image["rawDisk"]["containerType"], "TAR");
    assert_eq!(image["_unpacked"]["type"], "S", "disk.raw is an old-GNU sparse member");
    assert_disk_is_the_padded_image(&gcp, &raw);

    // Private: no IAM change without publish = true.
    assert!(gcp.calls("POST", &format!("/images/{IMAGE}/setIamPolicy")).is_empty());
    assert_eq!(image["_policy"]["bindings"], serde_json::json!([]));
    // The bucket was made, the object is gone, and the bytes sent are the archive, once.
    assert!(gcp.bucket(BUCKET).is_some(), "bucket created");
    assert!(gcp.objects(BUCKET).is_empty(), "objects left: {:?}", gcp.objects(BUCKET));
    let archive = image["archiveSizeBytes"].as_str().and_then(|s| s.parse::<u64>().ok()).expect("archive size");
    assert_eq!(gcp.proxy.stats()["matched_bytes"].as_u64(), Some(archive), "each archive byte sent once");
    assert_eq!(gcp.proxy.stats()["matched"], 3, "the archive went up in three chunks, as it was produced:\n{stderr}");
    assert!(stderr.contains("CRC32C verified"), "{stderr}");
    assert_eq!(ws.read("version.txt"), "1.2.3\n", "upload without -i keeps the version");
    assert_no_secrets(&stderr);
}

#[test]
fn publish_grants_image_users_deprecate_older_marks_the_family_and_replace_is_honoured() {
    let gcp =
        Gcp::start(Options { seed_images: vec![("podvm-1-2-2", "podvm"), ("other-1", "other")], ..Options::default() });
    let (ws, _raw) = workspace(&gcp, "publish = true\ndeprecateOlder = true");
    let out = support::upload_to(&gcp, &ws, &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let images = gcp.images();
    let bindings = &images[IMAGE]["_policy"]["bindings"];
    assert_eq!(
        bindings,
        &serde_json::json!([{"role": "roles/compute.imageUser", "members": ["allAuthenticatedUsers"]}])
    );
    let old = &images["podvm-1-2-2"]["deprecated"];
    assert_eq!(old["state"], "DEPRECATED");
    assert!(old["replacement"].as_str().is_some_and(|r| r.ends_with(&format!("/global/images/{IMAGE}"))), "{old}");
    assert!(images["other-1"].get("deprecated").is_none(), "another family is left alone");
    assert!(images[IMAGE].get("deprecated").is_none(), "the new image is not deprecated");

    // replace = false: exit 2 before any data moves.
    ws.write("uplosi.conf", &config(&gcp, "replace = false"));
    let chunks_before = gcp.proxy.stats()["matched"].as_u64();
    let out = support::upload_to(&gcp, &ws, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("image {IMAGE} already exists")) && stderr.contains("replace"), "{stderr}");
    assert_eq!(gcp.proxy.stats()["matched"].as_u64(), chunks_before, "nothing uploaded");

    // The default replaces it: the old image is deleted (and logged), a new one created.
    ws.write("uplosi.conf", &config(&gcp, ""));
    let out = support::upload_to(&gcp, &ws, &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("deleting the existing image"), "{stderr}");
    assert_eq!(gcp.calls("DELETE", &format!("/global/images/{IMAGE}")).len(), 1);
    assert_eq!(gcp.calls("POST", "/global/images").iter().filter(|r| r["status"] == 200).count(), 2);
    assert_eq!(gcp.images()[IMAGE]["_policy"]["bindings"], serde_json::json!([]), "the new image is private");
}

#[test]
fn a_chunk_that_fails_twice_is_resent_and_the_disk_is_exact() {
    let gcp = Gcp::start(Options { script: "503,503", ..Options::default() });
    let (ws, raw) = workspace(&gcp, "");
    let out = support::upload_to(&gcp, &ws, &["-v"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(gcp.proxy.faults(), 2);
    assert!(stderr.contains("2 chunk(s) sent again"), "{stderr}");
    assert_disk_is_the_padded_image(&gcp, &raw);
    assert!(gcp.objects(BUCKET).is_empty());
}

#[test]
fn with_a_fifth_of_chunks_faulted_the_disk_is_still_exact() {
    let gcp = Gcp::start(Options { fault_rate: 0.2, faults: "500,503,429,reset,delay", ..Options::default() });
    let (ws, raw) = workspace(&gcp, "");
    let out = support::upload_to(&gcp, &ws, &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(gcp.proxy.faults() >= 2, "the seeded faults were injected: {}", gcp.proxy.stats());
    assert_disk_is_the_padded_image(&gcp, &raw);
    assert!(gcp.objects(BUCKET).is_empty());
    assert_no_secrets(&stderr);
}

#[test]
fn a_chunk_that_keeps_failing_is_retried_then_nothing_is_left() {
    let gcp = Gcp::start(Options { fault_rate: 1.0, faults: "503", ..Options::default() });
    let (ws, _raw) = workspace(&gcp, "");
    let started = Instant::now();
    let out = support::upload_to(&gcp, &ws, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(120), "retries are bounded");
    assert_eq!(gcp.proxy.faults(), 8, "the first chunk is tried 8 times, then the run stops:\n{stderr}");
    assert!(stderr.contains("503"), "{stderr}");
    assert!(gcp.objects(BUCKET).is_empty(), "objects left: {:?}", gcp.objects(BUCKET));
    assert!(gcp.calls("POST", "/global/images").is_empty(), "no image from a failed upload");
}

#[test]
fn ctrl_c_during_the_upload_leaves_no_object_and_the_version_file_alone() {
    let gcp = Gcp::start(Options { fault_rate: 1.0, faults: "delay", ..Options::default() });
    let (ws, _raw) = workspace(&gcp, "");
    let child = support::spawn_release(&gcp, &ws);
    support::wait_until("a chunk upload", Duration::from_secs(60), || {
        gcp.proxy.stats()["matched"].as_u64().unwrap_or(0) > 0
    });
    support::interrupt(&child);
    let out = child.wait_with_output().expect("wait");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(out.stdout.is_empty());
    std::thread::sleep(Duration::from_secs(2));
    assert!(gcp.objects(BUCKET).is_empty(), "objects left: {:?}", gcp.objects(BUCKET));
    assert!(gcp.calls("POST", "/global/images").is_empty());
    assert_eq!(ws.read("version.txt"), "1.2.3\n", "version file untouched");
}

#[test]
fn a_failed_insert_operation_exits_1_with_the_message_and_deletes_object_and_image() {
    let gcp = Gcp::start(Options {
        fail_insert: Some("The disk image is not bootable: no EFI partition"),
        ..Options::default()
    });
    let (ws, _raw) = workspace(&gcp, "");
    let out = support::upload_to(&gcp, &ws, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("INVALID_IMAGE") && stderr.contains("no EFI partition"), "{stderr}");
    assert!(gcp.objects(BUCKET).is_empty());
    assert!(!gcp.images().contains_key(IMAGE), "the failed image was deleted");
    assert!(out.stdout.is_empty());
}

#[test]
fn missing_or_wrong_credentials_stop_before_any_work() {
    let gcp = Gcp::start(Options::default());
    let (ws, _raw) = workspace(&gcp, "");
    let home = tempfile::tempdir().expect("home");
    // No key file, no gcloud credentials, and a metadata server that is not there.
    let mut cmd = ws.uplosi();
    gcp.env(&mut cmd)
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env("HOME", home.path())
        .env("GCE_METADATA_HOST", "127.0.0.1:9");
    let started = Instant::now();
    let out = cmd.args(["upload", "system.raw"]).timeout(Duration::from_secs(120)).output().expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no usable Google Cloud credentials") && stderr.contains("metadata server"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(gcp.requests().is_empty(), "no request without credentials: {:?}", gcp.requests());

    // A key file that does not exist: named, exit 2.
    let mut cmd = ws.uplosi();
    gcp.env(&mut cmd).env("GOOGLE_APPLICATION_CREDENTIALS", ws.path().join("missing.json"));
    let out = cmd.args(["upload", "system.raw"]).output().expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing.json"), "{stderr}");

    // A key the project does not know: Google's 401 in the preflight, exit 2, nothing uploaded.
    let stranger = gcp::service_account_key(home.path());
    let mut cmd = ws.uplosi();
    gcp.env(&mut cmd).env("GOOGLE_APPLICATION_CREDENTIALS", &stranger);
    let out = cmd.args(["upload", "system.raw"]).output().expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("project {} is not reachable", gcp::PROJECT)), "{stderr}");
    assert_eq!(gcp.proxy.stats()["matched"], 0, "nothing uploaded");
    assert_no_secrets(&stderr);
}

#[test]
fn sigint_at_seeded_points_leaves_no_object_no_image_and_the_version_file_alone() {
    let gcp = Gcp::start(Options { fault_rate: 1.0, faults: "delay", polls: 3, ..Options::default() });
    let (ws, _raw) = workspace(&gcp, "");
    let mut state = 0x6c9_u64;
    let mut next = |bound: u64| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    // After which event to interrupt: the Nth chunk reaching the proxy, or an images API call.
    let points = [("chunk", 1), ("chunk", 2), ("chunk", 3), ("POST", 1), ("GET-operation", 1)];
    for (round, (event, nth)) in points.into_iter().enumerate() {
        let wait_ms = next(800);
        let count = |gcp: &Gcp| -> u64 {
            match event {
                "chunk" => gcp.proxy.stats()["matched"].as_u64().unwrap_or(0),
                "POST" => gcp.calls("POST", "/global/images").len() as u64,
                _ => gcp
                    .requests()
                    .iter()
                    .filter(|r| r["path"].as_str().is_some_and(|p| p.contains("/operations/")))
                    .count() as u64,
            }
        };
        let before = count(&gcp);
        let child = support::spawn_release(&gcp, &ws);
        support::wait_until(&format!("round {round}: {event} #{nth}"), Duration::from_secs(120), || {
            count(&gcp) >= before + nth
        });
        std::thread::sleep(Duration::from_millis(wait_ms));
        support::interrupt(&child);
        let out = child.wait_with_output().expect("wait");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "round {round} ({event} #{nth} + {wait_ms} ms):\n{stderr}");
        assert!(out.stdout.is_empty(), "round {round}: no reference after Ctrl-C");
        std::thread::sleep(Duration::from_secs(2));
        assert!(gcp.objects(BUCKET).is_empty(), "round {round}: objects left: {:?}", gcp.objects(BUCKET));
        assert!(!gcp.images().contains_key(IMAGE), "round {round}: an interrupted image was deleted:\n{stderr}");
        assert_eq!(ws.read("version.txt"), "1.2.3\n", "round {round}: version file untouched");
        assert_no_secrets(&stderr);
    }
}
