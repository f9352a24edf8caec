//! The controller's PKI: the cluster CA, the API serving certificate, client
//! certificates for node identities, bearer tokens and kubeconfig files, all kept in
//! the data directory and created on first start.

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const CA_CN: &str = "flotilla-ca";

/// The cluster certificate authority, loaded from or created in the data directory.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM.
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Writes `contents` to `path` atomically with mode 0600.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

impl Ca {
    /// Loads `ca.crt`/`ca.key` from `dir`, creating them on first start.
    pub fn load_or_create(dir: &Path) -> Result<Ca> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if cert_path.exists() && key_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path)?;
            let key_pem = std::fs::read_to_string(&key_path)?;
            let key = KeyPair::from_pem(&key_pem).context("parsing ca.key")?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).context("parsing ca.crt")?;
            return Ok(Ca { cert_pem, issuer });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_CN);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2125, 1, 1);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, &cert_pem)?;
        let issuer = Issuer::new(params, key);
        Ok(Ca { cert_pem, issuer })
    }

    /// Issues a serving certificate for the given DNS names and IP addresses.
    pub fn issue_serving(&self, dns: &[String], ips: &[IpAddr]) -> Result<CertAndKey> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "flotilla-apiserver");
        params.distinguished_name = dn;
        for name in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.clone().try_into()?));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2125, 1, 1);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a client certificate with common name `cn` and organizations `orgs`
    /// (Kubernetes reads them as user name and groups).
    pub fn issue_client(&self, cn: &str, orgs: &[&str]) -> Result<CertAndKey> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2125, 1, 1);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A random hex token from the kernel's CSPRNG.
pub fn random_token() -> Result<String> {
    let mut buf = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// One line of the static token file: `token,user,uid,"group1,group2"`.
#[derive(Clone, Debug)]
pub struct TokenEntry {
    pub token: String,
    pub user: String,
    pub groups: Vec<String>,
}

/// Loads `tokens.csv` from `dir`, creating it with an admin and a viewer token on
/// first start.
pub fn load_or_create_tokens(dir: &Path) -> Result<Vec<TokenEntry>> {
    let path = dir.join("tokens.csv");
    if !path.exists() {
        let admin = random_token()?;
        let viewer = random_token()?;
        let body = format!(
            "{admin},admin,admin,\"system:masters\"\n{viewer},viewer,viewer,\"flotilla:viewers\"\n"
        );
        write_private(&path, body.as_bytes())?;
    }
    parse_tokens(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("parsing {}", path.display()))
}

fn parse_tokens(text: &str) -> Result<Vec<TokenEntry>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(4, ',');
        let (Some(token), Some(user)) = (parts.next(), parts.next()) else {
            bail!("line {}: expected token,user,uid,\"groups\"", n + 1);
        };
        let _uid = parts.next();
        let groups = parts
            .next()
            .map(|g| {
                g.trim_matches('"')
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        out.push(TokenEntry {
            token: token.to_owned(),
            user: user.to_owned(),
            groups,
        });
    }
    Ok(out)
}

/// How a kubeconfig authenticates its user.
pub enum Credential<'a> {
    Token(&'a str),
    Cert(&'a CertAndKey),
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// Writes a kubeconfig (mode 0600) for `server` trusting `ca_pem`.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    cred: Credential<'_>,
) -> Result<()> {
    let user_fields = match cred {
        Credential::Token(t) => format!("    token: {t}\n"),
        Credential::Cert(c) => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&c.cert_pem),
            b64(&c.key_pem)
        ),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: flotilla\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n{user_fields}contexts:\n- name: {user}@flotilla\n  context:\n    cluster: flotilla\n    user: {user}\ncurrent-context: {user}@flotilla\n",
        ca = b64(ca_pem),
    );
    write_private(path, text.as_bytes())
}

/// The DNS names and addresses the serving certificate covers: the hostname,
/// `localhost`, every address of this machine, 127.0.0.1, and `extra`.
pub fn serving_sans(extra: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec!["localhost".to_owned(), "kubernetes".to_owned()];
    if let Ok(h) = nix::unistd::gethostname()
        && let Some(h) = h.to_str()
        && !h.is_empty()
    {
        dns.push(h.to_owned());
    }
    let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1]), "::1".parse().unwrap()];
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if let Some(sa) = a.address {
                if let Some(v4) = sa.as_sockaddr_in() {
                    ips.push(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = sa.as_sockaddr_in6() {
                    ips.push(IpAddr::V6(v6.ip()));
                }
            }
        }
    }
    for e in extra {
        match e.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(e.clone()),
        }
    }
    ips.sort();
    ips.dedup();
    dns.sort();
    dns.dedup();
    (dns, ips)
}

/// Paths of the files kept in the data directory.
pub fn admin_kubeconfig(dir: &Path) -> PathBuf {
    dir.join("admin.kubeconfig")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_parses_groups() {
        let t = parse_tokens("abc,admin,admin,\"system:masters,x\"\n# c\n").unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].groups, vec!["system:masters", "x"]);
    }

    #[test]
    fn ca_persists_across_loads_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.cert_pem, again.cert_pem);
        let c = again
            .issue_client("system:node:n1", &["system:nodes"])
            .unwrap();
        assert!(c.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
