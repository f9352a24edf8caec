//! Authentication (bearer tokens from `tokens.csv`, client certificates signed by the
//! cluster CA) and authorization: admins, read-only viewers, and node identities
//! limited to their own Node, their pods and what those pods reference.

use super::status::{ApiError, ApiResult};
use super::{Api, Call, Target};
use crate::pki::TokenEntry;
use flotilla_store::Key;
use hyper::Method;
use serde_json::Value;
use std::collections::HashMap;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
    pub fn is_viewer(&self) -> bool {
        self.groups.iter().any(|g| g == "flotilla:viewers")
    }
    /// The node name of a node identity (`system:node:<name>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        if self.groups.iter().any(|g| g == "system:nodes") {
            self.user.strip_prefix("system:node:")
        } else {
            None
        }
    }
}

/// Maps credentials to identities.
pub struct Authenticator {
    tokens: HashMap<String, Identity>,
}

impl Authenticator {
    pub fn new(entries: &[TokenEntry]) -> Authenticator {
        let tokens = entries
            .iter()
            .map(|e| {
                (
                    e.token.clone(),
                    Identity {
                        user: e.user.clone(),
                        groups: e.groups.clone(),
                    },
                )
            })
            .collect();
        Authenticator { tokens }
    }

    /// A bearer token wins over a client certificate; neither means unauthenticated.
    pub fn authenticate(&self, authorization: &str, cert: Option<Identity>) -> Option<Identity> {
        if let Some(token) = authorization.strip_prefix("Bearer ") {
            return self.tokens.get(token.trim()).cloned();
        }
        cert
    }
}

