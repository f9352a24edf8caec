//! Container probes (exec, httpGet, tcpSocket). Each probe runs on a thread of its own
//! so the pod worker never blocks; network probes first join the pod's network
//! namespace (the thread's own, `setns`), so `127.0.0.1` means the pod.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flotilla_shared::pod::{Probe, ProbeAction};

/// Where and how to probe one container.
#[derive(Clone)]
pub struct Target {
    /// The pod's network namespace file (None: the host's).
    pub netns: Option<PathBuf>,
    pub shim_exe: PathBuf,
    pub runtime_root: PathBuf,
    /// Runtime container id.
    pub id: String,
}

/// Runs one probe; Ok(()) on success, Err(message) on failure.
fn run(action: &ProbeAction, timeout: Duration, t: &Target) -> Result<(), String> {
    match action {
        ProbeAction::Exec { command } => {
            let mut s = crate::exec::start(
                &t.shim_exe,
                &t.runtime_root,
                &t.id,
                command,
                crate::exec::Stdio {
                    stdin: false,
                    stdout: true,
                    stderr: true,
                    tty: false,
                },
            )
            .map_err(|e| format!("{e:#}"))?;
            let mut out = String::new();
            if let Some(mut o) = s.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            if let Some(mut e) = s.stderr.take() {
                let _ = e.read_to_string(&mut out);
            }
            match s.wait() {
                Ok(0) => Ok(()),
                Ok(code) => Err(format!(
                    "command {command:?} exited with {code}: {}",
                    out.trim()
                )),
                Err(e) => Err(format!("{e:#}")),
            }
        }
        ProbeAction::TcpSocket { port, host } => {
            enter_netns(t)?;
            connect(host, *port, timeout).map(|_| ())
        }
        ProbeAction::HttpGet {
            path,
            port,
            host,
            https,
            headers,
        } => {
            enter_netns(t)?;
            let tcp = connect(host, *port, timeout)?;
            let host_hdr = if host.is_empty() { "127.0.0.1" } else { host };
            let path = if path.is_empty() { "/" } else { path };
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host_hdr}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
            );
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            let mut s: Box<dyn ReadWrite> = if *https {
                let name = rustls::pki_types::ServerName::try_from(host_hdr.to_string())
                    .map_err(|e| format!("server name {host_hdr:?}: {e}"))?;
                let conn = rustls::ClientConnection::new(crate::probe_tls::config()?, name)
                    .map_err(|e| e.to_string())?;
                Box::new(rustls::StreamOwned::new(conn, tcp))
            } else {
                Box::new(tcp)
            };
            s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 256];
            let mut got = Vec::new();
            while !got.windows(2).any(|w| w == b"\r\n") && got.len() < 256 {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => return Err(e.to_string()),
                }
            }
            let line = String::from_utf8_lossy(&got);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("malformed HTTP response {:?}", line.lines().next()))?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
    }
}

/// A byte stream, plain or TLS.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn enter_netns(t: &Target) -> Result<(), String> {
    if let Some(ns) = &t.netns {
        let f = std::fs::File::open(ns).map_err(|e| format!("{}: {e}", ns.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("joining the pod's network namespace: {e}"))?;
    }
    Ok(())
}

fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("no address for {host}"))?;
    let s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("dial tcp {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    Ok(s)
}

/// The state of one probe of one container attempt.
pub struct ProbeState {
    pub probe: Probe,
    next: Instant,
    pending: Option<mpsc::Receiver<Result<(), String>>>,
    pending_since: Instant,
    successes: u32,
    failures: u32,
    /// Last decided result (None: not yet decided).
    pub result: Option<bool>,
}

/// What a tick of a probe concluded.
pub enum Tick {
    Nothing,
    /// A probe run failed (message), possibly reaching the failure threshold.
    Failed {
        message: String,
        threshold: bool,
    },
    Succeeded,
}

impl ProbeState {
    /// A probe for a container started at `started`.
    pub fn new(probe: &Probe, started: Instant) -> ProbeState {
        ProbeState {
            next: started + Duration::from_secs(probe.initial_delay_seconds as u64),
            probe: probe.clone(),
            pending: None,
            pending_since: started,
            successes: 0,
            failures: 0,
            result: None,
        }
    }

    /// Starts a run when due and collects a finished one.
    pub fn tick(&mut self, target: &Target) -> Tick {
        let now = Instant::now();
        let timeout = Duration::from_secs(self.probe.timeout_seconds.max(1) as u64);
        if let Some(rx) = &self.pending {
            let outcome = match rx.try_recv() {
                Ok(r) => r,
                Err(mpsc::TryRecvError::Empty) if now < self.pending_since + timeout => {
                    return Tick::Nothing;
                }
                Err(mpsc::TryRecvError::Empty) => {
                    Err(format!("timeout after {}s", timeout.as_secs()))
                }
                Err(mpsc::TryRecvError::Disconnected) => Err("the probe thread died".into()),
            };
            self.pending = None;
            return match outcome {
                Ok(()) => {
                    self.failures = 0;
                    self.successes += 1;
                    if self.successes >= self.probe.success_threshold.max(1) {
                        self.result = Some(true);
                    }
                    Tick::Succeeded
                }
                Err(message) => {
                    self.successes = 0;
                    self.failures += 1;
                    let threshold = self.failures >= self.probe.failure_threshold.max(1);
                    if threshold {
                        self.result = Some(false);
                    }
                    Tick::Failed { message, threshold }
                }
            };
        }
        if now >= self.next {
            self.next = now + Duration::from_secs(self.probe.period_seconds.max(1) as u64);
            let (tx, rx) = mpsc::channel();
            let action = self.probe.action.clone();
            let target = target.clone();
            std::thread::spawn(move || {
                let _ = tx.send(run(&action, timeout, &target));
            });
            self.pending = Some(rx);
            self.pending_since = now;
        }
        Tick::Nothing
    }

    /// Starts counting failures afresh (after a threshold was acted upon).
    pub fn reset_failures(&mut self) {
        self.failures = 0;
    }
}
