//! uplosi.conf: loading, merging, templates, defaults and validation, compatible with the Go uplosi's files.
//!
//! Merge rule: a value that is written wins over everything before it — the variant over `[base]`, a later file
//! over an earlier one — including `false`, `0`, `""` and `[]`. Lists and tables are replaced whole, never
//! concatenated. (The Go tool merged with "non-zero wins", so `publish = false` in a variant was lost.)

pub mod certificate;
pub mod load;
pub mod model;
pub mod names;
pub mod registry;
pub mod schema;
pub mod template;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use load::{Origin, Problem, Setting, Settings, Value};
pub use model::{
    AwsConfig, AzureConfig, FileConfig, GcpConfig, LibvirtConfig, OciConfig, OpenStackConfig, Provider, VariantConfig,
};

/// Everything that can go wrong between reading uplosi.conf and having validated variants.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// No `uplosi.conf` in the config directory.
    #[error(
        "no uplosi.conf in {}: run uplosi in the directory that holds it, or pass -c DIR (see uplosi.conf.example)",
        dir.display()
    )]
    MissingConfig {
        /// The directory that was searched.
        dir: PathBuf,
    },
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration has one or more problems.
    #[error("{}", ProblemList(problems))]
    Invalid {
        /// Every problem found, in file and line order.
        problems: Vec<Problem>,
    },
    /// A variant glob is malformed.
    #[error("invalid variant glob \"{glob}\": {message}")]
    BadGlob {
        /// The glob.
        glob: String,
        /// Why it is invalid.
        message: String,
    },
    /// The globs left no variant.
    #[error(
        "no variant selected: the variant globs filter out all of {}; check --enable-variant-glob and --disable-variant-glob",
        available.join(", ")
    )]
    NothingSelected {
        /// All variant names.
        available: Vec<String>,
    },
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} problems in the configuration:", many.len())?;
                for p in many {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

/// The merged content of `uplosi.conf` and `uplosi.conf.d/*.conf`.
#[derive(Clone, Debug)]
pub struct Config {
    /// The config directory; relative version files resolve against it.
    pub dir: PathBuf,
    /// Merged `[base]`.
    pub base: Settings,
    /// Merged variants by name.
    pub variants: BTreeMap<String, load::VariantLayer>,
}

impl Config {
    /// Loads and merges the files in `dir`.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let layers = load::load_layers(dir)?;
        Ok(Self::merge(dir, layers))
    }

    /// Merges layers in order; later values win.
    pub fn merge(dir: &Path, layers: Vec<load::Layer>) -> Self {
        let mut base = Settings::new();
        let mut variants: BTreeMap<String, load::VariantLayer> = BTreeMap::new();
        for layer in layers {
            base.extend(layer.base);
            for (name, overlay) in layer.variants {
                let entry = variants.entry(name).or_default();
                if entry.declared_at.is_none() {
                    entry.declared_at = overlay.declared_at;
                }
                entry.settings.extend(overlay.settings);
            }
        }
        Self { dir: dir.to_path_buf(), base, variants }
    }

    /// Names of the variants the globs select, sorted; `[None]` when the files define no variants (then `[base]`
    /// is the one unnamed variant and globs do not apply). A name is selected when it matches any enable glob and
    /// no disable glob, as in the Go tool (shell-style `*`, `?`, `[…]`).
    pub fn select(&self, enable: &[String], disable: &[String]) -> Result<Vec<Option<String>>, ConfigError> {
        if self.variants.is_empty() {
            return Ok(vec![None]);
        }
        let compile = |globs: &[String]| {
            globs
                .iter()
                .map(|g| {
                    glob::Pattern::new(g)
                        .map_err(|e| ConfigError::BadGlob { glob: g.clone(), message: e.msg.to_string() })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let enable = if enable.is_empty() {
            vec![glob::Pattern::new("*").ok()].into_iter().flatten().collect()
        } else {
            compile(enable)?
        };
        let disable = compile(disable)?;
        let selected: Vec<Option<String>> = self
            .variants
            .keys()
            .filter(|name| enable.iter().any(|p| p.matches(name)) && !disable.iter().any(|p| p.matches(name)))
            .map(|name| Some(name.clone()))
            .collect();
        if selected.is_empty() {
            return Err(ConfigError::NothingSelected { available: self.variants.keys().cloned().collect() });
        }
        Ok(selected)
    }

    /// Resolves and validates one variant (`None` for the unnamed base variant).
    pub fn resolve(&self, variant: Option<&str>) -> Result<VariantConfig, Vec<Problem>> {
        let mut settings = self.base.clone();
        let mut declared_at = None;
        if let Some(name) = variant
            && let Some(layer) = self.variants.get(name)
        {
            settings.extend(layer.settings.clone());
            declared_at = layer.declared_at.as_ref();
        }
        let (cfg, mut problems) = model::resolve(variant, &settings, &self.dir, declared_at)?;
        problems.extend(validate::validate(&cfg));
        if problems.is_empty() { Ok(cfg) } else { Err(problems) }
    }

    /// Resolves every selected variant, reporting the problems of all of them at once.
    pub fn resolve_selected(&self, enable: &[String], disable: &[String]) -> Result<Vec<VariantConfig>, ConfigError> {
        let mut resolved = Vec::new();
        let mut problems = Vec::new();
        for name in self.select(enable, disable)? {
            match self.resolve(name.as_deref()) {
                Ok(cfg) => resolved.push(cfg),
                Err(mut p) => problems.append(&mut p),
            }
        }
        if problems.is_empty() {
            Ok(resolved)
        } else {
            // A base problem shows up once per variant; say it once.
            let mut seen = std::collections::HashSet::new();
            problems.retain(|p| seen.insert(p.to_string()));
            Err(ConfigError::Invalid { problems })
        }
    }
}
