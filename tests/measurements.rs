//! `uplosi measurements` on real UKIs (Debian's kernel and systemd stub, joined with objcopy) inside GPT images
//! with FAT12, FAT16 and FAT32 ESPs, checked against `systemd-measure calculate` for PCR 11 and an independent
//! Python/pefile reference for PCRs 4 and 9.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::fixtures::{self, run};
use support::uki::{self, Parts};

fn uplosi() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("uplosi").unwrap();
    cmd.env_remove("RUST_LOG");
    cmd
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// The reference values of `tests/support/pcr_reference.py`.
fn reference(uki: &Path) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/pcr_reference.py");
    serde_json::from_slice(&run(Command::new("python3").arg(script).arg(uki)).stdout).unwrap()
}

/// `systemd-measure calculate` for the sections the UKI was built from; its first phase is `enter-initrd`.
fn systemd_measure_enter_initrd(sections: &[(&str, PathBuf)]) -> String {
    let mut cmd = Command::new("/usr/lib/systemd/systemd-measure");
    cmd.arg("calculate").arg("--bank=sha256");
    for (name, path) in sections {
        cmd.arg(format!("--{}={}", name.trim_start_matches('.'), path.display()));
    }
    let out = String::from_utf8(run(&mut cmd).stdout).unwrap();
    out.lines().find_map(|l| l.strip_prefix("11:sha256=")).unwrap_or_else(|| panic!("{out}")).to_string()
}

/// A workspace with one UKI in a FAT32 ESP at EFI/BOOT/BOOTX64.EFI.
struct Fixture {
    dir: tempfile::TempDir,
    uki: PathBuf,
    sections: Vec<(&'static str, PathBuf)>,
}

impl Fixture {
    fn new(parts: &Parts<'_>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (uki, sections) = uki::build(dir.path(), "uki", parts);
        Self { dir, uki, sections }
    }

    fn disk(&self, name: &str, fat: u8, esp_mib: u64, files: &[(&str, &Path)]) -> PathBuf {
        let out = self.dir.path().join(name);
        uki::esp_disk(&out, fat, esp_mib, files);
        out
    }

