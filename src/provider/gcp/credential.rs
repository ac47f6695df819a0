//! Google credentials: Application Default Credentials as every Google client library finds them
//! (`GOOGLE_APPLICATION_CREDENTIALS`, then gcloud's `application_default_credentials.json`, then the metadata
//! server at `GCE_METADATA_HOST`), checked once before any work by asking for a token.

use std::path::PathBuf;
use std::time::Duration;

use google_cloud_auth::credentials::{Builder, CacheableResource, Credentials, anonymous};
use reqwest::header::HeaderMap;

use super::error::{GcpError, full_message};

/// How long the preflight waits for a first token: the metadata server of a machine outside Google Cloud never
/// answers, and the libraries would retry for minutes.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(20);

/// Where Application Default Credentials come from on this machine, for messages.
pub fn source() -> String {
    if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty()) {
        return format!("GOOGLE_APPLICATION_CREDENTIALS={}", PathBuf::from(path).display());
    }
    let config = std::env::var_os("CLOUDSDK_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config").join("gcloud")));
    if let Some(file) = config.map(|dir| dir.join("application_default_credentials.json")).filter(|f| f.exists()) {
        return format!("gcloud's {}", file.display());
    }
    let host = std::env::var("GCE_METADATA_HOST").unwrap_or_else(|_| "metadata.google.internal".into());
    format!("the metadata server at {host} (no GOOGLE_APPLICATION_CREDENTIALS and no gcloud credentials file)")
}

/// Loads Application Default Credentials.
pub fn load() -> Result<Credentials, GcpError> {
    Builder::default()
        .build()
        .map_err(|e| GcpError::Credentials { message: format!("{}: {}", source(), full_message(&e)) })
}

/// Credentials for a storage emulator (`STORAGE_EMULATOR_HOST`): none, as Google's libraries do.
pub fn anonymous() -> Credentials {
    anonymous::Builder::new().build()
}

/// The authorization headers of `credentials`, fetched (or refreshed) within [`TOKEN_TIMEOUT`].
pub async fn headers(credentials: &Credentials) -> Result<HeaderMap, GcpError> {
    let fetched = tokio::time::timeout(TOKEN_TIMEOUT, credentials.headers(http::Extensions::new())).await;
    match fetched {
        Ok(Ok(CacheableResource::New { data, .. })) => Ok(data),
        // Only asked for with an entity tag, which uplosi never passes.
        Ok(Ok(CacheableResource::NotModified)) => Ok(HeaderMap::new()),
        Ok(Err(e)) => Err(GcpError::Credentials { message: format!("{}: {}", source(), full_message(&e)) }),
        Err(_) => Err(GcpError::Credentials {
            message: format!("{}: no token within {} s", source(), TOKEN_TIMEOUT.as_secs()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn anonymous_credentials_add_no_header() -> Result<(), GcpError> {
        assert!(headers(&anonymous()).await?.get("authorization").is_none());
        Ok(())
    }
}
