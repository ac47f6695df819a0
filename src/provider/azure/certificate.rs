//! Service-principal sign-in with a client certificate (`AZURE_CLIENT_CERTIFICATE_PATH`): a PEM file holding the
//! certificate and its RSA private key, as `az ad sp create-for-rbac --create-cert` writes it. Each token request
//! carries a fresh client assertion: a JWT signed PS256 with the key, naming the certificate by its SHA-256
//! thumbprint (`x5t#S256`), as Entra ID's certificate credentials take it.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use azure_core::http::ClientMethodOptions;
use azure_identity::ClientAssertion;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::SignatureScheme;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::SigningKey;
use sha2::{Digest, Sha256};

/// How long an assertion is valid.
const ASSERTION_SECONDS: u64 = 600;

/// A certificate and its key, making client assertions for one token endpoint.
pub struct CertificateAssertion {
    path: PathBuf,
    client_id: String,
    audience: String,
    thumbprint: String,
    key: std::sync::Arc<dyn SigningKey>,
}

impl std::fmt::Debug for CertificateAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAssertion").field("path", &self.path).field("thumbprint", &self.thumbprint).finish()
    }
}

impl CertificateAssertion {
    /// Reads `path` (PEM: a certificate and an RSA private key) for `client_id`, asserting to `audience` (the token
    /// endpoint URL).
    pub fn load(path: &Path, client_id: &str, audience: &str) -> Result<Self, String> {
        let fail = |what: &str| format!("{}: {what}", path.display());
        let pem = std::fs::read(path).map_err(|e| fail(&e.to_string()))?;
        let cert = CertificateDer::pem_slice_iter(&pem)
            .next()
            .ok_or_else(|| fail("no certificate in it (PEM with the certificate and its private key expected; PFX files are not supported)"))?
            .map_err(|e| fail(&e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| fail("no private key in it"))?;
        let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| fail(&e.to_string()))?;
        if key.choose_scheme(&[SignatureScheme::RSA_PSS_SHA256]).is_none() {
            return Err(fail("the private key is not an RSA key; Entra ID certificate credentials are RSA"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            client_id: client_id.to_string(),
            audience: audience.to_string(),
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(cert.as_ref())),
            key,
        })
    }

    /// A signed assertion valid from now for [`ASSERTION_SECONDS`].
    pub fn assertion(&self) -> Result<String, String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let header = serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": self.thumbprint});
        let claims = serde_json::json!({
            "aud": self.audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": format!("{:032x}", rand::random::<u128>()),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_SECONDS,
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signer = self
            .key
            .choose_scheme(&[SignatureScheme::RSA_PSS_SHA256])
            .ok_or_else(|| "the key cannot sign PS256".to_string())?;
        let signature = signer.sign(signing_input.as_bytes()).map_err(|e| e.to_string())?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

#[async_trait::async_trait]
impl ClientAssertion for CertificateAssertion {
    async fn secret(&self, _options: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        self.assertion().map_err(|e| azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_key_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, "not a pem").expect("write");
        let err = CertificateAssertion::load(&path, "c", "https://login/t/oauth2/v2.0/token").err().unwrap_or_default();
        assert!(err.contains("cert.pem") && err.contains("no certificate"), "{err}");
    }
}
