//! The resource verbs: get, list, create, update, patch, delete and deletecollection,
//! plus the pod, scale and namespace subresources. Every write goes through
//! [`create_object`] or [`update_object`], which decode, default, validate, admit and
//! store.

pub use super::list::{list_scope, selected};
use super::meta::{self, metadata_mut};
use super::patch;
use super::query::Query;
use super::registry::Resource;
use super::status::{ApiError, ApiResult, Cause};
use super::{Api, Body, Call, Target, defaults, json, json_bytes, table, validation, watch};
use flotilla_store::{Key, Object, StoreError};
use hyper::{Method, Response};
use serde_json::{Value, json};
use std::sync::Arc;

/// Dispatches a resource request to its verb.
pub async fn serve(api: &Arc<Api>, t: &Target, call: Call) -> ApiResult<Response<Body>> {
    let sub = t.sub.as_deref();
    match (&call.method, t.name.is_some(), sub) {
        (&Method::GET, true, None | Some("status")) => get(api, t, &call),
        (&Method::GET, true, Some("scale")) => {
            let obj = get_value(api, t)?;
            Ok(json(200, &scale_view(&obj)))
        }
        (&Method::GET, false, None) if call.query.watch => watch::serve(api, t, &call),
        (&Method::GET, false, None) => super::list::list(api, t, &call).await,
        (&Method::POST, false, None) => create(api, t, &call).await,
        (&Method::POST, true, Some("binding")) => super::binding::serve(api, t, &call).await,
        (&Method::POST, true, Some("eviction")) => eviction(api, t, &call).await,
        (&Method::PUT, true, _) => update(api, t, &call).await,
        (&Method::PATCH, true, _) => patch_object(api, t, &call).await,
        (&Method::DELETE, true, None) => delete(api, t, &call).await,
        (&Method::DELETE, false, None) => delete_collection(api, t, &call).await,
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} {})",
            call.method, t.res.plural
        ))),
    }
}

/// The store key of a target.
pub fn key_of(res: &Resource, ns: Option<&str>, name: &str) -> Key {
    Key::new(
        res.store_name(),
        if res.namespaced { ns.unwrap_or("") } else { "" },
        name,
    )
}

fn target_key(t: &Target) -> Key {
    key_of(t.res, t.ns.as_deref(), t.name.as_deref().unwrap_or(""))
}

fn get_value(api: &Api, t: &Target) -> ApiResult<Value> {
    let name = t.name.as_deref().unwrap_or("");
    match api.store.get(&target_key(t))? {
        Some(o) => Ok(meta::decode(&o.value, o.revision)),
        None => Err(ApiError::not_found(t.res.group, t.res.plural, name)),
    }
}

fn get(api: &Api, t: &Target, call: &Call) -> ApiResult<Response<Body>> {
    let name = t.name.as_deref().unwrap_or("");
    let Some(o) = api.store.get(&target_key(t))? else {
        return Err(ApiError::not_found(t.res.group, t.res.plural, name));
    };
    if call.wants_table() {
        let v = meta::decode(&o.value, o.revision);
        let tbl = table::table(t.res, &[v], &o.revision.to_string(), &call.query, None);
        return Ok(json(200, &tbl));
    }
    Ok(json_bytes(
        200,
        meta::with_resource_version(&o.value, o.revision),
    ))
}

