//! Endpoints controller: the addresses of the pods behind each service.
//!
//! For a service with a selector, every pod of its namespace that the selector matches,
//! has an IP and is not finished or terminating becomes an address — under `addresses`
//! when Ready (or when the service publishes not-ready addresses), else under
//! `notReadyAddresses`. Each service port maps to the pod's port: `targetPort` as a
//! number, as a container port name looked up in the pod (pods without that name are
//! left out of that port), or the service port itself when unset. Pods with the same
//! resolved ports share a subset. Services without a selector are left to their users.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Pod, Service, ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::actions::{Action, reference};
use crate::pods;
use flotilla_scheduler::selectors::map_selector_matches;

/// Label on the Endpoints of a headless service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

fn should_be_in_endpoints(p: &Pod) -> bool {
    let has_ip = p
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty());
    let finished = match p.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => matches!(pods::phase(p), "Succeeded" | "Failed"),
        Some("OnFailure") => pods::phase(p) == "Succeeded",
        _ => matches!(pods::phase(p), "Succeeded" | "Failed"),
    };
    has_ip && !finished && p.metadata.deletion_timestamp.is_none()
}

/// The pod's port for one service port, or `None` when a named port is missing.
fn resolve_port(p: &Pod, sp: &ServicePort) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(0)) => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let protocol = sp.protocol.as_deref().unwrap_or("TCP");
            p.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find_map(|cp| {
                    (cp.name.as_deref() == Some(name)
                        && cp.protocol.as_deref().unwrap_or("TCP") == protocol)
                        .then_some(cp.container_port)
                })
        }
    }
}

/// The Endpoints a service should have now, or `None` for a service without selector.
pub fn desired(svc: &Service, all_pods: &[Pod]) -> Option<Endpoints> {
    let spec = svc.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let service_ports = spec.ports.clone().unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");

    // Port set -> (ready addresses, not ready addresses).
    type Group = (Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut groups: BTreeMap<Vec<(Option<String>, i32, String)>, Group> = BTreeMap::new();
    for p in all_pods {
        if pods::namespace(p) != namespace
            || !map_selector_matches(
                selector,
                p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
            )
            || !should_be_in_endpoints(p)
        {
            continue;
        }
        let ports: Vec<(Option<String>, i32, String)> = service_ports
            .iter()
            .filter_map(|sp| {
                resolve_port(p, sp).map(|n| {
                    (
                        sp.name.clone(),
                        n,
                        sp.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                    )
                })
            })
            .collect();
        if ports.is_empty() && !service_ports.is_empty() {
            continue;
        }
        let pspec = p.spec.as_ref();
        let svc_name = svc.metadata.name.as_deref();
        let hostname = pspec
            .and_then(|s| s.hostname.clone())
            .filter(|_| pspec.and_then(|s| s.subdomain.as_deref()) == svc_name);
        let address = EndpointAddress {
            ip: p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default(),
            hostname,
            node_name: pods::node_name(p).map(str::to_owned),
            target_ref: Some(reference("v1", "Pod", &p.metadata)),
        };
        let group = groups.entry(ports).or_default();
        if publish_not_ready || pods::is_ready(p) {
            group.0.push(address);
        } else {
            group.1.push(address);
        }
    }
    let subsets: Vec<EndpointSubset> = groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            let service_port =
                |name: &Option<String>| service_ports.iter().find(|sp| &sp.name == name);
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: name.clone(),
                            port: *port,
                            protocol: Some(protocol.clone()),
                            app_protocol: service_port(name).and_then(|sp| sp.app_protocol.clone()),
                        })
                        .collect()
                }),
            }
        })
        .collect();
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if headless {
        labels.insert(HEADLESS_LABEL.to_owned(), String::new());
    }
    Some(Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: Some(namespace.to_owned()),
            labels: (!labels.is_empty()).then_some(labels),
            ..ObjectMeta::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    })
}

/// One reconcile step for a service: write its Endpoints when they differ.
pub fn reconcile(svc: &Service, existing: Option<&Endpoints>, all_pods: &[Pod]) -> Vec<Action> {
    let Some(want) = desired(svc, all_pods) else {
        return vec![];
    };
    let same = existing
        .is_some_and(|e| e.subsets == want.subsets && e.metadata.labels == want.metadata.labels);
    if same {
        return vec![];
    }
    let mut put = want;
    if let Some(e) = existing {
        // Keep identity and everything else the store knows about the object.
        let mut meta = e.metadata.clone();
        meta.labels = put.metadata.labels.take();
        put.metadata = meta;
    }
    vec![Action::PutEndpoints(Box::new(put))]
}

