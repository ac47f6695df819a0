//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod azure;
pub mod boot;
pub mod faults;
pub mod fixtures;
pub mod gcp;
pub mod glance;
pub mod libvirt;
pub mod moto;
pub mod registry;
pub mod uki;

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// A temporary config directory with an image file, removed on drop.
pub struct Workspace {
    /// The directory.
    pub dir: tempfile::TempDir,
}

impl Workspace {
    /// An empty workspace with a small sparse `system.raw`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = std::fs::File::create(dir.path().join("system.raw")).expect("image");
        image.set_len(64 << 20).expect("set_len");
        Self { dir }
    }

    /// A workspace with `conf` as uplosi.conf, `version.txt` at 1.2.3, and `image` linked as `system.raw`.
    pub fn with_image(conf: &str, image: &Path) -> Self {
        let ws = Self::new();
        ws.write("uplosi.conf", conf).write("version.txt", "1.2.3\n");
        ws.link_image("system.raw", image);
        ws
    }

    /// Moves `raw` into the workspace (so it lives as long as the workspace) and links it as `system.raw`; returns
    /// its new path.
    pub fn adopt_image(&self, raw: &Path) -> PathBuf {
        let kept = self.path().join("disk.raw");
        std::fs::rename(raw, &kept).expect("move image");
        self.link_image("system.raw", &kept);
        kept
    }

    /// Replaces the default `system.raw` with a link named `name` to `image`.
    pub fn link_image(&self, name: &str, image: &Path) {
        std::fs::remove_file(self.image()).expect("remove default image");
        std::os::unix::fs::symlink(image, self.path().join(name)).expect("link image");
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The image's path.
    pub fn image(&self) -> PathBuf {
        self.path().join("system.raw")
    }

    /// Writes a file relative to the workspace, creating directories.
    pub fn write(&self, rel: &str, content: &str) -> &Self {
        let path = self.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write");
        self
    }

    /// Reads a file relative to the workspace.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).expect("read")
    }

    /// `uplosi` with the workspace as current directory.
    pub fn uplosi(&self) -> Command {
        let mut cmd = Command::cargo_bin("uplosi").expect("binary");
        cmd.current_dir(self.path());
        cmd.env_remove("RUST_LOG").env_remove("OS_CLOUD");
        cmd
    }

    /// Runs `uplosi upload system.raw --dry-run ARGS`, expects the configuration error exit code 2 with nothing on
    /// stdout, and returns stderr.
    pub fn config_error(&self, extra: &[&str]) -> String {
        let out = self.uplosi().args(["upload", "system.raw", "--dry-run"]).args(extra).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "expected exit code 2, stderr:\n{stderr}");
        assert!(out.stdout.is_empty(), "nothing may be printed on stdout on error");
        stderr
    }

    /// Runs `uplosi upload system.raw --dry-run --output json ARGS` and parses stdout.
    pub fn plan_json(&self, extra: &[&str]) -> serde_json::Value {
        let out = self
            .uplosi()
            .args(["upload", "system.raw", "--dry-run", "--output", "json"])
            .args(extra)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "uplosi failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
    }
}

/// Finds the plan entry of `variant` in a dry-run JSON document.
pub fn variant<'a>(plan: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    plan["variants"]
        .as_array()
        .expect("variants array")
        .iter()
        .find(|v| v["variant"] == name)
        .unwrap_or_else(|| panic!("variant {name} not in plan: {plan}"))
}

/// Sends SIGINT to a child process, as Ctrl-C would.
pub fn interrupt(child: &std::process::Child) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0, "kill failed");
}

/// Polls `ready` every 20 ms until it holds, failing the test with `what` after `limit`.
pub fn wait_until(what: &str, limit: std::time::Duration, mut ready: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "{what} did not happen within {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A command the tests run uplosi with: `assert_cmd::Command` or `std::process::Command`.
pub trait EnvCommand {
    /// Sets variable `key`.
    fn set_var(&mut self, key: &str, value: &str);
    /// Removes variable `key`.
    fn unset_var(&mut self, key: &str);
}

impl EnvCommand for assert_cmd::Command {
    fn set_var(&mut self, key: &str, value: &str) {
        self.env(key, value);
    }
    fn unset_var(&mut self, key: &str) {
        self.env_remove(key);
    }
}

impl EnvCommand for std::process::Command {
    fn set_var(&mut self, key: &str, value: &str) {
        self.env(key, value);
    }
    fn unset_var(&mut self, key: &str) {
        self.env_remove(key);
    }
}

/// Sets `vars` on `cmd` and removes `unset`: how a fake points uplosi at itself and nothing else.
pub fn point_at<'c, C: EnvCommand>(cmd: &'c mut C, vars: &[(&'static str, String)], unset: &[&str]) -> &'c mut C {
    for (key, value) in vars {
        cmd.set_var(key, value);
    }
    for key in unset {
        cmd.unset_var(key);
    }
    cmd
}

/// The records of a JSON-lines file the fakes append to (an absent file has none).
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// A fake cloud the tests point uplosi at through its environment.
pub trait Fake {
    /// The variables that point uplosi at the fake.
    fn vars(&self) -> Vec<(&'static str, String)>;
    /// The variables that would point it elsewhere.
    fn unset(&self) -> &'static [&'static str];
}

/// `uplosi upload system.raw ARGS` in `ws`, pointed at `fake`.
pub fn upload_to(fake: &impl Fake, ws: &Workspace, args: &[&str]) -> std::process::Output {
    let mut cmd = ws.uplosi();
    point_at(&mut cmd, &fake.vars(), fake.unset());
    cmd.args(["upload", "system.raw"]).args(args).timeout(std::time::Duration::from_secs(300)).output().expect("run")
}

/// `uplosi -i system.raw` in `ws` in the background, pointed at `fake`, as a release step runs it, to be
/// interrupted.
pub fn spawn_release(fake: &impl Fake, ws: &Workspace) -> std::process::Child {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("uplosi"));
    point_at(&mut cmd, &fake.vars(), fake.unset())
        .current_dir(ws.path())
        .env_remove("RUST_LOG")
        .args(["-i", "system.raw"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().expect("spawn")
}
