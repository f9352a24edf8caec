//! The direct write paths of scheduling: binding a pod to a node (`pods/binding`, as
//! kube-apiserver's BindingREST does it) and setting one pod condition (the scheduler's
//! `PodScheduled=False`). Both edit the stored JSON of the one pod in place — no request
//! body, no generic update path — and return once the write is durable. The HTTP
//! handler of `pods/binding` and the scheduler's driver both use [`bind_pod`].

use super::meta::metadata_mut;
use super::objects::{key_of, record_manager};
use super::registry::{self, Resource};
use super::status::{ApiError, ApiResult, Cause};
use super::{Api, Call, Target};
use flotilla_store::{Object, StoreError};
use serde_json::{Map, Value, json};

/// How often a write re-reads the pod after losing a race with another writer (as
/// kube-apiserver's GuaranteedUpdate does) before answering Conflict.
const ATTEMPTS: usize = 8;

/// One binding of a pod to a node, with the preconditions a Binding may carry.
#[derive(Debug, Clone, Default)]
pub struct Binding<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// The node the pod goes to (`target.name`).
    pub node: &'a str,
    /// The field manager recorded for the write.
    pub manager: &'a str,
    /// Bind only the pod with this uid (`metadata.uid` of the Binding).
    pub uid: Option<&'a str>,
    /// Bind only at this resourceVersion (`metadata.resourceVersion` of the Binding).
    pub resource_version: Option<u64>,
    /// Annotations merged into the pod's (`metadata.annotations` of the Binding).
    pub annotations: Option<&'a Map<String, Value>>,
    /// Check everything, write nothing.
    pub dry_run: bool,
}

impl<'a> Binding<'a> {
    /// A binding of `namespace/name` to `node`, written as `manager`.
    pub fn new(namespace: &'a str, name: &'a str, node: &'a str, manager: &'a str) -> Self {
        Binding {
            namespace,
            name,
            node,
            manager,
            ..Binding::default()
        }
    }
}

fn pods() -> &'static Resource {
    registry::find("", "v1", "pods").expect("pods are a built-in resource")
}

/// A 409 worded as kube-apiserver's `NewConflict(resource, name, err)`.
fn conflict(resource: &str, name: &str, why: impl std::fmt::Display) -> ApiError {
    let mut e = ApiError::new(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
    );
    let kind = resource.split('/').next().unwrap_or(resource);
    e.details = Some(json!({"name": name, "kind": kind}));
    e
}

fn decode(stored: &Object) -> ApiResult<Value> {
    match serde_json::from_slice::<Value>(&stored.value) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(ApiError::internal(format!(
            "the stored pod {}/{} is not a JSON object",
            stored.key.namespace, stored.key.name
        ))),
    }
}

fn str_at<'v>(v: &'v Value, a: &str, b: &str) -> &'v str {
    v.get(a)
        .and_then(|x| x.get(b))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `obj[field]` as an object, created (or replaced when not an object) if needed.
fn object_at<'v>(obj: &'v mut Value, field: &str) -> &'v mut Map<String, Value> {
    let m = obj.as_object_mut().expect("the pod is an object");
    let slot = m
        .entry(field.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("an object")
}

/// Puts `cond` into `status.conditions` as podutil.UpdatePodCondition does: in the place
/// of the condition of its type (keeping its lastTransitionTime when the status did not
/// change), else at the end. Returns false, changing nothing, when a condition of that
/// type with the same status, reason and message is already there.
fn update_condition(pod: &mut Value, mut cond: Map<String, Value>, now: &str) -> bool {
    let status = object_at(pod, "status");
    let list = status
        .entry("conditions")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !list.is_array() {
        *list = Value::Array(Vec::new());
    }
    let list = list.as_array_mut().expect("an array");
    let existing = list.iter_mut().find(|c| c.get("type") == cond.get("type"));
    let Some(old) = existing else {
        cond.entry("lastTransitionTime")
            .or_insert_with(|| now.into());
        list.push(Value::Object(cond));
        return true;
    };
    let same = |k: &str| old.get(k) == cond.get(k);
    if same("status") && same("reason") && same("message") {
        return false;
    }
    let time = if same("status") {
        old.get("lastTransitionTime").cloned()
    } else {
        None
    };
    match time {
        Some(t) => {
            cond.insert("lastTransitionTime".into(), t);
        }
        None => {
            cond.entry("lastTransitionTime")
                .or_insert_with(|| now.into());
        }
    }
    *old = Value::Object(cond);
    true
}

