//! Runs a parsed command line: the glue between [`cli`](crate::cli) and the library modules.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use thiserror::Error;

use crate::boot::{self, BootCheckError, BootCheckOptions};
use crate::cancel::Cancel;
use crate::cli::{BootCheckArgs, Cli, Command, ConvertArgs, LifecycleArgs, MeasurementsArgs, OutputFormat, UploadArgs};
use crate::config::{Config, ConfigError, VariantConfig};
use crate::convert::{self, ConvertError, ConvertOptions};
use crate::image::{ImageError, SourceImage};
use crate::lifecycle::{self, Mode};
use crate::measure::{self, MeasureError};
use crate::plan;
use crate::provider::{ProviderError, UploadOptions};
use crate::release::{self, RunOptions};
use crate::report::{Manifest, ReportError, Status, VariantReport};
use crate::version::{self, ImageVersion, VersionError};

/// Why a command failed. [`AppError::exit_code`] maps it to the documented exit codes.
#[derive(Debug, Error)]
pub enum AppError {
    /// The configuration is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The command line is inconsistent with the configuration or the files given.
    #[error("{0}")]
    Usage(String),
    /// Writing a version file failed.
    #[error(transparent)]
    Version(#[from] VersionError),
    /// An upload failed.
    #[error("{0}")]
    Provider(#[from] ProviderError),
    /// Several variants failed.
    #[error("{} variants failed:\n{}", .0.len(), .0.iter().map(|(v, e)| format!("  {v}: {e}")).collect::<Vec<_>>().join("\n"))]
    Variants(Vec<(String, ProviderError)>),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The source image is unusable.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// `uplosi convert` failed.
    #[error(transparent)]
    Convert(#[from] ConvertError),
    /// `uplosi measurements` (or `measurementsFile`) failed.
    #[error(transparent)]
    Measure(#[from] MeasureError),
    /// Writing the measurements file failed.
    #[error("cannot write the measurements to {}: {source}", path.display())]
    WriteMeasurements {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing to stdout failed.
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
    /// Reading or writing the manifest failed.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The boot check could not be done.
    #[error(transparent)]
    BootCheck(#[from] BootCheckError),
    /// The image did not come up, or not with the predicted measurements.
    #[error("the boot check failed: {0}")]
    BootCheckFailed(String),
    /// `delete` or `prune` could not delete everything.
    #[error("{0}")]
    Lifecycle(String),
    /// Ctrl-C or SIGTERM stopped the run; every variant cleaned up after itself.
    #[error("interrupted; what the run created was removed (see the log above) and no version file was changed")]
    Interrupted,
}

impl AppError {
    /// 2 for usage and configuration errors (nothing was done), 1 for failures during the work, 130 when
    /// interrupted.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_) | AppError::Usage(_) => 2,
            AppError::Image(e) if !matches!(e, ImageError::Read { .. }) => 2,
            AppError::Convert(e) if e.is_interrupted() => 130,
            AppError::Convert(e) if e.is_usage() => 2,
            AppError::Provider(e) if e.is_interrupted() => 130,
            AppError::Provider(e) if e.is_usage() => 2,
            AppError::Measure(e) if e.is_usage() => 2,
            AppError::BootCheck(BootCheckError::Interrupted) => 130,
            AppError::BootCheck(e) if e.is_usage() => 2,
            AppError::Report(ReportError::Read { .. } | ReportError::Parse { .. }) => 2,
            AppError::Interrupted => 130,
            _ => 1,
        }
    }
}

/// Runs `cli`.
pub fn run(cli: Cli) -> Result<(), AppError> {
    match cli.command {
        Command::Upload(args) => upload(&args),
        Command::Convert(args) => convert(&args),
        Command::Measurements(args) => measurements(&args, cli.quiet),
        Command::BootCheck(args) => boot_check(&args),
        Command::Delete(args) => {
            let version = args.version.parse::<ImageVersion>().map_err(|e| AppError::Usage(e.to_string()))?;
            lifecycle_run(&args.common, Mode::Delete(version))
        }
        Command::Prune(args) => {
            let younger_than = match &args.older_than {
                Some(text) => Some(lifecycle::parse_age(text).ok_or_else(|| {
                    AppError::Usage(format!(
                        "--older-than {text:?} is not a positive duration such as \"30d\", \"720h\" or \"90m\""
                    ))
                })?),
                None => None,
            };
            lifecycle_run(&args.common, Mode::Prune { keep: args.keep as usize, younger_than })
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "uplosi", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// The version files the variants use, each with the version it holds now.
fn version_files(variants: &[VariantConfig]) -> BTreeMap<PathBuf, ImageVersion> {
    variants
        .iter()
        .filter_map(|v| {
            let file = v.image_version_file.as_ref()?;
            let key = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
            Some((key, v.image_version))
        })
        .collect()
}

fn upload(args: &UploadArgs) -> Result<(), AppError> {
    let image = SourceImage::open(&args.image)?;
    let config = Config::load(&args.selection.config_dir)?;
    let mut variants =
        config.resolve_selected(&args.selection.enable_variant_glob, &args.selection.disable_variant_glob)?;
    let bumps = version_files(&variants);
    if args.increment_version && bumps.is_empty() {
        return Err(AppError::Usage(
            "-i/--increment-version needs a version file, but no selected variant sets `imageVersionFile`; \
             add imageVersionFile = \"version.txt\" to [base] or drop -i"
                .to_string(),
        ));
    }
    let previous = match &args.retry_failed {
        Some(path) => Some(select_retry(path, &mut variants)?),
        None => None,
    };

    let boot_check = boot_check_settings(args, &variants)?;

    if args.dry_run {
        let timeout = boot_check.as_ref().map(|(_, text)| text.as_str());
        let plan = plan::plan(&variants, &args.image, timeout);
        let text = match args.output {
            OutputFormat::Json => serde_json::to_string_pretty(&plan).map_err(|e| AppError::Stdout(e.into()))? + "\n",
            OutputFormat::Text => plan::render_text(&plan),
        };
        std::io::stdout().write_all(text.as_bytes()).map_err(AppError::Stdout)?;
        if args.increment_version {
            for (file, current) in &bumps {
                let next = current.bump(args.bump)?;
                tracing::info!("dry run: would write {next} to {} (now {current})", file.display());
            }
        }
        return Ok(());
    }

    let measured = configured_measurements(&variants, &image, boot_check.is_some())?.map(std::sync::Arc::new);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(AppError::Runtime)?;
    let cancel = Cancel::on_signals();
    let options = RunOptions {
        jobs: args.jobs.map_or(variants.len(), |j| j as usize).max(1),
        fail_fast: args.fail_fast,
        upload: UploadOptions {
            concurrency: args.concurrency as usize,
            cancel: cancel.clone(),
            measurements: measured.clone(),
        },
    };
    let checked = runtime.block_on(release::check(&variants, &options))?;
    // The boot check runs here, after the checks and before the first byte moves, on this (long-lived) thread: its
    // QEMU and swtpm die with the thread that started them.
    let boot_report =
        boot_check.as_ref().map(|(boot_options, _)| boot::boot_check(&image, boot_options, &cancel)).transpose()?;
    if let Some(report) = &boot_report {
        eprint!("{}", report.summary());
    }
    let boot_failure = boot_report.as_ref().and_then(boot::BootReport::failure);
    let outcomes = match &boot_failure {
        Some(reason) => checked.skip_all(&format!("not started: the boot check failed: {reason}")),
        None => runtime.block_on(release::upload(&variants, &image, &options, checked)),
    };

    let mut reports: Vec<VariantReport> = variants
        .iter()
        .zip(&outcomes)
        .map(|(cfg, o)| VariantReport::new(cfg.variant.clone(), cfg.provider, o.status, &o.references, o.message()))
        .collect();
    let phases = boot_report.as_ref().map(|r| r.phases.as_slice());
    let published = measured.as_ref().map(|m| manifest_measurements(m, &variants, &mut reports, phases));
    let version = match (&previous, variants.first()) {
        (Some(previous), _) => previous.version.clone(),
        (None, Some(cfg)) => cfg.image_version.to_string(),
        (None, None) => String::new(),
    };
    if let Some(previous) = &previous {
        // The earlier run's successes stay in the manifest, in their order; the retried variants replace their
        // entries.
        let mut merged: Vec<VariantReport> = previous
            .variants
            .iter()
            .map(|old| match reports.iter().position(|r| r.variant == old.variant) {
                Some(i) => reports.remove(i),
                None => old.clone(),
            })
            .collect();
        merged.append(&mut reports);
        reports = merged;
    }
    let mut manifest = Manifest::new(version, reports);
    manifest.measurements = published;
    manifest.boot_check = boot_report.as_ref().map(boot_summary);

    let mut bump_error = None;
    if args.increment_version && manifest.all_ok() && !cancel.is_signalled() {
        for (file, current) in &bumps {
            let written = current.bump(args.bump).and_then(|next| {
                version::write_version_file(file, next)?;
                tracing::info!("version file {}: {current} -> {next}", file.display());
                Ok(())
            });
            if let Err(e) = written {
                bump_error.get_or_insert(e);
            }
        }
        manifest.version_bumped = bump_error.is_none();
    } else if args.increment_version {
        tracing::warn!("not incrementing the version: not every variant succeeded");
    }

    if let Some(path) = &args.manifest {
        manifest.write(path)?;
        tracing::info!("manifest written to {}", path.display());
    }
    let stdout = match args.output {
        OutputFormat::Text => manifest.text(),
        OutputFormat::Json => manifest.json(),
    };
    std::io::stdout().write_all(stdout.as_bytes()).map_err(AppError::Stdout)?;

    if cancel.is_signalled() {
        return Err(AppError::Interrupted);
    }
    if let Some(reason) = boot_failure {
        return Err(AppError::BootCheckFailed(reason));
    }
    let mut failures: Vec<(String, ProviderError)> =
        variants.iter().zip(outcomes).filter_map(|(cfg, o)| Some((cfg.label(), o.error?))).collect();
    match failures.len() {
        0 => {}
        1 => return Err(AppError::Provider(failures.remove(0).1)),
        _ => return Err(AppError::Variants(failures)),
    }
    match bump_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Keeps the variants that failed or were skipped in the manifest at `path`, checking that the manifest fits the
/// configuration and the version files still hold its version; returns the manifest.
fn select_retry(path: &std::path::Path, variants: &mut Vec<VariantConfig>) -> Result<Manifest, AppError> {
    let previous = Manifest::read(path)?;
    for entry in previous.variants.iter().filter(|e| e.status != Status::Ok) {
        if !variants.iter().any(|v| v.variant == entry.variant) {
            return Err(AppError::Usage(format!(
                "{} lists variant {} as {:?}, but the configuration (with the variant globs) has no such variant",
                path.display(),
                entry.variant.as_deref().unwrap_or("[base]"),
                entry.status
            )));
        }
    }
    variants.retain(|v| previous.variant(v.variant.as_deref()).is_some_and(|e| e.status != Status::Ok));
    if let Some(v) = variants.iter().find(|v| v.image_version.to_string() != previous.version) {
        return Err(AppError::Usage(format!(
            "{} was written for version {}, but {} is now at version {}; --retry-failed re-runs the same version \
             (restore the version file, or run a normal upload)",
            path.display(),
            previous.version,
            v.label(),
            v.image_version
        )));
    }
    if variants.is_empty() {
        tracing::info!("{}: every variant succeeded already; nothing to retry", path.display());
    } else {
        let names: Vec<String> = variants.iter().map(VariantConfig::label).collect();
        tracing::info!("retrying {} from {}", names.join(", "), path.display());
    }
    Ok(previous)
}

/// `uplosi measurements`; the summary goes to stderr as the Go tool prints it, unless `-q`.
fn measurements(args: &MeasurementsArgs, quiet: bool) -> Result<(), AppError> {
    // Everything the command line can get wrong is checked before the image is read.
    let bank = args.format.bank(args.bank).map_err(|e| AppError::Usage(e.to_string()))?;
    let phases = match &args.phase {
        Some(text) => measure::phases::parse(text).map_err(|e| AppError::Usage(e.to_string()))?,
        None => Vec::new(),
    };
    let keys = args.secure_boot.files().load().map_err(|e| AppError::Usage(e.to_string()))?;
    let options = measure::MeasureOptions { uki_path: args.uki_path.clone(), keys };
    let result = measure::measure(&args.image, &options)?;
    for warning in &result.warnings {
        tracing::warn!("{warning}");
    }
    if !quiet {
        eprint!("{}", result.summary(bank));
    }
    let json = result.document(args.format, bank, &phases);
    match &args.output_file {
        Some(path) => {
            write_measurements(path, &json)?;
            if !quiet {
                eprintln!("Wrote precalculated measurements to {}", path.display());
            }
        }
        None => std::io::stdout().write_all(json.as_bytes()).map_err(AppError::Stdout)?,
    }
    Ok(())
}

/// `uplosi delete` and `uplosi prune`: the plan, a confirmation, the deletion, the report.
fn lifecycle_run(args: &LifecycleArgs, mode: Mode) -> Result<(), AppError> {
    let config = Config::load(&args.selection.config_dir)?;
    let variants =
        config.resolve_selected(&args.selection.enable_variant_glob, &args.selection.disable_variant_glob)?;
    for cfg in &variants {
        if let Some((section, key)) = crate::provider::name_key(cfg.provider) {
            crate::config::names::NamePattern::of(cfg, section, key)
                .map_err(|e| AppError::Usage(format!("{}: {e}", cfg.label())))?;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(AppError::Runtime)?;
    let cancel = Cancel::on_signals();
    let jobs = args.jobs.map_or(variants.len(), |j| j as usize).max(1);
    let mut outcome = lifecycle::Outcome { variants: runtime.block_on(lifecycle::plan(&variants, mode, jobs)) };
    let plan = outcome.plan_text(args.dry_run);
    match args.output {
        OutputFormat::Text => std::io::stdout().write_all(plan.as_bytes()).map_err(AppError::Stdout)?,
        OutputFormat::Json => eprint!("{plan}"),
    }
    let pending = outcome.pending_count();
    if args.dry_run {
        for v in &mut outcome.variants {
            let items = std::mem::take(&mut v.pending);
            v.deleted.extend(items.iter().flat_map(lifecycle::deleted_entries));
        }
    } else if pending > 0 {
        if !args.yes {
            confirm(pending, outcome.variants.iter().filter(|v| !v.pending.is_empty()).count())?;
        }
        runtime.block_on(lifecycle::execute(&variants, &mut outcome.variants, jobs, &cancel));
    }
    if args.output == OutputFormat::Json {
        let json = serde_json::to_string_pretty(&outcome).map_err(|e| AppError::Stdout(e.into()))? + "\n";
        std::io::stdout().write_all(json.as_bytes()).map_err(AppError::Stdout)?;
    }
    let deleted: usize = outcome.variants.iter().map(|v| v.deleted.len()).sum();
    let failed: usize = outcome.variants.iter().map(|v| v.failed.len()).sum();
    if !args.dry_run {
        tracing::info!("deleted {deleted}, failed {failed}");
    }
    if cancel.is_signalled() {
        return Err(AppError::Interrupted);
    }
    if outcome.failed() {
        return Err(AppError::Lifecycle(format!(
            "{failed} could not be listed or deleted (see above); run the same command again to finish"
        )));
    }
    Ok(())
}

/// Asks once, on a terminal, whether to delete `count` items of `variants` variants; refuses off a terminal.
fn confirm(count: usize, variants: usize) -> Result<(), AppError> {
    use std::io::IsTerminal;
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(AppError::Usage(format!(
            "{count} would be deleted (listed above), but there is no terminal to ask: pass --yes or --dry-run"
        )));
    }
    eprint!("Delete the {count} listed above ({variants} variant(s))? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).map_err(AppError::Stdout)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(AppError::Lifecycle("not confirmed; nothing was deleted".into()))
    }
}

/// The options of `uplosi boot-check` from its arguments.
fn boot_check_options(args: &BootCheckArgs) -> Result<BootCheckOptions, AppError> {
    let timeout = crate::config::model::parse_go_duration(&args.timeout).filter(|d| !d.is_zero()).ok_or_else(|| {
        AppError::Usage(format!(
            "--timeout {:?} is not a positive Go duration such as \"90s\", \"5m\" or \"1h\"",
            args.timeout
        ))
    })?;
    let mut options = BootCheckOptions::new();
    options.uki_path = args.uki_path.clone();
    options.bank = args.bank;
    options.keys = args.secure_boot.files().load().map_err(|e| AppError::Usage(e.to_string()))?;
    options.firmware = args.firmware.clone();
    options.memory_mib = args.memory;
    options.cpus = args.cpus;
    if let Some(expect) = &args.expect {
        options.expect = expect.clone();
    }
    options.timeout = timeout;
    options.measure = !args.no_measure;
    options.serial_log = args.serial_log.clone();
    options.accel = args.accel;
    Ok(options)
}

/// `uplosi boot-check`: the summary goes to stderr, the JSON report to stdout with `--output json`.
fn boot_check(args: &BootCheckArgs) -> Result<(), AppError> {
    let options = boot_check_options(args)?;
    let image = SourceImage::open(&args.image)?;
    let report = boot::boot_check(&image, &options, &Cancel::on_signals())?;
    eprint!("{}", report.summary());
    if args.output == OutputFormat::Json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| AppError::Stdout(e.into()))? + "\n";
        std::io::stdout().write_all(json.as_bytes()).map_err(AppError::Stdout)?;
    }
    match report.failure() {
        None => Ok(()),
        Some(reason) => Err(AppError::BootCheckFailed(reason)),
    }
}

fn write_measurements(path: &std::path::Path, json: &str) -> Result<(), AppError> {
    use std::os::unix::fs::PermissionsExt;
    crate::atomic::write_file(path, json.as_bytes(), std::fs::Permissions::from_mode(0o644))
        .map_err(|source| AppError::WriteMeasurements { path: path.to_path_buf(), source })
}

/// Writes each `measurementsFile` the variants name in its `measurementsFormat`, before anything is uploaded, and
/// returns the measurements when there is a file to write or a boot check to run (for the manifest).
fn configured_measurements(
    variants: &[VariantConfig],
    image: &SourceImage,
    boot_check: bool,
) -> Result<Option<measure::Measurements>, AppError> {
    let mut files: BTreeMap<&PathBuf, measure::document::Format> = BTreeMap::new();
    for cfg in variants {
        let Some(path) = &cfg.measurements_file else { continue };
        // Validated with the configuration.
        let format = measure::document::Format::from_name(&cfg.measurements_format).unwrap_or_default();
        if let Some(other) = files.insert(path, format).filter(|f| *f != format) {
            return Err(AppError::Usage(format!(
                "{} writes {} as measurementsFormat \"{}\", another variant as \"{}\"; one file holds one document: \
                 set measurementsFormat in [base] or give the variants their own measurementsFile",
                cfg.label(),
                path.display(),
                format.name(),
                other.name()
            )));
        }
    }
    // An OCI variant that asks for its measurements to be attached gets them computed.
    let attach =
        variants.iter().any(|v| v.provider == crate::config::Provider::Oci && v.oci.attach_measurements == Some(true));
    if files.is_empty() && !boot_check && !attach {
        return Ok(None);
    }
    let measured =
        measure::measure_image(image, &measure::MeasureOptions::firmware_path(), &measure::Platform::UNKNOWN)?;
    for warning in &measured.warnings {
        tracing::warn!("{warning}");
    }
    for (path, format) in files {
        // Validated with the format: the format's own bank.
        let bank = format.bank(None).unwrap_or_default();
        write_measurements(path, &measured.document(format, bank, &[]))?;
        tracing::info!("Wrote precalculated measurements to {} ({})", path.display(), format.name());
    }
    Ok(Some(measured))
}

/// The PCRs a cloud's TPM attests with, in the bank it uses: AWS's NitroTPM SHA-384 PCR 4, 7 and 12 (what KMS key
/// policies check); the vTPMs of the others (and a local libvirt or OpenStack guest's swtpm) SHA-256, PCR 4, 7, 9,
/// 11, 12, 13. With a boot check, PCR 11 after the phases the boot showed joins AWS's.
fn attested_pcrs(provider: crate::config::Provider, booted: bool) -> (measure::digest::Bank, Vec<u32>) {
    match provider {
        crate::config::Provider::Aws if booted => (measure::digest::Bank::Sha384, vec![4, 7, 11, 12]),
        crate::config::Provider::Aws => (measure::digest::Bank::Sha384, vec![4, 7, 12]),
        _ => (measure::digest::Bank::Sha256, vec![4, 7, 9, 11, 12, 13]),
    }
}

/// The manifest's `measurements`: every reported PCR (SHA-256, as `uplosi measurements` prints them) and, under
/// `variants`, what each variant's cloud attests with (`{"attestation": {"bank", "pcrs"}}`); also set on the
/// variants' own entries.
fn manifest_measurements(
    measured: &measure::Measurements,
    variants: &[VariantConfig],
    reports: &mut [VariantReport],
    boot_phases: Option<&[String]>,
) -> serde_json::Value {
    let bank = measure::digest::Bank::Sha256;
    let mut out: serde_json::Map<String, serde_json::Value> = measured
        .simulator
        .values
        .iter()
        .map(|(pcr, value)| (pcr.to_string(), measure::pcr::hex(value.get(bank)).into()))
        .collect();
    let phases = boot_phases.unwrap_or_default();
    let mut per_variant = serde_json::Map::new();
    for cfg in variants {
        let (bank, pcrs) = attested_pcrs(cfg.provider, boot_phases.is_some());
        let source = measure::document::Source {
            simulator: &measured.simulator,
            bank,
            phases,
            secure_boot: measured.replay.secure_boot,
        };
        let attestation = measure::document::attestation(&source, &pcrs);
        if let Some(report) = reports.iter_mut().find(|r| r.variant == cfg.variant) {
            report.attestation = Some(attestation.clone());
        }
        let name = cfg.variant.clone().unwrap_or_else(|| "[base]".to_string());
        per_variant.insert(name, serde_json::json!({ "attestation": attestation }));
    }
    out.insert("variants".into(), per_variant.into());
    out.into()
}

/// The boot check the run does, if `--boot-check` or a variant's `bootCheck` asks for one: once for the image,
/// with the variants' `bootCheckExpect` and `bootCheckTimeout` (which must then agree); with the timeout as written.
fn boot_check_settings(
    args: &UploadArgs,
    variants: &[VariantConfig],
) -> Result<Option<(BootCheckOptions, String)>, AppError> {
    let asking: Vec<&VariantConfig> = variants.iter().filter(|v| v.boot_check || args.boot_check).collect();
    let Some(first) = asking.first() else { return Ok(None) };
    if let Some(other) = asking
        .iter()
        .find(|v| v.boot_check_expect != first.boot_check_expect || v.boot_check_timeout != first.boot_check_timeout)
    {
        return Err(AppError::Usage(format!(
            "{} and {} set different bootCheckExpect or bootCheckTimeout, but the image is booted once for the run; \
             set them in [base]",
            first.label(),
            other.label()
        )));
    }
    let mut options = BootCheckOptions::new();
    if let Some(expect) = &first.boot_check_expect {
        options.expect = expect.clone();
    }
    // Validated with the configuration.
    options.timeout = crate::config::model::parse_go_duration(&first.boot_check_timeout).unwrap_or(options.timeout);
    Ok(Some((options, first.boot_check_timeout.clone())))
}

/// The boot check as the manifest records it: the report without its event lists.
fn boot_summary(report: &boot::BootReport) -> serde_json::Value {
    let mut value = serde_json::to_value(report).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("mismatches");
        object.remove("later_events");
    }
    value
}

fn convert(args: &ConvertArgs) -> Result<(), AppError> {
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let options = ConvertOptions {
        format: args.format,
        level: args.level,
        force: args.force,
        threads: cores,
        // Writes to one file serialise on the inode lock; more threads than cores only spin (measured).
        io_threads: cores.clamp(2, 4),
        mode: 0o644,
    };
    let report = convert::convert(&args.image, &args.output, &options, &Cancel::on_signals())?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    tracing::info!(
        "wrote {} ({}, {:.1} MiB) from {:.1} MiB image with {:.1} MiB of data in {:.2} s",
        args.output.display(),
        args.format.name(),
        mib(report.output_size),
        mib(report.image_size),
        mib(report.data_bytes),
        report.elapsed.as_secs_f64()
    );
    Ok(())
}
