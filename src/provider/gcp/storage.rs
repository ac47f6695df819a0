//! Cloud Storage on its JSON API (`storage/v1`): bucket get and create, object delete, and the resumable
//! upload session.
//!
//! The official crate makes the metadata calls on gRPC (`StorageControl`), which fake-gcs-server and many corporate
//! proxies do not speak. Its resumable upload recovers from a failed chunk by asking the session for its state with
//! `Content-Range: bytes */*`, which fake-gcs-server takes as the end of the upload and commits a truncated object.
//! A failed chunk is therefore resent here from its start on the same session URI, which GCS documents as safe (bytes
//! it already persisted are ignored), and a `308` that persisted only part of a chunk resumes after its `Range`.

use google_cloud_auth::credentials::Credentials;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::credential;
use super::error::{GcpError, verdict};
use crate::transfer::RetryPolicy;
use crate::transfer::http::{self, REQUEST_TIMEOUT, TlsOptions};

/// The endpoint of Cloud Storage and whether it is an emulator: `STORAGE_EMULATOR_HOST` (a URL, or `host:port`
/// meaning plain HTTP, as in Google's libraries) wins over `storageEndpoint`.
pub fn endpoint(configured: &str) -> (String, bool) {
    endpoint_from(std::env::var("STORAGE_EMULATOR_HOST").ok(), configured)
}

fn endpoint_from(emulator: Option<String>, configured: &str) -> (String, bool) {
    match emulator.filter(|v| !v.trim().is_empty()) {
        Some(host) if host.contains("://") => (host.trim().trim_end_matches('/').to_string(), true),
        Some(host) => (format!("http://{}", host.trim().trim_end_matches('/')), true),
        None => (configured.trim_end_matches('/').to_string(), false),
    }
}

/// A Cloud Storage JSON API client.
#[derive(Clone)]
pub struct Gcs {
    http: reqwest::Client,
    endpoint: String,
    credentials: Credentials,
    retry: RetryPolicy,
}

