//! Tests of the decision: each filter, each score, and the failure messages.

use super::*;
use serde_json::{Value, json};

fn node(name: &str, cpu: &str, memory: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "10Gi"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

fn pod(name: &str, cpu: &str, memory: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}
    })
}

fn on(mut p: Value, node: &str) -> Value {
    p["spec"]["nodeName"] = json!(node);
    p
}

fn owned(mut p: Value, uid: &str) -> Value {
    p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}]);
    p
}

fn n(v: Value) -> Node {
    serde_json::from_value(v).unwrap()
}

fn p(v: Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn cluster(nodes: Vec<Value>, pods: Vec<Value>) -> Cluster {
    let nodes: Vec<Node> = nodes.into_iter().map(n).collect();
    let pods: Vec<Pod> = pods.into_iter().map(p).collect();
    Cluster::from_objects(&nodes, &pods)
}

fn message(c: &Cluster, pod: Value) -> String {
    c.schedule(&p(pod)).unwrap_err().message
}

#[test]
fn picks_the_least_allocated_node() {
    let c = cluster(
        vec![node("a", "4", "8Gi"), node("b", "4", "8Gi")],
        vec![on(pod("busy", "3", "6Gi"), "a")],
    );
    assert_eq!(c.schedule(&p(pod("new", "500m", "1Gi"))).unwrap(), "b");
}

#[test]
fn equal_nodes_tie_break_on_the_first_name() {
    let c = cluster(
        vec![
            node("c", "4", "8Gi"),
            node("a", "4", "8Gi"),
            node("b", "4", "8Gi"),
        ],
        vec![],
    );
    assert_eq!(c.schedule(&p(pod("x", "1", "1Gi"))).unwrap(), "a");
}

#[test]
fn the_message_counts_nodes_per_cause_like_kube_scheduler() {
    let mut unreachable = node("c", "8", "8Gi");
    unreachable["status"]["conditions"] = json!([{"type": "Ready", "status": "Unknown"}]);
    let c = cluster(
        vec![node("a", "1", "8Gi"), node("b", "1", "8Gi"), unreachable],
        vec![],
    );
    // Asking for more than a node has at all: no preemption could help there either.
    assert_eq!(
        message(&c, pod("big", "2", "1Gi")),
        "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, \
         2 Insufficient cpu. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.."
    );
}

#[test]
fn insufficient_resources_that_could_free_up_say_no_victims() {
    let c = cluster(
        vec![
            node("a", "2", "8Gi"),
            node("b", "2", "8Gi"),
            node("c", "2", "1Gi"),
        ],
        vec![
            on(pod("p1", "1500m", "1Gi"), "a"),
            on(pod("p2", "1500m", "1Gi"), "b"),
        ],
    );
    assert_eq!(
        message(&c, pod("new", "1", "2Gi")),
        "0/3 nodes are available: 1 Insufficient memory, 2 Insufficient cpu. preemption: 0/3 nodes are \
         available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.."
    );
}

#[test]
fn binding_updates_the_aggregate_and_removal_frees_it() {
    let mut c = cluster(vec![node("a", "2", "8Gi")], vec![]);
    let first = p(pod("first", "1500m", "1Gi"));
    assert_eq!(c.schedule(&first).unwrap(), "a");
    c.assume(&first, "a");
    assert_eq!(c.node_of("default", "first"), Some("a"));
    let second = p(pod("second", "1", "1Gi"));
    assert!(
        c.schedule(&second)
            .unwrap_err()
            .message
            .starts_with("0/1 nodes are available: 1 Insufficient cpu.")
    );
    c.remove_pod("default", "first");
    assert_eq!(c.schedule(&second).unwrap(), "a");
}

#[test]
fn finished_and_unbound_pods_do_not_count() {
    let mut done = on(pod("done", "2", "1Gi"), "a");
    done["status"] = json!({"phase": "Succeeded"});
    let c = cluster(
        vec![node("a", "2", "8Gi")],
        vec![done, pod("pending", "2", "1Gi")],
    );
    assert_eq!(c.schedule(&p(pod("x", "2", "1Gi"))).unwrap(), "a");

    let mut c = cluster(
        vec![node("a", "2", "8Gi")],
        vec![on(pod("run", "2", "1Gi"), "a")],
    );
    assert!(c.schedule(&p(pod("x", "1", "1Gi"))).is_err());
    let mut finished = on(pod("run", "2", "1Gi"), "a");
    finished["status"] = json!({"phase": "Failed"});
    c.upsert_pod(&p(finished));
    assert_eq!(c.schedule(&p(pod("x", "1", "1Gi"))).unwrap(), "a");
}

#[test]
fn pod_count_and_ephemeral_storage_and_extended_resources() {
    let mut small = node("a", "4", "8Gi");
    small["status"]["allocatable"]["pods"] = json!("1");
    small["status"]["allocatable"]["example.com/gpu"] = json!("1");
    let c = cluster(vec![small], vec![on(pod("one", "100m", "1Mi"), "a")]);
    let mut greedy = pod("g", "100m", "1Mi");
    greedy["spec"]["containers"][0]["resources"]["requests"]["ephemeral-storage"] = json!("20Gi");
    greedy["spec"]["containers"][0]["resources"]["requests"]["example.com/gpu"] = json!("2");
    assert_eq!(
        message(&c, greedy),
        "0/1 nodes are available: 1 Insufficient ephemeral-storage, 1 Insufficient example.com/gpu, \
         1 Too many pods. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.."
    );
}

#[test]
fn a_pod_requesting_nothing_fits_a_full_node() {
    let c = cluster(
        vec![node("a", "1", "1Gi")],
        vec![on(pod("full", "1", "1Gi"), "a")],
    );
    let mut besteffort = pod("be", "1", "1Gi");
    besteffort["spec"]["containers"][0]["resources"] = json!({});
    assert_eq!(c.schedule(&p(besteffort)).unwrap(), "a");
}

#[test]
fn cordoned_nodes_are_skipped_unless_tolerated() {
    let mut cordoned = node("a", "4", "8Gi");
    cordoned["spec"]["unschedulable"] = json!(true);
    let c = cluster(vec![cordoned], vec![]);
    assert_eq!(
        message(&c, pod("x", "1", "1Gi")),
        "0/1 nodes are available: 1 node(s) were unschedulable. preemption: 0/1 nodes are available: \
         1 Preemption is not helpful for scheduling.."
    );
    let mut tolerant = pod("x", "1", "1Gi");
    tolerant["spec"]["tolerations"] = json!([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]);
    assert_eq!(c.schedule(&p(tolerant)).unwrap(), "a");
}

#[test]
fn taints_block_unless_tolerated() {
    let mut gpu = node("gpu", "8", "8Gi");
    gpu["spec"]["taints"] = json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
    let mut evicting = node("ev", "8", "8Gi");
    evicting["spec"]["taints"] = json!([{"key": "maint", "effect": "NoExecute"}]);
    let c = cluster(vec![gpu, evicting], vec![]);
    assert_eq!(
        message(&c, pod("x", "1", "1Gi")),
        "0/2 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) had \
         untolerated taint {maint: }. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.."
    );
    let mut tolerant = pod("x", "1", "1Gi");
    tolerant["spec"]["tolerations"] =
        json!([{"key": "dedicated", "operator": "Equal", "value": "gpu"}]);
    assert_eq!(c.schedule(&p(tolerant)).unwrap(), "gpu");
    let mut all = pod("x", "1", "1Gi");
    all["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
    assert_eq!(c.schedule(&p(all)).unwrap(), "ev");
}

#[test]
fn not_ready_nodes_are_skipped() {
    let mut down = node("a", "8", "8Gi");
    down["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    let c = cluster(vec![down, node("b", "1", "1Gi")], vec![]);
    assert_eq!(c.schedule(&p(pod("x", "100m", "10Mi"))).unwrap(), "b");
    assert!(
        message(&c, pod("y", "2", "10Mi"))
            .contains("1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }")
    );
}

#[test]
fn prefer_no_schedule_taints_are_avoided_not_forbidden() {
    let mut soft = node("a", "8", "16Gi");
    soft["spec"]["taints"] = json!([{"key": "spot", "effect": "PreferNoSchedule"}]);
    let c = cluster(vec![soft, node("b", "4", "8Gi")], vec![]);
    assert_eq!(c.schedule(&p(pod("x", "1", "1Gi"))).unwrap(), "b");
    let mut only = node("a", "8", "16Gi");
    only["spec"]["taints"] = json!([{"key": "spot", "effect": "PreferNoSchedule"}]);
    let c = cluster(vec![only], vec![]);
    assert_eq!(c.schedule(&p(pod("x", "1", "1Gi"))).unwrap(), "a");
}

#[test]
fn node_selector_and_required_affinity_filter() {
    let mut ssd = node("ssd", "4", "8Gi");
    ssd["metadata"]["labels"]["disk"] = json!("ssd");
    ssd["metadata"]["labels"]["cores"] = json!("4");
    let c = cluster(vec![ssd, node("hdd", "4", "8Gi")], vec![]);
    let mut want_ssd = pod("x", "1", "1Gi");
    want_ssd["spec"]["nodeSelector"] = json!({"disk": "ssd"});
    assert_eq!(c.schedule(&p(want_ssd)).unwrap(), "ssd");
    let mut want_many_cores = pod("y", "1", "1Gi");
    want_many_cores["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["8"]}]}]}}});
    assert_eq!(
        message(&c, want_many_cores),
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/2 nodes \
         are available: 2 Preemption is not helpful for scheduling.."
    );
}

#[test]
fn match_fields_on_the_node_name_narrow_the_nodes_first() {
    let c = cluster(
        vec![
            node("a", "1", "8Gi"),
            node("b", "4", "8Gi"),
            node("c", "4", "8Gi"),
        ],
        vec![on(pod("busy", "500m", "1Gi"), "a")],
    );
    let mut pinned = pod("ds-pod", "1", "1Gi");
    pinned["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}]}}});
    assert_eq!(
        message(&c, pinned.clone()),
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't satisfy plugin(s) [NodeAffinity]. \
         preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, \
         2 Preemption is not helpful for scheduling.."
    );
    pinned["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchFields"][0]["values"] = json!(["c"]);
    assert_eq!(c.schedule(&p(pinned.clone())).unwrap(), "c");
    pinned["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchFields"] = json!([
        {"key": "metadata.name", "operator": "In", "values": ["a"]},
        {"key": "metadata.name", "operator": "In", "values": ["b"]}
    ]);
    assert_eq!(
        message(&c, pinned),
        "0/3 nodes are available: pod affinity terms conflict. preemption: 0/3 nodes are available: \
         3 Preemption is not helpful for scheduling.."
    );
}

#[test]
fn preferred_node_affinity_outweighs_free_resources() {
    let mut edge = node("edge", "2", "2Gi");
    edge["metadata"]["labels"]["site"] = json!("edge");
    let c = cluster(vec![edge, node("core", "64", "256Gi")], vec![]);
    let mut x = pod("x", "500m", "256Mi");
    x["spec"]["affinity"] = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "preference": {"matchExpressions": [{"key": "site", "operator": "In", "values": ["edge"]}]}}]}});
    assert_eq!(c.schedule(&p(x)).unwrap(), "edge");
}

