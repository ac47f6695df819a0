//! The Glance image API v2 calls uplosi makes: list by name, create, upload the data, get, patch and delete.
//! Control calls are retried by the shared policy; the data upload is one streamed request, retried as a whole by
//! the caller.

use serde::Deserialize;
use serde_json::Value;

use super::clouds::Secret;
use super::error::{OpenStackError, transport_message};
use crate::transfer::RetryPolicy;
use crate::transfer::http::{REQUEST_TIMEOUT, error_text};

/// An image record, the fields uplosi reads.
#[derive(Clone, Debug, Deserialize)]
pub struct ImageRecord {
    /// The image ID.
    pub id: String,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// `queued`, `saving`, `active`, `killed`, `deleted`, …
    pub status: String,
    /// Whether it is protected from deletion.
    #[serde(default)]
    pub protected: bool,
    /// Its visibility.
    #[serde(default)]
    pub visibility: Option<String>,
    /// MD5 of the data, once stored.
    #[serde(default)]
    pub checksum: Option<String>,
    /// The algorithm of `os_hash_value` (sha512 by default).
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    /// The multihash of the data.
    #[serde(default)]
    pub os_hash_value: Option<String>,
    /// Bytes stored.
    #[serde(default)]
    pub size: Option<u64>,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created_at: Option<String>,
    /// The `uplosi-name` property of images uplosi created.
    #[serde(default, rename = "uplosi-name")]
    pub uplosi_name: Option<String>,
}

/// A Glance v2 endpoint with its token.
#[derive(Clone, Debug)]
pub struct Glance {
    client: reqwest::Client,
    /// `…/v2`.
    base: String,
    token: Option<Secret>,
    retry: RetryPolicy,
}

impl Glance {
    /// Glance at `root` (without version), authenticating with `token` if there is one.
    pub fn new(client: reqwest::Client, root: &str, token: Option<Secret>) -> Self {
        Self { client, base: format!("{}/v2", root.trim_end_matches('/')), token, retry: RetryPolicy::default() }
    }

    /// The same endpoint with another retry policy for its calls.
    pub fn with_retry(&self, retry: RetryPolicy) -> Self {
        Self { retry, ..self.clone() }
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut builder = self.client.request(method, self.url(path));
        if let Some(token) = &self.token {
            builder = builder.header("X-Auth-Token", token.expose());
        }
        builder
    }

    /// Sends the request `build` makes, once per attempt, and returns the body of a successful answer.
    async fn call(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, String), OpenStackError> {
        self.retry
            .run(
                |attempt| {
                    let request = build().timeout(REQUEST_TIMEOUT);
                    async move {
                        if attempt > 1 {
                            tracing::debug!("{what}: attempt {attempt}");
                        }
                        send(what, request).await
                    }
                },
                OpenStackError::verdict,
            )
            .await
    }

    async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, OpenStackError> {
        let (_, body) = self.call(what, build).await?;
        serde_json::from_str(&body)
            .map_err(|e| OpenStackError::Unexpected { what: what.to_string(), message: format!("{e}: {body:.200}") })
    }

    /// The images named `name` (hidden ones included), of project `owner` if given.
    pub async fn images_named(&self, name: &str, owner: Option<&str>) -> Result<Vec<ImageRecord>, OpenStackError> {
        let what = format!("listing Glance images named \"{name}\"");
        let mut found = self.list(&what, Some(name), owner).await?;
        found.retain(|i| i.name.as_deref() == Some(name));
        Ok(found)
    }

    /// Every image (hidden ones included) of project `owner` if given, else every image the token sees.
    pub async fn images(&self, owner: Option<&str>) -> Result<Vec<ImageRecord>, OpenStackError> {
        self.list("listing Glance images", None, owner).await
    }

