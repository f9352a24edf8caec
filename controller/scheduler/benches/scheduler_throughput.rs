//! Scheduler throughput: 1,000 fake nodes, 10,000 pending pods with mixed requests,
//! node selectors, required and preferred node affinity, tolerations and owners.
//! Schedules every pod (decision + assume) into a fresh cluster, RUNS times, and prints
//! the median pods/s with its ratio to the 5,000 pods/s target (kube-scheduler manages
//! hundreds per second), per-decision latency, CPU time and peak RSS.
//! Run: `cargo bench -p flotilla-scheduler --bench scheduler_throughput [-- NODES PODS RUNS]`
//! (or `benches/scheduler.sh`).

use std::time::Instant;

use flotilla_scheduler::Cluster;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

/// A small deterministic generator (xorshift), so every run sees the same cluster.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn make_node(i: usize, rng: &mut Rng) -> Node {
    let name = format!("node-{i:04}");
    let cpu = [4, 8, 16][rng.below(3) as usize];
    let mem = [8, 16, 32, 64][rng.below(4) as usize];
    let mut taints = vec![];
    if rng.below(100) < 5 {
        taints.push(json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}));
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": format!("zone-{}", rng.below(10)),
            "disk": if rng.below(2) == 0 { "ssd" } else { "hdd" },
            "arch": if rng.below(4) == 0 { "arm64" } else { "amd64" },
        }},
        "spec": {"taints": taints, "unschedulable": rng.below(100) < 2},
        "status": {
            "allocatable": {"cpu": cpu.to_string(), "memory": format!("{mem}Gi"), "pods": "110",
                            "ephemeral-storage": "100Gi"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))
    .unwrap()
}

fn make_pod(i: usize, rng: &mut Rng) -> Pod {
    let owner = i % 100;
    let cpu = [100, 250, 500, 1000][(owner % 4 + rng.below(2) as usize) % 4];
    let mem = [64, 128, 256, 512, 1024][owner % 5];
    let mut spec = json!({"containers": [{"name": "app", "image": "busybox",
        "resources": {"requests": {"cpu": format!("{cpu}m"), "memory": format!("{mem}Mi")}}}]});
    match owner % 10 {
        0..=2 => spec["nodeSelector"] = json!({"disk": "ssd"}),
        3 => {
            spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-1", "zone-2", "zone-3"]}]}]}}})
        }
        4 => {
            spec["affinity"] = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 20, "preference": {"matchExpressions": [{"key": "arch", "operator": "In", "values": ["arm64"]}]}}]}})
        }
        5 => {
            spec["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}])
        }
        6 => spec["nodeSelector"] = json!({"arch": "amd64", "disk": "hdd"}),
        _ => {}
    }
    serde_json::from_value(json!({
        "metadata": {"name": format!("pod-{i:05}"), "namespace": "bench", "labels": {"app": format!("app-{owner}")},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("rs-{owner}"),
                                 "uid": format!("uid-{owner}"), "controller": true}]},
        "spec": spec
    }))
    .unwrap()
}

/// (user+system CPU seconds, peak RSS in KiB) of this process, from /proc.
fn usage() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the ")": state is field 0, utime 11, stime 12 (clock ticks, 100 per second).
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

/// Current resident set in KiB.
fn rss_now() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let nodes_n = args.first().copied().unwrap_or(1000);
    let pods_n = args.get(1).copied().unwrap_or(10_000);
    let mut rng = Rng(0x5eed_f107_111a);
    let nodes: Vec<Node> = (0..nodes_n).map(|i| make_node(i, &mut rng)).collect();
    let pods: Vec<Pod> = (0..pods_n).map(|i| make_pod(i, &mut rng)).collect();
    let runs = args.get(2).copied().unwrap_or(5).max(1);

    let rss_inputs = rss_now();
    let mut state_kib = 0;
    let (cpu_before, _) = usage();
    let wall_start = Instant::now();
    let mut rates = Vec::new();
    let mut latencies = Vec::with_capacity(pods.len() * runs);
    let mut bound = 0usize;
    for _ in 0..runs {
        let mut cluster = Cluster::from_objects(&nodes, &[]);
        bound = 0;
        let start = Instant::now();
        for pod in &pods {
            let t = Instant::now();
            if let Ok(node) = cluster.schedule(pod) {
                cluster.assume(pod, &node);
                bound += 1;
            }
            latencies.push(t.elapsed());
        }
        rates.push(pods_n as f64 / start.elapsed().as_secs_f64());
        state_kib = state_kib.max(rss_now().saturating_sub(rss_inputs));
    }
    let wall = wall_start.elapsed().as_secs_f64();
    let (cpu_after, rss_kib) = usage();
    rates.sort_by(f64::total_cmp);
    latencies.sort();
    let median_rate = rates[rates.len() / 2];
    println!(
        "scheduler: {nodes_n} nodes, {pods_n} pending pods, {runs} runs; {bound} bound, {} unschedulable per run",
        pods_n - bound
    );
    println!(
        "  pods/s: median {median_rate:.0} (min {:.0}, max {:.0}); ratio to the 5000 pods/s target: {:.2}",
        rates[0],
        rates[rates.len() - 1],
        median_rate / 5000.0
    );
    println!(
        "  pods per CPU-second: {:.0} (the rate on an idle core; wall-clock rates suffer when the machine is shared)",
        (pods_n * runs) as f64 / (cpu_after - cpu_before)
    );
    println!(
        "  per decision: median {:?}, p99 {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
    println!(
        "  scheduler state for {nodes_n} nodes and {bound} bound pods: about {:.1} MiB of RSS",
        state_kib as f64 / 1024.0
    );
    println!(
        "  CPU {:.2} s over {wall:.2} s wall ({:.0}% of one core), peak RSS {:.1} MiB (includes the 10,000 pod objects)",
        cpu_after - cpu_before,
        100.0 * (cpu_after - cpu_before) / wall,
        rss_kib as f64 / 1024.0
    );
}
