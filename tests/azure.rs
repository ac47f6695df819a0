//! Azure against a real Azurite (page blobs) behind the page-checking fault proxy, and `tests/support/arm.py`, the
//! HTTPS fake of Resource Manager and the Entra ID token endpoint, reached through the standard credential
//! environment (`AZURE_CLIENT_SECRET`, `AZURE_AUTHORITY_HOST`), `resourceManagerEndpoint` and `SSL_CERT_FILE`.

mod support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::azure::{self, Azure, Options};
use support::fixtures::qemu_compare;

const MIB: u64 = 1 << 20;

/// A 40 MiB + 4097 byte image (not MiB-aligned, last page partial) with data at the start, a 6 MiB run crossing
/// the 4 MiB Put Page limit, a zero 4 KiB block inside data, a long hole, and data up to the last byte.
fn image(dir: &Path) -> (PathBuf, Vec<(u64, u64)>) {
    let path = dir.join("disk.raw");
    let size = 40 * MIB + 4097;
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(size).expect("size");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = |len: u64| support::fixtures::xorshift_bytes(&mut state, len, true);
    let data =
        vec![(0, 64 << 10), (MIB, 6 * MIB + 1000), (30 * MIB, 4096), (30 * MIB + 8192, 4096), (size - 9000, 9000)];
    for (at, len) in &data {
        file.write_all_at(&random(*len), *at).expect("write");
    }
    (path, data)
}

/// A config shaped like cloud-api-adaptor's: base azure settings, `[variant.default]`, and four replication regions
/// that include the primary `location`.
fn config(azure: &Azure, extra: &str) -> String {
    format!(
        r#"[base]
name = "podvm"
imageVersionFile = "version.txt"
provider = "azure"

[base.azure]
subscriptionID = "{subscription}"
location = "eastus"
resourceGroup = "{group}"
sharedImageGallery = "podvm_gallery"
imageDefinitionName = "podvm_image"
offer = "cloud-api-adaptor"
publisher = "confidential-containers"
sku = "podvm"
replicationRegions = ["eastus", "eastus2", "westeurope", "northeurope"]
resourceManagerEndpoint = "{arm}"
{extra}

[variant.default]
"#,
        subscription = azure::SUBSCRIPTION,
        group = azure::GROUP,
        arm = azure.arm_url,
    )
}

fn workspace(azure: &Azure, extra: &str) -> (support::Workspace, PathBuf, Vec<(u64, u64)>) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let (raw, data) = image(scratch.path());
    let ws = support::Workspace::with_image(&config(azure, extra), &raw);
    let kept = ws.adopt_image(&raw);
    (ws, kept, data)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn version_id(name: &str) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/galleries/podvm_gallery/images/podvm_image/versions/{name}",
        azure::SUBSCRIPTION,
        azure::GROUP
    )
}

/// Asserts that no secret reached the log: the client secret, a bearer token, an unredacted SAS signature.
fn assert_no_secrets(stderr: &str) {
    assert!(!stderr.contains(azure::CLIENT_SECRET), "client secret in the log:\n{stderr}");
    assert!(!stderr.contains("arm-"), "ARM token in the log:\n{stderr}");
    for (i, _) in stderr.match_indices("sig=") {
        assert!(stderr[i..].starts_with("sig=[REDACTED]"), "SAS signature in the log:\n{stderr}");
    }
}

/// The disk content the fake read when `version` was created equals `uplosi convert --format vhd` of the image up
/// to the footer's timestamp, checksum and unique ID, and qemu reads it as the image.
fn assert_disk_is_the_converted_vhd(azure: &Azure, ws: &support::Workspace, raw: &Path, version: &str) {
    let converted = ws.path().join("converted.vhd");
    let convert = ws
        .uplosi()
        .args(["convert", "system.raw", "--format", "vhd", "--force", "--output"])
        .arg(&converted)
        .output()
        .expect("run");
    assert!(convert.status.success(), "{}", text(&convert.stderr));
    let uploaded = std::fs::read(azure.version_vhd(version)).expect("uploaded disk");
    let expected = std::fs::read(&converted).expect("converted");
    assert_eq!(uploaded.len(), expected.len());
    assert_eq!(uploaded.len() as u64, 41 * MIB + 512, "upload size is the MiB-aligned size + 512");
    let footer = uploaded.len() - 512;
    assert!(uploaded[..footer] == expected[..footer], "disk data differs from `uplosi convert --format vhd`");
    for (name, range) in [("cookie..timestamp", 0..24), ("creator..type", 28..64)] {
        assert_eq!(
            uploaded[footer + range.start..footer + range.end],
            expected[footer + range.start..footer + range.end],
            "{name}"
        );
    }
    qemu_compare(raw, "vpc", &azure.version_vhd(version));
}

