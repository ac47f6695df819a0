//! `uplosi boot-check` and `uplosi measurements` against real boots: UKIs on the systemd-stubs of Debian bookworm
//! (252), bookworm-backports (254), trixie (257) and sid (the newest), booted under QEMU with Debian's OVMF and
//! swtpm (TCG where KVM fails). The guest's own reading of `/sys/class/tpm/tpm0/pcr-sha256/N` is the evidence
//! `uplosi measurements` is held against; `boot-check` must agree event by event.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use support::boot::{self, DONE, Spec};

fn uplosi(tmp: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("uplosi"));
    // The VM's temporary files go here, so a test can see that none is left.
    cmd.env_remove("RUST_LOG").env("TMPDIR", tmp);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `uplosi measurements IMAGE` as JSON.
fn measurements(image: &Path) -> serde_json::Value {
    let out = uplosi(&std::env::temp_dir()).arg("measurements").arg(image).output().expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `uplosi boot-check IMAGE --expect DONE --serial-log … --output json ARGS`: the output, the report, the console.
fn boot_check(dir: &Path, image: &Path, args: &[&str]) -> (Output, serde_json::Value, String) {
    let serial = dir.join("console.log");
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let out = uplosi(&tmp)
        .arg("boot-check")
        .arg(image)
        .args(["--expect", DONE, "--output", "json", "--cpus", "1", "--serial-log"])
        .arg(&serial)
        .args(args)
        .output()
        .expect("run");
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0), 0, "the VM's files are removed");
    (out, report, console)
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).expect("read image");
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Boots the UKI of `spec` and holds `measurements`, the guest's PCRs and the boot check together.
fn boots_with_the_predicted_pcrs(spec: Spec<'_>) -> (serde_json::Value, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (image, version) = boot::image(dir.path(), "uki", &spec);
    let before = sha256_file(&image);
    let predicted = measurements(&image);
    let (out, report, console) = boot_check(dir.path(), &image, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "systemd-stub {version}:\n{stderr}\n{console}");
    assert_eq!(sha256_file(&image), before, "boot-check does not change a byte of the image");

    let guest = boot::guest_pcrs(&console);
    for pcr in [4u32, 9, 11, 12, 13] {
        let expected = predicted["measurements"][pcr.to_string()]["expected"].as_str().unwrap_or_default();
        assert_eq!(
            guest.get(&pcr).map(String::as_str),
            Some(expected),
            "systemd-stub {version}: PCR {pcr} as the guest reads it\n{console}"
        );
        assert_eq!(report["measurements"][pcr.to_string()]["match"], true, "{report}");
        assert_eq!(report["measurements"][pcr.to_string()]["actual"], expected, "{report}");
    }
    assert_eq!(report["booted"], true);
    assert_eq!(report["mismatches"], serde_json::json!([]));
    assert!(report["seconds"].as_f64().is_some_and(|s| s > 0.0), "{report}");
    assert!(["kvm", "tcg"].contains(&report["accel"].as_str().unwrap_or_default()), "{report}");
    assert!(stderr.contains("passed"), "{stderr}");
    (predicted, console, version)
}

fn pcr4_events(predicted: &serde_json::Value) -> usize {
    predicted["EventLog"]["Events"].as_array().map_or(0, |e| e.iter().filter(|e| e["PCRIndex"] == 4).count())
}

#[test]
fn stub_252_boots_with_the_predicted_pcrs() {
    let (predicted, console, _) = boots_with_the_predicted_pcrs(Spec::report(Some(252)));
    assert_eq!(pcr4_events(&predicted), 4, "252 starts the kernel through LoadImage()");
    // Even 252 passes .pcrpkey to the initrd as a cpio, which the kernel measures with the initrd.
    assert!(console.contains("UPLOSI-EXTRA /.extra/tpm2-pcr-public-key.pem"), "{console}");
}