    fn standard_disk(&self) -> PathBuf {
        self.disk("disk.raw", 32, 64, &[("EFI/BOOT/BOOTX64.EFI", &self.uki)])
    }
}

fn measurements_json(image: &Path, extra: &[&str]) -> (serde_json::Value, String, String) {
    let assert = uplosi().arg("measurements").arg(image).args(extra).assert().success();
    let out = assert.get_output();
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (json, stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn expected(json: &serde_json::Value, pcr: u32) -> String {
    json["measurements"][pcr.to_string()]["expected"].as_str().unwrap_or_else(|| panic!("PCR {pcr}: {json}")).into()
}

#[test]
fn pcrs_match_systemd_measure_and_an_independent_reference() {
    let fx = Fixture::new(&Parts::default());
    let disk = fx.standard_disk();
    let out = fx.dir.path().join("measurements.json");
    let assert = uplosi().arg("measurements").arg(&disk).arg("-o").arg(&out).assert().success();
    assert!(assert.get_output().stdout.is_empty(), "with -o, nothing goes to stdout");
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.ends_with("}\n") && !text.contains("\n "), "compact JSON with a newline, as Go's encoder writes");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();

    // PCR 11: systemd-measure reports it after systemd-pcrphase extended "enter-initrd" (without a NUL).
    let pcr11 = unhex(&expected(&json, 11));
    let mut after_phase = pcr11.clone();
    after_phase.extend_from_slice(&sha256(b"enter-initrd"));
    assert_eq!(hex(&sha256(&after_phase)), systemd_measure_enter_initrd(&fx.sections), "PCR 11 vs systemd-measure");

    let reference = reference(&fx.uki);
    assert_eq!(expected(&json, 4), reference["4"], "PCR 4 vs the pefile reference");
    assert_eq!(reference["4"], reference["4_padded"], "an 8-byte-aligned UKI hashes the same with or without padding");
    assert_eq!(expected(&json, 9), reference["9"], "PCR 9 vs the pefile reference");
    for zero in [8, 12, 13, 15] {
        assert_eq!(expected(&json, zero), "0".repeat(64), "PCR {zero}");
    }

    // The event log replays to the PCR values.
    let mut bank: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
    let events = json["EventLog"]["Events"].as_array().unwrap();
    for e in events {
        let pcr = bank.entry(e["PCRIndex"].as_u64().unwrap()).or_insert_with(|| vec![0u8; 32]);
        let mut input = pcr.clone();
        input.extend_from_slice(&unhex(e["Digest"].as_str().unwrap()));
        *pcr = sha256(&input).to_vec();
        assert!(e["Description"].is_string());
    }
    for (pcr, value) in &bank {
        assert_eq!(hex(value), expected(&json, *pcr as u32), "event log of PCR {pcr}");
    }
    assert_eq!(events.iter().filter(|e| e["PCRIndex"] == 4).count(), 4);
    assert_eq!(events[1]["Data"], "AAAAAA==", "EV_SEPARATOR data");
    let names: Vec<&str> = events
        .iter()
        .filter_map(|e| e["Description"].as_str()?.strip_prefix("EV_IPL: UKI section "))
        .filter(|d| d.contains(" name: "))
        .collect();
    assert!(names.iter().any(|n| n.ends_with("name: .pcrpkey")), "systemd's .pcrpkey is measured: {names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".sbat")), "the 252 stub does not measure its .sbat: {names:?}");

    for line in
        ["EFI Boot Stages:", "  Stage 1 - Unified Kernel Image (UKI):\t", "  Stage 2 - Linux                     :\t"]
    {
        assert!(stderr.contains(line), "{line:?} in:\n{stderr}");
    }
    assert!(
        stderr.contains("Linux LOAD_FILE2 protocol:\n  cmdline: \"console=ttyS0 root=PARTUUID=6c1e0d3a & quiet\"\n")
    );
    assert!(stderr.contains("UKI sections:\n  Section  1 - .linux "), "{stderr}");
    assert!(stderr.contains("  Section 11 - .sbat   :\tnot measured\n"), "{stderr}");
    assert!(stderr.contains(&format!("PCR[ 4]: {}\n", expected(&json, 4))), "{stderr}");
    assert!(stderr.contains(&format!("PCR[11]: {}\n", expected(&json, 11))), "{stderr}");
    assert!(stderr.contains(&format!("Wrote precalculated measurements to {}", out.display())));
}

#[test]
fn fat12_fat16_fat32_and_qcow2_give_the_same_measurements() {
    let fx = Fixture::new(&Parts::default());
    let fat32 = fx.standard_disk();
    let (json32, stdout32, _) = measurements_json(&fat32, &[]);
    assert!(json32["measurements"].is_object(), "JSON on stdout without -o: {stdout32}");
    for (fat, mib) in [(12u8, 24u64), (16, 40)] {
        let disk = fx.disk(&format!("fat{fat}.raw"), fat, mib, &[("EFI/BOOT/BOOTX64.EFI", &fx.uki)]);
        let (_, stdout, _) = measurements_json(&disk, &[]);
        assert_eq!(stdout, stdout32, "FAT{fat}");
    }
    let qcow = fx.dir.path().join("disk.qcow2");
    run(Command::new("qemu-img").args(["convert", "-q", "-c", "-O", "qcow2"]).arg(&fat32).arg(&qcow));
    let (_, stdout, _) = measurements_json(&qcow, &["-u", "/boot/EFI/BOOT/BOOTX64.EFI"]);
    assert_eq!(stdout, stdout32, "qcow2 input");
    // The Go tool's older name is an alias; -q leaves only errors on stderr.
    let assert = uplosi().args(["-q", "precalculate-measurements"]).arg(&fat32).assert().success();
    assert_eq!(String::from_utf8_lossy(&assert.get_output().stdout), stdout32, "precalculate-measurements alias");
    assert!(assert.get_output().stderr.is_empty(), "-q: no summary");
}

#[test]
fn uki_path_is_found_through_mount_points_and_esp_relative_paths() {
    let fx = Fixture::new(&Parts::default());
    let disk = fx.disk("linux.raw", 32, 64, &[("EFI/Linux/podvm.efi", &fx.uki), ("EFI/BOOT/BOOTX64.EFI", &fx.uki)]);
    let (reference, _, _) = measurements_json(&disk, &[]);
    for path in
        ["/efi/EFI/Linux/podvm.efi", "/boot/EFI/Linux/podvm.efi", "EFI/Linux/podvm.efi", "/efi/boot/bootx64.efi"]
    {
        let (json, _, _) = measurements_json(&disk, &["--uki-path", path]);
        assert_eq!(json, reference, "{path}");
    }
}

fn measurement_error(image: &Path, extra: &[&str]) -> String {
    let assert = uplosi().arg("measurements").arg(image).args(extra).assert().code(2);
    assert!(assert.get_output().stdout.is_empty());
    String::from_utf8_lossy(&assert.get_output().stderr).into_owned()
}

#[test]
fn each_missing_piece_is_named() {
    let fx = Fixture::new(&Parts::default());
    let dir = fx.dir.path();

    let blank = dir.join("blank.raw");
    std::fs::File::create(&blank).unwrap().set_len(8 << 20).unwrap();
    let err = measurement_error(&blank, &[]);
    assert!(err.contains("has no GPT partition table"), "{err}");

    let no_esp = dir.join("no-esp.raw");
    std::fs::File::create(&no_esp).unwrap().set_len(8 << 20).unwrap();
    let mut sfdisk = Command::new("/usr/sbin/sfdisk");
    sfdisk.arg("--quiet").arg(&no_esp).stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"label: gpt\n,,L\n").unwrap();
    assert!(child.wait().unwrap().success());
    let err = measurement_error(&no_esp, &[]);
    assert!(err.contains("no EFI system partition") && err.contains("0FC63DAF-8483-4772-8E79-3D69D8477DE4"), "{err}");

    let disk = fx.standard_disk();
    let err = measurement_error(&disk, &["-u", "/boot/EFI/BOOT/BOOTAA64.EFI"]);
    assert!(
        err.contains("/boot/EFI/BOOT/BOOTAA64.EFI not found") && err.contains("EFI/BOOT holds: BOOTX64.EFI"),
        "{err}"
    );

    // The GPT fixture's BOOTX64.EFI is random bytes.
    let err = measurement_error(&fixtures::gpt_image().path, &[]);
    assert!(err.contains("is not a PE/EFI image"), "{err}");

    let stub_only = fx.disk("stub.raw", 32, 64, &[("EFI/BOOT/BOOTX64.EFI", Path::new(uki::STUB))]);
    let err = measurement_error(&stub_only, &[]);
    assert!(err.contains("no .linux section") && err.contains(".sdmagic"), "{err}");

    let (no_cmdline, _) = uki::build(dir, "nocmdline", &Parts { cmdline: None, ..Parts::default() });
    let disk = fx.disk("nocmdline.raw", 32, 64, &[("EFI/BOOT/BOOTX64.EFI", &no_cmdline)]);
    assert!(measurement_error(&disk, &[]).contains("no .cmdline section"));

    let (no_initrd, _) = uki::build(dir, "noinitrd", &Parts { initrd: None, ..Parts::default() });
    let disk = fx.disk("noinitrd.raw", 32, 64, &[("EFI/BOOT/BOOTX64.EFI", &no_initrd)]);
    assert!(measurement_error(&disk, &[]).contains("no .initrd section"));
}

#[test]
fn an_unaligned_uki_is_hashed_as_edk2_does_not_as_go_uefi() {
    let fx = Fixture::new(&Parts { align8: false, ..Parts::default() });
    assert_ne!(std::fs::metadata(&fx.uki).unwrap().len() % 8, 0, "objcopy's output is not 8-byte aligned");
    let (json, _, _) = measurements_json(&fx.standard_disk(), &[]);
    let reference = reference(&fx.uki);
    assert_eq!(expected(&json, 4), reference["4"], "EDK2: no padding");
    assert_ne!(expected(&json, 4), reference["4_padded"], "go-uefi pads, and would differ here");
}

#[test]
fn measurements_file_in_config_is_written_before_the_upload() {
    let fx = Fixture::new(&Parts::default());
    let disk = fx.standard_disk();
    let ws = support::Workspace::new();
    std::fs::remove_file(ws.image()).unwrap();
    std::os::unix::fs::symlink(&disk, ws.image()).unwrap();
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"podvm\"\nprovider = \"file\"\nimageVersion = \"1.2.3\"\nmeasurementsFile = \"pcrs-{{.Version}}.json\"\n\n[base.file]\npath = \"podvm.raw\"\nformat = \"raw\"\n",
    );
    let plan = ws.plan_json(&[]);
    assert!(plan["variants"][0]["steps"][0].as_str().unwrap().contains("pcrs-1.2.3.json"), "{plan}");
    assert!(!ws.path().join("pcrs-1.2.3.json").exists(), "a dry run writes nothing");
    let assert = uplosi().current_dir(ws.path()).args(["upload", "system.raw"]).assert().success();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("Wrote precalculated measurements to") && stderr.contains("pcrs-1.2.3.json"), "{stderr}");
    let (direct, _, _) = measurements_json(&disk, &[]);
    let written: serde_json::Value = serde_json::from_str(&ws.read("pcrs-1.2.3.json")).unwrap();
    assert_eq!(written, direct);
    assert!(ws.path().join("podvm.raw").exists(), "the upload ran after the measurements");
}

