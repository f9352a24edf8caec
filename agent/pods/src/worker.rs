//! One worker thread per pod (as the kubelet's pod workers): each tick it reads the
//! desired spec, notices exited attempts (the shims' exit files), runs probes, starts
//! init containers in order and then the app containers, restarts per restartPolicy
//! with crash-loop back-off, stops containers gracefully on deletion, releases the
//! sandbox, persists its record and publishes a report when anything changed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flotilla_images::store::{ImageRecord, ImageStore};
use flotilla_runtime::Runtime;
use flotilla_shared::pod::{
    Container, ContainerReport, ContainerState, NodeConfig, PodPhase, PodReport, PodSpec,
    PullPolicy, RestartPolicy, StreamRequest,
};
use flotilla_shared::wire::AgentEvent;

use crate::probes::{ProbeState, Target, Tick};
use crate::shim::{AttemptFiles, ExitRecord, now};
use crate::state::{Attempt, ContainerRecord, PodRecord, State};
use crate::{Config, Options, Update};

/// Shared by the [`crate::Pods`] handle and the workers.
pub struct Inner {
    pub config: Config,
    pub options: Options,
    pub state: State,
    pub images: ImageStore,
    pub runtime: Runtime,
    pub tx: async_channel::Sender<Update>,
    pub slots: Mutex<HashMap<String, Arc<Slot>>>,
    pub reports: Mutex<HashMap<String, PodReport>>,
    pub node: Mutex<NodeConfig>,
    /// Set by [`crate::Pods::shutdown`]: workers return, containers keep running.
    pub stop: std::sync::atomic::AtomicBool,
    pub threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Stops every worker thread and waits for them; containers keep running.
pub fn shutdown(inner: &Inner) {
    inner.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for slot in lock(&inner.slots).values() {
        let _ = lock(&slot.wake).send(());
    }
    let threads = std::mem::take(&mut *lock(&inner.threads));
    for t in threads {
        let _ = t.join();
    }
}

/// What the handle and a worker share about one pod.
pub struct Slot {
    desired: Mutex<Desired>,
    wake: Mutex<mpsc::Sender<()>>,
    /// Per container: (attempts so far, live runtime id).
    views: Mutex<HashMap<String, (u32, Option<String>)>>,
    pod_dir: PathBuf,
    name: String,
}

struct Desired {
    spec: PodSpec,
    removing: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pod_dir(inner: &Inner, uid: &str) -> PathBuf {
    inner.config.data_dir.join("pods").join(uid)
}

fn new_record(spec: PodSpec) -> PodRecord {
    PodRecord {
        start_time: now(),
        init_containers: spec
            .init_containers
            .iter()
            .map(|c| ContainerRecord::new(&c.name))
            .collect(),
        containers: spec
            .containers
            .iter()
            .map(|c| ContainerRecord::new(&c.name))
            .collect(),
        spec,
        removing: false,
        terminated: false,
        reason: String::new(),
        message: String::new(),
    }
}

/// Starts the worker of a pod record.
pub fn spawn(inner: &Arc<Inner>, rec: PodRecord) {
    let (tx, rx) = mpsc::channel();
    let uid = rec.spec.uid.clone();
    let slot = Arc::new(Slot {
        desired: Mutex::new(Desired {
            spec: rec.spec.clone(),
            removing: rec.removing,
        }),
        wake: Mutex::new(tx),
        views: Mutex::new(HashMap::new()),
        pod_dir: pod_dir(inner, &uid),
        name: rec.spec.name.clone(),
    });
    lock(&inner.slots).insert(uid.clone(), slot.clone());
    let worker = Worker {
        inner: inner.clone(),
        slot,
        pod_dir: pod_dir(inner, &uid),
        saved: rec.clone(),
        rec,
        wake: rx,
        probes: HashMap::new(),
        stopping: HashMap::new(),
        pull_backoff: HashMap::new(),
        volumes: None,
        etc: Vec::new(),
        sandbox_error: String::new(),
        last_report: None,
        released: false,
    };
    let name = format!("pod-{}", &uid[..uid.len().min(8)]);
    let spawned = std::thread::Builder::new()
        .name(name)
        .spawn(move || worker.run());
    match spawned {
        Ok(handle) => {
            let mut threads = lock(&inner.threads);
            threads.retain(|t| !t.is_finished());
            threads.push(handle);
        }
        Err(e) => tracing::error!("cannot start the worker of pod {uid}: {e}"),
    }
}

/// Adds a pod or updates its desired spec.
pub fn upsert(inner: &Arc<Inner>, pod: PodSpec) {
    if inner.stop.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let slots = lock(&inner.slots);
    if let Some(slot) = slots.get(&pod.uid) {
        let mut d = lock(&slot.desired);
        if d.spec != pod {
            d.spec = pod;
        }
        // Added again while being removed: the worker finishes the removal, then
        // starts the pod afresh.
        d.removing = false;
        drop(d);
        let _ = lock(&slot.wake).send(());
        return;
    }
    drop(slots);
    let rec = new_record(pod);
    if let Err(e) = inner.state.put(&rec) {
        tracing::error!("cannot persist pod {}: {e:#}", rec.spec.uid);
    }
    spawn(inner, rec);
}

/// Asks a pod's worker to stop the pod and forget it.
pub fn remove(inner: &Arc<Inner>, uid: &str) {
    if let Some(slot) = lock(&inner.slots).get(uid) {
        lock(&slot.desired).removing = true;
        let _ = lock(&slot.wake).send(());
    }
}

fn slot(inner: &Inner, uid: &str) -> Result<Arc<Slot>> {
    lock(&inner.slots)
        .get(uid)
        .cloned()
        .with_context(|| format!("pod {uid} is not on this node"))
}

/// The live runtime id of a container, for exec.
pub fn running_id(inner: &Inner, uid: &str, container: &str) -> Result<String> {
    let slot = slot(inner, uid)?;
    let views = lock(&slot.views);
    let Some((_, id)) = views.get(container) else {
        bail!("container {container} is not valid for pod {}", slot.name);
    };
    id.clone()
        .with_context(|| format!("container {container} in pod {} is not running", slot.name))
}

/// Opens a container's log for a logs request.
pub fn logs(inner: &Inner, req: &StreamRequest) -> Result<Box<dyn std::io::Read + Send>> {
    let StreamRequest::Logs {
        pod_uid,
        container,
        follow,
        previous,
        timestamps,
        tail_lines,
        since_seconds,
        limit_bytes,
    } = req
    else {
        bail!("not a logs request");
    };
    let slot = slot(inner, pod_uid)?;
    let attempts = match lock(&slot.views).get(container.as_str()) {
        Some((a, _)) => *a,
        None => bail!("container {container} is not valid for pod {}", slot.name),
    };
    if attempts == 0 {
        bail!(
            "container \"{container}\" in pod \"{}\" is waiting to start",
            slot.name
        );
    }
    let index = if *previous {
        if attempts < 2 {
            bail!(
                "previous terminated container \"{container}\" in pod \"{}\" not found",
                slot.name
            );
        }
        attempts - 2
    } else {
        attempts - 1
    };
    let files = AttemptFiles::new(&slot.pod_dir.join(container), index);
    let exit = files.exit.clone();
    let opts = crate::cri::ReadOptions {
        follow: *follow && !*previous,
        timestamps: *timestamps,
        tail_lines: *tail_lines,
        since: if *since_seconds > 0 {
            now() - since_seconds
        } else {
            0
        },
        limit_bytes: *limit_bytes,
    };
    let reader = crate::cri::LogReader::open(&files.log, opts, Box::new(move || exit.exists()))?;
    Ok(Box::new(reader))
}

/// Which list a container is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    App,
}

struct Worker {
    inner: Arc<Inner>,
    slot: Arc<Slot>,
    pod_dir: PathBuf,
    rec: PodRecord,
    saved: PodRecord,
    wake: mpsc::Receiver<()>,
    /// Per container name: startup, liveness, readiness probes of the live attempt.
    probes: HashMap<String, [Option<ProbeState>; 3]>,
    /// Containers being stopped: when to send SIGKILL (None: already sent).
    stopping: HashMap<String, Option<Instant>>,
    /// Per container name: no pull before this time, and the current step.
    pull_backoff: HashMap<String, (Instant, u64)>,
    /// The volumes prepared for this revision: (revision, name → path).
    volumes: Option<(u64, Vec<(String, PathBuf)>)>,
    etc: Vec<(String, PathBuf)>,
    sandbox_error: String,
    last_report: Option<PodReport>,
    /// The sandbox of a finished pod was released.
    released: bool,
}

/// Kill reason of a container whose image changed in the spec.
const SPEC_CHANGED: &str = "spec changed";

const STARTUP: usize = 0;
const LIVENESS: usize = 1;
const READINESS: usize = 2;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn waiting(reason: &str, message: impl Into<String>) -> ContainerState {
    ContainerState::Waiting {
        reason: reason.into(),
        message: message.into(),
    }
}

impl Worker {
    fn run(mut self) {
        loop {
            if self.inner.stop.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let (spec, removing) = {
                let d = lock(&self.slot.desired);
                (d.spec.clone(), d.removing)
            };
            if spec != self.rec.spec {
                self.rec.spec = spec;
            }
            if removing {
                self.rec.removing = true;
            }
            self.step();
            if self.rec != self.saved {
                match self.inner.state.put(&self.rec) {
                    Ok(()) => self.saved = self.rec.clone(),
                    Err(e) => tracing::error!("persisting pod {}: {e:#}", self.rec.spec.uid),
                }
            }
            self.publish_views();
            if self.rec.removing && self.rec.terminated && self.forget() {
                return;
            }
            self.publish_report();
            let busy = !self.stopping.is_empty() || self.all().any(|c| c.running.is_some());
            let tick = if busy {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(1)
            };
            match self.wake.recv_timeout(tick) {
                Ok(()) => while self.wake.try_recv().is_ok() {},
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn all(&self) -> impl Iterator<Item = &ContainerRecord> {
        self.rec
            .init_containers
            .iter()
            .chain(self.rec.containers.iter())
    }

    fn event(&self, container: Option<(Kind, &str)>, warning: bool, reason: &str, message: String) {
        let field_path = match container {
            Some((Kind::Init, n)) => format!("spec.initContainers{{{n}}}"),
            Some((Kind::App, n)) => format!("spec.containers{{{n}}}"),
            None => String::new(),
        };
        let _ = self.inner.tx.send_blocking(Update::Event(AgentEvent {
            pod_uid: self.rec.spec.uid.clone(),
            namespace: self.rec.spec.namespace.clone(),
            pod_name: self.rec.spec.name.clone(),
            field_path,
            warning,
            reason: reason.into(),
            message,
        }));
    }

    fn publish_views(&self) {
        let mut views = lock(&self.slot.views);
        views.clear();
        for c in self.all() {
            views.insert(
                c.name.clone(),
                (c.attempts, c.running.as_ref().map(|a| a.id.clone())),
            );
        }
    }

    fn publish_report(&mut self) {
        let report = self.report();
        if self.last_report.as_ref() == Some(&report) {
            return;
        }
        lock(&self.inner.reports).insert(report.uid.clone(), report.clone());
        let _ = self.inner.tx.send_blocking(Update::Report(report.clone()));
        self.last_report = Some(report);
    }

    /// Forgets the removed pod; true when the worker ends, false when the pod was
    /// added again meanwhile and starts afresh with this worker.
    fn forget(&mut self) -> bool {
        let uid = self.rec.spec.uid.clone();
        // Under the slots lock, as upsert: a re-add either lands before this or
        // finds no slot and starts a new worker.
        let again = {
            let mut slots = lock(&self.inner.slots);
            let d = lock(&self.slot.desired);
            if d.removing {
                if slots.get(&uid).is_some_and(|s| Arc::ptr_eq(s, &self.slot)) {
                    slots.remove(&uid);
                }
                None
            } else {
                Some(d.spec.clone())
            }
        };
        if let Err(e) = self.inner.state.delete(&uid) {
            tracing::error!("forgetting pod {uid}: {e:#}");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.pod_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", self.pod_dir.display());
        }
        lock(&self.inner.reports).remove(&uid);
        let Some(spec) = again else {
            let spec = &self.rec.spec;
            tracing::info!(pod = %format!("{}/{}", spec.namespace, spec.name), %uid, "pod stopped and removed");
            return true;
        };
        self.rec = new_record(spec);
        self.saved = self.rec.clone();
        if let Err(e) = self.inner.state.put(&self.rec) {
            tracing::error!("cannot persist pod {uid}: {e:#}");
        }
        self.probes.clear();
        self.stopping.clear();
        self.pull_backoff.clear();
        self.volumes = None;
        self.etc.clear();
        self.sandbox_error.clear();
        self.last_report = None;
        self.released = false;
        false
    }

    fn spec_of(&self, kind: Kind, i: usize) -> Container {
        match kind {
            Kind::Init => self.rec.spec.init_containers[i].clone(),
            Kind::App => self.rec.spec.containers[i].clone(),
        }
    }

    fn record(&mut self, kind: Kind, i: usize) -> &mut ContainerRecord {
        match kind {
            Kind::Init => &mut self.rec.init_containers[i],
            Kind::App => &mut self.rec.containers[i],
        }
    }

    fn pod_cgroup(&self) -> String {
        format!(
            "{}/pod-{}",
            self.inner.options.cgroup_root.trim_end_matches('/'),
            self.rec.spec.uid
        )
    }

    fn step(&mut self) {
        if self.rec.terminated {
            return;
        }
        // Records follow the spec's containers (a changed spec keeps known ones).
        self.sync_records();
        self.poll_exits();
        let deadline = self.rec.spec.active_deadline_seconds;
        if deadline > 0
            && self.rec.reason.is_empty()
            && now() - self.rec.start_time >= deadline as i64
        {
            self.rec.reason = "DeadlineExceeded".into();
            self.rec.message =
                "Pod was active on the node longer than the specified deadline".to_string();
            self.event(None, true, "DeadlineExceeded", self.rec.message.clone());
        }
        let grace = Duration::from_secs(self.rec.spec.termination_grace_period_seconds);
        if self.rec.spec.deleting || self.rec.removing {
            self.stop_all(grace);
            if self.all().all(|c| c.running.is_none()) {
                match self.release() {
                    Ok(()) => self.rec.terminated = true,
                    Err(e) => tracing::warn!("releasing pod {}: {e:#}", self.rec.spec.uid),
                }
            }
            return;
        }
        if !self.rec.reason.is_empty() {
            self.stop_all(grace);
            self.release_when_done();
            return;
        }
        // A pod that has finished (Succeeded or Failed) gives back its sandbox,
        // volumes and cgroup; its logs stay until it is removed.
        let initialized = self.rec.init_containers.iter().all(succeeded);
        if matches!(
            self.phase(initialized),
            PodPhase::Succeeded | PodPhase::Failed
        ) {
            self.release_when_done();
            return;
        }
        if let Err((reason, e)) = self.ensure_sandbox() {
            let msg = format!("{e:#}");
            if msg != self.sandbox_error {
                self.event(None, true, reason, msg.clone());
                self.sandbox_error = msg;
            }
            return;
        }
        self.sandbox_error.clear();
        self.run_probes();
        // Init containers, in order.
        for i in 0..self.rec.init_containers.len() {
            let r = &self.rec.init_containers[i];
            if r.running.is_some() {
                return;
            }
            if succeeded(r) {
                continue;
            }
            if r.attempts > 0 && self.rec.spec.restart_policy == RestartPolicy::Never {
                return; // the pod has failed
            }
            self.maybe_start(Kind::Init, i);
            return;
        }
        for i in 0..self.rec.containers.len() {
            let r = &self.rec.containers[i];
            if r.running.is_some()
                && !r.image.is_empty()
                && r.image != self.rec.spec.containers[i].image
                && !self.stopping.contains_key(&r.name)
            {
                let grace = Duration::from_secs(self.rec.spec.termination_grace_period_seconds);
                self.stop(Kind::App, i, grace, SPEC_CHANGED);
                continue;
            }
            if r.running.is_some() || self.stopping.contains_key(&r.name) {
                continue;
            }
            if r.attempts > 0 && !self.will_restart(r) {
                continue;
            }
            self.maybe_start(Kind::App, i);
        }
    }

    fn sync_records(&mut self) {
        let fix = |recs: &mut Vec<ContainerRecord>, specs: &[Container]| {
            if recs.len() == specs.len() && recs.iter().zip(specs).all(|(r, s)| r.name == s.name) {
                return;
            }
            let mut new: Vec<ContainerRecord> = Vec::new();
            for s in specs {
                match recs.iter().position(|r| r.name == s.name) {
                    Some(p) => new.push(recs.remove(p)),
                    None => new.push(ContainerRecord::new(&s.name)),
                }
            }
            *recs = new;
        };
        fix(
            &mut self.rec.init_containers,
            &self.rec.spec.init_containers,
        );
        fix(&mut self.rec.containers, &self.rec.spec.containers);
    }

    /// Whether a container that has run will run again: `finish` leaves a Terminated
    /// state only when the restart policy (or a stopping pod) rules out a restart;
    /// otherwise the container waits (back-off) for its next attempt.
    fn will_restart(&self, r: &ContainerRecord) -> bool {
        !matches!(r.state, ContainerState::Terminated { .. })
    }

    /// Namespaces, /etc files and volumes; on failure the event reason and error.
    fn ensure_sandbox(&mut self) -> std::result::Result<(), (&'static str, anyhow::Error)> {
        let spec = &self.rec.spec;
        let sandbox = |e: anyhow::Error| ("FailedCreatePodSandBox", e);
        std::fs::create_dir_all(&self.pod_dir)
            .with_context(|| format!("creating {}", self.pod_dir.display()))
            .map_err(sandbox)?;
        crate::sandbox::ensure(spec, &self.pod_dir).map_err(sandbox)?;
        if self.etc.is_empty() {
            self.etc = crate::sandbox::write_etc(spec, &self.pod_dir, "").map_err(sandbox)?;
        }
        if self.volumes.as_ref().map(|(r, _)| *r) != Some(spec.revision) {
            let v = crate::volumes::ensure(spec, &self.pod_dir).map_err(|e| ("FailedMount", e))?;
            self.volumes = Some((spec.revision, v));
        }
        Ok(())
    }

    /// Notices attempts that ended.
    fn poll_exits(&mut self) {
        for kind in [Kind::Init, Kind::App] {
            let n = match kind {
                Kind::Init => self.rec.init_containers.len(),
                Kind::App => self.rec.containers.len(),
            };
            for i in 0..n {
                let Some(att) = self.record(kind, i).running.clone() else {
                    continue;
                };
                let name = self.record(kind, i).name.clone();
                let files = AttemptFiles::new(&self.pod_dir.join(&name), att.index);
                let exit = match ExitRecord::read(&files.exit) {
                    Some(e) => e,
                    None if shim_alive(att.shim_pid, &att.id) => continue,
                    None => match ExitRecord::read(&files.exit) {
                        Some(e) => e,
                        None => {
                            // The shim died without a word: stop what may be left.
                            if let Ok(c) = self.inner.runtime.load(&att.id) {
                                let _ = c.kill(libc::SIGKILL, true);
                            }
                            ExitRecord {
                                exit_code: 137,
                                signal: 0,
                                oom_killed: false,
                                finished_at: now(),
                            }
                        }
                    },
                };
                self.finish(kind, i, &att, exit);
            }
        }
    }

    fn finish(&mut self, kind: Kind, i: usize, att: &Attempt, exit: ExitRecord) {
        if let Err(e) = self.cleanup_attempt(&att.id) {
            tracing::warn!("cleaning up container {}: {e:#}", att.id);
        }
        let name = self.record(kind, i).name.clone();
        self.stopping.remove(&name);
        self.probes.remove(&name);
        let kill_reason = std::mem::take(&mut self.record(kind, i).kill_reason);
        let reason = if exit.oom_killed {
            "OOMKilled"
        } else if exit.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let message = match kill_reason.as_str() {
            "" => String::new(),
            r => format!("stopped by the agent: {r}"),
        };
        let term = ContainerState::Terminated {
            exit_code: exit.exit_code,
            signal: exit.signal,
            reason: reason.into(),
            message,
            started_at: att.started_at,
            finished_at: exit.finished_at,
        };
        let stopping_pod =
            self.rec.spec.deleting || self.rec.removing || !self.rec.reason.is_empty();
        let replaced = kill_reason == SPEC_CHANGED;
        let restart = !stopping_pod
            && (replaced
                || match (kind, self.rec.spec.restart_policy) {
                    (_, RestartPolicy::Never) => false,
                    (Kind::App, RestartPolicy::Always) => true,
                    _ => exit.exit_code != 0,
                });
        let initial = self.inner.options.backoff_initial.as_secs().max(1);
        let max = self.inner.options.backoff_max.as_secs().max(initial);
        let pod = format!(
            "{}_{}({})",
            self.rec.spec.name, self.rec.spec.namespace, self.rec.spec.uid
        );
        let r = self.record(kind, i);
        r.running = None;
        if !restart {
            r.state = term;
            return;
        }
        // Crash-loop back-off: the first restart is immediate, then 10 s doubling to
        // 5 min; a run of 10 minutes resets it.
        if exit.finished_at - att.started_at >= 600 {
            r.backoff_secs = 0;
        }
        if replaced {
            // A new definition starts at once and does not count as a crash.
            r.backoff_until_ms = 0;
        } else if r.backoff_secs == 0 {
            r.backoff_until_ms = 0;
            r.backoff_secs = initial;
        } else {
            r.backoff_until_ms = exit.finished_at * 1000 + (r.backoff_secs as i64) * 1000;
            r.backoff_secs = (r.backoff_secs * 2).min(max);
        }
        r.last_state = Some(term);
        let backing_off = r.backoff_until_ms > now_ms();
        r.state = if backing_off {
            let secs = r.backoff_until_ms / 1000 - exit.finished_at;
            waiting(
                "CrashLoopBackOff",
                format!("back-off {secs}s restarting failed container={name} pod={pod}"),
            )
        } else {
            waiting("ContainerCreating", "")
        };
        if backing_off {
            self.event(
                Some((kind, &name)),
                true,
                "BackOff",
                format!("Back-off restarting failed container {name} in pod {pod}"),
            );
        }
    }

    /// Removes an ended attempt's runtime state, root filesystem and bundle.
    fn cleanup_attempt(&self, id: &str) -> Result<()> {
        match self.inner.runtime.load(id) {
            Ok(c) => {
                // Processes the init left behind (no pid namespace with hostPID).
                crate::sandbox::kill_cgroup(&c.cgroups_path().to_string_lossy());
                c.delete(true).map_err(|e| anyhow::anyhow!("{e}"))?
            }
            Err(flotilla_runtime::Error::NotFound(_)) => {}
            Err(e) => return Err(anyhow::anyhow!("{e}")),
        }
        let snap = flotilla_images::snapshot::snapshot_dir(&self.inner.images, id);
        if snap.exists() {
            flotilla_images::snapshot::unmount(&self.inner.images, id)?;
        }
        let bundle = self.pod_dir.join(".bundles").join(id);
        if bundle.exists() {
            std::fs::remove_dir_all(&bundle)
                .with_context(|| format!("removing {}", bundle.display()))?;
        }
        Ok(())
    }

    /// SIGTERM to every live container, SIGKILL once `grace` has passed.
    fn stop_all(&mut self, grace: Duration) {
        for kind in [Kind::Init, Kind::App] {
            let n = match kind {
                Kind::Init => self.rec.init_containers.len(),
                Kind::App => self.rec.containers.len(),
            };
            for i in 0..n {
                self.stop(kind, i, grace, "");
            }
        }
    }

    fn stop(&mut self, kind: Kind, i: usize, grace: Duration, why: &str) {
        let r = self.record(kind, i);
        let Some(att) = r.running.clone() else {
            return;
        };
        let name = r.name.clone();
        if !why.is_empty() {
            r.kill_reason = why.into();
        }
        match self.stopping.get(&name).copied() {
            None => {
                let message = match why {
                    SPEC_CHANGED => {
                        format!("Container {name} definition changed, will be restarted")
                    }
                    _ => format!("Stopping container {name}"),
                };
                self.event(Some((kind, &name)), false, "Killing", message);
                let sig = if grace.is_zero() {
                    libc::SIGKILL
                } else {
                    libc::SIGTERM
                };
                if let Ok(c) = self.inner.runtime.load(&att.id) {
                    let _ = c.kill(sig, sig == libc::SIGKILL);
                }
                let deadline = (!grace.is_zero()).then(|| Instant::now() + grace);
                self.stopping.insert(name, deadline);
            }
            Some(Some(deadline)) if Instant::now() >= deadline => {
                if let Ok(c) = self.inner.runtime.load(&att.id) {
                    let _ = c.kill(libc::SIGKILL, true);
                }
                self.stopping.insert(name, None);
            }
            Some(_) => {}
        }
    }

    /// Releases the sandbox once no container runs (once per worker).
    fn release_when_done(&mut self) {
        if self.released || self.all().any(|c| c.running.is_some()) {
            return;
        }
        match self.release() {
            Ok(()) => self.released = true,
            Err(e) => tracing::warn!("releasing pod {}: {e:#}", self.rec.spec.uid),
        }
    }

    /// Releases the pod's sandbox, volumes and cgroup (every container has stopped).
    fn release(&mut self) -> Result<()> {
        for c in self.all() {
            if c.running.is_some() {
                bail!("container {} still runs", c.name);
            }
        }
        crate::volumes::teardown(&self.pod_dir)?;
        crate::sandbox::teardown(&self.pod_dir)?;
        crate::sandbox::remove_cgroup(&self.pod_cgroup())?;
        let bundles = self.pod_dir.join(".bundles");
        if bundles.exists() {
            std::fs::remove_dir_all(&bundles)?;
        }
        self.volumes = None;
        self.etc.clear();
        Ok(())
    }

    fn run_probes(&mut self) {
        let netns =
            (!self.rec.spec.host_network).then(|| crate::sandbox::ns_path(&self.pod_dir, "net"));
        let grace = Duration::from_secs(self.rec.spec.termination_grace_period_seconds);
        for i in 0..self.rec.containers.len() {
            let Some(att) = self.rec.containers[i].running.clone() else {
                continue;
            };
            let spec = self.rec.spec.containers[i].clone();
            let name = spec.name.clone();
            if self.stopping.contains_key(&name) {
                continue;
            }
            let target = Target {
                netns: netns.clone(),
                shim_exe: self.inner.options.shim_exe.clone(),
                runtime_root: self.inner.config.runtime_root.clone(),
                id: att.id.clone(),
            };
            let started = Instant::now();
            let states = self.probes.entry(name.clone()).or_insert_with(|| {
                [
                    spec.startup_probe
                        .as_ref()
                        .map(|p| ProbeState::new(p, started)),
                    spec.liveness_probe
                        .as_ref()
                        .map(|p| ProbeState::new(p, started)),
                    spec.readiness_probe
                        .as_ref()
                        .map(|p| ProbeState::new(p, started)),
                ]
            });
            let startup_done = states[STARTUP]
                .as_ref()
                .is_none_or(|s| s.result == Some(true));
            let mut kill: Option<String> = None;
            let mut events = Vec::new();
            if !startup_done {
                let s = states[STARTUP].as_mut().expect("checked");
                if let Tick::Failed { message, threshold } = s.tick(&target) {
                    events.push(format!("Startup probe failed: {message}"));
                    if threshold {
                        kill = Some(format!(
                            "Container {name} failed startup probe, will be restarted"
                        ));
                    }
                }
            } else {
                for which in [LIVENESS, READINESS] {
                    let Some(s) = states[which].as_mut() else {
                        continue;
                    };
                    if let Tick::Failed { message, threshold } = s.tick(&target) {
                        let label = if which == LIVENESS {
                            "Liveness"
                        } else {
                            "Readiness"
                        };
                        events.push(format!("{label} probe failed: {message}"));
                        if which == LIVENESS && threshold {
                            s.reset_failures();
                            kill = Some(format!(
                                "Container {name} failed liveness probe, will be restarted"
                            ));
                        }
                    }
                }
            }
            for e in events {
                self.event(Some((Kind::App, &name)), true, "Unhealthy", e);
            }
            if let Some(msg) = kill {
                self.event(Some((Kind::App, &name)), false, "Killing", msg);
                // The Killing event is sent: mark as stopping without a second one.
                if let Ok(c) = self.inner.runtime.load(&att.id) {
                    let _ = c.kill(
                        if grace.is_zero() {
                            libc::SIGKILL
                        } else {
                            libc::SIGTERM
                        },
                        false,
                    );
                }
                self.rec.containers[i].kill_reason = "liveness".into();
                self.stopping.insert(
                    name.clone(),
                    (!grace.is_zero()).then(|| Instant::now() + grace),
                );
            }
        }
        // Stopping containers get SIGKILL after their grace period.
        for i in 0..self.rec.containers.len() {
            let name = self.rec.containers[i].name.clone();
            if let Some(Some(deadline)) = self.stopping.get(&name).copied()
                && Instant::now() >= deadline
            {
                self.stop(Kind::App, i, grace, "");
            }
        }
    }

    /// Starts the next attempt of a container unless it is backing off.
    fn maybe_start(&mut self, kind: Kind, i: usize) {
        let pod = format!(
            "{}_{}({})",
            self.rec.spec.name, self.rec.spec.namespace, self.rec.spec.uid
        );
        let r = self.record(kind, i);
        let name = r.name.clone();
        if r.backoff_until_ms > now_ms() {
            let finished = match &r.last_state {
                Some(ContainerState::Terminated { finished_at, .. }) => *finished_at,
                _ => now(),
            };
            let secs = r.backoff_until_ms / 1000 - finished;
            let was_waiting = matches!(&r.state, ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff");
            r.state = waiting(
                "CrashLoopBackOff",
                format!("back-off {secs}s restarting failed container={name} pod={pod}"),
            );
            if !was_waiting {
                self.event(
                    Some((kind, &name)),
                    true,
                    "BackOff",
                    "Back-off restarting failed container".to_string()
                        + &format!(" {name} in pod {pod}"),
                );
            }
            return;
        }
        let spec = self.spec_of(kind, i);
        let image = match self.ensure_image(kind, i, &spec) {
            Some(img) => img,
            None => return,
        };
        if let Err(e) = self.start_attempt(kind, i, &spec, &image) {
            let msg = format!("{e:#}");
            self.event(Some((kind, &name)), true, "Failed", format!("Error: {msg}"));
            let r = self.record(kind, i);
            r.state = waiting("CreateContainerError", msg);
            r.backoff_until_ms = now_ms() + 10_000;
        }
    }

    /// The image of a container per its pull policy; None while it is not there.
    fn ensure_image(&mut self, kind: Kind, i: usize, c: &Container) -> Option<ImageRecord> {
        let store = &self.inner.images;
        let present = store.resolve(&c.image).ok();
        let must_pull = match c.image_pull_policy {
            PullPolicy::Always => true,
            PullPolicy::IfNotPresent => present.is_none(),
            PullPolicy::Never => {
                if let Some(p) = present {
                    return Some(p);
                }
                let msg = format!(
                    "Container image \"{}\" is not present with pull policy of Never",
                    c.image
                );
                let r = self.record(kind, i);
                let first = !matches!(&r.state, ContainerState::Waiting { reason, .. } if reason == "ErrImageNeverPull");
                r.state = waiting("ErrImageNeverPull", msg.clone());
                if first {
                    self.event(Some((kind, &c.name)), true, "ErrImageNeverPull", msg);
                }
                return None;
            }
        };
        if !must_pull {
            self.event(
                Some((kind, &c.name)),
                false,
                "Pulled",
                format!("Container image \"{}\" already present on machine", c.image),
            );
            return present;
        }
        if let Some((until, _)) = self.pull_backoff.get(&c.name)
            && Instant::now() < *until
        {
            let r = self.record(kind, i);
            let first = !matches!(&r.state, ContainerState::Waiting { reason, .. } if reason == "ImagePullBackOff");
            r.state = waiting(
                "ImagePullBackOff",
                format!("Back-off pulling image \"{}\"", c.image),
            );
            if first {
                self.event(
                    Some((kind, &c.name)),
                    false,
                    "BackOff",
                    format!("Back-off pulling image \"{}\"", c.image),
                );
            }
            return None;
        }
        self.event(
            Some((kind, &c.name)),
            false,
            "Pulling",
            format!("Pulling image \"{}\"", c.image),
        );
        let began = Instant::now();
        let result = (|| -> Result<ImageRecord> {
            let registries = flotilla_images::registries::RegistriesConfig::load(
                &self.inner.options.registries,
                false,
            )?;
            let opts = flotilla_images::pull::PullOptions {
                platform: flotilla_images::platform::Platform::host(),
                registries,
                pinned: false,
                parallel: 3,
                client: flotilla_images::client::ClientOptions::default(),
                progress: &flotilla_images::progress::silent,
            };
            flotilla_images::pull::pull(store, &c.image, &opts)
        })();
        match result {
            Ok(img) => {
                self.pull_backoff.remove(&c.name);
                self.event(
                    Some((kind, &c.name)),
                    false,
                    "Pulled",
                    format!(
                        "Successfully pulled image \"{}\" in {:.3}s",
                        c.image,
                        began.elapsed().as_secs_f64()
                    ),
                );
                Some(img)
            }
            Err(e) => {
                let msg = format!("{e:#}");
                self.event(
                    Some((kind, &c.name)),
                    true,
                    "Failed",
                    format!("Failed to pull image \"{}\": {msg}", c.image),
                );
                self.event(
                    Some((kind, &c.name)),
                    true,
                    "Failed",
                    "Error: ErrImagePull".into(),
                );
                let step = self.pull_backoff.get(&c.name).map(|(_, s)| *s).unwrap_or(0);
                let step = if step == 0 { 10 } else { (step * 2).min(300) };
                self.pull_backoff.insert(
                    c.name.clone(),
                    (Instant::now() + Duration::from_secs(step), step),
                );
                self.record(kind, i).state = waiting("ErrImagePull", msg);
                None
            }
        }
    }

    fn start_attempt(
        &mut self,
        kind: Kind,
        i: usize,
        c: &Container,
        image: &ImageRecord,
    ) -> Result<()> {
        let index = self.record(kind, i).attempts;
        let id = format!("{}-{}-{}", self.rec.spec.uid, c.name, index);
        let ctr_dir = self.pod_dir.join(&c.name);
        std::fs::create_dir_all(&ctr_dir)?;
        let bundle = self.pod_dir.join(".bundles").join(&id);
        let rootfs = bundle.join("rootfs");
        // Leftovers of an attempt that failed half-way.
        self.cleanup_attempt(&id)?;
        std::fs::create_dir_all(&rootfs)?;
        let files = AttemptFiles::new(&ctr_dir, index);
        // Files of this attempt (a half-done start) and of attempts before the
        // previous one go; `logs --previous` needs only the last.
        for e in std::fs::read_dir(&ctr_dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.split('.').next().and_then(|n| n.parse::<u32>().ok());
            if n.is_some_and(|n| n == index || n + 1 < index) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let result = (|| -> Result<(i32, i32)> {
            flotilla_images::snapshot::mount(&self.inner.images, &image.name, &id, &rootfs, false)?;
            let config = self.inner.images.config(&image.config)?;
            let run = config.config.clone().unwrap_or_default();
            let volumes = self
                .volumes
                .as_ref()
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let mounts = c
                .volume_mounts
                .iter()
                .map(|m| crate::volumes::mount_source(m, &volumes))
                .collect::<Result<Vec<_>>>()?;
            let cgroups_path = format!("{}/{id}", self.pod_cgroup());
            let spec = crate::ocispec::build(&crate::ocispec::Inputs {
                pod: &self.rec.spec,
                container: c,
                image: &run,
                rootfs: &rootfs,
                pod_dir: &self.pod_dir,
                etc: &self.etc,
                volume_mounts: &mounts,
                cgroups_path: &cgroups_path,
                pod_ip: "",
                host_ip: "",
            })?;
            std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
            crate::shim::spawn(
                &self.inner.options.shim_exe,
                &self.inner.config.runtime_root,
                &id,
                &bundle,
                &files,
                self.inner.options.log_max_bytes,
            )
        })();
        let (shim_pid, _init) = match result {
            Ok(p) => p,
            Err(e) => {
                let _ = self.cleanup_attempt(&id);
                return Err(e);
            }
        };
        let started_at = now();
        let pod_name = format!("{}/{}", self.rec.spec.namespace, self.rec.spec.name);
        let r = self.record(kind, i);
        r.attempts = index + 1;
        r.restart_count = index;
        r.image_id = image.manifest.to_string();
        r.image = c.image.clone();
        r.running = Some(Attempt {
            id: id.clone(),
            index,
            started_at,
            shim_pid,
        });
        r.state = ContainerState::Running { started_at };
        self.probes.remove(&c.name);
        self.event(
            Some((kind, &c.name)),
            false,
            "Created",
            format!("Created container: {}", c.name),
        );
        self.event(
            Some((kind, &c.name)),
            false,
            "Started",
            format!("Started container {}", c.name),
        );
        tracing::info!(pod = %pod_name, container = %c.name, %id, "container started");
        Ok(())
    }

    fn report(&self) -> PodReport {
        let spec = &self.rec.spec;
        let initialized = self.rec.init_containers.iter().all(succeeded);
        let ctr_report = |r: &ContainerRecord, c: Option<&Container>, kind: Kind| {
            let running = r.running.is_some();
            let probes = self.probes.get(&r.name);
            let started = running
                && match c.and_then(|c| c.startup_probe.as_ref()) {
                    None => true,
                    Some(_) => probes
                        .and_then(|p| p[STARTUP].as_ref())
                        .is_some_and(|s| s.result == Some(true)),
                };
            let ready = match kind {
                Kind::Init => succeeded(r),
                Kind::App => {
                    started
                        && !self.stopping.contains_key(&r.name)
                        && match c.and_then(|c| c.readiness_probe.as_ref()) {
                            None => true,
                            Some(_) => probes
                                .and_then(|p| p[READINESS].as_ref())
                                .is_some_and(|s| s.result == Some(true)),
                        }
                }
            };
            let state = if kind == Kind::App && !initialized && r.attempts == 0 {
                waiting("PodInitializing", "")
            } else {
                r.state.clone()
            };
            ContainerReport {
                name: r.name.clone(),
                image: c.map(|c| c.image.clone()).unwrap_or_default(),
                image_id: r.image_id.clone(),
                container_id: match r.attempts {
                    0 => String::new(),
                    n => format!("flotilla://{}-{}-{}", spec.uid, r.name, n - 1),
                },
                ready,
                started,
                restart_count: r.restart_count,
                state,
                last_state: r.last_state.clone(),
            }
        };
        let init_containers: Vec<ContainerReport> = self
            .rec
            .init_containers
            .iter()
            .enumerate()
            .map(|(i, r)| ctr_report(r, spec.init_containers.get(i), Kind::Init))
            .collect();
        let containers: Vec<ContainerReport> = self
            .rec
            .containers
            .iter()
            .enumerate()
            .map(|(i, r)| ctr_report(r, spec.containers.get(i), Kind::App))
            .collect();
        let phase = self.phase(initialized);
        PodReport {
            uid: spec.uid.clone(),
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            revision: spec.revision,
            phase,
            reason: self.rec.reason.clone(),
            message: self.rec.message.clone(),
            pod_ip: String::new(),
            host_ip: String::new(),
            start_time: self.rec.start_time,
            initialized,
            containers_ready: !containers.is_empty() && containers.iter().all(|c| c.ready),
            init_containers,
            containers,
            terminated: self.rec.terminated,
        }
    }

    fn phase(&self, initialized: bool) -> PodPhase {
        if !self.rec.reason.is_empty() {
            return PodPhase::Failed;
        }
        let never = self.rec.spec.restart_policy == RestartPolicy::Never;
        if never
            && self
                .rec
                .init_containers
                .iter()
                .any(|r| r.running.is_none() && exit_code(r).is_some_and(|c| c != 0))
        {
            return PodPhase::Failed;
        }
        if !initialized {
            return PodPhase::Pending;
        }
        let done = |r: &ContainerRecord| {
            r.running.is_none()
                && r.attempts > 0
                && matches!(r.state, ContainerState::Terminated { .. })
                && !self.will_restart(r)
        };
        if !self.rec.containers.is_empty() && self.rec.containers.iter().all(done) {
            if self.rec.containers.iter().all(|r| exit_code(r) == Some(0)) {
                return PodPhase::Succeeded;
            }
            return PodPhase::Failed;
        }
        if self.rec.containers.iter().any(|r| r.attempts > 0) {
            PodPhase::Running
        } else {
            PodPhase::Pending
        }
    }
}

fn exit_code(r: &ContainerRecord) -> Option<i32> {
    match &r.state {
        ContainerState::Terminated { exit_code, .. } => Some(*exit_code),
        _ => None,
    }
}

fn succeeded(r: &ContainerRecord) -> bool {
    r.running.is_none() && exit_code(r) == Some(0)
}

/// True while the shim of attempt `id` runs (its command line names the id).
fn shim_alive(pid: i32, id: &str) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => cmd.split(|&b| b == 0).any(|arg| arg == id.as_bytes()),
        Err(_) => false,
    }
}
