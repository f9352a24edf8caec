//! Pod → [`PodSpec`]: everything a node needs to run a pod, with references resolved
//! here so the agent never reads the API and can restart pods from its own copy:
//! environment from ConfigMaps, Secrets and the downward API, the files of ConfigMap,
//! Secret, downward API and projected volumes, quantities as integers, named probe
//! ports as numbers, DNS settings from the pod's policy. A reference that cannot be
//! resolved is an error in the kubelet's words (`configmap "x" not found`); the
//! values only the node knows (pod and host IPs) stay named for the agent.

use flotilla_shared::pod::{
    self as wire, ContainerPort, ContainerSecurity, DnsConfig, EnvValue, EnvVar, PodSecurity,
    PodSpec, Probe, ProbeAction, Protocol, PullPolicy, Resources, RestartPolicy, Volume,
    VolumeFile, VolumeMount, VolumeSource,
};
use flotilla_shared::quantity::Quantity;
use flotilla_store::{Key, Store};
use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KQuantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, HashMap};

/// Cluster settings a pod spec depends on.
pub struct Cluster<'a> {
    pub dns: &'a str,
    pub domain: &'a str,
}

/// A resolved pod and the highest store revision of what it was resolved from.
pub struct Resolved {
    pub spec: PodSpec,
    pub revision: u64,
}

/// Reads referenced objects once per resolution and remembers their revisions.
struct Refs<'a> {
    store: &'a Store,
    ns: &'a str,
    revision: u64,
    configmaps: HashMap<String, Option<k8s::ConfigMap>>,
    secrets: HashMap<String, Option<k8s::Secret>>,
}

impl Refs<'_> {
    fn configmap(&mut self, name: &str) -> Result<Option<&k8s::ConfigMap>, String> {
        if !self.configmaps.contains_key(name) {
            let v = self.read::<k8s::ConfigMap>("configmaps", name)?;
            self.configmaps.insert(name.to_owned(), v);
        }
        Ok(self.configmaps[name].as_ref())
    }

    fn secret(&mut self, name: &str) -> Result<Option<&k8s::Secret>, String> {
        if !self.secrets.contains_key(name) {
            let v = self.read::<k8s::Secret>("secrets", name)?;
            self.secrets.insert(name.to_owned(), v);
        }
        Ok(self.secrets[name].as_ref())
    }

    fn read<T: serde::de::DeserializeOwned>(
        &mut self,
        plural: &str,
        name: &str,
    ) -> Result<Option<T>, String> {
        let o = self
            .store
            .get(&Key::new(plural, self.ns, name))
            .map_err(|e| format!("reading {plural} {name:?}: {e}"))?;
        let Some(o) = o else { return Ok(None) };
        self.revision = self.revision.max(o.revision);
        serde_json::from_slice(&o.value)
            .map(Some)
            .map_err(|e| format!("undecodable {plural} {name:?}: {e}"))
    }

    /// The data of a ConfigMap (text and binary), None when it does not exist.
    fn configmap_data(&mut self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        Ok(self.configmap(name)?.map(|cm| {
            let mut out: BTreeMap<String, Vec<u8>> = cm
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.iter().flatten() {
                out.insert(k.clone(), v.0.clone());
            }
            out
        }))
    }

    fn secret_data(&mut self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        Ok(self.secret(name)?.map(|s| {
            let mut out: BTreeMap<String, Vec<u8>> = s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            for (k, v) in s.string_data.iter().flatten() {
                out.insert(k.clone(), v.clone().into_bytes());
            }
            out
        }))
    }

    /// `kind` is "configmap" or "secret" (as the kubelet's messages say).
    fn data(
        &mut self,
        kind: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        if kind == "configmap" {
            self.configmap_data(name)
        } else {
            self.secret_data(name)
        }
    }
}

fn kind_title(kind: &str) -> &'static str {
    if kind == "configmap" {
        "ConfigMap"
    } else {
        "Secret"
    }
}

