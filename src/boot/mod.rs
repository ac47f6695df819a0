//! `uplosi boot-check`: boots the image in a throw-away VM (QEMU, OVMF, a software TPM; [`vm`]) without changing a
//! byte of it, waits until the console says the system came up ([`console`]), reads every PCR extend the TPM
//! received from swtpm's log ([`tpmlog`]) and holds them against the event log `uplosi measurements` computes
//! for this machine ([`compare`]).

pub mod compare;
pub mod console;
pub mod tpmlog;
pub mod vm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use regex::Regex;
use serde::Serialize;
use thiserror::Error;

use crate::cancel::Cancel;
use crate::image::SourceImage;
use crate::measure::digest::Bank;
use crate::measure::pcr::hex;
use crate::measure::{self, Consoles, MeasureError, MeasureOptions, Platform, SecureBootKeys};
use crate::progress::StageLine;
use console::{Console, Verdict};
use vm::{Accel, Vm, VmError, VmEvent, VmSpec};

/// What the boot check does.
#[derive(Clone, Debug)]
pub struct BootCheckOptions {
    /// The UKI picked by hand (as for `uplosi measurements`); `None`: the firmware's boot path.
    pub uki_path: Option<String>,
    /// The bank compared.
    pub bank: Bank,
    /// The Secure Boot keys the firmware's variable store holds (Secure Boot on), if any.
    pub keys: Option<SecureBootKeys>,
    /// `--firmware CODE[:VARS]`.
    pub firmware: Option<String>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// What the console must show for the system to count as up (a regular expression).
    pub expect: String,
    /// How long to wait for it.
    pub timeout: Duration,
    /// Whether to check the measurements (`--no-measure` only boots).
    pub measure: bool,
    /// Where to keep the console output.
    pub serial_log: Option<PathBuf>,
    /// KVM or TCG only; `None`: KVM where it works, TCG otherwise.
    pub accel: Option<Accel>,
}

impl BootCheckOptions {
    /// The defaults of `uplosi boot-check`: the firmware's boot path, SHA-256, Secure Boot off.
    pub fn new() -> Self {
        Self {
            uki_path: None,
            bank: Bank::Sha256,
            keys: None,
            firmware: None,
            memory_mib: 2048,
            cpus: 2,
            expect: console::DEFAULT_EXPECT.to_string(),
            timeout: Duration::from_secs(300),
            measure: true,
            serial_log: None,
            accel: None,
        }
    }
}

