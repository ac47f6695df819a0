//! Azure Resource Manager over plain REST: bearer tokens from the credential chain, the one retry policy of
//! `transfer/`, and long-running operations followed the way the Azure SDKs follow them (`Azure-AsyncOperation`
//! first, then `Location`, then the resource's `provisioningState`), honouring `Retry-After`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;

use super::error::AzureError;
use crate::cancel::Cancel;
use crate::logging::redact;
use crate::transfer::http::{self, TlsOptions, transport_message};
use crate::transfer::{RetryPolicy, parse_retry_after};

/// `Microsoft.Compute/disks`.
pub const DISKS_API: &str = "2024-03-02";
/// `Microsoft.Compute/galleries` and everything under it.
pub const GALLERIES_API: &str = "2023-07-03";
/// `Microsoft.Resources/resourceGroups`.
pub const GROUPS_API: &str = "2021-04-01";
/// `/subscriptions/{id}`.
pub const SUBSCRIPTIONS_API: &str = "2022-12-01";

/// An answer of Resource Manager.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after").and_then(|v| parse_retry_after(&v))
    }
}

/// A Resource Manager endpoint with a credential.
#[derive(Clone)]
pub struct Arm {
    http: reqwest::Client,
    endpoint: String,
    scope: String,
    credential: Arc<dyn TokenCredential>,
    policy: RetryPolicy,
}

impl std::fmt::Debug for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arm").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

/// What a long-running operation returns when it is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Final {
    /// The resource, read again (PUT).
    Resource,
    /// The operation's result (POST actions such as `beginGetAccess`).
    Result,
    /// Nothing (DELETE).
    Nothing,
}