/// Resolves a pod stored at `revision` for its node.
pub fn resolve(
    store: &Store,
    pod: &k8s::Pod,
    revision: u64,
    cluster: &Cluster<'_>,
) -> Result<Resolved, String> {
    let md = &pod.metadata;
    let ns = md.namespace.as_deref().unwrap_or("default");
    let name = md.name.as_deref().unwrap_or("");
    let empty = k8s::PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    let mut refs = Refs {
        store,
        ns,
        revision,
        configmaps: HashMap::new(),
        secrets: HashMap::new(),
    };
    let mut init_containers = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        init_containers.push(container(pod, spec, c, &mut refs, store)?);
    }
    let mut containers = Vec::new();
    for c in &spec.containers {
        containers.push(container(pod, spec, c, &mut refs, store)?);
    }
    let mut volumes = Vec::new();
    for v in spec.volumes.iter().flatten() {
        volumes.push(volume(pod, spec, v, &mut refs, store)?);
    }
    let deleting = md.deletion_timestamp.is_some();
    let grace = if deleting {
        md.deletion_grace_period_seconds
    } else {
        None
    }
    .or(spec.termination_grace_period_seconds)
    .unwrap_or(30)
    .max(0) as u64;
    let sorted = |m: &Option<BTreeMap<String, String>>| -> Vec<(String, String)> {
        m.iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let out = PodSpec {
        uid: md.uid.clone().unwrap_or_default(),
        namespace: ns.to_owned(),
        name: name.to_owned(),
        revision: refs.revision,
        deleting,
        init_containers,
        containers,
        restart_policy: match spec.restart_policy.as_deref() {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        },
        termination_grace_period_seconds: grace,
        active_deadline_seconds: spec.active_deadline_seconds.unwrap_or(0).max(0) as u64,
        host_network: spec.host_network.unwrap_or(false),
        host_pid: spec.host_pid.unwrap_or(false),
        host_ipc: spec.host_ipc.unwrap_or(false),
        hostname: spec
            .hostname
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| name.to_owned()),
        dns: dns(ns, spec, cluster),
        volumes,
        security: pod_security(spec.security_context.as_ref()),
        labels: sorted(&md.labels),
        annotations: sorted(&md.annotations),
    };
    Ok(Resolved {
        revision: refs.revision,
        spec: out,
    })
}

fn dns(ns: &str, spec: &k8s::PodSpec, cluster: &Cluster<'_>) -> DnsConfig {
    let host_network = spec.host_network.unwrap_or(false);
    let mut out = match spec.dns_policy.as_deref().unwrap_or("ClusterFirst") {
        "Default" => DnsConfig {
            use_host: true,
            ..Default::default()
        },
        "None" => DnsConfig::default(),
        // ClusterFirst on the host network falls back to the node's resolver.
        "ClusterFirst" if host_network => DnsConfig {
            use_host: true,
            ..Default::default()
        },
        _ => DnsConfig {
            use_host: false,
            nameservers: vec![cluster.dns.to_owned()],
            searches: vec![
                format!("{ns}.svc.{}", cluster.domain),
                format!("svc.{}", cluster.domain),
                cluster.domain.to_owned(),
            ],
            options: vec![("ndots".to_owned(), "5".to_owned())],
        },
    };
    if let Some(c) = &spec.dns_config {
        out.nameservers
            .extend(c.nameservers.iter().flatten().cloned());
        out.searches.extend(c.searches.iter().flatten().cloned());
        for o in c.options.iter().flatten() {
            let name = o.name.clone().unwrap_or_default();
            let value = o.value.clone().unwrap_or_default();
            match out.options.iter_mut().find(|(n, _)| *n == name) {
                Some(e) => e.1 = value,
                None => out.options.push((name, value)),
            }
        }
    }
    out
}

fn pod_security(sc: Option<&k8s::PodSecurityContext>) -> PodSecurity {
    let Some(sc) = sc else {
        return PodSecurity::default();
    };
    PodSecurity {
        run_as_user: sc.run_as_user,
        run_as_group: sc.run_as_group,
        run_as_non_root: sc.run_as_non_root.unwrap_or(false),
        fs_group: sc.fs_group,
        supplemental_groups: sc.supplemental_groups.clone().unwrap_or_default(),
        sysctls: sc
            .sysctls
            .iter()
            .flatten()
            .map(|s| (s.name.clone(), s.value.clone()))
            .collect(),
    }
}

