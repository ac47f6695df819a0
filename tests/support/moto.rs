//! A real moto server (PyPI `moto[server]`) on 127.0.0.1, standing in for S3, EBS direct, EC2, SSM and STS.
//!
//! Faithful for what uplosi uses, with two known gaps: moto has no ImportSnapshot (see `aws_proxy.py`), and its
//! RegisterImage ignores the block device mapping, so an AMI's snapshot is checked through the snapshot we made.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The account moto reports for any credentials.
pub const ACCOUNT: &str = "123456789012";

/// A running server process, killed on drop.
pub struct Server {
    child: Child,
    /// Its base URL.
    pub url: String,
    /// Its port.
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early with {status}");
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts moto's server (`python3 -m moto.server`, the module behind `moto_server`) on a free port.
pub fn start() -> Server {
    let port = free_port();
    let mut child = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server must be installed (pip install 'moto[server]'; scripts/test.sh does it)");
    wait_listening(port, &mut child, "moto_server");
    Server { child, url: format!("http://127.0.0.1:{port}"), port }
}

/// `tests/support/aws_proxy.py` in front of moto, with the JSON file it writes its request counts to.
pub struct Proxy {
    /// The proxy's base URL.
    pub url: String,
    _server: Server,
    stats: tempfile::NamedTempFile,
}

impl Proxy {
    /// Request counts per operation (and the last RegisterImage's parameters); `Null` while the file is being
    /// rewritten.
    pub fn stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.stats.path()).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }
}

/// Starts `tests/support/aws_proxy.py` in front of `upstream` with extra arguments (fault rules).
pub fn start_proxy(upstream: &Server, args: &[&str]) -> Proxy {
    let stats = tempfile::NamedTempFile::new().expect("stats file");
    let port = free_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/aws_proxy.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string(), "--upstream", &upstream.url, "--stats"])
        .arg(stats.path())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    wait_listening(port, &mut child, "aws_proxy.py");
    let url = format!("http://127.0.0.1:{port}");
    Proxy { url: url.clone(), _server: Server { child, url, port }, stats }
}

/// An SDK configuration pointing at `url` with static test credentials.
pub async fn sdk_config(url: &str, region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_config::Region::new(region.to_string()))
        .credentials_provider(aws_sdk_sts::config::Credentials::new("testing", "testing", None, None, "tests"))
        .load()
        .await
}
