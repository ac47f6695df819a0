//! The distribution spec's HTTP API for one repository: requests with authentication (anonymous, basic, or the
//! bearer-token flow with the challenge's realm, service and scope), retried on transient failures with the one
//! retry policy, and the registry's errors read from their JSON.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};

use super::auth::{self, Challenge, Credentials};
use super::error::OciError;
use crate::config::registry::Repository;
use crate::transfer::http::{self, TlsOptions};
use crate::transfer::{RetryPolicy, Verdict};

/// How a request authenticates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Scheme {
    /// Nothing asked for so far.
    #[default]
    None,
    /// The registry asked for basic auth.
    Basic,
    /// The registry hands out tokens at `realm`.
    Bearer { realm: String, service: Option<String> },
}

/// One repository in one registry, connected.
pub struct Registry {
    client: reqwest::Client,
    /// `https://host` or `http://host`.
    base: String,
    /// The repository.
    pub repository: Repository,
    /// The repository as configured (for references and messages).
    pub shown: String,
    credentials: Option<Credentials>,
    scheme: Mutex<Scheme>,
    /// Bearer tokens by scope.
    tokens: Mutex<BTreeMap<String, String>>,
    retry: RetryPolicy,
}

/// One request: method, URL (absolute, or a path under the registry), headers, body.
#[derive(Clone, Debug)]
pub struct Call {
    /// The method.
    pub method: Method,
    /// `/v2/…` or an absolute URL (an upload session's `Location`).
    pub url: String,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Option<Bytes>,
    /// The repository actions the request needs (`pull`, `push`, `delete`), for the token's scope.
    pub actions: &'static str,
    /// Another repository the request reads from (a cross-repository mount), for the token's scope.
    pub also_pull: Option<String>,
}

impl Call {
    /// A call without body or extra headers.
    pub fn new(method: Method, url: impl Into<String>, actions: &'static str) -> Self {
        Self { method, url: url.into(), headers: Vec::new(), body: None, actions, also_pull: None }
    }

    /// With a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// With a body.
    pub fn body(mut self, body: Bytes) -> Self {
        self.body = Some(body);
        self
    }
}

/// The error a registry response carries: `(code, message)` from `{"errors": [{"code", "message"}]}`.
pub fn error_of(body: &str) -> (Option<String>, String) {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    if let Some(first) = parsed.as_ref().and_then(|v| v["errors"].as_array()).and_then(|e| e.first()) {
        let code = first["code"].as_str().map(str::to_string);
        let message = first["message"].as_str().unwrap_or_default().to_string();
        let detail = match &first["detail"] {
            serde_json::Value::Null => String::new(),
            other => format!(" ({})", http::error_text(&other.to_string())),
        };
        return (code, format!("{message}{detail}"));
    }
    (None, http::error_text(body))
}

impl Registry {
    /// Connects to `repository`: HTTPS, or HTTP with `plain_http` (and for a loopback registry that does not speak
    /// TLS, as docker and oras allow); checks that `/v2/` answers.
    pub async fn connect(
        repository: &Repository,
        shown: &str,
        plain_http: bool,
        credentials: Option<Credentials>,
    ) -> Result<Self, OciError> {
        let client = http::client(&TlsOptions::default())
            .map_err(|source| OciError::Tls { registry: repository.registry.clone(), source })?;
        let host = repository.api_host().to_string();
        let mut registry = Self {
            client,
            base: format!("{}://{host}", if plain_http { "http" } else { "https" }),
            repository: repository.clone(),
            shown: shown.to_string(),
            credentials,
            scheme: Mutex::new(Scheme::None),
            tokens: Mutex::new(BTreeMap::new()),
            retry: RetryPolicy::default(),
        };
        match registry.ping().await {
            Err(OciError::Transport { .. }) if !plain_http && repository.is_loopback() => {
                // A loopback registry may speak plain HTTP: allowed without plainHTTP, as docker and oras do.
                registry.base = format!("http://{host}");
                registry.ping().await.map_err(|e| match e {
                    OciError::Transport { repository, what, message } => OciError::Transport {
                        repository,
                        what,
                        message: format!("{message} (neither HTTPS nor HTTP answered)"),
                    },
                    other => other,
                })?;
                tracing::debug!("oci: {host} speaks plain HTTP (a loopback registry)");
            }
            other => other?,
        }
        Ok(registry)
    }