/// Writes `bytes` over `old` if nothing wrote in between; `Ok(None)` when something did.
async fn write(api: &Api, old: &Object, bytes: Vec<u8>) -> ApiResult<Option<u64>> {
    match api
        .store
        .update(old.key.clone(), bytes, Some(old.revision))
        .await
    {
        Ok(rv) => Ok(Some(rv)),
        Err(StoreError::Conflict { .. }) => Ok(None),
        Err(StoreError::NotFound) => Err(ApiError::not_found("", "pods", &old.key.name)),
        Err(e) => Err(e.into()),
    }
}

/// What decides whether a pod may be bound, read from its stored JSON.
struct Facts {
    uid: String,
    deleting: bool,
    node: String,
    gated: bool,
}

/// kube-apiserver's reasons to refuse a binding, in its order.
fn refusal(b: &Binding<'_>, revision: u64, f: &Facts) -> Option<ApiError> {
    let name = b.name;
    if let Some(uid) = b.uid
        && f.uid != uid
    {
        return Some(conflict(
            "pods",
            name,
            format_args!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                f.uid
            ),
        ));
    }
    if let Some(rv) = b.resource_version
        && rv != revision
    {
        return Some(conflict(
            "pods",
            name,
            format_args!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {revision}"
            ),
        ));
    }
    let why = if f.deleting {
        format!("pod {name} is being deleted, cannot be assigned to a host")
    } else if !f.node.is_empty() {
        format!("pod {name} is already assigned to node \"{}\"", f.node)
    } else if f.gated {
        format!("pod {name} has non-empty .spec.schedulingGates")
    } else {
        return None;
    };
    Some(conflict("pods/binding", name, why))
}

/// The PodScheduled=True condition a binding sets.
fn scheduled() -> Map<String, Value> {
    let mut cond = Map::new();
    cond.insert("type".into(), "PodScheduled".into());
    cond.insert("status".into(), "True".into());
    cond.insert("lastProbeTime".into(), Value::Null);
    cond
}

/// The fields a binding owns in managedFields.
fn binding_fields() -> Value {
    json!({"f:spec": {"f:nodeName": {}}})
}

/// The binding applied to a pod decoded as a whole: the general path, for stored JSON
/// the in-place edit ([`raw`]) does not take on. `Ok(None)` for a dry run.
fn bind_value(
    stored: &Object,
    b: &Binding<'_>,
    now: &str,
) -> ApiResult<Result<Option<Vec<u8>>, ApiError>> {
    let mut pod = decode(stored)?;
    let facts = Facts {
        uid: str_at(&pod, "metadata", "uid").to_owned(),
        deleting: pod["metadata"]
            .get("deletionTimestamp")
            .is_some_and(|t| !t.is_null()),
        node: str_at(&pod, "spec", "nodeName").to_owned(),
        gated: pod["spec"]["schedulingGates"]
            .as_array()
            .is_some_and(|g| !g.is_empty()),
    };
    if let Some(e) = refusal(b, stored.revision, &facts) {
        return Ok(Err(e));
    }
    if b.dry_run {
        return Ok(Ok(None));
    }
    object_at(&mut pod, "spec").insert("nodeName".into(), b.node.into());
    if let Some(extra) = b.annotations.filter(|a| !a.is_empty()) {
        let md = metadata_mut(&mut pod);
        let ann = md
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if !ann.is_object() {
            *ann = Value::Object(Map::new());
        }
        let ann = ann.as_object_mut().expect("an object");
        for (k, v) in extra {
            ann.insert(k.clone(), v.clone());
        }
    }
    update_condition(&mut pod, scheduled(), now);
    record_manager(
        &mut pod,
        b.manager,
        "Update",
        binding_fields(),
        Some("binding"),
    );
    Ok(Ok(Some(
        serde_json::to_vec(&pod).expect("JSON values serialize"),
    )))
}

