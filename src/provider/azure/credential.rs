//! Entra ID credentials, found the way the other Azure SDKs' `DefaultAzureCredential` finds them: a service
//! principal from the environment (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, and `AZURE_CLIENT_SECRET` or
//! `AZURE_CLIENT_CERTIFICATE_PATH`), workload identity
//! (`AZURE_FEDERATED_TOKEN_FILE`), the Azure CLI, then managed identity. `AZURE_TOKEN_CREDENTIALS` narrows the
//! chain: `dev` (Azure CLI only), `prod` (environment, workload and managed identity), or one credential's name.
//! `AZURE_AUTHORITY_HOST` moves the token endpoint (sovereign clouds, Azure Stack), as azure_identity honours it.

use std::sync::Arc;

use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions};
use azure_identity::{
    AzureCliCredential, ClientAssertionCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, WorkloadIdentityCredential,
};

use super::certificate::CertificateAssertion;

use super::error::AzureError;
use crate::logging::redact;

/// One link of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A service principal from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` or
    /// `AZURE_CLIENT_CERTIFICATE_PATH`.
    Environment,
    /// A federated token file (`AZURE_FEDERATED_TOKEN_FILE`), as Kubernetes and GitHub OIDC set up.
    WorkloadIdentity,
    /// `az account get-access-token`.
    AzureCli,
    /// The instance metadata service of an Azure VM, App Service or Arc machine.
    ManagedIdentity,
}

impl Source {
    /// The name `AZURE_TOKEN_CREDENTIALS` uses for it.
    pub fn name(self) -> &'static str {
        match self {
            Source::Environment => "EnvironmentCredential",
            Source::WorkloadIdentity => "WorkloadIdentityCredential",
            Source::AzureCli => "AzureCliCredential",
            Source::ManagedIdentity => "ManagedIdentityCredential",
        }
    }
}

const ALL: [Source; 4] = [Source::Environment, Source::WorkloadIdentity, Source::AzureCli, Source::ManagedIdentity];

