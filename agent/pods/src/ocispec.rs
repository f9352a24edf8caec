//! The OCI runtime config of one container attempt, from the image config
//! (entrypoint, cmd, env, workdir, user) and the pod's container spec (command, args,
//! env, workingDir, resources, securityContext), joined to the pod's sandbox
//! namespaces, with the pod's /etc files and volumes mounted.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use flotilla_images::manifest::RunConfig;
use flotilla_shared::pod::{Container, EnvValue, PodSpec};
use serde_json::{Value, json};

/// Capabilities a container gets by default (containerd's and Docker's set).
const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to build one container's config.
pub struct Inputs<'a> {
    pub pod: &'a PodSpec,
    pub container: &'a Container,
    pub image: &'a RunConfig,
    /// The mounted root filesystem (to resolve user names).
    pub rootfs: &'a Path,
    pub pod_dir: &'a Path,
    /// (destination, host file) of /etc/hosts and friends.
    pub etc: &'a [(String, PathBuf)],
    /// (host source, destination, read-only) of each volume mount.
    pub volume_mounts: &'a [(PathBuf, String, bool)],
    pub cgroups_path: &'a str,
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
}

/// The program to run: Kubernetes' command/args rules over the image's
/// entrypoint/cmd.
pub fn argv(c: &Container, image: &RunConfig) -> Result<Vec<String>> {
    let entry = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    let argv = match (c.command.is_empty(), c.args.is_empty()) {
        (false, _) => [c.command.clone(), c.args.clone()].concat(),
        (true, false) => [entry, c.args.clone()].concat(),
        (true, true) => [entry, cmd].concat(),
    };
    if argv.is_empty() || argv[0].is_empty() {
        bail!(
            "no command to run: the image has no entrypoint or cmd and the container sets no command"
        );
    }
    Ok(argv)
}

/// The environment: the image's, then the container's (overriding), HOSTNAME, PATH.
pub fn env(inp: &Inputs<'_>) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |k: &str, v: String, env: &mut Vec<(String, String)>| {
        if let Some(e) = env.iter_mut().find(|(n, _)| n == k) {
            e.1 = v;
        } else {
            env.push((k.to_string(), v));
        }
    };
    for e in inp.image.env.iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            set(k, v.to_string(), &mut env);
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        set("PATH", DEFAULT_PATH[5..].to_string(), &mut env);
    }
    let hostname = if inp.pod.host_network {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        inp.pod.hostname.clone()
    };
    set("HOSTNAME", hostname, &mut env);
    for e in &inp.container.env {
        let v = match &e.value {
            EnvValue::Literal(s) => s.clone(),
            EnvValue::PodIp | EnvValue::PodIps => inp.pod_ip.to_string(),
            EnvValue::HostIp => inp.host_ip.to_string(),
        };
        set(&e.name, v, &mut env);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// uid, gid and additional gids.
fn user(inp: &Inputs<'_>) -> Result<(u32, u32, Vec<u32>)> {
    let sec = &inp.container.security;
    let pod = &inp.pod.security;
    let image_user = inp.image.user.clone().unwrap_or_default();
    let (img_u, img_g) = match image_user.split_once(':') {
        Some((u, g)) => (u.to_string(), Some(g.to_string())),
        None => (image_user.clone(), None),
    };
    let passwd = std::fs::read_to_string(inp.rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(inp.rootfs.join("etc/group")).unwrap_or_default();
    let lookup = |table: &str, name: &str, field: usize| -> Option<u32> {
        table.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name))
                .then(|| f.get(field).and_then(|v| v.parse().ok()))
                .flatten()
        })
    };
    let mut uid = 0u32;
    let mut gid: Option<u32> = None;
    if !img_u.is_empty() {
        uid = match img_u.parse() {
            Ok(n) => n,
            Err(_) => lookup(&passwd, &img_u, 2).with_context(|| {
                format!("image user {img_u:?} is not in the image's /etc/passwd")
            })?,
        };
        if img_g.is_none() {
            gid = passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.get(2).and_then(|v| v.parse::<u32>().ok()) == Some(uid))
                    .then(|| f.get(3).and_then(|v| v.parse().ok()))
                    .flatten()
            });
        }
    }
    if let Some(g) = img_g {
        gid = Some(match g.parse() {
            Ok(n) => n,
            Err(_) => lookup(&group, &g, 2)
                .with_context(|| format!("image group {g:?} is not in the image's /etc/group"))?,
        });
    }
    if let Some(u) = sec.run_as_user.or(pod.run_as_user) {
        uid = u32::try_from(u).context("runAsUser out of range")?;
    }
    if let Some(g) = sec.run_as_group.or(pod.run_as_group) {
        gid = Some(u32::try_from(g).context("runAsGroup out of range")?);
    }
    if (sec.run_as_non_root || pod.run_as_non_root) && uid == 0 {
        bail!("container has runAsNonRoot and image will run as root");
    }
    let mut extra: Vec<u32> = pod
        .supplemental_groups
        .iter()
        .filter_map(|g| u32::try_from(*g).ok())
        .collect();
    if let Some(fs) = pod.fs_group.and_then(|g| u32::try_from(g).ok()) {
        extra.push(fs);
    }
    Ok((uid, gid.unwrap_or(0), extra))
}

