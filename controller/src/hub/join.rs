//! Joining: an agent without a certificate presents the join token's secret, its node
//! name and a CSR (its key never leaves the node); the hub checks the secret in
//! constant time and answers with a certificate for `system:node:<name>` and the CA.

use super::Hub;
use super::codec::{self, ReadError};
use super::listen::refuse;
use crate::pki;
use anyhow::Result;
use flotilla_shared::wire::{Frame, Hello};
use futures_lite::{AsyncRead, AsyncWrite};
use std::time::Duration;

/// How long a joining agent has to send its Join frame.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The reason given for a wrong secret (the same whatever is wrong with it).
pub const BAD_TOKEN: &str = "invalid join token: the secret does not match this cluster's node token (see <controller data dir>/node-token)";

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
    match answer(hub, &secret, &node_name, &csr_pem) {
        Ok(cert_pem) => {
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
        Err(reason) => {
            tracing::warn!(%peer, node = %node_name, %reason, "join refused");
            refuse(&mut wr, &reason).await;
            Ok(())
        }
    }
}

/// Checks a join request; the node certificate PEM or the reason for refusing.
pub fn answer(hub: &Hub, secret: &str, node_name: &str, csr_pem: &str) -> Result<String, String> {
    if !pki::secrets_equal(secret, &hub.token.secret) {
        return Err(BAD_TOKEN.to_owned());
    }
    pki::check_node_name(node_name).map_err(|e| e.to_string())?;
    hub.ca
        .sign_node_csr(csr_pem, node_name)
        .map_err(|e| format!("{e:#}"))
}
