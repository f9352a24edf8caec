//! The scheduler's picture of the cluster and the scheduling decision itself.
//!
//! [`Cluster`] keeps, for every node, its static facts (labels, taints, allocatable) and
//! an aggregate of the pods bound to it (requested resources, host ports), and per owner
//! how many of its pods each node holds — all updated incrementally as pods are bound or
//! go away, so a decision never rescans pods (only pods with inter-pod (anti-)affinity
//! terms look at the pods those terms select).
//! [`Cluster::schedule`] runs kube-scheduler's filters in upstream order — NodeUnschedulable,
//! TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit, InterPodAffinity — and,
//! among feasible nodes, the scores: TaintToleration (PreferNoSchedule, weight 3),
//! NodeAffinity preferred terms (2), LeastAllocated (1), BalancedAllocation (1) and
//! spreading the replicas of one owner (2). Ties go to the lexically first node name.
//! Like kube-scheduler, a decision in a cluster of 100 nodes or more stops filtering once
//! it has found [`feasible_nodes_to_find`] feasible nodes (the adaptive
//! `percentageOfNodesToScore`: 420 of 1,000), starting where the previous decision
//! stopped, and scores only those.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Taint, Toleration};

use crate::affinity::{Term, required_affinity, required_anti_affinity};
use crate::ports::{HostPort, any_conflict, host_ports};
use crate::resources::{PodRequests, Resources};
use crate::selectors::{Labels, pod_matches_node_selector, preferred_node_affinity_score};
use crate::taints::{
    UNSCHEDULABLE, effective_taints, first_untolerated, taint, tolerated,
    untolerated_prefer_no_schedule,
};
use crate::unschedulable::{
    NO_NODES, REASON_SCHEDULING_GATED, REASON_UNSCHEDULABLE, Unschedulable, fit_error_message,
};

/// The node label kube-scheduler spreads and separates pods on.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

const MAX_SCORE: i64 = 100;

/// Static facts of one node.
#[derive(Debug, Clone)]
struct NodeView {
    labels: Labels,
    taints: Vec<Taint>,
    unschedulable: bool,
    allocatable: Resources,
    allowed_pods: i64,
}

/// What the pods bound to a node use of it.
#[derive(Debug, Clone, Default)]
struct Usage {
    requested: Resources,
    nonzero_milli_cpu: i64,
    nonzero_memory: i64,
    pods: i64,
    ports: Vec<HostPort>,
}

#[derive(Debug, Clone)]
struct Slot {
    name: String,
    /// Position of the name in sorted order, for cheap tie-breaks.
    rank: u32,
    node: Option<NodeView>,
    usage: Usage,
}

/// A pod bound to a node, as much of it as decisions need.
#[derive(Debug, Clone)]
struct BoundPod {
    slot: usize,
    namespace: String,
    labels: Labels,
    requests: PodRequests,
    ports: Vec<HostPort>,
    owner: Option<u32>,
    anti_affinity: Vec<Term>,
}

/// The cluster as the scheduler sees it; feed it node and pod changes, ask it for
/// decisions. Deterministic: the same objects and the same sequence of decisions give
/// the same answers.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
    pods: HashMap<String, BoundPod>,
    owner_ids: HashMap<String, u32>,
    /// Per owner, how many of its pods each slot holds (kept apart from the per-node
    /// usage so a decision reads one dense array instead of a map per node).
    owner_pods: HashMap<u32, HashMap<usize, u32>>,
    with_anti_affinity: BTreeSet<String>,
    version: u64,
    /// Where the next decision starts looking (kube-scheduler's `nextStartNodeIndex`):
    /// each decision goes on from where the previous one stopped, so every node gets
    /// its turn although a decision looks at only part of a big cluster.
    next_start: Cell<usize>,
}

/// Below this many nodes every node is looked at (kube-scheduler's
/// `minFeasibleNodesToFind`).
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// The smallest adaptive share of nodes to find feasible, in percent
/// (`minFeasibleNodesPercentageToFind`).
const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;