#[test]
fn host_ports_conflict_by_protocol_and_address() {
    let mut web = pod("web", "100m", "10Mi");
    web["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]);
    let c = cluster(vec![node("a", "4", "8Gi")], vec![on(web.clone(), "a")]);
    web["metadata"]["name"] = json!("web2");
    assert_eq!(
        message(&c, web.clone()),
        "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports. preemption: \
         0/1 nodes are available: 1 No preemption victims found for incoming pod.."
    );
    web["spec"]["containers"][0]["ports"][0]["protocol"] = json!("UDP");
    assert_eq!(c.schedule(&p(web)).unwrap(), "a");
}

#[test]
fn specific_host_addresses_do_not_collide() {
    let mut a = pod("a", "100m", "10Mi");
    a["spec"]["containers"][0]["ports"] =
        json!([{"containerPort": 80, "hostPort": 80, "hostIP": "10.0.0.1"}]);
    let c = cluster(vec![node("n", "4", "8Gi")], vec![on(a.clone(), "n")]);
    a["metadata"]["name"] = json!("b");
    a["spec"]["containers"][0]["ports"][0]["hostIP"] = json!("10.0.0.2");
    assert_eq!(c.schedule(&p(a.clone())).unwrap(), "n");
    a["spec"]["containers"][0]["ports"][0]["hostIP"] = json!("0.0.0.0");
    assert!(c.schedule(&p(a)).is_err());
}

fn with_anti_affinity(mut v: Value) -> Value {
    v["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}]}});
    v
}

#[test]
fn required_anti_affinity_puts_one_replica_per_node() {
    let mut c = cluster(vec![node("a", "4", "8Gi"), node("b", "4", "8Gi")], vec![]);
    for name in ["r1", "r2"] {
        let replica = p(with_anti_affinity(pod(name, "100m", "10Mi")));
        let chosen = c.schedule(&replica).unwrap();
        c.assume(&replica, &chosen);
    }
    assert_ne!(c.node_of("default", "r1"), c.node_of("default", "r2"));
    assert_eq!(
        message(&c, with_anti_affinity(pod("r3", "100m", "10Mi"))),
        "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules. preemption: 0/2 nodes are \
         available: 2 No preemption victims found for incoming pod.."
    );
}

#[test]
fn existing_pods_anti_affinity_keeps_others_away() {
    let c = cluster(
        vec![node("a", "4", "8Gi"), node("b", "4", "8Gi")],
        vec![on(with_anti_affinity(pod("loner", "100m", "10Mi")), "b")],
    );
    // The newcomer has no rules of its own but carries app=web, which the loner shuns.
    let plain = pod("x", "100m", "10Mi");
    let mut c2 = c.clone();
    assert_eq!(c2.schedule(&p(plain.clone())).unwrap(), "a");
    c2.upsert_node(&n(
        json!({"metadata": {"name": "a"}, "spec": {"unschedulable": true},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}}),
    ));
    assert_eq!(
        message(&c2, plain),
        "0/2 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules, 1 node(s) were \
         unschedulable. preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, \
         1 Preemption is not helpful for scheduling.."
    );
    let mut other = pod("y", "100m", "10Mi");
    other["metadata"]["labels"] = json!({"app": "db"});
    assert_eq!(c.schedule(&p(other)).unwrap(), "a");
}

#[test]
fn required_pod_affinity_follows_its_peers() {
    let mut cache = pod("cache", "100m", "10Mi");
    cache["metadata"]["labels"] = json!({"app": "cache"});
    let c = cluster(
        vec![node("a", "4", "8Gi"), node("b", "4", "8Gi")],
        vec![on(cache, "b")],
    );
    let mut near = pod("near", "100m", "10Mi");
    near["spec"]["affinity"] = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "cache"}}}]}});
    assert_eq!(c.schedule(&p(near.clone())).unwrap(), "b");
    near["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
        ["labelSelector"] = json!({"matchLabels": {"app": "nothing"}});
    assert_eq!(
        message(&c, near),
        "0/2 nodes are available: 2 node(s) didn't match pod affinity rules. preemption: 0/2 nodes are \
         available: 2 Preemption is not helpful for scheduling.."
    );
    // The first pod of a group that selects itself may go anywhere.
    let mut first = pod("first", "100m", "10Mi");
    first["spec"]["affinity"] = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}]}});
    assert_eq!(c.schedule(&p(first)).unwrap(), "a");
}

