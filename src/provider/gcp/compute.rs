//! Compute Engine images through the official `google-cloud-compute-v1` client: get, insert, delete, deprecate,
//! list a family, and the IAM policy. Every call goes through the one retry policy of `transfer/` (the client's own
//! retries are off, so `Retry-After` is honoured) with the per-request timeout of the other REST clients, and every
//! operation is waited on until `DONE`, with its `error` reported in full.

use std::time::Duration;

use google_cloud_auth::credentials::Credentials;
use google_cloud_compute_v1::client::Images;
use google_cloud_compute_v1::model::{
    Binding, DeprecationStatus, GlobalSetPolicyRequest, GuestOsFeature, Image, Operation, Policy, deprecation_status,
    guest_os_feature, image, operation,
};
use google_cloud_gax::retry_policy::NeverRetry;

use super::error::{GcpError, verdict};
use crate::cancel::Cancel;
use crate::transfer::{RetryPolicy, Stopped, poll_until};

/// The role and member the Go tool grants to publish an image.
pub const PUBLISH_ROLE: &str = "roles/compute.imageUser";
/// Everyone with a Google account.
pub const PUBLISH_MEMBER: &str = "allAuthenticatedUsers";

/// A Compute Engine images client for one project.
#[derive(Clone, Debug)]
pub struct Compute {
    images: Images,
    project: String,
    retry: RetryPolicy,
}

/// A Compute Engine label value: lowercase letters, digits, `_` and `-`, at most 63 characters (the name `podvm`
/// stays as it is; the version `1.2.3` becomes `1-2-3`).
pub fn label_value(text: &str) -> String {
    text.chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' { c } else { '-' })
        .take(63)
        .collect()
}

/// What [`Compute::create`] sends: the image as `images.insert` takes it, labelled with `uplosi-name` and
/// `uplosi-version` (as label values) so `delete` and `prune` can tell whose it is.
pub fn image_body(cfg: &crate::config::VariantConfig, source: &str) -> Image {
    let g = &cfg.gcp;
    let mut labels = g.labels.clone();
    for (key, value) in crate::provider::ownership_tags(cfg) {
        labels.insert(key.to_string(), label_value(&value));
    }
    let mut body = Image::new()
        .set_name(g.image_name.clone())
        .set_family(g.image_family.clone())
        .set_architecture(image::Architecture::from(g.architecture.as_str()))
        .set_raw_disk(
            image::RawDisk::new()
                .set_source(source.to_string())
                .set_container_type(image::raw_disk::ContainerType::Tar),
        )
        .set_guest_os_features(
            g.guest_os_features
                .iter()
                .map(|f| GuestOsFeature::new().set_type(guest_os_feature::Type::from(f.as_str()))),
        )
        .set_labels(labels)
        .set_storage_locations(g.storage_locations.clone());
    if !g.description.is_empty() {
        body = body.set_description(g.description.clone());
    }
    body
}

/// The `rawDisk.source` of an object: GCE reads it from Cloud Storage by this URL whatever endpoint uplosi used.
pub fn source_url(bucket: &str, object: &str) -> String {
    format!("https://storage.googleapis.com/{bucket}/{object}")
}

/// The reference the Go tool prints: the image's self link without its API prefix.
pub fn reference(project: &str, name: &str, self_link: Option<&str>) -> String {
    match self_link.and_then(|link| link.find("projects/").map(|at| &link[at..])) {
        Some(path) => path.to_string(),
        None => format!("projects/{project}/global/images/{name}"),
    }
}

/// Every error of a finished operation: "CODE at LOCATION: message", joined.
fn operation_errors(op: &Operation) -> Option<String> {
    let errors = &op.error.as_ref()?.errors;
    let mut text: Vec<String> = errors
        .iter()
        .map(|e| {
            let mut line = e.code.clone().unwrap_or_else(|| "ERROR".into());
            if let Some(location) = e.location.as_ref().filter(|l| !l.is_empty()) {
                line.push_str(&format!(" at {location}"));
            }
            if let Some(message) = &e.message {
                line.push_str(&format!(": {message}"));
            }
            line
        })
        .collect();
    if text.is_empty() {
        text.push(op.http_error_message.clone().unwrap_or_else(|| "the operation reports an error".into()));
    }
    Some(text.join("; "))
}