    /// `GET /v2/`: the registry answers (200, or 401 with a challenge, which is remembered).
    async fn ping(&self) -> Result<(), OciError> {
        let url = format!("{}/v2/", self.base);
        let response = self
            .client
            .get(&url)
            .timeout(http::REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.transport("reaching the registry (GET /v2/)", &e))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            self.remember_challenge(response.headers());
        }
        Ok(())
    }

    fn transport(&self, what: &str, e: &reqwest::Error) -> OciError {
        OciError::Transport { repository: self.shown.clone(), what: what.to_string(), message: http::error_chain(e) }
    }

    /// `/v2/<name>/<rest>`.
    pub fn path(&self, rest: &str) -> String {
        format!("/v2/{}/{rest}", self.repository.name)
    }

    /// An absolute URL for `url` (a path, or an absolute `Location`).
    pub fn absolute(&self, url: &str) -> String {
        if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else {
            format!("{}{url}", self.base)
        }
    }

    fn remember_challenge(&self, headers: &HeaderMap) -> Option<Challenge> {
        let challenge = headers
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(auth::parse_challenge)
            .next()?;
        let scheme = match &challenge {
            Challenge::Basic => Scheme::Basic,
            Challenge::Bearer { realm, service, .. } => {
                Scheme::Bearer { realm: realm.clone(), service: service.clone() }
            }
        };
        *self.scheme.lock().unwrap_or_else(|p| p.into_inner()) = scheme;
        Some(challenge)
    }

    fn scope(&self, call: &Call) -> String {
        let mut scope = format!("repository:{}:{}", self.repository.name, call.actions);
        if let Some(other) = &call.also_pull {
            scope.push_str(&format!(" repository:{other}:pull"));
        }
        scope
    }

    /// The `Authorization` value for `scope`, fetching a token if the registry wants one and none is cached.
    async fn authorization(&self, scope: &str, challenged: Option<&str>) -> Result<Option<String>, OciError> {
        let scheme = self.scheme.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match scheme {
            Scheme::None => Ok(None),
            Scheme::Basic => match self.credentials.as_ref().and_then(auth::basic) {
                Some(value) => Ok(Some(value)),
                None => Err(self.no_credentials("basic authentication")),
            },
            Scheme::Bearer { realm, service } => {
                if let Some(token) = self.credentials.as_ref().and_then(|c| c.registry_token.clone()) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let cached = self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(scope).cloned();
                if let (Some(token), None) = (cached, challenged) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let token = self.fetch_token(&realm, service.as_deref(), scope, challenged).await?;
                self.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(scope.to_string(), token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    fn no_credentials(&self, what: &str) -> OciError {
        OciError::Auth {
            registry: self.repository.registry.clone(),
            message: format!(
                "the registry asks for {what} and no credentials were found for it (looked in {}); log in with \
                 `oras login`, `skopeo login`, `podman login` or `docker login`",
                auth::search_path().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// A token for `scope` (and the scope the challenge named) from the token endpoint: anonymously, with basic
    /// credentials, or by exchanging an identity token (OAuth2 refresh token grant).
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        challenged: Option<&str>,
    ) -> Result<String, OciError> {
        let mut scopes: Vec<&str> = scope.split(' ').collect();
        if let Some(extra) = challenged.filter(|c| !scopes.contains(c)) {
            scopes.push(extra);
        }
        let identity = self.credentials.as_ref().and_then(|c| c.identity_token.clone());
        let what = format!("getting a token from {realm}");
        let request = match &identity {
            Some(refresh) => {
                let mut form: Vec<(&str, String)> = vec![
                    ("grant_type", "refresh_token".into()),
                    ("refresh_token", refresh.clone()),
                    ("client_id", "uplosi".into()),
                ];
                form.extend(service.map(|s| ("service", s.to_string())));
                form.push(("scope", scopes.join(" ")));
                self.client.post(realm).form(&form)
            }
            None => {
                let mut query: Vec<(&str, &str)> = service.map(|s| ("service", s)).into_iter().collect();
                query.extend(scopes.iter().map(|s| ("scope", *s)));
                let mut request = self.client.get(realm).query(&query);
                if let Some(credentials) = &self.credentials
                    && let Some(user) = &credentials.username
                {
                    request = request.basic_auth(user, credentials.password.as_deref());
                }
                request
            }
        };
        let response = request.timeout(http::REQUEST_TIMEOUT).send().await.map_err(|e| self.transport(&what, &e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.transport(&what, &e))?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let message = match &self.credentials {
                Some(c) => format!(
                    "the token endpoint {realm} refused the credentials from {} (HTTP {}): {}",
                    c.source,
                    status.as_u16(),
                    http::error_text(&text)
                ),
                None => return Err(self.no_credentials("a token")),
            };
            return Err(OciError::Auth { registry: self.repository.registry.clone(), message });
        }
        if !status.is_success() {
            let (code, message) = error_of(&text);
            return Err(OciError::Registry {
                repository: self.shown.clone(),
                what,
                status: status.as_u16(),
                code,
                message,
                retry: http::is_transient_status(status.as_u16()),
            });
        }
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        answer["token"].as_str().or(answer["access_token"].as_str()).map(str::to_string).ok_or_else(|| OciError::Auth {
            registry: self.repository.registry.clone(),
            message: format!("the token endpoint {realm} answered without a token"),
        })
    }

    /// Sends `call` once, authenticating as the registry asks (one more try after a challenge).
    async fn send_once(&self, call: &Call, what: &str) -> Result<Response, OciError> {
        let scope = self.scope(call);
        let mut challenged: Option<String> = None;
        for round in 0..2 {
            let authorization = self.authorization(&scope, challenged.as_deref()).await?;
            let mut request = self.client.request(call.method.clone(), self.absolute(&call.url));
            for (name, value) in &call.headers {
                request = request.header(*name, value);
            }
            if let Some(value) = authorization {
                let mut header = HeaderValue::from_str(&value).map_err(|_| OciError::Auth {
                    registry: self.repository.registry.clone(),
                    message: "the credentials hold characters a header cannot carry".into(),
                })?;
                header.set_sensitive(true);
                request = request.header(reqwest::header::AUTHORIZATION, header);
            }
            if let Some(body) = &call.body {
                request = request.body(body.clone());
            }
            let timeout = if call.body.as_ref().is_some_and(|b| b.len() > 1 << 20) {
                std::time::Duration::from_secs(600)
            } else {
                http::REQUEST_TIMEOUT
            };
            let response = request.timeout(timeout).send().await.map_err(|e| self.transport(what, &e))?;
            if response.status() != StatusCode::UNAUTHORIZED {
                if response.status() == StatusCode::FORBIDDEN {
                    let text = response.text().await.unwrap_or_default();
                    let (_, message) = error_of(&text);
                    return Err(OciError::Auth {
                        registry: self.repository.registry.clone(),
                        message: format!(
                            "{what} was denied (HTTP 403: {message}); the credentials need {} on {}",
                            call.actions, self.repository.name
                        ),
                    });
                }
                return Ok(response);
            }
            let challenge = self.remember_challenge(response.headers());
            if round == 1 || challenge.is_none() {
                let message = match &self.credentials {
                    Some(c) => format!("{what}: the registry refused the credentials from {} (HTTP 401)", c.source),
                    None => return Err(self.no_credentials("credentials")),
                };
                return Err(OciError::Auth { registry: self.repository.registry.clone(), message });
            }
            if let Some(Challenge::Bearer { scope, .. }) = challenge {
                challenged = scope;
            }
        }
        Err(OciError::Auth { registry: self.repository.registry.clone(), message: format!("{what}: not authorised") })
    }

    /// Sends `call` once (authenticating as the registry asks), whatever the status, for loops that resume by hand.
    pub async fn send_unretried(&self, call: Call, what: &str) -> Result<Response, OciError> {
        self.send_once(&call, what).await
    }

    /// Sends `call`, retrying transient failures (transport errors, 5xx, 429) with the retry policy; answers with
    /// a status in `expected` are returned, any other is an error naming `what`.
    pub async fn send(&self, call: Call, what: &str, expected: &[u16]) -> Result<Response, OciError> {
        self.retry
            .run(
                |_| async {
                    let response = self.send_once(&call, what).await?;
                    let status = response.status().as_u16();
                    if expected.contains(&status) {
                        return Ok(response);
                    }
                    Err(self.error(response, what).await)
                },
                |e: &OciError| e.verdict(),
            )
            .await
    }

    /// The error a response with an unexpected status means.
    pub async fn error(&self, response: Response, what: &str) -> OciError {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let (code, message) = error_of(&text);
        if status == 405 || code.as_deref() == Some("UNSUPPORTED") && what.starts_with("deleting") {
            return OciError::DeleteUnsupported {
                repository: self.shown.clone(),
                what: what.trim_start_matches("deleting ").to_string(),
                status,
                code,
            };
        }
        OciError::Registry {
            repository: self.shown.clone(),
            what: what.to_string(),
            status,
            code,
            message,
            retry: http::is_transient_status(status),
        }
    }

    /// The retry policy's verdict for `error` (for loops that retry by hand, resuming uploads).
    pub fn verdict(error: &OciError) -> Verdict {
        error.verdict()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_read_code_and_message() {
        let body = r#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":{"reason":"x"}}]}"#;
        let (code, message) = error_of(body);
        assert_eq!(code.as_deref(), Some("MANIFEST_INVALID"));
        assert!(message.starts_with("manifest invalid"), "{message}");
        assert_eq!(error_of("<html>Bad Gateway</html>").0, None);
    }
}
