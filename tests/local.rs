//! The `file` provider (a libvirt export inside the release run) and qcow2 images as input, checked with tools no
//! one here wrote (qemu-img check/compare, qemu-io, GNU tar) and, for uploads, against a real moto server.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::fixtures::{self, qemu_compare, run};
use support::moto;

fn uplosi() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("uplosi").unwrap();
    cmd.env_remove("RUST_LOG");
    cmd
}

fn qemu_img(args: &[&str], paths: &[&Path]) -> std::process::Output {
    run(Command::new("qemu-img").args(args).args(paths))
}

fn assert_qcow2_clean(path: &Path) {
    let out = qemu_img(&["check", "-f", "qcow2", "--output", "json"], &[path]);
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check["check-errors"].as_u64(), Some(0), "{check}");
    assert!(check.get("corruptions").is_none() && check.get("leaks").is_none(), "{check}");
}

/// Names in `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// A workspace whose `system.raw` (or another name) links to `image`.
fn workspace(conf: &str, image: &Path, name: &str) -> support::Workspace {
    let ws = support::Workspace::new();
    ws.write("uplosi.conf", conf).write("version.txt", "1.2.3\n");
    ws.link_image(name, image);
    std::fs::create_dir_all(ws.path().join("pool")).unwrap();
    ws
}

/// An AWS variant and a libvirt-style file variant in one config.
fn aws_and_file_config(format: &str, ext: &str) -> String {
    format!(
        r#"[base]
name = "podvm"
imageVersionFile = "version.txt"

[base.aws]
region = "us-east-1"

[variant.cloud]
provider = "aws"

[variant.libvirt]
provider = "file"

[variant.libvirt.file]
path = "pool/{{{{.Name}}}}-{{{{.Version}}}}.{ext}"
format = "{format}"
"#
    )
}

