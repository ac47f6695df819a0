//! `uplosi delete VERSION` and `uplosi prune --keep N`: the images a variant's uploads left in its cloud, found by
//! rendering the variant's name templates with the version left open ([`crate::config::names`]), what of them to
//! delete and what to keep and why ([`decide`]), and the deletion itself, in parallel, with what already went
//! counted as deleted so a second run finishes what a first one left.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::cancel::Cancel;
use crate::config::VariantConfig;
use crate::provider::{self, Stored};
use crate::version::ImageVersion;

/// What to delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every image of this version.
    Delete(ImageVersion),
    /// All but the `keep` newest versions (and the current one and newer, and with `younger_than` the recent ones).
    Prune {
        /// How many of the newest versions stay.
        keep: usize,
        /// Versions created more recently than this stay too.
        younger_than: Option<Duration>,
    },
}

/// One thing deleted (or, in a dry run, to be deleted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Deleted {
    /// Its version.
    pub version: String,
    /// Its region, if the provider has regions.
    pub region: Option<String>,
    /// The cloud's ID.
    pub id: String,
    /// What it is.
    pub kind: &'static str,
}

/// One thing kept, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// Its version.
    pub version: String,
    /// Why it stays.
    pub reason: String,
    /// Its region, if the provider has regions.
    pub region: Option<String>,
    /// The cloud's ID.
    pub id: String,
    /// What it is.
    pub kind: &'static str,
}

impl Kept {
    /// `item`, kept for `reason`.
    fn of(item: &Stored, reason: String) -> Self {
        Self {
            version: item.version.to_string(),
            reason,
            region: item.region.clone(),
            id: item.id.clone(),
            kind: item.kind,
        }
    }
}

/// Something that could not be listed or deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failed {
    /// The cloud's ID (or what was being listed).
    pub id: String,
    /// Why.
    pub error: String,
}

/// The outcome for one variant.
#[derive(Clone, Debug, Serialize)]
pub struct VariantOutcome {
    /// The variant's name (`null` for `[base]`).
    pub variant: Option<String>,
    /// Its provider.
    pub provider: &'static str,
    /// What was (or would be) deleted.
    pub deleted: Vec<Deleted>,
    /// What stays, with the reason.
    pub kept: Vec<Kept>,
    /// What failed.
    pub failed: Vec<Failed>,
    /// The items to delete, for [`execute`].
    #[serde(skip)]
    pub pending: Vec<Stored>,
}

impl VariantOutcome {
    fn new(cfg: &VariantConfig) -> Self {
        Self {
            variant: cfg.variant.clone(),
            provider: cfg.provider.as_str(),
            deleted: Vec::new(),
            kept: Vec::new(),
            failed: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// The label used in messages.
    pub fn label(&self) -> String {
        self.variant.clone().unwrap_or_else(|| "[base]".into())
    }
}

/// The whole outcome, as `--output json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// One entry per variant.
    pub variants: Vec<VariantOutcome>,
}

impl Outcome {
    /// Whether anything failed.
    pub fn failed(&self) -> bool {
        self.variants.iter().any(|v| !v.failed.is_empty())
    }

    /// How many items are (or would be) deleted, counting what stands behind them.
    pub fn pending_count(&self) -> usize {
        self.variants.iter().flat_map(|v| &v.pending).map(|s| 1 + s.behind.len()).sum()
    }

