//! The release run: every selected variant is checked first (all at once), then uploaded concurrently, at most
//! `--jobs` at a time. A failing variant does not stop the others unless `--fail-fast`; each variant's log lines
//! carry its name.

use std::sync::Arc;

use futures_util::future::join_all;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::VariantConfig;
use crate::image::SourceImage;
use crate::progress::{self, StageLine};
use crate::provider::{self, ProviderError, Reference, UploadOptions};
use crate::report::Status;

/// How variants are scheduled.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Variants uploading at the same time (at least 1).
    pub jobs: usize,
    /// Stop the other variants (they clean up) as soon as one fails.
    pub fail_fast: bool,
    /// What each provider gets; its `cancel` is raised by Ctrl-C and by `--fail-fast`.
    pub upload: UploadOptions,
}

/// How one variant ended.
#[derive(Debug)]
pub struct Outcome {
    /// Ok, failed or skipped.
    pub status: Status,
    /// The references of a successful variant.
    pub references: Vec<Reference>,
    /// The error of a failed variant.
    pub error: Option<ProviderError>,
    /// Why a variant was skipped or stopped by someone else's failure.
    pub note: Option<String>,
}

impl Outcome {
    fn skipped(note: &str) -> Self {
        Outcome { status: Status::Skipped, references: Vec::new(), error: None, note: Some(note.to_string()) }
    }

    fn failed(error: ProviderError) -> Self {
        Outcome { status: Status::Failed, references: Vec::new(), error: Some(error), note: None }
    }

    /// The message the manifest records.
    pub fn message(&self) -> Option<String> {
        match (&self.error, &self.note) {
            (Some(e), Some(note)) => Some(format!("{note}: {e}")),
            (Some(e), None) => Some(e.to_string()),
            (None, note) => note.clone(),
        }
    }
}

/// The span every log line of a variant is recorded in; the log format prints its name first (the unnamed
/// `[base]` variant is the only one, so its lines need no name).
pub fn span(cfg: &VariantConfig) -> tracing::Span {
    let name = cfg.variant.clone().unwrap_or_default();
    let span = tracing::info_span!("variant", name = %name);
    progress::name_span(&span, &name);
    span
}

/// The variants after their checks: `Some` for those that will not upload (their check failed, or `--fail-fast`
/// stops them), in the order of the variants.
pub struct Checked(Vec<Option<Outcome>>);

impl Checked {
    /// Marks every variant that passed its check as skipped for `note` (the boot check failed, …).
    pub fn skip_all(self, note: &str) -> Vec<Outcome> {
        self.0.into_iter().map(|o| o.unwrap_or_else(|| Outcome::skipped(note))).collect()
    }
}

/// Checks every variant (credentials, endpoints, existing images; all at once). `Err` for a problem the user must
/// fix (exit code 2); a variant whose check fails otherwise is marked failed, and with `--fail-fast` the others are
/// skipped.
pub async fn check(variants: &[VariantConfig], options: &RunOptions) -> Result<Checked, ProviderError> {
    // Every provider and credential is checked before the first byte moves, so a run does not stop half-way for a
    // reason that was knowable up front. The checks are independent, so they run together.
    crate::timeline::note(format_args!("preflight of {} variant(s) started", variants.len()));
    let checks = join_all(variants.iter().map(|cfg| provider::preflight(cfg).instrument(span(cfg)))).await;
    crate::timeline::note(format_args!("preflight done"));
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(variants.len());
    let mut usage = None;
    for (cfg, check) in variants.iter().zip(checks) {
        match check {
            Ok(()) => outcomes.push(None),
            Err(e) if e.is_usage() => {
                usage.get_or_insert(e);
                outcomes.push(None);
            }
            Err(e) => {
                let _enter = span(cfg).entered();
                tracing::error!("check failed, not uploading: {e}");
                outcomes.push(Some(Outcome::failed(e)));
            }
        }
    }
    if let Some(e) = usage {
        return Err(e);
    }
    if options.fail_fast && outcomes.iter().any(Option::is_some) {
        let note = "not started: another variant failed its check (--fail-fast)";
        return Ok(Checked(outcomes.into_iter().map(|o| Some(o.unwrap_or_else(|| Outcome::skipped(note)))).collect()));
    }
    Ok(Checked(outcomes))
}

/// Uploads the variants that passed their checks, at most `--jobs` at a time.
pub async fn upload(
    variants: &[VariantConfig],
    image: &SourceImage,
    options: &RunOptions,
    checked: Checked,
) -> Vec<Outcome> {
    let cancel = &options.upload.cancel;
    let outcomes = checked.0;
    let permits = Arc::new(Semaphore::new(options.jobs.max(1)));
    let uploads = variants.iter().zip(&outcomes).map(|(cfg, checked)| {
        let permits = Arc::clone(&permits);
        let failed_check = checked.is_some();
        let key = cfg.variant.clone().unwrap_or_default();
        let line = StageLine::new(&key, cfg.variant.as_deref().unwrap_or(cfg.provider.as_str()));
        async move {
            if failed_check {
                line.finish("failed its check");
                return None;
            }
            // The semaphore is never closed, so acquiring only waits.
            let _permit = permits.acquire_owned().await.ok();
            if cancel.is_cancelled() {
                let why = if cancel.is_signalled() {
                    "not started: interrupted"
                } else {
                    "not started: another variant failed (--fail-fast)"
                };
                line.finish(why);
                return Some(Outcome::skipped(why));
            }
            tracing::info!("uploading to {}", cfg.provider.as_str());
            crate::timeline::note(format_args!("upload to {} started", cfg.provider.as_str()));
            line.set(&format!("uploading to {}", cfg.provider.as_str()));
            let outcome = match provider::upload(cfg, image, &options.upload).await {
                Ok(references) => {
                    tracing::info!(
                        "done: {}",
                        references.iter().map(|r| r.value.as_str()).collect::<Vec<_>>().join(" ")
                    );
                    Outcome { status: Status::Ok, references, error: None, note: None }
                }
                Err(e) if e.is_interrupted() && !cancel.is_signalled() => {
                    tracing::warn!("stopped because another variant failed (--fail-fast); cleaned up");
                    Outcome {
                        note: Some("stopped because another variant failed (--fail-fast)".into()),
                        ..Outcome::failed(e)
                    }
                }
                Err(e) if e.is_interrupted() => {
                    tracing::warn!("interrupted; what this variant created was removed");
                    Outcome::failed(e)
                }
                Err(e) => {
                    tracing::error!("failed: {e}");
                    if options.fail_fast && !e.is_interrupted() {
                        tracing::warn!("--fail-fast: stopping the other variants");
                        cancel.cancel();
                    }
                    Outcome::failed(e)
                }
            };
            line.finish(match outcome.status {
                Status::Ok => "done",
                Status::Skipped => "skipped",
                Status::Failed => "failed",
            });
            Some(outcome)
        }
        .instrument(span(cfg))
    });
    let results = join_all(uploads).await;
    outcomes
        .into_iter()
        .zip(results)
        .map(|(checked, uploaded)| checked.or(uploaded).unwrap_or_else(|| Outcome::skipped("not run")))
        .collect()
}
