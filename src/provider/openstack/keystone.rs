//! Keystone v3: a token for the cloud entry's credentials, and the image endpoint from the token's catalog; or,
//! for `auth_type: none`, just the configured endpoint.

use serde_json::{Value, json};

use super::clouds::{AuthType, Cloud, Secret};
use super::error::{OpenStackError, transport_message};
use crate::transfer::http::{REQUEST_TIMEOUT, error_text};

/// What talking to the image service needs.
#[derive(Clone, Debug)]
pub struct Session {
    /// `X-Auth-Token`, absent for `auth_type: none`.
    pub token: Option<Secret>,
    /// The image service's root URL, without a version.
    pub image_url: String,
    /// The project the token is scoped to, to find this project's images.
    pub project_id: Option<String>,
}

/// Authenticates as `cloud` says and finds its image endpoint.
pub async fn authenticate(client: &reqwest::Client, cloud: &Cloud) -> Result<Session, OpenStackError> {
    if cloud.auth_type == AuthType::None {
        let url = cloud.image_endpoint.clone().ok_or_else(|| cloud.error("no image endpoint"))?;
        return Ok(Session { token: None, image_url: version_root(&url), project_id: None });
    }
    let auth_url = cloud.auth("auth_url").ok_or_else(|| cloud.error("auth.auth_url is missing"))?;
    let url = tokens_url(auth_url);
    let body = token_request(cloud)?;
    let what = format!("cloud \"{}\": getting a Keystone token", cloud.name);
    let response =
        client.post(&url).timeout(REQUEST_TIMEOUT).json(&body).send().await.map_err(|e| OpenStackError::Transport {
            what: what.clone(),
            message: transport_message(&e),
            retry: true,
        })?;
    let status = response.status();
    let token = response.headers().get("X-Subject-Token").and_then(|v| v.to_str().ok()).map(Secret::new);
    let text = response.text().await.unwrap_or_default();
    if matches!(status.as_u16(), 400 | 401 | 403 | 404) {
        return Err(OpenStackError::AuthRejected {
            cloud: cloud.name.clone(),
            url,
            status: status.as_u16(),
            message: error_text(&text),
        });
    }
    if !status.is_success() {
        return Err(OpenStackError::Api {
            what,
            status: status.as_u16(),
            message: error_text(&text),
            retry_after: None,
        });
    }
    let token = token.ok_or_else(|| OpenStackError::Unexpected {
        what: what.clone(),
        message: "no X-Subject-Token header in Keystone's answer".into(),
    })?;
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| OpenStackError::Unexpected { what: what.clone(), message: format!("not JSON: {e}") })?;
    let project_id = body.pointer("/token/project/id").and_then(Value::as_str).map(str::to_string);
    let image_url = match &cloud.image_endpoint {
        Some(url) => url.clone(),
        None => image_endpoint(cloud, body.pointer("/token/catalog").unwrap_or(&Value::Null))?,
    };
    Ok(Session { token: Some(token), image_url: version_root(&image_url), project_id })
}

/// `…/v3/auth/tokens` for an `auth_url` with or without its version.
fn tokens_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") { format!("{base}/auth/tokens") } else { format!("{base}/v3/auth/tokens") }
}

/// The service root without a trailing version (`…/v2`, `…/v2.0`), since uplosi appends `/v2/…` itself.
fn version_root(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((root, last)) if last.starts_with("v2") && last[2..].chars().all(|c| c.is_ascii_digit() || c == '.') => {
            root.to_string()
        }
        _ => trimmed.to_string(),
    }
}

/// A domain reference from `*_domain_id` / `*_domain_name`, falling back to `domain_id` / `domain_name`.
fn domain(cloud: &Cloud, prefix: &str) -> Option<Value> {
    let id = cloud.auth(&format!("{prefix}_domain_id")).or_else(|| cloud.auth("domain_id"));
    let name = cloud.auth(&format!("{prefix}_domain_name")).or_else(|| cloud.auth("domain_name"));
    match (id, name) {
        (Some(id), _) => Some(json!({ "id": id })),
        (None, Some(name)) => Some(json!({ "name": name })),
        (None, None) => None,
    }
}