/// Merges `member` into the `role` binding of `policy` (unconditional bindings only); `false` if it was there.
pub fn grant(policy: &mut Policy, role: &str, member: &str) -> bool {
    if let Some(binding) = policy.bindings.iter_mut().find(|b| b.role.as_deref() == Some(role) && b.condition.is_none())
    {
        if binding.members.iter().any(|m| m == member) {
            return false;
        }
        binding.members.push(member.to_string());
        return true;
    }
    policy.bindings.push(Binding::new().set_role(role.to_string()).set_members([member.to_string()]));
    true
}

impl Compute {
    /// A client of `endpoint` for `project`.
    pub async fn new(endpoint: &str, project: &str, credentials: Credentials) -> Result<Self, GcpError> {
        let images = Images::builder()
            .with_endpoint(endpoint.trim_end_matches('/'))
            .with_credentials(credentials)
            .with_retry_policy(NeverRetry)
            .with_attempt_timeout(crate::transfer::http::REQUEST_TIMEOUT)
            .build()
            .await
            .map_err(|e| GcpError::Unexpected {
                what: format!("connecting to Compute Engine at {endpoint}"),
                message: super::error::full_message(&e),
            })?;
        Ok(Self { images, project: project.to_string(), retry: RetryPolicy::default() })
    }

    /// The same client with another retry policy.
    pub fn with_retry(&self, retry: RetryPolicy) -> Self {
        Self { retry, ..self.clone() }
    }

    /// The project.
    pub fn project(&self) -> &str {
        &self.project
    }

    async fn retried<T, Fut>(&self, what: &str, call: impl Fn() -> Fut) -> Result<T, GcpError>
    where
        Fut: Future<Output = Result<T, google_cloud_gax::error::Error>>,
    {
        self.retry.run(|_| async { call().await.map_err(|e| GcpError::from_google(what, &e)) }, verdict).await
    }

    /// The image, `None` if there is none of that name.
    pub async fn get(&self, name: &str) -> Result<Option<Image>, GcpError> {
        let what = format!("reading image {name}");
        match self.retried(&what, || self.images.get().set_project(&self.project).set_image(name).send()).await {
            Ok(image) => Ok(Some(image)),
            Err(GcpError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of the project's images: the preflight's proof that the project is reachable.
    pub async fn probe(&self) -> Result<(), GcpError> {
        let what = format!("listing the images of project {}", self.project);
        self.retried(&what, || self.images.list().set_project(&self.project).set_max_results(1u32).send())
            .await
            .map(drop)
    }

    /// Every image of the project in `family` (all pages, filtered here so any server's list works).
    pub async fn family(&self, family: &str) -> Result<Vec<Image>, GcpError> {
        let mut found = self.all().await?;
        found.retain(|i| i.family.as_deref() == Some(family));
        Ok(found)
    }

    /// Every image of the project (all pages).
    pub async fn all(&self) -> Result<Vec<Image>, GcpError> {
        let what = format!("listing the images of project {}", self.project);
        let mut found = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .retried(&what, || {
                    let mut list = self.images.list().set_project(&self.project).set_max_results(500u32);
                    if !token.is_empty() {
                        list = list.set_page_token(token.clone());
                    }
                    list.send()
                })
                .await?;
            found.extend(page.items);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) => token = next,
                None => return Ok(found),
            }
        }
    }

    /// Creates the image and waits for it. The request ID makes a retried insert safe.
    pub async fn create(&self, body: Image, timeout: Duration, cancel: &Cancel) -> Result<(), GcpError> {
        let name = body.name.clone().unwrap_or_default();
        let what = format!("creating image {name}");
        let request_id = uuid();
        let op = self
            .retried(&what, || {
                self.images
                    .insert()
                    .set_project(&self.project)
                    .set_request_id(&request_id)
                    .set_body(body.clone())
                    .send()
            })
            .await?;
        self.wait(op, &what, timeout, cancel).await
    }