fn container(
    pod: &k8s::Pod,
    spec: &k8s::PodSpec,
    c: &k8s::Container,
    refs: &mut Refs<'_>,
    store: &Store,
) -> Result<wire::Container, String> {
    let image = c.image.clone().unwrap_or_default();
    let pull = match c.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("Never") => PullPolicy::Never,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        _ => {
            let last = image.rsplit('/').next().unwrap_or("");
            let tagged = last.contains(':') || image.contains('@');
            if !tagged || last.ends_with(":latest") {
                PullPolicy::Always
            } else {
                PullPolicy::IfNotPresent
            }
        }
    };
    let ports: Vec<ContainerPort> = c
        .ports
        .iter()
        .flatten()
        .map(|p| ContainerPort {
            name: p.name.clone().unwrap_or_default(),
            container_port: p.container_port.clamp(0, 65535) as u16,
            host_port: p.host_port.unwrap_or(0).clamp(0, 65535) as u16,
            host_ip: p.host_ip.clone().unwrap_or_default(),
            protocol: match p.protocol.as_deref() {
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                _ => Protocol::Tcp,
            },
        })
        .collect();
    let probe = |p: &Option<k8s::Probe>| -> Result<Option<Probe>, String> {
        p.as_ref().map(|p| probe(c, &ports, p)).transpose()
    };
    Ok(wire::Container {
        name: c.name.clone(),
        image,
        image_pull_policy: pull,
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        env: env(pod, spec, c, refs, store)?,
        resources: resources(c.resources.as_ref()),
        volume_mounts: c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| VolumeMount {
                name: m.name.clone(),
                mount_path: m.mount_path.clone(),
                sub_path: m.sub_path.clone().unwrap_or_default(),
                read_only: m.read_only.unwrap_or(false),
            })
            .collect(),
        liveness_probe: probe(&c.liveness_probe)?,
        readiness_probe: probe(&c.readiness_probe)?,
        startup_probe: probe(&c.startup_probe)?,
        ports,
        security: container_security(c.security_context.as_ref(), spec),
        tty: c.tty.unwrap_or(false),
        stdin: c.stdin.unwrap_or(false),
    })
}

fn container_security(sc: Option<&k8s::SecurityContext>, spec: &k8s::PodSpec) -> ContainerSecurity {
    let pod = spec.security_context.as_ref();
    let Some(sc) = sc else {
        return ContainerSecurity {
            run_as_user: pod.and_then(|p| p.run_as_user),
            run_as_group: pod.and_then(|p| p.run_as_group),
            run_as_non_root: pod.and_then(|p| p.run_as_non_root).unwrap_or(false),
            ..Default::default()
        };
    };
    let caps = sc.capabilities.as_ref();
    ContainerSecurity {
        privileged: sc.privileged.unwrap_or(false),
        run_as_user: sc.run_as_user.or(pod.and_then(|p| p.run_as_user)),
        run_as_group: sc.run_as_group.or(pod.and_then(|p| p.run_as_group)),
        run_as_non_root: sc
            .run_as_non_root
            .or(pod.and_then(|p| p.run_as_non_root))
            .unwrap_or(false),
        read_only_root_filesystem: sc.read_only_root_filesystem.unwrap_or(false),
        allow_privilege_escalation: sc.allow_privilege_escalation,
        capabilities_add: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        capabilities_drop: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
    }
}

fn quantity(q: Option<&KQuantity>) -> Option<Quantity> {
    q.and_then(|q| Quantity::parse(&q.0).ok())
}

fn resources(r: Option<&k8s::ResourceRequirements>) -> Resources {
    let get = |m: Option<&BTreeMap<String, KQuantity>>, k: &str| quantity(m.and_then(|m| m.get(k)));
    let limits = r.and_then(|r| r.limits.as_ref());
    let requests = r.and_then(|r| r.requests.as_ref());
    let millis = |q: Option<Quantity>| q.map(|q| q.millis().max(0) as u64).unwrap_or(0);
    let units = |q: Option<Quantity>| q.map(|q| q.units().max(0) as u64).unwrap_or(0);
    // Kubernetes defaults an unset request to the limit.
    Resources {
        cpu_request_millis: millis(get(requests, "cpu").or(get(limits, "cpu"))),
        cpu_limit_millis: millis(get(limits, "cpu")),
        memory_request_bytes: units(get(requests, "memory").or(get(limits, "memory"))),
        memory_limit_bytes: units(get(limits, "memory")),
        ephemeral_storage_limit_bytes: units(get(limits, "ephemeral-storage")),
    }
}

