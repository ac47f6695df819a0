//! The fault-injecting proxy (`fault_proxy.py`) between uplosi and an emulator.

use std::process::{Child, Command, Stdio};

use super::moto::{free_port, wait_listening_on};

/// A running proxy, killed on drop.
pub struct FaultProxy {
    child: Child,
    stats: tempfile::NamedTempFile,
    /// Its URL, to use instead of the emulator's.
    pub url: String,
}

impl FaultProxy {
    /// Proxies `upstream`, faulting requests whose "METHOD PATH" matches `pattern` with probability `rate` (seeded
    /// with `seed`), choosing among `faults` (comma-separated: 500, 503, 429, reset, delay).
    pub fn start(upstream: &str, pattern: &str, rate: f64, seed: u64, faults: &str) -> Self {
        Self::start_with_delay(upstream, pattern, rate, seed, faults, 1.5)
    }

    /// Like [`FaultProxy::start`], with `delay` seconds for the `delay` fault.
    pub fn start_with_delay(upstream: &str, pattern: &str, rate: f64, seed: u64, faults: &str, delay: f64) -> Self {
        Self::spawn(upstream, pattern, rate, seed, faults, delay, false)
    }

    /// Like [`FaultProxy::start_with_delay`], also checking every Azure Put Page (Content-MD5, at most 4 MiB,
    /// 512-aligned range) and counting the page bytes forwarded (`stats()["page_bytes"]`).
    pub fn start_azure_pages(upstream: &str, rate: f64, seed: u64, faults: &str, delay: f64) -> Self {
        Self::spawn(upstream, "^PUT /devstoreaccount1/", rate, seed, faults, delay, true)
    }

    /// A proxy for Cloud Storage on `host`:80 (the official Google clients drop a non-default port from `Host`, and
    /// fake-gcs-server builds upload URLs from it). Chunk uploads (`PUT /upload/…` with a body; not the empty
    /// status queries) are the data plane; `script` faults the first of them in order (e.g. "503,503"), then `rate`
    /// applies. `stats()["matched_bytes"]` counts the chunk bytes forwarded.
    pub fn start_gcs(upstream: &str, host: &str, rate: f64, faults: &str, script: &str) -> Self {
        let extra = ["--host", host, "--min-body", "1", "--script", script].map(str::to_string);
        // Seed 18 draws a fault for the first and third of the first three chunk requests at a rate of 0.2.
        Self::spawn_on(upstream, "^PUT /upload/", rate, 18, faults, 1.5, false, (host, 80), &extra)
    }

    /// Like [`FaultProxy::start`], with more of `fault_proxy.py`'s arguments (`--bandwidth 1`).
    pub fn start_with_args(upstream: &str, pattern: &str, rate: f64, seed: u64, faults: &str, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        Self::spawn_on(upstream, pattern, rate, seed, faults, 1.5, false, ("127.0.0.1", free_port()), &extra)
    }

    fn spawn(upstream: &str, pattern: &str, rate: f64, seed: u64, faults: &str, delay: f64, pages: bool) -> Self {
        Self::spawn_on(upstream, pattern, rate, seed, faults, delay, pages, ("127.0.0.1", free_port()), &[])
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_on(
        upstream: &str,
        pattern: &str,
        rate: f64,
        seed: u64,
        faults: &str,
        delay: f64,
        pages: bool,
        (host, port): (&str, u16),
        extra: &[String],
    ) -> Self {
        let stats = tempfile::NamedTempFile::new().expect("stats file");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fault_proxy.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--upstream", upstream, "--match", pattern])
            .args(["--rate", &rate.to_string(), "--seed", &seed.to_string(), "--faults", faults])
            .args(["--delay", &delay.to_string(), "--stats"])
            .arg(stats.path())
            .args(pages.then_some("--check-azure-pages"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        wait_listening_on(host, port, &mut child, "fault_proxy.py");
        let url = if port == 80 { format!("http://{host}") } else { format!("http://{host}:{port}") };
        FaultProxy { child, stats, url }
    }

    /// `{"matched": N, "forwarded": N, "faults": {"500": N, …}}`.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.stats.path()).expect("stats")).expect("stats JSON")
    }

    /// Faults injected so far.
    pub fn faults(&self) -> u64 {
        self.stats()["faults"].as_object().map_or(0, |f| f.values().filter_map(|v| v.as_u64()).sum())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