/// The project scope, if the entry names a project.
fn scope(cloud: &Cloud) -> Result<Option<Value>, OpenStackError> {
    let id = cloud.auth("project_id").or_else(|| cloud.auth("tenant_id"));
    let name = cloud.auth("project_name").or_else(|| cloud.auth("tenant_name"));
    Ok(match (id, name) {
        (Some(id), _) => Some(json!({ "project": { "id": id } })),
        (None, Some(name)) => {
            let domain = domain(cloud, "project").ok_or_else(|| {
                cloud.error("auth.project_name needs auth.project_domain_name or project_domain_id (or domain_name)")
            })?;
            Some(json!({ "project": { "name": name, "domain": domain } }))
        }
        (None, None) => None,
    })
}

/// The body of `POST /v3/auth/tokens` for the entry's auth type.
pub fn token_request(cloud: &Cloud) -> Result<Value, OpenStackError> {
    let secret = |key: &str| {
        cloud.secret(key).map(|s| s.expose().to_string()).ok_or_else(|| cloud.error(format!("auth.{key} is missing")))
    };
    let (identity, scoped) = match cloud.auth_type {
        AuthType::Password => {
            let user = match (cloud.auth("user_id"), cloud.auth("username")) {
                (Some(id), _) => json!({ "id": id, "password": secret("password")? }),
                (None, Some(name)) => {
                    let domain = domain(cloud, "user").ok_or_else(|| {
                        cloud.error("auth.username needs auth.user_domain_name or user_domain_id (or domain_name)")
                    })?;
                    json!({ "name": name, "domain": domain, "password": secret("password")? })
                }
                (None, None) => return Err(cloud.error("auth.username or auth.user_id is missing")),
            };
            (json!({ "methods": ["password"], "password": { "user": user } }), true)
        }
        AuthType::ApplicationCredential => {
            let credential =
                match (cloud.auth("application_credential_id"), cloud.auth("application_credential_name")) {
                    (Some(id), _) => json!({ "id": id, "secret": secret("application_credential_secret")? }),
                    (None, Some(name)) => {
                        let user = match (cloud.auth("user_id"), cloud.auth("username")) {
                            (Some(id), _) => json!({ "id": id }),
                            (None, Some(username)) => {
                                let domain = domain(cloud, "user").ok_or_else(|| {
                                    cloud.error("auth.username needs auth.user_domain_name or user_domain_id")
                                })?;
                                json!({ "name": username, "domain": domain })
                            }
                            (None, None) => {
                                return Err(cloud.error(
                                    "auth.application_credential_name needs auth.user_id or auth.username to say whose",
                                ));
                            }
                        };
                        json!({ "name": name, "user": user, "secret": secret("application_credential_secret")? })
                    }
                    (None, None) => {
                        return Err(cloud
                            .error("auth.application_credential_id or auth.application_credential_name is missing"));
                    }
                };
            // An application credential is bound to its project; Keystone rejects an explicit scope.
            (json!({ "methods": ["application_credential"], "application_credential": credential }), false)
        }
        AuthType::Token => (json!({ "methods": ["token"], "token": { "id": secret("token")? } }), true),
        AuthType::None => return Err(cloud.error("auth_type none does not use Keystone")),
    };
    let mut auth = json!({ "identity": identity });
    if scoped && let Some(scope) = scope(cloud)? {
        auth["scope"] = scope;
    }
    Ok(json!({ "auth": auth }))
}

/// The image endpoint of `catalog` for the entry's interface and region.
pub fn image_endpoint(cloud: &Cloud, catalog: &Value) -> Result<String, OpenStackError> {
    let mut available = Vec::new();
    let endpoints = catalog
        .as_array()
        .into_iter()
        .flatten()
        .filter(|service| service.get("type").and_then(Value::as_str) == Some("image"))
        .flat_map(|service| service.get("endpoints").and_then(Value::as_array).into_iter().flatten());
    for endpoint in endpoints {
        let field = |key: &str| endpoint.get(key).and_then(Value::as_str).unwrap_or_default();
        let region = if field("region_id").is_empty() { field("region") } else { field("region_id") };
        let (interface, url) = (field("interface"), field("url"));
        let region_matches =
            cloud.region_name.as_deref().is_none_or(|wanted| wanted == region || wanted == field("region"));
        if interface == cloud.interface && region_matches && !url.is_empty() {
            return Ok(url.to_string());
        }
        available.push(format!("{interface} {region} {url}"));
    }
    Err(OpenStackError::NoImageEndpoint {
        cloud: cloud.name.clone(),
        region: cloud.region_name.clone(),
        interface: cloud.interface.clone(),
        available,
    })
}

