//! The OCI provider against Debian's docker-registry (distribution 2.8) on 127.0.0.1, plain and with TLS, open,
//! with htpasswd basic auth and with token auth; read back with skopeo, qemu-img, tar and xz.

mod support;

use std::path::Path;
use std::process::Output;

use support::Workspace;
use support::faults::FaultProxy;
use support::registry::{self, Options, Registry};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn config(repository: &str, extra: &str) -> String {
    format!(
        "[base]\nname = \"podvm\"\nimageVersionFile = \"version.txt\"\nprovider = \"oci\"\n\n[base.oci]\nrepository = \"{repository}\"\n{extra}\n"
    )
}

/// `uplosi upload system.raw ARGS` in `ws` against `registry`, credentials from `docker_config` if given.
fn upload(ws: &Workspace, registry: &Registry, docker_config: Option<&Path>, args: &[&str]) -> Output {
    let home = ws.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut cmd = ws.uplosi();
    for (key, value) in registry.env(&home) {
        cmd.env(key, value);
    }
    cmd.env_remove("REGISTRY_AUTH_FILE").env_remove("XDG_RUNTIME_DIR").env_remove("XDG_CONFIG_HOME");
    match docker_config {
        Some(dir) => cmd.env("DOCKER_CONFIG", dir),
        None => cmd.env_remove("DOCKER_CONFIG"),
    };
    cmd.args(["upload", "system.raw"]).args(args).timeout(std::time::Duration::from_secs(300)).output().expect("run")
}

/// A small GPT image with a UKI (Debian's kernel on the system stub), so measurements can be attached.
fn uki_image(dir: &Path) -> std::path::PathBuf {
    let (uki, _) = support::uki::build(dir, "uki", &support::uki::Parts::default());
    let disk = dir.join("disk.raw");
    support::uki::esp_disk(&disk, 32, 64, &[("EFI/BOOT/BOOTX64.EFI", &uki)]);
    disk
}

fn manifest_of(registry: &Registry, reference: &str) -> (serde_json::Value, String) {
    let raw = registry.raw_manifest(reference).unwrap_or_else(|| panic!("no manifest {reference}"));
    (serde_json::from_slice(&raw).expect("manifest JSON"), registry::digest(&raw))
}

/// The layer file of `reference` copied out with skopeo.
fn layer_file(registry: &Registry, reference: &str, out: &Path) -> std::path::PathBuf {
    registry.copy_to_dir(reference, out);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).expect("manifest")).expect("JSON");
    let digest = manifest["layers"][0]["digest"].as_str().expect("layer").trim_start_matches("sha256:").to_string();
    out.join(digest)
}

