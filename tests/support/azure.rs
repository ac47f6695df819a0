//! Azure for the tests: a real Azurite (npm `azurite`) as the page-blob data plane, reached through the
//! page-checking fault proxy, and `arm.py`, the HTTPS fake of Resource Manager and the Entra ID token endpoint.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::faults::FaultProxy;
use super::glance::TestCa;
use super::moto::{free_port, wait_listening};

/// The tenant the fake token endpoint knows.
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The service principal's client ID.
pub const CLIENT_ID: &str = "0e1c2b3a-4d5e-4f60-8a9b-0c1d2e3f4a5b";
/// Its secret.
pub const CLIENT_SECRET: &str = "Zx8Q~s3cret.Value-For_Tests";
/// The subscription ARM knows.
pub const SUBSCRIPTION: &str = "0a1b2c3d-0000-4000-8000-000000000042";
/// The resource group that exists.
pub const GROUP: &str = "podvm-images";

/// Makes `DIR/NAME.pem`: a self-signed RSA certificate followed by its private key.
pub fn client_certificate(dir: &std::path::Path, name: &str) -> PathBuf {
    let (key, crt) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.crt")));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=uplosi-sp", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pem = dir.join(format!("{name}.pem"));
    let both = [std::fs::read(&crt).expect("crt"), std::fs::read(&key).expect("key")].concat();
    std::fs::write(&pem, both).expect("pem");
    pem
}

/// Variables that would select another credential than the service principal.
const UNSET: [&str; 4] = ["AZURE_TOKEN_CREDENTIALS", "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_ENDPOINT", "MSI_ENDPOINT"];

/// How the fakes behave.
#[derive(Clone, Debug)]
pub struct Options {
    /// Fraction of Put Page requests the proxy faults.
    pub fault_rate: f64,
    /// Which faults (fault_proxy.py names).
    pub faults: &'static str,
    /// Seconds a `delay` fault holds a request.
    pub delay: f64,
    /// Polls an operation stays InProgress.
    pub polls: u32,
    /// Make version creation fail with this message.
    pub fail_version: Option<&'static str>,
    /// `Retry-After` seconds of InProgress answers.
    pub retry_after: u32,
    /// Disks that exist from the start in the group (left over from earlier runs): names.
    pub seed_disks: Vec<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            fault_rate: 0.0,
            faults: "503",
            delay: 1.5,
            polls: 1,
            fail_version: None,
            retry_after: 0,
            seed_disks: Vec::new(),
        }
    }
}

/// Azurite, the proxy and the ARM fake, killed on drop.
pub struct Azure {
    azurite: Child,
    arm: Child,
    /// The proxy uplosi's SAS URLs point at.
    pub proxy: FaultProxy,
    /// The test CA the ARM fake's certificate chains to.
    pub ca: TestCa,
    /// The service principal's client certificate: a PEM with the certificate and its key, as
    /// `AZURE_CLIENT_CERTIFICATE_PATH` takes it.
    pub client_cert: PathBuf,
    state: tempfile::TempDir,
    /// Resource Manager's URL (also the authority host).
    pub arm_url: String,
    /// Azurite's blob endpoint.
    pub blob_url: String,
}

