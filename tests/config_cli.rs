//! The `upload` command line against real config files: merging, overlays, templates, validation, versioning and the
//! dry-run plan.

mod support;

use predicates::prelude::*;
use support::{Workspace, variant};

/// The example from the Go uplosi README, verbatim.
const GO_README_EXAMPLE: &str = r#"
[base]
imageVersion = "1.2.3"
name = "my-image"

[base.aws]
# AWS specific configuration that is applied to every variant.
region = "eu-central-1"
replicationRegions = ["us-east-2", "ap-south-1"]
bucket = "my-bucket"
publish = true

[base.azure]
# Azure specific configuration that is applied to every variant.
subscriptionID = "00000000-0000-0000-0000-000000000000"
location = "northeurope"
resourceGroup = "my-rg"
sharedImageGallery = "my_gallery"
sharingNamePrefix = "myshared"

[base.gcp]
# GCP specific configuration that is applied to every variant.
project = "myproject-123456"
location = "europe-west3"
bucket = "my-bucket"

[base.openstack]
# OpenStack specific configuration that is applied to every variant.
cloud = "mycloud"
tags = ["tag-a", "tag-b"]
minDiskGB = 32

[variant.foo]
# Variant specific configuration that overrides the base configuration.
provider = "aws"
imageVersionFile = "foo-version.txt" # overrides base.imageVersion

[variant.foo.aws]
# Variant specific configuration that overrides the base.aws configuration.
replicationRegions = []
publish = false

[variant.bar]
# Variant specific configuration that overrides the base configuration.
provider = "azure"

[variant.bar.azure]
# Variant specific configuration that overrides the base.azure configuration.
resourceGroup = "my-rg-bar" # overrides base.azure.resourceGroup
"#;

fn go_readme_workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write("uplosi.conf", GO_README_EXAMPLE).write("foo-version.txt", "2.0.7\n");
    ws
}

#[test]
fn go_readme_example_resolves_with_go_defaults() {
    let ws = go_readme_workspace();
    let plan = ws.plan_json(&[]);
    let foo = variant(&plan, "foo");
    assert_eq!(foo["provider"], "aws");
    assert_eq!(foo["imageVersion"], "2.0.7", "imageVersionFile overrides imageVersion");
    assert_eq!(foo["aws"]["amiName"], "my-image-2.0.7");
    assert_eq!(foo["aws"]["amiDescription"], "my-image-2.0.7");
    assert_eq!(foo["aws"]["snapshotName"], "my-image-2.0.7");
    assert_eq!(foo["aws"]["blobName"], "my-image-2.0.7.raw");
    assert_eq!(foo["aws"]["region"], "eu-central-1");
    assert_eq!(foo["gcp"]["imageName"], "my-image-2-0-7");
    assert_eq!(foo["gcp"]["blobName"], "my-image-2-0-7.tar.gz");
    assert_eq!(foo["gcp"]["imageFamily"], "my-image");
    assert_eq!(
        foo["gcp"]["guestOsFeatures"],
        serde_json::json!(["GVNIC", "SEV_CAPABLE", "SEV_SNP_CAPABLE", "VIRTIO_SCSI_MULTIQUEUE", "UEFI_COMPATIBLE"]),
        "the Go tool's guest OS features"
    );
    assert_eq!(foo["gcp"]["architecture"], "X86_64");
    assert_eq!(foo["gcp"]["replace"], true);
    assert_eq!(foo["gcp"]["deprecateOlder"], false);
    assert_eq!(foo["gcp"]["computeEndpoint"], "https://compute.googleapis.com");
    assert_eq!(foo["openstack"]["imageName"], "my-image-2.0.7");
    assert_eq!(foo["openstack"]["minDiskGB"], 32);
    assert_eq!(foo["openstack"]["visibility"], "private", "the default is private, not the Go tool's public");
    assert!(foo["steps"].as_array().is_some_and(|s| !s.is_empty()));

    let bar = variant(&plan, "bar");
    assert_eq!(bar["provider"], "azure");
    assert_eq!(bar["imageVersion"], "1.2.3");
    assert_eq!(bar["azure"]["resourceGroup"], "my-rg-bar");
    assert_eq!(bar["azure"]["sku"], "my-image-1");
    assert_eq!(bar["azure"]["offer"], "Linux");
    assert_eq!(bar["azure"]["publisher"], "Contoso");
    assert_eq!(bar["azure"]["sharingProfile"], "private");
    assert_eq!(bar["azure"]["attestationVariant"], "azure-sev-snp");
    assert_eq!(bar["azure"]["imageDefinitionName"], "my-image");
    assert_eq!(bar["azure"]["diskName"], "my-image-1.2.3");
    assert_eq!(bar["azure"]["subscriptionID"], "00000000-0000-0000-0000-000000000000");
    for (key, default) in [
        ("architecture", serde_json::json!("x64")),
        ("replicaCount", serde_json::json!(1)),
        ("storageAccountType", serde_json::json!("Standard_LRS")),
        ("excludeFromLatest", serde_json::json!(false)),
        ("replace", serde_json::json!(true)),
        ("resourceManagerEndpoint", serde_json::json!("https://management.azure.com")),
        ("communityEula", serde_json::Value::Null),
        ("publisherEmail", serde_json::Value::Null),
        ("publisherUri", serde_json::Value::Null),
    ] {
        assert_eq!(bar["azure"][key], default, "azure {key}");
    }
    let names: Vec<&str> =
        plan["variants"].as_array().unwrap().iter().map(|v| v["variant"].as_str().unwrap()).collect();
    assert_eq!(names, ["bar", "foo"], "variants come sorted by name");
}