#[test]
fn end_to_end_writes_only_data_pages_and_creates_the_version_in_every_region() {
    let azure = Azure::start(Options::default());
    let (ws, raw, data) = workspace(&azure, "");
    let out = support::upload_to(&azure, &ws, &["-v"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "uplosi failed:\n{stderr}");
    assert_eq!(text(&out.stdout).trim(), version_id("1.2.3"), "stdout is the version's resource ID");
    assert_no_secrets(&stderr);

    // The version: created from the disk, in the four regions (the primary listed once), with its definition.
    let puts = azure.calls("PUT", "/versions/1.2.3");
    assert_eq!(puts.len(), 1, "one version PUT");
    let body = &puts[0]["body"];
    let regions: Vec<&str> = body["properties"]["publishingProfile"]["targetRegions"]
        .as_array()
        .expect("targetRegions")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(regions, ["eastus", "eastus2", "westeurope", "northeurope"]);
    assert_eq!(body["properties"]["publishingProfile"]["targetRegions"][1]["regionalReplicaCount"], 1);
    assert_eq!(body["properties"]["publishingProfile"]["targetRegions"][1]["storageAccountType"], "Standard_LRS");
    assert_eq!(body["properties"]["publishingProfile"]["replicationMode"], "Full");
    let source = body["properties"]["storageProfile"]["osDiskImage"]["source"]["id"].as_str().expect("source id");
    assert!(source.ends_with("/providers/Microsoft.Compute/disks/podvm-1.2.3"), "{source}");
    assert!(azure.calls("PUT", "/images").is_empty() || azure.calls("PUT", "/images/podvm_image").len() == 1);
    let definition = &azure.calls("PUT", "/images/podvm_image")[0]["body"]["properties"];
    assert_eq!(definition["features"][0]["value"], "ConfidentialVMSupported");
    assert_eq!(definition["hyperVGeneration"], "V2");
    assert_eq!(definition["architecture"], "x64");
    assert!(
        azure.requests().iter().all(|r| !r["path"].as_str().unwrap_or("").contains("/Microsoft.Compute/images/")),
        "no managed image"
    );

    // The disk as it was when the version was made: byte for byte the VHD `uplosi convert` writes (up to the
    // footer's timestamp, checksum and unique ID), and a VHD qemu reads as the image.
    assert_disk_is_the_converted_vhd(&azure, &ws, &raw, "1.2.3");

    // Holes were never written: every written page range lies within a data run (rounded to 4 KiB) or the footer,
    // and the bytes sent are the data's 4 KiB blocks.
    let ranges = azure.version_ranges("1.2.3");
    let covered = |start: u64, end: u64| {
        data.iter().any(|(at, len)| start >= at / 4096 * 4096 && end < (at + len).next_multiple_of(4096))
            || start >= 41 * MIB
    };
    for (start, end) in &ranges {
        assert!(covered(*start, *end), "page range {start}-{end} covers a hole; ranges: {ranges:?}");
    }
    let data_blocks: u64 = data.iter().map(|(at, len)| (at + len).next_multiple_of(4096) - at / 4096 * 4096).sum();
    let stats = azure.proxy.stats();
    assert_eq!(stats["page_errors"], 0, "every Put Page had a good Content-MD5, ≤ 4 MiB and an aligned range");
    let sent = stats["page_bytes"].as_u64().expect("page bytes");
    assert!(sent <= data_blocks + 512, "sent {sent} bytes for {data_blocks} bytes of data blocks");
    assert!(sent >= data_blocks - 8192, "sent {sent} bytes, fewer than the data ({data_blocks})");

    // The disk is gone, access was revoked first, and Azurite holds no blob.
    assert!(!azure.calls("POST", "/disks/podvm-1.2.3/endGetAccess").is_empty());
    assert!(azure.calls("DELETE", "/disks/podvm-1.2.3").iter().any(|r| r["status"] == 202), "disk deleted");
    assert!(azure.blobs().is_empty(), "blobs left: {:?}", azure.blobs());
    assert!(
        stderr.contains("eastus Completed, eastus2 Completed, westeurope Completed, northeurope Completed"),
        "replication status of each region logged:\n{stderr}"
    );
}

#[test]
fn community_gallery_gives_the_community_id_and_existing_definitions_must_match() {
    let azure = Azure::start(Options::default());
    let community = "sharingProfile = \"community\"\nsharingNamePrefix = \"podvmimg\"\n\
                     publisherEmail = \"images@example.com\"\npublisherUri = \"https://example.com\"";
    let (ws, _raw, _) = workspace(&azure, community);
    // Signed in with the client certificate this time, not the secret.
    let mut cmd = ws.uplosi();
    azure.env(&mut cmd).env_remove("AZURE_CLIENT_SECRET").env("AZURE_CLIENT_CERTIFICATE_PATH", &azure.client_cert);
    let out = cmd.args(["upload", "system.raw"]).timeout(Duration::from_secs(300)).output().expect("run");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let reference = text(&out.stdout).trim().to_string();
    assert!(
        reference.starts_with("/CommunityGalleries/podvmimg-")
            && reference.ends_with("/Images/podvm_image/Versions/1.2.3"),
        "{reference}"
    );
    let gallery = &azure.calls("PUT", "/galleries/podvm_gallery")[0]["body"]["properties"]["sharingProfile"];
    assert_eq!(gallery["permissions"], "Community");
    assert_eq!(gallery["communityGalleryInfo"]["publisherContact"], "images@example.com");
    assert_eq!(gallery["communityGalleryInfo"]["eula"], "none", "the Go tool's default EULA");
    assert!(stderr.contains("communityEula is not set"), "placeholder warning:\n{stderr}");
    assert!(!stderr.contains("publisherEmail is not set"), "{stderr}");
    assert_eq!(azure.calls("POST", "/galleries/podvm_gallery/share").len(), 1, "community sharing enabled");

    // The same definition with another security type: exit 2 before any disk, naming both values.
    let disks_before = azure.calls("PUT", "/disks/podvm-1.2.3").len();
    ws.write("uplosi.conf", &config(&azure, &format!("{community}\nattestationVariant = \"azure-trustedlaunch\"")));
    let out = support::upload_to(&azure, &ws, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"ConfidentialVMSupported\"") && stderr.contains("\"TrustedLaunch\""), "{stderr}");
    assert_eq!(azure.calls("PUT", "/disks/podvm-1.2.3").len(), disks_before, "no disk for a refused run");

    // A private config against the community gallery: its sharing differs.
    ws.write("uplosi.conf", &config(&azure, ""));
    let out = support::upload_to(&azure, &ws, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("sharing Community") && stderr.contains("Private"), "{stderr}");
}