/// The UKI at `from` with the stub version in its `.sdmagic` replaced by `version` (of the same length).
fn with_stub_version(from: &Path, to: &Path, version: &str) {
    let mut bytes = std::fs::read(from).unwrap();
    let marker = b"LoaderInfo: systemd-stub ";
    let at = bytes.windows(marker.len()).position(|w| w == marker).expect(".sdmagic") + marker.len();
    let old_len = bytes[at..].iter().position(|&b| b == b' ').unwrap();
    assert_eq!(old_len, version.len(), "the test keeps the section's length");
    bytes[at..at + old_len].copy_from_slice(version.as_bytes());
    std::fs::write(to, bytes).unwrap();
}

#[test]
fn a_stub_newer_than_the_newest_model_is_measured_as_the_newest_with_a_warning() {
    let fx = Fixture::new(&Parts::default());
    let original = String::from_utf8_lossy(&std::fs::read(&fx.uki).unwrap()).into_owned();
    let shipped = original.split("LoaderInfo: systemd-stub ").nth(1).and_then(|r| r.split(' ').next()).unwrap();
    let width = shipped.len();
    let measure = |version: &str| {
        let uki = fx.dir.path().join(format!("uki-{version}.efi"));
        with_stub_version(&fx.uki, &uki, version);
        let disk = fx.disk(&format!("disk-{version}.raw"), 32, 64, &[("EFI/BOOT/BOOTX64.EFI", &uki)]);
        measurements_json(&disk, &[])
    };
    // Debian's versions are long ("252.39-1~deb12u1"); pad the made-up ones to the same length.
    let pad = |v: &str| format!("{v}{}", "-1".repeat(width)).chars().take(width).collect::<String>();
    let (newest, _, newest_err) = measure(&pad("262.1"));
    let (future, _, future_err) = measure(&pad("263.1"));
    let (ours, _, _) = measure(shipped);
    assert!(!newest_err.contains("newer than the newest"), "{newest_err}");
    assert!(
        future_err.contains(&format!(
            "systemd-stub {} is newer than the newest release uplosi models (262); measured as 262",
            pad("263.1")
        )),
        "{future_err}"
    );
    for pcr in [9, 11] {
        assert_eq!(expected(&future, pcr), expected(&newest, pcr), "PCR {pcr}: 263 is measured as 262");
    }
    assert_ne!(expected(&future, 11), expected(&ours, 11), "{shipped} measures fewer sections than 262");
}