#[test]
fn a_qcow2_artifact_is_laid_out_as_oras_pushes_one_file_with_its_measurements_attached() {
    let registry = Registry::start(Options::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let image = uki_image(dir.path());
    let repository = format!("{}/podvm-amd64", registry.host);
    let ws = Workspace::with_image(
        &config(
            &repository,
            "tags = [\"{{.Version}}\", \"latest\"]\nannotations = { \"org.example.release\" = \"v{{.Version}}\" }",
        )
        .replace("[base.oci]", "measurementsFile = \"m.json\"\nmeasurementsFormat = \"rvps\"\n\n[base.oci]"),
        &image,
    );
    let out = upload(&ws, &registry, None, &["-i", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (manifest, digest) = manifest_of(&registry, "podvm-amd64:1.2.3");
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).expect("manifest on stdout");
    assert_eq!(run["references"][0]["reference"], format!("{repository}@{digest}"), "REPOSITORY@sha256:DIGEST");
    assert_eq!(run["variants"][0]["details"]["tags"], serde_json::json!(["1.2.3", "latest"]));
    assert_eq!(ws.read("version.txt"), "1.2.4\n");

    // oras push's layout of one file.
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["artifactType"], "application/vnd.unknown.artifact.v1");
    assert_eq!(
        manifest["config"],
        serde_json::json!({"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2, "data": "e30="})
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar");
    assert_eq!(layers[0]["annotations"]["org.opencontainers.image.title"], "podvm-1.2.3.qcow2");
    assert!(manifest["annotations"]["org.opencontainers.image.created"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(manifest["annotations"]["org.example.release"], "v1.2.3");
    let (latest, latest_digest) = manifest_of(&registry, "podvm-amd64:latest");
    assert_eq!((latest, latest_digest), (manifest.clone(), digest.clone()), "both tags, one manifest");

    // The qcow2, byte for byte the image once converted back to raw; its digest is the layer's.
    let out_dir = ws.path().join("pulled");
    let layer = layer_file(&registry, "podvm-amd64:1.2.3", &out_dir);
    let bytes = std::fs::read(&layer).expect("layer");
    assert_eq!(registry::digest(&bytes), layers[0]["digest"]);
    assert_eq!(bytes.len() as u64, layers[0]["size"].as_u64().unwrap_or_default());
    support::fixtures::qemu_compare(&image, "qcow2", &layer);

    // The measurements: a referrer of the manifest, found through the sha256-<hex> tag index (no referrers API).
    let index_tag = format!("podvm-amd64:{}", digest.replacen(':', "-", 1));
    let (index, _) = manifest_of(&registry, &index_tag);
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let referrers = index["manifests"].as_array().expect("referrers");
    assert_eq!(referrers.len(), 1, "{index}");
    assert_eq!(referrers[0]["artifactType"], "application/vnd.uplosi.measurements.v1+json");
    let referrer_digest = referrers[0]["digest"].as_str().expect("digest");
    let (referrer, _) = manifest_of(&registry, &format!("podvm-amd64@{referrer_digest}"));
    assert_eq!(referrer["subject"]["digest"], digest.as_str());
    assert_eq!(referrer["subject"]["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(referrer["artifactType"], "application/vnd.uplosi.measurements.v1+json");
    let measurements_dir = ws.path().join("measurements");
    let document = layer_file(&registry, &format!("podvm-amd64@{referrer_digest}"), &measurements_dir);
    let document: serde_json::Value = serde_json::from_slice(&std::fs::read(document).expect("doc")).expect("JSON");
    assert_eq!(document["type"], "sample", "the measurementsFormat document (rvps)");
    let written: serde_json::Value = serde_json::from_str(&ws.read("m.json")).expect("m.json");
    assert_eq!(document, written, "the same document as measurementsFile");
    assert!(registry.upload_sessions().is_empty(), "no upload session left");
}

#[test]
fn qcow2_tar_xz_over_tls_with_basic_auth_unpacks_with_tar_xj_and_is_not_sent_twice() {
    let registry = Registry::start(Options { tls: true, basic: true, ..Options::default() });
    let image = &support::fixtures::synthetic_cases()[1];
    let repository = format!("{}/podvm-amd64", registry.host);
    let ws = Workspace::with_image(
        &config(&repository, "format = \"qcow2.tar.xz\"\nfileName = \"podvm.tar.xz\""),
        &image.path,
    );
    let creds = registry.docker_config(false);
    let out = upload(&ws, &registry, Some(creds.path()), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (manifest, _) = manifest_of(&registry, "podvm-amd64:1.2.3");
    assert_eq!(manifest["layers"][0]["annotations"]["org.opencontainers.image.title"], "podvm.tar.xz");
    let out_dir = ws.path().join("pulled");
    let layer = layer_file(&registry, "podvm-amd64:1.2.3", &out_dir);
    let list = std::process::Command::new("tar").arg("tJvf").arg(&layer).output().expect("tar");
    let listing = text(&list.stdout);
    assert_eq!(listing.lines().count(), 1, "one member: {listing}");
    assert!(listing.trim_end().ends_with(" podvm.qcow2"), "{listing}");
    let unpack = std::process::Command::new("tar").arg("xJf").arg(&layer).current_dir(&out_dir).status().expect("tar");
    assert!(unpack.success());
    support::fixtures::qemu_compare(&image.path, "qcow2", &out_dir.join("podvm.qcow2"));
    let xz = std::process::Command::new("xz").args(["-t"]).arg(&layer).status().expect("xz");
    assert!(xz.success(), "a valid xz stream");

    // Again, same image: the compressed blob is found through the payload digest and not sent again.
    let again = upload(&ws, &registry, Some(creds.path()), &[]);
    let stderr = text(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("not sent again") && stderr.contains("0 bytes sent"), "{stderr}");
    let (second, _) = manifest_of(&registry, "podvm-amd64:1.2.3");
    assert_eq!(second["layers"], manifest["layers"], "the same layer");

    // Without credentials: exit 2 naming the registry and where uplosi looked.
    let refused = upload(&ws, &registry, None, &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("no credentials were found"), "{}", text(&refused.stderr));
}

#[test]
fn token_auth_with_a_password_or_an_identity_token_and_raw_format() {
    let registry = Registry::start(Options { tls: true, token: true, ..Options::default() });
    let image = &support::fixtures::synthetic_cases()[1];
    let repository = format!("{}/org/podvm", registry.host);
    let ws = Workspace::with_image(&config(&repository, "format = \"raw\""), &image.path);
    let password = registry.docker_config(false);
    let out = upload(&ws, &registry, Some(password.path()), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(registry.token_stats()["basic"].as_u64().unwrap_or(0) > 0, "{}", registry.token_stats());
    let out_dir = ws.path().join("pulled");
    let layer = layer_file(&registry, "org/podvm:1.2.3", &out_dir);
    let raw = std::fs::read(&layer).expect("layer");
    assert_eq!(raw, std::fs::read(&image.path).expect("image"), "the raw image, byte for byte");

    let identity = registry.docker_config(true);
    ws.write("version.txt", "1.2.4\n");
    let out = upload(&ws, &registry, Some(identity.path()), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(registry.token_stats()["refresh"].as_u64().unwrap_or(0) > 0, "{}", registry.token_stats());
    assert_eq!(registry.tags("org/podvm"), ["1.2.3", "1.2.4"]);
    // The layer was there already (same raw bytes): not sent again.
    assert!(text(&out.stderr).contains("not sent again"), "{}", text(&out.stderr));
}

#[test]
fn replace_false_refuses_an_existing_tag_before_anything_moves() {
    let registry = Registry::start(Options::default());
    let image = &support::fixtures::synthetic_cases()[1];
    let repository = format!("{}/podvm", registry.host);
    let ws = Workspace::with_image(&config(&repository, "replace = false"), &image.path);
    assert!(upload(&ws, &registry, None, &[]).status.success());
    let (before, _) = manifest_of(&registry, "podvm:1.2.3");
    let out = upload(&ws, &registry, None, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{repository}:1.2.3 already exists")) && stderr.contains("replace = false"),
        "{stderr}"
    );
    assert_eq!(manifest_of(&registry, "podvm:1.2.3").0, before, "nothing changed");
}

#[test]
fn twenty_percent_faults_on_every_request_give_the_same_artifact() {
    let registry = Registry::start(Options::default());
    let image = &support::fixtures::synthetic_cases()[1];
    let proxy = FaultProxy::start(
        &format!("http://{}", registry.host),
        "^(GET|HEAD|POST|PUT|PATCH|DELETE) /v2/",
        0.2,
        11,
        "500,503,reset",
    );
    let proxied = proxy.url.trim_start_matches("http://").to_string();
    let ws = Workspace::with_image(&config(&format!("{proxied}/podvm"), "plainHTTP = true"), &image.path);
    // Small chunks, so the blob takes many requests.
    let out = upload(&ws, &registry, None, &["-v"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(proxy.faults() > 0, "faults were injected: {}", proxy.stats());
    let (manifest, digest) = manifest_of(&registry, "podvm:1.2.3");
    assert!(text(&out.stdout).trim().ends_with(&digest), "{}", text(&out.stdout));
    let out_dir = ws.path().join("pulled");
    let layer = layer_file(&registry, "podvm:1.2.3", &out_dir);
    support::fixtures::qemu_compare(&image.path, "qcow2", &layer);
    assert_eq!(manifest["layers"][0]["digest"], registry::digest(&std::fs::read(&layer).expect("layer")));
    assert!(registry.upload_sessions().is_empty(), "no upload session left");
}

#[test]
fn ctrl_c_leaves_no_upload_session_tag_or_manifest() {
    let registry = Registry::start(Options::default());
    // 96 MiB of data: at 1 MiB/s the upload is still running when Ctrl-C comes.
    let image_dir = tempfile::tempdir().expect("dir");
    let image_path = image_dir.path().join("data.raw");
    let mut state = 0x5eed_u64;
    std::fs::write(&image_path, support::fixtures::xorshift_bytes(&mut state, 96 << 20, true)).expect("image");
    let proxy = FaultProxy::start_with_args(
        &format!("http://{}", registry.host),
        "^PATCH /v2/",
        0.0,
        1,
        "500",
        &["--bandwidth", "1"],
    );
    let proxied = proxy.url.trim_start_matches("http://").to_string();
    let ws = Workspace::with_image(&config(&format!("{proxied}/podvm"), "plainHTTP = true"), &image_path);
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("uplosi"));
    let home = ws.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut child = cmd
        .current_dir(ws.path())
        .env("HOME", &home)
        .env_remove("DOCKER_CONFIG")
        .env_remove("RUST_LOG")
        .args(["upload", "system.raw"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    support::wait_until("a chunk upload", std::time::Duration::from_secs(60), || {
        proxy.stats()["matched"].as_u64().unwrap_or(0) > 0
    });
    support::interrupt(&child);
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(registry.tags("podvm").is_empty(), "no tag");
    assert!(registry.raw_manifest("podvm:1.2.3").is_none(), "no manifest");
    assert!(registry.upload_sessions().is_empty(), "no upload session: {:?}\n{stderr}", registry.upload_sessions());
}

#[test]
fn delete_and_prune_take_the_measurements_referrer_with_the_manifest() {
    let registry = Registry::start(Options::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let image = uki_image(dir.path());
    let repository = format!("{}/podvm", registry.host);
    let ws = Workspace::with_image(
        &config(&repository, "tags = [\"{{.Version}}\", \"v{{.Version}}-debug\"]\nattachMeasurements = true"),
        &image,
    );
    for version in ["1.2.3", "1.2.4", "1.2.5"] {
        ws.write("version.txt", &format!("{version}\n"));
        let out = upload(&ws, &registry, None, &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let referrer_tags = |tags: &[String]| tags.iter().filter(|t| t.starts_with("sha256-")).count();
    assert_eq!(referrer_tags(&registry.tags("podvm")), 3, "one measurements index per version");
    let home = ws.path().join("home");
    let lifecycle =
        |args: &[&str]| ws.uplosi().env("HOME", &home).env_remove("DOCKER_CONFIG").args(args).output().expect("run");
    let plan = lifecycle(&["prune", "--keep", "2", "--dry-run"]);
    assert!(text(&plan.stdout).contains("would delete 1.2.3 manifest"), "{}", text(&plan.stdout));
    let out = lifecycle(&["delete", "1.2.4", "--yes", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(report["variants"][0]["deleted"].as_array().is_some_and(|d| !d.is_empty()), "{report}");
    let tags = registry.tags("podvm");
    assert_eq!(
        tags.iter().filter(|t| !t.starts_with("sha256-")).cloned().collect::<Vec<_>>(),
        ["1.2.3", "1.2.5", "v1.2.3-debug", "v1.2.5-debug"]
    );
    assert_eq!(referrer_tags(&tags), 2, "its measurements went with it: {tags:?}");
    let out = lifecycle(&["prune", "--keep", "1", "--yes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        registry.tags("podvm").iter().filter(|t| !t.starts_with("sha256-")).cloned().collect::<Vec<_>>(),
        ["1.2.5", "v1.2.5-debug"]
    );
}

#[test]
fn a_registry_that_refuses_deletes_is_reported_per_image_and_nothing_changes() {
    let registry = Registry::start(Options { no_delete: true, ..Options::default() });
    let image = &support::fixtures::synthetic_cases()[1];
    let ws = Workspace::with_image(&config(&format!("{}/podvm", registry.host), ""), &image.path);
    for version in ["1.2.3", "1.2.4"] {
        ws.write("version.txt", &format!("{version}\n"));
        assert!(upload(&ws, &registry, None, &[]).status.success());
    }
    let out = ws
        .uplosi()
        .env("HOME", ws.path())
        .env_remove("DOCKER_CONFIG")
        .args(["delete", "1.2.3", "--yes", "--output", "json"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let failed = report["variants"][0]["failed"].to_string();
    assert!(failed.contains("refuses to delete"), "{report}");
    assert_eq!(registry.tags("podvm"), ["1.2.3", "1.2.4"], "nothing changed");
}

#[test]
fn a_blob_in_another_repository_is_mounted_not_sent() {
    let registry = Registry::start(Options::default());
    let image = &support::fixtures::synthetic_cases()[1];
    let staging = Workspace::with_image(&config(&format!("{}/staging/podvm", registry.host), ""), &image.path);
    assert!(upload(&staging, &registry, None, &[]).status.success());
    let ws = Workspace::with_image(
        &config(&format!("{}/release/podvm", registry.host), "mountFrom = \"staging/podvm\""),
        &image.path,
    );
    let out = upload(&ws, &registry, None, &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("mounted blob") && stderr.contains("0 bytes sent"), "{stderr}");
    assert_eq!(
        manifest_of(&registry, "release/podvm:1.2.3").0["layers"],
        manifest_of(&registry, "staging/podvm:1.2.3").0["layers"]
    );
}

#[test]
fn bad_oci_settings_and_credentials_files_are_exit_2_naming_them() {
    let ws = Workspace::new();
    ws.write("version.txt", "1.2.3\n");
    for (extra, needle) in [
        ("", "required key `repository`"),
        ("repository = \"ghcr.io/org/podvm:1.2.3\"", "a repository has no tag"),
        ("repository = \"ghcr.io/Org/podvm\"", "is not a repository reference"),
        ("repository = \"ghcr.io/org/podvm\"\ntags = [\".bad\"]", "tag \".bad\" is not a valid tag"),
        (
            "repository = \"ghcr.io/org/podvm\"\nformat = \"zip\"",
            "format \"zip\" must be one of qcow2, raw, qcow2.tar.xz",
        ),
        ("repository = \"ghcr.io/org/podvm\"\nartifactType = \"podvm\"", "artifactType \"podvm\" is not a media type"),
        (
            "repository = \"ghcr.io/org/podvm\"\nmountFrom = \"quay.io/org/podvm\"",
            "blobs are mounted only within one registry",
        ),
    ] {
        ws.write("uplosi.conf", &format!("[base]\nname = \"podvm\"\nprovider = \"oci\"\n[base.oci]\n{extra}\n"));
        let err = ws.config_error(&[]);
        assert!(err.contains(needle), "{extra}: {err}");
    }
    let registry = Registry::start(Options { basic: true, ..Options::default() });
    ws.write("uplosi.conf", &config(&format!("{}/podvm", registry.host), ""));
    let broken = tempfile::tempdir().expect("dir");
    std::fs::write(broken.path().join("config.json"), "{\"auths\": {\"x\": {\"auth\": \"!!\"}}, ").expect("write");
    let out = upload(&ws, &registry, Some(broken.path()), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&broken.path().join("config.json").display().to_string()),
        "{}",
        text(&out.stderr)
    );
}
