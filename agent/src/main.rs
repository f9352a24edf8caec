//! `flotilla-agent`: the Flotilla node binary.

mod airgap;
mod args;
mod backoff;
mod codec;
mod daemon;
mod datadir;
mod dial;
mod identity;
mod join;
mod node_report;
mod run;
mod session;
mod streams;
#[cfg(test)]
mod testing;
mod tls;
mod token;
mod workload;

use clap::{Parser, Subcommand};

/// The Flotilla node agent: launches containers with namespaces and cgroups, wires pod
/// networking, programs services, and keeps running what the controller asked for.
#[derive(Parser)]
#[command(name = "flotilla-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run OCI bundles like runc: create, start, run, state, kill, delete, exec, list.
    Runtime(flotilla_runtime::cli::RuntimeArgs),
    /// Manage OCI images: pull, import, ls, rm, prune, inspect.
    Image(flotilla_images::cli::ImageArgs),
    /// Run the node daemon: join the cluster and run the pods the controller binds here.
    Run(args::RunArgs),
}

fn main() -> std::process::ExitCode {
    // The pod manager re-executes this binary as `flotilla-agent shim <run|exec> …`
    // (one process per container and per exec); hidden, with its own argument parser.
    if std::env::args().nth(1).as_deref() == Some("shim") {
        return flotilla_pods::shim::main(std::env::args().skip(2).collect());
    }
    match Cli::parse().command {
        Command::Runtime(args) => flotilla_runtime::cli::main(args),
        Command::Image(args) => flotilla_images::cli::main(args),
        Command::Run(args) => run::main(args),
    }
}