    /// The plan as text: per variant, what goes and what stays and why.
    pub fn plan_text(&self, dry_run: bool) -> String {
        use std::fmt::Write as _;
        let verb = if dry_run { "would delete" } else { "delete" };
        let mut out = String::new();
        for v in &self.variants {
            let _ = writeln!(out, "{} ({}):", v.label(), v.provider);
            if v.pending.is_empty() && v.kept.is_empty() && v.failed.is_empty() {
                out.push_str("  nothing found\n");
            }
            for item in &v.pending {
                let _ = writeln!(out, "  {verb} {} {} {}{}", item.version, item.kind, item.id, region(&item.region));
                for (kind, id) in &item.behind {
                    let _ = writeln!(
                        out,
                        "  {verb} {} {kind} {id}{} (behind {})",
                        item.version,
                        region(&item.region),
                        item.id
                    );
                }
            }
            for k in &v.kept {
                let _ = writeln!(out, "  keep {} {} {}{}: {}", k.version, k.kind, k.id, region(&k.region), k.reason);
            }
            for f in &v.failed {
                let _ = writeln!(out, "  FAILED {}: {}", f.id, f.error);
            }
        }
        out
    }
}

fn region(region: &Option<String>) -> String {
    region.as_deref().map(|r| format!(" in {r}")).unwrap_or_default()
}

/// Splits `items` into what `mode` deletes and what it keeps (with the reason), for a variant named `name` whose
/// current version (version file or `imageVersion`) is `current`, at time `now`.
pub fn decide(
    items: Vec<Stored>,
    name: &str,
    current: ImageVersion,
    mode: Mode,
    now: SystemTime,
) -> (Vec<Stored>, Vec<Kept>) {
    // The newest `keep` versions among those that belong to the variant.
    let newest: BTreeSet<ImageVersion> = match mode {
        Mode::Prune { keep, .. } => {
            let versions: BTreeSet<ImageVersion> =
                items.iter().filter(|i| i.tag_name.as_deref().is_none_or(|t| t == name)).map(|i| i.version).collect();
            versions.into_iter().rev().take(keep).collect()
        }
        Mode::Delete(_) => BTreeSet::new(),
    };
    let mut delete = Vec::new();
    let mut kept = Vec::new();
    for item in items {
        if matches!(mode, Mode::Delete(version) if item.version != version && !item.dangling) {
            continue;
        }
        let reason = if item.dangling {
            None
        } else if let Some(tag) = item.tag_name.as_deref().filter(|t| *t != name) {
            Some(format!("tag says another name ({tag:?})"))
        } else if let Some(reason) = &item.keep {
            Some(reason.clone())
        } else {
            match mode {
                _ if item.version == current => Some("current version".to_string()),
                _ if item.version > current => Some("newer than the current version".to_string()),
                Mode::Delete(_) => None,
                Mode::Prune { keep, younger_than } => {
                    if newest.contains(&item.version) {
                        Some(format!("newest {keep}"))
                    } else if let (Some(limit), Some(created)) = (younger_than, item.created)
                        && now.duration_since(created).unwrap_or_default() < limit
                    {
                        Some(format!("younger than {}", duration_text(limit)))
                    } else {
                        None
                    }
                }
            }
        };
        match reason {
            Some(reason) => kept.push(Kept::of(&item, reason)),
            None => delete.push(item),
        }
    }
    (delete, kept)
}

/// `30d`, `12h`, `90m`: a duration as a user writes it.
pub fn duration_text(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s > 0 && s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        s if s > 0 && s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        s if s > 0 && s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Parses `--older-than`: a Go duration (`720h`, `90m`) or whole days (`30d`).
pub fn parse_age(text: &str) -> Option<Duration> {
    if let Some(days) = text.strip_suffix('d') {
        return days.parse::<u64>().ok().filter(|d| *d > 0).map(|d| Duration::from_secs(d * 86_400));
    }
    crate::config::model::parse_go_duration(text).filter(|d| !d.is_zero())
}

/// Lists what each variant left and decides (list and describe calls only).
pub async fn plan(variants: &[VariantConfig], mode: Mode, jobs: usize) -> Vec<VariantOutcome> {
    let now = SystemTime::now();
    let semaphore = tokio::sync::Semaphore::new(jobs.max(1));
    let listings = variants.iter().map(|cfg| async {
        let _permit = semaphore.acquire().await.ok();
        let mut outcome = VariantOutcome::new(cfg);
        match provider::list_stored(cfg).await {
            Ok(items) => {
                let (delete, kept) = decide(items, &cfg.name, cfg.image_version, mode, now);
                outcome.pending = delete;
                outcome.kept = kept;
            }
            Err(e) => outcome
                .failed
                .push(Failed { id: format!("listing the images of {}", cfg.label()), error: e.to_string() }),
        }
        outcome
    });
    futures_util::future::join_all(listings).await
}

/// Deletions of one variant in flight at once: the regions and versions go in parallel, gently on rate limits.
const ITEMS_AT_ONCE: usize = 4;

/// Deletes what [`plan`] found, `jobs` variants at a time and [`ITEMS_AT_ONCE`] items of a variant at once. On Ctrl-C the
/// deletions in flight finish, no new one starts, and what was deleted is reported.
pub async fn execute(variants: &[VariantConfig], outcomes: &mut [VariantOutcome], jobs: usize, cancel: &Cancel) {
    let semaphore = tokio::sync::Semaphore::new(jobs.max(1));
    let runs = variants.iter().zip(outcomes.iter_mut()).map(|(cfg, outcome)| {
        let semaphore = &semaphore;
        async move {
            let _permit = semaphore.acquire().await.ok();
            let items = std::mem::take(&mut outcome.pending);
            let per_item = tokio::sync::Semaphore::new(ITEMS_AT_ONCE);
            let results = futures_util::future::join_all(items.iter().map(|item| {
                let per_item = &per_item;
                async move {
                    let _permit = per_item.acquire().await.ok();
                    if cancel.is_cancelled() {
                        return None;
                    }
                    let result = provider::delete_stored(cfg, item).await;
                    match &result {
                        Ok(()) => tracing::info!(
                            "{}: deleted {} {} {}{}",
                            cfg.label(),
                            item.version,
                            item.kind,
                            item.id,
                            region(&item.region)
                        ),
                        Err(e) => tracing::error!("{}: deleting {} {}: {e}", cfg.label(), item.kind, item.id),
                    }
                    Some(result)
                }
            }))
            .await;
            for (item, result) in items.iter().zip(results) {
                match result {
                    Some(Ok(())) => outcome.deleted.extend(deleted_entries(item)),
                    Some(Err(e)) => outcome.failed.push(Failed { id: item.id.clone(), error: e.to_string() }),
                    // Not started: it stays, and a second run deletes it.
                    None => outcome.kept.push(Kept::of(item, "not deleted: interrupted".into())),
                }
            }
        }
    });
    futures_util::future::join_all(runs).await;
}

/// The entries an item adds to `deleted`: itself and what stands behind it.
pub fn deleted_entries(item: &Stored) -> Vec<Deleted> {
    let mut out = vec![Deleted {
        version: item.version.to_string(),
        region: item.region.clone(),
        id: item.id.clone(),
        kind: item.kind,
    }];
    for (kind, id) in &item.behind {
        out.push(Deleted { version: item.version.to_string(), region: item.region.clone(), id: id.clone(), kind });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(patch: u64) -> ImageVersion {
        ImageVersion { major: 1, minor: 0, patch }
    }

    fn item(patch: u64, region: &str, age_days: u64) -> Stored {
        let mut s = Stored::new(v(patch), "ami", format!("ami-{patch}-{region}"));
        s.region = Some(region.into());
        s.created = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * 86_400 - age_days * 86_400));
        s
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * 86_400)
    }

