//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch
//! for the built-in types (lists merged by their patch merge keys, `$patch`,
//! `$setElementOrder`, `$retainKeys`, `$deleteFromPrimitiveList` directives) and
//! server-side apply with field ownership in managedFields (FieldsV1).

use super::registry::Resource;
use super::status::{ApiError, ApiResult};
use serde_json::{Map, Value, json};

/// The patch merge key of a list field, from Kubernetes' `patchMergeKey` tags.
pub fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        "ports" => {
            if sample.is_some_and(|s| s.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// List fields of scalars merged as sets.
fn is_primitive_merge_list(field: &str) -> bool {
    field == "finalizers"
}

/// Applies a patch body of the given content type to `doc`.
pub fn apply_patch(content_type: &str, doc: &Value, body: &[u8]) -> ApiResult<Value> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let parse = || -> ApiResult<Value> {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
    };
    let mut out = doc.clone();
    match ct {
        "application/merge-patch+json" => {
            let p = parse()?;
            json_patch::merge(&mut out, &p);
        }
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
            json_patch::patch(&mut out, &p).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
        "application/strategic-merge-patch+json" => {
            let p = parse()?;
            if !p.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            }
            strategic_merge(&mut out, &p, "");
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
                ),
            ));
        }
    }
    Ok(out)
}

/// Removes `$` directives from a patch fragment that is inserted as a value.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|i| i.get("$patch").is_none())
                .map(clean)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Strategic merge of `patch` into `target`; `field` is the name of the field being
/// merged (for merge-key lookup of lists).
pub fn strategic_merge(target: &mut Value, patch: &Value, field: &str) {
    let Some(pm) = patch.as_object() else {
        *target = clean(patch);
        return;
    };
    match pm.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = clean(patch);
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    let _ = field;
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, pv) in pm {
        if let Some(f) = k.strip_prefix("$setElementOrder/") {
            if let Some(a) = pv.as_array() {
                orders.push((f.to_owned(), a.clone()));
            }
            continue;
        }
        if let Some(f) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(del)) = (target[f].as_array_mut(), pv.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        let tm = target.as_object_mut().expect("object");
        match pv {
            Value::Null => {
                tm.remove(k);
            }
            Value::Object(_) => {
                let entry = tm.entry(k.clone()).or_insert(Value::Null);
                strategic_merge(entry, pv, k);
                if entry.is_null() {
                    tm.remove(k);
                }
            }
            Value::Array(items) => {
                let current = tm.get(k).and_then(Value::as_array).cloned();
                let merged = merge_list(k, current, items);
                tm.insert(k.clone(), Value::Array(merged));
            }
            other => {
                tm.insert(k.clone(), other.clone());
            }
        }
    }
    if let Some(keep) = pm.get("$retainKeys").and_then(Value::as_array)
        && let Some(tm) = target.as_object_mut()
    {
        tm.retain(|k, _| keep.iter().any(|x| x == k.as_str()));
    }
    for (f, order) in orders {
        let sample = order.first().cloned();
        if let Some(list) = target[&f].as_array_mut() {
            let key = merge_key(&f, sample.as_ref());
            let pos = |item: &Value| {
                order.iter().position(|o| match key {
                    Some(k) => o.get(k).is_some() && o.get(k) == item.get(k),
                    None => o == item,
                })
            };
            list.sort_by_key(|i| pos(i).unwrap_or(usize::MAX));
        }
    }
}

fn merge_list(field: &str, current: Option<Vec<Value>>, items: &[Value]) -> Vec<Value> {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(clean)
            .collect();
    }
    let Some(mut cur) = current else {
        return items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(clean)
            .collect();
    };
    if is_primitive_merge_list(field) {
        for i in items {
            if !cur.contains(i) {
                cur.push(i.clone());
            }
        }
        return cur;
    }
    let sample = items.first().or(cur.first());
    let Some(key) = merge_key(field, sample) else {
        return items.iter().map(clean).collect();
    };
    for item in items {
        let kv = item.get(key);
        let idx = kv.and_then(|kv| cur.iter().position(|c| c.get(key) == Some(kv)));
        match (item.get("$patch").and_then(Value::as_str), idx) {
            (Some("delete"), Some(i)) => {
                cur.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => strategic_merge(&mut cur[i], item, field),
            (_, None) => cur.push(clean(item)),
        }
    }
    cur
}