/// How many feasible nodes a decision looks for before it stops filtering —
/// kube-scheduler's `numFeasibleNodesToFind` with the default (adaptive)
/// `percentageOfNodesToScore`: all nodes below 100, else `50 - nodes/125` percent of
/// them (at least 5%), and never fewer than 100. For 1,000 nodes that is 420.
pub fn feasible_nodes_to_find(nodes: usize) -> usize {
    if nodes < MIN_FEASIBLE_NODES_TO_FIND {
        return nodes;
    }
    let percentage = 50usize
        .saturating_sub(nodes / 125)
        .max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND);
    (nodes * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// Why one node was filtered out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    NotInPreFilter,
    Unschedulable,
    Taint(usize),
    NodeAffinity,
    Ports,
    Resources { mask: u8, unresolvable: bool },
    PodAffinity,
    AntiAffinity,
    ExistingAntiAffinity,
}

const TOO_MANY_PODS: u8 = 1;
const CPU: u8 = 2;
const MEMORY: u8 = 4;
const EPHEMERAL: u8 = 8;
const SCALAR: u8 = 16;

/// Required pod affinity of the incoming pod, resolved against bound pods.
struct AffinityCheck {
    /// Per term: topology key and the domains holding a matching pod.
    terms: Vec<(String, HashSet<String>)>,
    /// No pod anywhere matches and the pod matches its own terms: any node will do.
    first_of_its_kind: bool,
}

/// The incoming pod, digested once per decision.
struct Incoming<'a> {
    spec: &'a PodSpec,
    requests: PodRequests,
    ports: Vec<HostPort>,
    tolerations: &'a [Toleration],
    tolerates_cordon: bool,
    owner: Option<u32>,
    /// Pods of the same owner per slot (empty without an owner).
    same_owner: Vec<u32>,
    only_nodes: Option<BTreeSet<String>>,
    affinity: Option<AffinityCheck>,
    /// Per topology key, the domains the pod's anti-affinity rules out.
    anti: Vec<(String, HashSet<String>)>,
    /// Per topology key, the domains existing pods' anti-affinity rules out for it.
    existing_anti: Vec<(String, HashSet<String>)>,
}

/// One feasible node with its raw scores.
struct Candidate {
    slot: usize,
    prefer_no_schedule: i64,
    node_affinity: i64,
    resources: i64,
    same_owner: i64,
}

fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn namespace_of(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// The controlling owner of a pod, as `uid` (or `kind/name` without one).
pub fn owner_key(pod: &Pod) -> Option<String> {
    let refs = pod.metadata.owner_references.as_ref()?;
    let owner = refs.iter().find(|r| r.controller == Some(true))?;
    Some(if owner.uid.is_empty() {
        format!("{}/{}", owner.kind, owner.name)
    } else {
        owner.uid.clone()
    })
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Reads a resource list leniently: entries that do not parse are skipped.
fn lenient(
    list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> (Resources, i64) {
    let mut good = BTreeMap::new();
    let mut pods = 0;
    for (k, v) in list.into_iter().flatten() {
        let Ok(q) = flotilla_shared::quantity::Quantity::parse(&v.0) else {
            continue;
        };
        if k == "pods" {
            pods = q.units();
        }
        good.insert(k.clone(), v.clone());
    }
    (Resources::from_list(&good, "").unwrap_or_default(), pods)
}

impl NodeView {
    fn of(node: &Node) -> NodeView {
        let (allocatable, allowed_pods) =
            lenient(node.status.as_ref().and_then(|s| s.allocatable.as_ref()));
        NodeView {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: effective_taints(node),
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            allocatable,
            allowed_pods,
        }
    }
}

impl Cluster {
    /// An empty cluster.
    pub fn new() -> Cluster {
        Cluster::default()
    }

    /// A cluster of these nodes with these pods (unbound and finished pods are ignored).
    pub fn from_objects(nodes: &[Node], pods: &[Pod]) -> Cluster {
        let mut c = Cluster::new();
        for n in nodes {
            c.upsert_node(n);
        }
        for p in pods {
            c.upsert_pod(p);
        }
        c
    }

    /// A counter that moves on every change of nodes or pods: a pod found unschedulable
    /// at one version is worth retrying once the version moved.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many nodes the scheduler knows.
    pub fn node_count(&self) -> usize {
        self.slots.iter().filter(|s| s.node.is_some()).count()
    }

    fn slot(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let rank = self.slots.iter().filter(|s| s.name.as_str() < name).count() as u32;
        for s in &mut self.slots {
            if s.rank >= rank {
                s.rank += 1;
            }
        }
        self.slots.push(Slot {
            name: name.to_owned(),
            rank,
            node: None,
            usage: Usage::default(),
        });
        self.index.insert(name.to_owned(), self.slots.len() - 1);
        self.slots.len() - 1
    }

    /// Adds a node or takes in its new state (labels, taints, cordon, readiness, allocatable).
    pub fn upsert_node(&mut self, node: &Node) {
        let Some(name) = node.metadata.name.as_deref() else {
            return;
        };
        let i = self.slot(name);
        self.slots[i].node = Some(NodeView::of(node));
        self.version += 1;
    }

    /// Forgets a node; pods still bound to it keep counting until they are removed.
    pub fn remove_node(&mut self, name: &str) {
        if let Some(&i) = self.index.get(name) {
            self.slots[i].node = None;
            self.version += 1;
        }
    }

    /// Takes in a pod's current state: a bound, unfinished pod counts on its node; any
    /// other pod (unbound, Succeeded, Failed) is forgotten.
    pub fn upsert_pod(&mut self, pod: &Pod) {
        let Some(name) = pod.metadata.name.as_deref() else {
            return;
        };
        let ns = namespace_of(pod).to_owned();
        self.remove_pod(&ns, name);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty());
        if let Some(node) = node
            && !is_terminal(pod)
        {
            let node = node.to_owned();
            self.assume(pod, &node);
        }
    }

    /// Records that `pod` now runs on `node` (call right after binding it).
    pub fn assume(&mut self, pod: &Pod, node: &str) {
        let Some(name) = pod.metadata.name.as_deref() else {
            return;
        };
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let namespace = namespace_of(pod).to_owned();
        let key = pod_key(&namespace, name);
        self.remove_pod(&namespace, name);
        let owner = owner_key(pod).map(|k| {
            let next = self.owner_ids.len() as u32;
            *self.owner_ids.entry(k).or_insert(next)
        });
        let slot = self.slot(node);
        let bound = BoundPod {
            slot,
            requests: PodRequests::of(spec).unwrap_or_default(),
            ports: host_ports(spec),
            owner,
            anti_affinity: required_anti_affinity(spec, &namespace),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            namespace,
        };
        let usage = &mut self.slots[slot].usage;
        usage.requested.add(&bound.requests.resources);
        usage.nonzero_milli_cpu += bound.requests.nonzero_milli_cpu;
        usage.nonzero_memory += bound.requests.nonzero_memory;
        usage.pods += 1;
        usage.ports.extend(bound.ports.iter().cloned());
        if let Some(o) = owner {
            *self
                .owner_pods
                .entry(o)
                .or_default()
                .entry(slot)
                .or_insert(0) += 1;
        }
        if !bound.anti_affinity.is_empty() {
            self.with_anti_affinity.insert(key.clone());
        }
        self.pods.insert(key, bound);
        self.version += 1;
    }

    /// Forgets a pod (deleted, finished or unbound).
    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        let key = pod_key(namespace, name);
        let Some(bound) = self.pods.remove(&key) else {
            return;
        };
        self.with_anti_affinity.remove(&key);
        self.version += 1;
        let usage = &mut self.slots[bound.slot].usage;
        usage.requested.sub(&bound.requests.resources);
        usage.nonzero_milli_cpu -= bound.requests.nonzero_milli_cpu;
        usage.nonzero_memory -= bound.requests.nonzero_memory;
        usage.pods -= 1;
        for p in &bound.ports {
            if let Some(i) = usage.ports.iter().position(|u| u == p) {
                usage.ports.swap_remove(i);
            }
        }
        if let Some(o) = bound.owner
            && let Some(per_slot) = self.owner_pods.get_mut(&o)
            && let Some(n) = per_slot.get_mut(&bound.slot)
        {
            *n -= 1;
            if *n == 0 {
                per_slot.remove(&bound.slot);
            }
        }
    }

    /// The node a bound pod is counted on.
    pub fn node_of(&self, namespace: &str, name: &str) -> Option<&str> {
        self.pods
            .get(&pod_key(namespace, name))
            .map(|p| self.slots[p.slot].name.as_str())
    }

    /// Picks the node for a pod, or says why none fits. In clusters of 100 nodes or more
    /// it looks at part of them (see [`feasible_nodes_to_find`]) and moves the start of
    /// the next decision on past the nodes it looked at.
    pub fn schedule(&self, pod: &Pod) -> Result<String, Unschedulable> {
        let Some(spec) = pod.spec.as_ref() else {
            return Err(Unschedulable::plain(
                REASON_UNSCHEDULABLE,
                "invalid pod: spec is missing",
            ));
        };
        if spec
            .scheduling_gates
            .as_ref()
            .is_some_and(|g| !g.is_empty())
        {
            return Err(Unschedulable::plain(
                REASON_SCHEDULING_GATED,
                "Scheduling is blocked due to non-empty scheduling gates",
            ));
        }
        let num_nodes = self.node_count();
        if num_nodes == 0 {
            return Err(Unschedulable::plain(REASON_UNSCHEDULABLE, NO_NODES));
        }
        let inc = match self.digest(pod, spec) {
            Ok(inc) => inc,
            Err(pre_filter) => return Err(self.pre_filter_error(pod, num_nodes, pre_filter)),
        };
        // Filter from where the last decision stopped until enough nodes fit (all of
        // them when the pre-filter named the nodes), as kube-scheduler does.
        let total = self.slots.len();
        let (start, want) = match &inc.only_nodes {
            Some(only) => (0, feasible_nodes_to_find(only.len())),
            None => (
                self.next_start.get() % total,
                feasible_nodes_to_find(num_nodes),
            ),
        };
        let mut candidates = Vec::with_capacity(want);
        let mut visited = 0;
        for k in 0..total {
            let i = (start + k) % total;
            visited = k + 1;
            let slot = &self.slots[i];
            let Some(node) = &slot.node else { continue };
            if self.check(&inc, slot, node).is_none() {
                candidates.push(self.raw_scores(&inc, i, slot, node));
                if candidates.len() >= want {
                    break;
                }
            }
        }
        if inc.only_nodes.is_none() {
            self.next_start.set((start + visited) % total);
        }
        if candidates.is_empty() {
            return Err(self.fit_error(pod, &inc, num_nodes));
        }
        Ok(self.slots[self.pick(&inc, &candidates)].name.clone())
    }

    /// Digests the incoming pod; `Err` carries a pre-filter failure message.
    fn digest<'a>(&self, pod: &'a Pod, spec: &'a PodSpec) -> Result<Incoming<'a>, String> {
        let namespace = namespace_of(pod);
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let requests = PodRequests::of(spec).map_err(|e| format!("invalid pod: {e}"))?;
        let only_nodes = node_name_pre_filter(spec)?;
        let owner = owner_key(pod).and_then(|k| self.owner_ids.get(&k).copied());

        let affinity_terms = required_affinity(spec, namespace);
        let affinity = (!affinity_terms.is_empty()).then(|| {
            let terms: Vec<(String, HashSet<String>)> = affinity_terms
                .iter()
                .map(|t| {
                    (
                        t.topology_key.clone(),
                        self.domains_with(|p| t.matches(&p.namespace, &p.labels), &t.topology_key),
                    )
                })
                .collect();
            let none_anywhere = terms.iter().all(|(_, d)| d.is_empty())
                && !affinity_terms.iter().any(|t| {
                    self.pods
                        .values()
                        .any(|p| t.matches(&p.namespace, &p.labels))
                });
            let self_match = affinity_terms.iter().all(|t| t.matches(namespace, &labels));
            AffinityCheck {
                terms,
                first_of_its_kind: none_anywhere && self_match,
            }
        });
        let anti = required_anti_affinity(spec, namespace)
            .iter()
            .map(|t| {
                (
                    t.topology_key.clone(),
                    self.domains_with(|p| t.matches(&p.namespace, &p.labels), &t.topology_key),
                )
            })
            .filter(|(_, d)| !d.is_empty())
            .collect();
        let mut existing: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for key in &self.with_anti_affinity {
            let p = &self.pods[key];
            let Some(node) = &self.slots[p.slot].node else {
                continue;
            };
            for t in p
                .anti_affinity
                .iter()
                .filter(|t| t.matches(namespace, &labels))
            {
                if let Some(v) = node.labels.get(&t.topology_key) {
                    existing
                        .entry(t.topology_key.clone())
                        .or_default()
                        .insert(v.clone());
                }
            }
        }
        Ok(Incoming {
            spec,
            requests,
            ports: host_ports(spec),
            tolerations: spec.tolerations.as_deref().unwrap_or_default(),
            tolerates_cordon: tolerated(
                spec.tolerations.as_deref().unwrap_or_default(),
                &taint(UNSCHEDULABLE, "NoSchedule"),
            ),
            owner,
            same_owner: owner
                .and_then(|o| self.owner_pods.get(&o))
                .map(|per_slot| {
                    let mut dense = vec![0; self.slots.len()];
                    for (slot, n) in per_slot {
                        dense[*slot] = *n;
                    }
                    dense
                })
                .unwrap_or_default(),
            only_nodes,
            affinity,
            anti,
            existing_anti: existing.into_iter().collect(),
        })
    }

    /// The topology domains (values of `key` on nodes) holding a pod `wanted` selects.
    fn domains_with(&self, wanted: impl Fn(&BoundPod) -> bool, key: &str) -> HashSet<String> {
        self.pods
            .values()
            .filter(|p| wanted(p))
            .filter_map(|p| self.slots[p.slot].node.as_ref()?.labels.get(key).cloned())
            .collect()
    }

    /// Runs the filters on one node in upstream order; `None` means it fits.
    fn check(&self, inc: &Incoming, slot: &Slot, node: &NodeView) -> Option<Failure> {
        if let Some(only) = &inc.only_nodes
            && !only.contains(&slot.name)
        {
            return Some(Failure::NotInPreFilter);
        }
        if node.unschedulable && !inc.tolerates_cordon {
            return Some(Failure::Unschedulable);
        }
        if !node.taints.is_empty()
            && let Some(t) = first_untolerated(&node.taints, inc.tolerations)
        {
            let i = node
                .taints
                .iter()
                .position(|x| std::ptr::eq(x, t))
                .unwrap_or(0);
            return Some(Failure::Taint(i));
        }
        if !pod_matches_node_selector(inc.spec, &slot.name, &node.labels) {
            return Some(Failure::NodeAffinity);
        }
        if !inc.ports.is_empty() && any_conflict(&inc.ports, &slot.usage.ports) {
            return Some(Failure::Ports);
        }
        if let Some(f) = fit_resources(&inc.requests.resources, node, &slot.usage) {
            return Some(f);
        }
        if let Some(aff) = &inc.affinity
            && !aff.first_of_its_kind
            && !aff
                .terms
                .iter()
                .all(|(key, domains)| node.labels.get(key).is_some_and(|v| domains.contains(v)))
        {
            return Some(Failure::PodAffinity);
        }
        let in_domain = |sets: &[(String, HashSet<String>)]| {
            sets.iter()
                .any(|(key, domains)| node.labels.get(key).is_some_and(|v| domains.contains(v)))
        };
        if in_domain(&inc.anti) {
            return Some(Failure::AntiAffinity);
        }
        if in_domain(&inc.existing_anti) {
            return Some(Failure::ExistingAntiAffinity);
        }
        None
    }

    fn raw_scores(&self, inc: &Incoming, i: usize, slot: &Slot, node: &NodeView) -> Candidate {
        let req = &inc.requests;
        let u = &slot.usage;
        let a = &node.allocatable;
        let least = |requested: i64, capacity: i64| {
            if capacity <= 0 || requested > capacity {
                0
            } else {
                (capacity - requested) * MAX_SCORE / capacity
            }
        };
        let least_allocated = (least(u.nonzero_milli_cpu + req.nonzero_milli_cpu, a.milli_cpu)
            + least(u.nonzero_memory + req.nonzero_memory, a.memory))
            / 2;
        // Balanced allocation: 1 - the standard deviation of the cpu and memory
        // fractions (for two resources, half their difference).
        let fraction = |requested: i64, capacity: i64| {
            (capacity > 0).then(|| (requested as f64 / capacity as f64).min(1.0))
        };
        let cpu = fraction(u.requested.milli_cpu + req.resources.milli_cpu, a.milli_cpu);
        let memory = fraction(u.requested.memory + req.resources.memory, a.memory);
        let balanced = match (cpu, memory) {
            (Some(c), Some(m)) => ((1.0 - (c - m).abs() / 2.0) * MAX_SCORE as f64) as i64,
            _ => MAX_SCORE,
        };
        Candidate {
            slot: i,
            prefer_no_schedule: untolerated_prefer_no_schedule(&node.taints, inc.tolerations),
            node_affinity: preferred_node_affinity_score(inc.spec, &slot.name, &node.labels),
            resources: least_allocated + balanced,
            same_owner: inc.same_owner.get(i).map_or(0, |n| i64::from(*n)),
        }
    }

    /// Normalises the raw scores across candidates, weighs them and picks the best.
    fn pick(&self, inc: &Incoming, candidates: &[Candidate]) -> usize {
        let max_taints = candidates
            .iter()
            .map(|c| c.prefer_no_schedule)
            .max()
            .unwrap_or(0);
        let max_affinity = candidates
            .iter()
            .map(|c| c.node_affinity)
            .max()
            .unwrap_or(0);
        // Pod topology spread's default hostname constraint (maxSkew 3): raw score is the
        // matching pod count plus maxSkew-1, normalised as (max+min-score)/max.
        let spread = |c: &Candidate| c.same_owner + 2;
        let max_spread = candidates.iter().map(spread).max().unwrap_or(0);
        let min_spread = candidates.iter().map(spread).min().unwrap_or(0);
        let mut best: Option<(i64, u32, usize)> = None;
        for c in candidates {
            let taint_score = if max_taints == 0 {
                MAX_SCORE
            } else {
                MAX_SCORE - c.prefer_no_schedule * MAX_SCORE / max_taints
            };
            let affinity_score = if max_affinity == 0 {
                0
            } else {
                c.node_affinity * MAX_SCORE / max_affinity
            };
            let spread_score = if inc.owner.is_none() || max_spread == 0 {
                0
            } else {
                MAX_SCORE * (max_spread + min_spread - spread(c)) / max_spread
            };
            let total = 3 * taint_score + 2 * affinity_score + c.resources + 2 * spread_score;
            let rank = self.slots[c.slot].rank;
            let better = match best {
                None => true,
                Some((score, best_rank, _)) => {
                    total > score || (total == score && rank < best_rank)
                }
            };
            if better {
                best = Some((total, rank, c.slot));
            }
        }
        best.map(|(_, _, slot)| slot).unwrap_or(candidates[0].slot)
    }

    fn preemption_message(
        pod: &Pod,
        num_nodes: usize,
        nodes: impl Iterator<Item = bool>,
    ) -> String {
        let never = pod
            .spec
            .as_ref()
            .and_then(|s| s.preemption_policy.as_deref())
            == Some("Never");
        if never {
            return "preemption: not eligible due to preemptionPolicy=Never.".to_owned();
        }
        let mut h = BTreeMap::new();
        for resolvable in nodes {
            let r = if resolvable {
                "No preemption victims found for incoming pod"
            } else {
                "Preemption is not helpful for scheduling"
            };
            *h.entry(r.to_owned()).or_insert(0) += 1;
        }
        format!(
            "preemption: {}",
            fit_error_message(num_nodes, None, &h, None)
        )
    }

    fn pre_filter_error(&self, pod: &Pod, num_nodes: usize, message: String) -> Unschedulable {
        let post = Self::preemption_message(pod, num_nodes, std::iter::repeat_n(false, num_nodes));
        Unschedulable {
            reason: REASON_UNSCHEDULABLE,
            message: fit_error_message(num_nodes, Some(&message), &BTreeMap::new(), Some(&post)),
            histogram: BTreeMap::new(),
        }
    }

    fn fit_error(&self, pod: &Pod, inc: &Incoming, num_nodes: usize) -> Unschedulable {
        let mut histogram = BTreeMap::new();
        let mut resolvable = Vec::with_capacity(num_nodes);
        for slot in &self.slots {
            let Some(node) = &slot.node else { continue };
            let Some(failure) = self.check(inc, slot, node) else {
                continue;
            };
            let (reasons, can_preempt) = explain(failure, inc, slot, node);
            for r in reasons {
                *histogram.entry(r).or_insert(0) += 1;
            }
            resolvable.push(can_preempt);
        }
        let post = Self::preemption_message(pod, num_nodes, resolvable.into_iter());
        Unschedulable {
            reason: REASON_UNSCHEDULABLE,
            message: fit_error_message(num_nodes, None, &histogram, Some(&post)),
            histogram,
        }
    }
}

/// NodeAffinity's pre-filter: when every required term names nodes by `metadata.name In`,
/// only those nodes are considered.
fn node_name_pre_filter(spec: &PodSpec) -> Result<Option<BTreeSet<String>>, String> {
    let Some(required) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    else {
        return Ok(None);
    };
    let mut names: Option<BTreeSet<String>> = None;
    for term in &required.node_selector_terms {
        let mut term_names: Option<BTreeSet<String>> = None;
        for r in term.match_fields.iter().flatten() {
            if r.key == "metadata.name" && r.operator == "In" {
                let s: BTreeSet<String> = r.values.iter().flatten().cloned().collect();
                term_names = Some(match term_names {
                    None => s,
                    Some(prev) => prev.intersection(&s).cloned().collect(),
                });
            }
        }
        let Some(term_names) = term_names else {
            return Ok(None);
        };
        names.get_or_insert_with(BTreeSet::new).extend(term_names);
    }
    match names {
        Some(n) if n.is_empty() => Err("pod affinity terms conflict".to_owned()),
        other => Ok(other),
    }
}

/// NodeResourcesFit: the pod count and each requested resource against what is free.
fn fit_resources(req: &Resources, node: &NodeView, usage: &Usage) -> Option<Failure> {
    let mut mask = 0;
    let mut unresolvable = false;
    if usage.pods + 1 > node.allowed_pods {
        mask |= TOO_MANY_PODS;
    }
    let a = &node.allocatable;
    let used = &usage.requested;
    let mut check = |want: i64, capacity: i64, in_use: i64, bit: u8| {
        if want > 0 && want > capacity - in_use {
            mask |= bit;
            unresolvable |= want > capacity;
        }
    };
    check(req.milli_cpu, a.milli_cpu, used.milli_cpu, CPU);
    check(req.memory, a.memory, used.memory, MEMORY);
    check(
        req.ephemeral_storage,
        a.ephemeral_storage,
        used.ephemeral_storage,
        EPHEMERAL,
    );
    for (name, want) in &req.scalar {
        check(*want, a.scalar(name), used.scalar(name), SCALAR);
    }
    (mask != 0).then_some(Failure::Resources { mask, unresolvable })
}

/// The upstream reason strings for a failure, and whether preemption could help.
fn explain(failure: Failure, inc: &Incoming, slot: &Slot, node: &NodeView) -> (Vec<String>, bool) {
    let one = |s: &str, resolvable| (vec![s.to_owned()], resolvable);
    match failure {
        Failure::NotInPreFilter => one("node(s) didn't satisfy plugin(s) [NodeAffinity]", false),
        Failure::Unschedulable => one("node(s) were unschedulable", false),
        Failure::Taint(i) => {
            let t = &node.taints[i];
            let reason = format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            );
            (vec![reason], false)
        }
        Failure::NodeAffinity => one("node(s) didn't match Pod's node affinity/selector", false),
        Failure::Ports => one(
            "node(s) didn't have free ports for the requested pod ports",
            true,
        ),
        Failure::Resources { mask, unresolvable } => {
            let mut reasons = Vec::new();
            if mask & TOO_MANY_PODS != 0 {
                reasons.push("Too many pods".to_owned());
            }
            for (bit, name) in [
                (CPU, "cpu"),
                (MEMORY, "memory"),
                (EPHEMERAL, "ephemeral-storage"),
            ] {
                if mask & bit != 0 {
                    reasons.push(format!("Insufficient {name}"));
                }
            }
            if mask & SCALAR != 0 {
                for (name, want) in &inc.requests.resources.scalar {
                    if *want > 0
                        && *want > node.allocatable.scalar(name) - slot.usage.requested.scalar(name)
                    {
                        reasons.push(format!("Insufficient {name}"));
                    }
                }
            }
            (reasons, !unresolvable)
        }
        Failure::PodAffinity => one("node(s) didn't match pod affinity rules", false),
        Failure::AntiAffinity => one("node(s) didn't match pod anti-affinity rules", true),
        Failure::ExistingAntiAffinity => one(
            "node(s) didn't satisfy existing pods anti-affinity rules",
            true,
        ),
    }
}

/// Schedules one pod against a snapshot: `nodes` and the `bound_pods` already placed.
pub fn schedule(pod: &Pod, nodes: &[Node], bound_pods: &[Pod]) -> Result<String, Unschedulable> {
    Cluster::from_objects(nodes, bound_pods).schedule(pod)
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
