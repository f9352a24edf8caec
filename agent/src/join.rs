//! Joining the cluster: the node generates its key pair (it never leaves the node),
//! dials the hub trusting only the CA the join token pins, sends the token's secret
//! with a certificate signing request for `system:node:<name>`, and receives its
//! client certificate and the cluster CA.

use anyhow::{Context, anyhow};
use flotilla_shared::wire::Frame;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use std::sync::atomic::Ordering;

use crate::codec;
use crate::dial::{self, Answer};
use crate::identity::Identity;
use crate::tls;
use crate::token::{JoinToken, Server};

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The controller refused the join (wrong secret, bad name, …): retrying the same
    /// token will not help.
    #[error("the controller refused to let this node join: {0}")]
    Refused(String),
    /// The server's chain does not hold the CA the token pins: the token belongs to
    /// another cluster, or someone else answers at that address. No secret was sent.
    #[error(
        "{0}; the join token does not belong to the controller at this address (no secret was sent)"
    )]
    Untrusted(String),
    /// Network or protocol trouble: worth retrying.
    #[error("{0:#}")]
    Transport(anyhow::Error),
}

/// A fresh key pair and a PEM CSR for `system:node:<name>` in `system:nodes`.
pub fn key_and_csr(node_name: &str) -> anyhow::Result<(KeyPair, String)> {
    let key = KeyPair::generate().context("generating the node key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("system:node:{node_name}"));
    dn.push(DnType::OrganizationName, "system:nodes");
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .context("building the certificate signing request")?
        .pem()?;
    Ok((key, csr))
}

/// Joins the cluster at `server` as `node_name` with `token`.
pub async fn join(
    server: &Server,
    token: &JoinToken,
    node_name: &str,
) -> Result<Identity, JoinError> {
    let (key, csr_pem) = key_and_csr(node_name).map_err(JoinError::Transport)?;
    let (config, mismatch) = tls::join_config(token.ca_hash).map_err(JoinError::Transport)?;
    let mut conn = match dial::connect(server, config).await {
        Ok(conn) => conn,
        Err(_) if mismatch.load(Ordering::SeqCst) => {
            return Err(JoinError::Untrusted(format!(
                "the controller at {server} presented a certificate chain without the CA pinned by the join token (sha256 {})",
                hex::encode(token.ca_hash)
            )));
        }
        Err(e) => return Err(JoinError::Transport(e)),
    };
    match dial::exchange_hello(&mut conn, node_name).await {
        Ok(Answer::Hello(_)) => {}
        Ok(Answer::Refused(reason)) => return Err(JoinError::Refused(reason)),
        Err(e) => return Err(JoinError::Transport(e)),
    }
    let join = Frame::Join {
        secret: token.secret.clone(),
        node_name: node_name.to_string(),
        csr_pem,
    };
    let answer = dial::timeout(dial::HANDSHAKE_TIMEOUT, "the join", async {
        codec::write_frame(&mut conn, &join).await?;
        codec::read_frame(&mut conn).await
    })
    .await
    .map_err(JoinError::Transport)?;
    match answer {
        Some(Frame::Joined { cert_pem, ca_pem }) => {
            let ca = tls::parse_certs(&ca_pem, "the CA the controller sent")
                .map_err(JoinError::Transport)?;
            if !ca
                .iter()
                .any(|c| tls::cert_hash(c.as_ref()) == token.ca_hash)
            {
                return Err(JoinError::Untrusted(format!(
                    "the controller at {server} answered with a CA that is not the one the join token pins"
                )));
            }
            tls::parse_certs(&cert_pem, "the node certificate the controller sent")
                .map_err(JoinError::Transport)?;
            Ok(Identity {
                node_name: node_name.to_string(),
                key_pem: key.serialize_pem(),
                cert_pem,
                ca_pem,
            })
        }
        Some(Frame::Refused { reason }) => Err(JoinError::Refused(reason)),
        Some(other) => Err(JoinError::Transport(anyhow!(
            "the controller answered the join with {}",
            other.name()
        ))),
        None => Err(JoinError::Transport(anyhow!(
            "the controller closed the connection without answering the join"
        ))),
    }
}
