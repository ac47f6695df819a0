//! clouds.yaml, as every OpenStack client reads it: the first of `OS_CLIENT_CONFIG_FILE`, `./clouds.yaml`,
//! `~/.config/openstack/clouds.yaml` and `/etc/openstack/clouds.yaml`, with the same cloud of the first
//! `secure.yaml` (`OS_CLIENT_SECURE_FILE`, then the same directories) merged over it; the cloud is the `cloud` key
//! or `OS_CLOUD`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use super::error::OpenStackError;

/// A string that never shows in logs or `Debug` output (passwords, secrets, tokens).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How uplosi gets a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthType {
    /// `password` / `v3password`: user and password, through Keystone v3.
    Password,
    /// `v3applicationcredential`: an application credential, through Keystone v3.
    ApplicationCredential,
    /// `token` / `v3token`: an existing token, rescoped through Keystone v3 to get the catalog.
    Token,
    /// `none` / `noauth`: no Keystone; the image endpoint is given explicitly.
    None,
}

impl AuthType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "password" | "v3password" => AuthType::Password,
            "v3applicationcredential" | "applicationcredential" | "application_credential" => {
                AuthType::ApplicationCredential
            }
            "token" | "v3token" => AuthType::Token,
            "none" | "noauth" => AuthType::None,
            _ => return None,
        })
    }
}

/// One cloud entry, merged and checked.
#[derive(Clone, Debug)]
pub struct Cloud {
    /// Its name.
    pub name: String,
    /// The clouds.yaml it came from.
    pub file: PathBuf,
    /// How to authenticate.
    pub auth_type: AuthType,
    /// The `auth` mapping's plain values (secrets are in [`Cloud::secret`]).
    auth: BTreeMap<String, String>,
    /// `password`, `application_credential_secret` and `token`.
    secrets: BTreeMap<String, Secret>,
    /// `region_name`.
    pub region_name: Option<String>,
    /// `interface` (or `endpoint_type`), normalised: `public`, `internal` or `admin`.
    pub interface: String,
    /// `cacert`.
    pub cacert: Option<PathBuf>,
    /// `verify` (`insecure: true` turns it off too).
    pub verify: bool,
    /// `image_endpoint_override`, or `auth.endpoint` for `none`.
    pub image_endpoint: Option<String>,
}

const SECRET_KEYS: [&str; 3] = ["password", "application_credential_secret", "token"];

