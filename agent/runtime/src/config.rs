//! Reads a bundle's `config.json` and checks it: everything a container needs is
//! validated here, before any process or cgroup exists, and each error names the field.

use crate::capabilities::CapabilityPlan;
use crate::error::{Error, Result};
use crate::mounts::MountPlan;
use crate::namespaces::NamespacePlan;
use crate::seccomp::Filter;
use oci_spec::runtime::{PosixRlimitType, Process, Spec};
use std::path::{Path, PathBuf};

/// Reads and parses `<bundle>/config.json`, naming the JSON path of any bad field.
pub fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let data = std::fs::read(&path).map_err(|e| {
        Error::io(
            format!(
                "cannot read {} (is --bundle the right directory?)",
                path.display()
            ),
            e,
        )
    })?;
    parse_spec(&data)
}

/// Parses config.json content.
pub fn parse_spec(data: &[u8]) -> Result<Spec> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "config.json".to_string()
        } else {
            path
        };
        Error::config(field, e.into_inner().to_string())
    })
}

/// The process part of a plan: what to run and as whom.
#[derive(Clone, Debug)]
pub struct ProcessPlan {
    /// argv; `args[0]` is looked up in the container's PATH when it has no slash.
    pub args: Vec<String>,
    /// Environment as `KEY=value`.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: PathBuf,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// umask, if set.
    pub umask: Option<u32>,
    /// Resource limits as (resource, soft, hard).
    pub rlimits: Vec<(i32, u64, u64)>,
    /// Capability sets, if the spec gives them (None keeps the runtime's own).
    pub capabilities: Option<CapabilityPlan>,
    /// `no_new_privs`.
    pub no_new_privileges: bool,
    /// oom_score_adj.
    pub oom_score_adj: Option<i32>,
    /// Allocate a pseudo-terminal.
    pub terminal: bool,
}

/// A validated container configuration, with everything precomputed for the init process.
pub struct Plan {
    /// Container id.
    pub id: String,
    /// The spec as read.
    pub spec: Spec,
    /// Absolute bundle directory.
    pub bundle: PathBuf,
    /// Absolute rootfs directory.
    pub rootfs: PathBuf,
    /// Make the root read-only.
    pub readonly_root: bool,
    /// Namespaces to create or join.
    pub namespaces: NamespacePlan,
    /// Mounts, in order.
    pub mounts: Vec<MountPlan>,
    /// Propagation applied to `/` of the new mount namespace.
    pub rootfs_propagation: nix::mount::MsFlags,
    /// The process.
    pub process: ProcessPlan,
    /// Hostname (needs a uts namespace).
    pub hostname: Option<String>,
    /// Domain name (needs a uts namespace).
    pub domainname: Option<String>,
    /// Compiled seccomp filter.
    pub seccomp: Option<Filter>,
    /// Paths masked inside the container.
    pub masked_paths: Vec<PathBuf>,
    /// Paths made read-only inside the container.
    pub readonly_paths: Vec<PathBuf>,
    /// sysctl settings, written under /proc/sys.
    pub sysctl: Vec<(String, String)>,
    /// cgroups path (relative to each hierarchy's root).
    pub cgroups_path: PathBuf,
    /// Device nodes to create besides the default ones.
    pub devices: Vec<oci_spec::runtime::LinuxDevice>,
}

/// Checks the id: runc's rules (no slashes, no leading dot, printable).
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

