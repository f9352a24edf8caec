//! Joining: an agent without a certificate presents the join token's secret, its node
//! name and a CSR (its key never leaves the node); the hub checks the secret in
//! constant time, that the name is free or already this key's ([`owner`]), and
//! answers with a certificate for `system:node:<name>` and the CA.

use super::Hub;
use super::codec::{self, ReadError};
use super::listen::refuse;
use super::owner::{self, Refusal};
use crate::pki;
use anyhow::Result;
use flotilla_shared::wire::{Frame, Hello};
use futures_lite::{AsyncRead, AsyncWrite};
use std::time::Duration;

/// How long a joining agent has to send its Join frame.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The reason given for a wrong secret (the same whatever is wrong with it).
pub const BAD_TOKEN: &str = "invalid join token: the secret does not match this cluster's node token (see <controller data dir>/node-token)";

/// The hub's answer to a join.
#[derive(Debug)]
pub enum Answer {
    /// Granted: the node certificate PEM.
    Granted(String),
    /// Refused, with the reason for the agent.
    Refused(String),
    /// Cannot be answered now (the store failed): the link closes, the agent retries.
    Later(String),
}

/// Serves one join link after the hellos.
pub async fn run<R, W>(
    hub: &Hub,
    mut rd: R,
    mut wr: W,
    peer: std::net::SocketAddr,
    hello: &Hello,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let frame =
        match codec::read_frame(&mut rd, codec::UNAUTHENTICATED_FRAME_LIMIT, JOIN_TIMEOUT).await {
            Ok(f) => f,
            Err(ReadError::Closed) => return Ok(()),
            Err(e) => {
                let reason = format!("no join request: {e}");
                refuse(&mut wr, &reason).await;
                anyhow::bail!(reason);
            }
        };
    let Frame::Join {
        secret,
        node_name,
        csr_pem,
    } = frame
    else {
        let reason = format!(
            "this link has no node certificate: send Join with the node token first (got {})",
            frame.name()
        );
        refuse(&mut wr, &reason).await;
        anyhow::bail!(reason);
    };
    match answer(hub, &secret, &node_name, &csr_pem).await {
        Answer::Granted(cert_pem) => {
            tracing::info!(%peer, node = %node_name, agent = %hello.release, platform = %hello.platform, "node joined");
            codec::write_frame(
                &mut wr,
                &Frame::Joined {
                    cert_pem,
                    ca_pem: hub.ca.cert_pem.clone(),
                },
            )
            .await?;
            let _ = futures_lite::AsyncWriteExt::close(&mut wr).await;
            Ok(())
        }
        Answer::Refused(reason) => {
            tracing::warn!(%peer, node = %node_name, %reason, "join refused");
            refuse(&mut wr, &reason).await;
            Ok(())
        }
        // Not a refusal (the agent would give up): the link closes and it tries again.
        Answer::Later(reason) => {
            anyhow::bail!("cannot answer the join of {node_name} now: {reason}")
        }
    }
}

/// Checks a join request and, when it is granted, records the CSR's key as the owner of
/// the name and issues the node certificate (nothing is recorded for a refused one).
pub async fn answer(hub: &Hub, secret: &str, node_name: &str, csr_pem: &str) -> Answer {
    if !pki::secrets_equal(secret, &hub.token.secret) {
        return Answer::Refused(BAD_TOKEN.to_owned());
    }
    if let Err(e) = pki::check_node_name(node_name) {
        return Answer::Refused(e.to_string());
    }
    let key = match owner::key_of_csr(csr_pem) {
        Ok(k) => k,
        Err(e) => return Answer::Refused(e),
    };
    // Signed first (it checks the CSR's signature), sent only once the name is ours.
    let cert_pem = match hub.ca.sign_node_csr(csr_pem, node_name) {
        Ok(c) => c,
        Err(e) => return Answer::Refused(format!("{e:#}")),
    };
    match owner::claim(hub, node_name, &key, "join").await {
        Ok(()) => {
            hub.close_other_owners(node_name, &key);
            Answer::Granted(cert_pem)
        }
        Err(Refusal::Taken(reason)) => Answer::Refused(reason),
        Err(Refusal::Store(e)) => Answer::Later(e),
    }
}