    async fn list(
        &self,
        what: &str,
        name: Option<&str>,
        owner: Option<&str>,
    ) -> Result<Vec<ImageRecord>, OpenStackError> {
        #[derive(Deserialize)]
        struct Page {
            images: Vec<ImageRecord>,
            next: Option<String>,
        }
        let mut found = Vec::new();
        // Listings leave hidden images out unless asked for them alone, so both kinds are listed.
        for hidden in ["false", "true"] {
            let mut query = vec![("os_hidden", hidden.to_string())];
            if let Some(name) = name {
                query.push(("name", name.to_string()));
            }
            if let Some(owner) = owner {
                query.push(("owner", owner.to_string()));
            }
            let mut marker: Option<String> = None;
            loop {
                let mut page_query = query.clone();
                if let Some(m) = &marker {
                    page_query.push(("marker", m.clone()));
                }
                let page: Page =
                    self.call_json(what, || self.request(reqwest::Method::GET, "/images").query(&page_query)).await?;
                let last = page.images.last().map(|i| i.id.clone());
                found.extend(page.images);
                match (page.next, last) {
                    (Some(_), Some(last)) => marker = Some(last),
                    _ => break,
                }
            }
        }
        found.dedup_by(|a, b| a.id == b.id);
        Ok(found)
    }

    /// Creates an image record from `body` (the `POST /v2/images` JSON).
    pub async fn create(&self, body: &Value) -> Result<ImageRecord, OpenStackError> {
        let what = format!("creating the Glance image {}", body["name"]);
        self.call_json(&what, || self.request(reqwest::Method::POST, "/images").json(body)).await
    }

    /// The image `id`.
    pub async fn get(&self, id: &str) -> Result<ImageRecord, OpenStackError> {
        let what = format!("reading Glance image {id}");
        self.call_json(&what, || self.request(reqwest::Method::GET, &format!("/images/{id}"))).await
    }

    /// Applies a JSON patch (`[{"op": "replace", "path": "/visibility", "value": "public"}]`).
    pub async fn patch(&self, id: &str, ops: &Value) -> Result<ImageRecord, OpenStackError> {
        let what = format!("updating Glance image {id}");
        self.call_json(&what, || {
            self.request(reqwest::Method::PATCH, &format!("/images/{id}"))
                .header("Content-Type", "application/openstack-images-v2.1-json-patch")
                .body(ops.to_string())
        })
        .await
    }

    /// Deletes the image `id`; one that is gone already counts as deleted.
    pub async fn delete(&self, id: &str) -> Result<(), OpenStackError> {
        let what = format!("deleting Glance image {id}");
        match self.call(&what, || self.request(reqwest::Method::DELETE, &format!("/images/{id}"))).await {
            Ok(_) | Err(OpenStackError::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends the image data as one chunked `PUT /v2/images/ID/file` (not retried here: the body is a stream).
    pub async fn upload(&self, id: &str, body: reqwest::Body) -> Result<(), OpenStackError> {
        let what = format!("uploading the data of Glance image {id}");
        let request = self
            .request(reqwest::Method::PUT, &format!("/images/{id}/file"))
            .header("Content-Type", "application/octet-stream")
            .body(body);
        send(&what, request).await.map(drop)
    }
}

async fn send(what: &str, request: reqwest::RequestBuilder) -> Result<(reqwest::StatusCode, String), OpenStackError> {
    let response = request.send().await.map_err(|e| OpenStackError::Transport {
        what: what.to_string(),
        message: transport_message(&e),
        retry: true,
    })?;
    let status = response.status();
    let retry_after = crate::transfer::http::retry_after(response.headers());
    let body = response.text().await.map_err(|e| OpenStackError::Transport {
        what: what.to_string(),
        message: transport_message(&e),
        retry: true,
    })?;
    if status.is_success() {
        Ok((status, body))
    } else {
        Err(OpenStackError::Api {
            what: what.to_string(),
            status: status.as_u16(),
            message: error_text(&body),
            retry_after,
        })
    }
}
