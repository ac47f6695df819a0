//! Reading `uplosi.conf` and `uplosi.conf.d/*.conf` into layers of settings that remember where each value came from.
//!
//! The files are parsed with toml's spanned parser and then walked against [`schema`](super::schema), so an unknown
//! key or a wrong type is reported with its file, line and section, and a near miss gets a suggestion.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::ConfigError;
use super::schema::{Kind, Section, suggest};

/// File name of the main configuration file.
pub const CONFIG_FILE: &str = "uplosi.conf";
/// Directory of overlay files, read in alphabetical order after [`CONFIG_FILE`].
pub const OVERLAY_DIR: &str = "uplosi.conf.d";

/// Where a setting was written: the file (as shown to the user) and the 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file, relative to the config directory when it is inside it.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A typed configuration value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string.
    String(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Integer(i64),
    /// A list of strings.
    StringList(Vec<String>),
    /// A table of strings.
    StringMap(BTreeMap<String, String>),
}

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The value.
    pub value: Value,
    /// Where it was written.
    pub origin: Origin,
}

/// The settings of one `[base]` or `[variant.NAME]` table, keyed by (section, key).
pub type Settings = BTreeMap<(Section, &'static str), Setting>;

/// One variant as declared in one file.
#[derive(Clone, Debug, Default)]
pub struct VariantLayer {
    /// Its settings.
    pub settings: Settings,
    /// Where `[variant.NAME]` first appeared.
    pub declared_at: Option<Origin>,
}

/// Everything one file says.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    /// `[base]` settings.
    pub base: Settings,
    /// `[variant.NAME]` settings by name.
    pub variants: BTreeMap<String, VariantLayer>,
}

/// A problem found while reading one file; collected so a user sees all of them at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where the problem is, if it is tied to a place.
    pub origin: Option<Origin>,
    /// What is wrong, as a sentence fragment.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Some(origin) => write!(f, "{origin}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Reads `DIR/uplosi.conf` and then `DIR/uplosi.conf.d/*.conf` in alphabetical order.
pub fn load_layers(dir: &Path) -> Result<Vec<Layer>, ConfigError> {
    let main = dir.join(CONFIG_FILE);
    let mut files = vec![main.clone()];
    let overlay_dir = dir.join(OVERLAY_DIR);
    match std::fs::read_dir(&overlay_dir) {
        Ok(entries) => {
            let mut overlays = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| ConfigError::Read { path: overlay_dir.clone(), source })?;
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "conf") && path.is_file() {
                    overlays.push(path);
                }
            }
            overlays.sort();
            files.extend(overlays);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ConfigError::Read { path: overlay_dir, source }),
    }

    let mut layers = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == main => {
                return Err(ConfigError::MissingConfig { dir: dir.to_path_buf() });
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let shown = path.strip_prefix(dir).map(Path::to_path_buf).unwrap_or(path.clone());
        match parse_layer(&text, &shown) {
            Ok(layer) => layers.push(layer),
            Err(mut p) => problems.append(&mut p),
        }
    }
    if problems.is_empty() { Ok(layers) } else { Err(ConfigError::Invalid { problems }) }
}

/// Parses one file's text. `file` is only used in messages.
pub fn parse_layer(text: &str, file: &Path) -> Result<Layer, Vec<Problem>> {
    let lines = LineIndex::new(text);
    let origin = |offset: usize| Origin { file: file.to_path_buf(), line: lines.line(offset) };
    let root = DeTable::parse(text).map_err(|e| {
        let at = e.span().map(|s| s.start).unwrap_or(0);
        vec![Problem { origin: Some(origin(at)), message: format!("invalid TOML: {}", e.message().trim_end()) }]
    })?;

    let mut walker = Walker { origin: &origin, problems: Vec::new() };
    let mut layer = Layer::default();
    for (key, value) in root.get_ref() {
        match key.get_ref().as_ref() {
            "base" => {
                if let Some(table) = walker.expect_table(value, "[base]") {
                    layer.base = walker.root_table(table, "base");
                }
            }
            "variant" => {
                let Some(variants) = walker.expect_table(value, "[variant]") else { continue };
                for (name, body) in variants {
                    let label = format!("variant.{}", name.get_ref());
                    if let Some(table) = walker.expect_table(body, &format!("[{label}]")) {
                        let settings = walker.root_table(table, &label);
                        layer.variants.insert(
                            name.get_ref().to_string(),
                            VariantLayer { settings, declared_at: Some(origin(name.span().start)) },
                        );
                    }
                }
            }
            other => {
                let hint = suggest(other, ["base", "variant"])
                    .map(|s| format!(" (did you mean `[{s}]`?)"))
                    .unwrap_or_else(|| " (only [base] and [variant.NAME] are allowed)".to_string());
                walker.problem(key.span().start, format!("unknown top-level key `{other}`{hint}"));
            }
        }
    }
    if walker.problems.is_empty() { Ok(layer) } else { Err(walker.problems) }
}

struct Walker<'a> {
    origin: &'a dyn Fn(usize) -> Origin,
    problems: Vec<Problem>,
}

