//! The controller's PKI: the cluster CA, the API serving certificate, client
//! certificates for node identities (and the signing of nodes' certificate requests
//! at join), bearer tokens, the node join token and kubeconfig files, all kept in the
//! data directory and created on first start.

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

    /// Signs a node's certificate signing request (PEM): whatever subject it asks for,
    /// the certificate says `CN=system:node:<node>, O=system:nodes`, for client
    /// authentication only, with the public key of the request (whose signature proves
    /// the node holds the private key). Returns the certificate PEM.
    pub fn sign_node_csr(&self, csr_pem: &str, node: &str) -> Result<String> {
        check_node_name(node)?;
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| anyhow::anyhow!("invalid certificate signing request: {e}"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("system:node:{node}"));
        dn.push(DnType::OrganizationName, "system:nodes");
        let p = &mut csr.params;
        p.distinguished_name = dn;
        p.subject_alt_names.clear();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2125, 1, 1);
        Ok(csr.signed_by(&self.issuer)?.pem())
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

/// The join token agents present once to get their node certificate, k3s style:
/// `K10<sha256 hex of the CA certificate DER>::node:<secret>`. The hash lets an agent
/// check it talks to this cluster before it sends the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeToken {
    pub ca_hash: String,
    pub secret: String,
}

impl NodeToken {
    /// Parses `K10<hash>::node:<secret>`, naming what is wrong when it does not fit.
    pub fn parse(text: &str) -> Result<NodeToken> {
        let text = text.trim();
        let rest = text
            .strip_prefix("K10")
            .context("a node token starts with K10")?;
        let (hash, secret) = rest
            .split_once("::node:")
            .context("a node token reads K10<CA hash>::node:<secret>")?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("the CA hash of a node token is 64 hex digits");
        }
        if secret.is_empty() {
            bail!("the secret of the node token is empty");
        }
        Ok(NodeToken {
            ca_hash: hash.to_ascii_lowercase(),
            secret: secret.to_owned(),
        })
    }
}

impl std::fmt::Display for NodeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "K10{}::node:{}", self.ca_hash, self.secret)
    }
}

/// The sha256 (hex) of the first certificate's DER in `pem`.
pub fn cert_hash(pem: &str) -> Result<String> {
    use sha2::Digest as _;
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .context("no certificate in the PEM")??;
    Ok(hex::encode(sha2::Sha256::digest(der.as_ref())))
}

/// Loads `<dir>/node-token` (0600), creating it on first start; a token pinning
/// another CA (the CA was replaced) keeps its secret and gets the new hash.
pub fn load_or_create_node_token(dir: &Path, ca_pem: &str) -> Result<NodeToken> {
    let path = dir.join("node-token");
    let ca_hash = cert_hash(ca_pem).context("hashing the CA certificate")?;
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => {
            Some(NodeToken::parse(&text).with_context(|| format!("parsing {}", path.display()))?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if let Some(t) = &existing
        && t.ca_hash == ca_hash
    {
        return Ok(t.clone());
    }
    let secret = match existing {
        Some(t) => t.secret,
        None => random_token()?,
    };
    let token = NodeToken { ca_hash, secret };
    write_private(&path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// Compares two secrets in time that depends on their lengths only.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Checks a node name: a DNS-1123 subdomain (lowercase alphanumerics, `-` and `.`,
/// at most 253 characters, starting and ending alphanumeric).
pub fn check_node_name(name: &str) -> Result<()> {
    let ok_edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty()
        || name.len() > 253
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        || !ok_edge(name.chars().next())
        || !ok_edge(name.chars().last())
    {
        bail!(
            "invalid node name {name:?}: a node name is a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)"
        );
    }
    Ok(())
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
    fn node_token_is_created_once_and_pins_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let t = load_or_create_node_token(dir.path(), &ca.cert_pem).unwrap();
        assert_eq!(t.ca_hash, cert_hash(&ca.cert_pem).unwrap());
        assert_eq!(
            load_or_create_node_token(dir.path(), &ca.cert_pem).unwrap(),
            t
        );
        let text = std::fs::read_to_string(dir.path().join("node-token")).unwrap();
        assert_eq!(NodeToken::parse(&text).unwrap(), t);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("node-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(NodeToken::parse("K10abc::node:x").is_err());
        assert!(NodeToken::parse(&format!("K10{}::node:", t.ca_hash)).is_err());
    }

    #[test]
    fn a_node_csr_gets_the_node_identity_whatever_it_asks() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "system:admin");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let pem = ca.sign_node_csr(&csr, "pi-04").unwrap();
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let id = crate::server::identity_from_cert(&der).unwrap();
        assert_eq!(id.user, "system:node:pi-04");
        assert_eq!(id.groups, vec!["system:nodes"]);
        assert!(ca.sign_node_csr("garbage", "pi-04").is_err());
        assert!(ca.sign_node_csr(&csr, "Bad_Name").is_err());
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
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