#[test]
fn variant_false_and_empty_list_override_base() {
    let plan = go_readme_workspace().plan_json(&[]);
    let foo = variant(&plan, "foo");
    assert_eq!(foo["aws"]["publish"], false, "publish = false in the variant must win over base's true");
    assert_eq!(foo["aws"]["replicationRegions"], serde_json::json!([]), "[] in the variant must win");
    let bar = variant(&plan, "bar");
    assert_eq!(bar["aws"]["publish"], true);
    assert_eq!(bar["aws"]["replicationRegions"], serde_json::json!(["us-east-2", "ap-south-1"]));
}

#[test]
fn overlay_on_existing_variant_takes_effect_and_later_files_win() {
    let ws = go_readme_workspace();
    ws.write(
        "uplosi.conf.d/10-first.conf",
        "[variant.foo.aws]\namiName = \"first-{{.Version}}\"\npublish = true\n[base.openstack]\nminDiskGB = 0\n",
    )
    .write("uplosi.conf.d/20-second.conf", "[variant.foo.aws]\npublish = false\n")
    .write("uplosi.conf.d/ignored.txt", "this is not a .conf file = = =")
    .write("uplosi.conf.d/30-new.conf", "[variant.baz]\nprovider = \"gcp\"\n");
    let plan = ws.plan_json(&[]);
    let foo = variant(&plan, "foo");
    assert_eq!(foo["aws"]["amiName"], "first-2.0.7", "overlay touching an existing variant applies");
    assert_eq!(foo["aws"]["publish"], false, "the later file's false wins over the earlier true");
    assert_eq!(foo["openstack"]["minDiskGB"], 0, "0 in a later file wins over 32");
    assert_eq!(variant(&plan, "baz")["provider"], "gcp", "overlays can add variants");
}

