//! Runs a parsed command line: the glue between [`cli`](crate::cli) and the library modules.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use thiserror::Error;

use crate::cancel::Cancel;
use crate::cli::{Cli, Command, ConvertArgs, MeasurementsArgs, OutputFormat, UploadArgs};
use crate::config::{Config, ConfigError, VariantConfig};
use crate::convert::{self, ConvertError, ConvertOptions};
use crate::image::{ImageError, SourceImage};
use crate::measure::{self, MeasureError};
use crate::plan;
use crate::provider::{self, ProviderError, UploadOptions};
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
    let config = Config::load(&args.config_dir)?;
    let variants = config.resolve_selected(&args.enable_variant_glob, &args.disable_variant_glob)?;
    let bumps = version_files(&variants);
    if args.increment_version && bumps.is_empty() {
        return Err(AppError::Usage(
            "-i/--increment-version needs a version file, but no selected variant sets `imageVersionFile`; \
             add imageVersionFile = \"version.txt\" to [base] or drop -i"
                .to_string(),
        ));
    }

    if args.dry_run {
        let plan = plan::plan(&variants, &args.image);
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

    // Every provider and every credential is checked before the first byte moves, so a run does not stop half-way
    // for a reason that was knowable up front.
    provider::check_supported(&variants)?;
    write_configured_measurements(&variants, &image)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(AppError::Runtime)?;
    let options = UploadOptions { concurrency: args.concurrency as usize, cancel: Cancel::on_signals() };
    let results = runtime.block_on(async {
        for cfg in &variants {
            provider::preflight(cfg).await?;
        }
        // Variants upload in parallel; each keeps its own order of steps.
        let uploads = variants.iter().map(|cfg| provider::upload(cfg, &image, &options));
        Ok::<_, ProviderError>(futures_util::future::join_all(uploads).await)
    })?;

    let mut references = Vec::new();
    let mut failures = Vec::new();
    for (cfg, result) in variants.iter().zip(results) {
        match result {
            Ok(refs) => references.extend(refs.into_iter().map(|r| (cfg, r))),
            Err(e) => failures.push((cfg.label(), e)),
        }
    }
    let stdout = match args.output {
        OutputFormat::Text => references.iter().map(|(_, r)| format!("{r}\n")).collect::<String>(),
        OutputFormat::Json => {
            let list: Vec<serde_json::Value> = references
                .iter()
                .map(|(cfg, r)| serde_json::json!({"variant": cfg.variant, "provider": cfg.provider, "reference": r}))
                .collect();
            serde_json::to_string_pretty(&serde_json::json!({ "references": list }))
                .map_err(|e| AppError::Stdout(e.into()))?
                + "\n"
        }
    };
    std::io::stdout().write_all(stdout.as_bytes()).map_err(AppError::Stdout)?;
    match failures.len() {
        0 => {}
        1 => return Err(AppError::Provider(failures.remove(0).1)),
        _ => return Err(AppError::Variants(failures)),
    }

    if args.increment_version {
        for (file, current) in &bumps {
            let next = current.bump(args.bump)?;
            version::write_version_file(file, next)?;
            tracing::info!("version file {}: {current} -> {next}", file.display());
        }
    }
    Ok(())
}

/// `uplosi measurements`; the summary goes to stderr as the Go tool prints it, unless `-q`.
fn measurements(args: &MeasurementsArgs, quiet: bool) -> Result<(), AppError> {
    let result = measure::measure(&args.image, &args.uki_path)?;
    if !quiet {
        eprint!("{}", result.summary);
    }
    let json = result.simulator.to_json();
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

fn write_measurements(path: &std::path::Path, json: &str) -> Result<(), AppError> {
    use std::os::unix::fs::PermissionsExt;
    crate::atomic::write_file(path, json.as_bytes(), std::fs::Permissions::from_mode(0o644))
        .map_err(|source| AppError::WriteMeasurements { path: path.to_path_buf(), source })
}

/// Writes each `measurementsFile` the variants name, before anything is uploaded (`[base] measurementsFile`).
fn write_configured_measurements(variants: &[VariantConfig], image: &SourceImage) -> Result<(), AppError> {
    let files: std::collections::BTreeSet<&PathBuf> =
        variants.iter().filter_map(|v| v.measurements_file.as_ref()).collect();
    if files.is_empty() {
        return Ok(());
    }
    let json = measure::measure_image(image, measure::DEFAULT_UKI_PATH)?.simulator.to_json();
    for path in files {
        write_measurements(path, &json)?;
        tracing::info!("Wrote precalculated measurements to {}", path.display());
    }
    Ok(())
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
