//! OpenStack against a real glance-api (Debian's package, started per test) and, for Keystone v3, the token fake in
//! `tests/support/keystone.py`, which also refuses any Glance request without a token it issued.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::fixtures::{self, qemu_compare};
use support::glance::{self, Glance, Keystone};

/// A workspace with `uplosi.conf`, `version.txt`, `clouds.yaml` and the image as `system.raw`.
fn workspace(openstack: &str, clouds: &str, image: &Path) -> support::Workspace {
    let conf = format!(
        "[base]\nname = \"podvm\"\nimageVersionFile = \"version.txt\"\nprovider = \"openstack\"\n\n[base.openstack]\n\
         cloud = \"test\"\n{openstack}\n"
    );
    let ws = support::Workspace::with_image(&conf, image);
    ws.write("clouds.yaml", clouds);
    ws
}

/// clouds.yaml for glance-api without auth.
fn noauth_clouds(glance: &Glance) -> String {
    format!("clouds:\n  test:\n    auth_type: none\n    image_endpoint_override: {}/v2\n", glance.url)
}

/// clouds.yaml for the Keystone fake with a password (the password itself goes into secure.yaml).
fn password_clouds(keystone: &Keystone) -> String {
    format!(
        "clouds:\n  test:\n    auth:\n      auth_url: {}/v3\n      username: {}\n      user_domain_name: Default\n      \
         project_name: {}\n      project_domain_name: Default\n    region_name: RegionOne\n    interface: public\n",
        keystone.url,
        glance::USER,
        glance::PROJECT
    )
}

/// `uplosi` in `ws` reading only the workspace's clouds.yaml and secure.yaml.
fn uplosi(ws: &support::Workspace) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("uplosi"));
    cmd.current_dir(ws.path())
        .env("OS_CLIENT_CONFIG_FILE", ws.path().join("clouds.yaml"))
        .env("OS_CLIENT_SECURE_FILE", ws.path().join("secure.yaml"))
        .env("HOME", ws.path())
        .env_remove("OS_CLOUD")
        .env_remove("RUST_LOG")
        .env_remove("SSL_CERT_FILE");
    cmd
}

fn named<'a>(images: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    images.iter().filter(|i| i["name"] == name).collect()
}

/// A 256 MiB image with 48 MiB of random data in three places, for uploads that take a while behind a slow proxy.
fn data_image(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::FileExt;
    let path = dir.join("data.raw");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(256 << 20).expect("size");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 16 << 20];
    for (i, at) in [1u64 << 20, 100 << 20, 200 << 20].into_iter().enumerate() {
        for b in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = (state >> (i * 8)) as u8;
        }
        file.write_all_at(&chunk, at).expect("write");
    }
    path
}

