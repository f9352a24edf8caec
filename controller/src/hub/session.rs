//! A node session: the mutual-TLS link of one node (its name comes from its
//! certificate, never from a frame). Three loops share it: the reader (reports, events,
//! stream frames, pings), the writer (drains the outgoing queue) and a worker that
//! writes reports through the API in order, renews the node's Lease and pings every
//! 10 s. Whatever ends first ends the session.

use super::codec::{self, ReadError};
use super::{Hub, events, index, node, report, streams};
use anyhow::Result;
use flotilla_shared::pod::{NodeConfig, NodeReport, PodReport};
use flotilla_shared::wire::{self, AgentEvent, Frame, Hello};
use futures_lite::{AsyncRead, AsyncWrite};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the hub renews the node's Lease and pings the agent.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A session that hears nothing for this long is dead (the agent pings every 10 s).
pub const SILENCE: Duration = Duration::from_secs(45);
/// Frames queued for a node that does not read them before the session is dropped
/// (it gets the whole set again when it reconnects).
const MAX_QUEUED: usize = 20_000;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One connected node.
pub struct Session {
    pub node: String,
    /// Tells this session from an older or newer one of the same node.
    pub id: u64,
    out: smol::channel::Sender<Frame>,
    close_tx: smol::channel::Sender<String>,
    /// The NodeConfig last sent.
    pub last_config: Mutex<Option<NodeConfig>>,
    pub streams: streams::Table,
}

impl Session {
    /// Queues a frame for the node; false when the session is gone.
    pub fn send(&self, frame: Frame) -> bool {
        if self.out.len() >= MAX_QUEUED {
            self.close(&format!(
                "the agent is not reading: {MAX_QUEUED} frames queued"
            ));
            return false;
        }
        self.out.try_send(frame).is_ok()
    }

    /// Ends the session (the reader, writer and worker stop).
    pub fn close(&self, reason: &str) {
        let _ = self.close_tx.try_send(reason.to_owned());
        self.out.close();
    }

    /// Sends the node's settings if they changed since last sent.
    pub fn send_config(&self, config: NodeConfig) {
        let mut last = self.last_config.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref() != Some(&config) {
            *last = Some(config.clone());
            self.send(Frame::NodeConfig(config));
        }
    }
}

/// What the worker does, in order.
enum Work {
    Node(Box<NodeReport>),
    Pod(Box<PodReport>),
    Event(Box<AgentEvent>),
}

/// Runs one node's session until it ends.
pub async fn run<R, W>(
    hub: Arc<Hub>,
    node: String,
    rd: R,
    wr: W,
    peer: std::net::SocketAddr,
    hello: Hello,
) -> Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, out_rx) = smol::channel::unbounded();
    let (close_tx, close_rx) = smol::channel::bounded(1);
    let s = Arc::new(Session {
        node: node.clone(),
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        out,
        close_tx,
        last_config: Mutex::new(None),
        streams: streams::Table::default(),
    });
    tracing::info!(%node, %peer, agent = %hello.release, platform = %hello.platform, "node session up");
    index::session_started(&hub, &s);
    let (work_tx, work_rx) = smol::channel::unbounded();
    let reason = futures_lite::future::or(
        futures_lite::future::or(read_loop(&s, rd, work_tx), write_loop(out_rx, wr)),
        futures_lite::future::or(worker(&hub, &s, work_rx), async {
            close_rx
                .recv()
                .await
                .unwrap_or_else(|_| "closed".to_owned())
        }),
    )
    .await;
    hub.unregister(&s);
    s.out.close();
    s.streams
        .close_all(&format!("the link to node {node} closed: {reason}"));
    tracing::info!(%node, %peer, %reason, "node session down");
    Ok(())
}

async fn read_loop<R: AsyncRead + Unpin>(
    s: &Session,
    mut rd: R,
    work: smol::channel::Sender<Work>,
) -> String {
    loop {
        let frame = match codec::read_frame(&mut rd, wire::MAX_FRAME_LEN, SILENCE).await {
            Ok(f) => f,
            Err(ReadError::Closed) => return "the agent closed the link".to_owned(),
            Err(e) => return e.to_string(),
        };
        let item = match frame {
            Frame::Ping(n) => {
                s.send(Frame::Pong(n));
                continue;
            }
            Frame::Pong(_) => continue,
            Frame::NodeReport(r) => Work::Node(Box::new(r)),
            Frame::PodStatus(r) => Work::Pod(Box::new(r)),
            Frame::Event(e) => Work::Event(Box::new(e)),
            Frame::StreamData {
                stream,
                channel,
                data,
            } => {
                s.streams.data(s, stream, channel, data);
                continue;
            }
            Frame::StreamCredit { stream, bytes } => {
                s.streams.credit(stream, bytes);
                continue;
            }
            Frame::StreamClose { stream, error } => {
                s.streams.closed(stream, error);
                continue;
            }
            Frame::Refused { reason } => return format!("the agent refused the session: {reason}"),
            other => {
                let reason = format!("protocol error: an agent does not send {}", other.name());
                s.send(Frame::Refused {
                    reason: reason.clone(),
                });
                // Let the writer flush the refusal.
                smol::Timer::after(Duration::from_millis(200)).await;
                return reason;
            }
        };
        if work.send(item).await.is_err() {
            return "the session ended".to_owned();
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    rx: smol::channel::Receiver<Frame>,
    mut wr: W,
) -> String {
    while let Ok(frame) = rx.recv().await {
        if let Err(e) = codec::write_frame(&mut wr, &frame).await {
            return format!("writing to the agent: {e}");
        }
    }
    let _ = futures_lite::AsyncWriteExt::close(&mut wr).await;
    "the session was closed".to_owned()
}

async fn worker(hub: &Arc<Hub>, s: &Arc<Session>, rx: smol::channel::Receiver<Work>) -> String {
    let mut registered = false;
    let mut next_beat = Instant::now() + HEARTBEAT;
    let mut pings = 0u64;
    loop {
        let item = futures_lite::future::or(async { rx.recv().await.ok().map(Some) }, async {
            smol::Timer::at(next_beat).await;
            Some(None)
        })
        .await;
        match item {
            None => return "the session ended".to_owned(),
            Some(None) => {
                next_beat = Instant::now() + HEARTBEAT;
                pings += 1;
                s.send(Frame::Ping(pings));
                if registered && let Err(e) = node::renew_lease(hub, &s.node).await {
                    tracing::warn!(node = %s.node, error = %e.message, "renewing the node lease");
                }
            }
            Some(Some(Work::Node(r))) => match node::apply_report(hub, &s.node, &r).await {
                Ok(()) => {
                    if !registered {
                        registered = true;
                        if let Err(e) = node::renew_lease(hub, &s.node).await {
                            tracing::warn!(node = %s.node, error = %e.message, "creating the node lease");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %s.node, error = %e.message, "writing the node report")
                }
            },
            Some(Some(Work::Pod(r))) => {
                if let Err(e) = report::apply(hub, &s.node, &r).await {
                    tracing::warn!(node = %s.node, pod = %format!("{}/{}", r.namespace, r.name), error = %e.message, "writing the pod status");
                }
            }
            Some(Some(Work::Event(e))) => events::from_agent(hub, &s.node, &e).await,
        }
    }
}
