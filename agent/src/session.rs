//! One mutual-TLS session with the hub: hellos, the node report, then the controller's
//! node config and desired pods applied to the [`Workload`], pod reports and events
//! sent back (through the [`Relay`], which outlives sessions), pings every 10 s, and
//! the multiplexed logs and exec streams.

use anyhow::{Result, anyhow, bail};
use async_channel::{Receiver, Sender};
use flotilla_shared::wire::Frame;
use futures_lite::future;
use futures_lite::io::{ReadHalf, WriteHalf};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::codec;
use crate::dial::{self, Answer, Conn};
use crate::identity::Identity;
use crate::node_report::{self, ReportConfig};
use crate::streams::Streams;
use crate::token::Server;
use crate::workload::Workload;

/// How often the agent pings (the hub renews the node's Lease on it).
pub const PING_INTERVAL: Duration = Duration::from_secs(10);

/// How often the node report is rebuilt and sent if it changed.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// How often the node report is sent even when nothing changed, as the kubelet's
/// `nodeStatusReportFrequency`: it registers the Node again if someone deleted it
/// while the link was up, and repairs a status write the controller lost.
pub const REPORT_REFRESH: Duration = Duration::from_secs(300);

/// Silence after which the link is taken for dead (the hub answers every ping).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(45);

/// Events kept while the controller is out of reach, oldest dropped first.
const PENDING_EVENTS: usize = 256;

/// Everything a session needs.
pub struct Link<W: Workload> {
    pub server: Server,
    pub identity: Identity,
    pub workload: Arc<W>,
    pub report: ReportConfig,
    pub relay: Arc<Relay>,
    pub ping_interval: Duration,
}

/// Carries pod reports and events from the workload to whichever session is up.
/// Reports produced while no session is up are dropped (every report is sent again
/// when a session starts); events are kept, up to [`PENDING_EVENTS`].
#[derive(Default)]
pub struct Relay {
    current: Mutex<Option<Sender<Frame>>>,
    pending: Mutex<VecDeque<Frame>>,
}

impl Relay {
    /// Forwards `updates` (PodStatus and Event frames) until the channel closes.
    pub async fn forward(&self, updates: Receiver<Frame>) {
        while let Ok(frame) = updates.recv().await {
            let current = self.current.lock().unwrap().clone();
            if let Some(out) = current
                && out.send(frame.clone()).await.is_ok()
            {
                continue;
            }
            self.keep(frame);
        }
    }

    fn keep(&self, frame: Frame) {
        if matches!(frame, Frame::Event(_)) {
            let mut pending = self.pending.lock().unwrap();
            if pending.len() == PENDING_EVENTS {
                pending.pop_front();
            }
            pending.push_back(frame);
        }
    }

    /// A session is up: send it the events kept meanwhile, then everything new.
    async fn attach(&self, out: &Sender<Frame>) {
        let pending: Vec<Frame> = self.pending.lock().unwrap().drain(..).collect();
        for frame in pending {
            let _ = out.send(frame).await;
        }
        *self.current.lock().unwrap() = Some(out.clone());
    }

    fn detach(&self) {
        *self.current.lock().unwrap() = None;
    }
}

/// Runs one session until the link fails. `on_up` is called once the hub has
/// accepted the session.
pub async fn run<W: Workload>(link: &Link<W>, on_up: impl FnOnce()) -> Result<()> {
    let config = crate::tls::session_config(&link.identity)?;
    let mut conn = dial::connect(&link.server, config).await?;
    let name = &link.identity.node_name;
    match dial::exchange_hello(&mut conn, name).await? {
        Answer::Hello(hello) => {
            tracing::info!(server = %link.server, controller = %hello.name, release = %hello.release, "connected to the controller");
        }
        Answer::Refused(reason) => bail!("the controller refused the session: {reason}"),
    }
    let (reader, writer) = futures_lite::io::split(conn);
    let (out, outbox) = async_channel::bounded::<Frame>(64);
    let writer = smol::spawn(write_loop(writer, outbox));
    let report = node_report::collect(&link.report);
    out.send(Frame::NodeReport(report.clone()))
        .await
        .map_err(|_| anyhow!("the link closed"))?;
    link.relay.attach(&out).await;
    on_up();
    let pinger = smol::spawn(ping_loop(
        out.clone(),
        link.report.clone(),
        report,
        link.ping_interval,
    ));
    let streams = Streams::new(link.workload.clone(), out.clone());
    let result = future::or(read_loop(reader, link, &out, &streams), async {
        match writer.await {
            Ok(()) => Err(anyhow!("the link closed")),
            Err(e) => Err(e),
        }
    })
    .await;
    link.relay.detach();
    streams.close_all();
    drop(pinger);
    result
}

