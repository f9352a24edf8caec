//! The scheduler's decision for one pod turned into actions: bind it and record
//! `Scheduled`, or write `PodScheduled=False` and record `FailedScheduling` — the
//! messages kube-scheduler writes, once per verdict (a retry that reaches the same
//! message does nothing). The driver retries unschedulable pods when
//! [`Cluster::version`] moves.

use flotilla_scheduler::Cluster;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::actions::{Action, Event, reference};
use crate::pods;

/// Decides where `pod` goes; on success the cluster counts it there at once, so the next
/// decision sees it even before the binding comes back through the watch.
pub fn schedule(cluster: &mut Cluster, pod: &Pod, now: Timestamp) -> Vec<Action> {
    let (ns, name) = (pods::namespace(pod).to_owned(), pods::name(pod).to_owned());
    let me = reference("v1", "Pod", &pod.metadata);
    match cluster.schedule(pod) {
        Ok(node) => {
            cluster.assume(pod, &node);
            let message = format!("Successfully assigned {ns}/{name} to {node}");
            vec![
                Action::BindPod {
                    namespace: ns,
                    name,
                    node,
                },
                Action::Event(Event::normal(me, "Scheduled", message)),
            ]
        }
        Err(u) => {
            let mut condition = u.condition();
            condition.last_transition_time = Some(Time(now));
            let message = u.message.clone();
            let unchanged = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
                .is_some_and(|c| {
                    c.status == "False" && c.message.as_deref() == Some(message.as_str())
                });
            // The same verdict again changes nothing and says nothing new (kube-scheduler's
            // event recorder folds repeats too).
            if unchanged {
                return Vec::new();
            }
            vec![
                Action::SetPodCondition {
                    namespace: ns,
                    name,
                    condition,
                },
                Action::Event(Event::warning(me, "FailedScheduling", message)),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::{at, from};
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    fn node(name: &str) -> Node {
        from(json!({"metadata": {"name": name}, "status": {
            "allocatable": {"cpu": "1", "memory": "1Gi", "pods": "10"},
            "conditions": [{"type": "Ready", "status": "True"}]}}))
    }

    fn pod(name: &str, cpu: &str) -> Pod {
        from(json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}))
    }

    #[test]
    fn binds_and_records_scheduled() {
        let mut c = Cluster::from_objects(&[node("n1")], &[]);
        let a = schedule(&mut c, &pod("web", "600m"), at("2026-01-01T00:00:00Z"));
        assert_eq!(
            a[0],
            Action::BindPod {
                namespace: "default".into(),
                name: "web".into(),
                node: "n1".into()
            }
        );
        assert!(
            matches!(&a[1], Action::Event(e) if e.reason == "Scheduled" && e.message == "Successfully assigned default/web to n1")
        );
        // The second pod sees the first one's request right away.
        let a = schedule(&mut c, &pod("web2", "600m"), at("2026-01-01T00:00:00Z"));
        let Action::SetPodCondition { condition, .. } = &a[0] else {
            panic!("{a:?}")
        };
        assert_eq!(condition.reason.as_deref(), Some("Unschedulable"));
        let message = "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod..";
        assert_eq!(condition.message.as_deref(), Some(message));
        assert!(
            matches!(&a[1], Action::Event(e) if e.reason == "FailedScheduling" && e.message == message && e.type_ == crate::EventType::Warning)
        );
    }

    #[test]
    fn an_unchanged_verdict_is_neither_rewritten_nor_reported_again() {
        let mut c = Cluster::from_objects(&[node("n1")], &[]);
        let mut p = pod("big", "2");
        let a = schedule(&mut c, &p, at("2026-01-01T00:00:00Z"));
        let Action::SetPodCondition { condition, .. } = &a[0] else {
            panic!()
        };
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            conditions: Some(vec![condition.clone()]),
            ..Default::default()
        });
        let a = schedule(&mut c, &p, at("2026-01-01T00:01:00Z"));
        assert!(a.is_empty(), "no condition rewrite and no new event: {a:?}");
        // A different verdict (another node joined, still too small) is written again.
        c.upsert_node(&node("n2"));
        let a = schedule(&mut c, &p, at("2026-01-01T00:02:00Z"));
        assert!(matches!(&a[0], Action::SetPodCondition { .. }), "{a:?}");
        assert!(matches!(&a[1], Action::Event(e) if e.reason == "FailedScheduling"));
    }
}
