//! The whole release run: variants of every provider this build supports (AWS against moto, Azure against Azurite
//! and the ARM fake, GCP against fake-gcs-server and the GCE fake, OpenStack against a real glance-api, a local
//! file, an OCI registry (docker-registry) and a libvirt pool (libvirtd)) in one `uplosi upload`, the manifest,
//! partial failure and `--retry-failed`.

mod support;

use std::path::Path;

use support::azure::{self, Azure};
use support::fixtures;
use support::gcp::{self, Gcp};
use support::glance::Glance;
use support::moto;

const CONFIG: &str = r#"[base]
name = "podvm"
imageVersionFile = "version.txt"

[base.aws]
region = "us-east-1"

[base.openstack]
cloud = "test"

[variant.aws]
provider = "aws"

[variant.openstack]
provider = "openstack"

[variant.libvirt]
provider = "file"

[variant.libvirt.file]
path = "pool/{{.Name}}-{{.Version}}.qcow2"
"#;

/// An Azure variant for the ARM fake, appended to [`CONFIG`].
fn azure_variant(azure: &Azure) -> String {
    format!(
        "\n[variant.azure]\nprovider = \"azure\"\n\n[variant.azure.azure]\nsubscriptionID = \"{}\"\n\
         location = \"eastus\"\nreplicationRegions = [\"westeurope\"]\nresourceGroup = \"{}\"\n\
         sharedImageGallery = \"release_gallery\"\nresourceManagerEndpoint = \"{}\"\n",
        azure::SUBSCRIPTION,
        azure::GROUP,
        azure.arm_url
    )
}

/// A GCP variant for fake-gcs-server and the GCE fake, appended to [`CONFIG`].
fn gcp_variant(gcp: &Gcp) -> String {
    format!("\n[variant.gcp]\nprovider = \"gcp\"\n\n[variant.gcp.gcp]\n{}", gcp.config("release-uploads"))
}

fn workspace(glance: &Glance, image: &Path) -> support::Workspace {
    workspace_with(glance, image, "")
}

fn workspace_with(glance: &Glance, image: &Path, extra: &str) -> support::Workspace {
    let ws = support::Workspace::with_image(&format!("{CONFIG}{extra}"), image);
    let clouds = format!("clouds:\n  test:\n    auth_type: none\n    image_endpoint_override: {}\n", glance.url);
    ws.write("clouds.yaml", &clouds);
    std::fs::create_dir_all(ws.path().join("pool")).expect("pool dir");
    ws
}

/// `uplosi` against moto and the workspace's clouds.yaml.
fn uplosi(ws: &support::Workspace, moto_url: &str) -> std::process::Command {
    let mut cmd = moto::uplosi_command(ws.path(), moto_url);
    cmd.env("OS_CLIENT_CONFIG_FILE", ws.path().join("clouds.yaml"))
        .env("OS_CLIENT_SECURE_FILE", "/nonexistent")
        .env("HOME", ws.path())
        .env_remove("OS_CLOUD")
        .env_remove("NO_COLOR");
    cmd
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON")
}

fn variant<'a>(manifest: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    manifest["variants"].as_array().expect("variants").iter().find(|v| v["variant"] == name).expect("variant")
}

fn amis_named(moto_url: &str, name: &str) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let conf = moto::sdk_config(moto_url, "us-east-1").await;
        moto::images_named(&conf, name).await.iter().filter_map(|i| i.image_id().map(str::to_string)).collect()
    })
}