#[test]
fn noauth_upload_streams_exactly_the_converted_qcow2_and_sets_every_attribute() {
    let glance = Glance::start();
    let image = fixtures::gpt_image();
    let settings = "visibility = \"public\"\nhidden = true\nprotected = true\ntags = [\"confidential\", \"podvm\"]\n\
                    minDiskGB = 2\nminRamMB = 1024\nproperties = { os_distro = \"debian\", hw_qemu_guest_agent = \"yes\" }";
    let ws = workspace(settings, &noauth_clouds(&glance), &image.path);

    let out = uplosi(&ws).args(["upload", "system.raw", "-i"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", glance.log());
    let id = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    assert_eq!(id.len(), 36, "the reference is the image ID: {id:?}");
    assert_eq!(ws.read("version.txt").trim(), "1.2.4");

    let record = glance.image(&id);
    assert_eq!(record["status"], "active");
    assert_eq!(record["name"], "podvm-1.2.3");
    assert_eq!(record["disk_format"], "qcow2");
    assert_eq!(record["container_format"], "bare");
    assert_eq!(record["visibility"], "public");
    assert_eq!(record["protected"], true);
    assert_eq!(record["os_hidden"], true);
    assert_eq!(record["min_disk"], 2);
    assert_eq!(record["min_ram"], 1024);
    assert_eq!(record["os_distro"], "debian");
    assert_eq!(record["hw_qemu_guest_agent"], "yes");
    assert_eq!(record["hw_firmware_type"], "uefi");
    assert_eq!(record["hw_architecture"], "x86_64");
    let mut tags: Vec<&str> = record["tags"].as_array().expect("tags").iter().filter_map(|t| t.as_str()).collect();
    tags.sort();
    assert_eq!(tags, ["confidential", "podvm"]);

    // The stored bytes are exactly what `uplosi convert --format qcow2` writes, and only data clusters were sent.
    let downloaded = ws.path().join("downloaded.qcow2");
    glance.download(&id, &downloaded);
    let converted = ws.path().join("converted.qcow2");
    let convert =
        uplosi(&ws).args(["convert", "system.raw", "-f", "qcow2", "-o"]).arg(&converted).output().expect("run");
    assert!(convert.status.success(), "{}", String::from_utf8_lossy(&convert.stderr));
    assert!(std::fs::read(&downloaded).expect("read") == std::fs::read(&converted).expect("read"), "bytes differ");
    qemu_compare(&image.path, "qcow2", &downloaded);
    let raw_size = std::fs::metadata(&image.path).expect("stat").len();
    assert!(record["size"].as_u64().expect("size") < raw_size / 4, "sent {} of {raw_size}", record["size"]);

    // A second run with the same version meets the protected image: exit 2 naming it, before any data moves.
    ws.write("version.txt", "1.2.3\n");
    let out = uplosi(&ws).args(["upload", "system.raw"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is protected") && stderr.contains(&id), "{stderr}");
    assert_eq!(named(&glance.images().expect("list"), "podvm-1.2.3").len(), 1);

    // Unprotected, it is replaced (replace defaults to true): one image of that name, a new ID.
    glance.patch(&id, r#"[{"op": "replace", "path": "/protected", "value": false}]"#);
    let out = uplosi(&ws).args(["upload", "system.raw"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let second = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    assert_ne!(second, id);
    assert!(stderr.contains("deleting the existing image") && stderr.contains(&id), "{stderr}");
    let images = glance.images().expect("list");
    let same = named(&images, "podvm-1.2.3");
    assert_eq!(same.len(), 1, "{images:?}");
    assert_eq!(same[0]["id"], second.as_str());

    // replace = false stops before any work, naming the image.
    glance.patch(&second, r#"[{"op": "replace", "path": "/protected", "value": false}]"#);
    let settings = "replace = false";
    let ws2 = workspace(settings, &noauth_clouds(&glance), &image.path);
    let out = uplosi(&ws2).args(["upload", "system.raw"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("already exists") && stderr.contains(&second) && stderr.contains("replace = true"),
        "{stderr}"
    );
}

#[test]
fn keystone_password_and_application_credential_reach_glance_through_the_catalog() {
    let glance = Glance::start();
    let keystone = Keystone::start(&glance, 0.0);
    let image = fixtures::gpt_image();

    // Password from secure.yaml, raw disk format: Glance holds the raw image byte for byte.
    let ws =
        workspace("diskFormat = \"raw\"\nimageName = \"raw-{{.Version}}\"", &password_clouds(&keystone), &image.path);
    ws.write("secure.yaml", &format!("clouds:\n  test:\n    auth:\n      password: {}\n", glance::PASSWORD));
    let out = uplosi(&ws).args(["upload", "system.raw", "-v"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(glance::PASSWORD), "the password never shows: {stderr}");
    let id = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    let record = glance.image(&id);
    assert_eq!((record["status"].as_str(), record["disk_format"].as_str()), (Some("active"), Some("raw")));
    assert_eq!(record["visibility"], "private", "the default visibility is private");
    let downloaded = ws.path().join("downloaded.raw");
    glance.download(&id, &downloaded);
    assert!(std::fs::read(&downloaded).expect("read") == std::fs::read(&image.path).expect("read"), "raw differs");

    // An application credential (no scope: Keystone refuses one), qcow2.
    let clouds = format!(
        "clouds:\n  test:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: {}\n      \
         application_credential_id: {}\n      application_credential_secret: {}\n",
        keystone.url,
        glance::APP_CRED_ID,
        glance::APP_CRED_SECRET
    );
    let ws2 = workspace("imageName = \"app-{{.Version}}\"", &clouds, &image.path);
    let out = uplosi(&ws2).args(["upload", "system.raw"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let id2 = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    assert_eq!(glance.image(&id2)["status"], "active");

    // One token per run: the preflight's session is reused for the upload.
    let stats = keystone.stats();
    assert_eq!(stats["tokens"]["password"], 1, "{stats}");
    assert_eq!(stats["tokens"]["application_credential"], 1, "{stats}");
    assert_eq!(stats["unauthorized"], 0, "every Glance request carried the token: {stats}");
    assert!(stats["forwarded"].as_u64().unwrap_or(0) >= 8, "{stats}");

    // A wrong password: exit 2 before any data moves, Keystone's answer quoted, nothing created.
    ws.write("secure.yaml", "clouds:\n  test:\n    auth:\n      password: wrong\n");
    let out = uplosi(&ws).args(["upload", "system.raw"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refused the credentials (HTTP 401)") && stderr.contains("requires authentication"));
    assert_eq!(glance.images().expect("list").len(), 2);
}

#[test]
fn https_endpoints_are_trusted_through_cacert_or_ssl_cert_file_and_nothing_else() {
    let glance = Glance::start();
    let ca = glance::TestCa::new();
    let keystone = Keystone::start_tls(&glance, &ca);
    let image = fixtures::gpt_image();
    let secure = format!("clouds:\n  test:\n    auth:\n      password: {}\n", glance::PASSWORD);

    // Neither: the server's certificate is refused, before any data moves.
    let ws = workspace("imageName = \"tls-none\"", &password_clouds(&keystone), &image.path);
    ws.write("secure.yaml", &secure);
    let out = uplosi(&ws).args(["upload", "system.raw"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    assert_eq!(keystone.stats()["tokens"], serde_json::json!({}));

    // clouds.yaml `cacert`.
    let clouds = format!("{}    cacert: {}\n", password_clouds(&keystone), ca.ca().display());
    let ws = workspace("imageName = \"tls-cacert\"", &clouds, &image.path);
    ws.write("secure.yaml", &secure);
    let out = uplosi(&ws).args(["upload", "system.raw"]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // SSL_CERT_FILE, as for every HTTPS client of uplosi.
    let ws = workspace("imageName = \"tls-env\"", &password_clouds(&keystone), &image.path);
    ws.write("secure.yaml", &secure);
    let out = uplosi(&ws).args(["upload", "system.raw"]).env("SSL_CERT_FILE", ca.ca()).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names: Vec<String> =
        glance.images().expect("list").iter().filter_map(|i| i["name"].as_str().map(str::to_string)).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_missing_cloud_or_clouds_yaml_is_exit_2_naming_what_to_fix() {
    let image = fixtures::gpt_image();
    let ws = workspace(
        "",
        "clouds:\n  other:\n    auth_type: none\n    image_endpoint_override: http://127.0.0.1:9\n",
        &image.path,
    );
    let out = uplosi(&ws).args(["upload", "system.raw"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cloud \"test\" is not in") && stderr.contains("other"), "{stderr}");

    std::fs::remove_file(ws.path().join("clouds.yaml")).expect("remove");
    let out = uplosi(&ws).args(["upload", "system.raw"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no clouds.yaml found") && stderr.contains("OS_CLIENT_CONFIG_FILE"), "{stderr}");
}

#[test]
fn an_image_over_the_size_cap_gets_glances_413_and_leaves_no_record() {
    let glance = Glance::start_with_cap(1 << 20);
    let image = fixtures::gpt_image();
    let ws = workspace("", &noauth_clouds(&glance), &image.path);
    let out = uplosi(&ws).args(["upload", "system.raw", "-i"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HTTP 413"), "Glance's answer is quoted: {stderr}");
    assert!(stderr.contains("deleted the unfinished image"), "{stderr}");
    assert_eq!(glance.images().expect("list"), Vec::<serde_json::Value>::new());
    assert_eq!(ws.read("version.txt").trim(), "1.2.3", "no version bump after a failure");
}

/// Waits until an image record is `saving` (data is flowing), returning its ID.
fn wait_saving(glance: &Glance, child: &mut std::process::Child) -> String {
    let started = Instant::now();
    loop {
        if let Some(image) = glance.images().unwrap_or_default().into_iter().find(|i| i["status"] == "saving") {
            return image["id"].as_str().expect("id").to_string();
        }
        assert!(child.try_wait().expect("wait").is_none(), "uplosi ended before the upload started");
        assert!(started.elapsed() < Duration::from_secs(60), "the upload never started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `uplosi upload -i` of a 48 MiB-data image through the (slow) Keystone fake, output captured.
fn start_slow_upload(keystone: &Keystone, dir: &Path) -> (support::Workspace, std::process::Child) {
    let image = data_image(dir);
    let ws = workspace("", &password_clouds(keystone), &image);
    ws.write("secure.yaml", &format!("clouds:\n  test:\n    auth:\n      password: {}\n", glance::PASSWORD));
    let child = uplosi(&ws)
        .args(["upload", "system.raw", "-i"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    (ws, child)
}

#[test]
fn ctrl_c_mid_upload_exits_130_and_deletes_the_record() {
    let glance = Glance::start();
    let keystone = Keystone::start(&glance, 0.15);
    let dir = tempfile::tempdir().expect("temp dir");
    let (ws, mut child) = start_slow_upload(&keystone, dir.path());
    wait_saving(&glance, &mut child);
    support::interrupt(&child);
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("deleted the unfinished image"), "{stderr}");
    assert_eq!(glance.images().expect("list"), Vec::<serde_json::Value>::new());
    assert_eq!(ws.read("version.txt").trim(), "1.2.3");
}

#[test]
fn glance_dying_mid_upload_fails_with_exit_1_and_leaves_no_record() {
    let mut glance = Glance::start();
    // About 25 s for the 48 MiB (minus what socket buffers hold): long enough for a progress line (every 10 s
    // when stderr is not a terminal, at the first chunk after that) before the crash at 17 s. At 13 s the window
    // for that chunk was only about 3 s, and a slow moment of the proxy missed it.
    let keystone = Keystone::start(&glance, 0.5);
    let dir = tempfile::tempdir().expect("temp dir");
    let (ws, mut child) = start_slow_upload(&keystone, dir.path());
    let id = wait_saving(&glance, &mut child);
    std::thread::sleep(Duration::from_secs(17));
    // A crash, and the service is back some seconds later: the record stays `saving` in the database, which no
    // retry can fix; uplosi's cleanup waits for the service and deletes it.
    glance.kill();
    std::thread::sleep(Duration::from_secs(5));
    glance.restart();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains(&format!("deleted the unfinished image {id}")), "{stderr}");
    assert!(stderr.lines().any(|l| l.contains("INFO glance: ") && l.contains("MiB/s, eta")), "progress: {stderr}");
    assert_eq!(glance.images().expect("list"), Vec::<serde_json::Value>::new());
    assert_eq!(ws.read("version.txt").trim(), "1.2.3");
}

#[test]
fn a_second_ctrl_c_exits_at_once_naming_what_may_be_left() {
    let glance = Glance::start();
    let keystone = Keystone::start(&glance, 0.3);
    let dir = tempfile::tempdir().expect("temp dir");
    let (ws, mut child) = start_slow_upload(&keystone, dir.path());
    let id = wait_saving(&glance, &mut child);
    support::interrupt(&child);
    // Two signals at the same instant merge into one; the second comes while the first one's cleanup runs.
    std::thread::sleep(Duration::from_millis(10));
    support::interrupt(&child);
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted twice"), "{stderr}");
    assert!(stderr.contains(&format!("Glance image {id}")) && stderr.contains("openstack image delete"), "{stderr}");
    assert_eq!(ws.read("version.txt").trim(), "1.2.3");
}