    /// Deletes the image and waits; `false` if there was none.
    pub async fn delete(&self, name: &str, timeout: Duration, cancel: &Cancel) -> Result<bool, GcpError> {
        let what = format!("deleting image {name}");
        let request_id = uuid();
        let op = self
            .retried(&what, || {
                self.images.delete().set_project(&self.project).set_image(name).set_request_id(&request_id).send()
            })
            .await;
        match op {
            Ok(op) => self.wait(op, &what, timeout, cancel).await.map(|()| true),
            Err(GcpError::Api { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Marks `name` DEPRECATED with `replacement` (a self link) as its successor.
    pub async fn deprecate(&self, name: &str, replacement: &str, cancel: &Cancel) -> Result<(), GcpError> {
        let what = format!("deprecating image {name}");
        let status = DeprecationStatus::new()
            .set_state(deprecation_status::State::from("DEPRECATED"))
            .set_replacement(replacement.to_string());
        let request_id = uuid();
        let op = self
            .retried(&what, || {
                self.images
                    .deprecate()
                    .set_project(&self.project)
                    .set_image(name)
                    .set_request_id(&request_id)
                    .set_body(status.clone())
                    .send()
            })
            .await?;
        self.wait(op, &what, Duration::from_secs(10 * 60), cancel).await
    }

    /// Grants `role` to `member` on the image, merged into its policy; the etag makes a concurrent change fail
    /// (409/412) rather than be overwritten, and the merge is then done again on the new policy.
    pub async fn grant(&self, name: &str, role: &str, member: &str) -> Result<bool, GcpError> {
        let what = format!("granting {role} to {member} on image {name}");
        let mut round = 1;
        loop {
            let mut policy = self
                .retried(&what, || self.images.get_iam_policy().set_project(&self.project).set_resource(name).send())
                .await?;
            if !grant(&mut policy, role, member) {
                return Ok(false);
            }
            let request = GlobalSetPolicyRequest::new().set_policy(policy);
            let set = self
                .retried(&what, || {
                    self.images
                        .set_iam_policy()
                        .set_project(&self.project)
                        .set_resource(name)
                        .set_body(request.clone())
                        .send()
                })
                .await;
            match set {
                Ok(_) => return Ok(true),
                Err(GcpError::Api { status: 409 | 412, .. }) if round < 5 => round += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Polls the operation until it is `DONE`, then reports its error, if any.
    async fn wait(&self, op: Operation, what: &str, timeout: Duration, cancel: &Cancel) -> Result<(), GcpError> {
        let name = op.name.clone().unwrap_or_default();
        let mut polled = false;
        let done = poll_until(what, timeout, cancel, || {
            let (op, name, first) = (op.clone(), name.clone(), !polled);
            polled = true;
            async move {
                let current = if first {
                    op
                } else {
                    self.retried(what, || {
                        self.images.get_operation().set_project(&self.project).set_operation(&name).send()
                    })
                    .await?
                };
                let status = current.status.clone().unwrap_or(operation::Status::Pending);
                tracing::debug!("gcp: {what}: operation {name} is {}", status.name().unwrap_or("?"));
                Ok(matches!(status, operation::Status::Done).then_some(current))
            }
        })
        .await;
        let finished = match done {
            Ok(op) => op,
            Err(Stopped::Failed(e)) => return Err(e),
            Err(Stopped::Interrupted) => return Err(GcpError::Interrupted),
            Err(Stopped::TimedOut) => return Err(GcpError::TimedOut { what: what.to_string(), timeout }),
            Err(Stopped::Panicked(message)) => return Err(GcpError::Unexpected { what: what.to_string(), message }),
        };
        match operation_errors(&finished) {
            Some(message) => Err(GcpError::Operation { what: what.to_string(), operation: name, message }),
            None => Ok(()),
        }
    }
}

fn uuid() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-4{}-a{}-{}", &hex[0..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_is_the_self_link_without_the_api_prefix() {
        let link = "https://www.googleapis.com/compute/v1/projects/p/global/images/img-1";
        assert_eq!(reference("p", "img-1", Some(link)), "projects/p/global/images/img-1");
        assert_eq!(reference("p", "img-1", None), "projects/p/global/images/img-1");
    }

    #[test]
    fn granting_merges_into_the_existing_binding_once() {
        let mut policy = Policy::new().set_bindings([
            Binding::new().set_role("roles/owner").set_members(["user:a@example.com"]),
            Binding::new().set_role(PUBLISH_ROLE).set_members(["user:b@example.com"]),
        ]);
        assert!(grant(&mut policy, PUBLISH_ROLE, PUBLISH_MEMBER));
        assert!(!grant(&mut policy, PUBLISH_ROLE, PUBLISH_MEMBER));
        assert_eq!(policy.bindings.len(), 2);
        assert_eq!(policy.bindings[1].members, vec!["user:b@example.com".to_string(), PUBLISH_MEMBER.to_string()]);
        let mut empty = Policy::new();
        assert!(grant(&mut empty, PUBLISH_ROLE, PUBLISH_MEMBER));
        assert_eq!(empty.bindings[0].role.as_deref(), Some(PUBLISH_ROLE));
    }

    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(uuid(), id);
    }
}