#[test]
fn one_run_with_every_provider_writes_a_complete_manifest() {
    let server = moto::start();
    let glance = Glance::start();
    let azure = Azure::start(azure::Options::default());
    let gcp = Gcp::start(gcp::Options::default());
    let image = fixtures::gpt_image();
    let registry = support::registry::Registry::start(support::registry::Options::default());
    let pool = support::libvirt::Pool::new();
    let oci_and_pool = format!(
        "\n[variant.oci]\nprovider = \"oci\"\n\n[variant.oci.oci]\nrepository = \"{}/podvm\"\n\n[variant.pool]\nprovider = \"libvirt\"\n\n[variant.pool.libvirt]\nuri = \"{}\"\npool = \"{}\"\n",
        registry.host,
        support::libvirt::uri(),
        pool.name
    );
    let ws =
        workspace_with(&glance, &image.path, &format!("{}{}{oci_and_pool}", azure_variant(&azure), gcp_variant(&gcp)));
    let manifest_path = ws.path().join("manifest.json");
    // One CA bundle for both HTTPS fakes.
    let bundle = ws.path().join("ca-bundle.pem");
    let cas = [std::fs::read(azure.ca.ca()).expect("ca"), std::fs::read(gcp.ca.ca()).expect("ca")].concat();
    std::fs::write(&bundle, cas).expect("bundle");
    let mut cmd = uplosi(&ws, &server.url);
    azure.std_env(&mut cmd);
    let out = gcp
        .std_env(&mut cmd)
        .env("SSL_CERT_FILE", &bundle)
        .args(["upload", "system.raw", "-i", "--jobs", "2", "--output", "json", "--manifest"])
        .arg(&manifest_path)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let manifest = read_json(&manifest_path);
    let stdout: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is the manifest");
    assert_eq!(stdout, manifest);
    assert_eq!(manifest["version"], "1.2.3");
    assert_eq!(manifest["versionBumped"], true);
    assert_eq!(ws.read("version.txt").trim(), "1.2.4");
    for name in ["aws", "azure", "gcp", "openstack", "libvirt", "oci", "pool"] {
        let v = variant(&manifest, name);
        assert_eq!(v["status"], "ok", "{v}");
        assert_eq!(v["references"].as_array().map(Vec::len), Some(1), "{v}");
        assert!(v.get("error").is_none(), "{v}");
    }
    let arn = variant(&manifest, "aws")["references"][0].as_str().expect("ARN").to_string();
    assert!(arn.starts_with("arn:aws:ec2:us-east-1:"), "{arn}");
    assert_eq!(variant(&manifest, "aws")["regions"], serde_json::json!({ "us-east-1": arn }));
    let glance_id = variant(&manifest, "openstack")["references"][0].as_str().expect("ID");
    assert_eq!(glance.image(glance_id)["status"], "active");
    let path = variant(&manifest, "libvirt")["references"][0].as_str().expect("path");
    assert!(Path::new(path).is_file());
    let version_id = variant(&manifest, "azure")["references"][0].as_str().expect("version ID");
    assert!(version_id.ends_with("/galleries/release_gallery/images/podvm/versions/1.2.3"), "{version_id}");
    assert_eq!(azure.calls("PUT", "/versions/1.2.3").len(), 1);
    assert!(azure.blobs().is_empty(), "the upload disk is gone");
    let image_path = variant(&manifest, "gcp")["references"][0].as_str().expect("image path");
    assert_eq!(image_path, format!("projects/{}/global/images/podvm-1-2-3", gcp::PROJECT));
    assert_eq!(gcp.images()["podvm-1-2-3"]["status"], "READY");
    assert!(gcp.objects("release-uploads").is_empty(), "the archive object is gone");
    // The old shape: one entry per reference with variant, provider and reference.
    let refs = manifest["references"].as_array().expect("references");
    assert_eq!(refs.len(), 7);
    let artifact = variant(&manifest, "oci")["references"][0].as_str().expect("artifact");
    assert!(artifact.starts_with(&format!("{}/podvm@sha256:", registry.host)), "{artifact}");
    assert_eq!(registry.tags("podvm"), ["1.2.3"]);
    let volume = variant(&manifest, "pool")["references"][0].as_str().expect("volume");
    assert_eq!(Path::new(volume), pool.path("podvm-1.2.3.qcow2"));
    assert_eq!(pool.volumes(), ["podvm-1.2.3.qcow2"]);
    assert!(
        refs.iter().any(|r| r["variant"] == "openstack" && r["provider"] == "openstack" && r["reference"] == glance_id)
    );

    // CI logs: no colour codes when stderr is not a terminal, a timestamp and the variant's name on every line.
    assert!(!stderr.contains('\x1b'), "no ANSI escapes in a log file: {stderr:?}");
    for line in stderr.lines() {
        assert!(line.len() > 20 && line.as_bytes()[4] == b'-' && line.as_bytes()[10] == b'T', "timestamped: {line}");
    }
    assert!(stderr.lines().any(|l| l.contains("INFO openstack: openstack: created image")), "{stderr}");
    assert!(stderr.lines().any(|l| l.contains("INFO aws: ")), "{stderr}");
    assert!(stderr.lines().any(|l| l.contains("INFO azure: azure: creating disk")), "{stderr}");
    assert!(stderr.lines().any(|l| l.contains("INFO gcp: gcp: creating image podvm-1-2-3")), "{stderr}");
    for secret in ["Signature=", "Credential=", "X-Auth-Token", azure::CLIENT_SECRET, "Bearer arm-", "PRIVATE KEY"] {
        assert!(!stderr.contains(secret), "{secret} in the log");
    }
}

