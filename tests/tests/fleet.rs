//! End-to-end tests of the scheduler and controllers with real agents: one real
//! controller and real `flotilla-agent run` nodes, each in its own network namespace on
//! a test LAN with its own data dir, cgroup parent, node name and labels, running
//! busybox pods from the air-gap archive, driven by the real kubectl. One cluster is
//! shared by the checks, in order:
//! 1. placement: a Deployment spreads one pod per node and every pod runs (as the
//!    agents report it, and each node's runtime holds its container); `kubectl exec`
//!    reaches each; a nodeSelector on an agent's `--node-label` places pods only there,
//!    with their cgroups below that agent's `--cgroup-root`; a second agent started on
//!    a node's data dir is refused; a pod asking for more cpu than any node has gets
//!    kube-scheduler's message;
//! 2. a DaemonSet runs a pod on every agent;
//! 3. node loss: an agent killed with SIGKILL (its containers keep running) turns its
//!    Node Unknown with the unreachable NoExecute taint; its deployment pod is evicted
//!    and recreated elsewhere, its daemon pod stays but turns not Ready; started again,
//!    the node is Ready, the taint goes, the agent stops the evicted pod's container and
//!    adopts the daemon pod's without a restart;
//! 4. a rollout restart replaces every pod while staying available;
//! 5. an agent that joins later gets the DaemonSet's pod;
//! 6. a Job with parallelism 2 and completions 4 completes with real containers;
//! 7. the controller restarts: every agent reconnects, the nodes stay Ready and every
//!    pod keeps its container;
//!
//! then deleting everything empties every node's runtime and pod cgroups, and the
//! host's network namespace is unchanged.
//!
//! On a cluster of its own, a partition: an agent whose LAN link goes down (inside its
//! own namespace) turns Unknown within the grace period and one renewal period of the
//! cut, its Lease not renewed after the cut; when the link returns the node is Ready
//! again, untainted, with its pod's container untouched.
//!
//! On another, a node name taken twice: a second machine joining with an agent's node
//! name (a cloned SD card) is refused with a message naming the node and how to free
//! it, and the first keeps its Node; after `kubectl delete node` a new machine takes the
//! name, and the first one's session is refused from then on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_tests::cluster::{
    Cluster, IMAGE, container_id, has_taint, node_ready, pod_node, pod_running,
};
use flotilla_tests::require_root;
use flotilla_tests::sandbox::root_netns_snapshot;
use serde_json::Value;

/// A node silent this long turns Unknown; the hub renews Leases every 10 s.
const GRACE: &str = "--node-monitor-grace-period=20s";
/// Pods leave an unreachable node this long after it turns Unknown.
const TOLERATION: &str = "--default-unreachable-toleration-seconds=2";

/// A container that runs until told to stop, and stops at once on SIGTERM.
const SERVE: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

fn deployment(name: &str, replicas: u32, selector: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 5
      nodeSelector: {{{selector}}}
      containers:
      - name: main
        image: {IMAGE}
        imagePullPolicy: Never
        command: ["sh", "-c", {SERVE:?}]
        resources:
          requests: {{cpu: 100m, memory: 16Mi}}
"#
    )
}

