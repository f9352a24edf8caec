//! OpenAPI v3: the `/openapi/v3` index and one document per group/version, served from
//! JSON embedded in the binary (`openapi/*.json`, generated from k8s-openapi's schemas by
//! the test-only `generate` module and checked by a test to match the registry), so
//! serving them costs neither schemars' code in the binary nor memory held after the
//! first request. Operations carry `x-kubernetes-group-version-kind` and the
//! `fieldValidation` parameter — how kubectl learns that the server validates fields —
//! and kinds carry their GVK so `kubectl explain` finds them. Patch operations do not
//! advertise strategic merge in the document, so kubectl computes strategic patches from
//! its built-in types' tags.

#[cfg(test)]
mod generate;

use super::status::{ApiError, ApiResult};
use super::{Body, full, json};
use hyper::Response;
use serde_json::{Map, Value, json};
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

/// The documents: (group/version path, compact JSON). Regenerate with
/// `FLOTILLA_UPDATE_OPENAPI=1 cargo test -p flotilla-controller openapi`.
static DOCS: &[(&str, &[u8])] = &[
    ("api/v1", include_bytes!("openapi/api_v1.json")),
    ("apis/apps/v1", include_bytes!("openapi/apis_apps_v1.json")),
    (
        "apis/batch/v1",
        include_bytes!("openapi/apis_batch_v1.json"),
    ),
    (
        "apis/coordination.k8s.io/v1",
        include_bytes!("openapi/apis_coordination.k8s.io_v1.json"),
    ),
];

/// The file a document is kept in, under `openapi/`.
#[cfg(test)]
fn file_name(path: &str) -> String {
    format!("{}.json", path.replace('/', "_"))
}

/// Each document's hash, for the index's URLs (clients cache documents by it).
static HASHES: LazyLock<Vec<String>> = LazyLock::new(|| {
    DOCS.iter()
        .map(|(_, bytes)| {
            let mut h = DefaultHasher::new();
            bytes.hash(&mut h);
            format!("{:016X}", h.finish())
        })
        .collect()
});

/// The index: one entry per group/version.
pub fn v3_root() -> Value {
    let paths: Map<String, Value> = DOCS
        .iter()
        .zip(HASHES.iter())
        .map(|((p, _), hash)| {
            (
                (*p).to_owned(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
            )
        })
        .collect();
    json!({"paths": paths})
}

/// One group/version document.
pub fn v3_doc(path: &str) -> ApiResult<Response<Body>> {
    match DOCS.iter().find(|(p, _)| *p == path) {
        Some((_, bytes)) => Ok(Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(full(bytes::Bytes::from_static(bytes)))
            .expect("valid response")),
        None => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn doc(path: &str) -> Value {
        let (_, bytes) = DOCS.iter().find(|(p, _)| *p == path).unwrap();
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn documents_advertise_field_validation_and_gvks() {
        let root = v3_root();
        assert!(
            root["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        let doc = doc("apis/apps/v1");
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

    #[test]
    fn documents_are_served_whole_and_unknown_ones_are_not_found() {
        let resp = v3_doc("api/v1").unwrap();
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body = smol::block_on(resp.into_body().collect())
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["components"]["schemas"]["io.k8s.api.core.v1.Pod"].is_object());
        assert_eq!(v3_doc("apis/nope/v1").unwrap_err().code, 404);
    }

    /// The embedded documents are what the registry and k8s-openapi's schemas give
    /// today. With FLOTILLA_UPDATE_OPENAPI=1 set, rewrites them instead.
    #[test]
    fn embedded_documents_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/openapi");
        let fresh = generate::all();
        if std::env::var_os("FLOTILLA_UPDATE_OPENAPI").is_some() {
            for (path, bytes) in &fresh {
                std::fs::write(dir.join(file_name(path)), bytes).unwrap();
            }
            return;
        }
        let served: Vec<&str> = DOCS.iter().map(|(p, _)| *p).collect();
        let generated: Vec<&str> = fresh.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(served, generated, "DOCS must list every group/version");
        for ((path, embedded), (_, bytes)) in DOCS.iter().zip(&fresh) {
            assert!(
                embedded == bytes,
                "the embedded OpenAPI document {path} is stale: run \
                 FLOTILLA_UPDATE_OPENAPI=1 cargo test -p flotilla-controller openapi"
            );
        }
    }
}
