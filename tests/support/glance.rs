//! A real glance-api (Debian's `glance-api` package) on 127.0.0.1, and the Keystone fake in front of it.
//!
//! The configuration is `tests/support/glance/glance-api.conf`, `glance-api-paste.ini` and `policy.yaml`, documented there: sqlite, the
//! file store, no auth. The database schema is made once per test binary with `glance-manage db_sync` and copied
//! for each server, which saves seconds per test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::moto::{free_port, wait_listening};

const CONF: &str = include_str!("glance/glance-api.conf");
const POLICY: &str = include_str!("glance/policy.yaml");
const PASTE: &str = include_str!("glance/glance-api-paste.ini");

/// A glance-api process with its own database and store, killed on drop.
pub struct Glance {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Its port.
    pub port: u16,
    /// Its root URL (no version).
    pub url: String,
}

fn write_config(dir: &Path, port: u16, size_cap: u64) -> PathBuf {
    let conf = CONF
        .replace("@DIR@", &dir.display().to_string())
        .replace("@PORT@", &port.to_string())
        .replace("@SIZE_CAP@", &size_cap.to_string());
    let path = dir.join("glance-api.conf");
    std::fs::write(&path, conf).expect("write glance-api.conf");
    std::fs::write(dir.join("policy.yaml"), POLICY).expect("write policy.yaml");
    std::fs::write(dir.join("glance-api-paste.ini"), PASTE).expect("write glance-api-paste.ini");
    std::fs::create_dir_all(dir.join("images")).expect("store dir");
    std::fs::create_dir_all(dir.join("lock")).expect("lock dir");
    path
}

/// An empty, migrated database, made once.
fn template_db() -> &'static Path {
    static DB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DB.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = write_config(dir.path(), 9, 1 << 40);
        let out = Command::new("glance-manage")
            .arg("--config-file")
            .arg(&conf)
            .arg("db_sync")
            .output()
            .expect("glance-manage must be installed (apt-get install glance-api; scripts/test.sh does it)");
        assert!(out.status.success(), "glance-manage db_sync failed: {}", String::from_utf8_lossy(&out.stderr));
        let db = dir.path().join("glance.sqlite");
        (dir, db)
    });
    path
}

impl Glance {
    /// Starts a glance-api accepting images up to `size_cap` bytes.
    pub fn start_with_cap(size_cap: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        write_config(dir.path(), port, size_cap);
        std::fs::copy(template_db(), dir.path().join("glance.sqlite")).expect("copy the database");
        let mut glance = Glance { child: None, dir, port, url: format!("http://127.0.0.1:{port}") };
        glance.restart();
        glance
    }

    /// Starts a glance-api with the default (1 TiB) image size cap.
    pub fn start() -> Self {
        Self::start_with_cap(1 << 40)
    }

