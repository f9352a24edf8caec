//! Image references (`docker.io/library/busybox:1.36`, `busybox`, `host:5000/app@sha256:…`):
//! parsing, Docker Hub normalisation, and the canonical names the store keys images by.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// The registry that short names (`busybox`, `user/app`) refer to.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host (with port), e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// Digest, when the reference pins one.
    pub digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceError {
    /// The input.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid image reference {:?}: {}",
            self.input, self.reason
        )
    }
}

impl std::error::Error for ReferenceError {}

impl Reference {
    /// The host to talk the distribution API to (`docker.io` is served by
    /// `registry-1.docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// `registry/repository`, the name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The same reference with a different digest and no tag (`name@sha256:…`).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn is_path_component(c: &str) -> bool {
    // [a-z0-9]+ separated by '.', '_', '__' or runs of '-'.
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn is_registry_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => (host, Some(port)),
        _ => (h, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
    !host.is_empty()
        && port_ok
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']'))
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ReferenceError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(err("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(d.parse::<Digest>().map_err(|e| err(&e.to_string()))?),
            ),
            None => (input, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !is_tag(tag) {
                    return Err(err(&format!("invalid tag {tag:?}")));
                }
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !is_registry_host(first) {
                    return Err(err(&format!("invalid registry host {first:?}")));
                }
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if path.is_empty() {
            return Err(err("missing repository name"));
        }
        if let Some(bad) = path.split('/').find(|c| !is_path_component(c)) {
            return Err(err(&format!(
                "invalid repository component {bad:?} (lowercase letters, digits and . _ - only)"
            )));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.len() > 255 {
            return Err(err("repository name longer than 255 characters"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn docker_hub_short_names_are_normalised() {
        let r = parse("busybox");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(
            parse("busybox:1.36").to_string(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            parse("docker.io/library/busybox:1.36"),
            parse("busybox:1.36")
        );
        assert_eq!(parse("user/app").to_string(), "docker.io/user/app:latest");
        assert_eq!(parse("index.docker.io/user/app:v1").registry, "docker.io");
    }

    #[test]
    fn registries_with_ports_and_digests() {
        let r = parse("127.0.0.1:5000/team/app:v1.2");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.api_host(), "127.0.0.1:5000");

        let r = parse(&format!("localhost/app@{D}"));
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().unwrap().to_string(), D);
        assert_eq!(r.manifest_ref(), D);

        let r = parse(&format!("ghcr.io/o/app:v1@{D}"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_ref(), D);
        assert_eq!(r.to_string(), format!("ghcr.io/o/app:v1@{D}"));
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox@sha256:abc",
            "busybox:bad/tag",
            "a//b",
            "-app",
            "app:-x",
            "ex ample.com/app",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} was accepted");
        }
        let e = "busybox@sha256:abc".parse::<Reference>().unwrap_err();
        assert!(e.to_string().contains("invalid digest"), "{e}");
    }
}
