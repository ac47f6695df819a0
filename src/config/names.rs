//! The names uplosi gives a variant's images at any version: a name template (`amiName`, `imageName`, `path`, …)
//! rendered with the version left open, so the version can be read back out of a name found in the cloud.
//!
//! A name belongs to the variant only if the template, rendered with the version read from it, gives exactly that
//! name again; names without a `MAJOR.MINOR.PATCH` there (a hand-made `podvm-latest`, `podvm-1.2`) are never the
//! variant's, and so never deleted.

use regex::Regex;

use super::VariantConfig;
use super::schema::Section;
use super::template::{self, TemplateData};
use crate::version::ImageVersion;

/// Stand-ins for the version's parts while rendering: private-use characters no template or cloud name contains,
/// and without a `.`, so `{{replaceAll .Version "." "-"}}` works on them as on digits.
const MAJOR: char = '\u{e001}';
const MINOR: char = '\u{e002}';
const PATCH: char = '\u{e003}';

/// Why a template cannot tell versions apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoVersion {
    /// The key, as written (`aws.amiName`).
    pub key: String,
    /// Its template.
    pub template: String,
}

impl std::fmt::Display for NoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` = {:?} does not contain the whole version ({{{{.Version}}}}, or {{{{.VersionMajor}}}}, \
             {{{{.VersionMinor}}}} and {{{{.VersionPatch}}}}), so the images of different versions cannot be told apart; \
             refusing to delete or prune by it",
            self.key, self.template
        )
    }
}

/// A name template with the version left open.
#[derive(Clone, Debug)]
pub struct NamePattern {
    template: String,
    name: String,
    regex: Regex,
    glob: String,
}

impl NamePattern {
    /// The pattern of `key` in `section` of `cfg`.
    pub fn of(cfg: &VariantConfig, section: Section, key: &'static str) -> Result<Self, NoVersion> {
        let template = cfg.templates.get(&(section, key)).cloned().unwrap_or_default();
        Self::new(&template, &cfg.name).ok_or_else(|| NoVersion {
            key: match section {
                Section::Common => key.to_string(),
                other => format!("{}.{key}", other.table_name()),
            },
            template,
        })
    }

    /// The pattern of `template` for image name `name` (`{{.Name}}`); `None` if the template does not hold the
    /// whole version (or does not render).
    pub fn new(template: &str, name: &str) -> Option<Self> {
        let open = format!("{MAJOR}.{MINOR}.{PATCH}");
        let rendered = template::render(template, &TemplateData::new(name, &open)).ok()?;
        if ![MAJOR, MINOR, PATCH].iter().all(|c| rendered.contains(*c)) {
            return None;
        }
        let mut regex = String::from("^");
        let mut glob = String::new();
        let mut seen = [false; 3];
        let mut literal = String::new();
        for c in rendered.chars() {
            let part = [MAJOR, MINOR, PATCH].iter().position(|p| *p == c);
            match part {
                Some(i) => {
                    regex.push_str(&regex::escape(&std::mem::take(&mut literal)));
                    let number = "0|[1-9][0-9]{0,18}";
                    if seen[i] {
                        // The regex crate has no back-references; the re-render in `version_of` checks repeats.
                        regex.push_str(&format!("(?:{number})"));
                    } else {
                        regex.push_str(&format!("(?P<{}>{number})", ["major", "minor", "patch"][i]));
                        seen[i] = true;
                    }
                    if !glob.ends_with('*') {
                        glob.push('*');
                    }
                }
                None => {
                    literal.push(c);
                    glob.push(c);
                }
            }
        }
        regex.push_str(&regex::escape(&literal));
        regex.push('$');
        let regex = Regex::new(&regex).ok()?;
        Some(Self { template: template.to_string(), name: name.to_string(), regex, glob })
    }

    /// The version in `candidate`, if it is a name this template gives at some `MAJOR.MINOR.PATCH`.
    pub fn version_of(&self, candidate: &str) -> Option<ImageVersion> {
        let caps = self.regex.captures(candidate)?;
        let part = |name: &str| caps.name(name)?.as_str().parse::<u64>().ok();
        let version = ImageVersion { major: part("major")?, minor: part("minor")?, patch: part("patch")? };
        (self.render(version).as_deref() == Some(candidate)).then_some(version)
    }

    /// The name at `version`.
    pub fn render(&self, version: ImageVersion) -> Option<String> {
        template::render(&self.template, &TemplateData::new(&self.name, &version.to_string())).ok()
    }

    /// The name with `*` for the version parts (for name filters and file globs).
    pub fn glob(&self) -> &str {
        &self.glob
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u64, minor: u64, patch: u64) -> ImageVersion {
        ImageVersion { major, minor, patch }
    }

    #[test]
    fn versions_are_read_back_from_names() -> Result<(), &'static str> {
        let ami = NamePattern::new("{{.Name}}-{{.Version}}", "podvm").ok_or("template")?;
        assert_eq!(ami.version_of("podvm-1.0.5"), Some(v(1, 0, 5)));
        assert_eq!(ami.version_of("podvm-10.20.300"), Some(v(10, 20, 300)));
        for foreign in ["podvm-1.0", "podvm-latest", "podvm-1.0.5-debug", "other-1.0.5", "podvm-01.0.5", "podvm-1.0.x"]
        {
            assert_eq!(ami.version_of(foreign), None, "{foreign}");
        }
        assert_eq!(ami.glob(), "podvm-*.*.*");
        let gce = NamePattern::new(r#"{{.Name}}-{{replaceAll .Version "." "-"}}"#, "podvm").ok_or("template")?;
        assert_eq!(gce.version_of("podvm-1-2-3"), Some(v(1, 2, 3)));
        assert_eq!(gce.version_of("podvm-1.2.3"), None);
        let parts = NamePattern::new("{{.Name}}-v{{.VersionMajor}}/{{.VersionMinor}}-{{.VersionPatch}}.raw", "x")
            .ok_or("template")?;
        assert_eq!(parts.version_of("x-v2/0-7.raw"), Some(v(2, 0, 7)));
        assert_eq!(parts.glob(), "x-v*/*-*.raw");
        let twice = NamePattern::new("{{.Version}}/{{.Name}}-{{.Version}}", "x").ok_or("template")?;
        assert_eq!(twice.version_of("1.2.3/x-1.2.3"), Some(v(1, 2, 3)));
        assert_eq!(twice.version_of("1.2.3/x-1.2.4"), None, "both places must agree");
        Ok(())
    }

    #[test]
    fn templates_without_the_whole_version_are_refused() {
        assert!(NamePattern::new("{{.Name}}", "podvm").is_none());
        assert!(NamePattern::new("{{.Name}}-{{.VersionMajor}}", "podvm").is_none());
        assert!(NamePattern::new("fixed-name", "podvm").is_none());
    }
}