/// Why the boot check could not be done (as opposed to a boot that failed, which is a [`BootReport`]).
#[derive(Debug, Error)]
pub enum BootCheckError {
    /// The image's ESP or UKI is not usable.
    #[error(transparent)]
    Measure(#[from] MeasureError),
    /// The VM cannot be set up.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The options are wrong.
    #[error("{0}")]
    Usage(String),
    /// swtpm's log cannot be read.
    #[error("cannot read the TPM log {}: {source}", path.display())]
    TpmLog {
        /// The log.
        path: PathBuf,
        /// What is wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Writing the console log failed.
    #[error("cannot write the console log {}: {source}", path.display())]
    SerialLog {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted; the VM and the software TPM were stopped and their files removed")]
    Interrupted,
}

impl BootCheckError {
    /// Whether the input or the machine's setup is at fault (exit code 2).
    pub fn is_usage(&self) -> bool {
        match self {
            BootCheckError::Measure(e) => e.is_usage(),
            BootCheckError::Vm(VmError::Missing { .. }) | BootCheckError::Usage(_) => true,
            _ => false,
        }
    }
}

/// One PCR in the report.
#[derive(Clone, Debug, Serialize)]
pub struct PcrReport {
    /// The predicted value.
    pub expected: String,
    /// The value the boot produced where user space started.
    pub actual: String,
    /// Whether every predicted event was there.
    #[serde(rename = "match")]
    pub matches: bool,
}

/// An event that differs.
#[derive(Clone, Debug, Serialize)]
pub struct MismatchReport {
    /// The PCR.
    pub pcr: u32,
    /// 1-based position among its events.
    pub position: usize,
    /// The predicted event.
    pub description: Option<String>,
    /// The predicted digest.
    pub expected: Option<String>,
    /// The digest the TPM received.
    pub actual: Option<String>,
}

impl MismatchReport {
    /// The mismatch as a sentence: which event, what was predicted, what the TPM received.
    pub fn sentence(&self) -> String {
        format!(
            "PCR {} event {} ({}): expected {}, the TPM received {}",
            self.pcr,
            self.position,
            self.description.as_deref().unwrap_or("an event uplosi does not predict"),
            self.expected.as_deref().unwrap_or("nothing"),
            self.actual.as_deref().unwrap_or("nothing")
        )
    }
}

/// An extend after the predicted ones.
#[derive(Clone, Debug, Serialize)]
pub struct LaterEventReport {
    /// The PCR.
    pub pcr: u32,
    /// 1-based position among its events.
    pub position: usize,
    /// The digest.
    pub digest: String,
}

impl Default for BootCheckOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// What the boot check found.
#[derive(Clone, Debug, Serialize)]
pub struct BootReport {
    /// The image.
    pub image: String,
    /// `kvm` or `tcg`.
    pub accel: &'static str,
    /// The PCR bank compared (`sha256`).
    pub bank: &'static str,
    /// Seconds from starting the VM to the verdict.
    pub seconds: f64,
    /// Whether the console showed the system came up.
    pub booted: bool,
    /// Per judged PCR (empty with `--no-measure`).
    pub measurements: BTreeMap<u32, PcrReport>,
    /// Events that differ from the prediction.
    pub mismatches: Vec<MismatchReport>,
    /// Extends after the predicted ones (user space), listed, not judged.
    pub later_events: Vec<LaterEventReport>,
    /// The systemd-pcrphase words the boot extended PCR 11 with after the UKI's own events, in order.
    pub phases: Vec<String>,
    /// PCR 11 as the running system holds it: after the UKI's events and the phases (null with --no-measure).
    pub pcr11: Option<String>,
    /// Why the boot failed, if it did.
    pub error: Option<String>,
    /// The console line that says what a boot that did not come up waits on (systemd-firstboot's prompt, an
    /// emergency shell, a failed dependency or mount, a missing device, the last start job), or null.
    #[serde(rename = "waitingOn")]
    pub waiting_on: Option<String>,
    /// Its 1-based line number in the console output, or null.
    #[serde(rename = "waitingOnLine")]
    pub waiting_on_line: Option<usize>,
    /// The last console lines (for the failure message).
    #[serde(skip)]
    pub console_tail: Vec<String>,
    /// Mismatches in PCRs whose value depends on the machine: reported, but they do not fail the check.
    #[serde(skip)]
    pub machine_dependent: Vec<u32>,
    /// Warnings of the measurement model.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl BootReport {
    /// The boot came up and every judged event matched (mismatches in machine-dependent PCRs excepted).
    pub fn passed(&self) -> bool {
        self.booted && self.mismatches.iter().all(|m| self.machine_dependent.contains(&m.pcr))
    }

    /// Why the check failed, in one line; `None` when it passed.
    pub fn failure(&self) -> Option<String> {
        if self.passed() {
            return None;
        }
        let judged = self.mismatches.iter().find(|m| !self.machine_dependent.contains(&m.pcr));
        Some(match (&self.error, judged) {
            (Some(e), _) => e.clone(),
            (None, Some(m)) => m.sentence(),
            (None, None) => "the system did not come up".to_string(),
        })
    }

    /// The human summary for stderr.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let verdict = if self.passed() { "passed" } else { "FAILED" };
        let _ = writeln!(
            out,
            "boot check of {}: {verdict} ({} s under {})",
            self.image,
            self.seconds.round(),
            self.accel.to_uppercase()
        );
        match (&self.error, self.booted) {
            (Some(e), _) => {
                let _ = writeln!(out, "  {e}");
            }
            (None, true) => out.push_str("  the system came up\n"),
            (None, false) => {}
        }
        if !self.measurements.is_empty() {
            let _ = writeln!(out, "  {} bank:", self.bank);
        }
        for (pcr, check) in &self.measurements {
            if check.matches {
                let _ = writeln!(out, "  PCR {pcr:>2}: matches ({})", check.expected);
            } else {
                let _ = writeln!(out, "  PCR {pcr:>2}: DIFFERS (expected {}, got {})", check.expected, check.actual);
            }
        }
        for m in &self.mismatches {
            let dependent =
                if self.machine_dependent.contains(&m.pcr) { " (depends on the machine, not judged)" } else { "" };
            let _ = writeln!(out, "  {}{dependent}", m.sentence());
        }
        if !self.later_events.is_empty() {
            let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
            for e in &self.later_events {
                *counts.entry(e.pcr).or_default() += 1;
            }
            let list: Vec<String> = counts.iter().map(|(pcr, n)| format!("PCR {pcr}: {n}")).collect();
            let _ = writeln!(out, "  later extends from user space (listed, not judged): {}", list.join(", "));
        }
        if !self.phases.is_empty() {
            let _ = writeln!(out, "  systemd-pcrphase extended PCR 11 with: {}", self.phases.join(", "));
        }
        if let Some(pcr11) = &self.pcr11 {
            let _ = writeln!(out, "  PCR 11 of the running system: {pcr11}");
        }
        if !self.passed() && !self.console_tail.is_empty() {
            let _ = writeln!(out, "  the last {} console lines:", self.console_tail.len());
            for line in &self.console_tail {
                let _ = writeln!(out, "    {line}");
            }
        }
        out
    }
}

/// The machine the boot check builds: a 16550 UART at COM1 as the only console, no graphics, no VirtIO console,
/// and Debian's OVMF, which offers no RNG (other `--firmware` may: then the boot secret of stub 261+ is possible).
fn platform(options: &BootCheckOptions) -> Platform {
    Platform {
        rng: if options.firmware.is_none() { Some(false) } else { None },
        consoles: Some(Consoles { serial: Some(0), virtio: false, graphics: false }),
    }
}

/// What ended the wait for the console.
enum Ending {
    Verdict(Verdict),
    Exited(String),
    Timeout,
    Interrupted,
    KvmFailed(String),
}

/// Messages of QEMU that mean KVM does not work on this host (nested hosts: "KVM internal error … emulation
/// failure" in the firmware's first instructions, or an MSR QEMU cannot set).
fn kvm_failure(line: &str) -> bool {
    line.contains("KVM internal error")
        || line.contains("failed to set MSR")
        || line.contains("kvm_")
        || line.contains("Could not access KVM")
}

fn describe(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "KVM",
        Accel::Tcg => "TCG (no KVM)",
    }
}

/// Boots `image` and checks it.
pub fn boot_check(
    image: &SourceImage,
    options: &BootCheckOptions,
    cancel: &Cancel,
) -> Result<BootReport, BootCheckError> {
    let expect = Regex::new(&options.expect).map_err(|e| {
        BootCheckError::Usage(format!("--expect {:?} is not a regular expression: {e}", options.expect))
    })?;
    let format = match image.format_name() {
        "raw" => "raw",
        "qcow2" => "qcow2",
        other => {
            return Err(BootCheckError::Usage(format!(
                "{} is a {other} image; boot-check boots raw and qcow2 images",
                image.path.display()
            )));
        }
    };
    let platform = platform(options);
    let predicted = if options.measure {
        let measure_options = MeasureOptions { uki_path: options.uki_path.clone(), keys: options.keys.clone() };
        let m = measure::measure_image(image, &measure_options, &platform)?;
        if let Some(arch) = m.replay.machine.filter(|&m| m != 0x8664) {
            return Err(BootCheckError::Usage(format!(
                "the UKI in {} is for {} (PE machine {arch:#06x}); boot-check boots only x86_64 images for now",
                image.path.display(),
                match arch {
                    0xaa64 => "aarch64",
                    0x014c => "32-bit x86",
                    0x5064 => "riscv64",
                    _ => "another architecture",
                }
            )));
        }
        for warning in &m.warnings {
            tracing::warn!("{warning}");
        }
        Some(m)
    } else {
        None
    };
    let tools = vm::find_tools(options.firmware.as_deref(), options.bank != Bank::Sha256)?;
    let workdir = tempfile::Builder::new()
        .prefix("uplosi-boot-check.")
        .tempdir()
        .map_err(|source| VmError::Io { what: "creating a temporary directory".into(), source })?;
    let spec = VmSpec {
        tools: &tools,
        image: &image.path,
        format,
        memory_mib: options.memory_mib,
        cpus: options.cpus,
        workdir: workdir.path(),
        bank: options.bank,
        secure_boot: options.keys.is_some(),
    };

    let what = if options.expect == console::DEFAULT_EXPECT {
        "a login prompt or multi-user.target".to_string()
    } else {
        format!("/{}/", options.expect)
    };
    let stage = StageLine::new("boot-check", "boot check");
    let mut accel = options.accel.unwrap_or_else(Accel::preferred);
    let (ending, console, elapsed, mut vm, quiet_at_end) = loop {
        tracing::info!(
            "booting {} under {} ({} MiB, {} CPUs, firmware {})",
            image.path.display(),
            describe(accel),
            options.memory_mib,
            options.cpus,
            tools.code.display()
        );
        stage.set(&format!("booting under {}", describe(accel)));
        let mut vm = Vm::start(&spec, accel)?;
        let mut console = Console::new(expect.clone());
        let started = Instant::now();
        let mut last_note = Instant::now();
        let mut stderr = Vec::new();
        let ending = loop {
            if cancel.is_cancelled() {
                break Ending::Interrupted;
            }
            if started.elapsed() > options.timeout {
                break console.finish().map_or(Ending::Timeout, Ending::Verdict);
            }
            match vm.events.recv_timeout(Duration::from_millis(100)) {
                Ok(VmEvent::Console(bytes)) => {
                    if let Some(verdict) = console.feed(&bytes) {
                        break Ending::Verdict(verdict);
                    }
                }
                Ok(VmEvent::Stderr(line)) => {
                    tracing::debug!("qemu: {line}");
                    if accel == Accel::Kvm && console.is_empty() && kvm_failure(&line) {
                        break Ending::KvmFailed(line);
                    }
                    stderr.push(line);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Some(status) = vm.exited() {
                // Take what is still in the pipes before judging.
                while let Ok(event) = vm.events.recv_timeout(Duration::from_millis(200)) {
                    match event {
                        VmEvent::Console(bytes) => {
                            console.feed(&bytes);
                        }
                        VmEvent::Stderr(line) => stderr.push(line),
                    }
                }
                if let Some(verdict) = console.finish() {
                    break Ending::Verdict(verdict);
                }
                if accel == Accel::Kvm && console.is_empty() {
                    break Ending::KvmFailed(
                        stderr.last().cloned().unwrap_or_else(|| format!("QEMU exited with {status}")),
                    );
                }
                let detail = stderr.last().map(|l| format!(": {l}")).unwrap_or_default();
                break Ending::Exited(format!("the VM stopped ({status}) before the console showed {what}{detail}"));
            }
            let waited = started.elapsed().as_secs();
            stage.set(&format!("waiting for {what} … {waited} s"));
            if last_note.elapsed() >= Duration::from_secs(30) {
                tracing::info!("waiting for {what} … {waited} s");
                last_note = Instant::now();
            }
        };
        if let Ending::KvmFailed(reason) = &ending {
            vm.kill();
            if options.accel == Some(Accel::Kvm) {
                return Err(BootCheckError::Usage(format!(
                    "KVM does not work on this host: {reason}; drop --accel kvm"
                )));
            }
            tracing::warn!("KVM does not work on this host ({reason}); booting again under TCG");
            accel = Accel::Tcg;
            continue;
        }
        let quiet = console.quiet_for();
        vm.stop();
        break (ending, console, started.elapsed(), vm, quiet);
    };
    vm.stop();

    if let Some(path) = &options.serial_log {
        std::fs::write(path, &console.transcript)
            .map_err(|source| BootCheckError::SerialLog { path: path.clone(), source })?;
    }
    let waiting = console.waiting_on();
    let waiting_note = waiting
        .as_ref()
        .map(|w| format!("; the console shows what it waits on at line {}: {:?}", w.line, w.text))
        .unwrap_or_default();
    let (booted, error) = match &ending {
        Ending::Verdict(Verdict::Up(line)) => {
            tracing::info!("the system came up after {:.0} s: {line:?}", elapsed.as_secs_f64());
            (true, None)
        }
        Ending::Verdict(Verdict::Panic(line)) => (false, Some(format!("the kernel panicked: {line}"))),
        Ending::Verdict(Verdict::Emergency(line)) => {
            (false, Some(format!("the system fell into an emergency shell: {line}")))
        }
        Ending::Exited(message) => (false, Some(format!("{message}{waiting_note}"))),
        Ending::Timeout => (
            false,
            Some(format!(
                "timed out after {} s waiting for {what} (the console had been quiet for {} s){waiting_note}",
                options.timeout.as_secs(),
                quiet_at_end.as_secs()
            )),
        ),
        Ending::Interrupted => {
            stage.finish("interrupted");
            return Err(BootCheckError::Interrupted);
        }
        Ending::KvmFailed(_) => unreachable!("handled in the loop"),
    };
    stage.finish(if booted { "the system came up" } else { "the boot failed" });

    let mut report = BootReport {
        image: image.path.display().to_string(),
        accel: accel.name(),
        bank: options.bank.name(),
        seconds: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        booted,
        measurements: BTreeMap::new(),
        mismatches: Vec::new(),
        later_events: Vec::new(),
        phases: Vec::new(),
        pcr11: None,
        error,
        waiting_on: if booted { None } else { waiting.as_ref().map(|w| w.text.clone()) },
        waiting_on_line: if booted { None } else { waiting.as_ref().map(|w| w.line) },
        console_tail: console.tail(),
        machine_dependent: Vec::new(),
        warnings: Vec::new(),
    };
    if let Some(predicted) = predicted {
        let log_path = vm.tpm_log.clone();
        let text = std::fs::read_to_string(&log_path)
            .map_err(|e| BootCheckError::TpmLog { path: log_path.clone(), source: Box::new(e) })?;
        let extends = tpmlog::extends(&text, options.bank)
            .map_err(|e| BootCheckError::TpmLog { path: log_path.clone(), source: Box::new(e) })?;
        let comparison = compare::compare(&predicted.simulator.events, &extends, options.bank);
        report.phases = comparison
            .later
            .iter()
            .filter(|e| e.pcr == 11)
            .map_while(|e| measure::phases::word_of(&e.digest, options.bank))
            .map(str::to_string)
            .collect();
        report.pcr11 = Some(hex(&tpmlog::value(&extends, options.bank, 11, None)));
        for (pcr, check) in comparison.pcrs {
            report.measurements.insert(
                pcr,
                PcrReport { expected: hex(&check.expected), actual: hex(&check.actual), matches: check.matches },
            );
        }
        report.mismatches = comparison
            .mismatches
            .into_iter()
            .map(|m| MismatchReport {
                pcr: m.pcr,
                position: m.position,
                description: m.description,
                expected: m.expected.map(|d| hex(&d)),
                actual: m.actual.map(|d| hex(&d)),
            })
            .collect();
        report.later_events = comparison
            .later
            .into_iter()
            .map(|e| LaterEventReport { pcr: e.pcr, position: e.position, digest: hex(&e.digest) })
            .collect();
        report.machine_dependent = predicted.simulator.machine_dependent.iter().copied().collect();
        report.warnings = predicted.warnings;
        let pcr4 = extends.iter().filter(|e| e.pcr == 4).count();
        tracing::info!("firmware, stub and kernel measured {} events, {pcr4} of them into PCR 4", extends.len());
    }
    drop(workdir);
    Ok(report)
}
