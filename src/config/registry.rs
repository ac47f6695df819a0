//! OCI repository references and tags as `[….oci]` names them (the distribution spec's grammar, with Docker's
//! defaults for a name without a registry host), and libvirt capacities as `virsh vol-create-as` takes them.

/// A repository in a registry: `registry[:port]/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repository {
    /// The host (and port) as the user wrote it (`ghcr.io`, `127.0.0.1:5000`; `docker.io` for Docker Hub).
    pub registry: String,
    /// The repository's name inside the registry (`org/podvm-amd64`).
    pub name: String,
}

impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.name)
    }
}

/// A path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    if bytes.is_empty() || !bytes[0].is_ascii_lowercase() && !bytes[0].is_ascii_digit() {
        return false;
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or a run of "-", followed by an alphanumeric.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => i += if bytes.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !bytes.get(i).copied().is_some_and(alnum) {
            return false;
        }
    }
    true
}

impl Repository {
    /// Parses `text`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains('@') {
            return Err("a repository has no digest (`@sha256:…`); name the repository only".into());
        }
        let (first, rest) = match text.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
            _ => ("docker.io", text),
        };
        if first.is_empty() {
            return Err("the registry host is empty".into());
        }
        if rest.contains(':') {
            return Err("a repository has no tag (`:TAG`); put tags into `tags`".into());
        }
        let mut name = rest.to_string();
        if first == "docker.io" && !name.contains('/') {
            name = format!("library/{name}");
        }
        if let Some(bad) = name.split('/').find(|c| !valid_component(c)) {
            return Err(format!(
                "the path component {bad:?} is not lower-case letters and digits joined by '.', '_', '__' or '-'"
            ));
        }
        if name.len() > 255 {
            return Err(format!("the name is {} characters long; registries take at most 255", name.len()));
        }
        Ok(Self { registry: first.to_string(), name })
    }

    /// The host the registry API is at: Docker Hub's is `registry-1.docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" { "registry-1.docker.io" } else { &self.registry }
    }

    /// Whether the registry is on this machine (`localhost`, 127.0.0.0/8, `::1`).
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => self.registry.rsplit_once(':').map_or(self.registry.as_str(), |(h, _)| h),
        };
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// Whether `tag` is a valid tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && tag.len() <= 128
}

/// Whether `text` is a media type (`type/subtype`, RFC 6838 restricted names).
pub fn valid_media_type(text: &str) -> bool {
    let part = |p: &str| {
        let mut chars = p.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c))
            && p.len() <= 127
    };
    text.split_once('/').is_some_and(|(t, s)| part(t) && part(s))
}

/// A capacity as `virsh vol-create-as` takes it: bytes, or a number with a unit (`k`, `KiB`, `M`, `MiB`, `G`, `GiB`,
/// `T`, `TiB`, `P`, `PiB` are powers of 1024; `KB`, `MB`, `GB`, `TB`, `PB` of 1000; `b` bytes).
pub fn parse_capacity(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "b" | "B" => 1,
        "k" | "K" | "KiB" => 1 << 10,
        "KB" => 1_000,
        "m" | "M" | "MiB" => 1 << 20,
        "MB" => 1_000_000,
        "g" | "G" | "GiB" => 1 << 30,
        "GB" => 1_000_000_000,
        "t" | "T" | "TiB" => 1 << 40,
        "TB" => 1_000_000_000_000,
        "p" | "P" | "PiB" => 1 << 50,
        "PB" => 1_000_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor).filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_parse_with_dockers_defaults() {
        let r = Repository::parse("ghcr.io/org/podvm-amd64").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.registry.as_str(), r.name.as_str()), ("ghcr.io", "org/podvm-amd64"));
        let local = Repository::parse("127.0.0.1:5000/podvm").unwrap_or_else(|e| panic!("{e}"));
        assert!(local.is_loopback());
        assert_eq!(local.to_string(), "127.0.0.1:5000/podvm");
        let hub = Repository::parse("ubuntu").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (hub.registry.as_str(), hub.name.as_str(), hub.api_host()),
            ("docker.io", "library/ubuntu", "registry-1.docker.io")
        );
        assert!(!hub.is_loopback());
        assert!(Repository::parse("localhost/a__b/c-d.e").is_ok());
        assert!(Repository::parse("[::1]:5000/podvm").is_ok_and(|r| r.is_loopback()));
        for bad in [
            "ghcr.io/org/podvm:1.2.3",
            "ghcr.io/Org/podvm",
            "ghcr.io/org//podvm",
            "ghcr.io/org/podvm@sha256:00",
            "ghcr.io/-x",
        ] {
            assert!(Repository::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_media_types_and_capacities() {
        assert!(valid_tag("1.2.3") && valid_tag("latest") && valid_tag("_x"));
        assert!(!valid_tag("") && !valid_tag(".x") && !valid_tag("a/b") && !valid_tag(&"x".repeat(129)));
        assert!(valid_media_type("application/vnd.unknown.artifact.v1"));
        assert!(!valid_media_type("application") && !valid_media_type("a/b/c"));
        assert_eq!(parse_capacity("20G"), Some(20 << 30));
        assert_eq!(parse_capacity("2GB"), Some(2_000_000_000));
        assert_eq!(parse_capacity("1048576"), Some(1 << 20));
        assert_eq!(parse_capacity("512MiB"), Some(512 << 20));
        assert_eq!(parse_capacity("0"), None);
        assert_eq!(parse_capacity("lots"), None);
        assert_eq!(parse_capacity("20 G"), Some(20 << 30));
        assert_eq!(parse_capacity("99999999999P"), None);
    }
}
