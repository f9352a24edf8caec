//! The hub's listener: TLS with the controller's serving certificate and the CA as its
//! chain (so a joining agent can check the CA against the hash its token pins), client
//! certificates optional; each connection's first frames decide between a join and a
//! node session.

use super::codec::{self, ReadError};
use super::owner::{self, Refusal};
use super::{Hub, join, session};
use crate::server::identity_from_cert;
use anyhow::{Context, Result};
use flotilla_shared::wire::{self, Frame};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::sync::Arc;
use std::time::Duration;

/// How long a peer has for the TLS handshake and its hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The hub's TLS configuration: serving certificate + CA as the chain; client
/// certificates from the CA accepted, not required (joining agents have none yet).
pub fn tls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut ca_pem.as_bytes()).collect::<Result<_, _>>()?;
    for c in &ca {
        roots
            .add(c.clone())
            .context("adding the CA to the client trust store")?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    chain.extend(ca);
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())?
        .context("no private key in the serving key PEM")?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

/// Binds the hub's address (retrying while it is taken, with an error naming it) and
/// accepts agents forever.
pub async fn run(hub: Arc<Hub>, tls: Arc<rustls::ServerConfig>) {
    let addr = hub.config.listen;
    let listener = loop {
        match smol::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen for agents (--hub-listen); retrying in 5s");
                smol::Timer::after(Duration::from_secs(5)).await;
            }
        }
    };
    // The bound address, so a requested port 0 shows the port agents must dial.
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "hub listening for agents");
    let acceptor = futures_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "hub accept failed");
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let hub = hub.clone();
        let acceptor = acceptor.clone();
        crate::exec::spawn(async move {
            let _ = tcp.set_nodelay(true);
            if let Err(e) = handle(hub, acceptor, tcp, peer).await {
                tracing::info!(%peer, error = %e, "agent link ended");
            }
        });
    }
}

async fn handle(
    hub: Arc<Hub>,
    acceptor: futures_rustls::TlsAcceptor,
    tcp: smol::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Result<()> {
    let tls = futures_lite::future::or(async { Ok(acceptor.accept(tcp).await) }, async {
        smol::Timer::after(HANDSHAKE_TIMEOUT).await;
        Err(anyhow::anyhow!("TLS handshake timed out"))
    })
    .await?
    .context("TLS handshake")?;
    let peer_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned();
    let ident = peer_cert.as_ref().and_then(identity_from_cert);
    let (mut rd, mut wr) = futures_lite::io::split(tls);
    codec::write_frame(&mut wr, &codec::hello()).await?;
    let limit = if ident.is_some() {
        wire::MAX_FRAME_LEN
    } else {
        codec::UNAUTHENTICATED_FRAME_LIMIT
    };
    let hello = match codec::read_frame(&mut rd, limit, HANDSHAKE_TIMEOUT).await {
        Ok(Frame::Hello(h)) => h,
        Ok(other) => {
            let reason = format!("the first frame must be Hello, not {}", other.name());
            refuse(&mut wr, &reason).await;
            anyhow::bail!(reason);
        }
        Err(ReadError::Wire(e)) => {
            // An undecodable hello is most likely another protocol version.
            let reason = format!(
                "cannot read the peer's hello ({e}); this controller speaks agent-link protocol {}",
                wire::PROTOCOL_VERSION
            );
            refuse(&mut wr, &reason).await;
            anyhow::bail!(reason);
        }
        Err(e) => return Err(e.into()),
    };
    if let Err(e) = wire::check_hello(&hello) {
        let reason = format!(
            "{e}: upgrade the older of flotilla-agent {} and flotilla-controller {}",
            hello.release,
            flotilla_shared::VERSION
        );
        refuse(&mut wr, &reason).await;
        anyhow::bail!(reason);
    }
    match ident {
        None => join::run(&hub, rd, wr, peer, &hello).await,
        Some(id) => match id.node_name() {
            Some(node) => {
                let node = node.to_owned();
                let key = peer_cert
                    .as_ref()
                    .and_then(|c| owner::key_of_cert(c.as_ref()))
                    .context("the node certificate has no readable public key")?;
                // Only the machine that owns the name holds a session for it.
                match owner::claim(&hub, &node, &key, "session").await {
                    Ok(()) => session::run(hub, node, key, rd, wr, peer, hello).await,
                    Err(Refusal::Taken(reason) | Refusal::Store(reason)) => {
                        tracing::warn!(%peer, %node, %reason, "node session refused");
                        refuse(&mut wr, &reason).await;
                        anyhow::bail!(reason)
                    }
                }
            }
            None => {
                let reason = format!(
                    "the client certificate of {:?} is not a node identity (system:node:<name> in system:nodes)",
                    id.user
                );
                refuse(&mut wr, &reason).await;
                anyhow::bail!(reason)
            }
        },
    }
}

/// Sends `Refused` (best effort: the link is closing anyway).
pub async fn refuse<W: futures_lite::AsyncWrite + Unpin>(wr: &mut W, reason: &str) {
    let _ = codec::write_frame(
        wr,
        &Frame::Refused {
            reason: reason.to_owned(),
        },
    )
    .await;
    let _ = futures_lite::AsyncWriteExt::close(wr).await;
}
