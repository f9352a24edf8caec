//! A loopback OCI registry for tests: Debian's docker-registry serving plain HTTP on
//! 127.0.0.1 at a free port, with storage in a temporary directory (deletes enabled),
//! optionally behind htpasswd (bcrypt) basic auth, filled with the fixture images by
//! skopeo. Stopped by PID on drop; `stop`/`restart` keep the storage and the port.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::command::run;
use crate::fixtures;
use crate::process::Process;

/// The registry binary (Debian package docker-registry).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or stopped) loopback registry.
pub struct Registry {
    // Declared first so it is dropped first: the process stops before its storage goes.
    process: Option<Process>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    creds: Option<(String, String)>,
}

impl Registry {
    /// Starts an anonymous registry. Panics (with its log) when it does not come up.
    pub fn start() -> Registry {
        Self::try_start(None).unwrap_or_else(|e| panic!("cannot start test registry: {e:#}"))
    }

    /// Starts a registry that requires basic auth with `user`/`pass` (bcrypt htpasswd).
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Registry {
        Self::try_start(Some((user.to_string(), pass.to_string())))
            .unwrap_or_else(|e| panic!("cannot start test registry with htpasswd: {e:#}"))
    }

    fn try_start(creds: Option<(String, String)>) -> Result<Registry> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!("{REGISTRY_BIN} is missing: install Debian's docker-registry package");
        }
        let dir = tempfile::Builder::new()
            .prefix("flotilla-test-registry-")
            .tempdir()?;
        fs::create_dir(dir.path().join("storage"))?;
        if let Some((user, pass)) = &creds {
            // bcrypt (-B) is the only format docker-registry accepts.
            let out = run(Command::new("htpasswd").args(["-Bbn", user, pass]))
                .context("htpasswd (apache2-utils) is needed for an authenticated registry")?;
            fs::write(dir.path().join("htpasswd"), out.stdout)?;
        }
        let mut registry = Registry {
            process: None,
            dir,
            addr: free_port()?,
            creds,
        };
        // A port taken between probing and binding makes the registry exit: retry.
        for attempt in 1.. {
            match registry.launch() {
                Ok(()) => return Ok(registry),
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    registry.addr = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the retry loop returns")
    }

    fn config(&self) -> String {
        let storage = self.dir.path().join("storage");
        let auth = match &self.creds {
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
        let mut process = Process::try_spawn(cmd, None)?.named("docker-registry");
        let ready = process.wait_for_log(&format!("listening on {}", self.addr), START_TIMEOUT);
        if let Err(e) = ready {
            let log = process.stderr();
            process.stop();
            bail!("{e:#}; registry log:\n{log}");
        }
        self.process = Some(process);
        Ok(())
    }

    /// The registry's address, `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>/<name_tag>`, an image reference in this registry.
    pub fn reference(&self, name_tag: &str) -> String {
        format!("{}/{name_tag}", self.addr)
    }

    /// The user and password, for a registry started with htpasswd.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The storage directory (kept across stop/restart, removed on drop).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry process while it runs (for its logs).
    pub fn process(&self) -> Option<&Process> {
        self.process.as_ref()
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
        let mut cmd = fixtures::skopeo();
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if all {
            cmd.arg("--all");
        }
        if let Some((user, pass)) = self.credentials() {
            cmd.arg(format!("--dest-creds={user}:{pass}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{reference}"));
        skopeo_env(&mut cmd);
        run(&mut cmd).with_context(|| format!("cannot push {reference}"))?;
        Ok(reference)
    }

    /// Pushes the busybox fixture image as `name_tag` (e.g. `"busybox:latest"`);
    /// returns its reference `127.0.0.1:<port>/<name_tag>`. Panics on failure.
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

    /// Stops the registry (SIGTERM by PID); storage and port are kept.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Starts the registry again on the same port with the same storage.
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

/// Keeps skopeo's traffic to loopback registries off any configured proxy.
pub fn skopeo_env(cmd: &mut Command) {
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
}

fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?)
}
