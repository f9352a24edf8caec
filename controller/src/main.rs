//! `flotilla-controller`: the Flotilla control plane binary.

use clap::Parser;

/// The Flotilla control plane: a Kubernetes-compatible API server on redb, the
/// scheduler and controllers, and the hub that node agents connect to.
#[derive(Parser)]
#[command(name = "flotilla-controller", version, about, long_about = None)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