/// The Kubernetes verb of a call.
pub fn verb(call: &Call, target: &Target) -> &'static str {
    match (&call.method, target.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if call.query.watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

/// Allows or denies the call (403 with Kubernetes' message).
pub async fn authorize(api: &Api, call: &Call, t: &Target) -> ApiResult<()> {
    let id = &call.ident;
    if id.is_admin() {
        return Ok(());
    }
    let verb = verb(call, t);
    let read = matches!(verb, "get" | "list" | "watch");
    let plural = match &t.sub {
        Some(s) => format!("{}/{}", t.res.plural, s),
        None => t.res.plural.to_owned(),
    };
    let deny = || {
        Err(ApiError::forbidden(
            &id.user,
            verb,
            t.res.group,
            &plural,
            t.ns.as_deref().unwrap_or(""),
        ))
    };
    if id.is_viewer() {
        // Like Kubernetes' `view` role: reads everything but secrets, no exec.
        let allowed = read && t.res.plural != "secrets" && t.sub.as_deref() != Some("exec");
        return if allowed { Ok(()) } else { deny() };
    }
    let Some(node) = id.node_name() else {
        return deny();
    };
    if node_allows(api, call, t, node, verb)? {
        Ok(())
    } else {
        deny()
    }
}

fn node_allows(api: &Api, call: &Call, t: &Target, node: &str, verb: &str) -> ApiResult<bool> {
    let read = matches!(verb, "get" | "list" | "watch");
    let name = t.name.as_deref();
    let ns = t.ns.as_deref().unwrap_or("");
    Ok(match t.res.plural {
        "nodes" => match verb {
            "get" | "update" | "patch" | "create" => {
                name.is_none_or(|n| n == node) && {
                    // create carries the name in the body
                    verb != "create" || body_name(call).as_deref() == Some(node)
                }
            }
            "list" | "watch" => {
                call.query
                    .field_selector
                    .as_ref()
                    .and_then(|f| f.required("metadata.name"))
                    == Some(node)
            }
            _ => false,
        },
        "pods" => match verb {
            "list" | "watch" => {
                call.query
                    .field_selector
                    .as_ref()
                    .and_then(|f| f.required("spec.nodeName"))
                    == Some(node)
            }
            "get" | "update" | "patch" | "delete" => {
                let key = Key::new("pods", ns, name.unwrap_or(""));
                match api.store.get(&key)? {
                    Some(o) => {
                        let v: Value = serde_json::from_slice(&o.value).unwrap_or(Value::Null);
                        v["spec"]["nodeName"] == node
                            && (verb == "get"
                                || verb == "delete"
                                || t.sub.as_deref() == Some("status"))
                    }
                    None => verb == "get",
                }
            }
            _ => false,
        },
        "secrets" | "configmaps" | "serviceaccounts" => {
            verb == "get"
                && name.is_some_and(|n| referenced_by_node_pod(api, node, ns, t.res.plural, n))
        }
        "services" | "endpoints" | "namespaces" => read,
        "events" => matches!(verb, "create" | "patch" | "update"),
        "leases" => {
            ns == "kube-node-lease"
                && name.is_none_or(|n| n == node)
                && { verb != "create" || body_name(call).as_deref() == Some(node) }
                && !matches!(verb, "list" | "watch" | "deletecollection")
        }
        _ => false,
    })
}

fn body_name(call: &Call) -> Option<String> {
    let v: Value = serde_json::from_slice(&call.body).ok()?;
    v["metadata"]["name"].as_str().map(str::to_owned)
}

/// Whether a pod bound to `node` in `ns` references the object (volumes, env,
/// envFrom, projected sources, imagePullSecrets, its service account).
pub fn referenced_by_node_pod(api: &Api, node: &str, ns: &str, plural: &str, name: &str) -> bool {
    let Ok(page) = api.store.list("pods", Some(ns), None, None) else {
        return false;
    };
    page.items.iter().any(|o| {
        let pod: Value = serde_json::from_slice(&o.value).unwrap_or(Value::Null);
        pod["spec"]["nodeName"] == node && pod_references(&pod["spec"], plural, name)
    })
}

/// Whether a pod spec references the named secret, configmap or service account.
pub fn pod_references(spec: &Value, plural: &str, name: &str) -> bool {
    let mut found = false;
    let mut check = |v: &Value| {
        if v.as_str() == Some(name) {
            found = true;
        }
    };
    match plural {
        "serviceaccounts" => check(&spec["serviceAccountName"]),
        "secrets" | "configmaps" => {
            let (vol, env_ref, from) = if plural == "secrets" {
                ("secret", "secretKeyRef", "secretRef")
            } else {
                ("configMap", "configMapKeyRef", "configMapRef")
            };
            for v in spec["volumes"].as_array().into_iter().flatten() {
                if plural == "secrets" {
                    check(&v["secret"]["secretName"]);
                } else {
                    check(&v["configMap"]["name"]);
                }
                for s in v["projected"]["sources"].as_array().into_iter().flatten() {
                    check(&s[vol]["name"]);
                }
            }
            for key in ["containers", "initContainers", "ephemeralContainers"] {
                for c in spec[key].as_array().into_iter().flatten() {
                    for e in c["env"].as_array().into_iter().flatten() {
                        check(&e["valueFrom"][env_ref]["name"]);
                    }
                    for e in c["envFrom"].as_array().into_iter().flatten() {
                        check(&e[from]["name"]);
                    }
                }
            }
            if plural == "secrets" {
                for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
                    check(&s["name"]);
                }
            }
        }
        _ => {}
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_references_cover_volumes_env_and_pull_secrets() {
        let spec = json!({
            "volumes": [{"name": "v", "secret": {"secretName": "s1"}}, {"name": "c", "configMap": {"name": "cm1"}}],
            "containers": [{"name": "a", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s2", "key": "k"}}}],
                            "envFrom": [{"configMapRef": {"name": "cm2"}}]}],
            "imagePullSecrets": [{"name": "s3"}],
        });
        for s in ["s1", "s2", "s3"] {
            assert!(pod_references(&spec, "secrets", s), "{s}");
        }
        assert!(!pod_references(&spec, "secrets", "other"));
        assert!(pod_references(&spec, "configmaps", "cm1"));
        assert!(pod_references(&spec, "configmaps", "cm2"));
        assert!(!pod_references(&spec, "configmaps", "s1"));
    }

    #[test]
    fn node_identity_is_recognised() {
        let id = Identity {
            user: "system:node:n1".into(),
            groups: vec!["system:nodes".into()],
        };
        assert_eq!(id.node_name(), Some("n1"));
        let not = Identity {
            user: "system:node:n1".into(),
            groups: vec![],
        };
        assert_eq!(not.node_name(), None);
    }
}