#[cfg(test)]
mod tests {
    use super::super::clouds::{SearchPath, load};
    use super::*;

    fn cloud(entry: &str) -> Cloud {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("clouds.yaml"), format!("clouds:\n  c:\n{entry}")).expect("write");
        let search = SearchPath { clouds: vec![dir.path().join("clouds.yaml")], secure: vec![] };
        load(&search, "c").expect("loads")
    }

    #[test]
    fn password_requests_name_the_user_domain_and_the_project_scope() {
        let c = cloud(
            "    auth:\n      auth_url: http://k:5000\n      username: ci\n      password: pw\n      \
             user_domain_name: Default\n      project_name: images\n      project_domain_id: default\n",
        );
        assert_eq!(
            token_request(&c).expect("body"),
            json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {"name": "ci", "domain": {"name": "Default"}, "password": "pw"}}},
                "scope": {"project": {"name": "images", "domain": {"id": "default"}}}
            }})
        );
        assert_eq!(tokens_url("http://k:5000"), "http://k:5000/v3/auth/tokens");
        assert_eq!(tokens_url("http://k:5000/v3/"), "http://k:5000/v3/auth/tokens");
    }

    #[test]
    fn application_credentials_and_tokens_have_their_own_methods() {
        let c = cloud(
            "    auth_type: v3applicationcredential\n    auth:\n      auth_url: http://k/v3\n      \
             application_credential_id: ac1\n      application_credential_secret: sec\n      project_name: ignored\n",
        );
        assert_eq!(
            token_request(&c).expect("body"),
            json!({"auth": {"identity": {"methods": ["application_credential"], "application_credential": {"id": "ac1", "secret": "sec"}}}})
        );
        let c = cloud(
            "    auth_type: v3token\n    auth:\n      auth_url: http://k/v3\n      token: tok\n      project_id: p1\n",
        );
        assert_eq!(
            token_request(&c).expect("body"),
            json!({"auth": {"identity": {"methods": ["token"], "token": {"id": "tok"}}, "scope": {"project": {"id": "p1"}}}})
        );
        let c = cloud("    auth:\n      auth_url: http://k\n      username: u\n      password: p\n");
        assert!(token_request(&c).unwrap_err().to_string().contains("user_domain_name"));
    }

    #[test]
    fn the_catalog_is_searched_by_interface_and_region() {
        let catalog = json!([
            {"type": "identity", "endpoints": [{"interface": "public", "region_id": "R1", "url": "http://k"}]},
            {"type": "image", "endpoints": [
                {"interface": "internal", "region_id": "R1", "url": "http://g-int"},
                {"interface": "public", "region_id": "R1", "url": "http://g1/v2"},
                {"interface": "public", "region_id": "R2", "region": "R2", "url": "http://g2"}
            ]}
        ]);
        let mut c =
            cloud("    auth:\n      auth_url: http://k\n      user_id: u\n      password: p\n    region_name: R2\n");
        assert_eq!(image_endpoint(&c, &catalog).expect("found"), "http://g2");
        c.interface = "internal".into();
        let err = image_endpoint(&c, &catalog).unwrap_err().to_string();
        assert!(
            err.contains("no internal image endpoint in region R2") && err.contains("public R1 http://g1/v2"),
            "{err}"
        );
        c.region_name = None;
        assert_eq!(image_endpoint(&c, &catalog).expect("found"), "http://g-int");
        assert_eq!(version_root("http://g1/v2"), "http://g1");
        assert_eq!(version_root("http://g1/image/v2.0/"), "http://g1/image");
        assert_eq!(version_root("http://g1:9292"), "http://g1:9292");
    }
}
