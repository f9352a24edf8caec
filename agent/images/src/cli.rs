//! Command line of `flotilla-agent images` (placeholder while it is being built).

/// Arguments of `flotilla-agent images`.
#[derive(clap::Args)]
pub struct ImageArgs {}

/// Runs the command.
pub fn main(_args: ImageArgs) -> std::process::ExitCode {
    eprintln!("flotilla-agent images: not available in this build");
    std::process::ExitCode::FAILURE
}