/// Pods of `app=<app>` that are not being deleted.
fn live_pods(cluster: &Cluster, app: &str) -> Vec<Value> {
    cluster
        .items(&["get", "pods", "-l", &format!("app={app}")])
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

/// Pod counts per node.
fn per_node(pods: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for p in pods {
        *counts.entry(pod_node(p).to_string()).or_default() += 1;
    }
    counts
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

/// True when every pod runs and the agent of its node holds its container.
fn running_on_their_agents(cluster: &Cluster, pods: &[Value]) -> bool {
    pods.iter().all(|p| {
        pod_running(p)
            && container_id(p).is_some_and(|id| {
                cluster
                    .agents()
                    .iter()
                    .find(|a| a.name() == pod_node(p))
                    .is_some_and(|a| a.containers().iter().any(|c| c == id))
            })
    })
}

#[test]
fn a_fleet_of_real_agents_runs_places_and_heals_workloads() {
    require_root!();
    let root_before = root_netns_snapshot();
    let mut cluster = Cluster::start("fleet", &[GRACE, TOLERATION]);
    cluster.add_agent("fleet-a", &["site=north", "fleet.example/rack=r1"]);
    cluster.add_agent("fleet-b", &["site=south", "fleet.example/rack=r2"]);
    cluster.add_agent("fleet-c", &["site=south", "fleet.example/rack=r3"]);
    let three: BTreeSet<String> = ["fleet-a", "fleet-b", "fleet-c"].map(String::from).into();
    cluster.until("three Ready nodes", Duration::from_secs(60), || {
        let nodes = cluster.items(&["get", "nodes"]);
        nodes.len() == 3 && nodes.iter().all(|n| node_ready(n) == "True")
    });
    let log = cluster.agent("fleet-a").output();
    assert!(
        !log.contains('\x1b'),
        "no colour codes in a log file:\n{log}"
    );
    let a = cluster.json(&["get", "node", "fleet-a"]).unwrap();
    assert_eq!(a["metadata"]["labels"]["site"], "north");
    assert_eq!(a["metadata"]["labels"]["fleet.example/rack"], "r1");
    assert_eq!(
        a["status"]["addresses"][0],
        serde_json::json!({"type": "InternalIP", "address": "10.99.0.11"})
    );

    let started = std::time::Instant::now();
    placement(&cluster, &three);
    eprintln!("placement checked at {:?}", started.elapsed());
    daemonset(&cluster);
    eprintln!("daemonset checked at {:?}", started.elapsed());
    node_loss(&mut cluster, &three);
    eprintln!("node loss checked at {:?}", started.elapsed());
    rollout_restart(&cluster);
    eprintln!("rollout checked at {:?}", started.elapsed());
    node_joins(&mut cluster);
    eprintln!("node join checked at {:?}", started.elapsed());
    job(&cluster);
    eprintln!("job checked at {:?}", started.elapsed());
    controller_restart(&mut cluster);
    eprintln!("controller restart checked at {:?}", started.elapsed());

    // Deleting the workloads stops every container on every node.
    cluster.ok(
        &[
            "delete",
            "deployment/web",
            "deployment/north",
            "daemonset/probe",
            "job/batch",
            "--wait=false",
        ],
        None,
    );
    cluster.until(
        "every node's runtime empty",
        Duration::from_secs(60),
        || cluster.agents().iter().all(|a| a.containers().is_empty()),
    );
    cluster.until("no pods left", Duration::from_secs(30), || {
        cluster.items(&["get", "pods"]).is_empty()
    });
    cluster.until("no pod cgroup left", Duration::from_secs(30), || {
        cluster
            .agents()
            .iter()
            .all(|a| cluster.pod_cgroups(a.name()).is_empty())
    });
    drop(cluster);
    assert_eq!(
        root_netns_snapshot(),
        root_before,
        "the host's network namespace is unchanged"
    );
}

/// Check 1: spreading, nodeSelector, and the unschedulable message.
fn placement(cluster: &Cluster, three: &BTreeSet<String>) {
    cluster.apply(&deployment("web", 3, ""));
    cluster.until(
        "web's 3 pods Running, one per node",
        Duration::from_secs(90),
        || {
            let pods = live_pods(cluster, "web");
            pods.len() == 3
                && per_node(&pods).keys().cloned().collect::<BTreeSet<_>>() == *three
                && running_on_their_agents(cluster, &pods)
        },
    );
    cluster.ok(
        &["rollout", "status", "deployment/web", "--timeout=60s"],
        None,
    );
    // kubectl exec reaches each pod through its own node's link.
    for p in live_pods(cluster, "web") {
        let out = cluster.ok(&["exec", name(&p), "--", "cat", "/etc/hostname"], None);
        assert_eq!(out.trim(), name(&p), "exec on {}", pod_node(&p));
    }

    // Only fleet-a carries site=north.
    cluster.apply(&deployment("north", 2, "site: north"));
    cluster.until(
        "north's 2 pods Running on fleet-a",
        Duration::from_secs(90),
        || {
            let pods = live_pods(cluster, "north");
            pods.len() == 2 && running_on_their_agents(cluster, &pods)
        },
    );
    let north = live_pods(cluster, "north");
    assert!(
        north.iter().all(|p| pod_node(p) == "fleet-a"),
        "nodeSelector site=north: {:?}",
        per_node(&north)
    );
    // A second agent started on fleet-a's data dir stops at once and says why; the
    // first keeps its pods.
    let mut second = cluster.start_second_agent_process("fleet-a");
    let status = second.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(!status.success());
    assert!(
        second
            .stderr()
            .contains("another flotilla-agent is already running with the data dir"),
        "{}",
        second.output()
    );
    assert!(
        !second.stderr().contains("air-gap"),
        "it touched nothing first"
    );
    // Each pod has its cgroup below its own agent's --cgroup-root.
    let cgroups = cluster.pod_cgroups("fleet-a");
    for p in &north {
        let uid = p["metadata"]["uid"].as_str().unwrap();
        assert!(
            cgroups.iter().any(|c| c.ends_with(format!("pod-{uid}"))),
            "pod-{uid} among fleet-a's cgroups {cgroups:?}"
        );
    }

    // No node has a thousand CPUs.
    cluster.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: huge
spec:
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    resources:
      requests: {{cpu: "1000"}}
"#
    ));
    // kube-scheduler's wording, its preemption sentence included.
    let message = "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are \
                   available: 3 Preemption is not helpful for scheduling..";
    cluster.until("huge to be unschedulable", Duration::from_secs(30), || {
        cluster.json(&["get", "pod", "huge"]).is_some_and(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["type"] == "PodScheduled"
                        && c["status"] == "False"
                        && c["reason"] == "Unschedulable"
                        && c["message"] == message
                })
        })
    });
    let huge = cluster.json(&["get", "pod", "huge"]).unwrap();
    assert_eq!(pod_node(&huge), "", "huge stays unbound");
    let events = cluster.ok(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=huge,reason=FailedScheduling",
            "-o",
            "jsonpath={.items[*].message}",
        ],
        None,
    );
    assert!(
        events.contains(message),
        "FailedScheduling events: {events}"
    );
    cluster.ok(&["delete", "pod", "huge", "--wait=true"], None);
}