#[test]
fn config_dir_flag_resolves_version_file_relative_to_it() {
    let ws = Workspace::new();
    ws.write("conf/uplosi.conf", "[base]\nname = \"n\"\nprovider = \"gcp\"\nimageVersionFile = \"v.txt\"\n[base.gcp]\nproject = \"proj-123\"\nlocation = \"eu\"\nbucket = \"bkt\"\n")
        .write("conf/v.txt", "3.4.5\n")
        .write("conf/uplosi.conf.d/x.conf", "[base.gcp]\nimageFamily = \"fam\"\n");
    let plan = ws.plan_json(&["-c", "conf"]);
    let base = &plan["variants"][0];
    assert_eq!(base["variant"], serde_json::Value::Null, "no variants: base is the one unnamed variant");
    assert_eq!(base["imageVersion"], "3.4.5");
    assert_eq!(base["gcp"]["imageFamily"], "fam", "uplosi.conf.d is read from the -c directory");
    assert_eq!(base["gcp"]["publish"], false);
}

#[test]
fn unknown_key_is_an_error_with_file_line_and_suggestion() {
    let ws = go_readme_workspace();
    ws.write("uplosi.conf.d/20-aws.conf", "# aws overrides\n\n[base.aws]\n\n\n\nregoin = \"eu-west-1\"\n");
    let err = ws.config_error(&[]);
    assert!(
        err.contains("error: uplosi.conf.d/20-aws.conf:7: unknown key `regoin` in [base.aws] (did you mean `region`?)"),
        "{err}"
    );
}

#[test]
fn toml_syntax_error_names_file_and_line() {
    let ws = Workspace::new();
    ws.write("uplosi.conf", "[base]\nname = \"x\"\nprovider = aws\n");
    let err = ws.config_error(&[]);
    assert!(err.contains("uplosi.conf:3: invalid TOML"), "{err}");
}

