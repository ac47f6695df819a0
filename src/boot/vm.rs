//! The throw-away VM of the boot check: QEMU (q35, OVMF, the image as the only disk with its writes going to a
//! temporary overlay QEMU deletes itself, no network device, the serial console on a pipe) and a fresh software
//! TPM (`swtpm socket --tpm2`) that logs every command.
//!
//! Both processes run in their own process group, so a Ctrl-C on the terminal reaches uplosi only, and are killed
//! with uplosi (PR_SET_PDEATHSIG), so none is ever left behind.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Where Debian's `ovmf` package puts the 4 MiB firmware pair.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The variable store template that goes with [`OVMF_CODE`]; the VM gets a fresh copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Why the VM cannot be set up or started.
#[derive(Debug, Error)]
pub enum VmError {
    /// A program or file the boot check needs is not there.
    #[error("{what} not found{}; install the Debian packages qemu-system-x86, ovmf, swtpm and swtpm-tools (apt-get install qemu-system-x86 ovmf swtpm swtpm-tools){}", if searched.is_empty() { String::new() } else { format!(" (looked for {searched})") }, hint.as_deref().map(|h| format!(", or {h}")).unwrap_or_default())]
    Missing {
        /// What is missing.
        what: String,
        /// Where it was looked for.
        searched: String,
        /// Another way out.
        hint: Option<String>,
    },
    /// Starting a process or preparing its files failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// swtpm did not come up.
    #[error("swtpm did not open its socket within 10 s{}", if log.is_empty() { String::new() } else { format!(": {log}") })]
    SwtpmStart {
        /// What it printed.
        log: String,
    },
    /// swtpm_setup could not allocate the PCR banks.
    #[error("swtpm_setup could not allocate the PCR banks {banks}: {log}")]
    SwtpmSetup {
        /// The banks asked for.
        banks: String,
        /// What it printed.
        log: String,
    },
}

impl VmError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| VmError::Io { what, source }
    }
}

/// The programs and firmware files the VM uses.
#[derive(Clone, Debug)]
pub struct Tools {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// `swtpm`.
    pub swtpm: PathBuf,
    /// `swtpm_setup`, when a bank other than swtpm's default allocation is asked for.
    pub swtpm_setup: Option<PathBuf>,
    /// The firmware code (read-only pflash).
    pub code: PathBuf,
    /// The variable store template.
    pub vars: PathBuf,
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Finds QEMU, swtpm (and `swtpm_setup` when `setup`) and the firmware; `firmware` is `--firmware CODE[:VARS]`.
pub fn find_tools(firmware: Option<&str>, setup: bool) -> Result<Tools, VmError> {
    let program = |name: &str| {
        on_path(name).ok_or_else(|| VmError::Missing {
            what: format!("`{name}`"),
            searched: "on PATH".into(),
            hint: None,
        })
    };
    let qemu = program("qemu-system-x86_64")?;
    let swtpm = program("swtpm")?;
    let swtpm_setup = if setup { Some(program("swtpm_setup")?) } else { None };
    let (code, vars) = match firmware {
        Some(spec) => match spec.split_once(':') {
            Some((code, vars)) => (PathBuf::from(code), PathBuf::from(vars)),
            None => (PathBuf::from(spec), PathBuf::from(OVMF_VARS)),
        },
        None => (PathBuf::from(OVMF_CODE), PathBuf::from(OVMF_VARS)),
    };
    for (what, file) in [("the firmware code", &code), ("the firmware variable store", &vars)] {
        if !file.is_file() {
            return Err(VmError::Missing {
                what: format!("{what} {}", file.display()),
                searched: String::new(),
                hint: Some("name other firmware files with --firmware CODE[:VARS]".into()),
            });
        }
    }
    Ok(Tools { qemu, swtpm, swtpm_setup, code, vars })
}

/// How QEMU runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's own CPU emulation.
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// KVM where `/dev/kvm` opens, TCG otherwise.
    pub fn preferred() -> Self {
        let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        if kvm { Accel::Kvm } else { Accel::Tcg }
    }
}

/// What the VM is made of.
#[derive(Clone, Debug)]
pub struct VmSpec<'a> {
    /// The programs.
    pub tools: &'a Tools,
    /// The disk image.
    pub image: &'a Path,
    /// `raw` or `qcow2`.
    pub format: &'a str,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Directory for the TPM state, its log, the socket and the variable store.
    pub workdir: &'a Path,
    /// The PCR bank that must be allocated besides SHA-256.
    pub bank: crate::measure::digest::Bank,
    /// Whether the firmware enforces Secure Boot (OVMF's `secboot` builds, which need SMM).
    pub secure_boot: bool,
}

impl VmSpec<'_> {
    /// Whether QEMU runs the firmware with SMM and a flash only SMM may write: what OVMF's Secure Boot builds
    /// (`OVMF_CODE_4M.secboot.fd`, `.ms.fd`) need, and what protects their variable store.
    fn smm(&self) -> bool {
        let name = self.tools.code.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.secure_boot || name.contains(".secboot.") || name.contains(".ms.")
    }
}

/// Something the VM did.
#[derive(Debug)]
pub enum VmEvent {
    /// Serial console output.
    Console(Vec<u8>),
    /// A line QEMU printed on stderr.
    Stderr(String),
}

/// A running VM.
pub struct Vm {
    qemu: Child,
    swtpm: Child,
    /// Console output and QEMU's messages, as they come.
    pub events: Receiver<VmEvent>,
    /// swtpm's log of every TPM command.
    pub tpm_log: PathBuf,
}

