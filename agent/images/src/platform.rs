//! Platforms (`linux/amd64`, `linux/arm/v7`): the node's own, parsing `--platform`, and
//! picking the best entry of an image index or manifest list.

use std::fmt;
use std::str::FromStr;

/// An OS/architecture/variant triple as used in image indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`, …
    pub architecture: String,
    /// `v7`, `v8`, … or empty.
    pub variant: String,
}

impl Platform {
    /// The platform this binary was built for (the node's platform).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "aarch64" => ("arm64", "v8"),
            "arm" if cfg!(target_feature = "v7") => ("arm", "v7"),
            "arm" => ("arm", "v6"),
            "x86" => ("386", ""),
            "riscv64" => ("riscv64", ""),
            "powerpc64" => ("ppc64le", ""),
            "s390x" => ("s390x", ""),
            other => (other, ""),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.into(),
        }
    }

    /// How well an index entry for `candidate` fits this (wanted) platform: `None` if it
    /// cannot run here, larger is better. ARM variants run older ones (v7 runs v6 and v5)
    /// and an entry without a variant fits any.
    pub fn score(&self, candidate: &Platform) -> Option<u32> {
        if candidate.os != self.os
            || normalise_arch(&candidate.architecture) != normalise_arch(&self.architecture)
        {
            return None;
        }
        let want = normalise_variant(&self.architecture, &self.variant);
        let have = normalise_variant(&candidate.architecture, &candidate.variant);
        if want == have {
            return Some(100);
        }
        if have.is_empty() {
            return Some(50);
        }
        if want.is_empty() {
            // No variant asked for: accept any, prefer the newest.
            return Some(10 + variant_number(have));
        }
        let (w, h) = (variant_number(want), variant_number(have));
        if self.architecture == "arm" && h < w {
            return Some(10 + h);
        }
        None
    }

    /// Index of the best entry of `candidates` for this platform.
    pub fn best<'a>(&self, candidates: impl IntoIterator<Item = &'a Platform>) -> Option<usize> {
        candidates
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| self.score(c).map(|s| (s, i)))
            .max_by_key(|&(s, i)| (s, std::cmp::Reverse(i)))
            .map(|(_, i)| i)
    }
}

fn normalise_arch(a: &str) -> &str {
    match a {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "armhf" | "armel" => "arm",
        other => other,
    }
}

fn normalise_variant<'a>(arch: &str, variant: &'a str) -> &'a str {
    match (normalise_arch(arch), variant) {
        ("arm64", "v8") => "",
        ("arm", "") => "v7",
        (_, v) => v,
    }
}

fn variant_number(v: &str) -> u32 {
    v.trim_start_matches('v').parse().unwrap_or(0)
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;

    /// `os/arch[/variant]`, or `arch[/variant]` meaning linux.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if parts.is_empty() || parts.len() > 3 || !parts.iter().all(valid) {
            return Err(format!(
                "invalid platform {s:?}: expected os/arch[/variant], e.g. linux/arm64 or linux/arm/v7"
            ));
        }
        let (os, arch, variant) = match parts.as_slice() {
            [arch] => ("linux", *arch, ""),
            [os, arch] if *os == "linux" || *os == "windows" || *os == "darwin" => (*os, *arch, ""),
            [arch, variant] => ("linux", *arch, *variant),
            [os, arch, variant] => (*os, *arch, *variant),
            _ => unreachable!(),
        };
        Ok(Platform {
            os: os.to_lowercase(),
            architecture: normalise_arch(&arch.to_lowercase()).to_string(),
            variant: variant.to_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn parses_platform_strings() {
        assert_eq!(p("linux/arm/v7").to_string(), "linux/arm/v7");
        assert_eq!(p("arm64").to_string(), "linux/arm64");
        assert_eq!(p("linux/x86_64").to_string(), "linux/amd64");
        assert_eq!(p("arm/v6").to_string(), "linux/arm/v6");
        assert!("linux//v7".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
    }

    #[test]
    fn host_platform_is_known() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(h.to_string(), "linux/amd64");
    }

    #[test]
    fn picks_exact_matches_first() {
        let idx = [
            p("linux/amd64"),
            p("linux/arm64/v8"),
            p("linux/arm/v6"),
            p("linux/arm/v7"),
        ];
        assert_eq!(p("linux/amd64").best(&idx), Some(0));
        assert_eq!(p("linux/arm64").best(&idx), Some(1));
        assert_eq!(p("linux/arm/v7").best(&idx), Some(3));
        assert_eq!(p("linux/arm/v6").best(&idx), Some(2));
        assert_eq!(p("linux/riscv64").best(&idx), None);
        assert_eq!(p("windows/amd64").best(&idx), None);
    }

    #[test]
    fn arm_variants_fall_back_to_older_ones_only() {
        let only_v6 = [p("linux/arm/v6")];
        assert_eq!(p("linux/arm/v7").best(&only_v6), Some(0));
        let only_v7 = [p("linux/arm/v7")];
        assert_eq!(p("linux/arm/v6").best(&only_v7), None);
        // An arm entry without variant means v7 by convention.
        let bare = [p("linux/arm")];
        assert_eq!(p("linux/arm/v7").best(&bare), Some(0));
        assert_eq!(p("linux/arm/v6").best(&bare), None);
        // arm64 entries with and without v8 are equivalent.
        assert_eq!(p("linux/arm64/v8").best(&[p("linux/arm64")]), Some(0));
    }
}
