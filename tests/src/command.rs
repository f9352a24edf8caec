//! Running helper tools (ip, skopeo, htpasswd, …) to completion with clear errors:
//! a failure names the command line, its exit status and its stderr.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// How long [`run`] and friends let a command take before killing it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `cmd` to completion (stdin closed) and returns its output; fails, naming the
/// command and quoting its stderr, when it cannot start, exits unsuccessfully, or
/// takes longer than [`DEFAULT_TIMEOUT`] (it is killed by PID then).
pub fn run(cmd: &mut Command) -> Result<Output> {
    run_timeout(cmd, DEFAULT_TIMEOUT)
}

/// [`run`] with a chosen timeout.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let line = describe(cmd);
    check(&line, execute(cmd, None, timeout)?)
}

/// Like [`run`], with `input` written to the command's stdin (e.g. `kubectl apply -f -`).
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<Output> {
    let line = describe(cmd);
    check(&line, execute(cmd, Some(input), DEFAULT_TIMEOUT)?)
}

/// Runs `cmd` to completion (stdin closed, at most `timeout`) and returns its output
/// whatever its exit status: for tests that expect a command to fail.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    execute(cmd, None, timeout)
}

/// Runs `cmd` with stdout and stderr captured in unnamed temporary files rather than
/// pipes, so a daemon it leaves behind holding them cannot make us wait forever; waits
/// for the command itself only, at most `timeout`, then kills it by PID.
fn execute(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let line = describe(cmd);
    let mut out = tempfile::tempfile()?;
    let mut err = tempfile::tempfile()?;
    cmd.stdout(out.try_clone()?).stderr(err.try_clone()?);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{line}` (is it installed?)"))?;
    let stdin = child.stdin.take();
    let status = std::thread::scope(|s| {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            // A command that exits without reading everything is judged by its status.
            s.spawn(move || {
                let _ = stdin.write_all(input);
            });
        }
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`{line}` did not finish within {timeout:?} and was killed");
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    })?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    out.seek(SeekFrom::Start(0))?;
    out.read_to_end(&mut stdout)?;
    err.seek(SeekFrom::Start(0))?;
    err.read_to_end(&mut stderr)?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
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
    fn a_daemon_holding_the_output_does_not_block() {
        let started = Instant::now();
        let out = run(Command::new("sh").args(["-c", "sleep 5 & echo parent done"])).unwrap();
        assert_eq!(out.stdout, b"parent done\n");
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn a_command_past_its_timeout_is_killed() {
        let started = Instant::now();
        let err =
            run_timeout(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(format!("{err:#}").contains("did not finish"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let failed = output(Command::new("sh").args(["-c", "exit 7"]), DEFAULT_TIMEOUT).unwrap();
        assert_eq!(failed.status.code(), Some(7));
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