#[test]
fn replicas_of_one_owner_spread_across_nodes() {
    let mut c = cluster(
        vec![
            node("a", "8", "16Gi"),
            node("b", "8", "16Gi"),
            node("c", "8", "16Gi"),
        ],
        vec![],
    );
    // A much bigger unrelated pod on c would make c the last choice by resources alone.
    c.assume(&p(pod("other", "1", "1Gi")), "c");
    let mut placed = BTreeMap::<String, usize>::new();
    for i in 0..6 {
        let replica = p(owned(pod(&format!("r{i}"), "100m", "64Mi"), "rs-1"));
        let chosen = c.schedule(&replica).unwrap();
        c.assume(&replica, &chosen);
        *placed.entry(chosen).or_default() += 1;
    }
    assert_eq!(
        placed.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{placed:?}"
    );
}

#[test]
fn special_cases_have_their_own_messages() {
    let empty = Cluster::new();
    let u = empty.schedule(&p(pod("x", "1", "1Gi"))).unwrap_err();
    assert_eq!(
        (u.reason, u.message.as_str()),
        ("Unschedulable", "no nodes available to schedule pods")
    );

    let c = cluster(vec![node("a", "1", "1Gi")], vec![]);
    let mut gated = pod("g", "1", "1Gi");
    gated["spec"]["schedulingGates"] = json!([{"name": "example.com/wait"}]);
    let u = c.schedule(&p(gated)).unwrap_err();
    assert_eq!(u.reason, "SchedulingGated");

    let mut polite = pod("p", "2", "1Gi");
    polite["spec"]["preemptionPolicy"] = json!("Never");
    assert_eq!(
        message(&c, polite),
        "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.."
    );

    let u = c.schedule(&p(pod("bad", "lots", "1Gi"))).unwrap_err();
    assert!(
        u.message.starts_with(
            "0/1 nodes are available: invalid pod: spec.containers[0].resources.requests[cpu]"
        ),
        "{}",
        u.message
    );
    assert_eq!(u.condition().reason.as_deref(), Some("Unschedulable"));
}