/// Binds a pod to a node, as `POST pods/{name}/binding` does: 404 when the pod does not
/// exist; 409 when a uid or resourceVersion precondition fails, when the pod is being
/// deleted, still has scheduling gates or is already on a node. Sets `spec.nodeName`,
/// merges the binding's annotations and sets `PodScheduled=True`, in one durable write.
/// The stored JSON is edited in place where it has the canonical shape the API writes
/// (see [`raw`]), else decoded and encoded again. Returns the pod's new resourceVersion
/// (its current one for a dry run).
pub async fn bind_pod(api: &Api, b: &Binding<'_>) -> ApiResult<u64> {
    let name = b.name;
    if b.node.is_empty() {
        return Err(ApiError::invalid(
            "Binding",
            "",
            name,
            vec![Cause::required("target.name")],
        ));
    }
    let key = key_of(pods(), Some(b.namespace), name);
    for _ in 0..ATTEMPTS {
        let Some(old) = api.store.get(&key)? else {
            return Err(ApiError::not_found("", "pods", name));
        };
        let now = super::meta::now();
        let edit = match raw::bind(&old.value, b, old.revision, &now) {
            Some(edit) => edit,
            None => bind_value(&old, b, &now)?,
        };
        let bytes = match edit {
            Err(refused) => return Err(refused),
            Ok(None) => return Ok(old.revision),
            Ok(Some(bytes)) => bytes,
        };
        if let Some(rv) = write(api, &old, bytes).await? {
            return Ok(rv);
        }
    }
    Err(conflict(
        "pods/binding",
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
    ))
}

/// Sets one condition in a pod's status (through the `status` subresource, recorded for
/// `manager`), in place of the condition of its type. Nothing is written when the pod
/// already holds that condition with the same status, reason and message: `Ok(None)`,
/// as when the pod is gone. Otherwise returns the new resourceVersion once durable.
pub async fn set_pod_condition(
    api: &Api,
    namespace: &str,
    name: &str,
    condition: &Value,
    manager: &str,
) -> ApiResult<Option<u64>> {
    let Some(cond) = condition.as_object().filter(|c| {
        c.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty())
    }) else {
        return Err(ApiError::bad_request(
            "a pod condition needs a non-empty type",
        ));
    };
    let ty = cond["type"].as_str().unwrap_or_default();
    let mut item = Map::new();
    for k in cond.keys() {
        item.insert(format!("f:{k}"), json!({}));
    }
    item.insert(".".into(), json!({}));
    let mut conditions = Map::new();
    conditions.insert(format!("k:{}", json!({"type": ty})), Value::Object(item));
    let fields = json!({"f:status": {"f:conditions": conditions}});
    let key = key_of(pods(), Some(namespace), name);
    for _ in 0..ATTEMPTS {
        let Some(old) = api.store.get(&key)? else {
            return Ok(None);
        };
        let mut pod = decode(&old)?;
        if !update_condition(&mut pod, cond.clone(), &super::meta::now()) {
            return Ok(None);
        }
        record_manager(&mut pod, manager, "Update", fields.clone(), Some("status"));
        let bytes = serde_json::to_vec(&pod).expect("JSON values serialize");
        match write(api, &old, bytes).await {
            Ok(Some(rv)) => return Ok(Some(rv)),
            Ok(None) => continue,
            Err(e) if e.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict("", "pods", name))
}

