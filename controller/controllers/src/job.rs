//! Job controller: run pods to completion.
//!
//! Keeps up to `parallelism` pods active until `completions` pods succeeded (or, without
//! `completions`, until one succeeded and the rest finished). Failed pods are replaced
//! after an exponential back-off (10 s doubling, capped at 6 min) until more than
//! `backoffLimit` (default 6) failed (with `restartPolicy: OnFailure`, until the
//! container restarts reach it); a job active longer than `activeDeadlineSeconds`
//! fails too. Conditions and reasons follow upstream: `SuccessCriteriaMet` then `Complete`
//! (`CompletionsReached`), `FailureTarget` then `Failed` (`BackoffLimitExceeded`,
//! `DeadlineExceeded`). A finished job is deleted `ttlSecondsAfterFinished` after it
//! finished. Only NonIndexed completion mode is handled.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::actions::{Action, Event, Status, reference};
use crate::pods::{self, controlled_by, controller_ref, is_active, is_ready};
use crate::replicaset::deletion_order;

const DEFAULT_BACKOFF_LIMIT: i32 = 6;
const BACKOFF_BASE_SECONDS: i64 = 10;
const BACKOFF_MAX_SECONDS: i64 = 360;

fn finished_condition(job: &Job) -> Option<&JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// When a failed pod finished: its last container's end, else its creation.
fn failed_at(p: &Pod) -> Option<Timestamp> {
    let ends = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| {
            c.state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
                .map(|t| t.0)
        });
    ends.max()
        .or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// One reconcile step of a Job, given the pods of its namespace.