#[test]
fn file_variant_runs_alongside_aws_and_both_references_print() {
    let server = moto::start();
    let image = fixtures::gpt_image();
    let ws = workspace(&aws_and_file_config("qcow2", "qcow2"), &image.path, "system.raw");
    let out = moto::uplosi_command(ws.path(), &server.url).args(["upload", "system.raw", "-i"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one AMI ARN and one path: {stdout}");
    let exported = std::fs::canonicalize(ws.path()).unwrap().join("pool/podvm-1.2.3.qcow2");
    let arn_prefix = format!("arn:aws:ec2:us-east-1:{}:image/ami-", moto::ACCOUNT);
    assert!(lines.iter().any(|l| l.starts_with(&arn_prefix)), "{stdout}");
    let path_line = lines.iter().find(|l| l.starts_with('/')).unwrap_or_else(|| panic!("no absolute path: {stdout}"));
    assert_eq!(std::fs::canonicalize(path_line).unwrap(), exported, "the reference is the exported file's path");

    assert_qcow2_clean(&exported);
    qemu_compare(&image.path, "qcow2", &exported);
    let mode = std::fs::metadata(&exported).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644, "default mode");
    assert_eq!(entries(&ws.path().join("pool")), vec!["podvm-1.2.3.qcow2"], "no temporary files left");
    assert_eq!(ws.read("version.txt"), "1.2.4\n", "both variants succeeded, so -i bumps the version");
}

#[test]
fn qcow2_input_uploads_and_exports_the_same_disk() {
    let server = moto::start();
    let image = fixtures::gpt_image();
    let scratch = tempfile::tempdir().unwrap();
    let compressed = scratch.path().join("system.qcow2");
    qemu_img(&["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"], &[&image.path, &compressed]);
    let ws = workspace(&aws_and_file_config("vhd", "vhd"), &compressed, "system.qcow2");
    let out = moto::uplosi_command(ws.path(), &server.url)
        .args(["upload", "system.qcow2", "--output", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let refs = doc["references"].as_array().unwrap();
    let reference = |provider: &str| -> String {
        refs.iter().find(|r| r["provider"] == provider).unwrap_or_else(|| panic!("{doc}"))["reference"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(reference("file"), ws.path().join("pool/podvm-1.2.3.vhd").to_string_lossy());
    qemu_compare(&image.path, "vpc", Path::new(&reference("file")));

    // The EBS snapshot made from the compressed qcow2 holds exactly the raw image's data blocks.
    let ami = reference("aws").rsplit('/').next().unwrap().to_string();
    let snapshot = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let conf = moto::sdk_config(&server.url, "us-east-1").await;
        let ec2 = aws_sdk_ec2::Client::new(&conf);
        let snaps = ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(aws_sdk_ec2::types::Filter::builder().name("description").values("podvm-1.2.3").build())
            .send()
            .await
            .unwrap();
        assert!(ami.starts_with("ami-"), "{ami}");
        snaps.snapshots()[0].snapshot_id().unwrap().to_string()
    });
    let blocks = moto::assert_snapshot_equals_image(&server.url, &snapshot, &image.path);
    assert!(blocks > 0, "the snapshot holds data");
}

#[test]
fn file_replace_false_refuses_an_existing_file_and_true_replaces_it() {
    let image = fixtures::gpt_image();
    let conf = "[base]\nname = \"podvm\"\nprovider = \"file\"\nimageVersion = \"2.0.0\"\n\n[base.file]\npath = \"pool/disk.raw\"\nformat = \"raw\"\nmode = \"0600\"\n";
    let ws = workspace(conf, &image.path, "system.raw");
    ws.write("pool/disk.raw", "precious");
    let assert = uplosi().current_dir(ws.path()).args(["upload", "system.raw"]).assert().code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("already exists") && stderr.contains("replace = true"), "{stderr}");
    assert!(assert.get_output().stdout.is_empty());
    assert_eq!(ws.read("pool/disk.raw"), "precious", "the existing file is untouched");

    ws.write("uplosi.conf", &format!("{conf}replace = true\n"));
    uplosi().current_dir(ws.path()).args(["upload", "system.raw"]).assert().success();
    let out = ws.path().join("pool/disk.raw");
    qemu_compare(&image.path, "raw", &out);
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o7777, 0o600, "mode is applied");
    assert_eq!(entries(&ws.path().join("pool")), vec!["disk.raw"]);
}

#[test]
fn interrupted_file_export_leaves_no_partial_file() {
    let image = fixtures::gpt_image();
    let conf = "[base]\nname = \"podvm\"\nprovider = \"file\"\n\n[base.file]\npath = \"pool/podvm.tar.gz\"\nformat = \"tar.gz\"\n";
    let ws = workspace(conf, &image.path, "system.raw");
    let pool = ws.path().join("pool");
    let child = Command::new(assert_cmd::cargo::cargo_bin("uplosi"))
        .current_dir(ws.path())
        .args(["upload", "system.raw"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !entries(&pool).iter().any(|n| n.ends_with(".uplosi-tmp")) && started.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    support::interrupt(&child);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "200 MiB of tar.gz cannot finish in milliseconds: {stderr}");
    assert!(output.stdout.is_empty(), "no reference for an interrupted export");
    assert!(entries(&pool).is_empty(), "no partial file may remain: {:?}", entries(&pool));
}

#[test]
fn file_variant_is_validated_and_planned_like_every_provider() {
    let ws = support::Workspace::new();
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"podvm\"\nprovider = \"file\"\n\n[variant.a.file]\nformat = \"vmdk\"\nmode = \"rw-r--r--\"\n",
    );
    let err = ws.config_error(&[]);
    assert!(err.contains("required key `path` for provider file"), "{err}");
    assert!(err.contains("format \"vmdk\" must be one of qcow2, vhd, tar.gz, raw"), "{err}");
    assert!(err.contains("mode \"rw-r--r--\" must be an octal file mode"), "{err}");

    ws.write(
        "uplosi.conf",
        "[base]\nname = \"podvm\"\nprovider = \"file\"\nimageVersion = \"1.0.0\"\n\n[base.file]\npath = \"images/{{.Name}}-{{.Version}}.qcow2\"\n",
    );
    let plan = ws.plan_json(&[]);
    let v = &plan["variants"][0];
    assert_eq!(v["provider"], "file");
    let expected: PathBuf = ws.path().join("images/podvm-1.0.0.qcow2");
    assert_eq!(v["file"]["path"], expected.to_string_lossy().as_ref(), "relative to the config dir, absolute");
    assert_eq!(v["file"]["format"], "qcow2");
    assert_eq!(v["file"]["replace"], false);
    assert_eq!(v["file"]["mode"], "0644");
    assert!(v["steps"].to_string().contains("refuse to run if the file exists"), "{v}");

    // A missing directory is found before anything is written.
    let assert = uplosi().current_dir(ws.path()).args(["upload", "system.raw"]).assert().code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("cannot write into") && stderr.contains("images"), "{stderr}");
}

