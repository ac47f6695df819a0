//! `uplosi delete` and `uplosi prune` on every provider, against the same real services the uploads use: files on
//! disk, moto (AWS), glance-api (OpenStack), Azurite with the ARM fake (Azure), fake-gcs-server with the GCE fake
//! (GCP).

mod support;

use std::time::{Duration, SystemTime};

use support::Workspace;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `file` variant exporting `out/podvm-VERSION.raw`, at version 1.0.5.
fn file_workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"podvm\"\nprovider = \"file\"\nimageVersionFile = \"version.txt\"\n\n[base.file]\npath = \"out/podvm-{{.Version}}.raw\"\n",
    )
    .write("version.txt", "1.0.5\n");
    let day = Duration::from_secs(86_400);
    for patch in 0..=5u64 {
        let path = ws.path().join(format!("out/podvm-1.0.{patch}.raw"));
        ws.write(&format!("out/podvm-1.0.{patch}.raw"), "image");
        // 1.0.0 is 50 days old, each later version 5 days younger.
        let age = day * (50 - 5 * patch as u32);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now() - age))
            .expect("mtime");
    }
    for foreign in ["out/podvm-latest.raw", "out/podvm-1.0.raw", "out/other-1.0.1.raw", "out/podvm-1.0.1.raw.sha256"] {
        ws.write(foreign, "not ours");
    }
    ws
}

fn files(ws: &Workspace) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(ws.path().join("out"))
        .expect("out")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn run(ws: &Workspace, args: &[&str]) -> std::process::Output {
    ws.uplosi().args(args).output().expect("run")
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&out.stdout), text(&out.stderr)))
}