impl Arm {
    /// A client for `endpoint` (e.g. `https://management.azure.com`); tokens are asked for `endpoint/.default`.
    pub fn new(endpoint: &str, credential: Arc<dyn TokenCredential>) -> Result<Self, AzureError> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        Ok(Self {
            http: http::client(&TlsOptions::default())?,
            scope: token_scope(&endpoint),
            endpoint,
            credential,
            policy: RetryPolicy::default(),
        })
    }

    /// The same client with another retry policy (the patient one of cleanups).
    pub fn with_retry(&self, policy: RetryPolicy) -> Self {
        Self { policy, ..self.clone() }
    }

    /// The endpoint URL without a trailing slash.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn url(&self, path: &str, api: &str) -> String {
        if path.starts_with("https://") || path.starts_with("http://") {
            return path.to_string();
        }
        let separator = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{separator}api-version={api}", self.endpoint)
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Answer, AzureError> {
        let token = self.credential.get_token(&[&self.scope], None).await.map_err(|e| AzureError::SignIn {
            credential: "the chosen credential".into(),
            message: redact(&e.to_string()).into_owned(),
        })?;
        let mut request = self
            .http
            .request(method.clone(), url)
            .bearer_auth(token.token.secret())
            .timeout(http::REQUEST_TIMEOUT)
            .header("accept", "application/json");
        if let Some(body) = body {
            request = request.json(body);
        } else if *method == Method::POST {
            request = request.header("content-length", "0");
        }
        let response = request.send().await.map_err(|e| AzureError::Transport {
            what: what.to_string(),
            message: redact(&transport_message(&e)).into_owned(),
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| AzureError::Transport {
            what: what.to_string(),
            message: redact(&transport_message(&e)).into_owned(),
        })?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        let answer = Answer { status, headers, body };
        tracing::trace!("azure: {method} {} -> {status}", redact(url));
        if status.is_success() || status == StatusCode::NOT_FOUND && *method != Method::POST {
            Ok(answer)
        } else {
            Err(api_error(what, &answer))
        }
    }

    async fn send(&self, method: Method, url: &str, body: Option<&Value>, what: &str) -> Result<Answer, AzureError> {
        self.policy
            .run(
                |attempt| {
                    if attempt > 1 {
                        tracing::debug!("azure: {what}: attempt {attempt}");
                    }
                    self.send_once(&method, url, body, what)
                },
                AzureError::verdict,
            )
            .await
    }

    /// Reads a resource; `None` if it does not exist.
    pub async fn get(&self, path: &str, api: &str, what: &str) -> Result<Option<Value>, AzureError> {
        let answer = self.send(Method::GET, &self.url(path, api), None, what).await?;
        Ok((answer.status != StatusCode::NOT_FOUND).then_some(answer.body))
    }

    /// Every resource of a collection (`…/versions`, `…/disks`), following `nextLink`; none if it does not exist.
    pub async fn list(&self, path: &str, api: &str, what: &str) -> Result<Vec<Value>, AzureError> {
        let mut items = Vec::new();
        let mut url = self.url(path, api);
        loop {
            let answer = self.send(Method::GET, &url, None, what).await?;
            if answer.status == StatusCode::NOT_FOUND {
                return Ok(items);
            }
            items.extend(answer.body.get("value").and_then(Value::as_array).cloned().unwrap_or_default());
            match answer.body.get("nextLink").and_then(Value::as_str).filter(|l| !l.is_empty()) {
                Some(next) => url = next.to_string(),
                None => return Ok(items),
            }
        }
    }

    /// Creates or updates a resource and waits until it is provisioned; returns it.
    pub async fn put(
        &self,
        path: &str,
        api: &str,
        body: &Value,
        what: &str,
        limit: Duration,
        cancel: &Cancel,
    ) -> Result<Value, AzureError> {
        let url = self.url(path, api);
        let answer = self.send(Method::PUT, &url, Some(body), what).await?;
        self.follow(answer, &url, Final::Resource, what, limit, cancel).await
    }

    /// Runs an action (`beginGetAccess`, `share`, …) and waits for its result.
    pub async fn post(
        &self,
        path: &str,
        api: &str,
        body: Option<&Value>,
        what: &str,
        limit: Duration,
        cancel: &Cancel,
    ) -> Result<Value, AzureError> {
        let url = self.url(path, api);
        let answer = self.send(Method::POST, &url, body, what).await?;
        self.follow(answer, &url, Final::Result, what, limit, cancel).await
    }

    /// Deletes a resource and waits until it is gone; `false` if there was none.
    pub async fn delete(
        &self,
        path: &str,
        api: &str,
        what: &str,
        limit: Duration,
        cancel: &Cancel,
    ) -> Result<bool, AzureError> {
        let url = self.url(path, api);
        let answer = self.send(Method::DELETE, &url, None, what).await?;
        if answer.status == StatusCode::NOT_FOUND || answer.status == StatusCode::NO_CONTENT {
            return Ok(answer.status != StatusCode::NOT_FOUND);
        }
        self.follow(answer, &url, Final::Nothing, what, limit, cancel).await.map(|_| true)
    }

    /// Follows a long-running operation to its end.
    async fn follow(
        &self,
        first: Answer,
        url: &str,
        wanted: Final,
        what: &str,
        limit: Duration,
        cancel: &Cancel,
    ) -> Result<Value, AzureError> {
        let started = Instant::now();
        let async_operation = first.header("azure-asyncoperation");
        let location = first.header("location");
        let mut pause = first.retry_after();
        let mut intervals = crate::transfer::PollIntervals::default();
        let mut wait = |pause: Option<Duration>| pause.unwrap_or_else(|| intervals.next_pause());
        if async_operation.is_some() || location.is_some() {
            crate::timeline::note(format_args!("waiting for {what}"));
        }
        let check_time = || {
            if started.elapsed() > limit {
                Err(AzureError::Timeout { what: what.to_string(), timeout: limit })
            } else {
                Ok(())
            }
        };
        if let Some(status_url) = async_operation {
            loop {
                sleep(wait(pause.take()), cancel).await?;
                check_time()?;
                let answer = self.send(Method::GET, &status_url, None, what).await?;
                match answer.body.get("status").and_then(Value::as_str).unwrap_or("InProgress") {
                    "Succeeded" => {
                        return match wanted {
                            Final::Nothing => Ok(Value::Null),
                            Final::Resource => self.send(Method::GET, url, None, what).await.map(|a| a.body),
                            Final::Result => match &location {
                                Some(location) => self.send(Method::GET, location, None, what).await.map(|a| a.body),
                                None => Ok(answer.body.pointer("/properties/output").cloned().unwrap_or(Value::Null)),
                            },
                        };
                    }
                    status @ ("Failed" | "Canceled") => {
                        return Err(AzureError::Operation {
                            what: what.to_string(),
                            status: status.to_string(),
                            message: error_message(&answer.body),
                        });
                    }
                    _ => pause = answer.retry_after(),
                }
            }
        }
        if let Some(location) = location.filter(|_| first.status == StatusCode::ACCEPTED || wanted != Final::Resource) {
            loop {
                sleep(wait(pause.take()), cancel).await?;
                check_time()?;
                let answer = self.send(Method::GET, &location, None, what).await?;
                if answer.status != StatusCode::ACCEPTED {
                    return Ok(answer.body);
                }
                pause = answer.retry_after();
            }
        }
        // A synchronous answer; a PUT may still be provisioning.
        let mut body = first.body;
        if wanted != Final::Resource {
            return Ok(body);
        }
        loop {
            match body.pointer("/properties/provisioningState").and_then(Value::as_str) {
                Some("Failed" | "Canceled") => {
                    return Err(AzureError::Operation {
                        what: what.to_string(),
                        status: "Failed".into(),
                        message: error_message(&body),
                    });
                }
                Some("Creating" | "Updating" | "Accepted" | "Migrating" | "Deleting") => {
                    sleep(wait(None), cancel).await?;
                    check_time()?;
                    body = self.send(Method::GET, url, None, what).await?.body;
                }
                _ => return Ok(body),
            }
        }
    }
}