impl Cloud {
    /// A plain `auth` value.
    pub fn auth(&self, key: &str) -> Option<&str> {
        self.auth.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A secret `auth` value.
    pub fn secret(&self, key: &str) -> Option<&Secret> {
        self.secrets.get(key).filter(|v| !v.0.is_empty())
    }

    /// An error about this entry.
    pub fn error(&self, message: impl Into<String>) -> OpenStackError {
        OpenStackError::CloudEntry { cloud: self.name.clone(), path: self.file.clone(), message: message.into() }
    }
}

/// Where clouds.yaml and secure.yaml are looked for.
#[derive(Clone, Debug)]
pub struct SearchPath {
    /// Candidate clouds.yaml files, first wins.
    pub clouds: Vec<PathBuf>,
    /// Candidate secure.yaml files, first wins.
    pub secure: Vec<PathBuf>,
}

impl SearchPath {
    /// The standard places, from the environment.
    pub fn from_env() -> Self {
        let mut dirs = vec![PathBuf::from(".")];
        if let Some(home) = std::env::var_os("HOME") {
            dirs.push(Path::new(&home).join(".config/openstack"));
        }
        dirs.push(PathBuf::from("/etc/openstack"));
        let list = |env: &str, names: &[&str]| {
            let mut files: Vec<PathBuf> =
                std::env::var_os(env).filter(|v| !v.is_empty()).map(PathBuf::from).into_iter().collect();
            for dir in &dirs {
                files.extend(names.iter().map(|n| dir.join(n)));
            }
            files
        };
        Self {
            clouds: list("OS_CLIENT_CONFIG_FILE", &["clouds.yaml", "clouds.yml"]),
            secure: list("OS_CLIENT_SECURE_FILE", &["secure.yaml", "secure.yml"]),
        }
    }
}

/// The name of the cloud to use: the config's `cloud`, else `OS_CLOUD`.
pub fn cloud_name(configured: Option<&str>) -> Result<String, OpenStackError> {
    configured
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .or_else(|| std::env::var("OS_CLOUD").ok().filter(|c| !c.is_empty()))
        .ok_or(OpenStackError::NoCloudName)
}

/// Loads cloud `name` from the first clouds.yaml of `search`, with secure.yaml merged in.
pub fn load(search: &SearchPath, name: &str) -> Result<Cloud, OpenStackError> {
    let path = search
        .clouds
        .iter()
        .find(|p| p.is_file())
        .ok_or_else(|| OpenStackError::NoCloudsFile { searched: search.clouds.clone() })?;
    let clouds = read_clouds(path)?;
    let Some(mut entry) = clouds.get(name).cloned() else {
        let known = clouds.keys().filter_map(Value::as_str).map(str::to_string).collect();
        return Err(OpenStackError::UnknownCloud { name: name.to_string(), path: path.clone(), known });
    };
    if let Some(secure_path) = search.secure.iter().find(|p| p.is_file())
        && let Some(secure) = read_clouds(secure_path)?.get(name)
    {
        merge(&mut entry, secure.clone());
    }
    parse_entry(name, path, &entry)
}

fn read_clouds(path: &Path) -> Result<Mapping, OpenStackError> {
    let fail = |message: String| OpenStackError::CloudsFile { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let doc: Value = serde_yaml_ng::from_str(&text).map_err(|e| fail(format!("not valid YAML: {e}")))?;
    match doc.get("clouds") {
        Some(Value::Mapping(clouds)) => Ok(clouds.clone()),
        Some(_) => Err(fail("`clouds` must be a mapping of cloud names to settings".into())),
        None if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("secure")) => Ok(Mapping::new()),
        None => Err(fail("no top-level `clouds:` mapping".into())),
    }
}

/// Merges `over` into `base`: mappings recursively, everything else replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn flag(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Some(true),
            "false" | "no" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn parse_entry(name: &str, path: &Path, entry: &Value) -> Result<Cloud, OpenStackError> {
    let fail =
        |message: String| OpenStackError::CloudEntry { cloud: name.to_string(), path: path.to_path_buf(), message };
    if !entry.is_mapping() {
        return Err(fail("the entry must be a mapping of settings".into()));
    }
    if entry.get("profile").is_some() {
        return Err(fail(
            "vendor `profile`s are not supported; write the profile's auth_url, region_name and interface into the \
             entry"
                .into(),
        ));
    }
    let text = |key: &str| entry.get(key).and_then(scalar).filter(|v| !v.is_empty());

    let mut auth = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    match entry.get("auth") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(map)) => {
            for (key, value) in map {
                let (Some(key), Some(value)) = (key.as_str(), scalar(value)) else { continue };
                if SECRET_KEYS.contains(&key) {
                    secrets.insert(key.to_string(), Secret(value));
                } else {
                    auth.insert(key.to_string(), value);
                }
            }
        }
        Some(_) => return Err(fail("`auth` must be a mapping".into())),
    }

    let auth_type_name = text("auth_type").unwrap_or_else(|| "password".to_string());
    let auth_type = AuthType::parse(&auth_type_name).ok_or_else(|| {
        fail(format!(
            "auth_type \"{auth_type_name}\" is not supported; use password, v3password, v3applicationcredential, \
             token, v3token or none"
        ))
    })?;

    let interface = match text("interface").or_else(|| text("endpoint_type")).as_deref() {
        None => "public".to_string(),
        Some(i) => {
            let short = i.trim_end_matches("URL");
            if !["public", "internal", "admin"].contains(&short) {
                return Err(fail(format!("interface \"{i}\" must be public, internal or admin")));
            }
            short.to_string()
        }
    };
    let insecure = flag(entry.get("insecure")).unwrap_or(false);
    let verify = match entry.get("verify") {
        None => true,
        Some(v) => flag(Some(v)).ok_or_else(|| fail("verify must be true or false".into()))?,
    } && !insecure;
    let image_endpoint = text("image_endpoint_override")
        .or_else(|| (auth_type == AuthType::None).then(|| auth.get("endpoint").cloned()).flatten());

    let cloud = Cloud {
        name: name.to_string(),
        file: path.to_path_buf(),
        auth_type,
        auth,
        secrets,
        region_name: text("region_name"),
        interface,
        cacert: text("cacert").map(PathBuf::from),
        verify,
        image_endpoint,
    };
    check_auth(&cloud)?;
    Ok(cloud)
}