/// qcow2 inputs of every kind qemu writes, each with the raw disk it must read as.
fn qcow2_inputs(raw: &Path, dir: &Path) -> Vec<(String, PathBuf, PathBuf)> {
    let mut inputs = Vec::new();
    for (name, opts) in [("v3", vec![]), ("v2", vec!["-o", "compat=0.10"]), ("compressed", vec!["-c"])] {
        let out = dir.join(format!("{name}.qcow2"));
        let mut args = vec!["convert", "-q", "-f", "raw", "-O", "qcow2"];
        args.extend(opts);
        qemu_img(&args, &[raw, &out]);
        inputs.push((name.to_string(), out, raw.to_path_buf()));
    }
    // Zero clusters: qemu-io marks 2 MiB of the ESP as zero in a v3 image; the expected disk has zeros there too.
    let zeroed = dir.join("zeroed.qcow2");
    std::fs::copy(&inputs[0].1, &zeroed).unwrap();
    run(Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -z 2M 2M"]).arg(&zeroed));
    let map = qemu_img(&["map", "-f", "qcow2", "--output", "json"], &[&zeroed]);
    let map: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
    assert!(
        map.as_array().unwrap().iter().any(|m| m["start"] == 2 << 20 && m["zero"] == true && m["data"] == false),
        "qemu-io must have made zero clusters: {map}"
    );
    let zeroed_raw = dir.join("zeroed.raw");
    run(Command::new("cp").arg("--sparse=always").arg(raw).arg(&zeroed_raw));
    let f = std::fs::OpenOptions::new().write(true).open(&zeroed_raw).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; 2 << 20], 2 << 20).unwrap();
    inputs.push(("zero-clusters".into(), zeroed, zeroed_raw));
    // The project's own qcow2 output.
    let ours = dir.join("ours.qcow2");
    uplosi().arg("convert").arg(raw).args(["--format", "qcow2", "-o"]).arg(&ours).assert().success();
    inputs.push(("ours".into(), ours, raw.to_path_buf()));
    inputs
}