#[test]
fn an_existing_version_is_replaced_unless_replace_is_false() {
    let azure = Azure::start(Options::default());
    let (ws, _raw, _) = workspace(&azure, "");
    let first = support::upload_to(&azure, &ws, &[]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let second = support::upload_to(&azure, &ws, &[]);
    let stderr = text(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("deleting the existing image version"), "{stderr}");
    assert_eq!(azure.calls("DELETE", "/versions/1.2.3").len(), 1);
    assert_eq!(azure.calls("PUT", "/versions/1.2.3").len(), 2);

    ws.write("uplosi.conf", &config(&azure, "replace = false"));
    let third = support::upload_to(&azure, &ws, &[]);
    let stderr = text(&third.stderr);
    assert_eq!(third.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("image version 1.2.3 already exists") && stderr.contains("replace = true"), "{stderr}");
    assert_eq!(azure.calls("PUT", "/disks/podvm-1.2.3").len(), 2, "no disk for a refused run");
}

#[test]
fn a_page_range_that_keeps_failing_is_retried_then_the_disk_is_deleted() {
    let azure = Azure::start(Options { fault_rate: 1.0, faults: "503", ..Options::default() });
    let (ws, _raw, _) = workspace(&azure, "");
    let started = Instant::now();
    let out = support::upload_to(&azure, &ws, &["--concurrency", "2", "-v"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(120), "retries are bounded");
    assert!(stderr.contains("writing bytes") && stderr.contains("503"), "{stderr}");
    let faults = azure.proxy.faults();
    assert!(
        (8..=17).contains(&faults),
        "at most two ranges in flight are tried 8 times each, then the run stops: {faults}\n{stderr}"
    );
    assert!(azure.calls("DELETE", "/disks/podvm-1.2.3").iter().any(|r| r["status"] == 202), "disk deleted");
    assert!(azure.calls("PUT", "/versions/1.2.3").is_empty(), "no version from a failed upload");
    assert!(azure.blobs().is_empty(), "blobs left: {:?}", azure.blobs());
    assert_eq!(ws.read("version.txt"), "1.2.3\n");
}

#[test]
fn ctrl_c_during_the_page_upload_deletes_the_disk() {
    let azure = Azure::start(Options { fault_rate: 1.0, faults: "delay", delay: 2.0, ..Options::default() });
    let (ws, _raw, _) = workspace(&azure, "");
    let child = support::spawn_release(&azure, &ws);
    support::wait_until("a Put Page", Duration::from_secs(60), || {
        azure.proxy.stats()["matched"].as_u64().unwrap_or(0) > 0
    });
    support::interrupt(&child);
    let out = child.wait_with_output().expect("wait");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(azure.calls("DELETE", "/disks/podvm-1.2.3").iter().any(|r| r["status"] == 202), "disk deleted:\n{stderr}");
    assert!(azure.blobs().is_empty(), "blobs left: {:?}", azure.blobs());
    assert_eq!(ws.read("version.txt"), "1.2.3\n", "version file untouched");
}

#[test]
fn missing_or_wrong_credentials_stop_before_any_work() {
    let azure = Azure::start(Options::default());
    let (ws, _raw, _) = workspace(&azure, "");
    // `dev` selects the Azure CLI only, which is not on this PATH: nothing to sign in with, and no metadata probe.
    let out = ws
        .uplosi()
        .env_remove("AZURE_TENANT_ID")
        .env_remove("AZURE_CLIENT_ID")
        .env_remove("AZURE_CLIENT_SECRET")
        .env("AZURE_TOKEN_CREDENTIALS", "dev")
        .env("PATH", "/usr/bin:/bin")
        .env("SSL_CERT_FILE", azure.ca.ca())
        .args(["upload", "system.raw"])
        .output()
        .expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no Azure credentials found") && stderr.contains("AzureCliCredential"), "{stderr}");
    assert!(azure.requests().is_empty(), "no request before credentials: {:?}", azure.requests());

    let mut cmd = ws.uplosi();
    azure.env(&mut cmd).env("AZURE_CLIENT_SECRET", "wrong-secret");
    let out = cmd.args(["upload", "system.raw"]).output().expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("EnvironmentCredential") && stderr.contains("AADSTS7000215"), "{stderr}");
    assert!(!stderr.contains("wrong-secret"), "{stderr}");

    // A certificate the application does not know: Entra's assertion error, exit 2.
    let scratch = tempfile::tempdir().expect("tempdir");
    let stranger = azure::client_certificate(scratch.path(), "stranger");
    let mut cmd = ws.uplosi();
    azure.env(&mut cmd).env_remove("AZURE_CLIENT_SECRET").env("AZURE_CLIENT_CERTIFICATE_PATH", &stranger);
    let out = cmd.args(["upload", "system.raw"]).output().expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("AADSTS700027"), "{stderr}");
    // A file that is no certificate: named, exit 2, the chain does not fall through to other credentials.
    let mut cmd = ws.uplosi();
    azure
        .env(&mut cmd)
        .env_remove("AZURE_CLIENT_SECRET")
        .env("AZURE_CLIENT_CERTIFICATE_PATH", ws.path().join("version.txt"));
    let out = cmd.args(["upload", "system.raw"]).output().expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("AZURE_CLIENT_CERTIFICATE_PATH") && stderr.contains("version.txt"), "{stderr}");
    assert!(azure.requests().iter().all(|r| r["token_request"] == true), "no ARM call without a token");

    // A resource group that does not exist: exit 2 naming it, before any disk.
    let mut cmd = ws.uplosi();
    ws.write("uplosi.conf", &config(&azure, "").replace(azure::GROUP, "no-such-group"));
    azure.env(&mut cmd);
    let out = cmd.args(["upload", "system.raw"]).output().expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("resource group \"no-such-group\" does not exist"), "{stderr}");
    assert!(azure.calls("PUT", "/disks/podvm-1.2.3").is_empty());
}