/// The chain `AZURE_TOKEN_CREDENTIALS` selects (unset or empty: all of it).
pub fn chain(selector: Option<&str>) -> Result<Vec<Source>, AzureError> {
    match selector.map(str::trim).unwrap_or("") {
        "" => Ok(ALL.to_vec()),
        s if s.eq_ignore_ascii_case("dev") => Ok(vec![Source::AzureCli]),
        s if s.eq_ignore_ascii_case("prod") => {
            Ok(vec![Source::Environment, Source::WorkloadIdentity, Source::ManagedIdentity])
        }
        s => ALL.iter().find(|c| c.name().eq_ignore_ascii_case(s)).map(|c| vec![*c]).ok_or_else(|| {
            AzureError::CredentialSelector {
                value: s.to_string(),
                allowed: ["dev", "prod"].into_iter().chain(ALL.iter().map(|c| c.name())).collect::<Vec<_>>().join(", "),
            }
        }),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Why a credential cannot be used.
enum Unusable {
    /// It is not set up here; the chain goes on.
    Missing(String),
    /// It is set up but broken (an unreadable certificate); the chain stops, as falling through would hide that.
    Broken(String),
}

impl From<&str> for Unusable {
    fn from(why: &str) -> Self {
        Unusable::Missing(why.to_string())
    }
}

impl From<String> for Unusable {
    fn from(why: String) -> Self {
        Unusable::Missing(why)
    }
}

/// Builds the credential of `source`, or says why it cannot be used here.
fn build(source: Source) -> Result<Arc<dyn TokenCredential>, Unusable> {
    let sdk = |e: azure_core::Error| redact(&e.to_string()).into_owned();
    match source {
        Source::Environment => {
            let (Some(tenant), Some(client)) = (env("AZURE_TENANT_ID"), env("AZURE_CLIENT_ID")) else {
                return Err("AZURE_TENANT_ID and AZURE_CLIENT_ID are not both set".into());
            };
            if let Some(secret) = env("AZURE_CLIENT_SECRET") {
                let options = ClientSecretCredentialOptions { client_options: sign_in_options() };
                let credential =
                    ClientSecretCredential::new(&tenant, client, Secret::new(secret), Some(options)).map_err(sdk)?;
                Ok(credential)
            } else if let Some(path) = env("AZURE_CLIENT_CERTIFICATE_PATH") {
                if env("AZURE_CLIENT_CERTIFICATE_PASSWORD").is_some() {
                    return Err(Unusable::Broken(
                        "AZURE_CLIENT_CERTIFICATE_PASSWORD is set, but uplosi reads only PEM files with an \
                         unencrypted key (convert: openssl pkcs12 -in cert.pfx -nodes -out cert.pem)"
                            .into(),
                    ));
                }
                let authority =
                    env("AZURE_AUTHORITY_HOST").unwrap_or_else(|| "https://login.microsoftonline.com".into());
                let audience = format!("{}/{tenant}/oauth2/v2.0/token", authority.trim_end_matches('/'));
                let assertion = CertificateAssertion::load(std::path::Path::new(&path), &client, &audience)
                    .map_err(|e| Unusable::Broken(format!("AZURE_CLIENT_CERTIFICATE_PATH {e}")))?;
                let options = ClientAssertionCredentialOptions { client_options: sign_in_options() };
                let credential = ClientAssertionCredential::new(tenant, client, assertion, Some(options))
                    .map_err(|e| Unusable::Broken(sdk(e)))?;
                Ok(credential)
            } else {
                Err("neither AZURE_CLIENT_SECRET nor AZURE_CLIENT_CERTIFICATE_PATH is set".into())
            }
        }
        Source::WorkloadIdentity => {
            if env("AZURE_FEDERATED_TOKEN_FILE").is_none() {
                return Err("AZURE_FEDERATED_TOKEN_FILE is not set".into());
            }
            let credential = WorkloadIdentityCredential::new(None).map_err(sdk)?;
            Ok(credential)
        }
        Source::AzureCli => {
            if !on_path("az") {
                return Err("`az` is not on PATH".into());
            }
            let credential = AzureCliCredential::new(None).map_err(sdk)?;
            Ok(credential)
        }
        Source::ManagedIdentity => {
            let credential = ManagedIdentityCredential::new(None).map_err(sdk)?;
            Ok(credential)
        }
    }
}

/// Token requests retry a few times within half a minute: the SDK's default waits up to a minute between attempts,
/// which turns an unreachable token endpoint into minutes of silence before the preflight can say so.
fn sign_in_options() -> ClientOptions {
    let retry = ExponentialRetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(500),
        max_retries: 4,
        max_total_elapsed: azure_core::time::Duration::seconds(30),
        max_delay: azure_core::time::Duration::seconds(8),
    };
    ClientOptions { retry: RetryOptions::exponential(retry), ..Default::default() }
}

/// A credential that produced a token for `scope`.
#[derive(Clone, Debug)]
pub struct Chosen {
    /// Which link of the chain it is.
    pub source: Source,
    /// The credential; it caches and refreshes its tokens.
    pub credential: Arc<dyn TokenCredential>,
}

/// Walks the chain until a credential gives a token for `scope`. A credential that is set up but refused (a wrong
/// client secret) stops the walk, as in the other SDKs: falling through to another identity would hide the mistake.
pub async fn find(scope: &str) -> Result<Chosen, AzureError> {
    let selector = std::env::var("AZURE_TOKEN_CREDENTIALS").ok();
    let mut tried = Vec::new();
    for source in chain(selector.as_deref())? {
        let credential = match build(source) {
            Ok(credential) => credential,
            Err(Unusable::Missing(why)) => {
                tried.push(format!("{}: {why}", source.name()));
                continue;
            }
            Err(Unusable::Broken(why)) => {
                return Err(AzureError::SignIn { credential: source.name().to_string(), message: why });
            }
        };
        match credential.get_token(&[scope], None).await {
            Ok(_) => {
                tracing::debug!("azure: signed in with {}", source.name());
                return Ok(Chosen { source, credential });
            }
            Err(e) if matches!(source, Source::Environment | Source::WorkloadIdentity) => {
                return Err(AzureError::SignIn {
                    credential: source.name().to_string(),
                    message: redact(&e.to_string()).into_owned(),
                });
            }
            Err(e) => tried.push(format!("{}: {}", source.name(), redact(&e.to_string()))),
        }
    }
    Err(AzureError::NoCredentials { tried, selector })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selector_narrows_the_chain() {
        assert_eq!(chain(None).ok(), Some(ALL.to_vec()));
        assert_eq!(chain(Some("dev")).ok(), Some(vec![Source::AzureCli]));
        assert_eq!(
            chain(Some("prod")).ok(),
            Some(vec![Source::Environment, Source::WorkloadIdentity, Source::ManagedIdentity])
        );
        assert_eq!(chain(Some("ManagedIdentityCredential")).ok(), Some(vec![Source::ManagedIdentity]));
        let err = chain(Some("browser")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("\"browser\"") && err.contains("EnvironmentCredential"), "{err}");
    }
}
