//! The HTTP client of the REST APIs that have no official Rust SDK (Glance and Keystone today): TLS roots from the
//! system store and `SSL_CERT_FILE`, an optional extra CA bundle, and sane timeouts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

/// Why a client could not be built.
#[derive(Debug, Error)]
pub enum HttpError {
    /// The CA bundle could not be read or holds no certificate.
    #[error("cannot use the CA bundle {}: {message}", path.display())]
    CaBundle {
        /// The bundle.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// reqwest refused the configuration.
    #[error("cannot set up HTTPS: {0}")]
    Build(#[source] reqwest::Error),
}

/// How a client verifies servers.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM certificates trusted in addition to the system roots (clouds.yaml `cacert`).
    pub extra_ca: Option<PathBuf>,
    /// `false` turns certificate verification off (clouds.yaml `verify: false`); a warning is logged.
    pub insecure: bool,
}

/// Connecting must not take longer than this; a stalled control call fails after [`REQUEST_TIMEOUT`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// The per-request timeout of control-plane calls (data transfers set their own).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A client trusting the system roots (which honour `SSL_CERT_FILE` and `SSL_CERT_DIR`) plus `options.extra_ca`.
pub fn client(options: &TlsOptions) -> Result<reqwest::Client, HttpError> {
    // rustls needs one process-wide crypto provider; aws-lc-rs is the one the AWS SDK builds anyway. Installing
    // fails only if one is installed already, which is just as good.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_native_certs(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Duration::from_secs(30))
        .user_agent(concat!("uplosi/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &options.extra_ca {
        for cert in read_bundle(path)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    if options.insecure {
        tracing::warn!("TLS certificate verification is off (verify: false); anyone on the path can read the token");
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder.build().map_err(HttpError::Build)
}

fn read_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, HttpError> {
    let fail = |message: String| HttpError::CaBundle { path: path.to_path_buf(), message };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The text of an error response: the `message` of a JSON body, or the text of an HTML/plain one with tags and
/// extra whitespace removed, cut to a readable length.
pub fn error_text(body: &str) -> String {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(body) {
        for pointer in ["/message", "/error/message", "/title", "/detail"] {
            if let Some(text) = json.pointer(pointer).and_then(|v| v.as_str()) {
                return text.to_string();
            }
        }
    }
    // An HTML page repeats its <title> as the heading; the head adds nothing.
    let body = body.split_once("</head>").map_or(body, |(_, rest)| rest);
    let mut text = String::with_capacity(body.len());
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut joined = words.join(" ");
    if joined.len() > 500 {
        let cut = (0..=500).rev().find(|&i| joined.is_char_boundary(i)).unwrap_or(0);
        joined.truncate(cut);
        joined.push('…');
    }
    joined
}

/// Statuses worth another attempt: timeouts, throttling and server trouble (501 Not Implemented is permanent).
pub fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// The message of a transport error with its causes ("error sending request: connection refused").
pub fn transport_message(err: &reqwest::Error) -> String {
    error_chain(err)
}

/// The message of any error followed by those of its sources that add something.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The `Retry-After` of a response, if it has one in delay seconds.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<std::time::Duration> {
    headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(super::parse_retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_prefers_json_messages_and_strips_html() {
        assert_eq!(
            error_text(r#"{"error": {"message": "Image size exceeds cap", "code": 413}}"#),
            "Image size exceeds cap"
        );
        assert_eq!(
            error_text(
                "<html><head><title>413 Request Entity Too Large</title></head><body><h1>413 Request Entity Too Large</h1>\n Image exceeds the storage quota<br /></body></html>"
            ),
            "413 Request Entity Too Large Image exceeds the storage quota"
        );
        assert_eq!(error_text(&"x".repeat(2000)).chars().count(), 501);
    }

    #[test]
    fn a_missing_or_empty_ca_bundle_is_named() {
        let missing = client(&TlsOptions { extra_ca: Some("/nonexistent/ca.pem".into()), insecure: false });
        assert!(matches!(missing, Err(HttpError::CaBundle { ref path, .. }) if path.ends_with("ca.pem")));
        let empty = tempfile::NamedTempFile::new().expect("temp file");
        let err = client(&TlsOptions { extra_ca: Some(empty.path().into()), insecure: false }).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        assert!(client(&TlsOptions::default()).is_ok());
    }
}
