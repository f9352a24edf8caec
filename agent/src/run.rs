//! `flotilla-agent run`: the node daemon. At start it imports the air-gap images
//! folder, opens the pod manager (which adopts the containers a previous agent left
//! running and restarts from local state alone), then keeps the link to the
//! controller up ([`crate::daemon`]).

use anyhow::{Context, Result};
use flotilla_shared::wire::Frame;
use std::io::IsTerminal;
use std::os::unix::fs::DirBuilderExt;
use std::process::ExitCode;
use std::sync::Arc;

use crate::args::RunArgs;
use crate::daemon::{self, Settings};
use crate::node_report::ReportConfig;
use crate::{airgap, identity};

/// The log filter without RUST_LOG: the agent's own news, and only libcgroups'
/// warnings, without the lines it repeats for every container it manages ("cgroup
/// manager V1 will be used", "cgroup hugetlb not supported on this system").
const DEFAULT_LOG: &str = "info,libcgroups=warn,libcgroups::v1::manager=error";

/// Entry point of `flotilla-agent run`.
pub fn main(args: RunArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, not in files or the journal.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("flotilla-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let node_name =
        crate::args::node_name(args.node_name.as_deref()).map_err(anyhow::Error::msg)?;
    let data_dir = args.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data_dir)
        .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
    // Held until the agent exits.
    let _lock = crate::datadir::lock(&data_dir)?;
    let identity = identity::load(&data_dir)?;
    match &identity {
        Some(id) => identity::check_name(id, &node_name, &data_dir)?,
        None if args.token.is_none() => anyhow::bail!(
            "this node has not joined a cluster yet: pass --token or FLOTILLA_TOKEN with the controller's <data-dir>/node-token"
        ),
        None => {}
    }
    airgap::import(&data_dir).context("importing the air-gap images folder")?;
    let (pods, updates) = flotilla_pods::Pods::start_with(
        flotilla_pods::Config {
            data_dir: data_dir.clone(),
            runtime_root: args.runtime_root,
            node_name: node_name.clone(),
        },
        flotilla_pods::Options {
            cgroup_root: args.cgroup_root,
            registries: args.registries,
            ..flotilla_pods::Options::default()
        },
    )
    .context("starting the pod manager")?;
    tracing::info!(node = %node_name, pods = pods.pod_count(), "pod manager started from local state");
    let settings = Settings {
        server: args.server,
        token: args.token,
        data_dir: data_dir.clone(),
        report: ReportConfig {
            node_name,
            node_ip: args.node_ip,
            labels: args.node_labels,
            taints: args.node_taints,
            data_dir,
        },
        identity,
    };
    smol::block_on(async {
        let (frames_tx, frames) = async_channel::bounded(256);
        let _adapter = smol::spawn(async move {
            while let Ok(update) = updates.recv().await {
                let frame = match update {
                    flotilla_pods::Update::Report(r) => Frame::PodStatus(r),
                    flotilla_pods::Update::Event(e) => Frame::Event(e),
                };
                if frames_tx.send(frame).await.is_err() {
                    return;
                }
            }
        });
        daemon::serve(Arc::new(pods), frames, settings).await
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_log_filter_parses() {
        tracing_subscriber::EnvFilter::try_new(super::DEFAULT_LOG).unwrap();
    }
}
