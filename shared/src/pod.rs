//! The pod model the agent needs, as sent over the agent link.
//!
//! The controller's hub turns a Kubernetes Pod bound to a node into a [`PodSpec`]:
//! references are already resolved (environment from ConfigMaps and Secrets, the
//! files of ConfigMap and Secret volumes, quantities as integers), so the agent never
//! reads the API and can restart every pod from its local copy alone. The agent
//! answers with [`PodReport`]s that the hub turns back into the Pod's status.
//!
//! Postcard rules apply (see [`crate::wire`]): no `skip_serializing_if`, no untagged
//! enums, new fields only behind a new protocol version. Times are Unix seconds.

use serde::{Deserialize, Serialize};

/// Everything the agent needs to run one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    /// `metadata.uid`: the identity of this pod everywhere on the node.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Bumped by the hub whenever anything in this spec changes (the object's
    /// resourceVersion); the agent reports the revision it acted on.
    pub revision: u64,
    /// `metadata.deletionTimestamp` is set: stop the containers within
    /// [`PodSpec::termination_grace_period_seconds`], then report `terminated`.
    pub deleting: bool,
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    pub restart_policy: RestartPolicy,
    pub termination_grace_period_seconds: u64,
    /// `spec.activeDeadlineSeconds` (0: none).
    pub active_deadline_seconds: u64,
    /// Run in the node's network namespace instead of a pod sandbox.
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    /// The pod's hostname (`spec.hostname` or the pod name).
    pub hostname: String,
    pub dns: DnsConfig,
    pub volumes: Vec<Volume>,
    pub security: PodSecurity,
    /// Labels and annotations, for the downward API and for the agent's records.
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
}

/// `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// The resolv.conf the pod's containers get.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// Use the node's own /etc/resolv.conf (dnsPolicy Default, or hostNetwork with
    /// ClusterFirst as Kubernetes does).
    pub use_host: bool,
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<(String, String)>,
}

/// Pod-level security settings (`spec.securityContext`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSecurity {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: bool,
    pub fs_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    pub sysctls: Vec<(String, String)>,
}

/// One container of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    /// The image reference as written in the pod (the agent normalizes it).
    pub image: String,
    pub image_pull_policy: PullPolicy,
    /// `command` (replaces the image's entrypoint when not empty).
    pub command: Vec<String>,
    /// `args` (replaces the image's cmd when not empty).
    pub args: Vec<String>,
    pub working_dir: String,
    pub env: Vec<EnvVar>,
    pub ports: Vec<ContainerPort>,
    pub resources: Resources,
    pub volume_mounts: Vec<VolumeMount>,
    pub liveness_probe: Option<Probe>,
    pub readiness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
    pub security: ContainerSecurity,
    pub tty: bool,
    pub stdin: bool,
}

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// One environment variable, its value resolved by the hub where it can be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: EnvValue,
}

/// An environment value; the few only the node knows are named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvValue {
    Literal(String),
    /// `fieldRef: status.podIP`.
    PodIp,
    /// `fieldRef: status.podIPs`.
    PodIps,
    /// `fieldRef: status.hostIP`.
    HostIp,
}

/// `ports[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: String,
    pub container_port: u16,
    /// 0: none.
    pub host_port: u16,
    pub host_ip: String,
    pub protocol: Protocol,
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// Requests and limits as integers (0: unset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_request_millis: u64,
    pub cpu_limit_millis: u64,
    pub memory_request_bytes: u64,
    pub memory_limit_bytes: u64,
    pub ephemeral_storage_limit_bytes: u64,
}

/// `volumeMounts[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// Name of a [`Volume`] of the pod.
    pub name: String,
    pub mount_path: String,
    pub sub_path: String,
    pub read_only: bool,
}

/// Container-level security settings (`securityContext`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSecurity {
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: bool,
    pub read_only_root_filesystem: bool,
    /// `allowPrivilegeEscalation` (None: Kubernetes' default, allowed unless
    /// no capability asks otherwise).
    pub allow_privilege_escalation: Option<bool>,
    /// Capability names without the `CAP_` prefix, as Kubernetes writes them.
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
}

/// A probe (`livenessProbe`, `readinessProbe`, `startupProbe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay_seconds: u32,
    pub period_seconds: u32,
    pub timeout_seconds: u32,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeAction {
    Exec {
        command: Vec<String>,
    },
    /// Named ports are resolved by the hub.
    HttpGet {
        path: String,
        port: u16,
        host: String,
        https: bool,
        headers: Vec<(String, String)>,
    },
    TcpSocket {
        port: u16,
        host: String,
    },
}

/// A pod volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub source: VolumeSource,
}

