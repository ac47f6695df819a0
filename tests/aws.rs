//! `uplosi upload` to AWS against a real moto server, through the SDK's standard credential chain and endpoint
//! override (AWS_ENDPOINT_URL), with the fault/fake proxy (`tests/support/aws_proxy.py`) where moto falls short.

mod support;

use std::path::Path;

use support::fixtures;
use support::moto::{self, ACCOUNT};

use moto::{BLOCK, assert_snapshot_equals_image, images_named, snapshot_blocks};

fn config(extra_aws: &str) -> String {
    format!(
        r#"[base]
name = "podvm"
provider = "aws"
imageVersionFile = "version.txt"

[base.aws]
region = "us-east-1"
replicationRegions = ["eu-west-1", "ap-south-1"]
publish = true
tags = {{ team = "confidential", purpose = "test" }}
ssmParameter = "/podvm/{{{{.Name}}}}/latest"
launchPermissions = ["111122223333"]

[variant.main.aws]
{extra_aws}
"#
    )
}

struct Run {
    ws: support::Workspace,
}

impl Run {
    fn new(conf: &str, image: &Path) -> Self {
        let ws = support::Workspace::new();
        ws.write("uplosi.conf", conf).write("version.txt", "1.2.3\n");
        std::fs::remove_file(ws.image()).unwrap();
        std::os::unix::fs::symlink(image, ws.image()).unwrap();
        Self { ws }
    }

    fn uplosi(&self, endpoint: &str) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.process(endpoint))
    }

    /// `uplosi` in the workspace, pointed at `endpoint` (see [`moto::uplosi_command`]).
    fn process(&self, endpoint: &str) -> std::process::Command {
        moto::uplosi_command(self.ws.path(), endpoint)
    }
}

/// Asserts that no snapshot uploaded by uplosi and no AMI named podvm-1.2.3 exists in us-east-1.
fn assert_nothing_left(endpoint: &str, why: &str) {
    runtime().block_on(async {
        let conf = moto::sdk_config(endpoint, "us-east-1").await;
        assert!(snapshots_named(&conf, "podvm-1.2.3").await.is_empty(), "{why}");
        assert!(images_named(&conf, "podvm-1.2.3").await.is_empty(), "no AMI may be left either");
    });
}

