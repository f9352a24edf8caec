//! Running helper tools (ip, skopeo, htpasswd, …) to completion with clear errors:
//! a failure names the command line, its exit status and its stderr.

use std::io::Write;
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
    check(&line, output)
}

/// Like [`run`], with `input` written to the command's stdin (e.g. `kubectl apply -f -`).
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<Output> {
    let line = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}` (is it installed?)"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Write from another thread so a command that prints before reading cannot block;
    // a command that exits without reading everything is judged by its exit status.
    let output = std::thread::scope(|s| {
        s.spawn(move || match stdin.write_all(input) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        });
        child.wait_with_output()
    })
    .with_context(|| format!("`{line}` failed to run"))?;
    check(&line, output)
}

fn check(line: &str, output: Output) -> Result<Output> {
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            if output.stderr.is_empty() {
                String::from_utf8_lossy(&output.stdout).trim().to_string()
            } else {
                String::from_utf8_lossy(&output.stderr).trim().to_string()
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

/// `program prefix… <cmd's program> <cmd's args>`, keeping `cmd`'s environment changes
/// and working directory: runs `cmd` through a wrapper such as `ip netns exec`.
pub fn prefixed(program: &str, prefix: &[&str], cmd: &Command) -> Command {
    let mut wrapped = Command::new(program);
    wrapped
        .args(prefix)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_keeps_arguments_environment_and_directory() {
        let mut inner = Command::new("sh");
        inner
            .args(["-c", "echo \"$GREETING\" $(pwd)"])
            .env("GREETING", "hello world")
            .current_dir("/tmp");
        let mut outer = prefixed("env", &["-u", "NOTHING"], &inner);
        assert_eq!(
            describe(&outer),
            "env -u NOTHING sh -c echo \"$GREETING\" $(pwd)"
        );
        assert_eq!(run_stdout(&mut outer).unwrap(), "hello world /tmp\n");
    }

    #[test]
    fn input_reaches_stdin() {
        let out = run_with_input(Command::new("tr").args(["a-z", "A-Z"]), b"fleet\n").unwrap();
        assert_eq!(out.stdout, b"FLEET\n");
        let err = run_with_input(
            Command::new("sh").args(["-c", "cat >/dev/null; exit 2"]),
            b"x",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("exit status: 2"), "{err:#}");
    }

    #[test]
    fn failures_name_the_command_and_quote_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo broken >&2; exit 4"])).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("`sh -c echo broken >&2; exit 4`"), "{text}");
        assert!(text.contains("broken"), "{text}");
        let err = run(&mut Command::new("/nonexistent/tool")).unwrap_err();
        assert!(format!("{err:#}").contains("is it installed"), "{err:#}");
    }
}