    /// Kills the process (as a crash would: no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port, database and store.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::File::create(self.dir.path().join("stderr.log")).expect("log file");
        let mut child = Command::new("glance-api")
            .arg("--config-file")
            .arg(self.dir.path().join("glance-api.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("glance-api must be installed (apt-get install glance-api; scripts/test.sh does it)");
        wait_listening(self.port, &mut child, "glance-api");
        self.child = Some(child);
        // Listening comes a moment before the WSGI app answers.
        let started = Instant::now();
        while self.images().is_err() {
            assert!(started.elapsed() < Duration::from_secs(60), "glance-api does not answer: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// glance-api's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("glance-api.log")).unwrap_or_default()
    }

    /// Every image record, hidden ones included.
    pub fn images(&self) -> Result<Vec<serde_json::Value>, String> {
        let mut all = Vec::new();
        for hidden in ["false", "true"] {
            let body = curl(&["-fsS", &format!("{}/v2/images?os_hidden={hidden}&limit=1000", self.url)])?;
            let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            all.extend(json["images"].as_array().cloned().unwrap_or_default());
        }
        Ok(all)
    }

    /// One image record.
    pub fn image(&self, id: &str) -> serde_json::Value {
        let body = curl(&["-fsS", &format!("{}/v2/images/{id}", self.url)]).expect("get image");
        serde_json::from_slice(&body).expect("image JSON")
    }

    /// Downloads an image's data to `to`.
    pub fn download(&self, id: &str, to: &Path) {
        curl(&["-fsS", "-o", &to.display().to_string(), &format!("{}/v2/images/{id}/file", self.url)])
            .expect("download");
    }

    /// Applies a JSON patch to an image.
    pub fn patch(&self, id: &str, ops: &str) {
        curl(&[
            "-fsS",
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/openstack-images-v2.1-json-patch",
            "-d",
            ops,
            &format!("{}/v2/images/{id}", self.url),
        ])
        .expect("patch");
    }

    /// Creates an image record from `body` (JSON); returns it.
    pub fn create(&self, body: &str) -> serde_json::Value {
        let out = curl(&[
            "-fsS",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            &format!("{}/v2/images", self.url),
        ])
        .expect("create image");
        serde_json::from_slice(&out).expect("image JSON")
    }

    /// Files in the store (data of images, complete or partial).
    pub fn stored_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("images")).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Glance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn curl(args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("curl").args(args).output().map_err(|e| format!("curl: {e}"))?;
    if out.status.success() { Ok(out.stdout) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// The Keystone fake (`keystone.py`) in front of a glance-api.
pub struct Keystone {
    child: Child,
    stats: tempfile::NamedTempFile,
    /// Its URL (Keystone's auth_url is `URL/v3`).
    pub url: String,
}

/// The fake's fixed identities (see keystone.py).
pub const USER: &str = "ci";
/// The user's password.
pub const PASSWORD: &str = "s3cret-pw";
/// The application credential.
pub const APP_CRED_ID: &str = "ac-9999";
/// Its secret.
pub const APP_CRED_SECRET: &str = "app-s3cret";
/// The project tokens are scoped to.
pub const PROJECT: &str = "images";

/// A test CA and a server certificate for 127.0.0.1 it signed (made with the openssl CLI).
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    /// Makes the CA and the server certificate.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").current_dir(dir.path()).args(args).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=uplosi test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        TestCa { dir }
    }

    /// The CA certificate (PEM), to trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate for 127.0.0.1 (PEM).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server certificate's private key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

impl Keystone {
    /// Starts the fake in front of `glance`, holding each forwarded MiB of request bodies `delay` seconds.
    pub fn start(glance: &Glance, delay: f64) -> Self {
        Self::spawn(glance, delay, None)
    }

    /// Starts the fake over HTTPS with a certificate `ca` signed.
    pub fn start_tls(glance: &Glance, ca: &TestCa) -> Self {
        Self::spawn(glance, 0.0, Some(ca))
    }

    fn spawn(glance: &Glance, delay: f64, ca: Option<&TestCa>) -> Self {
        let stats = tempfile::NamedTempFile::new().expect("stats file");
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/keystone.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--upstream", &glance.url, "--delay", &delay.to_string(), "--stats"])
            .arg(stats.path())
            .args(
                ca.map(|ca| {
                    let dir = ca.dir.path();
                    vec![
                        "--cert".into(),
                        dir.join("server.pem").into_os_string(),
                        "--key".into(),
                        dir.join("server.key").into_os_string(),
                    ]
                })
                .unwrap_or_default(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        wait_listening(port, &mut child, "keystone.py");
        let scheme = if ca.is_some() { "https" } else { "http" };
        Keystone { child, stats, url: format!("{scheme}://127.0.0.1:{port}") }
    }

    /// Tokens issued per method, rejected logins, forwarded and unauthorised requests.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.stats.path()).expect("stats")).expect("stats JSON")
    }
}

impl Drop for Keystone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `uplosi` in `dir`, reading only the clouds.yaml there (no user's configuration, no `OS_CLOUD`).
pub fn uplosi_in(dir: &Path) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("uplosi"));
    cmd.current_dir(dir)
        .env("OS_CLIENT_CONFIG_FILE", dir.join("clouds.yaml"))
        .env("HOME", dir)
        .env_remove("OS_CLOUD")
        .env_remove("RUST_LOG");
    cmd
}

/// Writes a clouds.yaml in `dir` whose cloud `test` is the image service at `url` without auth, and returns
/// [`uplosi_in`] `dir`.
pub fn uplosi_noauth(dir: &Path, url: &str) -> Command {
    let clouds = format!("clouds:\n  test:\n    auth_type: none\n    image_endpoint_override: {url}/v2\n");
    std::fs::write(dir.join("clouds.yaml"), clouds).expect("clouds.yaml");
    uplosi_in(dir)
}