/// Every capability this runtime knows, for privileged containers.
fn all_caps() -> Vec<String> {
    let mut v: Vec<String> = caps::all()
        .into_iter()
        .map(|c| c.to_string())
        .filter(|c| serde_json::from_value::<oci_spec::runtime::Capability>(json!(c)).is_ok())
        .collect();
    v.sort();
    v
}

fn capabilities(c: &Container) -> Vec<String> {
    if c.security.privileged {
        return all_caps();
    }
    let norm = |s: &str| {
        let up = s.to_ascii_uppercase();
        if up.starts_with("CAP_") {
            up
        } else {
            format!("CAP_{up}")
        }
    };
    let drop_all = c
        .security
        .capabilities_drop
        .iter()
        .any(|d| d.eq_ignore_ascii_case("ALL"));
    let mut set: Vec<String> = if drop_all {
        Vec::new()
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    let drops: Vec<String> = c
        .security
        .capabilities_drop
        .iter()
        .map(|s| norm(s))
        .collect();
    set.retain(|c| !drops.contains(c));
    for a in &c.security.capabilities_add {
        if a.eq_ignore_ascii_case("ALL") {
            return all_caps();
        }
        let a = norm(a);
        if !set.contains(&a) {
            set.push(a);
        }
    }
    set
}

/// The container's `config.json` as an oci-spec value.
pub fn build(inp: &Inputs<'_>) -> Result<oci_spec::runtime::Spec> {
    let c = inp.container;
    let privileged = c.security.privileged;
    let args = argv(c, inp.image)?;
    let (uid, gid, extra) = user(inp)?;
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else {
        inp.image
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    };
    if !cwd.starts_with('/') {
        bail!("workingDir {cwd:?} is not absolute");
    }
    let caps = capabilities(c);
    let no_new_privs = c.security.allow_privilege_escalation == Some(false);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": if privileged { json!(["nosuid", "noexec", "nodev"]) }
                          else { json!(["nosuid", "noexec", "nodev", "ro"]) }}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for (dest, src) in inp.etc {
        mounts.push(json!({"destination": dest, "type": "bind",
                           "source": src, "options": ["rbind", "rprivate"]}));
    }
    for (src, dest, ro) in inp.volume_mounts {
        let mut opts = vec!["rbind", "rprivate"];
        if *ro {
            opts.push("ro");
        }
        mounts.push(json!({"destination": dest, "type": "bind", "source": src, "options": opts}));
    }
    let mut namespaces = vec![json!({"type": "mount"})];
    if !inp.pod.host_pid {
        namespaces.push(json!({"type": "pid"}));
    }
    for kind in crate::sandbox::wanted(inp.pod) {
        let ty = match kind {
            "net" => "network",
            other => other,
        };
        let path = crate::sandbox::ns_path(inp.pod_dir, kind);
        namespaces.push(json!({"type": ty, "path": path}));
    }
    let r = &c.resources;
    let mut resources = serde_json::Map::new();
    resources.insert(
        "devices".into(),
        if privileged {
            json!([{"allow": true, "access": "rwm"}])
        } else {
            json!([{"allow": false, "access": "rwm"}])
        },
    );
    if r.memory_limit_bytes > 0 {
        resources.insert("memory".into(), json!({"limit": r.memory_limit_bytes}));
    }
    let mut cpu = serde_json::Map::new();
    if r.cpu_limit_millis > 0 {
        cpu.insert("period".into(), json!(100_000u64));
        cpu.insert("quota".into(), json!((r.cpu_limit_millis * 100).max(1000)));
    }
    let shares = if r.cpu_request_millis > 0 {
        (r.cpu_request_millis * 1024 / 1000).max(2)
    } else {
        2
    };
    cpu.insert("shares".into(), json!(shares));
    resources.insert("cpu".into(), Value::Object(cpu));
    let sysctl: serde_json::Map<String, Value> = inp
        .pod
        .security
        .sysctls
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let mut linux = json!({
        "cgroupsPath": inp.cgroups_path,
        "resources": resources,
        "namespaces": namespaces,
        "sysctl": sysctl,
    });
    if !privileged {
        linux["maskedPaths"] = json!([
            "/proc/acpi",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware"
        ]);
        linux["readonlyPaths"] = json!([
            "/proc/asound",
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]);
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": c.tty,
            "user": {"uid": uid, "gid": gid, "additionalGids": extra},
            "args": args,
            "env": env(inp),
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps
            },
            "noNewPrivileges": no_new_privs
        },
        "root": {"path": inp.rootfs, "readonly": c.security.read_only_root_filesystem},
        "mounts": mounts,
        "linux": linux,
    });
    if !inp.pod.host_network {
        spec["hostname"] = json!(inp.pod.hostname);
    }
    serde_json::from_value(spec).context("building the container's OCI config")
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_shared::pod::*;

    fn container() -> Container {
        Container {
            name: "c".into(),
            image: "busybox".into(),
            image_pull_policy: PullPolicy::IfNotPresent,
            command: vec![],
            args: vec![],
            working_dir: String::new(),
            env: vec![],
            ports: vec![],
            resources: Resources::default(),
            volume_mounts: vec![],
            liveness_probe: None,
            readiness_probe: None,
            startup_probe: None,
            security: ContainerSecurity::default(),
            tty: false,
            stdin: false,
        }
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let image = RunConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            ..Default::default()
        };
        let mut c = container();
        assert_eq!(argv(&c, &image).unwrap(), ["/entry", "default"]);
        c.args = vec!["x".into()];
        assert_eq!(argv(&c, &image).unwrap(), ["/entry", "x"]);
        c.command = vec!["/bin/sh".into()];
        assert_eq!(argv(&c, &image).unwrap(), ["/bin/sh", "x"]);
        c.args.clear();
        assert_eq!(argv(&c, &image).unwrap(), ["/bin/sh"]);
        let e = argv(&container(), &RunConfig::default()).unwrap_err();
        assert!(e.to_string().contains("no command"), "{e}");
    }

    #[test]
    fn capabilities_add_and_drop() {
        let mut c = container();
        c.security.capabilities_drop = vec!["ALL".into()];
        c.security.capabilities_add = vec!["NET_ADMIN".into()];
        assert_eq!(capabilities(&c), ["CAP_NET_ADMIN"]);
        let mut c = container();
        c.security.capabilities_drop = vec!["KILL".into()];
        let caps = capabilities(&c);
        assert!(!caps.contains(&"CAP_KILL".to_string()));
        assert!(caps.contains(&"CAP_CHOWN".to_string()));
        c.security.privileged = true;
        assert!(capabilities(&c).contains(&"CAP_SYS_ADMIN".to_string()));
    }
}