#[test]
fn qcow2_inputs_convert_back_to_the_same_disk() {
    let image = fixtures::gpt_image();
    let dir = tempfile::tempdir().unwrap();
    for (name, input, expected) in qcow2_inputs(&image.path, dir.path()) {
        for (format, qemu_format) in [("raw", "raw"), ("vhd", "vpc"), ("qcow2", "qcow2")] {
            let out = dir.path().join(format!("{name}-out.{format}"));
            uplosi().arg("convert").arg(&input).args(["--format", format, "-o"]).arg(&out).assert().success();
            qemu_compare(&expected, qemu_format, &out);
            if format == "qcow2" {
                assert_qcow2_clean(&out);
            }
            std::fs::remove_file(&out).unwrap();
        }
        let out = dir.path().join(format!("{name}-out.tar.gz"));
        uplosi().arg("convert").arg(&input).args(["--format", "tar.gz", "-o"]).arg(&out).assert().success();
        let extract = dir.path().join(format!("{name}-extract"));
        std::fs::create_dir_all(&extract).unwrap();
        run(Command::new("tar").arg("-xzf").arg(&out).arg("-C").arg(&extract));
        qemu_compare(&expected, "raw", &extract.join("disk.raw"));
        std::fs::remove_dir_all(&extract).unwrap();
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn qcow2_with_backing_file_or_encryption_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let overlay = dir.path().join("overlay.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2"], &[&base, Path::new("16M")]);
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]).arg(&base).arg(&overlay));
    let out = dir.path().join("o.raw");
    let assert = uplosi().arg("convert").arg(&overlay).args(["--format", "raw", "-o"]).arg(&out).assert().code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("backing file") && stderr.contains("base.qcow2"), "{stderr}");
    assert!(stderr.contains("qemu-img convert -O qcow2"), "names the command that flattens it: {stderr}");
    assert!(!out.exists());
    let ws = support::Workspace::new();
    ws.write("uplosi.conf", "[base]\nname = \"x\"\nprovider = \"file\"\n[base.file]\npath = \"x.qcow2\"\n");
    let assert = uplosi().current_dir(ws.path()).arg("upload").arg(&overlay).arg("--dry-run").assert().code(2);
    assert!(String::from_utf8_lossy(&assert.get_output().stderr).contains("backing file"));

    let encrypted = dir.path().join("enc.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=secret"])
        .args(["-o", "encrypt.format=luks,encrypt.key-secret=sec0"])
        .arg(&encrypted)
        .arg("16M"));
    let assert = uplosi().arg("convert").arg(&encrypted).args(["--format", "raw", "-o"]).arg(&out).assert().code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("encrypted") && stderr.contains("qemu-img convert"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn truncated_qcow2_fails_clearly_and_leaves_no_output() {
    let image = fixtures::gpt_image();
    let dir = tempfile::tempdir().unwrap();
    let qcow = dir.path().join("cut.qcow2");
    qemu_img(&["convert", "-q", "-f", "raw", "-O", "qcow2"], &[&image.path, &qcow]);
    let len = std::fs::metadata(&qcow).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&qcow).unwrap().set_len(len / 2).unwrap();
    let out = dir.path().join("o.vhd");
    let assert = uplosi().arg("convert").arg(&qcow).args(["--format", "vhd", "-o"]).arg(&out).assert();
    let output = assert.get_output();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(matches!(output.status.code(), Some(1 | 2)), "{stderr}");
    assert!(stderr.contains("truncated") && stderr.contains("cut.qcow2"), "{stderr}");
    assert_eq!(entries(dir.path()), vec!["cut.qcow2"], "no output or temporary file");
}

/// `-v` shows when each variant checked, scanned, sent its first and last byte and waited for what, on one clock.
#[test]
fn the_verbose_log_has_a_timeline_per_variant() {
    let server = moto::start();
    let image = fixtures::gpt_image();
    let ws = workspace(&aws_and_file_config("qcow2", "qcow2"), &image.path, "system.raw");
    let quiet = moto::uplosi_command(ws.path(), &server.url).args(["upload", "system.raw", "-i"]).output().unwrap();
    let quiet_stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(
        quiet.status.success() && !quiet_stderr.contains("timeline"),
        "the timeline is for -v only: {quiet_stderr}"
    );
    let out = moto::uplosi_command(ws.path(), &server.url).args(["-v", "upload", "system.raw"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let timeline: Vec<&str> = stderr.lines().filter(|l| l.contains("timeline +")).collect();
    let at = |line: &str| -> f64 {
        let rest = &line[line.find("timeline +").unwrap() + "timeline +".len()..];
        rest.split(' ').next().unwrap().parse().unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let seconds: Vec<f64> = timeline.iter().map(|l| at(l)).collect();
    assert!(seconds.windows(2).all(|w| w[0] <= w[1]), "one clock, in order: {timeline:#?}");
    let position = |needles: &[&str]| {
        timeline
            .iter()
            .position(|l| needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no timeline line with {needles:?}: {timeline:#?}"))
    };
    let preflight = position(&["preflight done"]);
    for (variant, provider, transfer) in [("cloud", "aws", "cloud EBS"), ("libvirt", "file", "libvirt qcow2")] {
        let started = position(&[variant, &format!("upload to {provider} started")]);
        let first = position(&[&format!("{transfer}: first byte")]);
        let last = position(&[&format!("{transfer}: last byte")]);
        assert!(preflight < started && started < first && first < last, "{variant}: {timeline:#?}");
    }
    assert!(position(&["image scan", "started"]) < position(&["image scan done"]), "{timeline:#?}");
    let ebs_done = position(&["cloud EBS: last byte"]);
    for waited in ["snapshot snap-", "AMI ami-"] {
        let waiting = position(&["cloud:", &format!("waiting for {waited}")]);
        let done = position(&["cloud:", waited, "done after"]);
        assert!(ebs_done < waiting && waiting < done, "{waited}: {timeline:#?}");
    }
}