/// Check 2: a DaemonSet runs a pod on every agent.
fn daemonset(cluster: &Cluster) {
    cluster.apply(&format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: probe
spec:
  selector:
    matchLabels: {{app: probe}}
  template:
    metadata:
      labels: {{app: probe}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: main
        image: {IMAGE}
        imagePullPolicy: Never
        command: ["sh", "-c", {SERVE:?}]
"#
    ));
    cluster.until(
        "a Running probe pod on each of 3 nodes",
        Duration::from_secs(90),
        || daemon_on_every_node(cluster, 3),
    );
}

/// One Running `probe` pod on each of `n` nodes, held by that node's agent.
fn daemon_on_every_node(cluster: &Cluster, n: usize) -> bool {
    let pods = live_pods(cluster, "probe");
    let counts = per_node(&pods);
    pods.len() == n
        && counts.len() == n
        && counts.keys().all(|k| !k.is_empty())
        && running_on_their_agents(cluster, &pods)
}

/// Check 3: an agent killed by SIGKILL, its pods evicted or kept, then the agent back.
fn node_loss(cluster: &mut Cluster, three: &BTreeSet<String>) {
    let lost = "fleet-c";
    let victim = live_pods(cluster, "web")
        .into_iter()
        .find(|p| pod_node(p) == lost)
        .expect("a web pod on fleet-c");
    let victim_name = name(&victim).to_string();
    let victim_container = container_id(&victim).unwrap().to_string();
    // The DaemonSet's pod there tolerates the unreachable taint: it stays.
    let daemon = live_pods(cluster, "probe")
        .into_iter()
        .find(|p| pod_node(p) == lost)
        .expect("a probe pod on fleet-c");
    let daemon_name = name(&daemon).to_string();
    let daemon_container = container_id(&daemon).unwrap().to_string();

    cluster.agent_mut(lost).kill();
    let state = cluster
        .agent(lost)
        .container_state(&victim_container)
        .expect("the runtime still holds the container");
    assert_eq!(state["status"], "running", "it outlives its agent: {state}");
    let pid = state["pid"].as_i64().expect("a pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    cluster.until(
        "fleet-c Unknown with the unreachable NoExecute taint",
        Duration::from_secs(60),
        || {
            cluster.json(&["get", "node", lost]).is_some_and(|n| {
                node_ready(&n) == "Unknown" && has_taint(&n, UNREACHABLE, "NoExecute")
            })
        },
    );
    for other in three.iter().filter(|n| *n != lost) {
        let n = cluster.json(&["get", "node", other]).unwrap();
        assert_eq!(node_ready(&n), "True", "{other} stays Ready");
        assert!(
            !has_taint(&n, UNREACHABLE, "NoExecute"),
            "{other} untainted"
        );
    }
    cluster.until(
        "the daemon pod on fleet-c marked not Ready",
        Duration::from_secs(30),
        || {
            cluster
                .json(&["get", "pod", &daemon_name])
                .is_some_and(|p| pod_condition(&p, "Ready") == "False")
        },
    );
    cluster.until(
        "web's pod recreated and Running on another node",
        Duration::from_secs(60),
        || {
            let pods = live_pods(cluster, "web");
            pods.len() == 3
                && pods
                    .iter()
                    .all(|p| pod_node(p) != lost && name(p) != victim_name)
                && running_on_their_agents(cluster, &pods)
        },
    );

    // Back again: Ready, untainted, and the evicted pod's container is stopped.
    cluster.restart_agent(lost);
    let log = cluster.agent(lost).output();
    assert!(
        log.contains("pod manager started from local state node=fleet-c pods=2"),
        "the agent restores the web and probe pods from local state, and says so:\n{log}"
    );
    cluster.until(
        "fleet-c Ready again without the taint",
        Duration::from_secs(60),
        || {
            cluster.json(&["get", "node", lost]).is_some_and(|n| {
                node_ready(&n) == "True" && !has_taint(&n, UNREACHABLE, "NoExecute")
            })
        },
    );
    cluster.until(
        "the evicted pod's container gone from fleet-c",
        Duration::from_secs(60),
        || !cluster.agent(lost).containers().contains(&victim_container),
    );
    assert!(
        cluster
            .agent(lost)
            .container_state(&victim_container)
            .is_none()
    );
    let line = format!("pod stopped and removed pod=default/{victim_name}");
    cluster.until(
        "the agent to say it removed the evicted pod",
        Duration::from_secs(30),
        || cluster.agent(lost).output().contains(&line),
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "its process has ended"
    );
    cluster.until(
        "the evicted pod gone from the API",
        Duration::from_secs(30),
        || cluster.json(&["get", "pod", &victim_name]).is_none(),
    );
    let pods = live_pods(cluster, "web");
    assert_eq!(pods.len(), 3);
    assert!(running_on_their_agents(cluster, &pods));
    // The daemon pod stayed through the outage: the returning agent adopts its
    // container (no restart) and reports it Ready again.
    cluster.until(
        "the daemon pod on fleet-c Ready again",
        Duration::from_secs(30),
        || {
            cluster
                .json(&["get", "pod", &daemon_name])
                .is_some_and(|p| pod_condition(&p, "Ready") == "True" && pod_running(&p))
        },
    );
    let daemon = cluster.json(&["get", "pod", &daemon_name]).unwrap();
    assert_eq!(container_id(&daemon), Some(daemon_container.as_str()));
    assert_eq!(
        daemon["status"]["containerStatuses"][0]["restartCount"], 0,
        "{}",
        daemon["status"]
    );
    assert!(running_on_their_agents(cluster, &[daemon]));
}

