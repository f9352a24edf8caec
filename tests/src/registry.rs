//! A test OCI registry: Debian's docker-registry serving plain HTTP on 127.0.0.1 at a
//! free port — in the test's own network namespace, or inside a sandbox node (on
//! its loopback or its LAN address) so agents running in nodes can pull from it —
//! with storage in a temporary directory (deletes enabled), optionally behind
//! htpasswd (bcrypt) basic auth, filled with the fixture images by skopeo (run in the
//! registry's namespace). Stopped by PID on drop; `stop`/`restart` keep the storage
//! and the address.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::command::{run, run_stdout};
use crate::fixtures;
use crate::process::Process;
use crate::sandbox::{Node, in_netns_path, wrap_in_netns};

/// The registry binary (Debian package docker-registry).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How to start a [`Registry`]; `Options::default()` is anonymous, on 127.0.0.1 of
/// the test's own network namespace.
#[derive(Debug, Clone)]
pub struct Options {
    /// Require basic auth with this user and password.
    pub htpasswd: Option<(String, String)>,
    /// Run inside this network namespace (a [`Node`]'s, see [`Options::in_node`]).
    pub netns: Option<String>,
    /// The address to listen on (in that namespace).
    pub ip: IpAddr,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            htpasswd: None,
            netns: None,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

impl Options {
    /// Requires basic auth with `user`/`pass`.
    pub fn htpasswd(mut self, user: &str, pass: &str) -> Options {
        self.htpasswd = Some((user.to_string(), pass.to_string()));
        self
    }

    /// Runs the registry inside `node`, listening on `ip` there (`127.0.0.1` for
    /// the node alone, or its LAN address for every node on the LAN).
    pub fn in_node(mut self, node: &Node, ip: IpAddr) -> Options {
        self.netns = Some(node.netns().to_string());
        self.ip = ip;
        self
    }
}

/// A running (or stopped) test registry.
pub struct Registry {
    // Declared first so it is dropped first: the process stops before its storage goes.
    process: Option<Process>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    options: Options,
}

impl Registry {
    /// Starts an anonymous registry on 127.0.0.1. Panics (with its log) when it does
    /// not come up.
    pub fn start() -> Registry {
        Self::start_with(Options::default())
    }

    /// Starts a registry on 127.0.0.1 that requires basic auth with `user`/`pass`.
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Registry {
        Self::start_with(Options::default().htpasswd(user, pass))
    }

    /// Starts a registry as `options` say. Panics (with its log) when it does not
    /// come up.
    pub fn start_with(options: Options) -> Registry {
        Self::try_start(options).unwrap_or_else(|e| panic!("cannot start test registry: {e:#}"))
    }

    fn try_start(options: Options) -> Result<Registry> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!("{REGISTRY_BIN} is missing: install Debian's docker-registry package");
        }
        let dir = tempfile::Builder::new()
            .prefix("flotilla-test-registry-")
            .tempdir()?;
        fs::create_dir(dir.path().join("storage"))?;
        if let Some((user, pass)) = &options.htpasswd {
            // bcrypt (-B) is the only format docker-registry accepts.
            let out = run(Command::new("htpasswd").args(["-Bbn", user, pass]))
                .context("htpasswd (apache2-utils) is needed for an authenticated registry")?;
            fs::write(dir.path().join("htpasswd"), out.stdout)?;
        }
        let addr = free_port(&options)?;
        let mut registry = Registry {
            process: None,
            dir,
            addr,
            options,
        };
        // A port taken between probing and binding makes the registry exit: retry.
        for attempt in 1.. {
            match registry.launch() {
                Ok(()) => return Ok(registry),
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    registry.addr = free_port(&registry.options)?;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the retry loop returns")
    }

    fn config(&self) -> String {
        let storage = self.dir.path().join("storage");
        let auth = match &self.options.htpasswd {
            Some(_) => format!(
                "auth:\n  htpasswd:\n    realm: flotilla-test\n    path: {}\n",
                self.dir.path().join("htpasswd").display()
            ),
            None => String::new(),
        };
        format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {}\n  secret: flotilla-test-only\n\
             {auth}",
            storage.display(),
            self.addr
        )
    }

    /// `cmd`, moved into the registry's network namespace if it has one.
    fn here(&self, cmd: Command) -> Command {
        match &self.options.netns {
            Some(ns) => wrap_in_netns(ns, &cmd),
            None => cmd,
        }
    }