/// The FieldsV1 set of every field set in `obj`.
pub fn fieldset(obj: &Value) -> Value {
    fieldset_of(obj, "")
}

fn item_key(field: &str, item: &Value) -> Option<String> {
    let key = merge_key(field, Some(item))?;
    let kv = item.get(key)?;
    Some(format!("k:{}", json!({ key: kv })))
}

/// Whether key `k` under `field` is tracked in managedFields: not the top-level
/// apiVersion, kind and status, and of metadata only labels, annotations,
/// finalizers and ownerReferences.
fn owned_field(top: bool, field: &str, k: &str) -> bool {
    if top && matches!(k, "apiVersion" | "kind" | "status") {
        return false;
    }
    field != "metadata"
        || matches!(
            k,
            "labels" | "annotations" | "finalizers" | "ownerReferences"
        )
}

fn fieldset_of(v: &Value, field: &str) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                if !owned_field(field.is_empty(), field, k) {
                    continue;
                }
                out.insert(format!("f:{k}"), fieldset_of(v, k));
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let mut out = Map::new();
            for item in items {
                if let Some(k) = item_key(field, item) {
                    let mut inner = fieldset_of(item, field);
                    inner
                        .as_object_mut()
                        .map(|m| m.insert(".".into(), json!({})));
                    out.insert(k, inner);
                } else if is_primitive_merge_list(field) {
                    out.insert(format!("v:{item}"), json!({}));
                }
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

/// The fields of `new` that differ from `old` (what an Update operation owns).
pub fn changed_fieldset(old: &Value, new: &Value) -> Value {
    fn walk(old: &Value, new: &Value, field: &str, top: bool) -> Option<Value> {
        if old == new {
            return None;
        }
        match (old, new) {
            (Value::Object(o), Value::Object(n)) => {
                let mut out = Map::new();
                for (k, nv) in n {
                    if !owned_field(top, field, k) {
                        continue;
                    }
                    let ov = o.get(k).unwrap_or(&Value::Null);
                    if let Some(c) = walk(ov, nv, k, false) {
                        out.insert(format!("f:{k}"), c);
                    }
                }
                Some(Value::Object(out))
            }
            _ => Some(fieldset_of(new, field)),
        }
    }
    walk(old, new, "", true).unwrap_or_else(|| json!({}))
}

/// Unions `add` into `base` (FieldsV1 sets).
pub fn merge_fieldsets(base: &mut Value, add: &Value) {
    if !base.is_object() {
        *base = json!({});
    }
    if let (Some(b), Some(a)) = (base.as_object_mut(), add.as_object()) {
        for (k, v) in a {
            merge_fieldsets(b.entry(k.clone()).or_insert_with(|| json!({})), v);
        }
    }
}

/// Leaf paths of a FieldsV1 set (each a list of `f:`/`k:`/`v:` segments).
fn leaves(set: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Some(m) = set.as_object() else { return };
    let children: Vec<_> = m.iter().filter(|(k, _)| k.as_str() != ".").collect();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.push(prefix.clone());
        }
        return;
    }
    for (k, v) in children {
        prefix.push(k.clone());
        leaves(v, prefix, out);
        prefix.pop();
    }
}

fn contains_path(set: &Value, path: &[String]) -> bool {
    let mut cur = set;
    for seg in path {
        match cur.get(seg) {
            Some(n) => cur = n,
            None => return false,
        }
    }
    true
}

/// Removes a path from a FieldsV1 set, pruning emptied parents.
fn unset_field(set: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(m) = set.as_object_mut() else { return };
    if rest.is_empty() {
        m.remove(first);
        return;
    }
    if let Some(child) = m.get_mut(first) {
        unset_field(child, rest);
        if child
            .as_object()
            .is_some_and(|c| c.keys().all(|k| k == "."))
        {
            m.remove(first);
        }
    }
}