/// The status of a pod's condition `type_` ("" when it has none).
fn pod_condition(pod: &Value, type_: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

/// Check 4: a rollout restart replaces every web pod on the real agents without ever
/// having fewer than 3 available (maxUnavailable rounds down to 0), and every old
/// container is stopped and gone from its node's runtime.
fn rollout_restart(cluster: &Cluster) {
    let old: Vec<(String, String)> = live_pods(cluster, "web")
        .iter()
        .map(|p| {
            (
                pod_node(p).to_string(),
                container_id(p).unwrap().to_string(),
            )
        })
        .collect();
    let generation = cluster.json(&["get", "deployment", "web"]).unwrap()["metadata"]["generation"]
        .as_i64()
        .unwrap();
    cluster.ok(&["rollout", "restart", "deployment/web"], None);
    let mut least_available = i64::MAX;
    cluster.until("the rollout to finish", Duration::from_secs(90), || {
        let Some(d) = cluster.json(&["get", "deployment", "web"]) else {
            return false;
        };
        let status = &d["status"];
        let count = |field: &str| status[field].as_i64().unwrap_or(0);
        least_available = least_available.min(count("availableReplicas"));
        status["observedGeneration"].as_i64() > Some(generation)
            && count("updatedReplicas") == 3
            && count("availableReplicas") == 3
            && count("replicas") == 3
    });
    assert_eq!(least_available, 3, "web stayed fully available");
    cluster.until(
        "new web pods Running and every old container gone",
        Duration::from_secs(60),
        || {
            let pods = live_pods(cluster, "web");
            pods.len() == 3
                && running_on_their_agents(cluster, &pods)
                && pods.iter().all(|p| {
                    old.iter()
                        .all(|(_, id)| container_id(p) != Some(id.as_str()))
                })
                && old
                    .iter()
                    .all(|(node, id)| !cluster.agent(node).containers().contains(id))
        },
    );
}

/// Check 5: an agent that joins later gets the DaemonSet's pod.
fn node_joins(cluster: &mut Cluster) {
    cluster.add_agent("fleet-d", &["site=east"]);
    cluster.until(
        "a Running probe pod on the 4th node too",
        Duration::from_secs(90),
        || daemon_on_every_node(cluster, 4),
    );
    let pods = live_pods(cluster, "probe");
    assert!(pods.iter().any(|p| pod_node(p) == "fleet-d"));
    cluster.until("the DaemonSet's status", Duration::from_secs(30), || {
        cluster
            .json(&["get", "daemonset", "probe"])
            .is_some_and(|d| d["status"]["numberReady"] == 4)
    });
    let ds = cluster.json(&["get", "daemonset", "probe"]).unwrap();
    assert_eq!(ds["status"]["desiredNumberScheduled"], 4, "{ds}");
}

/// Check 6: a Job with parallelism 2 and completions 4.
fn job(cluster: &Cluster) {
    cluster.apply(&format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: batch
spec:
  parallelism: 2
  completions: 4
  backoffLimit: 0
  template:
    metadata:
      labels: {{app: batch}}
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: {IMAGE}
        imagePullPolicy: Never
        command: ["sh", "-c", "sleep 1; echo done"]
"#
    ));
    let mut most_active = 0;
    cluster.until("the job to complete", Duration::from_secs(120), || {
        let Some(job) = cluster.json(&["get", "job", "batch"]) else {
            return false;
        };
        most_active = most_active.max(job["status"]["active"].as_u64().unwrap_or(0));
        job["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Complete" && c["status"] == "True")
    });
    let job = cluster.json(&["get", "job", "batch"]).unwrap();
    assert_eq!(job["status"]["succeeded"], 4, "{}", job["status"]);
    assert!(job["status"]["failed"].as_u64().unwrap_or(0) == 0);
    assert!(most_active <= 2, "parallelism 2, saw {most_active} active");
    let pods = cluster.items(&["get", "pods", "-l", "app=batch"]);
    assert_eq!(pods.len(), 4, "one pod per completion");
    for p in &pods {
        assert_eq!(p["status"]["phase"], "Succeeded", "{}", p["status"]);
        let terminated = &p["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(terminated["exitCode"], 0, "{terminated}");
        assert_eq!(terminated["reason"], "Completed", "{terminated}");
    }
    assert_eq!(cluster.ok(&["logs", name(&pods[0])], None), "done\n");
}

/// Check 7: the controller restarts under the fleet; every agent reconnects, the
/// nodes stay Ready and every pod keeps its container (no restart).
fn controller_restart(cluster: &mut Cluster) {
    let containers = |cluster: &Cluster| -> BTreeMap<String, (String, Value)> {
        cluster
            .items(&["get", "pods", "-l", "app in (web,north,probe)"])
            .iter()
            .map(|p| {
                let id = container_id(p).unwrap_or("").to_string();
                let restarts = p["status"]["containerStatuses"][0]["restartCount"].clone();
                (name(p).to_string(), (id, restarts))
            })
            .collect()
    };
    let before = containers(cluster);
    assert_eq!(before.len(), 9, "3 web, 2 north, 4 probe: {before:?}");
    cluster.restart_controller();
    cluster.until(
        "every agent connected to the new controller",
        Duration::from_secs(60),
        || {
            cluster
                .controller()
                .output()
                .matches("node session up")
                .count()
                >= 4
        },
    );
    let nodes = cluster.items(&["get", "nodes"]);
    assert_eq!(nodes.len(), 4);
    for n in &nodes {
        assert_eq!(node_ready(n), "True", "{} stays Ready", name(n));
    }
    assert_eq!(containers(cluster), before, "same containers, no restarts");
    let pods = live_pods(cluster, "web");
    assert!(running_on_their_agents(cluster, &pods));
}

/// Seconds since the Unix epoch of an RFC 3339 time (GNU `date` parses it).
fn epoch_seconds(rfc3339: &str) -> f64 {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", rfc3339, "+%s.%N"])
        .output()
        .expect("date runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("date cannot read {rfc3339:?}: {e}"))
}

#[test]
fn a_partitioned_node_turns_unknown_in_time_and_comes_back() {
    require_root!();
    let root_before = root_netns_snapshot();
    let mut cluster = Cluster::start("cut", &[GRACE]);
    cluster.add_agent("cut-a", &[]);
    cluster.apply(&deployment("held", 1, ""));
    cluster.until("held's pod Running", Duration::from_secs(90), || {
        let pods = live_pods(&cluster, "held");
        pods.len() == 1 && running_on_their_agents(&cluster, &pods)
    });
    let pod = live_pods(&cluster, "held").remove(0);
    let container = container_id(&pod).unwrap().to_string();
    // Longer than the grace period: the agent's answers keep renewing the Lease.
    std::thread::sleep(Duration::from_secs(25));
    let n = cluster.json(&["get", "node", "cut-a"]).unwrap();
    assert_eq!(node_ready(&n), "True", "an answering node stays Ready");

    let cut_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let cut = std::time::Instant::now();
    cluster.agent("cut-a").set_link(false);
    cluster.until(
        "cut-a Unknown with the unreachable NoExecute taint",
        Duration::from_secs(90),
        || {
            cluster.json(&["get", "node", "cut-a"]).is_some_and(|n| {
                node_ready(&n) == "Unknown" && has_taint(&n, UNREACHABLE, "NoExecute")
            })
        },
    );
    let took = cut.elapsed();
    // The grace period (20 s) and one renewal period (10 s).
    assert!(
        took <= Duration::from_secs(30),
        "cut-a turned Unknown {took:?} after the cut (grace 20 s + renewal 10 s)\n{}",
        cluster.logs()
    );
    let lease = cluster
        .json(&["get", "lease", "-n", "kube-node-lease", "cut-a"])
        .expect("cut-a's Lease");
    let renewed = lease["spec"]["renewTime"].as_str().expect("a renewTime");
    // An answer already on the wire (or queued in the hub) at the cut may still renew
    // it: a few seconds' slack (the old timer renewed it for ~40 s after the cut).
    assert!(
        epoch_seconds(renewed) <= cut_wall + 3.0,
        "the Lease was renewed at {renewed}, after the cut ({:.1}s after)",
        epoch_seconds(renewed) - cut_wall
    );
    eprintln!("cut-a Unknown {took:?} after the cut; Lease last renewed {renewed}");

    cluster.agent("cut-a").set_link(true);
    cluster.until(
        "cut-a Ready again without the taint",
        Duration::from_secs(90),
        || {
            cluster.json(&["get", "node", "cut-a"]).is_some_and(|n| {
                node_ready(&n) == "True" && !has_taint(&n, UNREACHABLE, "NoExecute")
            })
        },
    );
    // The pod stayed (its toleration for the unreachable taint is 300 s), with the
    // same container, running all along.
    let pods = live_pods(&cluster, "held");
    assert_eq!(pods.len(), 1);
    assert_eq!(name(&pods[0]), name(&pod), "the same pod");
    assert_eq!(container_id(&pods[0]), Some(container.as_str()));
    let state = cluster
        .agent("cut-a")
        .container_state(&container)
        .expect("the runtime holds the container");
    assert_eq!(state["status"], "running", "{state}");
    assert!(
        cluster
            .agent("cut-a")
            .output()
            .contains("connected to the controller")
    );
    cluster.ok(&["delete", "deployment/held", "--wait=false"], None);
    cluster.until("cut-a's runtime empty", Duration::from_secs(60), || {
        cluster.agent("cut-a").containers().is_empty()
    });
    drop(cluster);
    assert_eq!(
        root_netns_snapshot(),
        root_before,
        "the host's network namespace is unchanged"
    );
}

#[test]
fn a_second_machine_with_a_taken_node_name_is_refused() {
    require_root!();
    let mut cluster = Cluster::start("twin", &[]);
    cluster.add_agent("twin", &[]);
    cluster.until("twin Ready", Duration::from_secs(60), || {
        cluster
            .json(&["get", "node", "twin"])
            .is_some_and(|n| node_ready(&n) == "True")
    });
    let first_ip = cluster.agent("twin").ip().to_string();
    let internal_ip = |cluster: &Cluster| {
        cluster
            .json(&["get", "node", "twin"])
            .map(|n| n["status"]["addresses"][0]["address"].clone())
    };

    // A second board with the same name: its join is refused, it says why and exits,
    // and stores no credentials.
    let mut clone = cluster.start_machine_named("twin");
    let status = clone
        .process()
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", clone.output()));
    assert!(!status.success(), "{}", clone.output());
    let log = clone.output();
    for part in [
        "the controller refused to let this node join",
        "node name \"twin\" belongs to another machine",
        "give this one its own --node-name",
        "`kubectl delete node twin`",
    ] {
        assert!(
            log.contains(part),
            "{part:?} not in the clone's log:\n{log}"
        );
    }
    eprintln!(
        "the clone's refusal: {}",
        log.lines().find(|l| l.contains("refused")).unwrap_or("")
    );
    assert!(!clone.data_dir().join("link/node.crt").exists());
    // The first machine keeps the name: still Ready, its own address, one session.
    let n = cluster.json(&["get", "node", "twin"]).unwrap();
    assert_eq!(node_ready(&n), "True");
    assert_eq!(internal_ip(&cluster), Some(Value::from(first_ip.clone())));
    assert_eq!(
        cluster
            .controller()
            .output()
            .matches("node session up")
            .count(),
        1,
        "the owner's session was not replaced"
    );
    drop(clone);

    // Once the old machine is gone and its Node deleted, a new one takes the name.
    cluster.agent_mut("twin").kill();
    cluster.ok(&["delete", "node", "twin"], None);
    let mut heir = cluster.start_machine_named("twin");
    heir.process()
        .wait_for_log("joined the cluster", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", heir.output()));
    let heir_ip = heir.ip().to_string();
    cluster.until(
        "twin Ready as the new machine",
        Duration::from_secs(60),
        || {
            internal_ip(&cluster) == Some(Value::from(heir_ip.clone()))
                && cluster
                    .json(&["get", "node", "twin"])
                    .is_some_and(|n| node_ready(&n) == "True")
        },
    );
    // The old machine, started again from its credentials, is refused its session.
    cluster.restart_agent("twin");
    cluster
        .agent_mut("twin")
        .process()
        .wait_for_log("belongs to another machine", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    let log = cluster.agent("twin").output();
    eprintln!(
        "the old machine's refusal: {}",
        log.lines().find(|l| l.contains("belongs to")).unwrap_or("")
    );
    assert!(
        log.contains(
            "the controller ended the session: node name \"twin\" belongs to another machine"
        ),
        "{log}"
    );
    assert_eq!(
        internal_ip(&cluster),
        Some(Value::from(heir_ip)),
        "the Node stays the new machine's"
    );
    drop(heir);
}