    fn launch(&mut self) -> Result<()> {
        let config = self.dir.path().join("config.yml");
        fs::write(&config, self.config())?;
        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve").arg(&config);
        // Settings come only from our config file.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(key);
            }
        }
        let netns = self.options.netns.as_ref().map(|ns| netns_path(ns));
        let mut process =
            Process::try_spawn(self.here(cmd), netns.as_deref())?.named("docker-registry");
        let ready = process.wait_for_log(&format!("listening on {}", self.addr), START_TIMEOUT);
        if let Err(e) = ready {
            let log = process.stderr();
            process.stop();
            bail!("{e:#}; registry log:\n{log}");
        }
        self.process = Some(process);
        Ok(())
    }

    /// The registry's address, e.g. `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `<addr>/<name_tag>`, an image reference in this registry.
    pub fn reference(&self, name_tag: &str) -> String {
        format!("{}/{name_tag}", self.addr)
    }

    /// The user and password, for a registry started with htpasswd.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.options
            .htpasswd
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The storage directory (kept across stop/restart, removed on drop).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry process while it runs (for its logs).
    pub fn process(&self) -> Option<&Process> {
        self.process.as_ref()
    }

    /// Runs `skopeo <args>` in the registry's network namespace (signature policy
    /// off, no proxy) and returns its stdout. Pass `--tls-verify=false` and
    /// credentials yourself; this adds nothing to `args`.
    pub fn skopeo(&self, args: &[&str]) -> Result<String> {
        let mut cmd = fixtures::skopeo();
        cmd.args(args)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost");
        run_stdout(&mut self.here(cmd))
    }

    /// Copies tag `tag` of the OCI layout `layout` to `name_tag` here with skopeo
    /// (with `all`, every image of an index); returns the pushed reference.
    pub fn push_layout(
        &self,
        layout: &Path,
        tag: &str,
        name_tag: &str,
        all: bool,
    ) -> Result<String> {
        let reference = self.reference(name_tag);
        let source = format!("oci:{}:{tag}", layout.display());
        let dest = format!("docker://{reference}");
        let creds = self
            .credentials()
            .map(|(user, pass)| format!("--dest-creds={user}:{pass}"));
        let mut args = vec!["copy", "--quiet", "--dest-tls-verify=false"];
        if all {
            args.push("--all");
        }
        args.extend(creds.as_deref());
        args.extend([source.as_str(), dest.as_str()]);
        self.skopeo(&args)
            .with_context(|| format!("cannot push {reference}"))?;
        Ok(reference)
    }

    /// Pushes the busybox fixture image as `name_tag` (e.g. `"busybox:latest"`);
    /// returns its reference `<addr>/<name_tag>`. Panics on failure.
    pub fn push_busybox(&self, name_tag: &str) -> String {
        self.push_layout(&fixtures::busybox_layout(), fixtures::TAG, name_tag, false)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Pushes the multi-arch fixture (an index with linux/amd64, linux/arm64 and
    /// linux/arm/v7 images, each with /etc/flotilla-platform naming its platform) as
    /// `name_tag`; returns its reference. Panics on failure.
    pub fn push_multiarch(&self, name_tag: &str) -> String {
        self.push_layout(&fixtures::multiarch_layout(), fixtures::TAG, name_tag, true)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Stops the registry (SIGTERM by PID); storage and address are kept.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Starts the registry again at the same address with the same storage.
    /// Panics when it does not come up.
    pub fn restart(&mut self) {
        self.stop();
        self.launch()
            .unwrap_or_else(|e| panic!("cannot restart test registry on {}: {e:#}", self.addr));
    }

    /// True while the registry process runs.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Process::is_running)
    }
}

fn netns_path(netns: &str) -> PathBuf {
    Path::new("/run/netns").join(netns)
}

/// A port free on `options.ip` in the registry's network namespace.
fn free_port(options: &Options) -> Result<SocketAddr> {
    let ip = options.ip;
    let probe = move || -> Result<SocketAddr> {
        let listener = TcpListener::bind((ip, 0))
            .with_context(|| format!("cannot find a free port on {ip}"))?;
        Ok(listener.local_addr()?)
    };
    match &options.netns {
        Some(ns) => in_netns_path(&netns_path(ns), probe)?,
        None => probe(),
    }
}
