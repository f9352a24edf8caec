//! `flotilla-agent`: the Flotilla node binary.

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
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Runtime(args) => flotilla_runtime::cli::main(args),
        Command::Image(args) => flotilla_images::cli::main(args),
    }
}