fn probe(c: &k8s::Container, ports: &[ContainerPort], p: &k8s::Probe) -> Result<Probe, String> {
    let port = |port: &IntOrString| -> Result<u16, String> {
        match port {
            IntOrString::Int(n) => {
                u16::try_from(*n).map_err(|_| format!("probe port {n} is out of range"))
            }
            IntOrString::String(name) => ports
                .iter()
                .find(|p| p.name == *name)
                .map(|p| p.container_port)
                .ok_or_else(|| {
                    format!(
                        "probe port {name:?} is not a port of container {:?}",
                        c.name
                    )
                }),
        }
    };
    let action = if let Some(e) = &p.exec {
        ProbeAction::Exec {
            command: e.command.clone().unwrap_or_default(),
        }
    } else if let Some(h) = &p.http_get {
        ProbeAction::HttpGet {
            path: h.path.clone().unwrap_or_else(|| "/".to_owned()),
            port: port(&h.port)?,
            host: h.host.clone().unwrap_or_default(),
            https: h.scheme.as_deref() == Some("HTTPS"),
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }
    } else if let Some(t) = &p.tcp_socket {
        ProbeAction::TcpSocket {
            port: port(&t.port)?,
            host: t.host.clone().unwrap_or_default(),
        }
    } else if p.grpc.is_some() {
        return Err(format!(
            "container {:?}: gRPC probes are not supported by flotilla",
            c.name
        ));
    } else {
        return Err(format!("container {:?}: a probe without an action", c.name));
    };
    let n = |v: Option<i32>, d: u32| v.map(|v| v.max(0) as u32).unwrap_or(d);
    Ok(Probe {
        action,
        initial_delay_seconds: n(p.initial_delay_seconds, 0),
        period_seconds: n(p.period_seconds, 10),
        timeout_seconds: n(p.timeout_seconds, 1),
        success_threshold: n(p.success_threshold, 1),
        failure_threshold: n(p.failure_threshold, 3),
    })
}

/// Whether `name` can be an environment variable (what the kubelet accepts from
/// envFrom: no `=`, not empty, printable ASCII).
fn env_name_ok(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && name.bytes().all(|b| (0x21..0x7f).contains(&b))
}

fn set_env(out: &mut Vec<EnvVar>, name: String, value: EnvValue) {
    match out.iter_mut().find(|e| e.name == name) {
        Some(e) => e.value = value,
        None => out.push(EnvVar { name, value }),
    }
}

fn env(
    pod: &k8s::Pod,
    spec: &k8s::PodSpec,
    c: &k8s::Container,
    refs: &mut Refs<'_>,
    store: &Store,
) -> Result<Vec<EnvVar>, String> {
    let ns = refs.ns.to_owned();
    let mut out = Vec::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = if let Some(r) = &from.config_map_ref {
            ("configmap", r.name.clone(), r.optional.unwrap_or(false))
        } else if let Some(r) = &from.secret_ref {
            ("secret", r.name.clone(), r.optional.unwrap_or(false))
        } else {
            continue;
        };
        match refs.data(kind, &name)? {
            Some(data) => {
                for (k, v) in data {
                    let key = format!("{prefix}{k}");
                    if env_name_ok(&key) {
                        set_env(
                            &mut out,
                            key,
                            EnvValue::Literal(String::from_utf8_lossy(&v).into_owned()),
                        );
                    }
                }
            }
            None if optional => {}
            None => return Err(format!("{kind} {name:?} not found")),
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => EnvValue::Literal(e.value.clone().unwrap_or_default()),
            Some(src) => {
                if let Some(f) = &src.field_ref {
                    match field_value(pod, spec, &f.field_path)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = &src.resource_field_ref {
                    EnvValue::Literal(resource_value(spec, c, r, store)?)
                } else if let Some(k) = &src.config_map_key_ref {
                    match key_value(refs, "configmap", &k.name, &k.key, k.optional)? {
                        Some(v) => EnvValue::Literal(v),
                        None => continue,
                    }
                } else if let Some(k) = &src.secret_key_ref {
                    match key_value(refs, "secret", &k.name, &k.key, k.optional)? {
                        Some(v) => EnvValue::Literal(v),
                        None => continue,
                    }
                } else {
                    continue;
                }
            }
        };
        set_env(&mut out, e.name.clone(), value);
    }
    let _ = ns;
    Ok(out)
}