#[test]
fn variant_without_provider_is_named() {
    let ws = Workspace::new();
    ws.write("uplosi.conf", "[base]\nname = \"x\"\n\n[variant.lonely]\nimageVersion = \"1.0.0\"\n");
    let err = ws.config_error(&[]);
    assert!(err.contains("uplosi.conf:4: variant `lonely` has no provider"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let ws = Workspace::new();
    ws.write(
        "uplosi.conf",
        r#"[base]
name = "x"
imageVersion = "1.2"

[variant.g]
provider = "gcp"
[variant.g.gcp]
project = "proj-123"
location = "eu"
bucket = "b"
imageName = "Bad_Name"

[variant.z]
provider = "azure"
[variant.z.azure]
subscriptionID = "not-a-guid"
location = "westeurope"
resourceGroup = "rg"
sharedImageGallery = "my-gallery"
sharingProfile = "community"
"#,
    );
    let out = ws.uplosi().args(["upload", "system.raw", "--dry-run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = "uplosi.conf:3: image version \"1.2\" must be in the form MAJOR.MINOR.PATCH";
    assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    // The version problem stops resolution; fix it and the per-provider checks all show up together.
    ws.write("uplosi.conf", &ws.read("uplosi.conf").replace("\"1.2\"", "\"1.2.0\""));
    let out = ws.uplosi().args(["upload", "system.raw", "--dry-run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "uplosi.conf:11: variant `g`: imageName \"Bad_Name\" must match [a-z]([-a-z0-9]*[a-z0-9])?",
        "uplosi.conf:10: variant `g`: bucket \"b\" must be 3 to 63",
        "uplosi.conf:16: variant `z`: subscriptionID \"not-a-guid\" must be a GUID",
        "uplosi.conf:19: variant `z`: sharedImageGallery \"my-gallery\" must be",
        "variant `z`: sharingProfile \"community\" needs `sharingNamePrefix`",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn required_keys_per_provider_are_checked() {
    let ws = Workspace::new();
    ws.write("uplosi.conf", "[base]\nname = \"x\"\nprovider = \"aws\"\n[base.aws]\nbucket = \"my-bucket\"\n");
    let err = ws.config_error(&[]);
    assert!(err.contains("required key `region` for provider aws is missing"), "{err}");
    ws.write("uplosi.conf", "[base]\nprovider = \"openstack\"\n");
    let err = ws.config_error(&[]);
    assert!(err.contains("required key `name` is missing"), "{err}");
    assert!(err.contains("required key `cloud` for provider openstack is missing"), "{err}");
}

#[test]
fn gce_image_name_longer_than_63_is_rejected() {
    let ws = Workspace::new();
    let long = "a".repeat(60);
    ws.write(
        "uplosi.conf",
        &format!("[base]\nname = \"{long}\"\nprovider = \"gcp\"\nimageVersion = \"1.0.0\"\n[base.gcp]\nproject = \"proj-123\"\nlocation = \"eu\"\nbucket = \"bkt\"\n"),
    );
    let err = ws.config_error(&[]);
    assert!(err.contains("imageName"), "{err}");
    assert!(err.contains("comes from the default"), "{err}");
}

#[test]
fn unknown_provider_gets_a_suggestion() {
    let ws = Workspace::new();
    ws.write("uplosi.conf", "[base]\nname = \"x\"\nprovider = \"asw\"\n");
    let err = ws.config_error(&[]);
    assert!(err.contains("uplosi.conf:3: unknown provider \"asw\" (did you mean \"aws\"?)"), "{err}");
}

#[test]
fn template_errors_name_the_key() {
    let ws = go_readme_workspace();
    ws.write("uplosi.conf.d/t.conf", "[variant.foo.aws]\namiName = \"{{.Nmae}}\"\n");
    let err = ws.config_error(&[]);
    assert!(
        err.contains("uplosi.conf.d/t.conf:2: template in `aws.amiName`: column 1: unknown field `.Nmae`"),
        "{err}"
    );
}

#[test]
fn templates_are_plain_text_not_html_escaped() {
    let ws = Workspace::new();
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"img\"\nprovider = \"aws\"\n[base.aws]\nregion = \"eu-west-1\"\nbucket = \"bkt\"\namiDescription = \"{{.Name}} <stable> & 'latest'\"\n",
    );
    let plan = ws.plan_json(&[]);
    assert_eq!(plan["variants"][0]["aws"]["amiDescription"], "img <stable> & 'latest'");
}

#[test]
fn variant_globs_select_and_all_filtered_is_an_error() {
    let ws = go_readme_workspace();
    ws.write("uplosi.conf.d/more.conf", "[variant.foo2]\nprovider = \"aws\"\n");
    let plan = ws.plan_json(&["--enable-variant-glob", "foo*", "--disable-variant-glob", "foo2,bar"]);
    let names: Vec<&str> =
        plan["variants"].as_array().unwrap().iter().map(|v| v["variant"].as_str().unwrap()).collect();
    assert_eq!(names, ["foo"]);
    let err = ws.config_error(&["--disable-variant-glob", "*"]);
    assert!(err.contains("no variant selected"), "{err}");
    assert!(err.contains("bar, foo, foo2"), "{err}");
    let err = ws.config_error(&["--enable-variant-glob", "[oops"]);
    assert!(err.contains("invalid variant glob \"[oops\""), "{err}");
}

#[test]
fn a_bad_variant_filtered_out_does_not_fail_the_run() {
    let ws = go_readme_workspace();
    ws.write("uplosi.conf.d/broken.conf", "[variant.broken]\nprovider = \"gcp\"\n");
    ws.plan_json(&["--disable-variant-glob", "broken"]);
}

#[test]
fn increment_without_version_file_is_a_usage_error() {
    let ws = Workspace::new();
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"x\"\nprovider = \"aws\"\n[base.aws]\nregion = \"eu-west-1\"\nbucket = \"bkt\"\n",
    );
    ws.uplosi()
        .args(["upload", "system.raw", "-i"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("needs a version file"));
}

#[test]
fn dry_run_with_increment_writes_nothing() {
    let ws = go_readme_workspace();
    let before: Vec<_> = std::fs::read_dir(ws.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    ws.uplosi()
        .args(["upload", "system.raw", "--dry-run", "-i", "--bump", "minor"])
        .assert()
        .success()
        .stderr(predicate::str::contains("would write 2.1.0"));
    assert_eq!(ws.read("foo-version.txt"), "2.0.7\n");
    let after: Vec<_> = std::fs::read_dir(ws.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "dry run must not create files");
}

#[test]
fn legacy_bare_form_means_upload() {
    let ws = go_readme_workspace();
    ws.uplosi()
        .args(["-i", "system.raw", "--dry-run"])
        .assert()
        .success()
        .stdout(predicate::str::contains("variant foo: my-image 2.0.7 on aws"));
    ws.uplosi().args(["system.raw", "--dry-run"]).assert().success();
}

#[test]
fn dry_run_text_shows_rendered_config_and_steps() {
    let ws = go_readme_workspace();
    ws.uplosi()
        .args(["upload", "system.raw", "--dry-run"])
        .assert()
        .success()
        .stdout(predicate::str::contains("aws.amiName = \"my-image-2.0.7\""))
        .stdout(predicate::str::contains("azure.resourceGroup = \"my-rg-bar\""))
        .stdout(predicate::str::contains("steps:"));
}

#[test]
fn image_must_exist_and_be_a_file() {
    let ws = go_readme_workspace();
    ws.uplosi()
        .args(["upload", "missing.raw", "--dry-run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("image missing.raw"));
    std::fs::create_dir(ws.path().join("adir")).unwrap();
    ws.uplosi()
        .args(["upload", "adir", "--dry-run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is a directory"));
}

#[test]
fn missing_config_says_where_it_looked() {
    let ws = Workspace::new();
    let err = ws.config_error(&[]);
    assert!(err.contains("no uplosi.conf in ."), "{err}");
    assert!(err.contains("-c DIR"), "{err}");
}

#[test]
fn version_completions_and_help() {
    let ws = Workspace::new();
    ws.uplosi().arg("--version").assert().success().stdout(predicate::str::starts_with("uplosi "));
    ws.uplosi().args(["completions", "bash"]).assert().success().stdout(predicate::str::contains("_uplosi()"));
    ws.uplosi()
        .args(["upload", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--increment-version"))
        .stdout(predicate::str::contains("Exit codes"));
    ws.uplosi().args(["upload", "--bogus"]).assert().code(2);
}

#[test]
fn gcp_without_credentials_fails_before_any_work() {
    let ws = Workspace::new();
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"my-image\"\nimageVersionFile = \"foo-version.txt\"\nprovider = \"gcp\"\n\n[base.gcp]\n\
         project = \"myproject-123456\"\nlocation = \"europe-west3\"\nbucket = \"my-image-upload\"\n",
    )
    .write("foo-version.txt", "2.0.7\n");
    // No key file, no gcloud credentials in HOME, and no metadata server: Application Default Credentials give none.
    let err = ws
        .uplosi()
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("CLOUDSDK_CONFIG")
        .env("HOME", ws.path())
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .args(["upload", "system.raw", "-i"])
        .assert()
        .code(2)
        .stdout("")
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8_lossy(&err);
    assert!(
        err.contains("no usable Google Cloud credentials") && err.contains("GOOGLE_APPLICATION_CREDENTIALS"),
        "{err}"
    );
    assert_eq!(ws.read("foo-version.txt"), "2.0.7\n", "a failed run never bumps the version");
}

#[test]
fn shipped_example_documents_every_key_and_is_valid() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/uplosi.conf.example")).unwrap();
    use uplosi::config::schema::Section;
    for section in [Section::Common].into_iter().chain(Section::PROVIDERS) {
        for key in section.keys() {
            let needle = format!("{} =", key.name);
            assert!(example.contains(&needle), "uplosi.conf.example does not document `{}`", key.name);
        }
    }
    let ws = Workspace::new();
    ws.write("uplosi.conf", &example);
    let plan = ws.plan_json(&[]);
    assert!(plan["variants"].as_array().is_some_and(|v| v.len() >= 7));
}

#[test]
fn cloud_api_adaptor_azure_config_with_the_primary_region_in_replication_regions_is_accepted() {
    let ws = Workspace::new();
    ws.write(
        "uplosi.conf",
        r#"[base]
name = "podvm"
imageVersion = "0.1.0"
provider = "azure"

[base.azure]
subscriptionID = "00000000-0000-0000-0000-000000000001"
location = "eastus"
resourceGroup = "caa"
sharedImageGallery = "caa_gallery"
replicationRegions = ["eastus", "eastus2", "westeurope", "northeurope", "eastus2"]

[variant.default]
"#,
    );
    let plan = ws.plan_json(&[]);
    let default = variant(&plan, "default");
    assert_eq!(default["azure"]["replicationRegions"], serde_json::json!(["eastus2", "westeurope", "northeurope"]));
    let steps = default["steps"].to_string();
    assert!(steps.contains("eastus, eastus2, westeurope, northeurope"), "{steps}");

    ws.write(
        "uplosi.conf.d/bad.conf",
        "[base.azure]\nreplicaCount = 0\narchitecture = \"arm64\"\nresourceManagerEndpoint = \"http://x\"\n",
    );
    let err = ws.config_error(&[]);
    for needle in [
        "replicaCount 0 must be 1 to 100",
        "architecture \"arm64\" must be one of \"x64\", \"Arm64\"",
        "resourceManagerEndpoint \"http://x\" must be an https URL",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn azure_region_names_are_accepted_as_azure_spells_them() {
    let ws = Workspace::new();
    // The Go tool's own test configuration writes GermanyWestCentral.
    ws.write(
        "uplosi.conf",
        r#"[base]
name = "podvm"
imageVersion = "0.1.0"
provider = "azure"

[base.azure]
subscriptionID = "00000000-0000-0000-0000-000000000001"
location = "GermanyWestCentral"
resourceGroup = "rg"
sharedImageGallery = "gallery"
replicationRegions = ["Germany West Central", "germanywestcentral", "North Europe", "NorthEurope", "eastus2"]
"#,
    );
    let plan = ws.plan_json(&[]);
    let base = &plan["variants"][0];
    assert_eq!(base["azure"]["location"], "germanywestcentral", "{plan}");
    assert_eq!(base["azure"]["replicationRegions"], serde_json::json!(["northeurope", "eastus2"]), "{plan}");
    let steps = base["steps"].to_string();
    assert!(steps.contains("germanywestcentral, northeurope, eastus2"), "{steps}");

    ws.write("uplosi.conf.d/bad.conf", "[base.azure]\nreplicationRegions = [\"west-europe\"]\n");
    let err = ws.config_error(&[]);
    assert!(err.contains("uplosi.conf.d/bad.conf:2"), "the line: {err}");
    assert!(err.contains("replicationRegions") && err.contains("\"west-europe\" is not an Azure region name"), "{err}");
}

#[test]
fn gcp_keys_are_checked() {
    let ws = Workspace::new();
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"img\"\nprovider = \"gcp\"\n\n[base.gcp]\nproject = \"myproject-123456\"\n\
         location = \"europe-west3\"\nbucket = \"my-bucket\"\narchitecture = \"x86_64\"\n\
         guestOsFeatures = [\"GVNIC\", \"TDX_CAPABEL\"]\nlabels = { Team = \"a\", ok = \"B\" }\n\
         storageLocations = [\"EU\"]\n",
    );
    let err = ws.config_error(&[]);
    for needle in [
        "architecture \"x86_64\" must be \"X86_64\" or \"ARM64\"",
        "\"TDX_CAPABEL\" is not a Compute Engine guest OS feature (did you mean \"TDX_CAPABLE\"?)",
        "label Team = \"a\"",
        "label ok = \"B\"",
        "storageLocations entry \"EU\"",
    ] {
        assert!(err.contains(needle), "{needle}:\n{err}");
    }
}