#[test]
fn stub_254_boots_with_the_predicted_pcrs() {
    let (predicted, _, _) = boots_with_the_predicted_pcrs(Spec::report(Some(254)));
    let names: Vec<&str> = predicted["EventLog"]["Events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["Description"].as_str()?.split(" name: ").nth(1))
        .collect();
    assert!(names.contains(&".sbat"), "254 measures the stub's own .sbat: {names:?}");
}

#[test]
fn stub_257_boots_with_the_predicted_pcrs() {
    let (predicted, console, _) = boots_with_the_predicted_pcrs(Spec::report(Some(257)));
    assert_eq!(pcr4_events(&predicted), 4);
    assert!(console.contains("UPLOSI-EXTRA /.extra/os-release"), "257 passes .osrel on: {console}");
}

#[test]
fn the_newest_stub_boots_with_the_predicted_pcrs() {
    let (predicted, _, version) = boots_with_the_predicted_pcrs(Spec::report(None));
    assert!(boot::major(&version) >= 262, "sid has {version}");
    assert_eq!(pcr4_events(&predicted), 3, "{version} starts the kernel without LoadImage()");
}

#[test]
fn a_credential_on_the_esp_and_a_ucode_section_still_match() {
    let spec = Spec {
        extra: vec![(".ucode", boot::ucode())],
        esp: vec![("EFI/BOOT/BOOTX64.EFI.extra.d/uplosi-test.cred", b"a credential".to_vec())],
        ..Spec::report(None)
    };
    let (predicted, console, _) = boots_with_the_predicted_pcrs(spec);
    assert!(console.contains("UPLOSI-EXTRA /.extra/credentials/uplosi-test.cred"), "{console}");
    let pcr12 = predicted["measurements"]["12"]["expected"].as_str().unwrap_or_default();
    assert_ne!(pcr12, "0".repeat(64), "the credential is measured into PCR 12");
}

/// `uplosi measurements IMAGE ARGS` as JSON.
fn measurements_with(image: &Path, args: &[&str]) -> serde_json::Value {
    let out = uplosi(&std::env::temp_dir()).arg("measurements").arg(image).args(args).output().expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The phase files for the initrd: TPM2_PCR_Extend commands of PCR 11 with each word, in order.
fn phase_files(words: &[&str]) -> Vec<(String, Vec<u8>)> {
    words.iter().enumerate().map(|(i, w)| (format!("phase-{}", i + 1), boot::pcr_extend_command(11, w))).collect()
}

#[test]
fn mkosis_default_layout_boots_with_the_predicted_sha384_pcrs_and_reports_the_phases() {
    // systemd-boot at EFI/BOOT/BOOTX64.EFI, the UKI in EFI/Linux/, as mkosi's Bootloader=systemd-boot lays it out;
    // the init extends PCR 11 as systemd-pcrphase would with enter-initrd and leave-initrd; swtpm has SHA-384.
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = Spec {
        layout: boot::Layout::SystemdBoot,
        initrd_files: phase_files(&["enter-initrd", "leave-initrd"]),
        ..Spec::report(Some(257))
    };
    let (image, _) = boot::image(dir.path(), "podvm", &spec);
    let phases = "enter-initrd:leave-initrd";
    let sha384 = measurements_with(&image, &["--bank", "sha384", "--phase", phases]);
    let sha256 = measurements_with(&image, &["--phase", phases]);
    let (out, report, console) = boot_check(dir.path(), &image, &["--bank", "sha384"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{console}", text(&out.stderr));
    for (bank, predicted) in [("sha384", &sha384), ("sha256", &sha256)] {
        let guest = boot::guest_pcrs_in(&console, bank);
        for pcr in [4u32, 7, 9, 11, 12] {
            let expected = predicted["measurements"][pcr.to_string()]["expected"].as_str().unwrap_or_default();
            assert_eq!(guest.get(&pcr).map(String::as_str), Some(expected), "{bank} PCR {pcr}\n{console}");
        }
    }
    assert_eq!(pcr4_events(&sha256), 5, "action, separator, systemd-boot, the UKI, .linux");
    assert_eq!(report["bank"], "sha384");
    for pcr in [4, 7, 9, 11, 12, 13] {
        assert_eq!(report["measurements"][pcr.to_string()]["match"], true, "PCR {pcr}: {report}");
    }
    assert_eq!(report["phases"], serde_json::json!(["enter-initrd", "leave-initrd"]), "{report}");
    assert_eq!(report["pcr11"], sha384["measurements"]["11"]["expected"], "{report}");
    assert_eq!(report["pcr11"], sha384["pcr11Phases"][phases]);
    assert_eq!(
        report["measurements"]["11"]["actual"],
        measurements_with(&image, &["--bank", "sha384"])["measurements"]["11"]["expected"],
        "PCR 11 where user space starts, before the phases"
    );
}

#[test]
fn systemd_boot_252_passes_the_command_line_which_both_it_and_the_stub_measure_into_pcr12() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = Spec { layout: boot::Layout::SystemdBoot, ..Spec::report(Some(252)) };
    let (image, _) = boot::image(dir.path(), "podvm", &spec);
    let predicted = measurements(&image);
    let (out, report, console) = boot_check(dir.path(), &image, &[]);
    assert_eq!(out.status.code(), Some(0), "{}\n{console}", text(&out.stderr));
    let guest = boot::guest_pcrs(&console);
    for pcr in [4u32, 7, 9, 11, 12] {
        let expected = predicted["measurements"][pcr.to_string()]["expected"].as_str().unwrap_or_default();
        assert_eq!(guest.get(&pcr).map(String::as_str), Some(expected), "PCR {pcr}\n{console}");
    }
    let pcr12: Vec<&serde_json::Value> =
        predicted["EventLog"]["Events"].as_array().into_iter().flatten().filter(|e| e["PCRIndex"] == 12).collect();
    assert_eq!(pcr12.len(), 2, "systemd-boot 252 and the stub each measure the load options: {pcr12:?}");
    assert_ne!(guest.get(&12).map(String::as_str), Some("0".repeat(64).as_str()));
    assert_eq!(report["measurements"]["12"]["match"], true, "{report}");
}

#[test]
fn secure_boot_with_enrolled_keys_boots_with_the_predicted_pcr7() {
    // OVMF's Secure Boot firmware, the test keys enrolled in a copy of its variable store by virt-fw-vars, a UKI
    // signed with db's key by sbsign.
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = boot::Keys::new(dir.path());
    let (image, _) = boot::image(dir.path(), "signed", &Spec { sign: Some(&keys), ..Spec::report(Some(257)) });
    let vars = dir.path().join("VARS.fd");
    let dbx = keys.enrolled_vars(&vars);
    let mut key_args = keys.args();
    key_args.extend(["--dbx".to_string(), dbx.display().to_string()]);
    let key_refs: Vec<&str> = key_args.iter().map(String::as_str).collect();
    let mut measure_args = vec!["--bank", "sha384"];
    measure_args.extend(&key_refs);
    let predicted = measurements_with(&image, &measure_args);
    let firmware = format!("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd:{}", vars.display());
    let mut check_args = vec!["--firmware", firmware.as_str(), "--bank", "sha384"];
    check_args.extend(&key_refs);
    let (out, report, console) = boot_check(dir.path(), &image, &check_args);
    assert_eq!(out.status.code(), Some(0), "{}\n{console}", text(&out.stderr));
    let guest = boot::guest_pcrs_in(&console, "sha384");
    for pcr in [4u32, 7, 9, 11, 12] {
        let expected = predicted["measurements"][pcr.to_string()]["expected"].as_str().unwrap_or_default();
        assert_eq!(guest.get(&pcr).map(String::as_str), Some(expected), "sha384 PCR {pcr}\n{console}");
    }
    assert_eq!(pcr4_events(&predicted), 3, "with Secure Boot on, the stub starts the kernel past LoadImage()");
    let authorities = predicted["EventLog"]["Events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["Description"].as_str().unwrap_or_default().starts_with("EV_EFI_VARIABLE_AUTHORITY"))
        .count();
    assert_eq!(authorities, 1, "db's certificate verified the UKI, measured once");
    assert_eq!(report["measurements"]["7"]["match"], true, "{report}");
    let off = measurements_with(&image, &["--bank", "sha384"]);
    assert_ne!(off["measurements"]["7"], predicted["measurements"]["7"], "Secure Boot changes PCR 7");
}

#[test]
fn a_panicking_init_fails_with_exit_1_naming_the_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (image, _) = boot::image(dir.path(), "panic", &Spec { init: boot::PANIC_INIT, ..Spec::report(Some(252)) });
    let started = Instant::now();
    let (out, report, _) = boot_check(dir.path(), &image, &["--timeout", "3m"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(150), "a panic ends the check at once");
    assert!(stderr.contains("the kernel panicked") && stderr.contains("Attempted to kill init"), "{stderr}");
    assert!(stderr.contains("console lines:") && stderr.contains("UPLOSI-TEST: about to exit"), "{stderr}");
    assert_eq!(report["booted"], false);
    assert!(report["error"].as_str().unwrap_or_default().contains("panicked"), "{report}");
}

#[test]
fn a_boot_waiting_for_a_person_fails_within_the_timeout_naming_the_prompt_and_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (image, _) =
        boot::image(dir.path(), "firstboot", &Spec { init: boot::FIRSTBOOT_INIT, ..Spec::report(Some(252)) });
    let started = Instant::now();
    let (out, report, console) = boot_check(dir.path(), &image, &["--timeout", "40s"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    assert!(stderr.contains("timed out after 40 s waiting for /UPLOSI-TEST: done/"), "{stderr}");
    assert!(console.contains("waiting forever"), "the console log is kept: {console}");
    assert_eq!(report["booted"], false);
    // The prompt is 31 lines above the end, out of the last 20 the verdict shows, and still named, by line.
    let line = console.split('\n').position(|l| l.contains("Please configure your system!")).expect("prompt") + 1;
    assert_eq!(report["waitingOn"], "Please configure your system!", "{report}");
    assert_eq!(report["waitingOnLine"], line, "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("at line {line}: \"Please configure your system!\"")), "{error}");
    assert!(error.contains("the console had been quiet for "), "{error}");
    assert!(stderr.contains("Please configure your system!"), "{stderr}");
}

#[test]
fn ctrl_c_stops_the_vm_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (image, _) = boot::image(dir.path(), "hang", &Spec { init: boot::HANG_INIT, ..Spec::report(Some(252)) });
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let mut child = uplosi(&tmp)
        .arg("boot-check")
        .arg(&image)
        .args(["--cpus", "1", "--timeout", "3m"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Once the VM's files exist, the VM runs.
    support::wait_until("the VM to start", Duration::from_secs(60), || {
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0) > 0 && !processes_using(&tmp).is_empty()
    });
    std::thread::sleep(Duration::from_secs(3));
    support::interrupt(&child);
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    assert!(processes_using(&tmp).is_empty(), "QEMU and swtpm are gone: {:?}", processes_using(&tmp));
    assert_eq!(std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0), 0, "the VM's files are removed");
}

/// The processes whose command line names `dir` (QEMU and swtpm get their files there).
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().filter_map(Result::ok) {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[test]
fn no_esp_is_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blank = dir.path().join("blank.raw");
    std::fs::File::create(&blank).and_then(|f| f.set_len(8 << 20)).expect("blank");
    let out = uplosi(dir.path()).arg("boot-check").arg(&blank).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no GPT partition table"), "{}", text(&out.stderr));
}

#[test]
fn no_swtpm_on_path_is_exit_2_naming_the_packages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (image, _) = boot::image(dir.path(), "uki", &Spec::report(Some(252)));
    // A PATH with QEMU but without swtpm.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let qemu = which("qemu-system-x86_64");
    std::os::unix::fs::symlink(&qemu, bin.join("qemu-system-x86_64")).expect("link");
    let out = uplosi(dir.path()).arg("boot-check").arg(&image).env("PATH", &bin).output().expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`swtpm` not found") && stderr.contains("swtpm-tools") && stderr.contains("qemu-system-x86"),
        "{stderr}"
    );
}

