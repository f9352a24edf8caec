//! DaemonSet controller: one pod on every eligible node, replaced node by node when the
//! template changes.
//!
//! A node is eligible when the template's node selector and required node affinity match
//! it (the scheduler's own rules) and its `NoSchedule`/`NoExecute` taints are tolerated by
//! the template's tolerations plus those upstream gives every daemon pod (not-ready and
//! unreachable `NoExecute`; disk, memory and PID pressure and unschedulable `NoSchedule`;
//! network-unavailable for host-network pods). A pod keeps running on a node that only
//! gained an untolerated `NoSchedule` taint. New pods are pinned to their node with
//! required node affinity on `metadata.name` and bound by the scheduler. RollingUpdate
//! replaces old pods (`controller-revision-hash` label) keeping at most `maxUnavailable`
//! nodes without an available pod (default 1, percentages round up), or with `maxSurge`
//! starts the new pod before removing the old one.

use std::collections::BTreeMap;

use flotilla_scheduler::selectors::pod_matches_node_selector;
use flotilla_scheduler::taints::{NOT_READY, UNREACHABLE, UNSCHEDULABLE};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use crate::actions::{Action, Event, Status, reference};
use crate::hash::template_hash;
use crate::intstr::scaled;
use crate::pods::{
    self, controlled_by, controller_ref, is_active, is_available, is_ready, pod_from_template,
};

/// Label carrying the hash of the template a daemon pod was made from.
pub const REVISION_HASH: &str = "controller-revision-hash";

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some(effect.to_owned()),
        ..Toleration::default()
    }
}

/// The template's tolerations plus the ones every daemon pod gets.
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut t = spec.tolerations.clone().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        if !t
            .iter()
            .any(|x| x.key.as_deref() == Some(key) && x.effect.as_deref() == Some(effect))
        {
            t.push(toleration(key, effect));
        }
    };
    add(NOT_READY, "NoExecute");
    add(UNREACHABLE, "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add(UNSCHEDULABLE, "NoSchedule");
    if spec.host_network == Some(true) {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    t
}

/// (should run a new pod there, may keep running one there)
pub fn node_eligibility(spec: &PodSpec, node: &Node) -> (bool, bool) {
    let name = node.metadata.name.as_deref().unwrap_or("");
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if !pod_matches_node_selector(spec, name, &labels) {
        return (false, false);
    }
    let tolerations = daemon_tolerations(spec);
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let untolerated = |effect: &str| {
        taints
            .iter()
            .any(|t| t.effect == effect && !flotilla_scheduler::taints::tolerated(&tolerations, t))
    };
    let no_execute = untolerated("NoExecute");
    (!no_execute && !untolerated("NoSchedule"), !no_execute)
}

/// The node a daemon pod is for: where it is bound, else its `metadata.name` affinity.
pub fn target_node(p: &Pod) -> Option<String> {
    if let Some(n) = pods::node_name(p) {
        return Some(n.to_owned());
    }
    let terms = &p
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find_map(|r| {
            (r.key == "metadata.name" && r.operator == "In")
                .then(|| r.values.as_ref()?.first().cloned())
                .flatten()
        })
}

fn pin_to(spec: &mut PodSpec, node: &str) {
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".to_owned(),
                operator: "In".to_owned(),
                values: Some(vec![node.to_owned()]),
            }]),
            match_expressions: None,
        }],
    });
}

fn hash_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

fn oldest_first(v: &mut [&Pod]) {
    v.sort_by(|a, b| {
        let ca = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let cb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        ca.cmp(&cb).then_with(|| pods::name(a).cmp(pods::name(b)))
    });
}