#[test]
fn a_failed_version_operation_exits_1_with_the_message_and_deletes_the_disk() {
    let azure =
        Azure::start(Options { fail_version: Some("Replication to westeurope failed: quota"), ..Options::default() });
    let (ws, _raw, _) = workspace(&azure, "");
    let out = support::upload_to(&azure, &ws, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Replication to westeurope failed: quota"), "{stderr}");
    assert!(azure.calls("DELETE", "/disks/podvm-1.2.3").iter().any(|r| r["status"] == 202), "disk deleted");
    assert!(azure.blobs().is_empty());
}

#[test]
fn with_a_fifth_of_put_pages_faulted_the_disk_is_still_exact() {
    let azure =
        Azure::start(Options { fault_rate: 0.2, faults: "500,503,429,reset,delay", delay: 0.5, ..Options::default() });
    let (ws, raw, _) = workspace(&azure, "");
    let out = support::upload_to(&azure, &ws, &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(azure.proxy.faults() > 0, "no fault was injected: {}", azure.proxy.stats());
    assert_eq!(azure.proxy.stats()["page_errors"], 0);
    assert_disk_is_the_converted_vhd(&azure, &ws, &raw, "1.2.3");
    assert!(azure.blobs().is_empty());
    assert_no_secrets(&stderr);
}

#[test]
fn sigint_at_seeded_points_leaves_no_disk_no_version_and_the_version_file_alone() {
    let azure = Azure::start(Options {
        fault_rate: 1.0,
        faults: "delay",
        delay: 0.7,
        polls: 2,
        retry_after: 1,
        ..Options::default()
    });
    let (ws, _raw, _) = workspace(&azure, "");
    // Where to interrupt: after which request, then how many milliseconds later (seeded, so a failure reproduces).
    let mut state = 0x5eed_u64;
    let mut next = |bound: u64| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    let points = [
        ("PUT", "/disks/podvm-1.2.3"),
        ("POST", "/beginGetAccess"),
        ("PUT", "page"),
        ("PUT", "page"),
        ("PUT", "/versions/1.2.3"),
    ];
    for (round, (method, after)) in points.into_iter().enumerate() {
        let wait_ms = next(600);
        let seen_before = if after == "page" {
            azure.proxy.stats()["matched"].as_u64().unwrap_or(0)
        } else {
            azure.calls(method, after).len() as u64
        };
        let child = support::spawn_release(&azure, &ws);
        let started = Instant::now();
        loop {
            let seen = if after == "page" {
                azure.proxy.stats()["matched"].as_u64().unwrap_or(0)
            } else {
                azure.calls(method, after).len() as u64
            };
            if seen > seen_before {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "round {round}: {method} {after} never came");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(wait_ms));
        support::interrupt(&child);
        let out = child.wait_with_output().expect("wait");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "round {round} ({method} {after} + {wait_ms} ms):\n{stderr}");
        assert!(out.stdout.is_empty(), "round {round}: no reference after Ctrl-C");
        assert!(azure.blobs().is_empty(), "round {round}: blobs left: {:?}", azure.blobs());
        let disk_puts = azure.calls("PUT", "/disks/podvm-1.2.3").len();
        let disk_deletes = azure.calls("DELETE", "/disks/podvm-1.2.3").iter().filter(|r| r["status"] == 202).count();
        assert_eq!(disk_puts, disk_deletes, "round {round}: every disk made was deleted:\n{stderr}");
        let version_puts = azure.calls("PUT", "/versions/1.2.3").iter().filter(|r| r["status"] == 201).count();
        let version_deletes = azure.calls("DELETE", "/versions/1.2.3").iter().filter(|r| r["status"] == 202).count();
        assert_eq!(version_puts, version_deletes, "round {round}: an interrupted version was deleted:\n{stderr}");
        assert_eq!(ws.read("version.txt"), "1.2.3\n", "round {round}: version file untouched");
        assert_no_secrets(&stderr);
    }
}
