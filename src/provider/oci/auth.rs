//! Registry credentials, found where oras, skopeo and podman find them, and the distribution spec's token flow.
//!
//! Files, first hit wins: `REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$XDG_CONFIG_HOME/containers/auth.json` (podman, skopeo), `$DOCKER_CONFIG/config.json`,
//! `~/.docker/config.json` (docker, oras). An entry is keyed by the registry (`ghcr.io`, `https://ghcr.io`,
//! Docker Hub's `https://index.docker.io/v1/`) or by a repository under it (the most specific wins, as podman
//! does), and holds a base64 `auth` of `user:password`, an `identitytoken` (exchanged for access tokens) or a
//! `registrytoken`; `credHelpers` and `credsStore` name a `docker-credential-NAME` program to ask instead.
//!
//! Secrets go into request headers only: no message, log line or error carries them.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::error::OciError;
use crate::config::registry::Repository;

/// What a registry gets to authenticate.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name (basic auth, token requests).
    pub username: Option<String>,
    /// Password (basic auth, token requests).
    pub password: Option<String>,
    /// An OAuth2 refresh token exchanged at the token endpoint.
    pub identity_token: Option<String>,
    /// A bearer token sent as it is.
    pub registry_token: Option<String>,
    /// Where they came from, for messages.
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves.
        f.debug_struct("Credentials").field("username", &self.username).field("source", &self.source).finish()
    }
}

/// The files searched, in order, from the environment.
pub fn search_path() -> Vec<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = env("HOME");
    let mut files = Vec::new();
    files.extend(env("REGISTRY_AUTH_FILE"));
    if let Some(runtime) = env("XDG_RUNTIME_DIR") {
        files.push(runtime.join("containers/auth.json"));
    }
    match env("XDG_CONFIG_HOME") {
        Some(config) => files.push(config.join("containers/auth.json")),
        None => files.extend(home.as_ref().map(|h| h.join(".config/containers/auth.json"))),
    }
    match env("DOCKER_CONFIG") {
        Some(dir) => files.push(dir.join("config.json")),
        None => files.extend(home.as_ref().map(|h| h.join(".docker/config.json"))),
    }
    files
}

/// The keys an entry for `repository` may be stored under, most specific first.
fn keys(repository: &Repository) -> Vec<String> {
    let mut keys = Vec::new();
    let mut path = format!("{}/{}", repository.registry, repository.name);
    loop {
        keys.push(path.clone());
        match path.rsplit_once('/') {
            Some((parent, _)) => path = parent.to_string(),
            None => break,
        }
    }
    let host = repository.registry.clone();
    keys.extend([format!("https://{host}"), format!("http://{host}"), format!("https://{host}/v1/")]);
    if host == "docker.io" {
        keys.extend(["https://index.docker.io/v1/".to_string(), "index.docker.io".to_string()]);
    }
    keys
}

/// The credentials for `repository`, if any file has them; a file that exists but cannot be read or parsed is an
/// error naming it.
pub fn lookup(repository: &Repository, files: &[PathBuf]) -> Result<Option<Credentials>, OciError> {
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(OciError::CredentialsFile { path: path.clone(), message: e.to_string() }),
        };
        let bad = |message: String| OciError::CredentialsFile { path: path.clone(), message };
        let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        if let Some(found) = from_config(&config, repository, path)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn from_config(
    config: &serde_json::Value,
    repository: &Repository,
    path: &Path,
) -> Result<Option<Credentials>, OciError> {
    let bad = |message: String| OciError::CredentialsFile { path: path.to_path_buf(), message };
    // A credential helper for this registry, then the store for all.
    let helper = config["credHelpers"][&repository.registry].as_str().or_else(|| config["credsStore"].as_str());
    let auths = &config["auths"];
    for key in keys(repository) {
        let Some(entry) = auths.get(&key) else { continue };
        let source = format!("{} (\"{key}\")", path.display());
        let mut credentials = Credentials { source, ..Credentials::default() };
        if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
            let decoded = BASE64
                .decode(auth.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(|| bad(format!("the `auth` of \"{key}\" is not base64 of user:password")))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| bad(format!("the `auth` of \"{key}\" decodes to no user:password pair")))?;
            credentials.username = Some(user.to_string());
            credentials.password = Some(password.to_string());
        }
        credentials.identity_token = entry["identitytoken"].as_str().filter(|t| !t.is_empty()).map(str::to_string);
        credentials.registry_token = entry["registrytoken"].as_str().filter(|t| !t.is_empty()).map(str::to_string);
        if credentials.username.is_some()
            || credentials.identity_token.is_some()
            || credentials.registry_token.is_some()
        {
            return Ok(Some(credentials));
        }
    }
    match helper {
        Some(helper) => ask_helper(helper, &repository.registry, path),
        None => Ok(None),
    }
}

