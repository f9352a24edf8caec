//! Shared by the store benchmarks: a realistic pod body, RSS readings, medians.

#![allow(dead_code)]

pub fn pod_json(ns: &str, name: &str) -> Vec<u8> {
    // About the size of a small Deployment-made pod with status (≈1.6 KB).
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"{ns}","uid":"6a1f3c2e-{name:0>12}","labels":{{"app":"web","pod-template-hash":"7d4b9c8f6"}},"ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d4b9c8f6","uid":"0b7e2c1a-9f3d-4e5b-8a6c-1d2e3f4a5b6c","controller":true,"blockOwnerDeletion":true}}],"creationTimestamp":"2026-01-01T00:00:00Z"}},"spec":{{"containers":[{{"name":"web","image":"registry.local/web:1.2.3","ports":[{{"containerPort":8080,"protocol":"TCP"}}],"resources":{{"requests":{{"cpu":"50m","memory":"32Mi"}},"limits":{{"memory":"64Mi"}}}},"readinessProbe":{{"httpGet":{{"path":"/healthz","port":8080}},"periodSeconds":5}},"terminationMessagePath":"/dev/termination-log","imagePullPolicy":"IfNotPresent"}}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","nodeName":"node-17","schedulerName":"default-scheduler","tolerations":[{{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}}]}},"status":{{"phase":"Running","conditions":[{{"type":"Ready","status":"True","lastTransitionTime":"2026-01-01T00:00:05Z"}},{{"type":"ContainersReady","status":"True","lastTransitionTime":"2026-01-01T00:00:05Z"}},{{"type":"PodScheduled","status":"True","lastTransitionTime":"2026-01-01T00:00:00Z"}}],"hostIP":"10.0.0.17","podIP":"10.42.17.23","podIPs":[{{"ip":"10.42.17.23"}}],"startTime":"2026-01-01T00:00:01Z","containerStatuses":[{{"name":"web","ready":true,"restartCount":0,"image":"registry.local/web:1.2.3","imageID":"sha256:4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0","containerID":"flotilla://{name}","started":true,"state":{{"running":{{"startedAt":"2026-01-01T00:00:04Z"}}}}}}],"qosClass":"Burstable"}}}}"#
    )
    .into_bytes()
}

pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// VmRSS of another process, in KiB.
pub fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