/// One reconcile step of a DaemonSet, given all nodes and the pods of its namespace.
pub fn reconcile(ds: &DaemonSet, nodes: &[Node], all_pods: &[Pod], now: Timestamp) -> Vec<Action> {
    let mut actions = Vec::new();
    let Some(spec) = ds.spec.as_ref() else {
        return actions;
    };
    let Some(template_spec) = spec.template.spec.as_ref() else {
        return actions;
    };
    let uid = ds.metadata.uid.as_deref().unwrap_or("");
    let ns = ds.metadata.namespace.as_deref().unwrap_or("default");
    let name = ds.metadata.name.as_deref().unwrap_or("");
    let me = reference("apps/v1", "DaemonSet", &ds.metadata);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let hash = template_hash(
        &spec.template,
        ds.status.as_ref().and_then(|s| s.collision_count),
    );
    let strategy = spec.update_strategy.as_ref();
    let on_delete = strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete");
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    let deleting = ds.metadata.deletion_timestamp.is_some();

    let owned: Vec<&Pod> = all_pods
        .iter()
        .filter(|p| controlled_by(&p.metadata, uid))
        .collect();
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in &owned {
        if let Some(n) = target_node(p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let delete = |actions: &mut Vec<Action>, p: &Pod| {
        actions.push(Action::DeletePod {
            namespace: pods::namespace(p).to_owned(),
            name: pods::name(p).to_owned(),
        });
        actions.push(Action::Event(Event::normal(
            me.clone(),
            "SuccessfulDelete",
            format!("Deleted pod: {}", pods::name(p)),
        )));
    };
    let create = |actions: &mut Vec<Action>, node: &str| {
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(REVISION_HASH.to_owned(), hash.clone());
        let mut pod = pod_from_template(
            &template,
            ns,
            name,
            controller_ref("apps/v1", "DaemonSet", &ds.metadata),
        );
        if let Some(s) = pod.spec.as_mut() {
            s.tolerations = Some(daemon_tolerations(s));
            pin_to(s, node);
        }
        actions.push(Action::CreatePod {
            pod: Box::new(pod),
            owner: me.clone(),
        });
    };

    let (mut desired, mut current, mut misscheduled, mut ready, mut available, mut updated) =
        (0, 0, 0, 0, 0, 0);
    let mut unavailable = 0;
    let mut surging = 0;
    // Nodes whose only pods are old: (node, oldest old pod, is it available).
    let mut old_only: Vec<(String, &Pod, bool)> = Vec::new();
    let no_pods = Vec::new();

    for node in nodes {
        let Some(node_name) = node.metadata.name.as_deref() else {
            continue;
        };
        let (should_run, may_continue) = node_eligibility(template_spec, node);
        let here = by_node.get(node_name).unwrap_or(&no_pods);
        for p in here
            .iter()
            .filter(|p| pods::phase(p) == "Failed" && p.metadata.deletion_timestamp.is_none())
        {
            delete(&mut actions, p);
        }
        let mut active: Vec<&Pod> = here.iter().copied().filter(|p| is_active(p)).collect();
        oldest_first(&mut active);
        if should_run {
            desired += 1;
        }
        if !active.is_empty() {
            if should_run {
                current += 1;
            } else {
                misscheduled += 1;
            }
        }
        if deleting {
            continue;
        }
        if !may_continue {
            for p in &active {
                delete(&mut actions, p);
            }
            continue;
        }
        if !should_run && active.is_empty() {
            continue;
        }
        let (new, old): (Vec<&Pod>, Vec<&Pod>) = active
            .iter()
            .partition(|p| hash_of(p) == Some(hash.as_str()));
        let best = new.first().or(old.first()).copied();
        if should_run {
            match best {
                Some(p) if is_available(p, min_ready, now) => available += 1,
                _ => unavailable += 1,
            }
            if best.is_some_and(is_ready) {
                ready += 1;
            }
            if !new.is_empty() {
                updated += 1;
            }
        }
        if active.is_empty() {
            create(&mut actions, node_name);
            continue;
        }
        if on_delete {
            for p in active.iter().skip(1) {
                delete(&mut actions, p);
            }
            continue;
        }
        for p in new.iter().skip(1) {
            delete(&mut actions, p);
        }
        match (new.first(), old.is_empty()) {
            (_, true) => {}
            (Some(n), false) => {
                // A surge pod is up: the old ones go once it is available.
                surging += 1;
                if is_available(n, min_ready, now) {
                    for p in &old {
                        delete(&mut actions, p);
                    }
                }
            }
            (None, false) => {
                for p in old.iter().skip(1) {
                    delete(&mut actions, p);
                }
                old_only.push((
                    node_name.to_owned(),
                    old[0],
                    is_available(old[0], min_ready, now),
                ));
            }
        }
    }

    // Pods for nodes that left the cluster go too.
    if !deleting {
        for (node, here) in &by_node {
            if !nodes
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(node))
            {
                for p in here.iter().filter(|p| is_active(p)) {
                    delete(&mut actions, p);
                }
            }
        }
    }

    if !deleting && !on_delete {
        let one = IntOrString::Int(1);
        let zero = IntOrString::Int(0);
        let max_surge = scaled(
            ru.and_then(|r| r.max_surge.as_ref()).unwrap_or(&zero),
            desired,
            true,
        )
        .unwrap_or(0);
        let mut max_unavailable = scaled(
            ru.and_then(|r| r.max_unavailable.as_ref()).unwrap_or(&one),
            desired,
            true,
        )
        .unwrap_or(1);
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        for (node, pod, available) in old_only {
            if !available {
                delete(&mut actions, pod);
            } else if max_surge > 0 {
                if surging < max_surge {
                    create(&mut actions, &node);
                    surging += 1;
                }
            } else if unavailable < max_unavailable {
                delete(&mut actions, pod);
                unavailable += 1;
            }
        }
    }

    let status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        desired_number_scheduled: desired,
        current_number_scheduled: current,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some(desired - available),
        updated_number_scheduled: Some(updated),
    };
    if ds.status.as_ref() != Some(&status) {
        actions.push(Action::UpdateStatus(Box::new(Status::DaemonSet(status))));
    }
    actions
}

#[cfg(test)]
#[path = "daemonset_tests.rs"]
mod tests;
