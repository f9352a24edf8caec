//! Test support: a [`Workload`] of in-process "pods" that records what the link told
//! it, serves logs from memory and runs exec commands as real `sh` processes.

use anyhow::{Result, bail};
use flotilla_shared::pod::{NodeConfig, PodPhase, PodReport, PodSpec, StreamRequest};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use crate::workload::{Exec, ExecControl, Workload};

/// What the link did to the workload, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    NodeConfig(String),
    Desired(Vec<String>),
    Upsert(String),
    Remove(String),
}

#[derive(Default)]
pub struct TestPods {
    pub calls: Mutex<Vec<Call>>,
    /// Log bytes per pod uid.
    pub logs: Mutex<Vec<(String, Vec<u8>)>>,
    pub pods: Mutex<Vec<PodSpec>>,
}

pub fn report(uid: &str) -> PodReport {
    PodReport {
        uid: uid.into(),
        namespace: "default".into(),
        name: uid.into(),
        revision: 1,
        phase: PodPhase::Running,
        reason: String::new(),
        message: String::new(),
        pod_ip: String::new(),
        host_ip: String::new(),
        start_time: 0,
        initialized: true,
        containers_ready: true,
        init_containers: vec![],
        containers: vec![],
        terminated: false,
    }
}

impl Workload for TestPods {
    fn set_node_config(&self, config: NodeConfig) {
        self.calls
            .lock()
            .unwrap()
            .push(Call::NodeConfig(config.pod_cidr));
    }
    fn set_desired(&self, pods: Vec<PodSpec>) {
        let uids = pods.iter().map(|p| p.uid.clone()).collect();
        self.calls.lock().unwrap().push(Call::Desired(uids));
        *self.pods.lock().unwrap() = pods;
    }
    fn upsert(&self, pod: PodSpec) {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Upsert(pod.uid.clone()));
        self.pods.lock().unwrap().push(pod);
    }
    fn remove(&self, uid: &str) {
        self.calls.lock().unwrap().push(Call::Remove(uid.into()));
        self.pods.lock().unwrap().retain(|p| p.uid != uid);
    }
    fn reports(&self) -> Vec<PodReport> {
        self.pods
            .lock()
            .unwrap()
            .iter()
            .map(|p| report(&p.uid))
            .collect()
    }
    fn logs(&self, request: &StreamRequest) -> Result<Box<dyn Read + Send>> {
        let StreamRequest::Logs { pod_uid, .. } = request else {
            bail!("not a logs request")
        };
        let logs = self.logs.lock().unwrap();
        let Some((_, data)) = logs.iter().find(|(uid, _)| uid == pod_uid) else {
            bail!("pod {pod_uid} not found")
        };
        Ok(Box::new(std::io::Cursor::new(data.clone())))
    }
    fn exec(&self, request: &StreamRequest) -> Result<Exec> {
        let StreamRequest::Exec { command, stdin, .. } = request else {
            bail!("not an exec request")
        };
        if command.is_empty() {
            bail!("no command");
        }
        let mut child = Command::new(&command[0])
            .args(&command[1..])
            .stdin(if *stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Exec {
            stdin: child.stdin.take().map(|s| Box::new(s) as _),
            stdout: child.stdout.take().map(|s| Box::new(s) as _),
            stderr: child.stderr.take().map(|s| Box::new(s) as _),
            control: Box::new(ChildControl(child)),
        })
    }
}

struct ChildControl(Child);

impl ExecControl for ChildControl {
    fn resize(&self, _: u16, _: u16) -> Result<()> {
        Ok(())
    }
    fn wait(&mut self) -> Result<i32> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.0.wait()?;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }
}

/// A minimal pod.
pub fn pod(uid: &str) -> PodSpec {
    use flotilla_shared::pod::{DnsConfig, PodSecurity, RestartPolicy};
    PodSpec {
        uid: uid.into(),
        namespace: "default".into(),
        name: uid.into(),
        revision: 1,
        deleting: false,
        init_containers: vec![],
        containers: vec![],
        restart_policy: RestartPolicy::Always,
        termination_grace_period_seconds: 30,
        active_deadline_seconds: 0,
        host_network: false,
        host_pid: false,
        host_ipc: false,
        hostname: uid.into(),
        dns: DnsConfig::default(),
        volumes: vec![],
        security: PodSecurity::default(),
        labels: vec![],
        annotations: vec![],
    }
}