/// The Endpoints of a deleted service go too.
pub fn reconcile_deleted(existing: &Endpoints) -> Vec<Action> {
    vec![Action::DeleteEndpoints {
        namespace: existing.metadata.namespace.clone().unwrap_or_default(),
        name: existing.metadata.name.clone().unwrap_or_default(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::{from, pod};
    use serde_json::{Value, json};

    fn service(spec: Value) -> Service {
        from(
            json!({"metadata": {"name": "web", "namespace": "default", "labels": {"team": "a"}}, "spec": spec}),
        )
    }

    fn web_pod(name: &str, ip: &str, ready: bool) -> Value {
        let mut p = pod(name, "rs", "Running", ready, Some("n1"));
        p["metadata"]["labels"] = json!({"app": "web"});
        p["status"]["podIP"] = json!(ip);
        p["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 8080}]);
        p
    }

    fn pods(vs: Vec<Value>) -> Vec<Pod> {
        vs.into_iter().map(from).collect()
    }

    #[test]
    fn ready_and_not_ready_pods_with_ports_by_name_and_number() {
        let svc = service(json!({"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "metrics", "port": 9090, "targetPort": 9100}
        ]}));
        let mut other = web_pod("other", "10.42.0.9", true);
        other["metadata"]["labels"] = json!({"app": "db"});
        let mut done = web_pod("done", "10.42.0.8", false);
        done["status"]["phase"] = json!("Succeeded");
        let ps = pods(vec![
            web_pod("b", "10.42.0.3", true),
            web_pod("a", "10.42.0.2", true),
            web_pod("c", "10.42.0.4", false),
            other,
            done,
        ]);
        let e = desired(&svc, &ps).unwrap();
        let subsets = e.subsets.unwrap();
        assert_eq!(subsets.len(), 1);
        let s = &subsets[0];
        let ips: Vec<&str> = s
            .addresses
            .as_ref()
            .unwrap()
            .iter()
            .map(|a| a.ip.as_str())
            .collect();
        assert_eq!(ips, ["10.42.0.2", "10.42.0.3"]);
        assert_eq!(s.not_ready_addresses.as_ref().unwrap()[0].ip, "10.42.0.4");
        let ports: Vec<(Option<&str>, i32)> = s
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.as_deref(), p.port))
            .collect();
        assert_eq!(ports, [(Some("http"), 8080), (Some("metrics"), 9100)]);
        let a = &s.addresses.as_ref().unwrap()[0];
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        assert_eq!(a.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));
        assert_eq!(e.metadata.labels.unwrap()["team"], "a");
    }

    #[test]
    fn pods_missing_a_named_port_form_their_own_subset() {
        let svc = service(json!({"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "http"}, {"name": "raw", "port": 81}]}));
        let mut unnamed = web_pod("old", "10.42.0.7", true);
        unnamed["spec"]["containers"][0]["ports"] = json!([]);
        let e = desired(
            &svc,
            &pods(vec![web_pod("new", "10.42.0.2", true), unnamed]),
        )
        .unwrap();
        let subsets = e.subsets.unwrap();
        assert_eq!(subsets.len(), 2);
        let by_ports: Vec<usize> = subsets
            .iter()
            .map(|s| s.ports.as_ref().unwrap().len())
            .collect();
        assert!(
            by_ports.contains(&1) && by_ports.contains(&2),
            "{by_ports:?}"
        );
    }

    #[test]
    fn pods_without_ip_or_terminating_are_left_out() {
        let svc = service(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
        let mut no_ip = web_pod("x", "", true);
        no_ip["status"].as_object_mut().unwrap().remove("podIP");
        let mut leaving = web_pod("y", "10.42.0.5", true);
        leaving["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let e = desired(&svc, &pods(vec![no_ip, leaving])).unwrap();
        assert!(e.subsets.is_none());
    }

    #[test]
    fn publish_not_ready_addresses_and_headless_services() {
        let svc = service(
            json!({"selector": {"app": "web"}, "clusterIP": "None", "publishNotReadyAddresses": true}),
        );
        let e = desired(&svc, &pods(vec![web_pod("a", "10.42.0.2", false)])).unwrap();
        let s = &e.subsets.as_ref().unwrap()[0];
        assert_eq!(s.addresses.as_ref().unwrap().len(), 1);
        assert!(s.ports.is_none());
        assert!(e.metadata.labels.unwrap().contains_key(HEADLESS_LABEL));
    }

    #[test]
    fn writes_only_on_change_and_ignores_selectorless_services() {
        let svc = service(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
        let ps = pods(vec![web_pod("a", "10.42.0.2", true)]);
        let actions = reconcile(&svc, None, &ps);
        let [Action::PutEndpoints(e)] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert!(reconcile(&svc, Some(e), &ps).is_empty());
        let ps2 = pods(vec![
            web_pod("a", "10.42.0.2", true),
            web_pod("b", "10.42.0.3", true),
        ]);
        assert_eq!(reconcile(&svc, Some(e), &ps2).len(), 1);
        assert!(reconcile(&service(json!({"ports": [{"port": 80}]})), None, &ps).is_empty());
        assert!(
            matches!(&reconcile_deleted(e)[..], [Action::DeleteEndpoints { name, .. }] if name == "web")
        );
    }
}