#[test]
fn the_snapshot_function_matches_the_cluster() {
    let nodes = vec![n(node("a", "2", "2Gi")), n(node("b", "2", "2Gi"))];
    let bound = vec![p(on(pod("x", "2", "1Gi"), "a"))];
    assert_eq!(
        schedule(&p(pod("y", "1", "1Gi")), &nodes, &bound).unwrap(),
        "b"
    );
}

#[test]
fn the_version_moves_on_every_change() {
    let mut c = Cluster::new();
    let v0 = c.version();
    c.upsert_node(&n(node("a", "1", "1Gi")));
    let v1 = c.version();
    assert!(v1 > v0);
    c.assume(&p(pod("x", "1", "1Gi")), "a");
    let v2 = c.version();
    assert!(v2 > v1);
    c.remove_pod("default", "x");
    assert!(c.version() > v2);
    let v3 = c.version();
    c.remove_pod("default", "not-there");
    assert_eq!(c.version(), v3, "nothing changed");
}

#[test]
fn balanced_allocation_prefers_even_use_of_cpu_and_memory() {
    // Both nodes end up equally free overall; b ends up with cpu and memory in step.
    let c = cluster(
        vec![node("a", "4", "4Gi"), node("b", "4", "4Gi")],
        vec![
            on(pod("cpu-heavy", "2", "0"), "a"),
            on(pod("even", "1", "1Gi"), "b"),
        ],
    );
    assert_eq!(c.schedule(&p(pod("x", "1", "1Gi"))).unwrap(), "b");
}

