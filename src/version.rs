//! Image versions: strict `MAJOR.MINOR.PATCH` parsing, bumping, and the atomic rewrite of version files.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

/// A `MAJOR.MINOR.PATCH` image version, without pre-release or build suffixes (no cloud accepts those everywhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageVersion {
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Patch number.
    pub patch: u64,
}

/// Which part of the version `-i` increments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BumpPart {
    /// `1.2.3` → `2.0.0`
    Major,
    /// `1.2.3` → `1.3.0`
    Minor,
    /// `1.2.3` → `1.2.4`
    #[default]
    Patch,
}

/// Errors from parsing versions and writing version files.
#[derive(Debug, Error)]
pub enum VersionError {
    /// The text is not `MAJOR.MINOR.PATCH`.
    #[error("image version \"{text}\" must be in the form MAJOR.MINOR.PATCH (for example 1.2.3)")]
    Malformed {
        /// The offending text.
        text: String,
    },
    /// The version would overflow.
    #[error("image version {version} cannot be incremented: the number would overflow")]
    Overflow {
        /// The version.
        version: ImageVersion,
    },
    /// Writing the version file failed.
    #[error("cannot write version file {path}: {source}")]
    Write {
        /// The version file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl FromStr for ImageVersion {
    type Err = VersionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || VersionError::Malformed { text: text.to_string() };
        // semver also accepts `1.2.3-rc1+build`; uplosi versions end up in AMI names, gallery versions and GCE image
        // names, which reject those suffixes, so only the plain triple is allowed.
        let parsed = semver::Version::parse(text).map_err(|_| malformed())?;
        if !parsed.pre.is_empty() || !parsed.build.is_empty() {
            return Err(malformed());
        }
        Ok(Self { major: parsed.major, minor: parsed.minor, patch: parsed.patch })
    }
}

impl fmt::Display for ImageVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl serde::Serialize for ImageVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl ImageVersion {
    /// The next version, incrementing `part` and resetting the parts after it.
    pub fn bump(self, part: BumpPart) -> Result<Self, VersionError> {
        let overflow = || VersionError::Overflow { version: self };
        Ok(match part {
            BumpPart::Major => Self { major: self.major.checked_add(1).ok_or_else(overflow)?, minor: 0, patch: 0 },
            BumpPart::Minor => Self { minor: self.minor.checked_add(1).ok_or_else(overflow)?, patch: 0, ..self },
            BumpPart::Patch => Self { patch: self.patch.checked_add(1).ok_or_else(overflow)?, ..self },
        })
    }
}

/// Replaces the version file's content with `version` and a newline, atomically.
///
/// The Go tool opened the file without truncating, so `1.10.0` → `1.9.9` left `1.9.90`. Here a temporary file in the
/// same directory gets the new content, the original's permissions, and an fsync, and is then renamed over the
/// original, so readers see either the old or the new version, never a mix.
pub fn write_version_file(path: &Path, version: ImageVersion) -> Result<(), VersionError> {
    let err = |source| VersionError::Write { path: path.to_path_buf(), source };
    let permissions = std::fs::metadata(path).map_err(err)?.permissions();
    crate::atomic::write_file(path, format!("{version}\n").as_bytes(), permissions).map_err(err)
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;

    use super::*;

    #[test]
    fn parses_only_plain_triples() -> TestResult {
        assert_eq!("1.2.3".parse::<ImageVersion>()?, ImageVersion { major: 1, minor: 2, patch: 3 });
        for bad in ["1.2", "1.2.3.4", "v1.2.3", "1.2.3-rc1", "1.2.3+b", "", " 1.2.3", "a.b.c", "01.2.3"] {
            assert!(bad.parse::<ImageVersion>().is_err(), "{bad} should be rejected");
        }
        Ok(())
    }

    #[test]
    fn bump_each_part() -> TestResult {
        let v: ImageVersion = "1.9.9".parse()?;
        assert_eq!(v.bump(BumpPart::Patch)?.to_string(), "1.9.10");
        assert_eq!(v.bump(BumpPart::Minor)?.to_string(), "1.10.0");
        assert_eq!(v.bump(BumpPart::Major)?.to_string(), "2.0.0");
        let max = ImageVersion { major: 0, minor: 0, patch: u64::MAX };
        assert!(matches!(max.bump(BumpPart::Patch), Err(VersionError::Overflow { .. })));
        Ok(())
    }

    #[test]
    fn version_file_is_replaced_whole_and_keeps_permissions() -> TestResult {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("version.txt");
        std::fs::write(&path, "1.10.0-long-old-content\n")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
        write_version_file(&path, "1.9.9".parse()?)?;
        assert_eq!(std::fs::read_to_string(&path)?, "1.9.9\n");
        assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o640);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())?.collect();
        assert_eq!(leftovers.len(), 1, "no temporary file may be left behind");
        Ok(())
    }

    #[test]
    fn writing_a_missing_file_fails_with_its_path() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("missing.txt");
        let err = write_version_file(&path, "1.0.0".parse()?).unwrap_err();
        assert!(err.to_string().contains("missing.txt"));
        Ok(())
    }
}