/// The token scope of a Resource Manager endpoint: the endpoint URL + `/.default`.
pub fn token_scope(endpoint: &str) -> String {
    format!("{}/.default", endpoint.trim_end_matches('/'))
}

async fn sleep(pause: Duration, cancel: &Cancel) -> Result<(), AzureError> {
    tokio::select! {
        () = tokio::time::sleep(pause) => Ok(()),
        () = cancel.cancelled() => Err(AzureError::Interrupted),
    }
}

/// ARM's `{"error": {"code", "message", "details"}}`, or an operation's `error`.
fn error_message(body: &Value) -> String {
    let error = body.get("error").unwrap_or(body);
    let mut message = error.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| match body {
        Value::String(text) => http::error_text(text),
        Value::Null => "no details".into(),
        other => other.to_string(),
    });
    if let Some(details) = error.get("details").and_then(Value::as_array) {
        for detail in details {
            if let Some(text) = detail.get("message").and_then(Value::as_str) {
                message.push_str(" (");
                message.push_str(text);
                message.push(')');
            }
        }
    }
    redact(&message).into_owned()
}

fn api_error(what: &str, answer: &Answer) -> AzureError {
    let error = answer.body.get("error").unwrap_or(&answer.body);
    AzureError::Api {
        what: what.to_string(),
        status: answer.status.as_u16(),
        code: error.get("code").and_then(Value::as_str).map(str::to_string),
        message: error_message(&answer.body),
        retry_after: answer.retry_after(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_is_the_endpoint_with_default() {
        assert_eq!(token_scope("https://management.azure.com/"), "https://management.azure.com/.default");
        assert_eq!(
            token_scope("https://management.usgovcloudapi.net"),
            "https://management.usgovcloudapi.net/.default"
        );
    }

    #[test]
    fn arm_errors_quote_code_message_and_details() {
        let body = serde_json::json!({"error": {"code": "InvalidParameter", "message": "uploadSizeBytes is wrong",
            "details": [{"message": "must be a multiple of 1 MiB plus 512"}]}});
        let answer = Answer { status: StatusCode::BAD_REQUEST, headers: HeaderMap::new(), body };
        let err = api_error("creating disk d", &answer);
        let text = err.to_string();
        assert!(text.contains("HTTP 400 InvalidParameter") && text.contains("plus 512"), "{text}");
        assert_eq!(err.verdict(), crate::transfer::Verdict::Fail);
    }
}