impl Drop for Azure {
    fn drop(&mut self) {
        for child in [&mut self.arm, &mut self.azurite] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Azure {
    /// Starts Azurite, the proxy and the ARM fake.
    pub fn start(options: Options) -> Self {
        let blob_port = free_port();
        let storage = tempfile::tempdir().expect("azurite dir");
        let mut azurite = Command::new("azurite-blob")
            .args(["--blobHost", "127.0.0.1", "--blobPort", &blob_port.to_string()])
            .args(["--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--loose"])
            .current_dir(storage.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("azurite-blob must be installed (npm install -g azurite; scripts/test.sh does it)");
        wait_listening(blob_port, &mut azurite, "azurite-blob");
        let blob_url = format!("http://127.0.0.1:{blob_port}/devstoreaccount1");
        let proxy = FaultProxy::start_azure_pages(
            &format!("http://127.0.0.1:{blob_port}"),
            options.fault_rate,
            7,
            options.faults,
            options.delay,
        );
        let ca = TestCa::new();
        let state = tempfile::tempdir().expect("arm state");
        let client_cert = client_certificate(state.path(), "client");
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/arm.py");
        let mut arm = Command::new("python3");
        arm.arg(script)
            .args(["--port", &port.to_string(), "--cert"])
            .arg(ca.server_cert())
            .arg("--key")
            .arg(ca.server_key())
            .arg("--state")
            .arg(state.path())
            .args(["--azurite", &blob_url, "--sas-base", &format!("{}/devstoreaccount1", proxy.url)])
            .args(["--tenant", TENANT, "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET, "--client-cert"])
            .arg(&client_cert)
            .args(["--subscription", SUBSCRIPTION, "--groups", GROUP, "--polls", &options.polls.to_string()])
            .args(["--retry-after", &options.retry_after.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(message) = options.fail_version {
            arm.args(["--fail-version", message]);
        }
        for disk in &options.seed_disks {
            arm.args(["--seed-disk", disk]);
        }
        let mut arm = arm.spawn().expect("python3");
        wait_listening(port, &mut arm, "arm.py");
        // Azurite keeps its data in memory; the directory only holds its debug files.
        std::mem::forget(storage);
        Azure { azurite, arm, proxy, ca, client_cert, state, arm_url: format!("https://127.0.0.1:{port}"), blob_url }
    }

    /// The environment that points uplosi at the fakes: the service principal, the authority host, the CA.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_TENANT_ID", TENANT.to_string()),
            ("AZURE_CLIENT_ID", CLIENT_ID.to_string()),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET.to_string()),
            ("AZURE_AUTHORITY_HOST", self.arm_url.clone()),
            ("SSL_CERT_FILE", self.ca.ca().display().to_string()),
        ]
    }

    /// Points `cmd` at the fakes ([`Azure::vars`]), with no other credential source in reach.
    pub fn env<'c>(&self, cmd: &'c mut assert_cmd::Command) -> &'c mut assert_cmd::Command {
        super::point_at(cmd, &self.vars(), &UNSET)
    }

    /// [`Azure::env`] for a `std::process::Command`.
    pub fn std_env<'c>(&self, cmd: &'c mut std::process::Command) -> &'c mut std::process::Command {
        super::point_at(cmd, &self.vars(), &UNSET)
    }

    /// Every ARM request so far (method, path, query, status, body).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        super::read_jsonl(&self.state.path().join("requests.jsonl"))
    }

    /// The requests with `method` whose path ends with `suffix` (case-insensitive).
    pub fn calls(&self, method: &str, suffix: &str) -> Vec<serde_json::Value> {
        let suffix = suffix.to_lowercase();
        self.requests()
            .into_iter()
            .filter(|r| {
                r["method"] == method && r["path"].as_str().is_some_and(|p| p.to_lowercase().ends_with(&suffix))
            })
            .collect()
    }

    /// The disk content the fake read back when version `name` was created.
    pub fn version_vhd(&self, name: &str) -> PathBuf {
        self.state.path().join("versions").join(format!("{name}.vhd"))
    }

    /// The page ranges `[start, end]` (inclusive) the disk had when version `name` was created.
    pub fn version_ranges(&self, name: &str) -> Vec<(u64, u64)> {
        let text = std::fs::read_to_string(self.state.path().join("versions").join(format!("{name}.ranges.json")))
            .expect("ranges");
        let ranges: Vec<(u64, u64)> = serde_json::from_str(&text).expect("ranges JSON");
        ranges
    }

    /// The blobs left in Azurite's `disks` container.
    pub fn blobs(&self) -> Vec<String> {
        let script = format!(
            "from azure.core.exceptions import ResourceNotFoundError\n\
             from azure.storage.blob import ContainerClient\n\
             c = ContainerClient.from_connection_string('DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
             AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
             BlobEndpoint={};', 'disks')\n\
             try:\n    names = [b.name for b in c.list_blobs()]\nexcept ResourceNotFoundError:\n    names = []\n\
             print('\\n'.join(names))\n",
            self.blob_url
        );
        let out = Command::new("python3").args(["-c", &script]).output().expect("python3");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
    }
}

impl super::Fake for Azure {
    fn vars(&self) -> Vec<(&'static str, String)> {
        Azure::vars(self)
    }

    fn unset(&self) -> &'static [&'static str] {
        &UNSET
    }
}