impl Walker<'_> {
    fn problem(&mut self, offset: usize, message: String) {
        self.problems.push(Problem { origin: Some((self.origin)(offset)), message });
    }

    fn expect_table<'v, 'i>(&mut self, value: &'v Spanned<DeValue<'i>>, what: &str) -> Option<&'v DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.problem(value.span().start, format!("{what} must be a table, found {}", other.type_str()));
                None
            }
        }
    }

    /// Walks `[base]` or `[variant.NAME]`: common keys plus provider sub-tables.
    fn root_table(&mut self, table: &DeTable<'_>, label: &str) -> Settings {
        let mut settings = Settings::new();
        for (key, value) in table {
            let name = key.get_ref().as_ref();
            if let Some(section) = Section::from_table_name(name) {
                let sub_label = format!("{label}.{name}");
                if let Some(sub) = self.expect_table(value, &format!("[{sub_label}]")) {
                    for (k, v) in sub {
                        self.setting(&mut settings, section, k, v, &sub_label);
                    }
                }
            } else {
                self.setting(&mut settings, Section::Common, key, value, label);
            }
        }
        settings
    }

    fn setting(
        &mut self,
        settings: &mut Settings,
        section: Section,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
        label: &str,
    ) {
        let name = key.get_ref().as_ref();
        let Some(spec) = section.spec(name) else {
            let mut candidates: Vec<&str> = section.keys().iter().map(|k| k.name).collect();
            if section == Section::Common {
                candidates.extend(Section::PROVIDERS.iter().map(|s| s.table_name()));
            }
            let hint = match suggest(name, candidates.iter().copied()) {
                Some(s) => format!(" (did you mean `{s}`?)"),
                None => format!(" (known keys: {})", candidates.join(", ")),
            };
            self.problem(key.span().start, format!("unknown key `{name}` in [{label}]{hint}"));
            return;
        };
        match convert(value.get_ref(), spec.kind) {
            Some(v) => {
                settings.insert((section, spec.name), Setting { value: v, origin: (self.origin)(key.span().start) });
            }
            None => self.problem(
                value.span().start,
                format!(
                    "`{name}` in [{label}] must be {}, found {}",
                    spec.kind.describe(),
                    describe_found(value.get_ref())
                ),
            ),
        }
    }
}

fn describe_found(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("the string \"{s}\""),
        DeValue::Integer(i) => format!("the integer {}", i.as_str()),
        DeValue::Boolean(b) => format!("the boolean {b}"),
        DeValue::Array(_) => "an array (check that every element is a string)".into(),
        other => other.type_str().to_string(),
    }
}

fn convert(value: &DeValue<'_>, kind: Kind) -> Option<Value> {
    Some(match (kind, value) {
        (Kind::String, DeValue::String(s)) => Value::String(s.to_string()),
        (Kind::Bool, DeValue::Boolean(b)) => Value::Bool(*b),
        (Kind::Integer, DeValue::Integer(i)) => {
            let digits = i.as_str().replace('_', "");
            Value::Integer(i64::from_str_radix(&digits, i.radix()).ok()?)
        }
        (Kind::StringList, DeValue::Array(items)) => Value::StringList(
            items.iter().map(|item| item.get_ref().as_str().map(str::to_string)).collect::<Option<Vec<_>>>()?,
        ),
        (Kind::StringMap, DeValue::Table(table)) => Value::StringMap(
            table
                .iter()
                .map(|(k, v)| Some((k.get_ref().to_string(), v.get_ref().as_str()?.to_string())))
                .collect::<Option<BTreeMap<_, _>>>()?,
        ),
        _ => return None,
    })
}

/// Maps byte offsets to 1-based line numbers.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Layer, Vec<Problem>> {
        parse_layer(text, Path::new("uplosi.conf"))
    }

    #[test]
    fn unknown_key_names_file_line_section_and_suggestion() {
        let err = parse("[base]\nname = \"x\"\n\n[base.aws]\nregoin = \"eu-west-1\"\n").unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].to_string(), "uplosi.conf:5: unknown key `regoin` in [base.aws] (did you mean `region`?)");
    }

    #[test]
    fn unknown_key_in_variant_and_top_level() {
        let err = parse("[variants.foo]\nprovider = \"aws\"\n[variant.foo]\nprovder = \"aws\"\n").unwrap_err();
        let messages: Vec<String> = err.iter().map(ToString::to_string).collect();
        assert!(
            messages.iter().any(|m| m.contains(":1: unknown top-level key `variants` (did you mean `[variant]`?)"))
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains(":4: unknown key `provder` in [variant.foo] (did you mean `provider`?)"))
        );
    }

    #[test]
    fn wrong_type_names_the_expected_type() {
        let err = parse("[base.aws]\npublish = \"yes\"\n").unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "uplosi.conf:2: `publish` in [base.aws] must be a boolean (true or false), found the string \"yes\""
        );
        let err = parse("[base.openstack]\ntags = [\"a\", 1]\n").unwrap_err();
        assert!(err[0].message.contains("must be an array of strings"));
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = parse("[base]\nname = \"x\"\nimageVersion = \n").unwrap_err();
        assert!(err[0].to_string().starts_with("uplosi.conf:3: invalid TOML"), "{}", err[0]);
    }

    #[test]
    fn values_keep_their_origin() {
        let layer =
            parse("[base]\nname = \"x\"\n[variant.a.openstack]\nminDiskGB = 0x20\nproperties = { a = \"b\" }\n")
                .unwrap();
        let s = &layer.variants["a"].settings[&(Section::OpenStack, "minDiskGB")];
        assert_eq!(s.value, Value::Integer(32));
        assert_eq!(s.origin.line, 4);
        assert_eq!(layer.base[&(Section::Common, "name")].value, Value::String("x".into()));
    }

    #[test]
    fn dotted_keys_and_inline_tables_are_the_same_as_sections() {
        let layer = parse("base.aws.region = \"eu-west-1\"\nvariant = { x = { provider = \"gcp\" } }\n").unwrap();
        assert!(layer.base.contains_key(&(Section::Aws, "region")));
        assert!(layer.variants.contains_key("x"));
    }
}
