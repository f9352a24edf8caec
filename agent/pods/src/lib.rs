//! Pod lifecycle on a node: turns the desired [`flotilla_shared::pod::PodSpec`]s into
//! running containers and reports their status.
//!
//! [`Pods::start`] opens the local state (`<data_dir>/state.redb`), adopts containers
//! that a previous agent process left running, and runs one worker thread per pod
//! (`worker`): sandbox namespaces (`sandbox`), volumes (`volumes`), images through
//! flotilla-images, containers through flotilla-runtime under a per-container shim
//! (`shim`) that writes CRI logs (`cri`) and the exit status, restarts with
//! back-off, probes (`probes`), and graceful termination. Reports and events flow out
//! on a channel as [`Update`]s; [`Pods::logs`] and [`Pods::exec`] serve `kubectl logs`
//! and `kubectl exec`. At start, containers under the pods directory that no record
//! owns are removed (`gc`).
//!
//! On disk, per pod `<data_dir>/pods/<uid>/`: `<container>/<attempt>.log` (CRI
//! lines, rotated to `.log.1`), `<attempt>.exit` (written by the shim),
//! `.ns/{net,uts,ipc}` (namespaces kept by bind mounts), `.etc/` (hosts, hostname,
//! resolv.conf), `.volumes/<name>/`, `.bundles/<container id>/` (config.json and the
//! overlay root). Cgroups: `<cgroup_root>/pod-<uid>/<container id>`.
//!
//! Pod networking (pod IPs, bridges) is not done here yet: a pod gets a network
//! namespace with only loopback, and its report carries empty `pod_ip` and `host_ip`
//! (also with the host network, until the node's addresses are known here).

pub mod cri;
mod exec;
mod gc;
pub mod ocispec;
mod probe_tls;
mod probes;
pub mod sandbox;
pub mod shim;
pub mod state;
pub mod volumes;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use flotilla_shared::pod::{NodeConfig, PodReport, PodSpec, StreamRequest};
use flotilla_shared::wire::AgentEvent;

pub use exec::ExecSession;

/// Where the pods library keeps its state.
#[derive(Debug, Clone)]
pub struct Config {
    /// The agent's data dir: `state.redb`, `pods/<uid>/…`, and the image store.
    pub data_dir: PathBuf,
    /// The container runtime's state root.
    pub runtime_root: PathBuf,
    pub node_name: String,
}

/// Settings with defaults for a real node; tests and embedders may change them.
#[derive(Debug, Clone)]
pub struct Options {
    /// The executable run as `<exe> shim …` (default: this process's own executable).
    pub shim_exe: PathBuf,
    /// Parent of every pod's cgroup, relative to each hierarchy's root.
    pub cgroup_root: String,
    /// The registries config used for pulls (mirrors, credentials, TLS).
    pub registries: PathBuf,
    /// First crash-loop back-off; doubles up to [`Options::backoff_max`].
    pub backoff_initial: std::time::Duration,
    pub backoff_max: std::time::Duration,
    /// A container's log rotates to `<n>.log.1` beyond this size (0: never).
    pub log_max_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            shim_exe: PathBuf::from("/proc/self/exe"),
            cgroup_root: "/flotilla/pods".into(),
            registries: PathBuf::from(flotilla_images::registries::DEFAULT_PATH),
            backoff_initial: std::time::Duration::from_secs(10),
            backoff_max: std::time::Duration::from_secs(300),
            log_max_bytes: cri::DEFAULT_LOG_MAX,
        }
    }
}

/// What the library tells the agent.
#[derive(Debug, Clone)]
pub enum Update {
    Report(PodReport),
    Event(AgentEvent),
}

/// The pods of this node.
#[derive(Clone)]
pub struct Pods {
    inner: Arc<worker::Inner>,
}

impl Pods {
    /// Opens the local state under data_dir, adopts containers left running by a
    /// previous agent process, starts the reconcile loop on its own thread(s).
    pub fn start(config: Config) -> Result<(Pods, async_channel::Receiver<Update>)> {
        Self::start_with(config, Options::default())
    }