fn key_value(
    refs: &mut Refs<'_>,
    kind: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
) -> Result<Option<String>, String> {
    let optional = optional.unwrap_or(false);
    let ns = refs.ns.to_owned();
    match refs.data(kind, name)? {
        Some(data) => match data.get(key) {
            Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
            None if optional => Ok(None),
            None => Err(format!(
                "couldn't find key {key} in {} {ns}/{name}",
                kind_title(kind)
            )),
        },
        None if optional => Ok(None),
        None => Err(format!("{kind} {name:?} not found")),
    }
}

/// A downward API field; None for an absent label or annotation.
fn field_value(
    pod: &k8s::Pod,
    spec: &k8s::PodSpec,
    path: &str,
) -> Result<Option<EnvValue>, String> {
    let md = &pod.metadata;
    let lit = |s: Option<&String>| Ok(Some(EnvValue::Literal(s.cloned().unwrap_or_default())));
    let indexed = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?.strip_prefix("['")?;
        rest.strip_suffix("']").map(str::to_owned)
    };
    if let Some(k) = indexed("metadata.labels") {
        return Ok(md
            .labels
            .as_ref()
            .and_then(|l| l.get(&k))
            .map(|v| EnvValue::Literal(v.clone())));
    }
    if let Some(k) = indexed("metadata.annotations") {
        return Ok(md
            .annotations
            .as_ref()
            .and_then(|l| l.get(&k))
            .map(|v| EnvValue::Literal(v.clone())));
    }
    match path {
        "metadata.name" => lit(md.name.as_ref()),
        "metadata.namespace" => lit(md.namespace.as_ref()),
        "metadata.uid" => lit(md.uid.as_ref()),
        "spec.nodeName" => lit(spec.node_name.as_ref()),
        "spec.serviceAccountName" => lit(spec.service_account_name.as_ref()),
        "status.podIP" => Ok(Some(EnvValue::PodIp)),
        "status.podIPs" => Ok(Some(EnvValue::PodIps)),
        "status.hostIP" | "status.hostIPs" => Ok(Some(EnvValue::HostIp)),
        other => Err(format!("unsupported fieldRef path {other:?}")),
    }
}

/// `resourceFieldRef`: a container's request or limit divided by the divisor (rounded
/// up); an unset limit is the node's allocatable amount, as the kubelet does.
fn resource_value(
    spec: &k8s::PodSpec,
    c: &k8s::Container,
    r: &k8s::ResourceFieldSelector,
    store: &Store,
) -> Result<String, String> {
    let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(n) => spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|x| x.name == n)
            .ok_or_else(|| format!("resourceFieldRef: no container {n:?}"))?,
        None => c,
    };
    let (kind, res) = r
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resourceFieldRef {:?}", r.resource))?;
    let reqs = target.resources.as_ref();
    let map = match kind {
        "limits" => reqs.and_then(|x| x.limits.as_ref()),
        "requests" => reqs.and_then(|x| x.requests.as_ref()),
        _ => return Err(format!("unsupported resourceFieldRef {:?}", r.resource)),
    };
    let mut value = quantity(map.and_then(|m| m.get(res)));
    if value.is_none() && kind == "limits" {
        let node = spec.node_name.as_deref().unwrap_or("");
        value = store
            .get(&Key::cluster("nodes", node))
            .ok()
            .flatten()
            .and_then(|o| serde_json::from_slice::<k8s::Node>(&o.value).ok())
            .and_then(|n| quantity(n.status?.allocatable?.get(res)));
    }
    let value = value.unwrap_or_else(|| Quantity::from_units(0));
    let divisor = quantity(r.divisor.as_ref()).unwrap_or_else(|| Quantity::from_units(1));
    let (v, d) = if res == "cpu" {
        (value.millis(), divisor.millis().max(1))
    } else {
        (value.units(), divisor.units().max(1))
    };
    Ok(((v + d - 1) / d).to_string())
}

fn mode(m: Option<i32>) -> u32 {
    m.map(|m| (m & 0o7777) as u32).unwrap_or(0)
}