    #[test]
    fn prune_keeps_the_newest_the_current_and_newer_and_the_young() {
        let mut items: Vec<Stored> =
            (0..=5).flat_map(|p| [item(p, "a", 50 - p * 5), item(p, "b", 50 - p * 5)]).collect();
        let mut foreign = item(1, "a", 100);
        foreign.tag_name = Some("other".into());
        items.push(foreign);
        let mode = Mode::Prune { keep: 2, younger_than: None };
        let (delete, kept) = decide(items.clone(), "podvm", v(2), mode, now());
        let gone: BTreeSet<String> = delete.iter().map(|d| d.version.to_string()).collect();
        assert_eq!(gone, ["1.0.0", "1.0.1"].iter().map(|s| s.to_string()).collect());
        assert_eq!(delete.len(), 4, "both regions");
        let reason = |version: &str| {
            kept.iter().find(|k| k.version == version && k.id.ends_with("-a")).map(|k| k.reason.clone())
        };
        assert_eq!(reason("1.0.5").as_deref(), Some("newer than the current version"));
        assert_eq!(reason("1.0.2").as_deref(), Some("current version"));
        assert!(kept.iter().any(|k| k.reason == "tag says another name (\"other\")"), "{kept:?}");
        // With the current version at 1.0.5 the two newest are 1.0.5 and 1.0.4; 36 days keeps 1.0.3 (35 days old),
        // not 1.0.2 (40 days).
        let mode = Mode::Prune { keep: 2, younger_than: Some(Duration::from_secs(36 * 86_400)) };
        let (delete, kept) = decide(items, "podvm", v(5), mode, now());
        assert_eq!(delete.iter().map(|d| d.version.patch).collect::<BTreeSet<_>>(), [0, 1, 2].into());
        assert!(kept.iter().any(|k| k.version == "1.0.4" && k.reason == "newest 2"), "{kept:?}");
        assert!(kept.iter().any(|k| k.version == "1.0.3" && k.reason == "younger than 36d"), "{kept:?}");
    }

    #[test]
    fn delete_takes_one_version_but_never_the_current_one_or_a_protected_image() {
        let mut protected = item(3, "a", 1);
        protected.keep = Some("protected in Glance".into());
        let items = vec![item(1, "a", 1), item(1, "b", 1), item(2, "a", 1), protected];
        let (delete, kept) = decide(items.clone(), "podvm", v(9), Mode::Delete(v(1)), now());
        assert_eq!(delete.len(), 2);
        assert!(kept.is_empty(), "other versions are not listed: {kept:?}");
        let (delete, kept) = decide(items.clone(), "podvm", v(2), Mode::Delete(v(2)), now());
        assert!(delete.is_empty() && kept[0].reason == "current version");
        let (delete, kept) = decide(items, "podvm", v(9), Mode::Delete(v(3)), now());
        assert!(delete.is_empty() && kept[0].reason == "protected in Glance");
    }

    #[test]
    fn ages_parse_as_go_durations_or_days() {
        assert_eq!(parse_age("30d"), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("720h"), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("90m"), Some(Duration::from_secs(5_400)));
        for bad in ["", "0d", "xd", "soon", "0"] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
        assert_eq!(duration_text(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(duration_text(Duration::from_secs(5_400)), "90m");
    }
}