/// `docker-credential-HELPER get` with the registry on stdin, as docker asks it.
fn ask_helper(helper: &str, registry: &str, path: &Path) -> Result<Option<Credentials>, OciError> {
    use std::io::Write;
    let program = format!("docker-credential-{helper}");
    let fail = |message: String| OciError::CredentialHelper {
        helper: helper.to_string(),
        path: path.to_path_buf(),
        registry: registry.to_string(),
        message,
    };
    let mut child = std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(registry.as_bytes()).map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // "credentials not found in native keychain": nothing stored for this registry.
        if text.contains("not found") {
            return Ok(None);
        }
        return Err(fail(format!("it exited with {}", out.status)));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("its answer is not JSON: {e}")))?;
    let user = answer["Username"].as_str().unwrap_or_default();
    let secret = answer["Secret"].as_str().unwrap_or_default().to_string();
    let source = format!("docker-credential-{helper}");
    Ok(Some(if user == "<token>" {
        Credentials { identity_token: Some(secret), source, ..Credentials::default() }
    } else {
        Credentials { username: Some(user.to_string()), password: Some(secret), source, ..Credentials::default() }
    }))
}

/// A `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The service to ask the token for.
        service: Option<String>,
        /// The scope the request needs.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    // key="value" pairs; values may hold commas (scopes), so split on quotes, not commas.
    let mut params = std::collections::BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(key, value.to_string());
        rest = next.trim_start_matches(',').trim();
    }
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

/// The `Authorization: Basic …` value of `credentials`, if they hold a user and password.
pub fn basic(credentials: &Credentials) -> Option<String> {
    let user = credentials.username.as_deref()?;
    let password = credentials.password.as_deref().unwrap_or_default();
    Some(format!("Basic {}", BASE64.encode(format!("{user}:{password}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(text: &str) -> Repository {
        Repository::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    #[test]
    fn docker_and_podman_files_are_read_most_specific_first() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let podman = write(
            dir.path(),
            "auth.json",
            r#"{"auths": {"ghcr.io/org/podvm": {"auth": "dXNlcjpzZWNyZXQ="}, "ghcr.io": {"auth": "b3RoZXI6eA=="}}}"#,
        );
        let docker = write(
            dir.path(),
            "config.json",
            r#"{"auths": {"https://127.0.0.1:5000": {"identitytoken": "refresh"}, "https://index.docker.io/v1/": {"auth": "aHViOmh1Yg=="}}}"#,
        );
        let files = [dir.path().join("missing.json"), podman, docker];
        let found = lookup(&repo("ghcr.io/org/podvm"), &files).unwrap_or_default().unwrap_or_default();
        assert_eq!((found.username.as_deref(), found.password.as_deref()), (Some("user"), Some("secret")));
        let other = lookup(&repo("ghcr.io/org/other"), &files).unwrap_or_default().unwrap_or_default();
        assert_eq!(other.username.as_deref(), Some("other"));
        let local = lookup(&repo("127.0.0.1:5000/podvm"), &files).unwrap_or_default().unwrap_or_default();
        assert_eq!(local.identity_token.as_deref(), Some("refresh"));
        let hub = lookup(&repo("ubuntu"), &files).unwrap_or_default().unwrap_or_default();
        assert_eq!(hub.username.as_deref(), Some("hub"));
        assert!(lookup(&repo("quay.io/x/y"), &files).unwrap_or_default().is_none());
        assert!(!format!("{found:?}").contains("secret"), "secrets are not in Debug output");
    }

    #[test]
    fn a_broken_file_is_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let broken = write(dir.path(), "config.json", r#"{"auths": {"ghcr.io": {"auth": "no-colon-here"}}}"#);
        match lookup(&repo("ghcr.io/org/podvm"), std::slice::from_ref(&broken)) {
            Err(OciError::CredentialsFile { path, message }) => {
                assert_eq!(path, broken);
                assert!(message.contains("ghcr.io"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let not_json = write(dir.path(), "bad.json", "auths:");
        assert!(matches!(lookup(&repo("ghcr.io/a"), &[not_json]), Err(OciError::CredentialsFile { .. })));
    }

    #[test]
    fn challenges_parse_as_the_distribution_spec_writes_them() {
        assert_eq!(parse_challenge("Basic realm=\"Registry Realm\""), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://auth.example/token\",service=\"registry.example\",scope=\"repository:org/podvm:pull,push\""
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:org/podvm:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge("Negotiate x"), None);
        let creds = Credentials { username: Some("u".into()), password: Some("p".into()), ..Credentials::default() };
        assert_eq!(basic(&creds).as_deref(), Some("Basic dTpw"));
    }
}