/// Files of a ConfigMap or Secret projection: every key, or the listed items.
fn key_files(
    refs: &mut Refs<'_>,
    kind: &str,
    name: &str,
    items: Option<&Vec<k8s::KeyToPath>>,
    optional: bool,
    out: &mut Vec<VolumeFile>,
) -> Result<(), String> {
    let ns = refs.ns.to_owned();
    let Some(data) = refs.data(kind, name)? else {
        return if optional {
            Ok(())
        } else {
            Err(format!("{kind} {name:?} not found"))
        };
    };
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => out.push(VolumeFile {
                        path: it.path.clone(),
                        data: v.clone(),
                        mode: mode(it.mode),
                    }),
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "configure volume: couldn't find key {} in {} {ns}/{name}",
                            it.key,
                            kind_title(kind)
                        ));
                    }
                }
            }
        }
        _ => {
            for (k, v) in data {
                out.push(VolumeFile {
                    path: k,
                    data: v,
                    mode: 0,
                });
            }
        }
    }
    Ok(())
}

/// Files of a downward API projection (`key="value"` lines for labels and
/// annotations, as the kubelet writes them).
fn downward_files(
    pod: &k8s::Pod,
    spec: &k8s::PodSpec,
    items: &[k8s::DownwardAPIVolumeFile],
    store: &Store,
    out: &mut Vec<VolumeFile>,
) -> Result<(), String> {
    let md = &pod.metadata;
    let pairs = |m: &Option<BTreeMap<String, String>>| -> Vec<u8> {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}\n", serde_json::Value::String(v.clone())))
            .collect::<String>()
            .into_bytes()
    };
    for it in items {
        let data = if let Some(f) = &it.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => pairs(&md.labels),
                "metadata.annotations" => pairs(&md.annotations),
                path => match field_value(pod, spec, path)? {
                    Some(EnvValue::Literal(v)) => v.into_bytes(),
                    Some(_) => {
                        return Err(format!(
                            "downwardAPI volume: {path:?} is only available as an environment variable"
                        ));
                    }
                    None => Vec::new(),
                },
            }
        } else if let Some(r) = &it.resource_field_ref {
            let c = spec
                .containers
                .iter()
                .find(|c| Some(&c.name) == r.container_name.as_ref())
                .or(spec.containers.first())
                .ok_or("downwardAPI volume: no container")?;
            resource_value(spec, c, r, store)?.into_bytes()
        } else {
            continue;
        };
        out.push(VolumeFile {
            path: it.path.clone(),
            data,
            mode: mode(it.mode),
        });
    }
    Ok(())
}