/// A path-style S3 client for moto.
fn s3_client(conf: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(conf).force_path_style(true).build())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Snapshots uploaded by uplosi: StartSnapshot sets the description to snapshotName. (moto's RegisterImage makes a
/// snapshot of its own for every AMI; those have another description.)
async fn snapshots_named(conf: &aws_config::SdkConfig, name: &str) -> Vec<String> {
    let ec2 = aws_sdk_ec2::Client::new(conf);
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(aws_sdk_ec2::types::Filter::builder().name("description").values(name).build())
        .send()
        .await
        .unwrap();
    out.snapshots().iter().map(|s| s.snapshot_id().unwrap().to_string()).collect()
}

#[test]
fn upload_registers_replicates_publishes_and_bumps_the_version() {
    let server = moto::start();
    let proxy = moto::start_proxy(&server, &[]);
    let image = fixtures::gpt_image();
    let run = Run::new(&config("architecture = \"arm64\"\nvolumeType = \"gp2\""), &image.path);
    let out = run.uplosi(&proxy.url).args(["upload", "system.raw", "-i"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "one ARN per region: {stdout}");
    let mut amis = Vec::new();
    for (line, region) in lines.iter().zip(["us-east-1", "eu-west-1", "ap-south-1"]) {
        let prefix = format!("arn:aws:ec2:{region}:{ACCOUNT}:image/ami-");
        assert!(line.starts_with(&prefix), "{line} should start with {prefix}");
        amis.push(line.rsplit('/').next().unwrap().to_string());
    }
    assert_eq!(run.ws.read("version.txt"), "1.2.4\n");

    let stats = proxy.stats();
    let register = &stats["RegisterImageParams"];
    for (key, value) in [
        ("Name", "podvm-1.2.3"),
        ("Architecture", "arm64"),
        ("BootMode", "uefi"),
        ("TpmSupport", "v2.0"),
        ("ImdsSupport", "v2.0"),
        ("EnaSupport", "true"),
        ("VirtualizationType", "hvm"),
        ("RootDeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp2"),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
    ] {
        assert_eq!(register[key], value, "RegisterImage {key}: {register}");
    }
    let registered_snapshot = register["BlockDeviceMapping.1.Ebs.SnapshotId"].as_str().unwrap().to_string();

    runtime().block_on(async {
        for (region, ami) in ["us-east-1", "eu-west-1", "ap-south-1"].iter().zip(&amis) {
            let conf = moto::sdk_config(&server.url, region).await;
            let images = images_named(&conf, "podvm-1.2.3").await;
            assert_eq!(images.len(), 1, "{region}: exactly one image named podvm-1.2.3");
            let img = &images[0];
            assert_eq!(img.image_id(), Some(ami.as_str()));
            assert_eq!(img.state(), Some(&aws_sdk_ec2::types::ImageState::Available));
            let tags: Vec<(String, String)> =
                img.tags().iter().map(|t| (t.key().unwrap().into(), t.value().unwrap().into())).collect();
            for expected in [("Name", "podvm-1.2.3"), ("team", "confidential"), ("purpose", "test")] {
                assert!(tags.contains(&(expected.0.into(), expected.1.into())), "{region}: tags {tags:?}");
            }
            let ec2 = aws_sdk_ec2::Client::new(&conf);
            let attr = ec2
                .describe_image_attribute()
                .image_id(ami)
                .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
                .send()
                .await
                .unwrap();
            let perms = attr.launch_permissions();
            assert!(
                perms.iter().any(|p| p.group() == Some(&aws_sdk_ec2::types::PermissionGroup::All)),
                "{region}: public"
            );
            assert!(perms.iter().any(|p| p.user_id() == Some("111122223333")), "{region}: shared with the account");
            let ssm = aws_sdk_ssm::Client::new(&conf);
            let param = ssm.get_parameter().name("/podvm/podvm/latest").send().await.unwrap();
            let param = param.parameter().unwrap();
            assert_eq!(param.value(), Some(ami.as_str()), "{region}: SSM parameter");
            assert_eq!(param.data_type(), Some("aws:ec2:image"));
        }
        let conf = moto::sdk_config(&server.url, "us-east-1").await;
        let snapshots = snapshots_named(&conf, "podvm-1.2.3").await;
        assert_eq!(snapshots, vec![registered_snapshot], "the AMI is registered from the one uploaded snapshot");
        let ec2 = aws_sdk_ec2::Client::new(&conf);
        let volume_permissions = ec2
            .describe_snapshot_attribute()
            .snapshot_id(&snapshots[0])
            .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
            .send()
            .await
            .unwrap();
        let volume_permissions = volume_permissions.create_volume_permissions();
        assert!(
            volume_permissions.iter().any(|p| p.group() == Some(&aws_sdk_ec2::types::PermissionGroup::All)),
            "publish makes the snapshot public too: {volume_permissions:?}"
        );
        assert!(volume_permissions.iter().any(|p| p.user_id() == Some("111122223333")));
        let blocks = assert_snapshot_equals_image(&server.url, &snapshots[0], &image.path);
        let total = std::fs::metadata(&image.path).unwrap().len().div_ceil(BLOCK) as usize;
        assert!(blocks < total / 2, "holes are skipped: {blocks} of {total} blocks sent");
    });
}

#[test]
fn sparse_image_sends_only_its_data_blocks() {
    let server = moto::start();
    let image = fixtures::huge_sparse();
    let run = Run::new(&config("replicationRegions = []\npublish = false\nlaunchPermissions = []"), &image.path);
    let out = run.uplosi(&server.url).args(["upload", "system.raw", "--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    let refs = json["references"].as_array().unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0]["variant"], "main");
    assert_eq!(refs[0]["provider"], "aws");
    assert!(refs[0]["reference"].as_str().unwrap().starts_with(&format!("arn:aws:ec2:us-east-1:{ACCOUNT}:image/ami-")));
    runtime().block_on(async {
        let conf = moto::sdk_config(&server.url, "us-east-1").await;
        let snapshots = snapshots_named(&conf, "podvm-1.2.3").await;
        let (volume_size, blocks) = snapshot_blocks(&server.url, &snapshots[0]);
        let indices: Vec<u64> = blocks.keys().copied().collect();
        let size = std::fs::metadata(&image.path).unwrap().len();
        assert_eq!(indices, vec![0, (4u64 << 30) / BLOCK, (size - 1) / BLOCK], "9 GiB image, 3 data blocks");
        assert_eq!(volume_size, 10, "volume size is the image rounded up to GiB");
        assert_snapshot_equals_image(&server.url, &snapshots[0], &image.path);
        let ec2 = aws_sdk_ec2::Client::new(&conf);
        let attr = ec2
            .describe_image_attribute()
            .image_id(images_named(&conf, "podvm-1.2.3").await[0].image_id().unwrap())
            .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
            .send()
            .await
            .unwrap();
        assert!(attr.launch_permissions().is_empty(), "publish = false in the variant keeps the AMI private");
    });
}

#[test]
fn blocks_are_512_kib_whatever_start_snapshot_answers() {
    let image = fixtures::huge_sparse();
    // EBS answers 524288, stock moto 512; PutSnapshotBlock takes 524288 only, so every answer gives the same
    // snapshot: the image's three data regions, one 512 KiB block each, indexes in 512 KiB units.
    let servers = [
        ("stock moto (512)", moto::start_stock()),
        ("512", moto::start_with_block_size(512)),
        ("1 MiB", moto::start_with_block_size(1 << 20)),
        ("1000", moto::start_with_block_size(1000)),
    ];
    for (answer, server) in &servers {
        let run = Run::new(&config("replicationRegions = []\npublish = false\nlaunchPermissions = []"), &image.path);
        let out = run.uplosi(&server.url).args(["-v", "upload", "system.raw"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "BlockSize {answer}: {stderr}");
        if *answer != "stock moto (512)" && *answer != "512" {
            let noted = stderr.matches("StartSnapshot answered BlockSize").count();
            assert_eq!(noted, 1, "BlockSize {answer}: logged once at debug level: {stderr}");
        }
        runtime().block_on(async {
            let conf = moto::sdk_config(&server.url, "us-east-1").await;
            let snapshots = snapshots_named(&conf, "podvm-1.2.3").await;
            let stored = moto::assert_snapshot_equals_image(&server.url, &snapshots[0], &image.path);
            assert_eq!(stored, 3, "BlockSize {answer}: the three data blocks");
            let (_, blocks) = snapshot_blocks(&server.url, &snapshots[0]);
            let size = std::fs::metadata(&image.path).unwrap().len();
            let indices: Vec<u64> = blocks.keys().copied().collect();
            assert_eq!(indices, vec![0, (4u64 << 30) / BLOCK, (size - 1) / BLOCK], "BlockSize {answer}");
        });
    }
}

#[test]
fn a_stock_moto_server_takes_a_gib_image_with_50_mib_of_data_in_512_kib_blocks() {
    // The case found from the outside: a 1 GiB image with 50 MiB of data against stock moto sent 2.5 MiB in 90 s
    // in 512-byte blocks. In 512 KiB blocks it is 100 requests.
    let server = moto::start_stock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("system.raw");
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(1 << 30).unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = (i % 251) as u8 | 1;
        }
        for mib in 0..50u64 {
            chunk[0] = mib as u8 | 1;
            file.write_all_at(&chunk, (mib * 20) << 20).unwrap();
        }
    }
    let run = Run::new(&config("replicationRegions = []\npublish = false\nlaunchPermissions = []"), &path);
    let out = run.uplosi(&server.url).args(["upload", "system.raw"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    runtime().block_on(async {
        let conf = moto::sdk_config(&server.url, "us-east-1").await;
        let snapshots = snapshots_named(&conf, "podvm-1.2.3").await;
        let stored = moto::assert_snapshot_equals_image(&server.url, &snapshots[0], &path);
        assert_eq!(stored, 100, "50 MiB of data in 512 KiB blocks");
    });
}

#[test]
fn existing_ami_is_replaced_or_refused() {
    let server = moto::start();
    let image = &fixtures::synthetic_cases()[1];
    let run = Run::new(&config("replicationRegions = [\"eu-west-1\"]"), &image.path);
    let first = run.uplosi(&server.url).args(["upload", "system.raw"]).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let second = run.uplosi(&server.url).args(["upload", "system.raw"]).output().unwrap();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(String::from_utf8_lossy(&second.stderr).contains("replacing existing image"));
    assert_ne!(first.stdout, second.stdout, "the second run registers new AMIs");
    runtime().block_on(async {
        for region in ["us-east-1", "eu-west-1"] {
            let conf = moto::sdk_config(&server.url, region).await;
            assert_eq!(images_named(&conf, "podvm-1.2.3").await.len(), 1, "{region}: the old AMI is gone");
        }
        let conf = moto::sdk_config(&server.url, "us-east-1").await;
        assert_eq!(snapshots_named(&conf, "podvm-1.2.3").await.len(), 1, "the old snapshot is gone");
    });

    run.ws.write("uplosi.conf.d/keep.conf", "[base.aws]\nreplace = false\n");
    let out = run.uplosi(&server.url).args(["upload", "system.raw", "-i"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("an image named \"podvm-1.2.3\" already exists"), "{stderr}");
    assert!(stderr.contains("set `replace = true`"), "{stderr}");
    assert_eq!(run.ws.read("version.txt"), "1.2.3\n", "a failed run does not bump the version");
}

#[test]
fn a_block_that_keeps_failing_aborts_and_deletes_the_snapshot() {
    let server = moto::start();
    let proxy = moto::start_proxy(&server, &["--fail-block", "1"]);
    let image = &fixtures::synthetic_cases()[1]; // 3 MiB of data: blocks 0..=6
    let run = Run::new(&config("replicationRegions = []"), &image.path);
    let out = run.uplosi(&proxy.url).args(["upload", "system.raw", "-i"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("AWS us-east-1: PutSnapshotBlock failed: InternalServerException: injected failure for block 1"),
        "{stderr}"
    );
    assert!(stderr.contains("deleting incomplete snapshot"), "{stderr}");
    let stats = proxy.stats();
    assert_eq!(stats["PutSnapshotBlockFailed"], 8, "the failing block is retried up to the policy's 8 attempts");
    assert_eq!(run.ws.read("version.txt"), "1.2.3\n");
    assert_nothing_left(&server.url, "the snapshot must be deleted");
}

#[test]
fn access_denied_on_ebs_names_the_permissions_and_the_alternative() {
    let server = moto::start();
    let proxy = moto::start_proxy(&server, &["--deny-start-snapshot"]);
    let image = &fixtures::synthetic_cases()[1];
    let run = Run::new(&config(""), &image.path);
    let out = run.uplosi(&proxy.url).args(["upload", "system.raw"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in [
        "StartSnapshot failed: AccessDeniedException",
        "ebs:StartSnapshot",
        "ebs:PutSnapshotBlock",
        "ebs:CompleteSnapshot",
        "uploadMethod = \"import-snapshot\"",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in {stderr}");
    }
    let stats = proxy.stats();
    assert_eq!(stats["StartSnapshot"], 1, "access denied is not retried");
}

#[test]
fn missing_credentials_fail_before_any_work() {
    let server = moto::start();
    let image = &fixtures::synthetic_cases()[1];
    let run = Run::new(&config(""), &image.path);
    let out = run
        .uplosi(&server.url)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["upload", "system.raw"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no AWS credentials found"), "{stderr}");
    assert!(stderr.contains("AWS_ACCESS_KEY_ID"), "{stderr}");
    runtime().block_on(async {
        let conf = moto::sdk_config(&server.url, "us-east-1").await;
        assert!(snapshots_named(&conf, "podvm-1.2.3").await.is_empty());
    });
}

#[test]
fn import_snapshot_path_uploads_through_s3_and_cleans_up() {
    let server = moto::start();
    let proxy = moto::start_proxy(&server, &[]);
    let image = &fixtures::synthetic_cases()[1];
    let run = Run::new(
        &config("uploadMethod = \"import-snapshot\"\nbucket = \"podvm-upload\"\nreplicationRegions = []"),
        &image.path,
    );
    let out = run.uplosi(&proxy.url).args(["upload", "system.raw"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("arn:aws:ec2:us-east-1:{ACCOUNT}:image/ami-")));
    let stats = proxy.stats();
    assert_eq!(stats["ImportSnapshot"], 1);
    assert!(stats["DescribeImportSnapshotTasks"].as_u64().unwrap() >= 2, "the task is polled until completed");
    runtime().block_on(async {
        let conf = moto::sdk_config(&server.url, "us-east-1").await;
        let s3 = s3_client(&conf);
        let objects = s3.list_objects_v2().bucket("podvm-upload").send().await.unwrap();
        assert!(objects.contents().is_empty(), "the temporary object is deleted");
        let uploads = s3.list_multipart_uploads().bucket("podvm-upload").send().await.unwrap();
        assert!(uploads.uploads().is_empty(), "no multipart upload is left behind");
        let images = images_named(&conf, "podvm-1.2.3").await;
        assert_eq!(images.len(), 1);
    });
}

#[test]
fn ctrl_c_during_the_upload_removes_the_snapshot() {
    let server = moto::start();
    let proxy = moto::start_proxy(&server, &["--slow-blocks", "0.5"]);
    let image = fixtures::gpt_image();
    let run = Run::new(&config("replicationRegions = []"), &image.path);
    let child = run
        .process(&proxy.url)
        .args(["upload", "system.raw", "-i", "--concurrency", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once blocks are flowing.
    let started = std::time::Instant::now();
    loop {
        if proxy.stats()["PutSnapshotBlock"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(started.elapsed().as_secs() < 60, "no block upload started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    support::interrupt(&child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(run.ws.read("version.txt"), "1.2.3\n");
    assert_nothing_left(&server.url, "the partial snapshot must be deleted");
}

#[test]
fn a_failing_s3_part_aborts_the_multipart_upload() {
    let server = moto::start();
    let proxy = moto::start_proxy(&server, &["--fail-part", "1"]);
    let image = &fixtures::synthetic_cases()[1];
    let run = Run::new(
        &config("uploadMethod = \"import-snapshot\"\nbucket = \"podvm-upload\"\nreplicationRegions = []"),
        &image.path,
    );
    let out = run.uplosi(&proxy.url).args(["upload", "system.raw"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("UploadPart failed: InternalError: injected failure for part 1"), "{stderr}");
    assert!(stderr.contains("aborted multipart upload"), "{stderr}");
    let stats = proxy.stats();
    assert_eq!(stats["UploadPartFailed"], 8, "the part is retried up to the policy's 8 attempts");
    assert!(stats.get("ImportSnapshot").is_none(), "nothing is imported after a failed upload");
    runtime().block_on(async {
        let conf = moto::sdk_config(&server.url, "us-east-1").await;
        let s3 = s3_client(&conf);
        let uploads = s3.list_multipart_uploads().bucket("podvm-upload").send().await.unwrap();
        assert!(uploads.uploads().is_empty(), "the multipart upload must be aborted");
        let objects = s3.list_objects_v2().bucket("podvm-upload").send().await.unwrap();
        assert!(objects.contents().is_empty());
    });
}
