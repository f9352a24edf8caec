//! A node session: the mutual-TLS link of one node (its name comes from its
//! certificate, never from a frame). Three loops share it: the reader (reports, events,
//! stream frames, pings), the writer (drains the outgoing queue) and a worker that
//! writes reports through the API in order, pings the agent every [`HEARTBEAT`] and
//! renews the node's Lease when the agent answers. Whatever ends first ends the session.
//!
//! Liveness: the Lease is renewed only on the agent's Pong to the latest Ping, so it
//! stops advancing the moment the agent stops answering (a cut link, a hung agent) and
//! the node turns Unknown one grace period after the last answer; a session that hears
//! nothing for [`SILENCE`] is ended.

use super::codec::{self, ReadError};
use super::{Hub, events, index, node, report, streams};
use anyhow::Result;
use flotilla_shared::pod::{NodeConfig, NodeReport, PodReport};
use flotilla_shared::wire::{self, AgentEvent, Frame, Hello};
use futures_lite::{AsyncRead, AsyncWrite};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the hub pings the agent, and so renews the node's Lease on its answer
/// (the kubelet's 10 s Lease renewal: a quarter of the 40 s Lease duration).
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A session that hears nothing for this long is ended. The agent pings every 10 s and
/// answers the hub's pings, so this is three missed rounds: a late answer or a short
/// Wi-Fi drop survives it, while a dead link is let go before the default 40 s grace
/// period turns the node Unknown (TCP alone would keep it for ~15 minutes of
/// retransmissions), so `kubectl logs`/`exec` fail promptly and nothing is queued for
/// a node that cannot read it.
pub const SILENCE: Duration = Duration::from_secs(30);
/// Frames queued for a node that does not read them before the session is dropped
/// (it gets the whole set again when it reconnects).
const MAX_QUEUED: usize = 20_000;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One connected node.
pub struct Session {
    pub node: String,
    /// Tells this session from an older or newer one of the same node.
    pub id: u64,
    /// The hash of its certificate's public key ([`super::owner`]).
    pub key: String,
    /// Where the agent dials from.
    pub peer: std::net::SocketAddr,
    /// When the agent was last heard from (any frame).
    heard: Mutex<Instant>,
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

    /// How long ago the agent was last heard from.
    pub fn quiet_for(&self) -> Duration {
        self.heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
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
    /// The agent answered ping `n`.
    Pong(u64),
    Node(Box<NodeReport>),
    Pod(Box<PodReport>),
    Event(Box<AgentEvent>),
}

/// Runs one node's session until it ends.
pub async fn run<R, W>(
    hub: Arc<Hub>,
    node: String,
    key: String,
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
        key,
        peer,
        heard: Mutex::new(Instant::now()),
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
    // A close() also ends the writer, which may finish first: its reason says more.
    let reason = close_rx.try_recv().unwrap_or(reason);
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
        *s.heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let item = match frame {
            Frame::Ping(n) => {
                s.send(Frame::Pong(n));
                continue;
            }
            Frame::Pong(n) => Work::Pong(n),
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
    let mut lease = Renewals::default();
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
                s.send(Frame::Ping(lease.ping()));
            }
            Some(Some(Work::Pong(n))) => {
                if lease.answered(n)
                    && registered
                    && let Err(e) = node::renew_lease(hub, &s.node).await
                {
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

/// When to renew the Lease: on the agent's answer to a Ping sent after the Ping whose
/// answer last renewed it (a late answer still proves the agent alive after that
/// Ping went out, and it arrives after the previous answer). A repeated or unsolicited
/// Pong renews nothing, so renewals stop as soon as answers do and never outnumber
/// the pings.
#[derive(Default)]
struct Renewals {
    /// The latest Ping sent.
    sent: u64,
    /// The Ping whose answer last renewed the Lease.
    renewed: u64,
}

impl Renewals {
    /// The number of the next Ping.
    fn ping(&mut self) -> u64 {
        self.sent += 1;
        self.sent
    }

    /// The agent answered Ping `n`: true when that is due to renew the Lease.
    fn answered(&mut self, n: u64) -> bool {
        if n <= self.sent && n > self.renewed {
            self.renewed = n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Renewals;

    #[test]
    fn the_lease_is_renewed_once_per_answered_ping() {
        let mut r = Renewals::default();
        // An unsolicited Pong (none sent yet) renews nothing.
        assert!(!r.answered(0));
        assert!(!r.answered(1));
        let p1 = r.ping();
        assert!(r.answered(p1), "the answer to the latest ping renews");
        assert!(!r.answered(p1), "a repeated answer does not");
        // Pings left unanswered renew nothing; a late answer to one renews once, and
        // the answer to an older ping after that does not.
        let p2 = r.ping();
        let p3 = r.ping();
        assert!(r.answered(p3), "a late answer renews");
        assert!(
            !r.answered(p2),
            "an answer older than the last renewal does not"
        );
        assert!(
            !r.answered(p3 + 1),
            "an answer to a ping never sent does not"
        );
    }
}
