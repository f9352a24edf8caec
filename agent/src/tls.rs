//! TLS for the agent link (rustls with the ring provider): the join configuration,
//! which trusts the controller only if its chain holds the CA the join token pins, and
//! the session configuration with the node's client certificate (mutual TLS).

use anyhow::{Context, Result, anyhow};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::identity::Identity;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS server name for `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).map_err(|_| anyhow!("invalid server name {host:?}"))
}

/// SHA-256 of a DER certificate.
pub fn cert_hash(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// Parses every certificate of a PEM bundle.
pub fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {what}"))?;
    if certs.is_empty() {
        anyhow::bail!("{what} holds no certificate");
    }
    Ok(certs)
}

/// Verifies the controller's chain during a join: the chain must contain the CA whose
/// hash the token pins, and the serving certificate must be valid under that CA for
/// the server name dialled.
#[derive(Debug)]
pub struct PinnedCa {
    hash: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// Set when the chain did not contain the pinned CA, to report it clearly.
    mismatch: Arc<AtomicBool>,
}

impl PinnedCa {
    /// A verifier for `hash`, and a flag raised when a chain does not match it.
    pub fn new(hash: [u8; 32]) -> (PinnedCa, Arc<AtomicBool>) {
        let mismatch = Arc::new(AtomicBool::new(false));
        let verifier = PinnedCa {
            hash,
            provider: provider(),
            mismatch: mismatch.clone(),
        };
        (verifier, mismatch)
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| cert_hash(c.as_ref()) == self.hash)
        else {
            self.mismatch.store(true, Ordering::SeqCst);
            return Err(rustls::Error::General(format!(
                "the controller's certificate chain does not contain the CA pinned by the join token (sha256 {})",
                hex::encode(self.hash)
            )));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA is unusable: {e}")))?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client configuration for a join: no client certificate, the pinned-CA verifier.
pub fn join_config(ca_hash: [u8; 32]) -> Result<(ClientConfig, Arc<AtomicBool>)> {
    let (verifier, mismatch) = PinnedCa::new(ca_hash);
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok((config, mismatch))
}

/// Client configuration for a session: trusts the stored cluster CA only, and
/// presents the node's certificate.
pub fn session_config(identity: &Identity) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in parse_certs(&identity.ca_pem, "the stored cluster CA (link/ca.crt)")? {
        roots.add(ca).context("adding the cluster CA")?;
    }
    let certs = parse_certs(&identity.cert_pem, "the node certificate (link/node.crt)")?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .context("parsing the node key (link/node.key)")?;
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .context("the node certificate does not match its key")
}
