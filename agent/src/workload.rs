//! What the link drives on the node: the desired pods, their reports, and the logs
//! and exec streams of their containers. [`flotilla_pods::Pods`] implements it; the
//! link's unit tests drive the same trait with in-process pods.

use anyhow::Result;
use flotilla_shared::pod::{NodeConfig, PodReport, PodSpec, StreamRequest};
use std::io::{Read, Write};

/// A running `exec` process, split so each part can live on its own thread.
pub struct Exec {
    pub stdin: Option<Box<dyn Write + Send>>,
    pub stdout: Option<Box<dyn Read + Send>>,
    pub stderr: Option<Box<dyn Read + Send>>,
    pub control: Box<dyn ExecControl>,
}

/// Terminal size changes and the exit code of an exec process.
pub trait ExecControl: Send {
    /// Resizes the process's terminal.
    fn resize(&self, width: u16, height: u16) -> Result<()>;
    /// Blocks until the process ends; its shell-style exit code (128+signal).
    fn wait(&mut self) -> Result<i32>;
}

/// The node's pods, as the link sees them. Methods may block briefly (they persist
/// state); the link calls them off its async threads.
pub trait Workload: Send + Sync + 'static {
    fn set_node_config(&self, config: NodeConfig);
    /// The complete desired set: pods not in it are stopped and forgotten.
    fn set_desired(&self, pods: Vec<PodSpec>);
    fn upsert(&self, pod: PodSpec);
    fn remove(&self, uid: &str);
    /// Every pod's current report.
    fn reports(&self) -> Vec<PodReport>;
    /// A blocking reader of a container's log (follow: blocks for more).
    fn logs(&self, request: &StreamRequest) -> Result<Box<dyn Read + Send>>;
    /// Starts a process in a running container.
    fn exec(&self, request: &StreamRequest) -> Result<Exec>;
}

impl Workload for flotilla_pods::Pods {
    fn set_node_config(&self, config: NodeConfig) {
        flotilla_pods::Pods::set_node_config(self, config)
    }
    fn set_desired(&self, pods: Vec<PodSpec>) {
        flotilla_pods::Pods::set_desired(self, pods)
    }
    fn upsert(&self, pod: PodSpec) {
        flotilla_pods::Pods::upsert(self, pod)
    }
    fn remove(&self, uid: &str) {
        flotilla_pods::Pods::remove(self, uid)
    }
    fn reports(&self) -> Vec<PodReport> {
        flotilla_pods::Pods::reports(self)
    }
    fn logs(&self, request: &StreamRequest) -> Result<Box<dyn Read + Send>> {
        flotilla_pods::Pods::logs(self, request)
    }
    fn exec(&self, request: &StreamRequest) -> Result<Exec> {
        let mut session = flotilla_pods::Pods::exec(self, request)?;
        Ok(Exec {
            stdin: session.stdin.take(),
            stdout: session.stdout.take(),
            stderr: session.stderr.take(),
            control: Box::new(session),
        })
    }
}

impl ExecControl for flotilla_pods::ExecSession {
    fn resize(&self, width: u16, height: u16) -> Result<()> {
        flotilla_pods::ExecSession::resize(self, width, height)
    }
    fn wait(&mut self) -> Result<i32> {
        flotilla_pods::ExecSession::wait(self)
    }
}