/// Finds the value at a FieldsV1 path in an object.
fn locate<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path {
        cur = step(cur, seg)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, seg: &str) -> Option<&'a Value> {
    if let Some(f) = seg.strip_prefix("f:") {
        cur.get(f)
    } else if let Some(k) = seg.strip_prefix("k:") {
        let want: Value = serde_json::from_str(k).ok()?;
        cur.as_array()?.iter().find(|i| {
            want.as_object()
                .is_some_and(|w| w.iter().all(|(wk, wv)| i.get(wk) == Some(wv)))
        })
    } else if let Some(v) = seg.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        cur.as_array()?.iter().find(|i| **i == want)
    } else {
        None
    }
}

/// Removes the value at a FieldsV1 path.
fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parent {
        let next = if let Some(f) = seg.strip_prefix("f:") {
            cur.get_mut(f)
        } else if seg.starts_with("k:") || seg.starts_with("v:") {
            let idx = {
                let target = step(cur, seg);
                target.and_then(|t| {
                    cur.as_array()
                        .and_then(|a| a.iter().position(|i| std::ptr::eq(i, t)))
                })
            };
            match idx {
                Some(i) => cur.get_mut(i),
                None => None,
            }
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else {
        let idx = step(cur, last).and_then(|t| {
            cur.as_array()
                .and_then(|a| a.iter().position(|i| std::ptr::eq(i, t)))
        });
        if let (Some(i), Some(a)) = (idx, cur.as_array_mut()) {
            a.remove(i);
        }
    }
}

/// Server-side apply of `config` by `manager` to `live`: fields the manager applied
/// before and no longer sets are removed (unless another manager owns them), changes
/// to fields owned by other managers conflict (409) unless `force`.
pub fn server_side_apply(
    res: &Resource,
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
) -> ApiResult<Value> {
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "the apply configuration must be an object",
        ));
    }
    if config["kind"].as_str().is_some_and(|k| k != res.kind) {
        return Err(ApiError::bad_request(format!(
            "the kind in the apply configuration ({}) does not match the expected kind ({})",
            config["kind"], res.kind
        )));
    }
    let managed = live["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mine = managed
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == "Apply")
        .map(|e| e["fieldsV1"].clone())
        .unwrap_or_else(|| json!({}));
    let others: Vec<&Value> = managed
        .iter()
        .filter(|e| !(e["manager"] == manager && e["operation"] == "Apply"))
        .collect();
    let new_set = fieldset(config);
    // Conflicts: a field this apply changes that another manager owns.
    let mut conflicts = Vec::new();
    let mut leaf = Vec::new();
    leaves(&new_set, &mut Vec::new(), &mut leaf);
    for path in &leaf {
        let (Some(want), have) = (locate(config, path), locate(live, path)) else {
            continue;
        };
        if have == Some(want) || want.is_object() {
            continue;
        }
        for o in &others {
            if contains_path(&o["fieldsV1"], path) {
                conflicts.push(format!(
                    "conflict with \"{}\"{}: .{}",
                    o["manager"].as_str().unwrap_or(""),
                    if o["operation"] == "Update" {
                        " using ".to_owned() + o["apiVersion"].as_str().unwrap_or("")
                    } else {
                        String::new()
                    },
                    path.iter()
                        .map(|s| s.trim_start_matches("f:"))
                        .collect::<Vec<_>>()
                        .join(".")
                ));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let n = conflicts.len();
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {n} conflict{}: {}",
                if n == 1 { "" } else { "s" },
                conflicts.join("\n")
            ),
        );
        e.details = Some(
            json!({"causes": conflicts.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": c})).collect::<Vec<_>>()}),
        );
        return Err(e);
    }
    let mut out = live.clone();
    if force {
        // Forced: the conflicting fields change owner.
        if let Some(entries) = out["metadata"]["managedFields"].as_array_mut() {
            for e in entries.iter_mut() {
                if e["manager"] == manager && e["operation"] == "Apply" {
                    continue;
                }
                for path in &leaf {
                    unset_field(&mut e["fieldsV1"], path);
                }
            }
            entries.retain(|e| e["fieldsV1"].as_object().is_some_and(|m| !m.is_empty()));
        }
    }
    // Fields this manager no longer applies, owned by nobody else, are removed.
    let mut old_leaves = Vec::new();
    leaves(&mine, &mut Vec::new(), &mut old_leaves);
    for path in old_leaves {
        if contains_path(&new_set, &path) {
            continue;
        }
        if others.iter().any(|o| contains_path(&o["fieldsV1"], &path)) {
            continue;
        }
        remove_path(&mut out, &path);
    }
    let mut cfg = config.clone();
    if let Some(m) = cfg.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
        ] {
            m.remove(k);
        }
    }
    strategic_merge(&mut out, &cfg, "");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_deletes() {
        let mut doc = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}});
        let p = json!({"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "3"}, {"name": "c", "$patch": "delete"}]}});
        strategic_merge(&mut doc, &p, "");
        assert_eq!(
            doc["spec"]["containers"],
            json!([{"name": "b", "image": "2"}, {"name": "a", "image": "3"}])
        );
        let p = json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}});
        strategic_merge(&mut doc, &p, "");
        assert_eq!(
            doc["spec"]["containers"],
            json!([{"name": "a", "image": "3"}])
        );
    }

    #[test]
    fn strategic_merge_null_removes_and_unkeyed_lists_replace() {
        let mut doc =
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"args": ["x", "y"]}});
        strategic_merge(
            &mut doc,
            &json!({"metadata": {"labels": {"b": null}}, "spec": {"args": ["z"]}}),
            "",
        );
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"args": ["z"]}})
        );
    }

    #[test]
    fn ports_merge_by_container_port() {
        let mut doc = json!({"ports": [{"containerPort": 80, "name": "http"}]});
        strategic_merge(&mut doc, &json!({"ports": [{"containerPort": 443}]}), "");
        assert_eq!(doc["ports"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn merge_patch_and_json_patch() {
        let doc = json!({"a": {"b": 1, "c": 2}});
        let out = apply_patch(
            "application/merge-patch+json",
            &doc,
            br#"{"a":{"c":null,"d":3}}"#,
        )
        .unwrap();
        assert_eq!(out, json!({"a": {"b": 1, "d": 3}}));
        let out = apply_patch(
            "application/json-patch+json",
            &doc,
            br#"[{"op":"replace","path":"/a/b","value":5}]"#,
        )
        .unwrap();
        assert_eq!(out["a"]["b"], 5);
        assert!(
            apply_patch(
                "application/json-patch+json",
                &doc,
                br#"[{"op":"test","path":"/a/b","value":9}]"#
            )
            .is_err()
        );
        assert_eq!(
            apply_patch("text/plain", &doc, b"{}").unwrap_err().code,
            415
        );
    }

    #[test]
    fn apply_removes_fields_the_manager_dropped_and_detects_conflicts() {
        let res = super::super::registry::find("", "v1", "configmaps").unwrap();
        let cfg1 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        let mut live = server_side_apply(res, &json!({}), &cfg1, "me", false).unwrap();
        live["metadata"]["managedFields"] =
            json!([{"manager": "me", "operation": "Apply", "fieldsV1": fieldset(&cfg1)}]);
        let cfg2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
        let out = server_side_apply(res, &live, &cfg2, "me", false).unwrap();
        assert_eq!(out["data"], json!({"a": "1"}));
        let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "changed"}});
        let err = server_side_apply(res, &live, &other, "you", false).unwrap_err();
        assert_eq!(err.code, 409);
        let forced = server_side_apply(res, &live, &other, "you", true).unwrap();
        assert_eq!(forced["data"]["a"], "changed");
        let me = &forced["metadata"]["managedFields"][0];
        assert_eq!(me["manager"], "me");
        assert!(me["fieldsV1"]["f:data"].get("f:a").is_none(), "{me}");
        assert!(me["fieldsV1"]["f:data"].get("f:b").is_some(), "{me}");
    }
}