fn volume(
    pod: &k8s::Pod,
    spec: &k8s::PodSpec,
    v: &k8s::Volume,
    refs: &mut Refs<'_>,
    store: &Store,
) -> Result<Volume, String> {
    let files = |files, default_mode: Option<i32>| VolumeSource::Files {
        files,
        default_mode: default_mode.map(|m| (m & 0o7777) as u32).unwrap_or(0o644),
    };
    let source = if let Some(e) = &v.empty_dir {
        VolumeSource::EmptyDir {
            memory: e.medium.as_deref() == Some("Memory"),
            size_limit_bytes: quantity(e.size_limit.as_ref())
                .map(|q| q.units().max(0) as u64)
                .unwrap_or(0),
        }
    } else if let Some(h) = &v.host_path {
        VolumeSource::HostPath {
            path: h.path.clone(),
            kind: h.type_.clone().unwrap_or_default(),
        }
    } else if let Some(cm) = &v.config_map {
        let mut out = Vec::new();
        key_files(
            refs,
            "configmap",
            &cm.name,
            cm.items.as_ref(),
            cm.optional.unwrap_or(false),
            &mut out,
        )?;
        files(out, cm.default_mode)
    } else if let Some(s) = &v.secret {
        let mut out = Vec::new();
        let name = s.secret_name.clone().unwrap_or_default();
        key_files(
            refs,
            "secret",
            &name,
            s.items.as_ref(),
            s.optional.unwrap_or(false),
            &mut out,
        )?;
        files(out, s.default_mode)
    } else if let Some(d) = &v.downward_api {
        let mut out = Vec::new();
        downward_files(
            pod,
            spec,
            d.items.as_deref().unwrap_or(&[]),
            store,
            &mut out,
        )?;
        files(out, d.default_mode)
    } else if let Some(p) = &v.projected {
        let mut out = Vec::new();
        for src in p.sources.iter().flatten() {
            if let Some(cm) = &src.config_map {
                key_files(
                    refs,
                    "configmap",
                    &cm.name,
                    cm.items.as_ref(),
                    cm.optional.unwrap_or(false),
                    &mut out,
                )?;
            } else if let Some(s) = &src.secret {
                key_files(
                    refs,
                    "secret",
                    &s.name,
                    s.items.as_ref(),
                    s.optional.unwrap_or(false),
                    &mut out,
                )?;
            } else if let Some(d) = &src.downward_api {
                downward_files(
                    pod,
                    spec,
                    d.items.as_deref().unwrap_or(&[]),
                    store,
                    &mut out,
                )?;
            }
            // Service account tokens and trust bundles are not issued by flotilla.
        }
        files(out, p.default_mode)
    } else {
        return Err(format!(
            "volume {:?}: only emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes are supported",
            v.name
        ));
    };
    Ok(Volume {
        name: v.name.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store(objects: &[(&str, serde_json::Value)]) -> Store {
        let s = Store::open_in_memory(Default::default()).unwrap();
        for (plural, v) in objects {
            let name = v["metadata"]["name"].as_str().unwrap();
            s.create_blocking(
                Key::new(*plural, "default", name),
                serde_json::to_vec(v).unwrap(),
            )
            .unwrap();
        }
        s
    }

    fn pod(spec: serde_json::Value) -> k8s::Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1",
                         "labels": {"app": "web", "tier": "front"}},
            "spec": spec,
        }))
        .unwrap()
    }

    const CLUSTER: Cluster<'static> = Cluster {
        dns: "10.43.0.10",
        domain: "cluster.local",
    };

    fn literal(spec: &PodSpec, name: &str) -> Option<String> {
        spec.containers[0]
            .env
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| match &e.value {
                EnvValue::Literal(v) => Some(v.clone()),
                _ => None,
            })
    }

    fn objects() -> Store {
        store(&[
            (
                "configmaps",
                json!({"metadata": {"name": "cm"}, "data": {"MODE": "fast", "conf.ini": "a=1"}}),
            ),
            // Secret data is base64 in the API ("s3cret").
            (
                "secrets",
                json!({"metadata": {"name": "sec"}, "data": {"PASSWORD": "czNjcmV0"}}),
            ),
        ])
    }

    #[test]
    fn environment_is_resolved_from_its_sources() {
        let s = objects();
        let p = pod(
            json!({"nodeName": "n1", "containers": [{"name": "c", "image": "busybox:1.36",
            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
            "env": [
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "PASSWORD"}}},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": true}}},
                {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                {"name": "CM_MODE", "value": "overridden"},
            ]}]}),
        );
        let r = resolve(&s, &p, 5, &CLUSTER).unwrap();
        let spec = &r.spec;
        assert!(r.revision >= 1, "the revision covers what was read");
        assert_eq!(literal(spec, "CM_MODE").as_deref(), Some("overridden"));
        assert_eq!(literal(spec, "PASSWORD").as_deref(), Some("s3cret"));
        assert_eq!(literal(spec, "TIER").as_deref(), Some("front"));
        assert_eq!(literal(spec, "NODE").as_deref(), Some("n1"));
        assert_eq!(literal(spec, "MEM").as_deref(), Some("64"));
        assert_eq!(literal(spec, "CPU").as_deref(), Some("500"));
        assert!(spec.containers[0].env.iter().all(|e| e.name != "OPT"));
        assert_eq!(literal(spec, "CM_conf.ini").as_deref(), Some("a=1"));
        assert!(
            spec.containers[0]
                .env
                .iter()
                .any(|e| e.name == "HOST_IP" && e.value == EnvValue::HostIp)
        );
        let res = &spec.containers[0].resources;
        assert_eq!((res.cpu_limit_millis, res.cpu_request_millis), (500, 500));
        assert_eq!(res.memory_limit_bytes, 64 << 20);
        assert_eq!(
            spec.containers[0].image_pull_policy,
            PullPolicy::IfNotPresent
        );
    }

    #[test]
    fn missing_references_fail_in_the_kubelets_words() {
        let s = objects();
        let missing = pod(json!({"containers": [{"name": "c", "image": "busybox",
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}]}]}));
        assert_eq!(
            resolve(&s, &missing, 1, &CLUSTER).err().unwrap(),
            "configmap \"absent\" not found"
        );
        let key = pod(json!({"containers": [{"name": "c", "image": "busybox",
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "nokey"}}}]}]}));
        assert_eq!(
            resolve(&s, &key, 1, &CLUSTER).err().unwrap(),
            "couldn't find key nokey in Secret default/sec"
        );
        let pvc = pod(json!({"containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "x"}}]}));
        assert!(
            resolve(&s, &pvc, 1, &CLUSTER)
                .err()
                .unwrap()
                .contains("volume \"data\"")
        );
    }

    #[test]
    fn volumes_carry_their_files() {
        let s = objects();
        let p = pod(
            json!({"containers": [{"name": "c", "image": "busybox:latest"}],
            "volumes": [
                {"name": "conf", "configMap": {"name": "cm", "items": [{"key": "conf.ini", "path": "app/conf.ini", "mode": 0o600}]}},
                {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o400}},
                {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                {"name": "mix", "projected": {"sources": [{"configMap": {"name": "cm", "items": [{"key": "MODE", "path": "mode"}]}},
                                                          {"serviceAccountToken": {"path": "token"}}]}},
                {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            ]}),
        );
        let spec = resolve(&s, &p, 1, &CLUSTER).unwrap().spec;
        assert_eq!(spec.containers[0].image_pull_policy, PullPolicy::Always);
        let files = |i: usize| match &spec.volumes[i].source {
            VolumeSource::Files {
                files,
                default_mode,
            } => (files.clone(), *default_mode),
            other => panic!("{other:?}"),
        };
        let (f, mode) = files(0);
        assert_eq!(
            (f[0].path.as_str(), f[0].data.as_slice(), f[0].mode, mode),
            ("app/conf.ini", &b"a=1"[..], 0o600, 0o644)
        );
        let (f, mode) = files(1);
        assert_eq!(
            (f[0].path.as_str(), f[0].data.as_slice(), mode),
            ("PASSWORD", &b"s3cret"[..], 0o400)
        );
        let (f, _) = files(2);
        assert_eq!(f[0].data, b"app=\"web\"\ntier=\"front\"\n");
        let (f, _) = files(3);
        assert_eq!(f.len(), 1, "service account tokens are not issued");
        assert_eq!(
            spec.volumes[4].source,
            VolumeSource::EmptyDir {
                memory: true,
                size_limit_bytes: 1 << 20
            }
        );
    }

    #[test]
    fn probes_dns_and_deletion() {
        let s = objects();
        let mut p = pod(
            json!({"hostNetwork": true, "terminationGracePeriodSeconds": 60,
            "containers": [{"name": "c", "image": "busybox",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 3},
                "livenessProbe": {"tcpSocket": {"port": 9000}}}]}),
        );
        let spec = resolve(&s, &p, 1, &CLUSTER).unwrap().spec;
        let ready = spec.containers[0].readiness_probe.as_ref().unwrap();
        assert!(
            matches!(&ready.action, ProbeAction::HttpGet { port: 8080, path, .. } if path == "/ready")
        );
        assert_eq!((ready.period_seconds, ready.failure_threshold), (3, 3));
        assert!(
            spec.dns.use_host,
            "ClusterFirst on the host network uses the node's resolver"
        );
        assert_eq!(spec.termination_grace_period_seconds, 60);
        assert!(!spec.deleting);

        p.spec.as_mut().unwrap().host_network = Some(false);
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2024-01-01T00:00:00Z".parse().unwrap(),
        ));
        p.metadata.deletion_grace_period_seconds = Some(5);
        let spec = resolve(&s, &p, 1, &CLUSTER).unwrap().spec;
        assert!(spec.deleting);
        assert_eq!(spec.termination_grace_period_seconds, 5);
        assert_eq!(spec.dns.nameservers, ["10.43.0.10"]);
        assert_eq!(spec.dns.searches[0], "default.svc.cluster.local");
        assert_eq!(spec.hostname, "web");
    }
}
