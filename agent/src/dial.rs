//! Opening a TLS connection to the controller's hub and the versioned hello that
//! starts every link, shared by the join and the session.

use anyhow::{Context, Result, anyhow, bail};
use flotilla_shared::wire::{self, Frame, Hello, PROTOCOL_VERSION};
use futures_lite::future;
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use rustls::ClientConfig;
use smol::Timer;
use smol::net::TcpStream;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::codec;
use crate::token::Server;

/// How long connecting, the TLS handshake and the hello may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// A TLS connection to the hub.
pub type Conn = TlsStream<TcpStream>;

/// Runs `f`, failing with "`what` timed out" after `limit`.
pub async fn timeout<T>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    future::or(f, async {
        Timer::after(limit).await;
        Err(anyhow!("{what} timed out after {}s", limit.as_secs()))
    })
    .await
}

/// Connects to `server` and completes the TLS handshake with `config`.
pub async fn connect(server: &Server, config: ClientConfig) -> Result<Conn> {
    let name = crate::tls::server_name(&server.host)?;
    timeout(HANDSHAKE_TIMEOUT, "connecting to the controller", async {
        let tcp = TcpStream::connect(server.authority())
            .await
            .with_context(|| format!("connecting to {server}"))?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {server}"))
    })
    .await
}

/// This agent's hello.
pub fn hello(node_name: &str) -> Frame {
    Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        release: flotilla_shared::VERSION.to_string(),
        name: node_name.to_string(),
        platform: flotilla_images::platform::Platform::host().to_string(),
    })
}

/// What the controller answered to the hello.
pub enum Answer {
    /// Its own hello, with a protocol version this build speaks.
    Hello(Hello),
    /// It refused the link, with its reason.
    Refused(String),
}

/// Sends this agent's hello and reads the controller's.
pub async fn exchange_hello(conn: &mut Conn, node_name: &str) -> Result<Answer> {
    timeout(HANDSHAKE_TIMEOUT, "the hello exchange", async {
        codec::write_frame(conn, &hello(node_name)).await?;
        match codec::read_frame(conn).await? {
            Some(Frame::Hello(h)) => {
                wire::check_hello(&h)?;
                Ok(Answer::Hello(h))
            }
            Some(Frame::Refused { reason }) => Ok(Answer::Refused(reason)),
            Some(other) => bail!("the controller sent {} before its hello", other.name()),
            None => bail!("the controller closed the connection before its hello"),
        }
    })
    .await
}
