//! API discovery: /version, /api, /apis and the APIResourceLists kubectl reads to map
//! kinds to resources (verbs, short names, categories, subresources).

use super::registry::{self, GROUPS, Resource};
use super::status::{ApiError, ApiResult};
use serde_json::{Value, json};

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-flotilla",
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "n/a", "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH),
        "emulationMajor": "1", "emulationMinor": "33",
    })
}

pub fn core_versions(addr: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]})
}

fn group_json(g: &str, v: &str) -> Value {
    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn groups() -> Value {
    let groups: Vec<Value> = GROUPS.iter().map(|(g, v)| group_json(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(g: &str) -> ApiResult<Value> {
    let (g, v) = GROUPS.iter().find(|(name, _)| *name == g).ok_or_else(|| {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    })?;
    let mut out = group_json(g, v);
    out["kind"] = json!("APIGroup");
    out["apiVersion"] = json!("v1");
    Ok(out)
}

fn categories(r: &Resource) -> Vec<&'static str> {
    match r.plural {
        "pods" | "services" | "deployments" | "replicasets" | "daemonsets" | "jobs" => vec!["all"],
        _ => vec![],
    }
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn sub_entry(r: &Resource, sub: &str) -> Value {
    let (kind, verbs, group, version): (&str, Vec<&str>, Option<&str>, Option<&str>) = match sub {
        "status" => (r.kind, vec!["get", "patch", "update"], None, None),
        "scale" => (
            "Scale",
            vec!["get", "patch", "update"],
            Some("autoscaling"),
            Some("v1"),
        ),
        "binding" => ("Binding", vec!["create"], None, None),
        "eviction" => ("Eviction", vec!["create"], Some("policy"), Some("v1")),
        "log" => ("Pod", vec!["get"], None, None),
        "exec" => ("PodExecOptions", vec!["create", "get"], None, None),
        "finalize" => (r.kind, vec!["update"], None, None),
        _ => (r.kind, vec![], None, None),
    };
    let mut e = json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
    if let (Some(g), Some(v)) = (group, version) {
        e["group"] = json!(g);
        e["version"] = json!(v);
    }
    e
}

pub fn resource_list(g: &str, v: &str) -> Value {
    let mut resources = Vec::new();
    for r in registry::in_group(g, v) {
        let mut e = json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": VERBS, "storageVersionHash": "",
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        let cats = categories(r);
        if !cats.is_empty() {
            e["categories"] = json!(cats);
        }
        resources.push(e);
        for s in r.subresources {
            resources.push(sub_entry(r, s));
        }
    }
    let gv = if g.is_empty() {
        v.to_owned()
    } else {
        format!("{g}/{v}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}