fn versions(list: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> =
        list.as_array().into_iter().flatten().filter_map(|e| e["version"].as_str().map(String::from)).collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn prune_plans_asks_and_deletes_only_the_variants_old_files() {
    let ws = file_workspace();
    let before = files(&ws);

    let dry = run(&ws, &["prune", "--keep", "2", "--dry-run", "--output", "json"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let plan = json(&dry);
    let variant = &plan["variants"][0];
    assert_eq!(variant["provider"], "file");
    assert_eq!(versions(&variant["deleted"]), ["1.0.0", "1.0.1", "1.0.2", "1.0.3"], "{plan}");
    assert_eq!(variant["deleted"][0]["kind"], "file");
    assert!(variant["deleted"][0]["id"].as_str().unwrap_or_default().ends_with("out/podvm-1.0.0.raw"), "{plan}");
    let kept = variant["kept"].as_array().expect("kept");
    assert!(kept.iter().any(|k| k["version"] == "1.0.5" && k["reason"] == "current version"), "{plan}");
    assert!(kept.iter().any(|k| k["version"] == "1.0.4" && k["reason"] == "newest 2"), "{plan}");
    assert_eq!(variant["failed"], serde_json::json!([]));
    assert_eq!(files(&ws), before, "a dry run deletes nothing");
    assert!(text(&dry.stderr).contains("would delete 1.0.0 file"), "the plan is shown: {}", text(&dry.stderr));

    let refused = run(&ws, &["prune", "--keep", "2"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("pass --yes or --dry-run"), "{}", text(&refused.stderr));
    assert!(text(&refused.stdout).contains("delete 1.0.0 file"), "the plan comes first: {}", text(&refused.stdout));
    assert_eq!(files(&ws), before, "nothing deleted without --yes");

    let young = run(&ws, &["prune", "--keep", "1", "--older-than", "36d", "--dry-run", "--output", "json"]);
    let plan = json(&young);
    assert_eq!(versions(&plan["variants"][0]["deleted"]), ["1.0.0", "1.0.1", "1.0.2"], "{plan}");
    assert!(
        plan["variants"][0]["kept"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|k| k["version"] == "1.0.3" && k["reason"] == "younger than 36d"),
        "{plan}"
    );

    let done = run(&ws, &["prune", "--keep", "2", "--yes", "--output", "json"]);
    assert!(done.status.success(), "{}", text(&done.stderr));
    assert_eq!(versions(&json(&done)["variants"][0]["deleted"]), ["1.0.0", "1.0.1", "1.0.2", "1.0.3"]);
    assert_eq!(
        files(&ws),
        [
            "other-1.0.1.raw",
            "podvm-1.0.1.raw.sha256",
            "podvm-1.0.4.raw",
            "podvm-1.0.5.raw",
            "podvm-1.0.raw",
            "podvm-latest.raw"
        ],
        "only the variant's old exports go"
    );
    let again = run(&ws, &["prune", "--keep", "2", "--yes", "--output", "json"]);
    assert!(
        again.status.success() && json(&again)["variants"][0]["deleted"] == serde_json::json!([]),
        "nothing left to do"
    );
}

#[test]
fn on_a_terminal_uplosi_asks_once() {
    let ws = file_workspace();
    let binary = assert_cmd::cargo::cargo_bin("uplosi");
    // `script` gives uplosi a terminal; the answer comes on its input.
    let ask = |answer: &str| {
        let mut child = std::process::Command::new("script")
            .args(["-qec", &format!("{} prune --keep 2", binary.display()), "/dev/null"])
            .current_dir(ws.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("script (util-linux)");
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(answer.as_bytes()).expect("answer");
        let out = child.wait_with_output().expect("wait");
        (out.status.code(), text(&out.stdout))
    };
    let (code, screen) = ask("n\n");
    assert_eq!(code, Some(1), "{screen}");
    assert!(
        screen.contains("Delete the 4 listed above (1 variant(s))? [y/N]") && screen.contains("nothing was deleted"),
        "{screen}"
    );
    assert_eq!(files(&ws).len(), 10, "no is no");
    let (code, screen) = ask("y\n");
    assert_eq!(code, Some(0), "{screen}");
    assert!(!files(&ws).contains(&"podvm-1.0.0.raw".to_string()), "{screen}");
}

#[test]
fn delete_takes_one_version_and_never_the_current_one() {
    let ws = file_workspace();
    let out = run(&ws, &["delete", "1.0.4", "--yes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!files(&ws).contains(&"podvm-1.0.4.raw".to_string()));
    assert!(files(&ws).contains(&"podvm-1.0.3.raw".to_string()));

    let current = run(&ws, &["delete", "1.0.5", "--yes", "--output", "json"]);
    assert!(current.status.success(), "{}", text(&current.stderr));
    let variant = &json(&current)["variants"][0];
    assert_eq!(variant["deleted"], serde_json::json!([]));
    assert_eq!(variant["kept"][0]["reason"], "current version");
    assert!(files(&ws).contains(&"podvm-1.0.5.raw".to_string()));

    let bad = run(&ws, &["delete", "1.0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("MAJOR.MINOR.PATCH"), "{}", text(&bad.stderr));
}

#[test]
fn a_name_template_without_the_version_is_refused_naming_the_key() {
    let ws = Workspace::new();
    ws.write("uplosi.conf", "[base]\nname = \"podvm\"\nprovider = \"file\"\n\n[base.file]\npath = \"out/podvm.raw\"\n");
    for args in [&["prune", "--keep", "1", "--dry-run"][..], &["delete", "1.0.0", "--yes"][..]] {
        let out = run(&ws, args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("`file.path` = \"out/podvm.raw\" does not contain the whole version"),
            "{}",
            text(&out.stderr)
        );
    }
    let ws = file_workspace();
    for (args, message) in [
        (&["prune", "--keep", "0"][..], "--keep"),
        (&["prune", "--keep", "2", "--older-than", "soon"][..], "--older-than \"soon\""),
    ] {
        let out = run(&ws, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains(message), "{args:?}: {}", text(&out.stderr));
    }
}

/// `uplosi` in `ws` for the OpenStack tests: clouds.yaml for glance-api without auth.
fn openstack_uplosi(ws: &Workspace, glance: &support::glance::Glance) -> std::process::Command {
    support::glance::uplosi_noauth(ws.path(), &glance.url)
}

#[test]
fn glance_prune_keeps_protected_and_foreign_images_and_a_dry_run_writes_nothing() {
    let glance = support::glance::Glance::start();
    let ws = Workspace::new();
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"podvm\"\nprovider = \"openstack\"\nimageVersionFile = \"version.txt\"\n\n[base.openstack]\ncloud = \"test\"\ndiskFormat = \"raw\"\n",
    );
    std::fs::File::create(ws.image()).and_then(|f| f.set_len(1 << 20)).expect("image");
    for patch in 0..=3 {
        ws.write("version.txt", &format!("1.0.{patch}\n"));
        let out = openstack_uplosi(&ws, &glance).args(["upload", "system.raw"]).output().expect("upload");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let images = glance.images().expect("images");
    let id_of = |name: &str| {
        images.iter().find(|i| i["name"] == name).map(|i| i["id"].as_str().unwrap_or_default().to_string())
    };
    let first = id_of("podvm-1.0.0").expect("podvm-1.0.0");
    assert_eq!(glance.image(&first)["uplosi-name"], "podvm", "uploads carry their name");
    assert_eq!(glance.image(&first)["uplosi-version"], "1.0.0", "and their version");
    glance.patch(&first, r#"[{"op": "replace", "path": "/protected", "value": true}]"#);
    let foreign = glance.create(
        r#"{"name": "podvm-0.9.0", "disk_format": "raw", "container_format": "bare", "uplosi-name": "someone-else"}"#,
    );
    glance.create(r#"{"name": "podvm-latest", "disk_format": "raw", "container_format": "bare"}"#);

    let log_before = glance.log().len();
    let dry = openstack_uplosi(&ws, &glance)
        .args(["delete", "1.0.1", "--dry-run", "--output", "json"])
        .output()
        .expect("run");
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert_eq!(versions(&json(&dry)["variants"][0]["deleted"]), ["1.0.1"]);
    let during = &glance.log()[log_before..];
    assert!(
        !during.contains("\"DELETE ") && !during.contains("\"PATCH ") && !during.contains("\"POST "),
        "a dry run sends no write request: {during}"
    );
    assert_eq!(glance.images().expect("images").len(), images.len() + 2);

    let out = openstack_uplosi(&ws, &glance)
        .args(["prune", "--keep", "1", "--yes", "--output", "json"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let variant = &json(&out)["variants"][0];
    assert_eq!(versions(&variant["deleted"]), ["1.0.1", "1.0.2"], "{variant}");
    assert!(
        glance.log()[log_before..].contains("\"DELETE /v2/images/"),
        "the log shows write requests (so the dry-run check above means something)"
    );
    let kept = variant["kept"].as_array().expect("kept");
    let reason = |version: &str| kept.iter().find(|k| k["version"] == version).map(|k| k["reason"].clone());
    assert_eq!(reason("1.0.0"), Some("protected in Glance".into()), "{variant}");
    assert_eq!(reason("1.0.3"), Some("current version".into()), "{variant}");
    assert_eq!(reason("0.9.0"), Some("tag says another name (\"someone-else\")".into()), "{variant}");
    let left: Vec<String> =
        glance.images().expect("images").iter().map(|i| i["name"].as_str().unwrap_or_default().to_string()).collect();
    for name in ["podvm-1.0.0", "podvm-1.0.3", "podvm-0.9.0", "podvm-latest"] {
        assert!(left.contains(&name.to_string()), "{name} stays: {left:?}");
    }
    for name in ["podvm-1.0.1", "podvm-1.0.2"] {
        assert!(!left.contains(&name.to_string()), "{name} is gone: {left:?}");
    }
    assert_eq!(glance.image(foreign["id"].as_str().unwrap_or_default())["name"], "podvm-0.9.0");
}

fn aws_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// (name, AMI ID) of every AMI of the account in `region`.
async fn amis(endpoint: &str, region: &str) -> Vec<(String, String)> {
    let conf = support::moto::sdk_config(endpoint, region).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let out = ec2.describe_images().owners("self").send().await.expect("DescribeImages");
    let mut found: Vec<(String, String)> = out
        .images()
        .iter()
        .map(|i| (i.name().unwrap_or_default().to_string(), i.image_id().unwrap_or_default().to_string()))
        .collect();
    found.sort();
    found
}

/// The IDs of the account's snapshots in `region` tagged `uplosi-version` = `version`.
async fn snapshots_of(endpoint: &str, region: &str, version: &str) -> Vec<String> {
    let conf = support::moto::sdk_config(endpoint, region).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let filter = aws_sdk_ec2::types::Filter::builder().name("tag:uplosi-version").values(version).build();
    let out = ec2.describe_snapshots().owner_ids("self").filters(filter).send().await.expect("DescribeSnapshots");
    out.snapshots().iter().filter_map(|s| s.snapshot_id().map(String::from)).collect()
}

/// Registers an AMI named `name` in `region` from a fresh snapshot, as someone else's tooling would.
async fn register_foreign(endpoint: &str, region: &str, name: &str) -> String {
    let conf = support::moto::sdk_config(endpoint, region).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let volume = ec2.create_volume().availability_zone(format!("{region}a")).size(1).send().await.expect("volume");
    let snapshot =
        ec2.create_snapshot().volume_id(volume.volume_id().unwrap_or_default()).send().await.expect("snapshot");
    let mapping = aws_sdk_ec2::types::BlockDeviceMapping::builder()
        .device_name("/dev/xvda")
        .ebs(
            aws_sdk_ec2::types::EbsBlockDevice::builder()
                .snapshot_id(snapshot.snapshot_id().unwrap_or_default())
                .build(),
        )
        .build();
    let image = ec2
        .register_image()
        .name(name)
        .root_device_name("/dev/xvda")
        .block_device_mappings(mapping)
        .send()
        .await
        .expect("RegisterImage");
    image.image_id().unwrap_or_default().to_string()
}

/// Gives the workspace's sparse image a 4 KiB block of data, so every provider has something to upload.
fn put_data_into_image(ws: &Workspace) {
    use std::os::unix::fs::FileExt;
    let image = std::fs::File::options().write(true).open(ws.image()).expect("image");
    image.write_all_at(&[7u8; 4096], 0).expect("data");
}

/// Uploads versions 1.0.`patches` one after the other through `uplosi`, writing each into the version file.
fn upload_versions(
    ws: &Workspace,
    patches: std::ops::RangeInclusive<u32>,
    uplosi: impl Fn(&[&str]) -> std::process::Output,
) {
    for patch in patches {
        ws.write("version.txt", &format!("1.0.{patch}\n"));
        let out = uplosi(&["upload", "system.raw"]);
        assert!(out.status.success(), "1.0.{patch}: {}", text(&out.stderr));
    }
}

/// A snapshot left over by a killed upload of `version` (tagged as uploads tag theirs, no AMI behind it).
async fn leftover_snapshot(endpoint: &str, region: &str, version: &str) -> String {
    let conf = support::moto::sdk_config(endpoint, region).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let volume = ec2.create_volume().availability_zone(format!("{region}a")).size(1).send().await.expect("volume");
    let tags = aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(aws_sdk_ec2::types::ResourceType::Snapshot)
        .tags(aws_sdk_ec2::types::Tag::builder().key("uplosi-name").value("podvm").build())
        .tags(aws_sdk_ec2::types::Tag::builder().key("uplosi-version").value(version).build())
        .build();
    let snapshot = ec2
        .create_snapshot()
        .volume_id(volume.volume_id().unwrap_or_default())
        .tag_specifications(tags)
        .send()
        .await
        .expect("snapshot");
    snapshot.snapshot_id().unwrap_or_default().to_string()
}

/// The AWS actions in a moto recording (query `Action=` for EC2, `X-Amz-Target` for SSM and the JSON protocols).
fn recorded_actions(recording: &str) -> Vec<String> {
    use base64::Engine;
    recording
        .lines()
        .filter_map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).ok()?;
            if let Some(target) = entry["headers"]["X-Amz-Target"].as_str() {
                return target.rsplit('.').next().map(String::from);
            }
            let body = entry["body"].as_str().unwrap_or_default();
            let body = if entry["body_encoded"] == true {
                String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(body).unwrap_or_default())
                    .into_owned()
            } else {
                body.to_string()
            };
            let action = body.split('&').find_map(|kv| kv.strip_prefix("Action=")).map(String::from);
            Some(action.unwrap_or_else(|| format!("{} {}", entry["method"], entry["url"])))
        })
        .collect()
}

#[test]
fn aws_prune_keeps_the_newest_in_every_region_with_their_snapshots_and_nothing_foreign() {
    let server = support::moto::start();
    let ws = Workspace::new();
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"podvm\"\nprovider = \"aws\"\nimageVersionFile = \"version.txt\"\n\n[base.aws]\nregion = \"us-east-1\"\nreplicationRegions = [\"eu-west-1\"]\nssmParameter = \"/podvm/pinned\"\n",
    );
    put_data_into_image(&ws);
    let aws = |args: &[&str]| support::moto::uplosi_command(ws.path(), &server.url).args(args).output().expect("run");
    upload_versions(&ws, 0..=5, aws);
    let rt = aws_runtime();
    let foreign: Vec<String> = rt.block_on(async {
        let mut ids = Vec::new();
        for region in ["us-east-1", "eu-west-1"] {
            ids.push(register_foreign(&server.url, region, "other-1.0.0").await);
            ids.push(register_foreign(&server.url, region, "podvm-1.0").await);
        }
        ids
    });
    // The SSM parameter pins 1.0.1 in us-east-1.
    let pinned = rt.block_on(async {
        let ami = amis(&server.url, "us-east-1").await.into_iter().find(|(n, _)| n == "podvm-1.0.1").expect("1.0.1").1;
        let conf = support::moto::sdk_config(&server.url, "us-east-1").await;
        aws_sdk_ssm::Client::new(&conf)
            .put_parameter()
            .name("/podvm/pinned")
            .value(&ami)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .expect("PutParameter");
        ami
    });
    assert!(!rt.block_on(snapshots_of(&server.url, "us-east-1", "1.0.0")).is_empty(), "uploads tag their snapshots");
    let leftover = rt.block_on(leftover_snapshot(&server.url, "us-east-1", "0.9.0"));

    // Everything is seconds old (AMI CreationDate, the leftover snapshot's StartTime): --older-than keeps it all.
    let recent = aws(&["prune", "--keep", "2", "--older-than", "24h", "--dry-run", "--output", "json"]);
    assert!(recent.status.success(), "{}", text(&recent.stderr));
    let recent = json(&recent);
    assert_eq!(recent["variants"][0]["deleted"], serde_json::json!([]), "{recent}");
    assert!(
        recent["variants"][0]["kept"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|k| k["id"] == leftover.as_str() && k["reason"] == "younger than 1d"),
        "the leftover snapshot is young: {recent}"
    );

    // A dry run makes list and describe calls only, as moto's own request recorder shows.
    let moto_api = |action: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sf", "-X", if action == "download-recording" { "GET" } else { "POST" }])
            .arg(format!("{}/moto-api/recorder/{action}", server.url))
            .output()
            .expect("curl");
        text(&out.stdout)
    };
    moto_api("start-recording");
    let dry = aws(&["delete", "1.0.1", "--dry-run", "--output", "json"]);
    moto_api("stop-recording");
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert_eq!(versions(&json(&dry)["variants"][0]["deleted"]), ["1.0.1"]);
    let actions = recorded_actions(&moto_api("download-recording"));
    assert!(actions.iter().any(|a| a == "DescribeImages"), "{actions:?}");
    assert!(
        actions.iter().all(|a| a.starts_with("Describe") || a.starts_with("Get") || a.starts_with("List")),
        "a dry run writes nothing: {actions:?}"
    );

    let out = aws(&["prune", "--keep", "2", "--yes", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = json(&out);
    let variant = &report["variants"][0];
    assert_eq!(versions(&variant["deleted"]), ["0.9.0", "1.0.0", "1.0.1", "1.0.2", "1.0.3"], "{report}");
    let deleted = variant["deleted"].as_array().expect("deleted");
    assert!(deleted.iter().any(|d| d["id"] == leftover.as_str() && d["kind"] == "snapshot"), "{report}");
    assert!(deleted.iter().any(|d| d["kind"] == "snapshot"), "the snapshots are listed: {report}");
    assert!(!deleted.iter().any(|d| d["id"] == pinned.as_str()), "the AMI the SSM parameter points to stays: {report}");
    assert!(
        variant["kept"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|k| k["id"] == pinned.as_str() && k["reason"] == "SSM parameter /podvm/pinned points to it"),
        "{report}"
    );

    rt.block_on(async {
        for region in ["us-east-1", "eu-west-1"] {
            let names: Vec<String> = amis(&server.url, region).await.into_iter().map(|(n, _)| n).collect();
            let mut expected: Vec<&str> = vec!["other-1.0.0", "podvm-1.0", "podvm-1.0.4", "podvm-1.0.5"];
            if region == "us-east-1" {
                expected.push("podvm-1.0.1");
            }
            expected.sort();
            assert_eq!(names, expected, "{region}");
            for gone in ["1.0.0", "1.0.2", "1.0.3"] {
                assert!(
                    snapshots_of(&server.url, region, gone).await.is_empty(),
                    "{region}: snapshots of {gone} are gone"
                );
            }
            assert!(!snapshots_of(&server.url, region, "1.0.5").await.is_empty(), "{region}: 1.0.5 keeps its snapshot");
        }
        let left: Vec<String> = [amis(&server.url, "us-east-1").await, amis(&server.url, "eu-west-1").await]
            .concat()
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        for id in &foreign {
            assert!(left.contains(id), "foreign AMI {id} stays");
        }
    });

    let again = aws(&["prune", "--keep", "2", "--yes", "--output", "json"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(json(&again)["variants"][0]["deleted"], serde_json::json!([]), "a second run has nothing left to do");
}

#[test]
fn gcp_prune_deletes_old_images_and_leftover_objects_of_the_variant_only() {
    let gcp = support::gcp::Gcp::start(support::gcp::Options {
        seed_images: vec![("podvm-0-9-0", "podvm"), ("other-1-0-0", "other"), ("podvm-latest", "podvm")],
        ..Default::default()
    });
    let ws = Workspace::new();
    ws.write(
        "uplosi.conf",
        &format!(
            "[base]\nname = \"podvm\"\nprovider = \"gcp\"\nimageVersionFile = \"version.txt\"\n\n[base.gcp]\n{}",
            gcp.config("podvm-uploads")
        ),
    );
    put_data_into_image(&ws);
    let uplosi = |args: &[&str]| {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("uplosi"));
        gcp.std_env(&mut cmd).current_dir(ws.path()).env_remove("RUST_LOG").args(args).output().expect("run")
    };
    upload_versions(&ws, 0..=3, uplosi);
    gcp.put_object("podvm-uploads", "podvm-1-0-1.tar.gz", b"a leftover of a killed upload");
    gcp.put_object("podvm-uploads", "unrelated.tar.gz", b"someone else's");

    let before = gcp.requests().len();
    let dry = uplosi(&["prune", "--keep", "2", "--dry-run", "--output", "json"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(gcp.requests()[before..].iter().all(|r| r["method"] == "GET"), "a dry run only reads");

    // The seeded image is 30 days old (creationTimestamp); the uploads and the leftover object (timeCreated) are
    // seconds old.
    let recent = uplosi(&["prune", "--keep", "2", "--older-than", "24h", "--dry-run", "--output", "json"]);
    assert!(recent.status.success(), "{}", text(&recent.stderr));
    let recent = json(&recent);
    assert_eq!(versions(&recent["variants"][0]["deleted"]), ["0.9.0"], "{recent}");
    let young: Vec<(&str, &str)> = recent["variants"][0]["kept"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["reason"] == "younger than 1d")
        .filter_map(|k| Some((k["version"].as_str()?, k["kind"].as_str()?)))
        .collect();
    for young_one in [("1.0.0", "image"), ("1.0.1", "image"), ("1.0.1", "object")] {
        assert!(young.contains(&young_one), "{young_one:?} is younger than 1d: {recent}");
    }

    let out = uplosi(&["prune", "--keep", "2", "--yes", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = json(&out);
    let variant = &report["variants"][0];
    assert_eq!(versions(&variant["deleted"]), ["0.9.0", "1.0.0", "1.0.1"], "{report}");
    assert!(
        variant["deleted"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["kind"] == "object" && d["id"] == "gs://podvm-uploads/podvm-1-0-1.tar.gz"),
        "{report}"
    );
    let mut images: Vec<String> = gcp.images().keys().cloned().collect();
    images.sort();
    assert_eq!(images, ["other-1-0-0", "podvm-1-0-2", "podvm-1-0-3", "podvm-latest"]);
    assert_eq!(gcp.objects("podvm-uploads"), ["unrelated.tar.gz"]);
    assert_eq!(gcp.images()["podvm-1-0-2"]["labels"]["uplosi-version"], "1-0-2");
}

#[test]
fn azure_prune_deletes_old_gallery_versions_and_a_leftover_disk_and_keeps_the_definition() {
    use support::azure::{self, Azure};
    let azure = Azure::start(azure::Options {
        seed_disks: vec!["podvm-0.9.0", "podvm-0.9.1@0", "someone-elses-disk"],
        ..Default::default()
    });
    let ws = Workspace::new();
    ws.write(
        "uplosi.conf",
        &format!(
            "[base]\nname = \"podvm\"\nprovider = \"azure\"\nimageVersionFile = \"version.txt\"\n\n[base.azure]\n\
             subscriptionID = \"{}\"\nlocation = \"East US\"\nresourceGroup = \"{}\"\nsharedImageGallery = \"podvm_gallery\"\n\
             imageDefinitionName = \"podvm_image\"\nresourceManagerEndpoint = \"{}\"\n",
            azure::SUBSCRIPTION,
            azure::GROUP,
            azure.arm_url
        ),
    );
    std::fs::File::create(ws.image()).and_then(|f| f.set_len(20 << 20)).expect("image");
    put_data_into_image(&ws);
    let uplosi = |args: &[&str]| {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("uplosi"));
        azure.std_env(&mut cmd).current_dir(ws.path()).env_remove("RUST_LOG").args(args).output().expect("run")
    };
    upload_versions(&ws, 0..=4, uplosi);
    ws.write("version.txt", "1.0.2\n");

    let before = azure.requests().len();
    let dry = uplosi(&["prune", "--keep", "1", "--dry-run", "--output", "json"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let writes: Vec<serde_json::Value> = azure.requests()[before..]
        .iter()
        .filter(|r| r["method"] != "GET" && !r["path"].as_str().unwrap_or_default().contains("token"))
        .cloned()
        .collect();
    assert!(writes.is_empty(), "a dry run only reads: {writes:?}");

    // The versions were published seconds ago (publishedDate), the leftover disks today and 30 days ago
    // (timeCreated).
    let recent = uplosi(&["prune", "--keep", "1", "--older-than", "24h", "--dry-run", "--output", "json"]);
    assert!(recent.status.success(), "{}", text(&recent.stderr));
    let recent = json(&recent);
    let variant = &recent["variants"][0];
    assert_eq!(versions(&variant["deleted"]), ["0.9.0"], "only the old disk: {recent}");
    assert_eq!(variant["deleted"][0]["kind"], "disk", "{recent}");
    let mut young: Vec<&str> = variant["kept"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["reason"] == "younger than 1d")
        .filter_map(|k| k["version"].as_str())
        .collect();
    young.sort_unstable();
    assert_eq!(young, ["0.9.1", "1.0.0", "1.0.1"], "{recent}");

    let out = uplosi(&["prune", "--keep", "1", "--yes", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = json(&out);
    let variant = &report["variants"][0];
    assert_eq!(versions(&variant["deleted"]), ["0.9.0", "0.9.1", "1.0.0", "1.0.1"], "{report}");
    let kinds: Vec<&str> =
        variant["deleted"].as_array().into_iter().flatten().filter_map(|d| d["kind"].as_str()).collect();
    assert!(kinds.contains(&"disk") && kinds.contains(&"image-version"), "{report}");
    let kept = variant["kept"].as_array().expect("kept");
    assert!(kept.iter().any(|k| k["version"] == "1.0.2" && k["reason"] == "current version"), "{report}");
    assert!(
        kept.iter().any(|k| k["version"] == "1.0.4" && k["reason"] == "newer than the current version"),
        "{report}"
    );
    assert!(kept.iter().all(|k| k["region"] == "eastus"), "regions are normalised: {report}");

    let deleted: Vec<String> =
        azure.calls("DELETE", "").iter().filter_map(|r| r["path"].as_str().map(String::from)).collect();
    assert!(deleted.iter().any(|p| p.ends_with("/versions/1.0.0")), "{deleted:?}");
    assert!(deleted.iter().any(|p| p.ends_with("/disks/podvm-0.9.0")), "{deleted:?}");
    assert!(
        !deleted.iter().any(|p| p.contains("someone-elses-disk") || p.ends_with("/images/podvm_image")),
        "{deleted:?}"
    );
    let again = uplosi(&["prune", "--keep", "1", "--yes", "--output", "json"]);
    assert_eq!(json(&again)["variants"][0]["deleted"], serde_json::json!([]), "{}", text(&again.stderr));
}

/// A Glance with versions 1.0.0 … 1.0.`last` of podvm uploaded (the last is current), and the workspace.
fn glance_with_versions(glance: &support::glance::Glance, last: u64) -> Workspace {
    let ws = Workspace::new();
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"podvm\"\nprovider = \"openstack\"\nimageVersionFile = \"version.txt\"\n\n[base.openstack]\ncloud = \"test\"\ndiskFormat = \"raw\"\n",
    );
    std::fs::File::create(ws.image()).and_then(|f| f.set_len(1 << 20)).expect("image");
    for patch in 0..=last {
        ws.write("version.txt", &format!("1.0.{patch}\n"));
        let out = openstack_uplosi(&ws, glance).args(["upload", "system.raw"]).output().expect("upload");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    ws
}

fn glance_names(glance: &support::glance::Glance) -> Vec<String> {
    let mut names: Vec<String> =
        glance.images().expect("images").iter().map(|i| i["name"].as_str().unwrap_or_default().to_string()).collect();
    names.sort();
    names
}

/// Points the workspace's clouds.yaml at `url` (a fault proxy in front of glance-api).
fn through(ws: &Workspace, url: &str) -> std::process::Command {
    support::glance::uplosi_noauth(ws.path(), url)
}

#[test]
fn prune_under_a_fifth_of_requests_faulted_gives_the_same_result() {
    let glance = support::glance::Glance::start();
    let ws = glance_with_versions(&glance, 5);
    // Seed 7 faults 6 of the first 8 draws at 0.2: the listing and the deletions meet faults.
    let proxy = support::faults::FaultProxy::start_with_delay(&glance.url, ".", 0.2, 7, "500,503,429,reset,delay", 0.5);
    let out =
        through(&ws, &proxy.url).args(["prune", "--keep", "2", "--yes", "--output", "json"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(proxy.faults() > 0, "faults were injected: {}", proxy.stats());
    assert_eq!(versions(&json(&out)["variants"][0]["deleted"]), ["1.0.0", "1.0.1", "1.0.2", "1.0.3"]);
    assert_eq!(glance_names(&glance), ["podvm-1.0.4", "podvm-1.0.5"]);
}

#[test]
fn a_prune_killed_half_way_is_finished_by_running_it_again() {
    let glance = support::glance::Glance::start();
    let ws = glance_with_versions(&glance, 11);
    // Every deletion is held 2 s and at most four run at once, so the run is killed with some done and some not.
    let proxy = support::faults::FaultProxy::start_with_delay(&glance.url, "^DELETE ", 1.0, 1, "delay", 2.0);
    let mut child = through(&ws, &proxy.url)
        .args(["prune", "--keep", "2", "--yes", "-j", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    support::wait_until("the first deletion", Duration::from_secs(60), || glance_names(&glance).len() < 12);
    child.kill().expect("kill");
    child.wait().expect("wait");
    let left = glance_names(&glance);
    assert!(left.len() > 2 && left.len() < 12, "killed half-way: {left:?}");

    let again =
        through(&ws, &glance.url).args(["prune", "--keep", "2", "--yes", "--output", "json"]).output().expect("run");
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(!json(&again)["variants"][0]["deleted"].as_array().expect("deleted").is_empty());
    assert_eq!(glance_names(&glance), ["podvm-1.0.10", "podvm-1.0.11"], "the second run finishes the job");
}

#[test]
fn ctrl_c_finishes_the_deletions_in_flight_starts_no_new_one_and_reports() {
    let glance = support::glance::Glance::start();
    let ws = glance_with_versions(&glance, 11);
    let proxy = support::faults::FaultProxy::start_with_delay(&glance.url, "^DELETE ", 1.0, 1, "delay", 2.0);
    let child = through(&ws, &proxy.url)
        .args(["prune", "--keep", "2", "--yes", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Four deletions are held by the proxy; interrupt while they are.
    support::wait_until("deletions in flight", Duration::from_secs(60), || {
        proxy.stats()["matched"].as_u64().unwrap_or(0) >= 4
    });
    support::interrupt(&child);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    let report = json(&out);
    let variant = &report["variants"][0];
    let deleted = variant["deleted"].as_array().expect("deleted").len();
    assert_eq!(deleted, 4, "the four in flight finish: {report}");
    let interrupted =
        variant["kept"].as_array().into_iter().flatten().filter(|k| k["reason"] == "not deleted: interrupted").count();
    assert_eq!(interrupted, 6, "the rest are not started: {report}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(glance_names(&glance).len(), 8, "nothing more was deleted after the report");
}