/// Decodes a JSON or YAML request body.
pub fn decode_body(call: &Call) -> ApiResult<Value> {
    if call.body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    if super::protobuf::is_protobuf(&call.content_type) {
        return super::protobuf::decode(&call.body);
    }
    if call.content_type.contains("protobuf") || call.content_type.contains("cbor") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {})",
                call.content_type
            ),
        ));
    }
    if call.content_type.contains("yaml") {
        serde_yaml_ng::from_slice(&call.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(&call.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
    }
}

/// The field manager of a call: `?fieldManager=`, else the client's program name.
pub fn manager(call: &Call) -> String {
    if let Some(m) = &call.query.field_manager {
        return m.clone();
    }
    let ua = call.user_agent.split('/').next().unwrap_or("").trim();
    if ua.is_empty() {
        "unknown".into()
    } else {
        ua.to_owned()
    }
}

/// Paths of fields present in `raw` but dropped by the typed decoding.
pub fn unknown_fields(raw: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (raw, known) {
        (Value::Object(r), Value::Object(k)) => {
            for (name, rv) in r {
                let p = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                match k.get(name) {
                    Some(kv) => unknown_fields(rv, kv, &p, out),
                    None if rv.is_null() => {}
                    None if name == "status" && path.is_empty() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(r), Value::Array(k)) => {
            for (i, (rv, kv)) in r.iter().zip(k).enumerate() {
                unknown_fields(rv, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes into the Kubernetes type, applying the request's fieldValidation
/// (Strict: error, Warn (default): warning header, Ignore) to unknown fields.
pub fn normalize(
    res: &Resource,
    raw: &Value,
    q: &Query,
    warnings: &mut Vec<String>,
) -> ApiResult<Value> {
    let known = (res.normalize)(raw).map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {e}",
            kind = res.kind,
            v = res.version
        ))
    })?;
    let mut unknown = Vec::new();
    unknown_fields(raw, &known, "", &mut unknown);
    if !unknown.is_empty() {
        match q.field_validation.as_deref().unwrap_or("Warn") {
            "Strict" => {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|u| format!("unknown field \"{u}\""))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {}",
                    list.join(", "),
                    kind = res.kind,
                    v = res.version
                )));
            }
            "Ignore" => {}
            _ => warnings.extend(unknown.iter().map(|u| format!("unknown field \"{u}\""))),
        }
    }
    Ok(known)
}

fn check_type(res: &Resource, obj: &mut Value) -> ApiResult<()> {
    let Some(m) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    };
    if let Some(k) = m.get("kind").and_then(Value::as_str)
        && k != res.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            res.kind
        )));
    }
    if let Some(v) = m.get("apiVersion").and_then(Value::as_str)
        && v != res.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({})",
            res.api_version()
        )));
    }
    m.insert("kind".into(), res.kind.into());
    m.insert("apiVersion".into(), res.api_version().into());
    Ok(())
}

fn set_namespace(res: &Resource, ns: Option<&str>, obj: &mut Value) -> ApiResult<()> {
    let md = metadata_mut(obj);
    if res.namespaced {
        let ns = ns.unwrap_or("");
        match md.get("namespace").and_then(Value::as_str) {
            Some(b) if !b.is_empty() && b != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {}
        }
        if ns.is_empty() {
            return Err(ApiError::bad_request(
                "a namespace is required to create this resource",
            ));
        }
        md.insert("namespace".into(), ns.into());
    } else {
        md.remove("namespace");
    }
    Ok(())
}

/// Fails unless `ns` exists and is not terminating.
fn admit_namespace(api: &Api, ns: &str) -> ApiResult<()> {
    match api.store.get(&Key::cluster("namespaces", ns))? {
        None => Err(ApiError::not_found("", "namespaces", ns)),
        Some(o) => {
            let v: Value = serde_json::from_slice(&o.value).unwrap_or(Value::Null);
            if v["status"]["phase"] == "Terminating"
                || !v["metadata"]["deletionTimestamp"].is_null()
            {
                Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    ),
                ))
            } else {
                Ok(())
            }
        }
    }
}

fn invalid(res: &Resource, obj: &Value, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(res.kind, res.group, meta::name(obj), causes)
}

fn managed_entry(
    manager: &str,
    operation: &str,
    api_version: &str,
    fields: Value,
    sub: Option<&str>,
) -> Value {
    let mut e = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": meta::now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    });
    if let Some(s) = sub {
        e["subresource"] = json!(s);
    }
    e
}