    /// [`Pods::start`] with explicit [`Options`].
    pub fn start_with(
        config: Config,
        options: Options,
    ) -> Result<(Pods, async_channel::Receiver<Update>)> {
        let state = state::State::open(&config.data_dir)?;
        let records = state.load()?;
        let images = flotilla_images::store::ImageStore::open(&config.data_dir)
            .with_context(|| format!("opening the image store in {}", config.data_dir.display()))?;
        let (tx, rx) = async_channel::unbounded();
        let runtime = flotilla_runtime::Runtime::new(&config.runtime_root);
        let pods_dir = std::path::absolute(config.data_dir.join("pods"))?;
        let removed = gc::orphans(&records, &runtime, &images, &pods_dir, &options.cgroup_root);
        if !removed.is_empty() {
            tracing::info!("removed containers no pod owns: {removed:?}");
        }
        let inner = Arc::new(worker::Inner {
            config,
            options,
            state,
            images,
            runtime,
            tx,
            slots: Mutex::new(HashMap::new()),
            reports: Mutex::new(HashMap::new()),
            node: Mutex::new(NodeConfig::default()),
            stop: std::sync::atomic::AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        });
        for rec in records {
            worker::spawn(&inner, rec);
        }
        Ok((Pods { inner }, rx))
    }

    /// Stops the worker threads and waits for them (for an orderly agent exit); the
    /// containers keep running under their shims and a later [`Pods::start`] adopts
    /// them. The state file closes once every clone of this handle is dropped.
    pub fn shutdown(&self) {
        worker::shutdown(&self.inner);
    }

    /// Settings from the controller (cluster DNS, CIDRs).
    pub fn set_node_config(&self, config: NodeConfig) {
        *self.inner.node.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Replaces the desired set: pods not in `pods` are stopped and forgotten.
    pub fn set_desired(&self, pods: Vec<PodSpec>) {
        let keep: Vec<String> = pods.iter().map(|p| p.uid.clone()).collect();
        let known: Vec<String> = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for uid in known {
            if !keep.contains(&uid) {
                self.remove(&uid);
            }
        }
        for p in pods {
            self.upsert(p);
        }
    }

    /// Adds or updates one pod.
    pub fn upsert(&self, pod: PodSpec) {
        worker::upsert(&self.inner, pod);
    }

    /// Stops a pod (grace period, then kill), releases its resources and forgets it.
    pub fn remove(&self, uid: &str) {
        worker::remove(&self.inner, uid);
    }

    /// How many pods this node holds: desired ones and those still being stopped
    /// (right after [`Pods::start`], the pods restored from local state, before any
    /// of them has a report).
    pub fn pod_count(&self) -> usize {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// All current reports.
    pub fn reports(&self) -> Vec<PodReport> {
        let mut v: Vec<PodReport> = self
            .inner
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }

    /// StreamRequest::Logs → a blocking reader of the log bytes (follow: blocks for more
    /// until the container ends or the reader is dropped).
    pub fn logs(&self, request: &StreamRequest) -> Result<Box<dyn std::io::Read + Send>> {
        let StreamRequest::Logs { .. } = request else {
            bail!("not a logs request");
        };
        worker::logs(&self.inner, request)
    }

    /// StreamRequest::Exec → a running process in the container.
    pub fn exec(&self, request: &StreamRequest) -> Result<ExecSession> {
        let StreamRequest::Exec {
            pod_uid,
            container,
            command,
            stdin,
            stdout,
            stderr,
            tty,
        } = request
        else {
            bail!("not an exec request");
        };
        let id = worker::running_id(&self.inner, pod_uid, container)?;
        exec::start(
            &self.inner.options.shim_exe,
            &self.inner.config.runtime_root,
            &id,
            command,
            exec::Stdio {
                stdin: *stdin,
                stdout: *stdout,
                stderr: *stderr,
                tty: *tty,
            },
        )
    }
}