impl Plan {
    /// Validates `spec` for container `id` in `bundle`.
    pub fn new(id: &str, bundle: &Path, spec: Spec) -> Result<Plan> {
        validate_id(id)?;
        let bundle = std::path::absolute(bundle)
            .map_err(|e| Error::io(format!("bundle {}", bundle.display()), e))?;
        if !spec.version().starts_with("1.") {
            return Err(Error::config(
                "ociVersion",
                format!(
                    "unsupported version {:?}: this runtime implements 1.x",
                    spec.version()
                ),
            ));
        }
        crate::hooks::validate(&spec)?;
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| Error::config("root", "is missing"))?;
        if root.path().as_os_str().is_empty() {
            return Err(Error::config("root.path", "is empty"));
        }
        let rootfs = bundle.join(root.path());
        match std::fs::metadata(&rootfs) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::config(
                    "root.path",
                    format!("{} is not a directory", rootfs.display()),
                ));
            }
            Err(e) => {
                return Err(Error::config(
                    "root.path",
                    format!("rootfs {}: {e}", rootfs.display()),
                ));
            }
        }
        let rootfs = rootfs
            .canonicalize()
            .map_err(|e| Error::io(format!("rootfs {}", rootfs.display()), e))?;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| Error::config("process", "is missing"))?;
        let process = process_plan(process, "process")?;

        let linux = spec.linux().clone().unwrap_or_default();
        if linux.intel_rdt().is_some() {
            return Err(Error::config("linux.intelRdt", "is not supported"));
        }
        if linux.personality().is_some() {
            return Err(Error::config("linux.personality", "is not supported"));
        }
        if linux.time_offsets().is_some() {
            return Err(Error::config("linux.timeOffsets", "is not supported"));
        }
        if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(Error::config("linux.netDevices", "is not supported"));
        }
        let namespaces = NamespacePlan::new(linux.namespaces().as_deref().unwrap_or(&[]))?;
        if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        {
            return Err(Error::config(
                "linux.uidMappings",
                "user namespaces are not supported",
            ));
        }
        let uts = namespaces.has(nix::sched::CloneFlags::CLONE_NEWUTS);
        for (field, v) in [
            ("hostname", spec.hostname()),
            ("domainname", spec.domainname()),
        ] {
            if v.as_ref().is_some_and(|h| !h.is_empty()) && !uts {
                return Err(Error::config(
                    field,
                    "needs a new uts namespace (add {\"type\": \"uts\"} to linux.namespaces)",
                ));
            }
        }
        let mut mounts = Vec::new();
        for (i, m) in spec.mounts().iter().flatten().enumerate() {
            mounts.push(MountPlan::new(m, &format!("mounts[{i}]"), &bundle)?);
        }
        let rootfs_propagation = match linux.rootfs_propagation().as_deref() {
            None | Some("") => nix::mount::MsFlags::MS_SLAVE | nix::mount::MsFlags::MS_REC,
            Some(p) => crate::mounts::propagation(p).ok_or_else(|| {
                Error::config(
                    "linux.rootfsPropagation",
                    format!("unknown propagation {p:?}"),
                )
            })?,
        };
        let seccomp = linux.seccomp().as_ref().map(Filter::compile).transpose()?;
        let abs = |v: &Option<Vec<String>>, field: &str| -> Result<Vec<PathBuf>> {
            v.iter()
                .flatten()
                .enumerate()
                .map(|(i, p)| {
                    if p.starts_with('/') {
                        Ok(PathBuf::from(p))
                    } else {
                        Err(Error::config(
                            format!("{field}[{i}]"),
                            format!("{p:?} is not an absolute path"),
                        ))
                    }
                })
                .collect()
        };
        let masked_paths = abs(linux.masked_paths(), "linux.maskedPaths")?;
        let readonly_paths = abs(linux.readonly_paths(), "linux.readonlyPaths")?;
        let mut sysctl: Vec<(String, String)> = linux
            .sysctl()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        sysctl.sort();
        for (k, _) in &sysctl {
            if k.is_empty() || k.contains("..") || k.starts_with('/') {
                return Err(Error::config(
                    format!("linux.sysctl.{k}"),
                    "is not a valid sysctl name",
                ));
            }
        }
        let cgroups_path = match linux.cgroups_path() {
            Some(p) if !p.as_os_str().is_empty() => {
                if p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(Error::config("linux.cgroupsPath", "must not contain '..'"));
                }
                p.clone()
            }
            _ => PathBuf::from(format!("/flotilla/{id}")),
        };
        let devices = linux.devices().clone().unwrap_or_default();
        for (i, d) in devices.iter().enumerate() {
            if !d.path().is_absolute() {
                return Err(Error::config(
                    format!("linux.devices[{i}].path"),
                    "must be absolute",
                ));
            }
        }
        Ok(Plan {
            id: id.to_string(),
            readonly_root: root.readonly().unwrap_or(false),
            hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
            domainname: spec.domainname().clone().filter(|h| !h.is_empty()),
            bundle,
            rootfs,
            namespaces,
            mounts,
            rootfs_propagation,
            process,
            seccomp,
            masked_paths,
            readonly_paths,
            sysctl,
            cgroups_path,
            devices,
            spec,
        })
    }
}