/// Records `manager`'s `operation` in managedFields, owning `fields`.
pub fn record_manager(
    obj: &mut Value,
    manager: &str,
    operation: &str,
    fields: Value,
    sub: Option<&str>,
) {
    let api_version = obj["apiVersion"].as_str().unwrap_or("").to_owned();
    let md = metadata_mut(obj);
    let list = md.entry("managedFields").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let arr = list.as_array_mut().expect("array");
    let same = |e: &Value| {
        e["manager"] == manager && e["operation"] == operation && e["subresource"].as_str() == sub
    };
    if let Some(e) = arr.iter_mut().find(|e| same(e)) {
        let mut merged = e["fieldsV1"].clone();
        if operation == "Apply" {
            merged = fields;
        } else {
            patch::merge_fieldsets(&mut merged, &fields);
        }
        *e = managed_entry(manager, operation, &api_version, merged, sub);
    } else {
        arr.push(managed_entry(manager, operation, &api_version, fields, sub));
    }
}

/// Options of a write coming from the request.
pub struct WriteOpts<'a> {
    pub query: &'a Query,
    pub manager: String,
    pub operation: &'static str,
    /// The fields the manager owns after this write (server-side apply); `None`
    /// records the fields the write changed.
    pub fields: Option<Value>,
}

/// Creates `raw` as a new object of `res` in `ns`: decode, name, default, validate,
/// admit, store. Returns the stored object (with resourceVersion) and warnings.
pub async fn create_object(
    api: &Api,
    res: &'static Resource,
    ns: Option<&str>,
    mut raw: Value,
    opts: &WriteOpts<'_>,
    warnings: &mut Vec<String>,
) -> ApiResult<Value> {
    check_type(res, &mut raw)?;
    set_namespace(res, ns, &mut raw)?;
    let user_fields = opts.fields.clone().unwrap_or_else(|| patch::fieldset(&raw));
    let mut obj = normalize(res, &raw, opts.query, warnings)?;
    {
        let md = metadata_mut(&mut obj);
        let name = md
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if name.is_empty()
            && let Some(g) = md.get("generateName").and_then(Value::as_str)
            && !g.is_empty()
        {
            let n = format!("{g}{}", meta::name_suffix());
            md.insert("name".into(), n.into());
        }
        for k in [
            "resourceVersion",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "generation",
        ] {
            md.remove(k);
        }
        md.insert("uid".into(), meta::uuid().into());
        md.insert("creationTimestamp".into(), meta::now().into());
        if res.tracks_generation() {
            md.insert("generation".into(), 1.into());
        }
    }
    if res.has_sub("status")
        && !matches!(res.kind, "Node" | "Namespace")
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    defaults::apply(res.kind, &mut obj);
    let causes = validation::validate(res.kind, &obj);
    if !causes.is_empty() {
        return Err(invalid(res, &obj, causes));
    }
    if res.namespaced {
        admit_namespace(api, ns.unwrap_or(""))?;
    }
    // Held until the create below has landed or failed.
    let _addresses = if res.kind == "Service" {
        Some(crate::loops::ipalloc::assign_cluster_ip(api, &mut obj)?)
    } else {
        None
    };
    record_manager(&mut obj, &opts.manager, opts.operation, user_fields, None);
    let name = meta::name(&obj).to_owned();
    if opts.query.dry_run {
        if api.store.get(&key_of(res, ns, &name))?.is_some() {
            return Err(ApiError::already_exists(res.group, res.plural, &name));
        }
        return Ok(obj);
    }
    let key = key_of(res, ns, &name);
    match api.store.create(key, meta::encode(&obj)).await {
        Ok(rv) => {
            metadata_mut(&mut obj).insert("resourceVersion".into(), rv.to_string().into());
            Ok(obj)
        }
        Err(StoreError::AlreadyExists) => {
            Err(ApiError::already_exists(res.group, res.plural, &name))
        }
        Err(e) => Err(e.into()),
    }
}

fn with_warnings(mut resp: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let v = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(h) = hyper::header::HeaderValue::from_str(&v) {
            resp.headers_mut().append("warning", h);
        }
    }
    resp
}

