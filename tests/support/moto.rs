//! A real moto server (PyPI `moto[server]`) on 127.0.0.1, standing in for S3, EBS direct, EC2, SSM and STS.
//!
//! Faithful for what uplosi uses, with two known gaps: moto has no ImportSnapshot (see `aws_proxy.py`), and its
//! RegisterImage ignores the block device mapping, so an AMI's snapshot is checked through the snapshot we made.

use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// EBS snapshot block size.
pub const BLOCK: u64 = 512 * 1024;

/// The account moto reports for any credentials.
pub const ACCOUNT: &str = "123456789012";

/// A running server process, killed on drop.
pub struct Server {
    child: Child,
    /// Its base URL.
    pub url: String,
    /// Its port.
    pub port: u16,
    /// Where moto's request recorder writes (`MOTO_RECORDER_FILEPATH`; by default `moto_recording` in the
    /// working directory, which would litter the clone), removed with the server.
    _scratch: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Waits until `child` accepts connections on `port`, failing if it exits first.
pub fn wait_listening(port: u16, child: &mut Child, what: &str) {
    wait_listening_on("127.0.0.1", port, child, what)
}

/// Waits until `child` accepts connections on `host`:`port`, failing if it exits first.
pub fn wait_listening_on(host: &str, port: u16, child: &mut Child, what: &str) {
    let started = Instant::now();
    while TcpStream::connect((host, port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early with {status}");
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts moto's server on a free port, its EBS direct API answering BlockSize 524288 as EBS does
/// (`tests/support/moto_ebs.py`; stock moto answers 512).
pub fn start() -> Server {
    start_with_block_size(524_288)
}

/// Starts moto's server (`moto.server`, the module behind `moto_server`) on a free port, its EBS direct
/// StartSnapshot answering BlockSize `block_size`.
pub fn start_with_block_size(block_size: u64) -> Server {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/moto_ebs.py");
    spawn(&[script], Some(block_size))
}

/// Starts stock moto, as `moto_server` runs it: nothing patched (its StartSnapshot answers BlockSize 512).
pub fn start_stock() -> Server {
    spawn(&["-m", "moto.server"], None)
}

fn spawn(program: &[&str], block_size: Option<u64>) -> Server {
    let port = free_port();
    let scratch = tempfile::tempdir().expect("moto scratch directory");
    let mut command = Command::new("python3");
    command
        .args(program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("MOTO_RECORDER_FILEPATH", scratch.path().join("recording"))
        .current_dir(scratch.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(size) = block_size {
        command.env("UPLOSI_TEST_EBS_BLOCK_SIZE", size.to_string());
    }
    let mut child =
        command.spawn().expect("moto_server must be installed (pip install 'moto[server]'; scripts/test.sh does it)");
    wait_listening(port, &mut child, "moto_server");
    Server { child, url: format!("http://127.0.0.1:{port}"), port, _scratch: Some(scratch) }
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
    Proxy { url: url.clone(), _server: Server { child, url, port, _scratch: None }, stats }
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

/// `uplosi` in `dir` with static test credentials, the endpoint override `AWS_ENDPOINT_URL`, and nothing from the
/// environment that could point the SDK elsewhere (no profile, no metadata server).
pub fn uplosi_command(dir: &Path, endpoint: &str) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("uplosi"));
    cmd.current_dir(dir)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env_remove("RUST_LOG")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION");
    cmd
}

/// The blocks moto holds for `snapshot`: volume size in GiB and {index: sha256 hex}.
pub fn snapshot_blocks(endpoint: &str, snapshot: &str) -> (u64, std::collections::BTreeMap<u64, String>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/ebs_blocks.py");
    let out =
        super::fixtures::run(std::process::Command::new("python3").args([script, endpoint, "us-east-1", snapshot]));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let blocks = json["blocks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().to_string()))
        .collect();
    (json["volume_size"].as_u64().unwrap(), blocks)
}

/// Checks the snapshot equals the image, block by block: every block moto holds matches the image and has data,
/// and every block it does not hold is zeros in the image. Returns the number of blocks stored.
pub fn assert_snapshot_equals_image(endpoint: &str, snapshot: &str, image: &Path) -> usize {
    assert_snapshot_in_blocks_equals_image(endpoint, snapshot, image, BLOCK)
}

/// [`assert_snapshot_equals_image`] for a snapshot written in blocks of `block` bytes.
pub fn assert_snapshot_in_blocks_equals_image(endpoint: &str, snapshot: &str, image: &Path, block: u64) -> usize {
    use sha2::Digest;
    let (_, stored) = snapshot_blocks(endpoint, snapshot);
    let file = std::fs::File::open(image).unwrap();
    let size = file.metadata().unwrap().len();
    let mut expected = vec![0u8; block as usize];
    for index in 0..size.div_ceil(block) {
        if !stored.contains_key(&index) && index % 1024 != 0 {
            // Reading every small block of a 9 GiB image is slow; holes are checked at a sample.
            continue;
        }
        expected.fill(0);
        let len = block.min(size - index * block) as usize;
        file.read_exact_at(&mut expected[..len], index * block).unwrap();
        match stored.get(&index) {
            Some(hash) => {
                assert!(expected.iter().any(|b| *b != 0), "block {index} is all zeros but was sent");
                let ours: String = sha2::Sha256::digest(&expected).iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(hash, &ours, "block {index} differs from the image");
            }
            None => assert!(expected.iter().all(|b| *b == 0), "block {index} has data but was not uploaded"),
        }
    }
    stored.len()
}

/// The AMIs of this account named `name`.
pub async fn images_named(conf: &aws_config::SdkConfig, name: &str) -> Vec<aws_sdk_ec2::types::Image> {
    let ec2 = aws_sdk_ec2::Client::new(conf);
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(aws_sdk_ec2::types::Filter::builder().name("name").values(name).build())
        .send()
        .await
        .expect("DescribeImages");
    out.images().to_vec()
}
