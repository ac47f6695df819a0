//! A real libvirt daemon for the tests: Debian's `libvirtd`, started once per test process on its own socket
//! directory (its QEMU driver needs a `libvirt-qemu` user, which scripts/test.sh creates), reached as
//! `qemu+unix:///system?socket=DIR/libvirt-sock`; each test gets its own `dir` pool in a temporary directory.
//! Read back with `virsh` and `qemu-img`.
//!
//! Faithfulness: it is libvirt itself, the storage driver virsh vol-upload talks to.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The daemon's connection URI.
pub fn uri() -> &'static str {
    static URI: OnceLock<String> = OnceLock::new();
    URI.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("uplosi-libvirtd.").tempdir().expect("dir").keep();
        let sockets = dir.join("run");
        std::fs::create_dir_all(&sockets).expect("socket dir");
        let conf = dir.join("libvirtd.conf");
        std::fs::write(
            &conf,
            format!(
                "unix_sock_dir = \"{}\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\nunix_sock_rw_perms = \"0700\"\n",
                sockets.display()
            ),
        )
        .expect("libvirtd.conf");
        let daemon = ["/usr/sbin/libvirtd", "/sbin/libvirtd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("libvirtd must be installed (apt-get install libvirt-daemon libvirt-daemon-driver-qemu; scripts/test.sh does it)");
        let (pid, log) = (dir.join("libvirtd.pid"), dir.join("libvirtd.log"));
        // The daemon lives as long as this test process: it is started, and waited for, on a thread that never
        // ends, so PR_SET_PDEATHSIG (which fires when the starting thread ends) kills it when the process exits.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new(daemon);
            cmd.arg("-f").arg(&conf).arg("-p").arg(&pid).stdout(Stdio::null());
            cmd.stderr(std::fs::File::create(&log).map(Stdio::from).unwrap_or(Stdio::null()));
            // SAFETY: prctl is async-signal-safe and touches nothing of the parent's memory.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn();
            let _ = tx.send(child.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            if let Ok(mut child) = child {
                let _ = child.wait();
            }
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("daemon thread").expect("libvirtd starts");
        let socket = sockets.join("libvirt-sock");
        super::wait_until("libvirtd's socket", std::time::Duration::from_secs(30), || socket.exists());
        let uri = format!("qemu+unix:///system?socket={}", socket.display());
        super::wait_until("libvirtd answering", std::time::Duration::from_secs(30), || {
            Command::new("virsh").args(["-c", &uri, "version"]).output().is_ok_and(|o| o.status.success())
        });
        uri
    })
}

/// `virsh -c URI ARGS`, expected to succeed; its stdout.
pub fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh").arg("-c").arg(uri()).args(args).output().expect("virsh (libvirt-clients)");
    assert!(out.status.success(), "virsh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `dir` pool of its own, destroyed on drop.
pub struct Pool {
    /// Its name.
    pub name: String,
    /// Its directory.
    pub dir: tempfile::TempDir,
}

impl Pool {
    /// Creates and starts a transient `dir` pool.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("pool dir");
        let name = format!(
            "uplosi-{}",
            dir.path().file_name().map(|n| n.to_string_lossy().replace('.', "")).unwrap_or_default()
        );
        virsh(&["pool-create-as", &name, "dir", "--target", &dir.path().display().to_string()]);
        Pool { name, dir }
    }

    /// The volumes' names, sorted.
    pub fn volumes(&self) -> Vec<String> {
        let _ = Command::new("virsh").args(["-c", uri(), "pool-refresh", &self.name]).output();
        let mut names: Vec<String> = virsh(&["vol-list", &self.name])
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }

    /// `(capacity, allocation)` of a volume in bytes, as libvirt reports them.
    pub fn info(&self, volume: &str) -> (u64, u64) {
        let xml = virsh(&["vol-dumpxml", "--pool", &self.name, volume]);
        let number = |tag: &str| -> u64 {
            xml.split(&format!("<{tag} unit='bytes'>"))
                .nth(1)
                .and_then(|r| r.split('<').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (number("capacity"), number("allocation"))
    }

    /// The `<format type='…'/>` of a volume.
    pub fn format(&self, volume: &str) -> String {
        let xml = virsh(&["vol-dumpxml", "--pool", &self.name, volume]);
        xml.split("<format type='").nth(1).and_then(|r| r.split('\'').next()).unwrap_or_default().to_string()
    }

    /// A volume's path.
    pub fn path(&self, volume: &str) -> PathBuf {
        self.dir.path().join(volume)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = Command::new("virsh").args(["-c", uri(), "pool-destroy", &self.name]).output();
    }
}