/// Where a volume's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeSource {
    /// A directory that lives as long as the pod (tmpfs when `memory`).
    EmptyDir { memory: bool, size_limit_bytes: u64 },
    /// A path on the node; `kind` is `hostPath.type` ("" for no check).
    HostPath { path: String, kind: String },
    /// Files written by the agent: ConfigMap, Secret, downward API and projected
    /// volumes, resolved by the hub. Rewritten when their source changes.
    Files {
        files: Vec<VolumeFile>,
        /// `defaultMode`.
        default_mode: u32,
    },
}

/// One file of a [`VolumeSource::Files`] volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeFile {
    /// Relative path inside the volume (checked by the agent: no `..`, not absolute).
    pub path: String,
    pub data: Vec<u8>,
    /// 0: the volume's default mode.
    pub mode: u32,
}

/// What the agent reports about one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReport {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The [`PodSpec::revision`] this report reflects.
    pub revision: u64,
    pub phase: PodPhase,
    /// Short CamelCase reason and a human message for the pod (e.g. `Evicted`,
    /// `DeadlineExceeded`), empty when none.
    pub reason: String,
    pub message: String,
    pub pod_ip: String,
    pub host_ip: String,
    /// When the agent accepted the pod.
    pub start_time: i64,
    /// Init containers have all succeeded.
    pub initialized: bool,
    /// Every container is ready.
    pub containers_ready: bool,
    pub init_containers: Vec<ContainerReport>,
    pub containers: Vec<ContainerReport>,
    /// After deletion: every container has stopped and the pod's resources are gone;
    /// the hub may remove the object.
    pub terminated: bool,
}

/// `status.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// One entry of `containerStatuses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerReport {
    pub name: String,
    pub image: String,
    /// `sha256:…` of the image's manifest or config, once pulled.
    pub image_id: String,
    /// `flotilla://<id>`, once created.
    pub container_id: String,
    pub ready: bool,
    pub started: bool,
    pub restart_count: u32,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
}

/// A container's state, as Kubernetes names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: i64,
    },
    Terminated {
        exit_code: i32,
        /// 0: not killed by a signal.
        signal: i32,
        /// `Completed`, `Error`, `OOMKilled`, …
        reason: String,
        message: String,
        started_at: i64,
        finished_at: i64,
    },
}

/// What the agent reports about its node; the hub writes the Node object from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// `(type, address)`, e.g. `("InternalIP", "10.0.0.4")`, `("Hostname", "pi-04")`.
    pub addresses: Vec<(String, String)>,
    pub capacity: NodeResources,
    pub allocatable: NodeResources,
    pub info: NodeInfo,
    /// Labels the agent asks for at registration (`--node-label`), on top of the
    /// well-known ones the hub sets (hostname, os, arch).
    pub labels: Vec<(String, String)>,
    /// Taints the agent asks for at registration (`--node-taint`): key, value, effect.
    pub taints: Vec<(String, String, String)>,
    /// Condition status: `MemoryPressure`, `DiskPressure`, `PIDPressure` (true when
    /// under pressure); Ready is the link itself.
    pub memory_pressure: bool,
    pub disk_pressure: bool,
    pub pid_pressure: bool,
    /// Images present on the node: names and size in bytes.
    pub images: Vec<(Vec<String>, u64)>,
}

/// A node's resources as integers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
    pub pods: u64,
}

/// `status.nodeInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub machine_id: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
    pub operating_system: String,
    /// Go-style architecture: `amd64`, `arm64`, `arm`.
    pub architecture: String,
    pub agent_version: String,
    pub runtime_version: String,
}

/// Settings the controller gives a node once it is registered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// `spec.podCIDR` (empty until allocated).
    pub pod_cidr: String,
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub cluster_dns: String,
    pub cluster_domain: String,
}