/// The `POST pods/{name}/binding` handler: decodes the Binding, checks it as
/// ValidatePodBinding does and binds. Answers 201 with a Success Status.
pub async fn serve(api: &Api, t: &Target, call: &Call) -> ApiResult<hyper::Response<super::Body>> {
    let name = t.name.as_deref().unwrap_or("");
    let b = super::objects::decode_body(call)?;
    if !b.is_object() {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    if let Some(kind) = b.get("kind").and_then(Value::as_str)
        && kind != "Binding"
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind (Binding)"
        )));
    }
    let body_name = str_at(&b, "metadata", "name");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Binding object",
        ));
    }
    let mut causes = Vec::new();
    let kind = str_at(&b, "target", "kind");
    if !kind.is_empty() && kind != "Node" {
        causes.push(Cause::unsupported(
            "target.kind",
            &json!(kind),
            &["Node", "<empty>"],
        ));
    }
    let node = str_at(&b, "target", "name");
    if node.is_empty() {
        causes.push(Cause::required("target.name"));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("Binding", "", name, causes));
    }
    let rv = match str_at(&b, "metadata", "resourceVersion") {
        "" => None,
        s => Some(
            super::meta::parse_rv(s)
                .ok_or_else(|| ApiError::bad_request(format!("invalid resourceVersion {s:?}")))?,
        ),
    };
    let manager = super::objects::manager(call);
    let binding = Binding {
        namespace: t.ns.as_deref().unwrap_or(""),
        name,
        node,
        manager: &manager,
        uid: Some(str_at(&b, "metadata", "uid")).filter(|u| !u.is_empty()),
        resource_version: rv,
        annotations: b["metadata"]["annotations"].as_object(),
        dry_run: call.query.dry_run,
    };
    bind_pod(api, &binding).await?;
    Ok(super::json(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "code": 201, "details": {"name": name, "kind": "pods"}}),
    ))
}