#[test]
fn removed_nodes_stop_counting() {
    let mut c = cluster(vec![node("a", "2", "2Gi"), node("b", "2", "2Gi")], vec![]);
    c.remove_node("a");
    assert_eq!(c.node_count(), 1);
    assert_eq!(c.schedule(&p(pod("y", "1", "1Gi"))).unwrap(), "b");
    assert!(
        message(&c, pod("z", "3", "1Gi"))
            .starts_with("0/1 nodes are available: 1 Insufficient cpu.")
    );
}

#[test]
fn the_share_of_nodes_to_find_follows_kube_scheduler() {
    // All below 100 nodes; then 50 - nodes/125 percent, at least 5% and 100 nodes.
    for (nodes, want) in [
        (1, 1),
        (99, 99),
        (100, 100),
        (200, 100),
        (500, 230),
        (1000, 420),
        (5000, 500),
        (6000, 300),
        (10_000, 500),
    ] {
        assert_eq!(feasible_nodes_to_find(nodes), want, "{nodes} nodes");
    }
}

fn numbered(count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| node(&format!("n{i:03}"), "8", "16Gi"))
        .collect()
}

#[test]
fn a_big_cluster_is_filtered_in_turns_from_where_the_last_decision_stopped() {
    // 200 equal nodes: each decision stops after 100 feasible ones, so the first looks
    // at n000..n099, the second at n100..n199, the third at n000..n099 again.
    let mut c = cluster(numbered(200), vec![]);
    let mut placed = Vec::new();
    for i in 0..3 {
        let x = p(pod(&format!("x{i}"), "1", "1Gi"));
        let node = c.schedule(&x).unwrap();
        c.assume(&x, &node);
        placed.push(node);
    }
    assert_eq!(placed, ["n000", "n100", "n001"]);
}

#[test]
fn a_decision_goes_on_past_infeasible_nodes_until_enough_fit() {
    // Only 50 of 200 nodes fit (fewer than the 100 wanted): every node is looked at.
    let mut nodes = numbered(200);
    for n in &mut nodes[..150] {
        n["spec"]["taints"] = json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
    }
    let c = cluster(nodes, vec![]);
    assert_eq!(c.schedule(&p(pod("x", "1", "1Gi"))).unwrap(), "n150");
    // A pod that fits nowhere still hears about every node.
    assert_eq!(
        message(&c, pod("huge", "64", "1Gi")),
        "0/200 nodes are available: 150 node(s) had untolerated taint {dedicated: gpu}, 50 Insufficient cpu. \
         preemption: 0/200 nodes are available: 200 Preemption is not helpful for scheduling.."
    );
}

#[test]
fn nodes_named_by_the_pre_filter_are_all_looked_at() {
    // Fewer than 100 nodes named: each of them is filtered and scored, so the best one
    // wins although it is the last of them in a 300-node cluster.
    let mut names: Vec<String> = (0..59).map(|i| format!("n{i:03}")).collect();
    names.push("n250".into());
    let mut c = cluster(numbered(300), vec![]);
    for name in &names[..59] {
        c.assume(&p(pod(&format!("busy-{name}"), "4", "1Gi")), name);
    }
    let mut x = pod("x", "1", "1Gi");
    x["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": names}]}]}}});
    assert_eq!(c.schedule(&p(x)).unwrap(), "n250");
}
