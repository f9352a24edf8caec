//! Running helper tools (ip, skopeo, htpasswd, …) to completion with clear errors:
//! a failure names the command line, its exit status and its stderr.

use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` to completion (stdin closed) and returns its output; fails, naming the
/// command and quoting its stderr, when it cannot start or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{line}` (is it installed?)"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            if output.stderr.is_empty() {
                String::from_utf8_lossy(&output.stdout).trim().to_string()
            } else {
                String::new()
            }
        );
    }
    Ok(output)
}

/// Like [`run`], returning stdout as text.
pub fn run_stdout(cmd: &mut Command) -> Result<String> {
    let output = run(cmd)?;
    String::from_utf8(output.stdout)
        .with_context(|| format!("`{}` printed invalid UTF-8", describe(cmd)))
}

/// Builds a [`Command`] from a program and its arguments.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}