/// A stream the controller opens on an agent for `kubectl logs` or `kubectl exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamRequest {
    /// Container logs on [`crate::wire::CHANNEL_STDOUT`].
    Logs {
        pod_uid: String,
        container: String,
        follow: bool,
        previous: bool,
        timestamps: bool,
        /// -1: all.
        tail_lines: i64,
        /// 0: from the start.
        since_seconds: i64,
        /// 0: no limit.
        limit_bytes: i64,
    },
    /// A process in a running container; channels as Kubernetes' remotecommand
    /// (stdin 0, stdout 1, stderr 2, error 3, resize 4).
    Exec {
        pod_uid: String,
        container: String,
        command: Vec<String>,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    },
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pod using every kind of field, for round-trip tests.
    pub fn sample_pod() -> PodSpec {
        let probe = Probe {
            action: ProbeAction::HttpGet {
                path: "/healthz".into(),
                port: 8080,
                host: String::new(),
                https: false,
                headers: vec![("X-A".into(), "b".into())],
            },
            initial_delay_seconds: 1,
            period_seconds: 10,
            timeout_seconds: 1,
            success_threshold: 1,
            failure_threshold: 3,
        };
        let container = Container {
            name: "web".into(),
            image: "docker.io/library/nginx:1.27".into(),
            image_pull_policy: PullPolicy::IfNotPresent,
            command: vec!["nginx".into()],
            args: vec!["-g".into(), "daemon off;".into()],
            working_dir: "/".into(),
            env: vec![
                EnvVar {
                    name: "A".into(),
                    value: EnvValue::Literal("1".into()),
                },
                EnvVar {
                    name: "IP".into(),
                    value: EnvValue::PodIp,
                },
            ],
            ports: vec![ContainerPort {
                name: "http".into(),
                container_port: 80,
                host_port: 0,
                host_ip: String::new(),
                protocol: Protocol::Tcp,
            }],
            resources: Resources {
                cpu_request_millis: 100,
                memory_limit_bytes: 64 << 20,
                ..Default::default()
            },
            volume_mounts: vec![VolumeMount {
                name: "conf".into(),
                mount_path: "/etc/nginx/conf.d".into(),
                sub_path: String::new(),
                read_only: true,
            }],
            liveness_probe: Some(probe.clone()),
            readiness_probe: Some(Probe {
                action: ProbeAction::Exec {
                    command: vec!["true".into()],
                },
                ..probe
            }),
            startup_probe: None,
            security: ContainerSecurity {
                run_as_user: Some(101),
                capabilities_drop: vec!["ALL".into()],
                ..Default::default()
            },
            tty: false,
            stdin: false,
        };
        PodSpec {
            uid: "u1".into(),
            namespace: "default".into(),
            name: "web-1".into(),
            revision: 42,
            deleting: false,
            init_containers: vec![],
            containers: vec![container],
            restart_policy: RestartPolicy::Always,
            termination_grace_period_seconds: 30,
            active_deadline_seconds: 0,
            host_network: false,
            host_pid: false,
            host_ipc: false,
            hostname: "web-1".into(),
            dns: DnsConfig {
                use_host: false,
                nameservers: vec!["10.43.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec![("ndots".into(), "5".into())],
            },
            volumes: vec![
                Volume {
                    name: "conf".into(),
                    source: VolumeSource::Files {
                        files: vec![VolumeFile {
                            path: "default.conf".into(),
                            data: b"server {}".to_vec(),
                            mode: 0,
                        }],
                        default_mode: 0o644,
                    },
                },
                Volume {
                    name: "scratch".into(),
                    source: VolumeSource::EmptyDir {
                        memory: true,
                        size_limit_bytes: 1 << 20,
                    },
                },
            ],
            security: PodSecurity {
                fs_group: Some(2000),
                ..Default::default()
            },
            labels: vec![("app".into(), "web".into())],
            annotations: vec![],
        }
    }

    /// A report with a restarted container.
    pub fn sample_report() -> PodReport {
        PodReport {
            uid: "u1".into(),
            namespace: "default".into(),
            name: "web-1".into(),
            revision: 42,
            phase: PodPhase::Running,
            reason: String::new(),
            message: String::new(),
            pod_ip: "10.42.3.7".into(),
            host_ip: "192.168.1.4".into(),
            start_time: 1_790_000_000,
            initialized: true,
            containers_ready: true,
            init_containers: vec![],
            containers: vec![ContainerReport {
                name: "web".into(),
                image: "docker.io/library/nginx:1.27".into(),
                image_id: "sha256:ab".into(),
                container_id: "flotilla://u1-web-1".into(),
                ready: true,
                started: true,
                restart_count: 1,
                state: ContainerState::Running {
                    started_at: 1_790_000_100,
                },
                last_state: Some(ContainerState::Terminated {
                    exit_code: 137,
                    signal: 9,
                    reason: "OOMKilled".into(),
                    message: String::new(),
                    started_at: 1_790_000_000,
                    finished_at: 1_790_000_099,
                }),
            }],
            terminated: false,
        }
    }

    /// A Raspberry Pi's report.
    pub fn sample_node_report() -> NodeReport {
        let res = NodeResources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            ephemeral_storage_bytes: 64 << 30,
            pods: 110,
        };
        NodeReport {
            addresses: vec![("InternalIP".into(), "192.168.1.4".into())],
            capacity: res.clone(),
            allocatable: res,
            info: NodeInfo {
                architecture: "arm64".into(),
                ..Default::default()
            },
            labels: vec![("site".into(), "north".into())],
            taints: vec![],
            memory_pressure: false,
            disk_pressure: false,
            pid_pressure: false,
            images: vec![(vec!["docker.io/library/busybox:latest".into()], 1 << 20)],
        }
    }
}