/// Fails early, naming the missing key, when the auth type cannot work with what the entry gives.
fn check_auth(cloud: &Cloud) -> Result<(), OpenStackError> {
    let need = |key: &str, why: &str| -> Result<(), OpenStackError> {
        if cloud.auth(key).is_none() && cloud.secret(key).is_none() {
            return Err(cloud.error(format!("auth.{key} is missing; {why}")));
        }
        Ok(())
    };
    match cloud.auth_type {
        AuthType::None => {
            if cloud.image_endpoint.is_none() {
                return Err(cloud.error(
                    "auth_type none needs the image service's URL: set image_endpoint_override or auth.endpoint",
                ));
            }
        }
        AuthType::Password => {
            need("auth_url", "it is Keystone's URL")?;
            need("password", "auth_type password needs it (secure.yaml is a good place for it)")?;
            if cloud.auth("username").is_none() && cloud.auth("user_id").is_none() {
                return Err(cloud.error("auth.username or auth.user_id is missing"));
            }
        }
        AuthType::ApplicationCredential => {
            need("auth_url", "it is Keystone's URL")?;
            need("application_credential_secret", "v3applicationcredential needs it")?;
            if cloud.auth("application_credential_id").is_none() && cloud.auth("application_credential_name").is_none()
            {
                return Err(
                    cloud.error("auth.application_credential_id or auth.application_credential_name is missing")
                );
            }
        }
        AuthType::Token => {
            need("auth_url", "it is Keystone's URL")?;
            need("token", "auth_type token needs it")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(dir: &Path) -> SearchPath {
        SearchPath {
            clouds: vec![dir.join("missing.yaml"), dir.join("clouds.yaml")],
            secure: vec![dir.join("secure.yaml")],
        }
    }

    #[test]
    fn secure_yaml_is_merged_into_the_named_cloud() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("clouds.yaml"),
            "clouds:\n  prod:\n    auth:\n      auth_url: https://keystone.example:5000/v3\n      username: ci\n      \
             project_name: images\n      user_domain_name: Default\n    region_name: RegionTwo\n    interface: \
             internalURL\n    cacert: /etc/ssl/ca.pem\n  other:\n    auth_type: none\n    auth: {endpoint: http://x}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("secure.yaml"), "clouds:\n  prod:\n    auth:\n      password: s3cret\n")
            .expect("write");
        let cloud = load(&search(dir.path()), "prod").expect("loads");
        assert_eq!(cloud.auth_type, AuthType::Password);
        assert_eq!(cloud.auth("username"), Some("ci"));
        assert_eq!(cloud.auth("password"), None, "secrets are kept apart");
        assert_eq!(cloud.secret("password").map(Secret::expose), Some("s3cret"));
        assert_eq!(cloud.region_name.as_deref(), Some("RegionTwo"));
        assert_eq!(cloud.interface, "internal");
        assert_eq!(cloud.cacert, Some(PathBuf::from("/etc/ssl/ca.pem")));
        assert!(cloud.verify);
        assert!(!format!("{cloud:?}").contains("s3cret"), "Debug never shows secrets");

        let none = load(&search(dir.path()), "other").expect("loads");
        assert_eq!(none.auth_type, AuthType::None);
        assert_eq!(none.image_endpoint.as_deref(), Some("http://x"));
    }

    #[test]
    fn problems_name_the_file_the_cloud_and_the_fix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = load(&search(dir.path()), "prod").unwrap_err();
        assert!(matches!(err, OpenStackError::NoCloudsFile { ref searched } if searched.len() == 2), "{err}");

        let write = |text: &str| std::fs::write(dir.path().join("clouds.yaml"), text).expect("write");
        write("clouds:\n  a: {auth_type: none, image_endpoint_override: http://x}\n  b: {auth_type: none}\n");
        let err = load(&search(dir.path()), "prod").unwrap_err().to_string();
        assert!(err.contains("cloud \"prod\" is not in") && err.contains("a, b"), "{err}");
        let err = load(&search(dir.path()), "b").unwrap_err().to_string();
        assert!(err.contains("image_endpoint_override"), "{err}");

        write("clouds:\n  p:\n    auth: {auth_url: http://k, username: u}\n");
        let err = load(&search(dir.path()), "p").unwrap_err().to_string();
        assert!(err.contains("auth.password is missing"), "{err}");
        write("clouds:\n  p:\n    auth_type: v3oidcpassword\n");
        let err = load(&search(dir.path()), "p").unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
        write(
            "clouds:\n  p:\n    auth_type: v3applicationcredential\n    auth: {auth_url: http://k, application_credential_secret: s}\n",
        );
        let err = load(&search(dir.path()), "p").unwrap_err().to_string();
        assert!(err.contains("application_credential_id"), "{err}");
        write("clouds: [\n");
        let err = load(&search(dir.path()), "p").unwrap_err().to_string();
        assert!(err.contains("not valid YAML"), "{err}");
    }

    #[test]
    fn verify_and_insecure_turn_checking_off() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (line, verify) in [("verify: false", false), ("insecure: true", false), ("verify: true", true)] {
            std::fs::write(
                dir.path().join("clouds.yaml"),
                format!("clouds:\n  c:\n    auth_type: noauth\n    image_endpoint_override: https://g\n    {line}\n"),
            )
            .expect("write");
            assert_eq!(load(&search(dir.path()), "c").expect("loads").verify, verify, "{line}");
        }
    }
}