async fn create(api: &Api, t: &Target, call: &Call) -> ApiResult<Response<Body>> {
    let raw = decode_body(call)?;
    let opts = WriteOpts {
        query: &call.query,
        manager: manager(call),
        operation: "Update",
        fields: None,
    };
    let mut warnings = Vec::new();
    let obj = create_object(api, t.res, t.ns.as_deref(), raw, &opts, &mut warnings).await?;
    Ok(with_warnings(json(201, &obj), &warnings))
}

fn immutable_selector(res: &Resource, old: &Value, new: &Value) -> Option<Cause> {
    if matches!(res.kind, "Deployment" | "ReplicaSet" | "DaemonSet" | "Job")
        && old["spec"]["selector"] != new["spec"]["selector"]
    {
        return Some(Cause::invalid(
            "spec.selector",
            &json!(format!("v1.LabelSelector{}", new["spec"]["selector"])),
            "field is immutable",
        ));
    }
    None
}

/// Updates `old` to `new` (a full object): the subresource decides what may change;
/// identity metadata is kept; generation bumps on spec changes. `expected` is the
/// client's resourceVersion precondition.
#[allow(clippy::too_many_arguments)]
pub async fn update_object(
    api: &Api,
    res: &'static Resource,
    sub: Option<&str>,
    old: &Object,
    mut new: Value,
    expected: Option<u64>,
    opts: &WriteOpts<'_>,
    warnings: &mut Vec<String>,
) -> ApiResult<Value> {
    let old_v = meta::decode(&old.value, old.revision);
    let name = meta::name(&old_v).to_owned();
    if let Some(e) = expected
        && e != old.revision
    {
        return Err(ApiError::conflict(res.group, res.plural, &name));
    }
    check_type(res, &mut new)?;
    let ns = old.key.namespace.clone();
    set_namespace(
        res,
        Some(&ns).filter(|n| !n.is_empty()).map(String::as_str),
        &mut new,
    )?;
    let body_name = meta::name(&new).to_owned();
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let user_fields = match &opts.fields {
        Some(f) => f.clone(),
        None => patch::changed_fieldset(&old_v, &new),
    };
    let new = normalize(res, &new, opts.query, warnings)?;
    let mut obj = match sub {
        Some("status") => {
            let mut o = old_v.clone();
            o["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            o
        }
        Some("finalize") => {
            let mut o = old_v.clone();
            o["spec"]["finalizers"] = new["spec"]["finalizers"].clone();
            o
        }
        Some("scale") => unreachable!("scale is handled by its own verb"),
        _ => {
            let mut o = new.clone();
            if res.has_sub("status") {
                match old_v.get("status") {
                    Some(s) => o["status"] = s.clone(),
                    None => {
                        if let Some(m) = o.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            o
        }
    };
    {
        let om = old_v["metadata"].as_object().cloned().unwrap_or_default();
        let md = metadata_mut(&mut obj);
        md.insert("name".into(), name.clone().into());
        let keep: &[&str] = if opts.operation == "Apply" {
            // Server-side apply computed ownership (forced changes move fields).
            &[
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "generateName",
            ]
        } else {
            &[
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "managedFields",
                "generateName",
            ]
        };
        for k in keep.iter().copied() {
            match om.get(k) {
                Some(v) => md.insert(k.into(), v.clone()),
                None => md.remove(k),
            };
        }
    }
    if res.tracks_generation() && old_v["spec"] != obj["spec"] {
        let g = old_v["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        metadata_mut(&mut obj).insert("generation".into(), g.into());
    }
    defaults::apply(res.kind, &mut obj);
    let mut causes = validation::validate(res.kind, &obj);
    causes.extend(immutable_selector(res, &old_v, &obj));
    causes.extend(super::immutable::check(res.kind, &old_v, &obj));
    if !causes.is_empty() {
        return Err(invalid(res, &obj, causes));
    }
    if res.kind == "Service" {
        let old_ip = old_v["spec"]["clusterIP"].clone();
        if !old_ip.is_null() && obj["spec"]["clusterIP"].is_null() {
            obj["spec"]["clusterIP"] = old_ip.clone();
            obj["spec"]["clusterIPs"] = old_v["spec"]["clusterIPs"].clone();
        }
        if obj["spec"]["clusterIP"] != old_ip {
            return Err(invalid(
                res,
                &obj,
                vec![Cause::invalid(
                    "spec.clusterIPs[0]",
                    &obj["spec"]["clusterIP"],
                    "may not change once set",
                )],
            ));
        }
    }
    // Held until the write below has landed or failed.
    let _node_ports = if res.kind == "Service" {
        Some(crate::loops::ipalloc::update_node_ports(
            api, &old_v, &mut obj,
        )?)
    } else {
        None
    };
    // Unchanged objects are not written (their resourceVersion stays).
    let unchanged = {
        let mut a = obj.clone();
        let mut b = old_v.clone();
        for x in [&mut a, &mut b] {
            if let Some(m) = x.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("managedFields");
                m.remove("resourceVersion");
            }
        }
        a == b
    };
    if unchanged {
        return Ok(old_v);
    }
    if !user_fields.as_object().is_none_or(|m| m.is_empty()) || opts.operation == "Apply" {
        record_manager(&mut obj, &opts.manager, opts.operation, user_fields, sub);
    }
    if opts.query.dry_run {
        return Ok(obj);
    }
    // Finalization complete: an object being deleted loses its last finalizer.
    let deleting = !obj["metadata"]["deletionTimestamp"].is_null();
    let no_finalizers = obj["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|f| f.is_empty());
    let ns_pending = res.kind == "Namespace"
        && obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
    let pod_grace = res.kind == "Pod"
        && obj["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            > 0;
    if deleting && no_finalizers && !ns_pending && !pod_grace {
        return match api.store.delete(&old.key, Some(old.revision)).await {
            Ok(_) => {
                let _ = api.gc_wake.try_send(());
                Ok(obj)
            }
            Err(StoreError::Conflict { .. }) => {
                Err(ApiError::conflict(res.group, res.plural, &name))
            }
            Err(StoreError::NotFound) => Err(ApiError::not_found(res.group, res.plural, &name)),
            Err(e) => Err(e.into()),
        };
    }
    match api
        .store
        .update(old.key.clone(), meta::encode(&obj), Some(old.revision))
        .await
    {
        Ok(rv) => {
            metadata_mut(&mut obj).insert("resourceVersion".into(), rv.to_string().into());
            Ok(obj)
        }
        Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(res.group, res.plural, &name)),
        Err(StoreError::NotFound) => Err(ApiError::not_found(res.group, res.plural, &name)),
        Err(e) => Err(e.into()),
    }
}

fn rv_of(v: &Value) -> ApiResult<Option<u64>> {
    match v["metadata"]["resourceVersion"].as_str() {
        None | Some("") => Ok(None),
        Some(s) => meta::parse_rv(s)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("invalid resourceVersion {s:?}"))),
    }
}

async fn update(api: &Api, t: &Target, call: &Call) -> ApiResult<Response<Body>> {
    let name = t.name.as_deref().unwrap_or("");
    let raw = decode_body(call)?;
    let key = target_key(t);
    let Some(old) = api.store.get(&key)? else {
        return Err(ApiError::not_found(t.res.group, t.res.plural, name));
    };
    let opts = WriteOpts {
        query: &call.query,
        manager: manager(call),
        operation: "Update",
        fields: None,
    };
    let mut warnings = Vec::new();
    if t.sub.as_deref() == Some("scale") {
        let replicas = raw["spec"]["replicas"].clone();
        let expected = rv_of(&raw)?;
        let mut new = meta::decode(&old.value, old.revision);
        new["spec"]["replicas"] = replicas;
        let obj =
            update_object(api, t.res, None, &old, new, expected, &opts, &mut warnings).await?;
        return Ok(json(200, &scale_view(&obj)));
    }
    let expected = rv_of(&raw)?;
    let obj = update_object(
        api,
        t.res,
        t.sub.as_deref(),
        &old,
        raw,
        expected,
        &opts,
        &mut warnings,
    )
    .await?;
    Ok(with_warnings(json(200, &obj), &warnings))
}

async fn patch_object(api: &Api, t: &Target, call: &Call) -> ApiResult<Response<Body>> {
    let name = t.name.as_deref().unwrap_or("");
    let key = target_key(t);
    let apply = call.content_type.starts_with("application/apply-patch");
    let mut warnings = Vec::new();
    for _attempt in 0..8 {
        let old = api.store.get(&key)?;
        let Some(old) = old else {
            if apply && t.sub.is_none() {
                let raw = decode_body(call)?;
                let opts = WriteOpts {
                    query: &call.query,
                    manager: apply_manager(call)?,
                    operation: "Apply",
                    fields: Some(patch::fieldset(&raw)),
                };
                let obj =
                    create_object(api, t.res, t.ns.as_deref(), raw, &opts, &mut warnings).await?;
                return Ok(with_warnings(json(201, &obj), &warnings));
            }
            return Err(ApiError::not_found(t.res.group, t.res.plural, name));
        };
        let old_v = meta::decode(&old.value, old.revision);
        let is_scale = t.sub.as_deref() == Some("scale");
        let base = if is_scale {
            scale_view(&old_v)
        } else {
            old_v.clone()
        };
        let (patched, operation, mgr, fields) = if apply {
            let mgr = apply_manager(call)?;
            let p = decode_body(call)?;
            let patched = patch::server_side_apply(t.res, &old_v, &p, &mgr, call.query.force)?;
            (patched, "Apply", mgr, Some(patch::fieldset(&p)))
        } else {
            let p = patch::apply_patch(&call.content_type, &base, &call.body)?;
            (p, "Update", manager(call), None)
        };
        let expected = match rv_of(&patched)? {
            Some(rv) if rv != old.revision => Some(rv),
            _ => None,
        };
        let new = if is_scale {
            let mut n = old_v.clone();
            n["spec"]["replicas"] = patched["spec"]["replicas"].clone();
            n
        } else {
            patched
        };
        let opts = WriteOpts {
            query: &call.query,
            manager: mgr,
            operation,
            fields,
        };
        let sub = if is_scale { None } else { t.sub.as_deref() };
        match update_object(api, t.res, sub, &old, new, expected, &opts, &mut warnings).await {
            Ok(obj) => {
                let out = if is_scale { scale_view(&obj) } else { obj };
                return Ok(with_warnings(json(200, &out), &warnings));
            }
            // Someone else wrote in between: patches apply to the latest state.
            Err(e) if e.reason == "Conflict" && expected.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(t.res.group, t.res.plural, name))
}

fn apply_manager(call: &Call) -> ApiResult<String> {
    call.query.field_manager.clone().ok_or_else(|| {
        ApiError::bad_request("PATCH with apply-patch requires the fieldManager query parameter")
    })
}

/// The autoscaling/v1 Scale view of a workload.
pub fn scale_view(obj: &Value) -> Value {
    let md = &obj["metadata"];
    let selector = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": md["name"], "namespace": md["namespace"], "uid": md["uid"],
            "resourceVersion": md["resourceVersion"], "creationTimestamp": md["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// DeleteOptions from the body or the query.
pub struct DeleteOpts {
    pub grace: Option<i64>,
    pub policy: Option<String>,
    pub uid: Option<String>,
    pub rv: Option<u64>,
    pub dry_run: bool,
}

fn delete_opts(call: &Call) -> ApiResult<DeleteOpts> {
    let body: Value = if call.body.is_empty() {
        Value::Null
    } else if super::protobuf::is_protobuf(&call.content_type) {
        super::protobuf::decode(&call.body)?
    } else {
        serde_json::from_slice(&call.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    let policy = body["propagationPolicy"]
        .as_str()
        .map(str::to_owned)
        .or(call.query.propagation_policy.clone());
    if let Some(p) = &policy
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(ApiError::invalid(
            "DeleteOptions",
            "",
            "",
            vec![Cause::unsupported(
                "propagationPolicy",
                &json!(p),
                &["Foreground", "Background", "Orphan"],
            )],
        ));
    }
    // The legacy field: true orphans, false deletes dependents in the background
    // (either way it overrides a finalizer the object carries); never both.
    let orphan = body["orphanDependents"].as_bool();
    if let (Some(_), Some(p)) = (orphan, body["propagationPolicy"].as_str()) {
        return Err(ApiError::invalid(
            "DeleteOptions",
            "",
            "",
            vec![Cause::invalid(
                "propagationPolicy",
                &json!(p),
                "orphanDependents and deletionPropagation cannot be both set",
            )],
        ));
    }
    let legacy = orphan.map(|o| if o { "Orphan" } else { "Background" }.to_owned());
    Ok(DeleteOpts {
        grace: body["gracePeriodSeconds"]
            .as_i64()
            .or(call.query.grace_period_seconds),
        policy: legacy.or(policy),
        uid: body["preconditions"]["uid"].as_str().map(str::to_owned),
        rv: body["preconditions"]["resourceVersion"]
            .as_str()
            .and_then(meta::parse_rv),
        dry_run: call.query.dry_run || body["dryRun"].as_array().is_some_and(|a| !a.is_empty()),
    })
}

/// The garbage collector's finalizers, as upstream names them.
pub const ORPHAN_FINALIZER: &str = "orphan";
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// The finalizers an object is deleted with (upstream's
/// deletionFinalizersForGarbageCollection): an explicit propagation policy replaces
/// the collector's finalizer — `orphan` for Orphan, `foregroundDeletion` for
/// Foreground, neither for Background; without one the object keeps what it carries
/// (so an `orphan` finalizer a client set orphans its dependents).
fn deletion_finalizers(current: &[Value], policy: Option<&str>) -> Vec<Value> {
    let Some(policy) = policy else {
        return current.to_vec();
    };
    let mut out: Vec<Value> = current
        .iter()
        .filter(|f| *f != ORPHAN_FINALIZER && *f != FOREGROUND_FINALIZER)
        .cloned()
        .collect();
    match policy {
        "Orphan" => out.push(json!(ORPHAN_FINALIZER)),
        "Foreground" => out.push(json!(FOREGROUND_FINALIZER)),
        _ => {}
    }
    out
}

/// Whether two finalizer lists hold the same names.
fn same_finalizers(a: &[Value], b: &[Value]) -> bool {
    let names = |l: &[Value]| {
        let mut n: Vec<String> = l
            .iter()
            .map(|f| f.as_str().unwrap_or("").to_owned())
            .collect();
        n.sort();
        n.dedup();
        n
    };
    names(a) == names(b)
}

/// Deletes one object following Kubernetes' rules: finalizers mark it
/// (deletionTimestamp) and leave the rest to the loops. The propagation policy picks
/// the garbage collector's finalizer: Orphan marks the object with `orphan`, and the
/// collector strips its dependents' owner references before letting it go (never
/// while it is live, so no controller re-adopts them first); Foreground marks it with
/// `foregroundDeletion`. Bound pods get a grace period for their node; a second
/// delete may only shorten it.
pub async fn delete_object(
    api: &Api,
    res: &'static Resource,
    key: &Key,
    opts: &DeleteOpts,
) -> ApiResult<Value> {
    let Some(old) = api.store.get(key)? else {
        return Err(ApiError::not_found(res.group, res.plural, &key.name));
    };
    let mut obj = meta::decode(&old.value, old.revision);
    if opts
        .uid
        .as_deref()
        .is_some_and(|u| obj["metadata"]["uid"] != u)
        || opts.rv.is_some_and(|rv| rv != old.revision)
    {
        return Err(ApiError::conflict(res.group, res.plural, &key.name));
    }
    if opts.dry_run {
        return Ok(obj);
    }
    let already = !obj["metadata"]["deletionTimestamp"].is_null();
    let current: Vec<Value> = obj["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let finalizers = deletion_finalizers(&current, opts.policy.as_deref());
    let is_ns = res.kind == "Namespace";
    let grace = if res.kind == "Pod" && !obj["spec"]["nodeName"].as_str().unwrap_or("").is_empty() {
        opts.grace.unwrap_or_else(|| {
            obj["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30)
        })
    } else {
        0
    };
    let force_pod = res.kind == "Pod" && already && opts.grace == Some(0) && finalizers.is_empty();
    if !force_pod && (!finalizers.is_empty() || is_ns || grace > 0) {
        let shorter = opts.grace.filter(|g| {
            *g >= 0
                && obj["metadata"]["deletionGracePeriodSeconds"]
                    .as_i64()
                    .is_some_and(|cur| *g < cur)
        });
        if already && same_finalizers(&current, &finalizers) && shorter.is_none() {
            return Ok(obj);
        }
        let md = metadata_mut(&mut obj);
        if !already {
            md.insert("deletionTimestamp".into(), meta::now().into());
            md.insert("deletionGracePeriodSeconds".into(), grace.into());
        } else if let Some(g) = shorter {
            md.insert("deletionGracePeriodSeconds".into(), g.into());
        }
        if finalizers.is_empty() {
            md.remove("finalizers");
        } else {
            md.insert("finalizers".into(), Value::Array(finalizers));
        }
        if is_ns {
            obj["status"]["phase"] = json!("Terminating");
        }
        let rv = match api
            .store
            .update(key.clone(), meta::encode(&obj), Some(old.revision))
            .await
        {
            Ok(rv) => rv,
            Err(StoreError::Conflict { .. }) => {
                return Err(ApiError::conflict(res.group, res.plural, &key.name));
            }
            Err(e) => return Err(e.into()),
        };
        metadata_mut(&mut obj).insert("resourceVersion".into(), rv.to_string().into());
        let _ = api.gc_wake.try_send(());
        return Ok(obj);
    }
    match api.store.delete(key, Some(old.revision)).await {
        Ok(_) => {}
        Err(StoreError::NotFound) => {
            return Err(ApiError::not_found(res.group, res.plural, &key.name));
        }
        Err(StoreError::Conflict { .. }) => {
            return Err(ApiError::conflict(res.group, res.plural, &key.name));
        }
        Err(e) => return Err(e.into()),
    }
    let _ = api.gc_wake.try_send(());
    Ok(obj)
}

async fn delete(api: &Api, t: &Target, call: &Call) -> ApiResult<Response<Body>> {
    let opts = delete_opts(call)?;
    let obj = delete_object(api, t.res, &target_key(t), &opts).await?;
    Ok(json(200, &obj))
}

async fn delete_collection(api: &Api, t: &Target, call: &Call) -> ApiResult<Response<Body>> {
    let opts = delete_opts(call)?;
    let page = api
        .store
        .list(&t.res.store_name(), list_scope(t), None, None)?;
    let mut items = Vec::new();
    for o in &page.items {
        let v = meta::decode(&o.value, o.revision);
        if selected(&call.query, &v) {
            match delete_object(api, t.res, &o.key, &opts).await {
                Ok(d) => items.push(d),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(json(
        200,
        &json!({
            "apiVersion": t.res.api_version(),
            "kind": format!("{}List", t.res.kind),
            "metadata": {"resourceVersion": api.store.revision().to_string()},
            "items": items,
        }),
    ))
}

fn success(details: Value) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201, "details": details})
}

async fn eviction(api: &Api, t: &Target, call: &Call) -> ApiResult<Response<Body>> {
    let e = decode_body(call)?;
    let opts = DeleteOpts {
        grace: e["deleteOptions"]["gracePeriodSeconds"].as_i64(),
        policy: None,
        uid: e["deleteOptions"]["preconditions"]["uid"]
            .as_str()
            .map(str::to_owned),
        rv: None,
        dry_run: call.query.dry_run,
    };
    delete_object(api, t.res, &target_key(t), &opts).await?;
    Ok(json(201, &success(json!({"name": t.name, "kind": "pods"}))))
}
