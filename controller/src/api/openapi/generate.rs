//! Generates the OpenAPI v3 documents from k8s-openapi's schemas (schemars) and the
//! resource registry. Test-only: the documents are committed under `openapi/` and
//! embedded, so the controller carries neither schemars' code nor the documents'
//! memory; `embedded_documents_are_current` keeps them in step with the registry.

use super::super::registry::{GROUPS, RESOURCES, Resource};
use serde_json::{Map, Value, json};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Every group/version document, as served: (path, compact JSON).
pub fn all() -> Vec<(String, Vec<u8>)> {
    let mut gvs = vec![(String::new(), "v1".to_owned())];
    gvs.extend(
        GROUPS
            .iter()
            .map(|(g, v)| ((*g).to_owned(), (*v).to_owned())),
    );
    gvs.into_iter()
        .map(|(g, v)| {
            let doc = build(&g, &v);
            (gv_path(&g, &v), serde_json::to_vec(&doc).expect("json"))
        })
        .collect()
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