async fn write_loop(mut writer: WriteHalf<Conn>, outbox: Receiver<Frame>) -> Result<()> {
    while let Ok(frame) = outbox.recv().await {
        codec::write_frame(&mut writer, &frame).await?;
    }
    Ok(())
}

/// At the `n`th ping (one every `every`): whether to rebuild the node report, and
/// whether to send it even if it did not change.
fn report_due(n: u64, every: Duration) -> (bool, bool) {
    let ticks = |d: Duration| (d.as_millis() / every.as_millis().max(1)).max(1) as u64;
    (
        n.is_multiple_of(ticks(REPORT_INTERVAL)),
        n.is_multiple_of(ticks(REPORT_REFRESH)),
    )
}

/// Pings, and a fresh node report when the machine changed (images, pressures, …)
/// or, unchanged, every [`REPORT_REFRESH`].
async fn ping_loop(
    out: Sender<Frame>,
    config: ReportConfig,
    mut last: flotilla_shared::pod::NodeReport,
    every: Duration,
) {
    let mut n: u64 = 0;
    loop {
        smol::Timer::after(every).await;
        n += 1;
        if out.send(Frame::Ping(n)).await.is_err() {
            return;
        }
        let (rebuild, resend) = report_due(n, every);
        if rebuild {
            let config = config.clone();
            let report = smol::unblock(move || node_report::collect(&config)).await;
            if report != last || resend {
                if out.send(Frame::NodeReport(report.clone())).await.is_err() {
                    return;
                }
                last = report;
            }
        }
    }
}

async fn read_loop<W: Workload>(
    mut reader: ReadHalf<Conn>,
    link: &Link<W>,
    out: &Sender<Frame>,
    streams: &Arc<Streams<W>>,
) -> Result<()> {
    let send = |frame: Frame| async move {
        out.send(frame)
            .await
            .map_err(|_| anyhow!("the link closed"))
    };
    loop {
        let frame = dial::timeout(
            LINK_TIMEOUT,
            "waiting for the controller",
            codec::read_frame(&mut reader),
        )
        .await?
        .ok_or_else(|| anyhow!("the controller closed the connection"))?;
        let w = link.workload.clone();
        match frame {
            Frame::Ping(n) => send(Frame::Pong(n)).await?,
            Frame::Pong(_) => {}
            Frame::NodeConfig(config) => {
                tracing::info!(pod_cidr = %config.pod_cidr, "node config from the controller");
                smol::unblock(move || w.set_node_config(config)).await;
            }
            Frame::PodSet(pods) => {
                tracing::info!(pods = pods.len(), "desired pod set from the controller");
                let reports = smol::unblock(move || {
                    w.set_desired(pods);
                    w.reports()
                })
                .await;
                for report in reports {
                    send(Frame::PodStatus(report)).await?;
                }
            }
            Frame::PodUpsert(pod) => {
                tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), revision = pod.revision, "pod upsert");
                smol::unblock(move || w.upsert(pod)).await;
            }
            Frame::PodRemove { uid } => {
                tracing::debug!(%uid, "pod removed from this node");
                smol::unblock(move || w.remove(&uid)).await;
            }
            Frame::StreamOpen { stream, request } => streams.open(stream, request),
            Frame::StreamData {
                stream,
                channel,
                data,
            } => streams.data(stream, channel, data),
            Frame::StreamCredit { stream, bytes } => streams.credit(stream, bytes),
            Frame::StreamClose { stream, .. } => streams.close(stream),
            Frame::Refused { reason } => bail!("the controller ended the session: {reason}"),
            other => tracing::warn!(
                frame = other.name(),
                "ignoring an unexpected frame from the controller"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_report_is_rebuilt_every_minute_and_resent_every_five() {
        let every = PING_INTERVAL;
        assert_eq!(report_due(1, every), (false, false));
        assert_eq!(
            report_due(6, every),
            (true, false),
            "60 s: rebuilt, sent if changed"
        );
        assert_eq!(report_due(12, every), (true, false));
        assert_eq!(
            report_due(30, every),
            (true, true),
            "300 s: sent unchanged too"
        );
        assert_eq!(report_due(60, every), (true, true));
        // A ping interval longer than both still reports on every ping.
        assert_eq!(report_due(1, Duration::from_secs(600)), (true, true));
    }
}