/// Makes `command` a child that dies with uplosi and is not in the terminal's process group.
fn contain(command: &mut Command) {
    command.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's memory.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn forward<R: Read + Send + 'static>(mut from: R, to: Sender<VmEvent>, console: bool) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut line = Vec::new();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if console {
                if to.send(VmEvent::Console(buf[..n].to_vec())).is_err() {
                    break;
                }
                continue;
            }
            for &b in &buf[..n] {
                if b == b'\n' {
                    let text = String::from_utf8_lossy(&std::mem::take(&mut line)).into_owned();
                    if to.send(VmEvent::Stderr(text)).is_err() {
                        return;
                    }
                } else {
                    line.push(b);
                }
            }
        }
        if !line.is_empty() {
            let _ = to.send(VmEvent::Stderr(String::from_utf8_lossy(&line).into_owned()));
        }
    });
}

impl Vm {
    /// Starts swtpm, then QEMU under `accel`. Must be called from a thread that lives as long as the VM: the
    /// children are killed when the thread that started them ends.
    pub fn start(spec: &VmSpec<'_>, accel: Accel) -> Result<Vm, VmError> {
        let state = spec.workdir.join(format!("tpm-{}", accel.name()));
        std::fs::create_dir_all(&state).map_err(VmError::io(format!("creating {}", state.display())))?;
        let socket = state.join("swtpm.sock");
        let tpm_log = state.join("swtpm.log");
        let vars = state.join("OVMF_VARS.fd");
        std::fs::copy(&spec.tools.vars, &vars).map_err(VmError::io(format!(
            "copying {} to {}",
            spec.tools.vars.display(),
            vars.display()
        )))?;

        // Allocate the bank asked for (with SHA-256, which the model of user space needs anyway); without this swtpm
        // starts with its built-in allocation.
        if let Some(setup) = &spec.tools.swtpm_setup {
            let banks = if spec.bank == crate::measure::digest::Bank::Sha256 {
                "sha256".to_string()
            } else {
                format!("sha256,{}", spec.bank.name())
            };
            let out = Command::new(setup)
                .args(["--tpm2", "--overwrite", "--pcr-banks", &banks, "--tpmstate"])
                .arg(&state)
                .stdin(Stdio::null())
                .output()
                .map_err(VmError::io(format!("starting {}", setup.display())))?;
            if !out.status.success() {
                let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(VmError::SwtpmSetup { banks, log: text });
            }
        }
        let mut swtpm = Command::new(&spec.tools.swtpm);
        swtpm
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--log")
            .arg(format!("file={},level=20", tpm_log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        contain(&mut swtpm);
        let mut swtpm = swtpm.spawn().map_err(VmError::io(format!("starting {}", spec.tools.swtpm.display())))?;
        let started = Instant::now();
        while !socket.exists() {
            if started.elapsed() > Duration::from_secs(10) || matches!(swtpm.try_wait(), Ok(Some(_))) {
                let _ = swtpm.kill();
                let mut log = String::new();
                if let Some(mut err) = swtpm.stderr.take() {
                    let _ = err.read_to_string(&mut log);
                }
                let _ = swtpm.wait();
                return Err(VmError::SwtpmStart { log: log.trim().to_string() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        let mut qemu = Command::new(&spec.tools.qemu);
        let machine = if spec.smm() { "q35,smm=on" } else { "q35" };
        qemu.args(["-nodefaults", "-no-user-config", "-machine", machine, "-display", "none", "-monitor", "none"]);
        if spec.smm() {
            qemu.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
        }
        qemu.args(["-serial", "stdio", "-no-reboot"]);
        match accel {
            Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => qemu.args(["-accel", "tcg", "-cpu", "max"]),
        };
        qemu.arg("-m").arg(spec.memory_mib.to_string()).arg("-smp").arg(spec.cpus.to_string());
        qemu.arg("-drive").arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", spec.tools.code.display()));
        qemu.arg("-drive").arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
        // snapshot=on: writes go to a temporary overlay that QEMU unlinks as soon as it has created it.
        qemu.arg("-drive").arg(format!(
            "file={},format={},if=none,id=disk0,snapshot=on",
            spec.image.display().to_string().replace(',', ",,"),
            spec.format
        ));
        qemu.args(["-device", "virtio-blk-pci,drive=disk0,bootindex=0"]);
        qemu.arg("-chardev").arg(format!("socket,id=chrtpm,path={}", socket.display()));
        qemu.args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]);
        qemu.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        contain(&mut qemu);
        tracing::debug!("starting {:?}", qemu);
        let mut qemu = match qemu.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = swtpm.kill();
                let _ = swtpm.wait();
                return Err(VmError::Io { what: format!("starting {}", spec.tools.qemu.display()), source: e });
            }
        };
        let (tx, events) = channel();
        if let Some(out) = qemu.stdout.take() {
            forward(out, tx.clone(), true);
        }
        if let Some(err) = qemu.stderr.take() {
            forward(err, tx, false);
        }
        Ok(Vm { qemu, swtpm, events, tpm_log })
    }

    /// QEMU's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.qemu.try_wait().ok().flatten()
    }

    /// Kills QEMU and swtpm at once (KVM failed: nothing of this attempt is used).
    pub fn kill(&mut self) {
        for child in [&mut self.qemu, &mut self.swtpm] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops QEMU (and so the TPM), waiting for swtpm to write the end of its log.
    pub fn stop(&mut self) {
        if self.exited().is_none() {
            // SIGTERM lets QEMU close the TPM channel in order; SIGKILL if it does not go.
            // SAFETY: kill() with the pid of our own child.
            unsafe { libc::kill(self.qemu.id() as i32, libc::SIGTERM) };
            let started = Instant::now();
            while self.exited().is_none() && started.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.qemu.kill();
            let _ = self.qemu.wait();
        }
        let started = Instant::now();
        while matches!(self.swtpm.try_wait(), Ok(None)) && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.swtpm.kill();
        let _ = self.swtpm.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}