#[test]
fn a_uki_for_another_architecture_is_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (image, _) = boot::image(dir.path(), "uki", &Spec::report(Some(252)));
    // The COFF machine field of BOOTX64.EFI, found through its PE header, says aarch64 instead of x86_64.
    let mut disk = std::fs::read(&image).expect("read");
    let at = disk.windows(6).position(|w| w == b"PE\0\0\x64\x86").expect("the UKI's PE header");
    disk[at + 4..at + 6].copy_from_slice(&0xaa64u16.to_le_bytes());
    std::fs::write(&image, &disk).expect("write");
    let out = uplosi(dir.path()).arg("boot-check").arg(&image).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is for aarch64") && text(&out.stderr).contains("only x86_64"),
        "{}",
        text(&out.stderr)
    );
}

fn which(program: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not on PATH"))
}

#[test]
fn bad_options_are_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (image, _) = boot::image(dir.path(), "uki", &Spec::report(Some(252)));
    for (args, message) in [
        (&["--timeout", "soon"][..], "--timeout \"soon\" is not a positive Go duration"),
        (&["--expect", "("][..], "is not a regular expression"),
        (&["--firmware", "/nonexistent/CODE.fd"][..], "/nonexistent/CODE.fd not found"),
        (&["--accel", "xen"][..], "invalid value 'xen'"),
    ] {
        let out = uplosi(dir.path()).arg("boot-check").arg(&image).args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(message), "{args:?}: {}", text(&out.stderr));
    }
}