/// Percent-encodes an object or bucket name as one path segment.
fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Gcs {
    /// A client of `endpoint` signing with `credentials`.
    pub fn new(endpoint: &str, credentials: Credentials) -> Result<Self, GcpError> {
        Ok(Self {
            http: http::client(&TlsOptions::default())?,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            credentials,
            retry: RetryPolicy::default(),
        })
    }

    /// The same client with another retry policy.
    pub fn with_retry(&self, retry: RetryPolicy) -> Self {
        Self { retry, ..self.clone() }
    }

    /// Sends `request` with the credentials' headers and reads the whole answer; one attempt.
    async fn exchange(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Answer, GcpError> {
        let transport =
            |e: reqwest::Error| GcpError::Transport { what: what.to_string(), message: http::transport_message(&e) };
        let headers = credential::headers(&self.credentials).await?;
        let response = request.headers(headers).send().await.map_err(transport)?;
        let (status, headers) = (response.status(), response.headers().clone());
        let text = response.text().await.map_err(transport)?;
        Ok(Answer { status, headers, text })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Option<Value>, GcpError> {
        let url = format!("{}{path}", self.endpoint);
        self.retry
            .run(
                |_| async {
                    let mut request = self.http.request(method.clone(), &url).timeout(REQUEST_TIMEOUT);
                    if let Some(body) = body {
                        request = request.json(body);
                    }
                    let answer = self.exchange(request, what).await?;
                    if answer.status == StatusCode::NOT_FOUND {
                        return Ok(None);
                    }
                    answer.check(what)?;
                    if answer.text.trim().is_empty() {
                        return Ok(Some(Value::Null));
                    }
                    answer.json(what).map(Some)
                },
                verdict,
            )
            .await
    }

    /// The bucket's metadata, `None` if it does not exist.
    pub async fn bucket(&self, bucket: &str) -> Result<Option<Value>, GcpError> {
        self.call(Method::GET, &format!("/storage/v1/b/{}", segment(bucket)), None, &format!("reading bucket {bucket}"))
            .await
    }

    /// Creates `bucket` in `location` of `project` with uniform bucket-level access and public access prevention
    /// enforced (as the Go tool does). A bucket created meanwhile by someone else (409) is fine if it is readable.
    pub async fn create_bucket(&self, project: &str, bucket: &str, location: &str) -> Result<(), GcpError> {
        let body = json!({
            "name": bucket,
            "location": location,
            "iamConfiguration": {
                "uniformBucketLevelAccess": {"enabled": true},
                "publicAccessPrevention": "enforced",
            },
        });
        let what = format!("creating bucket {bucket} in {location}");
        match self.call(Method::POST, &format!("/storage/v1/b?project={}", segment(project)), Some(&body), &what).await
        {
            Ok(_) => Ok(()),
            Err(GcpError::Api { status: 409, .. }) if self.bucket(bucket).await?.is_some() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The objects in `bucket` whose name starts with `prefix` (all pages): each name with its `timeCreated`;
    /// none if there is no such bucket.
    pub async fn list_objects(&self, bucket: &str, prefix: &str) -> Result<Vec<(String, Option<String>)>, GcpError> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = format!("prefix={}", segment(prefix));
            if let Some(t) = &token {
                query.push_str(&format!("&pageToken={}", segment(t)));
            }
            let path = format!("/storage/v1/b/{}/o?{query}", segment(bucket));
            let what = format!("listing gs://{bucket}/{prefix}*");
            let Some(page) = self.call(Method::GET, &path, None, &what).await? else { return Ok(names) };
            for item in page["items"].as_array().into_iter().flatten() {
                if let Some(name) = item["name"].as_str() {
                    names.push((name.to_string(), item["timeCreated"].as_str().map(str::to_string)));
                }
            }
            match page["nextPageToken"].as_str().filter(|t| !t.is_empty()) {
                Some(next) => token = Some(next.to_string()),
                None => return Ok(names),
            }
        }
    }

    /// Deletes the object; `false` if there was none.
    pub async fn delete_object(&self, bucket: &str, object: &str) -> Result<bool, GcpError> {
        let path = format!("/storage/v1/b/{}/o/{}", segment(bucket), segment(object));
        Ok(self.call(Method::DELETE, &path, None, &format!("deleting gs://{bucket}/{object}")).await?.is_some())
    }
}

/// The bytes GCS says a resumable session has persisted: the end of the `Range: bytes=0-N` of a 308, plus one.
pub fn persisted(range: Option<&str>) -> u64 {
    range
        .and_then(|r| r.trim().strip_prefix("bytes=0-"))
        .and_then(|end| end.parse::<u64>().ok())
        .map_or(0, |end| end + 1)
}

/// A whole answer of the JSON API.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    /// The API's error for a status other than 2xx, with its message and `Retry-After`.
    fn check(&self, what: &str) -> Result<(), GcpError> {
        if self.status.is_success() {
            return Ok(());
        }
        Err(GcpError::Api {
            what: what.to_string(),
            status: self.status.as_u16(),
            message: http::error_text(&self.text),
            retry_after: http::retry_after(&self.headers),
        })
    }

    fn json(&self, what: &str) -> Result<Value, GcpError> {
        serde_json::from_str(&self.text).map_err(|e| GcpError::Unexpected {
            what: what.to_string(),
            message: format!("the answer is not JSON: {e}"),
        })
    }
}

/// An open resumable upload: its session URI, which survives retries.
#[derive(Clone, Debug)]
pub struct Session {
    uri: String,
    what: String,
}

/// What a chunk request achieved.
#[derive(Debug)]
pub enum ChunkResult {
    /// Not the last chunk: GCS persisted this many bytes of the object so far.
    Persisted(u64),
    /// The last chunk: the finished object's metadata.
    Finished(Value),
}

impl Gcs {
    /// Starts a resumable upload of `gs://bucket/object` and returns its session.
    pub async fn start_upload(&self, bucket: &str, object: &str, content_type: &str) -> Result<Session, GcpError> {
        let what = format!("starting the upload of gs://{bucket}/{object}");
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=resumable&name={}",
            self.endpoint,
            segment(bucket),
            segment(object)
        );
        let metadata = json!({"name": object, "contentType": content_type});
        let uri = self
            .retry
            .run(
                |_| async {
                    let request = self
                        .http
                        .post(&url)
                        .header("X-Upload-Content-Type", content_type)
                        .json(&metadata)
                        .timeout(REQUEST_TIMEOUT);
                    let answer = self.exchange(request, &what).await?;
                    answer.check(&what)?;
                    let location = answer.headers.get("location").and_then(|v| v.to_str().ok());
                    location.map(str::to_string).ok_or_else(|| GcpError::Unexpected {
                        what: what.clone(),
                        message: "the answer has no Location (session URI)".into(),
                    })
                },
                verdict,
            )
            .await?;
        Ok(Session { uri, what: format!("uploading gs://{bucket}/{object}") })
    }

    /// Sends `data` at `offset` of the session; `total` is the object's size when this is the last chunk.
    /// One attempt: the caller retries it from its start.
    pub async fn put_chunk(
        &self,
        session: &Session,
        offset: u64,
        data: bytes::Bytes,
        total: Option<u64>,
        timeout: std::time::Duration,
    ) -> Result<ChunkResult, GcpError> {
        let what = &session.what;
        let range = match (data.is_empty(), total) {
            (true, Some(total)) => format!("bytes */{total}"),
            (false, Some(total)) => format!("bytes {offset}-{}/{total}", offset + data.len() as u64 - 1),
            (_, None) => format!("bytes {offset}-{}/*", offset + data.len() as u64 - 1),
        };
        let request = self.http.put(&session.uri).header("Content-Range", range).body(data).timeout(timeout);
        let answer = self.exchange(request, what).await?;
        if answer.status.as_u16() == 308 {
            let range = answer.headers.get("range").and_then(|v| v.to_str().ok());
            return Ok(ChunkResult::Persisted(persisted(range)));
        }
        answer.check(what)?;
        answer.json(what).map(ChunkResult::Finished)
    }

    /// Ends an unfinished resumable upload, so nothing of it stays (GCS answers 499).
    pub async fn cancel_upload(&self, session: &Session) {
        let sent = self.http.delete(&session.uri).timeout(REQUEST_TIMEOUT).send().await;
        tracing::debug!("gcp: cancelled the upload session: {:?}", sent.map(|r| r.status().as_u16()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_emulator_host_wins_and_defaults_to_http() {
        let google = "https://storage.googleapis.com/";
        assert_eq!(endpoint_from(None, google), ("https://storage.googleapis.com".into(), false));
        assert_eq!(endpoint_from(Some("".into()), google), ("https://storage.googleapis.com".into(), false));
        assert_eq!(endpoint_from(Some("127.0.0.5:80".into()), google), ("http://127.0.0.5:80".into(), true));
        assert_eq!(endpoint_from(Some("http://127.0.0.5/".into()), google), ("http://127.0.0.5".into(), true));
    }

    #[test]
    fn persisted_bytes_come_from_the_range_of_a_308() {
        assert_eq!(persisted(Some("bytes=0-16777215")), 16 << 20);
        assert_eq!(persisted(None), 0);
        assert_eq!(persisted(Some("garbage")), 0);
    }

    #[test]
    fn object_names_are_one_encoded_path_segment() {
        assert_eq!(segment("images/disk 1.tar.gz"), "images%2Fdisk%201.tar.gz");
        assert_eq!(segment("a-b_c.d~e"), "a-b_c.d~e");
    }
}