mod raw;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::{Authenticator, Identity};
    use crate::api::query::Query;
    use flotilla_store::{Key, Store};
    use http_body_util::BodyExt;

    fn api() -> Api {
        let (gc_wake, _) = smol::channel::bounded(1);
        Api {
            store: Store::open_in_memory(Default::default()).unwrap(),
            auth: Authenticator::new(&[]),
            gc_wake,
            server_address: "127.0.0.1:6443".into(),
        }
    }

    fn key(name: &str) -> Key {
        Key::new("pods", "d", name)
    }

    /// Stores pod `d/name`, with `extra` merged into its top level.
    fn put(api: &Api, name: &str, extra: Value) -> u64 {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "d", "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "c", "image": "busybox"}],
                     "schedulerName": "default-scheduler"},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/1 nodes are available", "lastTransitionTime": "2025-01-01T00:00:00Z",
                 "lastProbeTime": null},
                {"type": "Other", "status": "True"}]}});
        for (k, v) in extra.as_object().unwrap() {
            for (k2, v2) in v.as_object().unwrap() {
                pod[k][k2] = v2.clone();
            }
        }
        api.store
            .create_blocking(key(name), serde_json::to_vec(&pod).unwrap())
            .unwrap()
    }

    fn stored(api: &Api, name: &str) -> (u64, Value) {
        let o = api.store.get(&key(name)).unwrap().unwrap();
        (o.revision, serde_json::from_slice(&o.value).unwrap())
    }

    fn bind(api: &Api, b: Binding<'_>) -> ApiResult<u64> {
        smol::block_on(bind_pod(api, &b))
    }

    #[test]
    fn binding_sets_the_node_and_pod_scheduled_in_one_durable_write() {
        let api = api();
        let before = put(&api, "web", json!({}));
        let rv = bind(&api, Binding::new("d", "web", "n1", "default-scheduler")).unwrap();
        let (now, pod) = stored(&api, "web");
        assert!(rv > before);
        assert_eq!(rv, now, "the returned revision is the stored one");
        assert_eq!(pod["spec"]["nodeName"], "n1");
        let conds = pod["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 2, "{conds:?}");
        // Replaced in place, without the old reason and message, with a new time.
        assert_eq!(conds[0]["type"], "PodScheduled");
        assert_eq!(conds[0]["status"], "True");
        assert!(conds[0].get("reason").is_none() && conds[0].get("message").is_none());
        assert_ne!(conds[0]["lastTransitionTime"], "2025-01-01T00:00:00Z");
        assert_eq!(conds[1]["type"], "Other");
        let mf = &pod["metadata"]["managedFields"][0];
        assert_eq!(mf["manager"], "default-scheduler");
        assert_eq!(mf["subresource"], "binding");
        assert_eq!(mf["fieldsV1"], json!({"f:spec": {"f:nodeName": {}}}));
        assert!(pod["metadata"].get("resourceVersion").is_none());
    }

    #[test]
    fn a_bound_pod_is_not_bound_again() {
        let api = api();
        put(&api, "web", json!({}));
        bind(&api, Binding::new("d", "web", "n1", "m")).unwrap();
        let (rv, _) = stored(&api, "web");
        let e = bind(&api, Binding::new("d", "web", "n2", "m")).unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            "Operation cannot be fulfilled on pods/binding \"web\": pod web is already assigned to node \"n1\""
        );
        let (after, pod) = stored(&api, "web");
        assert_eq!((after, pod["spec"]["nodeName"].as_str()), (rv, Some("n1")));
    }

    #[test]
    fn preconditions_deletion_and_gates_refuse_the_binding() {
        let api = api();
        put(&api, "web", json!({}));
        let wrong_uid = Binding {
            uid: Some("someone-else"),
            ..Binding::new("d", "web", "n1", "m")
        };
        let e = bind(&api, wrong_uid).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                409,
                "Operation cannot be fulfilled on pods \"web\": Precondition failed: UID in precondition: someone-else, UID in object meta: uid-web"
            )
        );
        let (rv, _) = stored(&api, "web");
        let stale = Binding {
            resource_version: Some(rv - 1),
            ..Binding::new("d", "web", "n1", "m")
        };
        let e = bind(&api, stale).unwrap_err();
        assert_eq!(e.code, 409);
        assert!(
            e.message.contains("ResourceVersion in precondition"),
            "{}",
            e.message
        );
        assert_eq!(stored(&api, "web").0, rv, "nothing was written");

        put(
            &api,
            "going",
            json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}}),
        );
        let e = bind(&api, Binding::new("d", "going", "n1", "m")).unwrap_err();
        assert_eq!(
            e.message,
            "Operation cannot be fulfilled on pods/binding \"going\": pod going is being deleted, cannot be assigned to a host"
        );
        put(
            &api,
            "gated",
            json!({"spec": {"schedulingGates": [{"name": "wait"}]}}),
        );
        let e = bind(&api, Binding::new("d", "gated", "n1", "m")).unwrap_err();
        assert_eq!(
            e.message,
            "Operation cannot be fulfilled on pods/binding \"gated\": pod gated has non-empty .spec.schedulingGates"
        );
        let e = bind(&api, Binding::new("d", "nope", "n1", "m")).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (404, "pods \"nope\" not found")
        );

        let right = Binding {
            uid: Some("uid-web"),
            resource_version: Some(rv),
            ..Binding::new("d", "web", "n1", "m")
        };
        bind(&api, right).unwrap();
        assert_eq!(stored(&api, "web").1["spec"]["nodeName"], "n1");
    }

    #[test]
    fn dry_run_writes_nothing_and_annotations_are_merged() {
        let api = api();
        let rv = put(
            &api,
            "web",
            json!({"metadata": {"annotations": {"a": "1", "b": "1"}}}),
        );
        let dry = Binding {
            dry_run: true,
            ..Binding::new("d", "web", "n1", "m")
        };
        assert_eq!(bind(&api, dry).unwrap(), rv);
        let (after, pod) = stored(&api, "web");
        assert_eq!(after, rv);
        assert!(pod["spec"].get("nodeName").is_none());
        let ann = json!({"b": "2", "c": "3"});
        let with = Binding {
            annotations: ann.as_object(),
            ..Binding::new("d", "web", "n1", "m")
        };
        bind(&api, with).unwrap();
        assert_eq!(
            stored(&api, "web").1["metadata"]["annotations"],
            json!({"a": "1", "b": "2", "c": "3"})
        );
    }

    fn unschedulable(message: &str) -> Value {
        json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
               "message": message, "lastTransitionTime": "2025-06-01T00:00:00Z"})
    }

    #[test]
    fn an_unchanged_condition_is_not_written() {
        let api = api();
        let rv = put(&api, "web", json!({}));
        let set =
            |c: &Value| smol::block_on(set_pod_condition(&api, "d", "web", c, "default-scheduler"));
        assert_eq!(
            set(&unschedulable("0/1 nodes are available")).unwrap(),
            None
        );
        assert_eq!(stored(&api, "web").0, rv, "no write for the same condition");

        let written = set(&unschedulable("0/2 nodes are available")).unwrap();
        let (now, pod) = stored(&api, "web");
        assert_eq!(written, Some(now));
        let c = &pod["status"]["conditions"][0];
        assert_eq!(c["message"], "0/2 nodes are available");
        // The status did not change, so neither does the transition time.
        assert_eq!(c["lastTransitionTime"], "2025-01-01T00:00:00Z");
        let mf = &pod["metadata"]["managedFields"][0];
        assert_eq!(
            (mf["manager"].as_str(), mf["subresource"].as_str()),
            (Some("default-scheduler"), Some("status"))
        );
        assert!(
            mf["fieldsV1"]["f:status"]["f:conditions"]
                .get(r#"k:{"type":"PodScheduled"}"#)
                .is_some(),
            "{mf}"
        );

        let ready = json!({"type": "Ready", "status": "False", "reason": "NodeNotReady"});
        set(&ready).unwrap().expect("a new condition is written");
        let conds = stored(&api, "web").1["status"]["conditions"].clone();
        assert_eq!(conds.as_array().unwrap().len(), 3);
        assert_eq!(conds[2]["reason"], "NodeNotReady");
        assert!(conds[2]["lastTransitionTime"].is_string());

        assert_eq!(
            smol::block_on(set_pod_condition(&api, "d", "gone", &ready, "m")).unwrap(),
            None
        );
        let e = smol::block_on(set_pod_condition(&api, "d", "web", &json!({}), "m")).unwrap_err();
        assert_eq!(e.code, 400);
    }

    fn post(api: &Api, name: &str, body: Value) -> (u16, Value) {
        let t = Target {
            res: pods(),
            ns: Some("d".into()),
            name: Some(name.into()),
            sub: Some("binding".into()),
        };
        let call = Call {
            method: hyper::Method::POST,
            query: Query::default(),
            accept: "application/json".into(),
            content_type: "application/json".into(),
            user_agent: "kube-scheduler/v1.33".into(),
            body: serde_json::to_vec(&body).unwrap().into(),
            ident: Identity {
                user: "admin".into(),
                groups: vec![],
            },
        };
        match smol::block_on(serve(api, &t, &call)) {
            Ok(resp) => {
                let code = resp.status().as_u16();
                let bytes = smol::block_on(resp.into_body().collect())
                    .unwrap()
                    .to_bytes();
                (code, serde_json::from_slice(&bytes).unwrap())
            }
            Err(e) => (e.code, json!({"message": e.message})),
        }
    }

    #[test]
    fn the_http_handler_checks_the_binding_as_kubernetes_does() {
        let api = api();
        put(&api, "web", json!({}));
        let binding = |name: &str, target: Value| json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": target});
        let (code, body) = post(
            &api,
            "web",
            binding("other", json!({"kind": "Node", "name": "n1"})),
        );
        assert_eq!(
            (code, body["message"].as_str()),
            (
                400,
                Some("name in URL does not match name in Binding object")
            )
        );
        let (code, body) = post(&api, "web", binding("web", json!({"kind": "Pod"})));
        assert_eq!(code, 422);
        assert_eq!(
            body["message"],
            "Binding \"web\" is invalid: [target.kind: Unsupported value: \"Pod\": supported values: \"Node\", \"<empty>\", target.name: Required value]"
        );
        assert!(stored(&api, "web").1["spec"].get("nodeName").is_none());
        let (code, body) = post(
            &api,
            "web",
            binding("web", json!({"kind": "Node", "name": "n1"})),
        );
        assert_eq!(code, 201, "{body}");
        assert_eq!(body["status"], "Success");
        let pod = stored(&api, "web").1;
        assert_eq!(pod["spec"]["nodeName"], "n1");
        assert_eq!(
            pod["metadata"]["managedFields"][0]["manager"],
            "kube-scheduler"
        );
        let (code, body) = post(&api, "web", binding("web", json!({"name": "n2"})));
        assert_eq!(code, 409, "{body}");
    }

    /// The pod as the general path leaves it, and as the in-place edit does (times of
    /// managedFields entries blanked: each path reads the clock).
    fn both_ways(pod: &Value, b: &Binding<'_>) -> (Value, Value) {
        let stored = Object {
            key: key("x"),
            revision: 7,
            value: serde_json::to_vec(pod).unwrap().into(),
        };
        let now = "2026-02-03T04:05:06Z";
        let general = bind_value(&stored, b, now).unwrap().unwrap().unwrap();
        let in_place = raw::bind(&stored.value, b, 7, now)
            .expect("canonical JSON is edited in place")
            .unwrap()
            .unwrap();
        let blank = |bytes: &[u8]| {
            let mut v: Value = serde_json::from_slice(bytes).unwrap();
            for e in v["metadata"]["managedFields"].as_array_mut().unwrap() {
                e["time"] = json!("t");
            }
            v
        };
        (blank(&general), blank(&in_place))
    }

    #[test]
    fn the_in_place_edit_matches_the_general_path() {
        let base = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "x", "namespace": "d", "uid": "u1", "labels": {"app": "a\"b"},
                "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}, "time": "2025-01-01T00:00:00Z"}]},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                        "command": ["sh", "-c", "echo \"{[}]\" \\ done ✓"]}],
                     "restartPolicy": "Always", "schedulerName": "default-scheduler",
                     "tolerations": [{"key": "k", "operator": "Exists"}]},
            "status": {"phase": "Pending", "qosClass": "BestEffort", "conditions": [
                {"type": "Other", "status": "True"},
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available: 3 Insufficient cpu.",
                 "lastTransitionTime": "2025-01-01T00:00:00Z", "lastProbeTime": null}]}});
        let mut shapes = vec![base.clone()];
        let mut no_status = base.clone();
        no_status.as_object_mut().unwrap().remove("status");
        shapes.push(no_status);
        let mut no_conditions = base.clone();
        no_conditions["status"] = json!({"phase": "Pending"});
        shapes.push(no_conditions);
        let mut empty_status = base.clone();
        empty_status["status"] = json!({});
        shapes.push(empty_status);
        let mut other_only = base.clone();
        other_only["status"]["conditions"] = json!([{"type": "Other", "status": "True"}]);
        shapes.push(other_only);
        let mut empty_conditions = base.clone();
        empty_conditions["status"]["conditions"] = json!([]);
        shapes.push(empty_conditions);
        let mut true_with_reason = base.clone();
        true_with_reason["status"]["conditions"][1] = json!({"type": "PodScheduled",
            "status": "True", "reason": "Odd", "lastTransitionTime": "2024-01-01T00:00:00Z"});
        shapes.push(true_with_reason);
        let mut already_true = base.clone();
        already_true["status"]["conditions"][1] = json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"});
        shapes.push(already_true);
        let mut bare = base.clone();
        bare["metadata"] = json!({"name": "x", "namespace": "d"});
        bare["spec"] = json!({});
        shapes.push(bare);
        let mut spec_before_only = base.clone();
        spec_before_only["spec"] = json!({"containers": [], "activeDeadlineSeconds": 5});
        shapes.push(spec_before_only);
        let mut empty_fields = base.clone();
        empty_fields["metadata"]["managedFields"] = json!([]);
        shapes.push(empty_fields);
        let mut later_metadata = base.clone();
        later_metadata["metadata"] =
            json!({"annotations": {"a": "1"}, "creationTimestamp": "2025-01-01T00:00:00Z"});
        shapes.push(later_metadata);
        for (i, pod) in shapes.iter().enumerate() {
            let (general, in_place) =
                both_ways(pod, &Binding::new("d", "x", "node-7", "default-scheduler"));
            assert_eq!(general, in_place, "shape {i}");
            assert_eq!(in_place["spec"]["nodeName"], "node-7", "shape {i}");
        }
    }

    #[test]
    fn refusals_read_the_same_from_the_bytes() {
        let pod = |extra: Value| {
            let mut p = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "x", "namespace": "d", "uid": "u1"}, "spec": {"containers": []}});
            for (k, v) in extra.as_object().unwrap() {
                for (k2, v2) in v.as_object().unwrap() {
                    p[k][k2] = v2.clone();
                }
            }
            p
        };
        let cases = [
            (
                pod(json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}})),
                Binding::new("d", "x", "n", "m"),
            ),
            (
                pod(json!({"spec": {"nodeName": "n0"}})),
                Binding::new("d", "x", "n", "m"),
            ),
            (
                pod(json!({"spec": {"schedulingGates": [{"name": "g"}]}})),
                Binding::new("d", "x", "n", "m"),
            ),
            (
                pod(json!({})),
                Binding {
                    uid: Some("u2"),
                    ..Binding::new("d", "x", "n", "m")
                },
            ),
            (
                pod(json!({})),
                Binding {
                    resource_version: Some(6),
                    ..Binding::new("d", "x", "n", "m")
                },
            ),
        ];
        for (i, (p, b)) in cases.iter().enumerate() {
            let stored = Object {
                key: key("x"),
                revision: 7,
                value: serde_json::to_vec(p).unwrap().into(),
            };
            let general = bind_value(&stored, b, "now").unwrap().unwrap_err();
            let in_place = raw::bind(&stored.value, b, 7, "now").unwrap().unwrap_err();
            assert_eq!(
                (general.code, &general.message),
                (in_place.code, &in_place.message),
                "case {i}"
            );
            assert_eq!(general.code, 409);
        }
        // Gates that are empty or null do not hold the pod back.
        for gates in [json!([]), Value::Null] {
            let p = pod(json!({"spec": {"schedulingGates": gates}}));
            let (general, in_place) = both_ways(&p, &Binding::new("d", "x", "n", "m"));
            assert_eq!(general, in_place);
        }
    }

    #[test]
    fn json_off_the_canonical_shape_takes_the_general_path() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "d", "uid": "u"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        let pretty = serde_json::to_vec_pretty(&pod).unwrap();
        let b = Binding::new("d", "web", "n1", "m");
        assert!(raw::bind(&pretty, &b, 1, "now").is_none(), "whitespace");
        let mut empty_node = pod.clone();
        empty_node["spec"]["nodeName"] = json!("");
        let bytes = serde_json::to_vec(&empty_node).unwrap();
        assert!(
            raw::bind(&bytes, &b, 1, "now").is_none(),
            "an empty nodeName is replaced by the general path"
        );
        let api = api();
        api.store.create_blocking(key("web"), pretty).unwrap();
        bind(&api, b).unwrap();
        let (_, stored) = stored(&api, "web");
        assert_eq!(stored["spec"]["nodeName"], "n1");
        assert_eq!(stored["status"]["conditions"][0]["type"], "PodScheduled");
    }
}