/// Validates a process section (the container's, or one given to exec).
pub fn process_plan(p: &Process, field: &str) -> Result<ProcessPlan> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(Error::config(
            format!("{field}.args"),
            "must name a program to run",
        ));
    }
    if !p.cwd().is_absolute() {
        return Err(Error::config(
            format!("{field}.cwd"),
            format!("{:?} is not an absolute path", p.cwd()),
        ));
    }
    let env = p.env().clone().unwrap_or_default();
    for (i, e) in env.iter().enumerate() {
        if !e.contains('=') || e.starts_with('=') || e.contains('\0') {
            return Err(Error::config(
                format!("{field}.env[{i}]"),
                format!("{e:?} is not KEY=value"),
            ));
        }
    }
    let mut rlimits = Vec::new();
    let mut seen = Vec::new();
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        if seen.contains(&r.typ()) {
            return Err(Error::config(
                format!("{field}.rlimits[{i}].type"),
                format!("{:?} is given twice", r.typ()),
            ));
        }
        if r.soft() > r.hard() {
            return Err(Error::config(
                format!("{field}.rlimits[{i}]"),
                format!("soft limit {} is above hard limit {}", r.soft(), r.hard()),
            ));
        }
        seen.push(r.typ());
        rlimits.push((rlimit_resource(r.typ()), r.soft(), r.hard()));
    }
    let capabilities = p
        .capabilities()
        .as_ref()
        .map(|c| CapabilityPlan::new(c, &format!("{field}.capabilities")))
        .transpose()?;
    let user = p.user();
    Ok(ProcessPlan {
        args,
        env,
        cwd: p.cwd().clone(),
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        rlimits,
        capabilities,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        oom_score_adj: p.oom_score_adj(),
        terminal: p.terminal().unwrap_or(false),
    })
}

fn rlimit_resource(t: PosixRlimitType) -> i32 {
    use PosixRlimitType::*;
    (match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        std::fs::write(d.path().join("config.json"), config).unwrap();
        d
    }

    const BASE: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"user":{"uid":0,"gid":0},"args":["/bin/true"],"cwd":"/"},
        "linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#;

    fn plan_err(config: &str) -> String {
        let d = bundle_with(config);
        let spec = match load_spec(d.path()) {
            Ok(s) => s,
            Err(e) => return e.to_string(),
        };
        match Plan::new("c1", d.path(), spec) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn valid_config_passes() {
        assert_eq!(plan_err(BASE), "ok");
    }

    #[test]
    fn bad_enum_value_names_its_path() {
        let e = plan_err(&BASE.replace(r#"{"type":"pid"}"#, r#"{"type":"pidd"}"#));
        assert!(e.contains("linux.namespaces[0].type"), "{e}");
        assert!(e.contains("pidd"), "{e}");
    }

    #[test]
    fn missing_args_and_relative_cwd_are_named() {
        let e = plan_err(&BASE.replace(r#"["/bin/true"]"#, "[]"));
        assert!(e.contains("process.args"), "{e}");
        let e = plan_err(&BASE.replace(r#""cwd":"/""#, r#""cwd":"tmp""#));
        assert!(e.contains("process.cwd"), "{e}");
    }

    #[test]
    fn missing_rootfs_is_reported() {
        let e = plan_err(&BASE.replace(r#""path":"rootfs""#, r#""path":"nope""#));
        assert!(e.contains("root.path") && e.contains("nope"), "{e}");
    }

    #[test]
    fn hostname_without_uts_namespace_is_rejected() {
        let e = plan_err(&BASE.replace(r#""root""#, r#""hostname":"h","root""#));
        assert!(e.contains("hostname") && e.contains("uts"), "{e}");
    }

    #[test]
    fn unknown_capability_is_named() {
        let e = plan_err(&BASE.replace(
            r#""cwd":"/""#,
            r#""cwd":"/","capabilities":{"bounding":["CAP_KILL","CAP_FLY"]}"#,
        ));
        assert!(
            e.contains("process.capabilities.bounding[1]") && e.contains("CAP_FLY"),
            "{e}"
        );
    }

    #[test]
    fn ids_follow_runc_rules() {
        assert!(validate_id("web-1_a.b").is_ok());
        for bad in ["", "a/b", ".hidden", "sp ace", "../x"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