pub fn reconcile(job: &Job, all_pods: &[Pod], now: Timestamp) -> Vec<Action> {
    let mut actions = Vec::new();
    let Some(spec) = job.spec.as_ref() else {
        return actions;
    };
    let uid = job.metadata.uid.as_deref().unwrap_or("");
    let ns = job.metadata.namespace.as_deref().unwrap_or("default");
    let name = job.metadata.name.as_deref().unwrap_or("");
    let me = reference("batch/v1", "Job", &job.metadata);
    let owned: Vec<&Pod> = all_pods
        .iter()
        .filter(|p| controlled_by(&p.metadata, uid))
        .collect();
    let active: Vec<&Pod> = owned.iter().copied().filter(|p| is_active(p)).collect();
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

    // A finished job only waits for its TTL (and clears out stragglers).
    if let Some(done) = finished_condition(job) {
        for p in &active {
            delete(&mut actions, p);
        }
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let finished = job
                .status
                .as_ref()
                .and_then(|s| s.completion_time.as_ref())
                .or(done.last_transition_time.as_ref())
                .map_or(now.as_second(), |t| t.0.as_second());
            let due = finished + i64::from(ttl);
            if due <= now.as_second() {
                actions.push(Action::DeleteJob {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                });
            } else {
                actions.push(Action::Requeue(Duration::from_secs(
                    (due - now.as_second()) as u64,
                )));
            }
        }
        return actions;
    }

    let old = job.status.clone().unwrap_or_default();
    let count = |phase: &str| owned.iter().filter(|p| pods::phase(p) == phase).count() as i32;
    let succeeded = count("Succeeded").max(old.succeeded.unwrap_or(0));
    let failed = count("Failed").max(old.failed.unwrap_or(0));
    let start = old.start_time.as_ref().map_or(now, |t| t.0);
    let mut status = JobStatus {
        active: Some(active.len() as i32),
        ready: Some(active.iter().filter(|p| is_ready(p)).count() as i32),
        succeeded: Some(succeeded),
        failed: Some(failed),
        start_time: Some(Time(start)),
        terminating: old.terminating,
        conditions: old.conditions.clone(),
        ..JobStatus::default()
    };
    let backoff_limit = spec.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT);
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let suspended = spec.suspend.unwrap_or(false);

    // With restartPolicy OnFailure, failures show as container restarts in running pods.
    let on_failure_restarts: i32 = if spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure")
    {
        owned
            .iter()
            .filter(|p| matches!(pods::phase(p), "Running" | "Pending"))
            .map(|p| {
                let st = p.status.as_ref();
                let sum = |cs: Option<&Vec<k8s_openapi::api::core::v1::ContainerStatus>>| -> i32 {
                    cs.map(|cs| cs.iter().map(|c| c.restart_count).sum())
                        .unwrap_or(0)
                };
                sum(st.and_then(|s| s.container_statuses.as_ref()))
                    + sum(st.and_then(|s| s.init_container_statuses.as_ref()))
            })
            .sum()
    } else {
        0
    };
    let restarts_exceed =
        on_failure_restarts > 0 && (backoff_limit == 0 || on_failure_restarts >= backoff_limit);
    let failure = if failed > backoff_limit || restarts_exceed {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if spec
        .active_deadline_seconds
        .is_some_and(|ads| start.as_second() + ads <= now.as_second())
        && !suspended
    {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else {
        None
    };
    let complete = match spec.completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };

    if let Some((reason, message)) = failure {
        for p in &active {
            delete(&mut actions, p);
        }
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        conditions.push(condition("FailureTarget", reason, message, now));
        conditions.push(condition("Failed", reason, message, now));
        status.active = Some(0);
        status.ready = Some(0);
        actions.push(Action::Event(Event::warning(me.clone(), reason, message)));
    } else if complete {
        for p in &active {
            delete(&mut actions, p);
        }
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let message = "Reached expected number of succeeded pods";
        conditions.push(condition(
            "SuccessCriteriaMet",
            "CompletionsReached",
            message,
            now,
        ));
        conditions.push(condition("Complete", "CompletionsReached", message, now));
        status.completion_time = Some(Time(now));
        status.active = Some(0);
        status.ready = Some(0);
        actions.push(Action::Event(Event::normal(
            me.clone(),
            "Completed",
            "Job completed",
        )));
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            actions.push(Action::Requeue(Duration::from_secs(
                u64::try_from(ttl).unwrap_or(0),
            )));
        }
    } else {
        let want = if suspended {
            0
        } else {
            match spec.completions {
                Some(c) => parallelism.min(c - succeeded),
                None if succeeded > 0 => active.len() as i32,
                None => parallelism,
            }
        }
        .max(0) as usize;
        if active.len() > want {
            for p in deletion_order(&active, now)
                .into_iter()
                .take(active.len() - want)
            {
                delete(&mut actions, p);
            }
        } else if active.len() < want {
            // Wait out the back-off after failures before replacing pods.
            let last_failure = owned
                .iter()
                .filter(|p| pods::phase(p) == "Failed")
                .filter_map(|p| failed_at(p))
                .max();
            let delay = if failed > 0 {
                (BACKOFF_BASE_SECONDS << (failed - 1).min(10)).min(BACKOFF_MAX_SECONDS)
            } else {
                0
            };
            let ready_at = last_failure.map_or(0, |t| t.as_second() + delay);
            if ready_at > now.as_second() {
                actions.push(Action::Requeue(Duration::from_secs(
                    (ready_at - now.as_second()) as u64,
                )));
            } else {
                let mut template = spec.template.clone();
                let labels = template
                    .metadata
                    .get_or_insert_with(Default::default)
                    .labels
                    .get_or_insert_with(BTreeMap::new);
                for (k, v) in [
                    ("batch.kubernetes.io/controller-uid", uid),
                    ("batch.kubernetes.io/job-name", name),
                    ("controller-uid", uid),
                    ("job-name", name),
                ] {
                    labels.insert(k.to_owned(), v.to_owned());
                }
                let owner = controller_ref("batch/v1", "Job", &job.metadata);
                let missing = want - active.len();
                actions.extend(pods::creations(&template, ns, name, &owner, &me, missing));
            }
        }
        if let Some(ads) = spec.active_deadline_seconds.filter(|_| !suspended) {
            let left = start.as_second() + ads - now.as_second();
            actions.push(Action::Requeue(Duration::from_secs(left.max(1) as u64)));
        }
    }
    if job.status.as_ref() != Some(&status) {
        actions.push(Action::UpdateStatus(Box::new(Status::Job(status))));
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::{at, from, pod};
    use serde_json::{Value, json};

    fn job(extra: Value) -> Job {
        let mut spec = json!({"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        from(
            json!({"metadata": {"name": "pi", "namespace": "default", "uid": "job-uid"}, "spec": spec}),
        )
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(at("2026-01-01T00:00:00Z").as_second() + secs).unwrap()
    }

    fn job_pod(name: &str, phase: &str) -> Pod {
        from(pod(name, "job-uid", phase, phase == "Running", Some("n1")))
    }

    fn creates(a: &[Action]) -> usize {
        a.iter()
            .filter(|a| matches!(a, Action::CreatePod { .. }))
            .count()
    }

    fn status(a: &[Action]) -> JobStatus {
        a.iter()
            .find_map(|a| match a {
                Action::UpdateStatus(s) => match &**s {
                    Status::Job(s) => Some(s.clone()),
                    _ => None,
                },
                _ => None,
            })
            .expect("a status update")
    }

    fn with_status(mut j: Job, a: &[Action]) -> Job {
        j.status = Some(status(a));
        j
    }

    #[test]
    fn runs_parallelism_pods_until_completions() {
        let j = job(json!({"completions": 5, "parallelism": 2}));
        let a = reconcile(&j, &[], t(0));
        assert_eq!(creates(&a), 2);
        let Some(Action::CreatePod { pod, .. }) = a.first() else {
            panic!()
        };
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["batch.kubernetes.io/controller-uid"], "job-uid");
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("pi-"));
        let j = with_status(j, &a);
        // Four done, one running: nothing more to start.
        let pods: Vec<Pod> = (0..4)
            .map(|i| job_pod(&format!("p{i}"), "Succeeded"))
            .chain([job_pod("p4", "Running")])
            .collect();
        let a = reconcile(&j, &pods, t(10));
        assert_eq!(creates(&a), 0);
        assert_eq!(status(&a).succeeded, Some(4));
        // Three done: two may run, one is running.
        let a = reconcile(&j, &pods[1..], t(10));
        assert_eq!(creates(&a), 1);
    }

    #[test]
    fn completes_with_upstream_conditions() {
        let j = job(json!({"completions": 2, "parallelism": 2}));
        let pods = vec![job_pod("a", "Succeeded"), job_pod("b", "Succeeded")];
        let a = reconcile(&j, &pods, t(30));
        let s = status(&a);
        let types: Vec<(&str, &str)> = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| (c.type_.as_str(), c.reason.as_deref().unwrap()))
            .collect();
        assert_eq!(
            types,
            [
                ("SuccessCriteriaMet", "CompletionsReached"),
                ("Complete", "CompletionsReached")
            ]
        );
        assert_eq!(s.completion_time, Some(Time(t(30))));
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::Event(e) if e.reason == "Completed"))
        );
    }

    #[test]
    fn without_completions_one_success_finishes_once_others_are_done() {
        let j = job(json!({"parallelism": 3}));
        let a = reconcile(
            &j,
            &[job_pod("a", "Succeeded"), job_pod("b", "Running")],
            t(0),
        );
        assert_eq!(creates(&a), 0);
        assert!(status(&a).conditions.is_none());
        let a = reconcile(
            &j,
            &[job_pod("a", "Succeeded"), job_pod("b", "Succeeded")],
            t(0),
        );
        assert!(
            status(&a)
                .conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == "Complete")
        );
    }

    #[test]
    fn failures_back_off_then_exceed_the_limit() {
        let j = job(json!({"backoffLimit": 2}));
        let mut failed = pod("f1", "job-uid", "Failed", false, Some("n1"));
        failed["status"]["containerStatuses"] = json!([{"name": "c", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "finishedAt": t(100).to_string()}}}]);
        let pods = vec![from::<Pod>(failed.clone())];
        let a = reconcile(&j, &pods, t(105));
        assert_eq!(creates(&a), 0, "still backing off");
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::Requeue(d) if d.as_secs() == 5))
        );
        assert_eq!(creates(&reconcile(&j, &pods, t(110))), 1);

        let three: Vec<Pod> = (0..3)
            .map(|i| job_pod(&format!("f{i}"), "Failed"))
            .chain([job_pod("r", "Running")])
            .collect();
        let a = reconcile(&j, &three, t(1000));
        let s = status(&a);
        let failed_cond = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Failed")
            .unwrap();
        assert_eq!(failed_cond.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(
            failed_cond.message.as_deref(),
            Some("Job has reached the specified backoff limit")
        );
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::DeletePod { name, .. } if name == "r"))
        );
        assert_eq!(s.active, Some(0));
    }

    #[test]
    fn on_failure_restarts_count_against_the_backoff_limit() {
        let mut j = job(json!({"backoffLimit": 3}));
        j.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = Some("OnFailure".into());
        let mut p = pod("p", "job-uid", "Running", false, Some("n1"));
        let restarts = |n: i32| json!([{"name": "c", "image": "x", "imageID": "", "ready": false, "restartCount": n}]);
        p["status"]["containerStatuses"] = restarts(2);
        let a = reconcile(&j, &[from(p.clone())], t(0));
        assert!(status(&a).conditions.is_none());
        p["status"]["containerStatuses"] = restarts(3);
        let a = reconcile(&j, &[from(p)], t(0));
        assert!(status(&a).conditions.unwrap().iter().any(|c| c.type_ == "Failed" && c.reason.as_deref() == Some("BackoffLimitExceeded")));
    }

    #[test]
    fn the_active_deadline_fails_the_job() {
        let j = job(json!({"activeDeadlineSeconds": 60, "parallelism": 1}));
        let a = reconcile(&j, &[], t(0));
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::Requeue(d) if d.as_secs() == 60))
        );
        let j = with_status(j, &a);
        let a = reconcile(&j, &[job_pod("p", "Running")], t(60));
        let s = status(&a);
        assert!(
            s.conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == "Failed" && c.reason.as_deref() == Some("DeadlineExceeded"))
        );
        assert!(a.iter().any(|a| matches!(a, Action::DeletePod { .. })));
        assert!(a.iter().any(|a| matches!(a, Action::Event(e) if e.reason == "DeadlineExceeded" && e.message == "Job was active longer than specified deadline")));
    }

    #[test]
    fn finished_jobs_are_deleted_after_their_ttl() {
        let j = job(json!({"completions": 1, "ttlSecondsAfterFinished": 100}));
        let a = reconcile(&j, &[job_pod("a", "Succeeded")], t(0));
        let j = with_status(j, &a);
        let a = reconcile(&j, &[job_pod("a", "Succeeded")], t(50));
        assert_eq!(a, vec![Action::Requeue(Duration::from_secs(50))]);
        let a = reconcile(&j, &[job_pod("a", "Succeeded")], t(100));
        assert_eq!(
            a,
            vec![Action::DeleteJob {
                namespace: "default".into(),
                name: "pi".into()
            }]
        );
    }

    #[test]
    fn lowering_parallelism_deletes_extra_pods_and_suspend_stops_all() {
        let j = job(json!({"completions": 10, "parallelism": 1}));
        let pods = vec![job_pod("a", "Running"), job_pod("b", "Running")];
        assert_eq!(
            reconcile(&j, &pods, t(0))
                .iter()
                .filter(|a| matches!(a, Action::DeletePod { .. }))
                .count(),
            1
        );
        let j = job(json!({"completions": 10, "parallelism": 4, "suspend": true}));
        assert_eq!(
            reconcile(&j, &pods, t(0))
                .iter()
                .filter(|a| matches!(a, Action::DeletePod { .. }))
                .count(),
            2
        );
    }
}
