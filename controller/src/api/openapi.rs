//! OpenAPI v3 documents generated from k8s-openapi's schemas (schemars): the
//! `/openapi/v3` index and one document per group/version. Operations carry
//! `x-kubernetes-group-version-kind` and the `fieldValidation` parameter — how kubectl
//! learns that the server validates fields — and kinds carry their GVK so `kubectl
//! explain` finds them. Patch operations do not advertise strategic merge in the
//! document, so kubectl computes strategic patches from its built-in types' tags.

use super::registry::{GROUPS, RESOURCES, Resource};
use super::status::{ApiError, ApiResult};
use super::{Body, json};
use hyper::Response;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::LazyLock;

/// `/openapi/v2` is not served; kubectl falls back to v3 or its built-in types.
pub fn v2_response() -> Response<Body> {
    json(
        404,
        &ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .to_status(),
    )
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

struct Doc {
    bytes: Vec<u8>,
    hash: String,
}

static DOCS: LazyLock<BTreeMap<String, Doc>> = LazyLock::new(|| {
    let mut gvs = vec![(String::new(), "v1".to_owned())];
    gvs.extend(
        GROUPS
            .iter()
            .map(|(g, v)| ((*g).to_owned(), (*v).to_owned())),
    );
    gvs.into_iter()
        .map(|(g, v)| {
            let doc = build(&g, &v);
            let bytes = serde_json::to_vec(&doc).expect("json");
            let mut h = DefaultHasher::new();
            bytes.hash(&mut h);
            (
                gv_path(&g, &v),
                Doc {
                    bytes,
                    hash: format!("{:016X}", h.finish()),
                },
            )
        })
        .collect()
});

/// The index: one entry per group/version.
pub fn v3_root() -> Value {
    let paths: Map<String, Value> = DOCS
        .iter()
        .map(|(p, d)| {
            (
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", d.hash)}),
            )
        })
        .collect();
    json!({"paths": paths})
}

/// One group/version document.
pub fn v3_doc(path: &str) -> ApiResult<Response<Body>> {
    match DOCS.get(path) {
        Some(d) => Ok(super::json_bytes(200, d.bytes.clone())),
        None => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    }
}

fn gvk(r: &Resource) -> Value {
    json!([{"group": r.group, "version": r.version, "kind": r.kind}])
}

fn param(name: &str, location: &str) -> Value {
    json!({"name": name, "in": location, "schema": {"type": "string", "uniqueItems": true}})
}

fn body_ref(def: &str, types: &[&str]) -> Value {
    let content: Map<String, Value> = types
        .iter()
        .map(|t| {
            (
                (*t).to_owned(),
                json!({"schema": {"$ref": format!("#/components/schemas/{def}")}}),
            )
        })
        .collect();
    json!({"content": content, "required": true})
}

fn ok(def: &str) -> Value {
    json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{def}")}}}}})
}

fn operations(r: &Resource) -> Vec<(String, Value)> {
    let base = format!("/{}", gv_path(r.group, r.version));
    let (coll, item) = if r.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", r.plural),
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
        )
    } else {
        (
            format!("{base}/{}", r.plural),
            format!("{base}/{}/{{name}}", r.plural),
        )
    };
    let ext = |action: &str| json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk(r)[0]});
    let with = |mut op: Value, extra: Value| {
        if let (Some(o), Some(e)) = (op.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        op
    };
    let write_params = json!([
        param("dryRun", "query"),
        param("fieldManager", "query"),
        param("fieldValidation", "query")
    ]);
    let collection = json!({
        "get": with(json!({"operationId": format!("list{}", r.kind), "responses": ok(&format!("{}List", r.definition))}), ext("list")),
        "post": with(json!({"operationId": format!("create{}", r.kind), "parameters": write_params,
            "requestBody": body_ref(r.definition, &["*/*"]), "responses": ok(r.definition)}), ext("post")),
    });
    let patch_types = [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
    ];
    let single = json!({
        "get": with(json!({"operationId": format!("read{}", r.kind), "responses": ok(r.definition)}), ext("get")),
        "put": with(json!({"operationId": format!("replace{}", r.kind), "parameters": write_params,
            "requestBody": body_ref(r.definition, &["*/*"]), "responses": ok(r.definition)}), ext("put")),
        "patch": with(json!({"operationId": format!("patch{}", r.kind),
            "parameters": [param("dryRun", "query"), param("fieldManager", "query"), param("fieldValidation", "query"), param("force", "query")],
            "requestBody": {"content": patch_types.iter().map(|t| ((*t).to_owned(), json!({"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}}))).collect::<Map<String, Value>>(), "required": true},
            "responses": ok(r.definition)}), ext("patch")),
        "delete": with(json!({"operationId": format!("delete{}", r.kind), "responses": ok(r.definition)}), ext("delete")),
        "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
    });
    vec![(coll, collection), (item, single)]
}

fn build(group: &str, version: &str) -> Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    let mut kinds = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        (r.schema)(&mut generator);
        kinds.push(r);
        for (p, v) in operations(r) {
            paths.insert(p, v);
        }
    }
    let mut schemas = generator.take_definitions(true);
    for r in &kinds {
        if let Some(s) = schemas.get_mut(r.definition).and_then(Value::as_object_mut) {
            s.insert("x-kubernetes-group-version-kind".into(), gvk(r));
        }
        let list = json!({
            "description": format!("{}List is a list of {}.", r.kind, r.kind),
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{}", r.definition)}},
                "metadata": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"},
            },
            "x-kubernetes-group-version-kind": [{"group": r.group, "version": r.version, "kind": format!("{}List", r.kind)}],
        });
        schemas.insert(format!("{}List", r.definition), list);
    }
    schemas
        .entry("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta".to_owned())
        .or_insert_with(|| json!({"type": "object", "properties": {"continue": {"type": "string"}, "resourceVersion": {"type": "string"}, "remainingItemCount": {"type": "integer", "format": "int64"}}}));
    schemas.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch".to_owned(),
        json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object"}),
    );
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_advertise_field_validation_and_gvks() {
        let root = v3_root();
        assert!(
            root["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        let doc: Value = serde_json::from_slice(&DOCS["apis/apps/v1"].bytes).unwrap();
        let op = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        let dep = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            dep["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"].is_object());
    }
}