/// `nitro-tpm-pcr-compute --image … [--PK … --KEK … --db …]`, AWS's own tool (crates.io, installed by
/// scripts/test.sh).
fn nitro_tpm_pcr_compute(images: &[&Path], keys: &[String]) -> String {
    let mut cmd = Command::new("nitro-tpm-pcr-compute");
    for image in images {
        cmd.arg("--image").arg(image);
    }
    // Its flags are spelled --PK, --KEK, --db, --dbx.
    for pair in keys.chunks(2) {
        let flag = match pair[0].as_str() {
            "--pk" => "--PK",
            "--kek" => "--KEK",
            other => other,
        };
        cmd.arg(flag).arg(&pair[1]);
    }
    String::from_utf8(run(&mut cmd).stdout).unwrap()
}

fn measurements_stdout(image: &Path, args: &[&str]) -> String {
    let assert = uplosi().arg("-q").arg("measurements").arg(image).args(args).assert().success();
    String::from_utf8(assert.get_output().stdout.clone()).unwrap()
}

#[test]
fn nitro_format_equals_nitro_tpm_pcr_compute_for_stubs_252_257_262_unsigned_and_signed() {
    let dir = tempfile::tempdir().unwrap();
    let keys = support::boot::Keys::new(dir.path());
    let key_args = keys.args();
    let key_refs: Vec<&str> = key_args.iter().map(String::as_str).collect();
    for release in [252u32, 257, 262] {
        for signed in [false, true] {
            let name = format!("uki{release}{}", if signed { "-signed" } else { "" });
            let spec =
                support::boot::Spec { sign: signed.then_some(&keys), ..support::boot::Spec::report(Some(release)) };
            let (image, _) = support::boot::image(dir.path(), &name, &spec);
            let uki = dir.path().join(format!("{name}.efi"));
            let unsigned_ours = measurements_stdout(&image, &["--format", "nitro"]);
            assert_eq!(unsigned_ours, nitro_tpm_pcr_compute(&[&uki], &[]), "{name}: standard boot, byte for byte");
            if signed {
                let mut args = vec!["--format", "nitro"];
                args.extend(&key_refs);
                let ours = measurements_stdout(&image, &args);
                let theirs = nitro_tpm_pcr_compute(&[&uki], &key_args);
                assert_eq!(ours, theirs, "{name}: Secure Boot, byte for byte");
                assert_ne!(ours, unsigned_ours, "{name}: Secure Boot changes PCR 7 (and PCR 4 up to 257)");
            } else {
                let mut args = vec!["--format", "nitro"];
                args.extend(&key_refs);
                let err = uplosi().arg("measurements").arg(&image).args(&args).assert().code(2);
                let stderr = String::from_utf8_lossy(&err.get_output().stderr).into_owned();
                assert!(stderr.contains("is not signed by any db certificate"), "{name}: {stderr}");
                assert!(err.get_output().stdout.is_empty());
            }
        }
    }
}

