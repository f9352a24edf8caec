//! Command line of `flotilla-agent runtime` (placeholder while it is being built).

/// Arguments of `flotilla-agent runtime`.
#[derive(clap::Args)]
pub struct RuntimeArgs {}

/// Runs the command.
pub fn main(_args: RuntimeArgs) -> std::process::ExitCode {
    eprintln!("flotilla-agent runtime: not available in this build");
    std::process::ExitCode::FAILURE
}