#[test]
fn a_stopped_emulator_fails_only_its_variant_and_retry_failed_finishes_the_job() {
    let server = moto::start();
    let mut glance = Glance::start();
    glance.kill();
    let image = fixtures::gpt_image();
    let ws = workspace(&glance, &image.path);
    let first = ws.path().join("first.json");
    let out =
        uplosi(&ws, &server.url).args(["upload", "system.raw", "-i", "--manifest"]).arg(&first).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let manifest = read_json(&first);
    assert_eq!(variant(&manifest, "aws")["status"], "ok");
    assert_eq!(variant(&manifest, "libvirt")["status"], "ok");
    let failed = variant(&manifest, "openstack");
    assert_eq!(failed["status"], "failed");
    let why = failed["error"].as_str().expect("error");
    assert!(why.contains("Glance") && why.contains("Connection refused"), "{why}");
    assert_eq!(manifest["versionBumped"], false);
    assert_eq!(ws.read("version.txt").trim(), "1.2.3", "no bump after a failure");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 2, "the successes' references are printed: {stdout}");
    let arn = variant(&manifest, "aws")["references"][0].clone();

    // With glance-api back, only the failed variant runs again: the file variant (replace = false) would refuse
    // to overwrite its export and AWS would replace its AMI if they ran.
    glance.restart();
    let second = ws.path().join("second.json");
    let out = uplosi(&ws, &server.url)
        .args(["upload", "system.raw", "-i", "--manifest"])
        .arg(&second)
        .arg("--retry-failed")
        .arg(&first)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("retrying variant `openstack` from"), "{stderr}");
    assert!(!stderr.contains("INFO aws:") && !stderr.contains("INFO libvirt:"), "{stderr}");
    let manifest = read_json(&second);
    for name in ["aws", "openstack", "libvirt"] {
        assert_eq!(variant(&manifest, name)["status"], "ok", "{manifest}");
    }
    assert_eq!(variant(&manifest, "aws")["references"][0], arn, "AWS kept its earlier reference");
    assert_eq!(amis_named(&server.url, "podvm-1.2.3").len(), 1);
    assert_eq!(manifest["versionBumped"], true);
    assert_eq!(ws.read("version.txt").trim(), "1.2.4");
    assert_eq!(String::from_utf8(out.stdout).expect("utf-8").lines().count(), 3, "all references");

    // The version file moved on: retrying the old manifest again is refused before any work.
    let out =
        uplosi(&ws, &server.url).args(["upload", "system.raw", "--retry-failed"]).arg(&first).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("was written for version 1.2.3") && stderr.contains("1.2.4"), "{stderr}");
}

#[test]
fn fail_fast_skips_the_other_variants() {
    let server = moto::start();
    let mut glance = Glance::start();
    glance.kill();
    let image = fixtures::gpt_image();
    let ws = workspace(&glance, &image.path);
    let path = ws.path().join("manifest.json");
    let out = uplosi(&ws, &server.url)
        .args(["upload", "system.raw", "--fail-fast", "--manifest"])
        .arg(&path)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let manifest = read_json(&path);
    assert_eq!(variant(&manifest, "openstack")["status"], "failed");
    for name in ["aws", "libvirt"] {
        let v = variant(&manifest, name);
        assert_eq!(v["status"], "skipped", "{v}");
        assert!(v["error"].as_str().is_some_and(|e| e.contains("--fail-fast")), "{v}");
    }
    assert!(amis_named(&server.url, "podvm-1.2.3").is_empty());
    assert!(std::fs::read_dir(ws.path().join("pool")).expect("pool").next().is_none(), "no export written");
}