/// The release run with a boot check: an AWS variant (moto) and a `file` export.
fn release_config() -> String {
    r#"[base]
name = "podvm"
imageVersionFile = "version.txt"
bootCheck = true
bootCheckExpect = "UPLOSI-TEST: done"
bootCheckTimeout = "3m"
measurementsFile = "kms-{{.Version}}.json"
measurementsFormat = "aws-kms"

[variant.aws]
provider = "aws"
[variant.aws.aws]
region = "us-east-1"

[variant.libvirt]
provider = "file"
[variant.libvirt.file]
path = "out/podvm-{{.Version}}.qcow2"
format = "qcow2"
"#
    .to_string()
}

fn amis(endpoint: &str) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let conf = support::moto::sdk_config(endpoint, "us-east-1").await;
        support::moto::images_named(&conf, "podvm-1.2.3").await.len()
    })
}

#[test]
fn upload_boot_check_stops_a_failing_image_and_publishes_a_good_ones_measurements() {
    let moto = support::moto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (bad, _) = boot::image(dir.path(), "bad", &Spec { init: boot::PANIC_INIT, ..Spec::report(Some(252)) });
    let (good, _) = boot::image(dir.path(), "good", &Spec::report(None));
    let ws = support::Workspace::with_image(&release_config(), &bad);
    std::fs::create_dir_all(ws.path().join("out")).expect("out");
    let run = |extra: &[&str]| {
        support::moto::uplosi_command(ws.path(), &moto.url)
            .args(["upload", "system.raw", "-i", "--manifest", "manifest.json"])
            .args(extra)
            .output()
            .expect("run")
    };

    let plan = ws.plan_json(&[]);
    for variant in ["aws", "libvirt"] {
        let steps = support::variant(&plan, variant)["steps"].to_string();
        assert!(steps.contains("boot system.raw under OVMF") && steps.contains("within 3m"), "{steps}");
    }

    let out = run(&[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "no reference: {}", text(&out.stdout));
    assert!(stderr.contains("the boot check failed: the kernel panicked"), "{stderr}");
    assert_eq!(amis(&moto.url), 0, "nothing reached AWS");
    assert_eq!(std::fs::read_dir(ws.path().join("out")).map(|d| d.count()).unwrap_or(1), 0, "no file was written");
    assert_eq!(ws.read("version.txt"), "1.2.3\n", "the version is not bumped");
    let manifest: serde_json::Value = serde_json::from_str(&ws.read("manifest.json")).expect("manifest");
    assert_eq!(manifest["bootCheck"]["booted"], false, "{manifest}");
    assert!(manifest["bootCheck"]["error"].as_str().unwrap_or_default().contains("panicked"), "{manifest}");
    assert!(manifest["bootCheck"].get("mismatches").is_none(), "no event lists in the manifest");
    for variant in manifest["variants"].as_array().expect("variants") {
        assert_eq!(variant["status"], "skipped", "{manifest}");
        assert!(variant["error"].as_str().unwrap_or_default().contains("the boot check failed"), "{manifest}");
    }

    ws.link_image("system.raw", &good);
    let out = run(&["--output", "json"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(amis(&moto.url), 1, "{stderr}");
    assert!(ws.path().join("out/podvm-1.2.3.qcow2").exists());
    assert_eq!(ws.read("version.txt"), "1.2.4\n");
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).expect("manifest on stdout");
    assert_eq!(manifest["bootCheck"]["booted"], true, "{manifest}");
    assert_eq!(manifest["bootCheck"]["measurements"]["9"]["match"], true, "{manifest}");
    let predicted = measurements(&good);
    for pcr in ["4", "7", "9", "11", "12", "13"] {
        assert_eq!(manifest["measurements"][pcr], predicted["measurements"][pcr]["expected"], "PCR {pcr}: {manifest}");
    }
    assert_eq!(serde_json::from_str::<serde_json::Value>(&ws.read("manifest.json")).expect("file"), manifest);

    // What each cloud's TPM attests with: AWS's NitroTPM SHA-384 PCR 4, 7, 12 and, after the boot check, 11 as
    // the boot left it; the others SHA-256.
    let sha384 = measurements_with(&good, &["--bank", "sha384"]);
    let aws = &manifest["measurements"]["variants"]["aws"]["attestation"];
    assert_eq!(aws["bank"], "sha384", "{manifest}");
    let keys: Vec<&String> = aws["pcrs"].as_object().expect("pcrs").keys().collect();
    assert_eq!(keys, ["11", "12", "4", "7"], "{manifest}");
    for pcr in ["4", "7", "11", "12"] {
        assert_eq!(aws["pcrs"][pcr], sha384["measurements"][pcr]["expected"], "AWS PCR {pcr}");
    }
    let libvirt = &manifest["measurements"]["variants"]["libvirt"]["attestation"];
    assert_eq!(libvirt["bank"], "sha256");
    for pcr in ["4", "7", "9", "11", "12", "13"] {
        assert_eq!(libvirt["pcrs"][pcr], predicted["measurements"][pcr]["expected"], "libvirt PCR {pcr}");
    }
    assert_eq!(support::variant(&manifest, "aws")["attestation"], *aws, "on the variant's entry too");
    // measurementsFormat = "aws-kms": the key policy condition, written before the upload.
    let kms: serde_json::Value = serde_json::from_str(&ws.read("kms-1.2.3.json")).expect("kms document");
    assert_eq!(
        kms["StringEqualsIgnoreCase"]["kms:RecipientAttestation:NitroTPMPCR4"],
        sha384["measurements"]["4"]["expected"]
    );
}

#[test]
fn boot_check_settings_are_checked_with_the_configuration() {
    let ws = support::Workspace::new();
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"podvm\"\nprovider = \"file\"\nbootCheckTimeout = \"soon\"\nbootCheckExpect = \"(\"\n[base.file]\npath = \"x.raw\"\n",
    );
    let err = ws.config_error(&[]);
    assert!(err.contains("bootCheckTimeout \"soon\" is not a positive duration"), "{err}");
    assert!(err.contains("bootCheckExpect is not a regular expression"), "{err}");
    ws.write("uplosi.conf", "[base]\nname = \"podvm\"\nprovider = \"file\"\n[base.file]\npath = \"x.raw\"\n");
    let plan = ws.plan_json(&["--boot-check"]);
    assert!(plan["variants"][0]["steps"][0].as_str().unwrap_or_default().contains("within 5m"), "{plan}");
    let plan = ws.plan_json(&[]);
    assert!(!plan.to_string().contains("boot-check"), "no boot check unless asked: {plan}");
}
