//! The HTTPS listener: rustls (ring) with ALPN h2/http1.1, optional client
//! certificates verified against the cluster CA (their subject gives the identity),
//! and hyper connections driven on the controller's executor.

use crate::api::Api;
use crate::api::auth::Identity;
use crate::exec;
use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use smol_hyper::rt::{FuturesIo, SmolExecutor, SmolTimer};
use std::convert::Infallible;
use std::sync::Arc;

/// Builds the TLS configuration: our serving certificate, client certificates from
/// the CA accepted but not required (bearer tokens are the other way in).
pub fn tls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots
            .add(c?)
            .context("adding the CA to the client trust store")?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())?
        .context("no private key in the serving key PEM")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Kubernetes reads a client certificate's CN as the user and its O values as
/// groups.
pub fn identity_from_cert(der: &CertificateDer<'_>) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let subject = cert.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(Identity { user, groups })
}

/// Accepts connections forever.
pub async fn serve(
    api: Arc<Api>,
    listener: smol::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> Result<()> {
    let acceptor = futures_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                smol::Timer::after(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let api = api.clone();
        let acceptor = acceptor.clone();
        exec::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let (_, conn) = stream.get_ref();
            let ident = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(identity_from_cert);
            let h2 = conn.alpn_protocol() == Some(b"h2");
            let io = FuturesIo::new(stream);
            let svc = hyper::service::service_fn(move |req| {
                let api = api.clone();
                let ident = ident.clone();
                async move { Ok::<_, Infallible>(api.handle(ident, req).await) }
            });
            let result = if h2 {
                hyper::server::conn::http2::Builder::new(SmolExecutor::new(exec::executor()))
                    .timer(SmolTimer::new())
                    .serve_connection(io, svc)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .timer(SmolTimer::new())
                    .serve_connection(io, svc)
                    .with_upgrades()
                    .await
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