#[test]
fn mkosis_default_layout_is_measured_through_systemd_boot_and_its_entry_choice() {
    let dir = tempfile::tempdir().unwrap();
    let spec =
        support::boot::Spec { layout: support::boot::Layout::SystemdBoot, ..support::boot::Spec::report(Some(257)) };
    let (image, _) = support::boot::image(dir.path(), "podvm", &spec);
    let uki = dir.path().join("podvm.efi");
    let loader = support::boot::parts().systemd_boot(Some(257));
    assert_eq!(
        measurements_stdout(&image, &["--format", "nitro"]),
        nitro_tpm_pcr_compute(&[&loader, &uki], &[]),
        "systemd-boot's image in PCR 4 before the UKI's, as nitro-tpm-pcr-compute computes it"
    );
    let (json, _, stderr) = measurements_json(&image, &[]);
    let stages: Vec<&str> = json["EventLog"]["Events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["PCRIndex"] == 4)
        .map(|e| e["Description"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(stages.len(), 5, "action, separator, systemd-boot, UKI, .linux: {stages:?}");
    assert!(stages[2].starts_with("Boot Stage 1: systemd-boot 257."), "{stages:?}");
    assert!(stderr.contains("boot path: firmware → systemd-boot 257."), "{stderr}");

    // Two UKIs: systemd-boot boots the newest version, unless loader.conf says otherwise; -u picks by hand.
    let older = dir.path().join("older.efi");
    let osrel = dir.path().join("older.osrel");
    std::fs::write(&osrel, b"ID=debian\nVERSION_ID=11\nPRETTY_NAME=\"older\"\n").unwrap();
    run(Command::new("objcopy")
        .arg("--update-section")
        .arg(format!(".osrel={}", osrel.display()))
        .arg(&uki)
        .arg(&older));
    let build = |name: &str, conf: Option<&str>| {
        let conf_file = dir.path().join(format!("{name}.conf"));
        let mut files: Vec<(&str, &Path)> = vec![
            ("EFI/BOOT/BOOTX64.EFI", &loader),
            ("EFI/Linux/podvm_1.0.efi", &uki),
            ("EFI/Linux/podvm_0.9.efi", &older),
        ];
        if let Some(text) = conf {
            std::fs::write(&conf_file, text).unwrap();
            files.push(("loader/loader.conf", &conf_file));
        }
        let disk = dir.path().join(format!("{name}.raw"));
        uki::esp_disk(&disk, 32, 200, &files);
        disk
    };
    let pcr4 = |image: &Path, args: &[&str]| expected(&measurements_json(image, args).0, 4);
    let newest = nitro_tpm_pcr_compute(&[&loader, &uki], &[]);
    let chosen = nitro_tpm_pcr_compute(&[&loader, &older], &[]);
    let nitro_pcr4 =
        |doc: &str| serde_json::from_str::<serde_json::Value>(doc).unwrap()["Measurements"]["PCR4"].clone();
    let both = build("both", None);
    let by_conf = build("conf", Some("timeout 0\ndefault podvm_0.9*\n"));
    let sha384 = |image: &Path, args: &[&str]| {
        let mut all = vec!["--bank", "sha384"];
        all.extend(args);
        serde_json::Value::String(pcr4(image, &all))
    };
    assert_eq!(sha384(&both, &[]), nitro_pcr4(&newest), "VERSION_ID 12 sorts before 11");
    assert_eq!(sha384(&by_conf, &[]), nitro_pcr4(&chosen), "loader.conf's default glob");
    assert_eq!(sha384(&both, &["-u", "/efi/EFI/Linux/podvm_0.9.efi"]), nitro_pcr4(&chosen), "-u picks by hand");
}

#[test]
fn a_boot_loader_uplosi_does_not_model_is_exit_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload");
    std::fs::write(&payload, b"not a certificate").unwrap();
    for (section, name) in [(".vendor_cert", "shim"), ("mods", "GRUB")] {
        let loader = dir.path().join(format!("{name}.efi"));
        run(Command::new("objcopy")
            .arg("--add-section")
            .arg(format!("{section}={}", payload.display()))
            .arg(uki::STUB)
            .arg(&loader));
        let disk = dir.path().join(format!("{name}.raw"));
        uki::esp_disk(&disk, 32, 64, &[("EFI/BOOT/BOOTX64.EFI", &loader)]);
        let err = measurement_error(&disk, &[]);
        assert!(err.contains(&format!("EFI/BOOT/BOOTX64.EFI in {} is {name}", disk.display())), "{err}");
    }
}

#[test]
fn a_type1_entry_or_no_entry_behind_systemd_boot_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let loader = support::boot::parts().systemd_boot(Some(257));
    let entry = dir.path().join("entry.conf");
    std::fs::write(&entry, b"title Debian\nlinux /vmlinuz\ninitrd /initrd.img\n").unwrap();
    let disk = dir.path().join("type1.raw");
    uki::esp_disk(&disk, 32, 64, &[("EFI/BOOT/BOOTX64.EFI", &loader), ("loader/entries/debian.conf", &entry)]);
    let err = measurement_error(&disk, &[]);
    assert!(err.contains("boots loader/entries/debian.conf, a Type #1 entry"), "{err}");
    let empty = dir.path().join("empty.raw");
    uki::esp_disk(&empty, 32, 64, &[("EFI/BOOT/BOOTX64.EFI", &loader)]);
    let err = measurement_error(&empty, &[]);
    assert!(err.contains("finds no boot entry"), "{err}");
}

#[test]
fn banks_formats_and_phases_are_one_replay() {
    let fx = Fixture::new(&Parts::default());
    let disk = fx.standard_disk();
    let doc = |args: &[&str]| -> serde_json::Value { serde_json::from_str(&measurements_stdout(&disk, args)).unwrap() };
    let sha256 = doc(&[]);
    let sha384 = doc(&["--bank", "sha384"]);
    let sha1 = doc(&["--bank", "sha1"]);
    for (json, len) in [(&sha1, 40), (&sha256, 64), (&sha384, 96)] {
        for pcr in [4, 7, 8, 9, 11, 12, 13, 15] {
            assert_eq!(expected(json, pcr).len(), len, "PCR {pcr}");
        }
    }
    assert_eq!(
        expected(&sha256, 7),
        "65caf8dd1e0ea7a6347b635d2b379c93b9a1351edc2afc3ecda700e534eb3068",
        "Secure Boot off: SecureBoot = 0, empty PK, KEK, db, dbx, separator (Debian's OVMF measures this)"
    );
    // The SHA-384 event log replays to its own values.
    let mut bank: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
    for e in sha384["EventLog"]["Events"].as_array().unwrap() {
        use sha2::Digest;
        let pcr = bank.entry(e["PCRIndex"].as_u64().unwrap()).or_insert_with(|| vec![0u8; 48]);
        pcr.extend_from_slice(&unhex(e["Digest"].as_str().unwrap()));
        *pcr = sha2::Sha384::digest(&pcr[..]).to_vec();
    }
    for (pcr, value) in &bank {
        assert_eq!(hex(value), expected(&sha384, *pcr as u32), "SHA-384 event log of PCR {pcr}");
    }

    let kms = doc(&["--format", "aws-kms"]);
    let condition = &kms["StringEqualsIgnoreCase"];
    assert_eq!(condition["kms:RecipientAttestation:NitroTPMPCR4"], expected(&sha384, 4));
    assert_eq!(condition["kms:RecipientAttestation:NitroTPMPCR12"], expected(&sha384, 12));
    assert_eq!(condition.as_object().unwrap().len(), 2);

    let rvps = doc(&["--format", "rvps", "--phase", "enter-initrd:leave-initrd"]);
    assert_eq!((rvps["version"].as_str(), rvps["type"].as_str()), (Some("0.1.0"), Some("sample")));
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD.decode(rvps["payload"].as_str().unwrap()).unwrap();
    let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let with_phases = doc(&["--phase", "enter-initrd:leave-initrd"]);
    for prefix in ["tpm", "snp", "tdx"] {
        assert_eq!(payload[format!("{prefix}_pcr11")], serde_json::json!([expected(&with_phases, 11)]));
        assert_eq!(payload[format!("{prefix}_pcr4")], serde_json::json!([expected(&sha256, 4)]));
        assert_eq!(payload[format!("{prefix}_pcr7")], serde_json::json!([expected(&sha256, 7)]));
    }
    assert_eq!(with_phases["pcr11Phases"]["enter-initrd:leave-initrd"], expected(&with_phases, 11));
    assert_eq!(with_phases["pcr11Phases"], sha256["pcr11Phases"], "the standard paths hold the one asked for");
}

#[test]
fn pcr11_phases_equal_systemd_measure_calculate() {
    let fx = Fixture::new(&Parts::default());
    let (json, _, _) = measurements_json(&fx.standard_disk(), &[]);
    let mut cmd = Command::new("/usr/lib/systemd/systemd-measure");
    cmd.arg("calculate").arg("--bank=sha256").arg("--json=short");
    for (name, path) in &fx.sections {
        cmd.arg(format!("--{}={}", name.trim_start_matches('.'), path.display()));
    }
    let out: serde_json::Value = serde_json::from_slice(&run(&mut cmd).stdout).unwrap();
    let entries = out["sha256"].as_array().unwrap_or_else(|| panic!("{out}"));
    assert_eq!(entries.len(), 4, "systemd-measure's default phase paths: {out}");
    for entry in entries {
        let phase = entry["phase"].as_str().unwrap();
        assert_eq!(json["pcr11Phases"][phase], entry["hash"], "phase {phase}");
    }
    for phase in ["enter-initrd:leave-initrd:sysinit", "ready"] {
        let mut cmd = Command::new("/usr/lib/systemd/systemd-measure");
        cmd.arg("calculate").arg("--bank=sha256").arg("--json=short").arg(format!("--phase={phase}"));
        for (name, path) in &fx.sections {
            cmd.arg(format!("--{}={}", name.trim_start_matches('.'), path.display()));
        }
        let theirs: serde_json::Value = serde_json::from_slice(&run(&mut cmd).stdout).unwrap();
        let (ours, _, _) = measurements_json(&fx.standard_disk(), &["--phase", phase]);
        assert_eq!(theirs["sha256"][0]["hash"], expected(&ours, 11), "--phase={phase}");
        assert_eq!(ours["pcr11Phases"][phase], expected(&ours, 11));
    }
}

#[test]
fn bad_banks_formats_phases_and_key_files_are_exit_2_naming_the_flag() {
    let fx = Fixture::new(&Parts::default());
    let disk = fx.standard_disk();
    let dir = fx.dir.path();
    let garbage = dir.join("garbage.esl");
    std::fs::write(&garbage, b"-----BEGIN CERTIFICATE-----\n").unwrap();
    let missing = dir.join("missing.esl");
    let g = garbage.display().to_string();
    let m = missing.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--bank", "sha512"], "invalid value 'sha512' for '--bank <BANK>'"),
        (vec!["--format", "json"], "invalid value 'json' for '--format <FORMAT>'"),
        (vec!["--format", "nitro", "--bank", "sha256"], "--format nitro with --bank sha256"),
        (vec!["--format", "rvps", "--bank", "sha384"], "--format rvps with --bank sha384"),
        (vec!["--phase", "enter-initrd:Leave"], "--phase \"enter-initrd:Leave\": the word \"Leave\" has 'L'"),
        (vec!["--phase", "enter initrd"], "the word \"enter initrd\" has ' '"),
        (vec!["--phase", "a::b"], "--phase \"a::b\" has an empty word"),
        (vec!["--pk", &m, "--db", &g], "--pk"),
        (vec!["--pk", &g, "--db", &g], "is not an EFI signature list"),
        (vec!["--db", &g], "--db was given without --pk"),
    ];
    for (args, needle) in cases {
        let err = measurement_error(&disk, &args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let err = measurement_error(&disk, &["--pk", &m, "--db", &g]);
    assert!(err.contains(&m), "the missing file is named: {err}");
    let err = measurement_error(&disk, &["--pk", &g, "--db", &g]);
    assert!(err.contains(&g), "the malformed file is named: {err}");
}

#[test]
fn measurements_format_is_checked_with_the_configuration_and_shown_in_the_plan() {
    let ws = support::Workspace::new();
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"podvm\"\nprovider = \"file\"\nmeasurementsFile = \"m.json\"\nmeasurementsFormat = \"yaml\"\n[base.file]\npath = \"x.raw\"\n",
    );
    let err = ws.config_error(&[]);
    assert!(err.contains("measurementsFormat \"yaml\" is not a document uplosi writes"), "{err}");
    assert!(err.contains("uplosi.conf"), "the file is named: {err}");
    ws.write(
        "uplosi.conf",
        "[base]\nname = \"podvm\"\nprovider = \"file\"\nmeasurementsFile = \"m.json\"\nmeasurementsFormat = \"rvps\"\n[base.file]\npath = \"x.raw\"\n",
    );
    let plan = ws.plan_json(&[]);
    assert!(plan["variants"][0]["steps"][0].as_str().unwrap_or_default().ends_with("m.json as rvps"), "{plan}");
}
