//! What the agent tells the controller about its machine: addresses, capacity
//! (CPUs, memory, ephemeral storage, 110 pods), system info (os-release, uname,
//! machine-id, boot_id), pressures and the images in the store.

use flotilla_shared::pod::{NodeInfo, NodeReport, NodeResources};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Pods a node accepts, as the kubelet's default `maxPods`.
pub const MAX_PODS: u64 = 110;

/// The kubelet's default hard eviction threshold `memory.available<100Mi`.
const MEMORY_PRESSURE_BYTES: u64 = 100 << 20;

/// Settings that shape the report.
#[derive(Clone, Debug)]
pub struct ReportConfig {
    pub node_name: String,
    /// `--node-ip`, else the address of the default-route interface.
    pub node_ip: Option<IpAddr>,
    pub labels: Vec<(String, String)>,
    pub taints: Vec<(String, String, String)>,
    /// The agent's data dir: its file system gives ephemeral-storage and the image store.
    pub data_dir: PathBuf,
}

/// Reads the machine's state now.
pub fn collect(config: &ReportConfig) -> NodeReport {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo_bytes(&meminfo, "MemTotal").unwrap_or(0);
    let available = meminfo_bytes(&meminfo, "MemAvailable").unwrap_or(memory);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let (disk_total, disk_free) = fs_space(&config.data_dir);
    let capacity = NodeResources {
        cpu_millis: cpus * 1000,
        memory_bytes: memory,
        ephemeral_storage_bytes: disk_total,
        pods: MAX_PODS,
    };
    let mut addresses = Vec::new();
    if let Some(ip) = config.node_ip.or_else(default_route_ip) {
        addresses.push(("InternalIP".to_string(), ip.to_string()));
    }
    addresses.push(("Hostname".to_string(), config.node_name.clone()));
    NodeReport {
        addresses,
        allocatable: capacity.clone(),
        capacity,
        info: node_info(),
        labels: config.labels.clone(),
        taints: config.taints.clone(),
        memory_pressure: memory > 0 && available < MEMORY_PRESSURE_BYTES,
        // The kubelet's `nodefs.available<10%`.
        disk_pressure: disk_total > 0 && disk_free < disk_total / 10,
        pid_pressure: pid_pressure(),
        images: images(&config.data_dir),
    }
}

/// A `/proc/meminfo` field in bytes.
fn meminfo_bytes(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// Total and available bytes of the file system holding `path` (or its nearest
/// existing parent).
fn fs_space(path: &Path) -> (u64, u64) {
    let mut p = Some(path);
    while let Some(dir) = p {
        if let Ok(st) = rustix::fs::statvfs(dir) {
            return (st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize);
        }
        p = dir.parent();
    }
    (0, 0)
}

/// The IPv4 address of the interface holding the default route, from
/// `/proc/net/route`.
fn default_route_ip() -> Option<IpAddr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = default_route_iface(&routes)?;
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        if a.interface_name != iface {
            return None;
        }
        let v4 = a.address?.as_sockaddr_in()?.ip();
        Some(IpAddr::V4(v4))
    })
}

/// The interface of the first default route (destination and mask 0) in a
/// `/proc/net/route` table.
fn default_route_iface(routes: &str) -> Option<String> {
    routes.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

fn node_info() -> NodeInfo {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let uname = rustix::system::uname();
    NodeInfo {
        machine_id: read("/etc/machine-id"),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        kernel_version: uname.release().to_string_lossy().into_owned(),
        os_image: os_image(&read("/etc/os-release")),
        operating_system: "linux".to_string(),
        architecture: flotilla_images::platform::Platform::host().architecture,
        agent_version: format!("v{}", flotilla_shared::VERSION),
        runtime_version: format!("flotilla://{}", flotilla_shared::VERSION),
    }
}

/// `PRETTY_NAME` of an os-release file, as the kubelet reports `osImage`.
fn os_image(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".to_string())
}

/// More than 90 % of `pid_max` in use.
fn pid_pressure() -> bool {
    let max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let used = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            let running_total = s.split_whitespace().nth(3)?;
            running_total.split_once('/')?.1.parse::<u64>().ok()
        })
        .unwrap_or(0);
    max > 0 && used * 10 > max * 9
}

/// Images in the store: all names of one image (by config digest) with its size.
fn images(data_dir: &Path) -> Vec<(Vec<String>, u64)> {
    let Ok(store) = flotilla_images::store::ImageStore::open(data_dir) else {
        return Vec::new();
    };
    let mut by_id: BTreeMap<String, (Vec<String>, u64)> = BTreeMap::new();
    for image in store.list().unwrap_or_default() {
        let entry = by_id
            .entry(image.config.to_string())
            .or_insert_with(|| (Vec::new(), image.size));
        entry.0.push(image.name);
    }
    by_id.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_routes_and_os_release() {
        let meminfo = "MemTotal:        8026140 kB\nMemFree:  1 kB\nMemAvailable:    4000000 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemTotal"), Some(8_026_140 * 1024));
        assert_eq!(
            meminfo_bytes(meminfo, "MemAvailable"),
            Some(4_000_000 * 1024)
        );
        assert_eq!(meminfo_bytes(meminfo, "Swap"), None);
        let routes = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_iface(routes).as_deref(), Some("wlan0"));
        assert_eq!(default_route_iface("Iface\n"), None);
        assert_eq!(
            os_image("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n"),
            "Debian GNU/Linux 13 (trixie)"
        );
    }

    #[test]
    fn report_of_this_machine() {
        let data = tempfile::tempdir().unwrap();
        let report = collect(&ReportConfig {
            node_name: "n1".into(),
            node_ip: Some("192.0.2.7".parse().unwrap()),
            labels: vec![("site".into(), "north".into())],
            taints: vec![],
            data_dir: data.path().to_path_buf(),
        });
        assert_eq!(
            report.addresses,
            vec![
                ("InternalIP".to_string(), "192.0.2.7".to_string()),
                ("Hostname".to_string(), "n1".to_string())
            ]
        );
        assert!(report.capacity.cpu_millis >= 1000);
        assert!(report.capacity.memory_bytes > 64 << 20);
        assert!(report.capacity.ephemeral_storage_bytes > 0);
        assert_eq!(report.capacity.pods, 110);
        assert_eq!(report.info.operating_system, "linux");
        assert!(!report.info.kernel_version.is_empty());
        assert_eq!(report.info.boot_id.len(), 36);
        assert!(report.images.is_empty());
    }
}
