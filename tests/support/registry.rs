//! A real OCI registry for the tests: Debian's `docker-registry` (the CNCF distribution registry 2.8) on
//! 127.0.0.1, with its filesystem storage in a temporary directory; plain or TLS (a test CA), open, with htpasswd
//! basic auth, or with token auth through `registry_token.py`; deletes on or off. Read back with `skopeo`.
//!
//! Faithfulness: it is the registry itself. It stores OCI 1.1 manifests with `artifactType` and `subject` but has
//! no referrers API, so clients use the `sha256-<hex>` tag index, as they must with most registries today.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use base64::Engine;

use super::glance::TestCa;
use super::moto::{free_port, wait_listening};

/// The user of the registries with authentication.
pub const USER: &str = "tester";
/// Its password.
pub const PASSWORD: &str = "s3cret-pw";
/// The identity (refresh) token the token server accepts.
pub const REFRESH_TOKEN: &str = "refresh-me";

/// How a registry is set up.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Serve HTTPS with a certificate of a test CA.
    pub tls: bool,
    /// htpasswd basic authentication.
    pub basic: bool,
    /// Token authentication through the token server.
    pub token: bool,
    /// Refuse deletes (`storage.delete.enabled: false`).
    pub no_delete: bool,
}

/// A running registry, stopped on drop.
pub struct Registry {
    child: Child,
    token_server: Option<Child>,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// The test CA, with TLS.
    pub ca: Option<TestCa>,
    /// How it was set up.
    pub options: Options,
}

impl Drop for Registry {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(self.token_server.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

impl Registry {
    /// Starts a registry set up as `options` say.
    pub fn start(options: Options) -> Self {
        let dir = tempfile::tempdir().expect("registry directory");
        let port = free_port();
        let ca = options.tls.then(TestCa::new);
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display(),
            !options.no_delete
        );
        if let Some(ca) = &ca {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                ca.server_cert().display(),
                ca.server_key().display()
            ));
        }
        let mut token_server = None;
        if options.basic {
            let out = run(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
            std::fs::write(dir.path().join("htpasswd"), out.stdout).expect("htpasswd file");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: uplosi-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        } else if options.token {
            let (key, cert) = (dir.path().join("token.key"), dir.path().join("token.pem"));
            run(Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=uplosi test token"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert));
            let token_port = free_port();
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/registry_token.py");
            let mut child = Command::new("python3")
                .arg(script)
                .args(["--port", &token_port.to_string(), "--issuer", "uplosi-test-issuer"])
                .args(["--service", "uplosi-test-registry", "--user", USER, "--password", PASSWORD])
                .args(["--refresh-token", REFRESH_TOKEN])
                .arg("--key")
                .arg(&key)
                .arg("--cert")
                .arg(&cert)
                .arg("--stats")
                .arg(dir.path().join("token-stats.json"))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("python3");
            wait_listening(token_port, &mut child, "registry_token.py");
            token_server = Some(child);
            config.push_str(&format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: uplosi-test-registry\n    issuer: uplosi-test-issuer\n    rootcertbundle: {}\n",
                cert.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry must be installed (apt-get install docker-registry; scripts/test.sh does it)");
        wait_listening(port, &mut child, "docker-registry");
        Registry { child, token_server, dir, host: format!("127.0.0.1:{port}"), ca, options }
    }

    /// Requests the token server answered so far: `{"basic", "refresh", "anonymous", "refused"}`.
    pub fn token_stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.path().join("token-stats.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    /// A docker `config.json` with the credentials of this registry, in a fresh directory (for `DOCKER_CONFIG`).
    pub fn docker_config(&self, identity_token: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("docker config dir");
        let entry = if identity_token {
            serde_json::json!({ "identitytoken": REFRESH_TOKEN })
        } else {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
            serde_json::json!({ "auth": auth })
        };
        let config = serde_json::json!({ "auths": { format!("https://{}", self.host): entry } });
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config.json");
        dir
    }

    /// The `skopeo` TLS and credential flags for reading from this registry.
    fn skopeo_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        match &self.ca {
            Some(ca) => {
                let certs = self.dir.path().join("skopeo-certs");
                std::fs::create_dir_all(&certs).expect("cert dir");
                std::fs::copy(ca.ca(), certs.join("ca.crt")).expect("ca.crt");
                flags.push(format!("--cert-dir={}", certs.display()));
            }
            None => flags.push("--tls-verify=false".into()),
        }
        if self.options.basic || self.options.token {
            flags.push(format!("--creds={USER}:{PASSWORD}"));
        }
        flags
    }

    /// `skopeo inspect --raw docker://HOST/REPO:REF`: the manifest as stored, or `None` when there is none.
    pub fn raw_manifest(&self, reference: &str) -> Option<Vec<u8>> {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .args(self.skopeo_flags())
            .arg(format!("docker://{}/{reference}", self.host))
            .output()
            .expect("skopeo must be installed (apt-get install skopeo; scripts/test.sh does it)");
        out.status.success().then_some(out.stdout)
    }

    /// `skopeo copy docker://HOST/REPO:REF dir:OUT`: the manifest and every blob, as files named by digest.
    pub fn copy_to_dir(&self, reference: &str, out: &Path) {
        let mut flags = self.skopeo_flags();
        for flag in &mut flags {
            *flag = flag.replacen("--", "--src-", 1);
        }
        run(Command::new("skopeo")
            .args(["copy", "--quiet"])
            .args(flags)
            .arg(format!("docker://{}/{reference}", self.host))
            .arg(format!("dir:{}", out.display())));
    }

    /// The tags of `repository`, sorted.
    pub fn tags(&self, repository: &str) -> Vec<String> {
        let out = Command::new("skopeo")
            .args(["list-tags"])
            .args(self.skopeo_flags())
            .arg(format!("docker://{}/{repository}", self.host))
            .output()
            .expect("skopeo");
        let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut tags: Vec<String> =
            parsed["Tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_string)).collect();
        tags.sort();
        tags
    }

    /// Open blob upload sessions left in the storage.
    pub fn upload_sessions(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.dir.path().join("data")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    // A live session has its `startedat`; distribution 2.8 leaves `hashstates/sha256/0` of a
                    // cancelled one behind (its blob writer persists its hash state after the cancel), which the
                    // registry no longer knows as an upload.
                    if path.parent().is_some_and(|p| p.ends_with("_uploads")) && path.join("startedat").exists() {
                        found.push(path.clone());
                    }
                    stack.push(path);
                }
            }
        }
        found
    }

    /// The environment for uplosi: the test CA, no inherited credentials files.
    pub fn env(&self, home: &Path) -> Vec<(&'static str, String)> {
        let mut vars = vec![("HOME", home.display().to_string())];
        if let Some(ca) = &self.ca {
            vars.push(("SSL_CERT_FILE", ca.ca().display().to_string()));
        }
        vars
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}
