//! The node daemon's main loop: join once if the node has no credentials, then keep a
//! session with the hub up, reconnecting with backoff, while the workload keeps
//! running what it was told. Tells systemd it is ready (sd-notify) once a session is
//! up, or once it runs from local state because the controller is out of reach.

use anyhow::Result;
use async_channel::Receiver;
use flotilla_shared::wire::Frame;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::backoff::Backoff;
use crate::identity::{self, Identity};
use crate::join::{self, JoinError};
use crate::node_report::ReportConfig;
use crate::session::{self, Link, Relay};
use crate::token::{JoinToken, Server};
use crate::workload::Workload;

/// What the daemon needs besides the workload.
pub struct Settings {
    pub server: Server,
    pub token: Option<JoinToken>,
    pub data_dir: PathBuf,
    pub report: ReportConfig,
    /// Stored credentials, `None` before the join.
    pub identity: Option<Identity>,
}

/// Runs the link for `workload` forever; returns only when the node cannot join
/// (refused, or the token pins another CA). `updates` are the workload's PodStatus
/// and Event frames.
pub async fn serve<W: Workload>(
    workload: Arc<W>,
    updates: Receiver<Frame>,
    settings: Settings,
) -> Result<()> {
    let relay = Arc::new(Relay::default());
    let forward = {
        let relay = relay.clone();
        smol::spawn(async move { relay.forward(updates).await })
    };
    let identity = match settings.identity {
        Some(identity) => identity,
        None => {
            let token = settings
                .token
                .as_ref()
                .ok_or_else(|| not_joined(&settings.data_dir))?;
            join_until_done(
                &settings.server,
                token,
                &settings.report.node_name,
                &settings.data_dir,
            )
            .await?
        }
    };
    let link = Link {
        server: settings.server,
        identity,
        workload,
        report: settings.report,
        relay,
        ping_interval: session::PING_INTERVAL,
    };
    let mut backoff = Backoff::default();
    let ready = AtomicBool::new(false);
    loop {
        let up_at = OnceLock::new();
        let result = session::run(&link, || {
            let _ = up_at.set(Instant::now());
            notify_ready(&ready, "the link to the controller is up");
        })
        .await;
        if let Some(at) = up_at.get() {
            backoff.session_ended(at.elapsed());
        }
        if let Err(e) = result {
            tracing::warn!(server = %link.server, "link to the controller: {e:#}");
        }
        notify_ready(
            &ready,
            "running from local state while the controller is out of reach",
        );
        let delay = backoff.next_delay();
        tracing::info!("reconnecting in {:.1}s", delay.as_secs_f64());
        smol::Timer::after(delay).await;
        if forward.is_finished() {
            anyhow::bail!("the pod manager stopped sending updates");
        }
    }
}

fn not_joined(data_dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "this node has not joined a cluster yet ({} holds no credentials): pass --token or FLOTILLA_TOKEN with the controller's <data-dir>/node-token",
        identity::dir(data_dir).display()
    )
}

/// Joins, retrying network trouble with backoff; a refusal or an untrusted server
/// ends the agent with the reason.
async fn join_until_done(
    server: &Server,
    token: &JoinToken,
    node_name: &str,
    data_dir: &Path,
) -> Result<Identity> {
    let mut backoff = Backoff::default();
    loop {
        match join::join(server, token, node_name).await {
            Ok(identity) => {
                identity::save(data_dir, &identity)?;
                tracing::info!(node = node_name, %server, "joined the cluster");
                return Ok(identity);
            }
            Err(e @ (JoinError::Refused(_) | JoinError::Untrusted(_))) => return Err(e.into()),
            Err(JoinError::Transport(e)) => {
                let delay = backoff.next_delay();
                tracing::warn!(%server, "cannot join yet ({e:#}); retrying in {:.1}s", delay.as_secs_f64());
                smol::Timer::after(delay).await;
            }
        }
    }
}

/// Sends READY=1 to systemd the first time.
fn notify_ready(ready: &AtomicBool, why: &str) {
    if ready.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::info!("ready: {why}");
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

#[cfg(test)]
mod tests;
