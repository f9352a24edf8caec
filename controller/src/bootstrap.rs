//! First-start objects: the `default`, `kube-system`, `kube-public` and
//! `kube-node-lease` namespaces and the `kubernetes` service.

use crate::api::objects::{WriteOpts, create_object};
use crate::api::query::Query;
use crate::api::{Api, registry};
use anyhow::Result;
use flotilla_store::Key;
use serde_json::json;

pub async fn run(api: &Api) -> Result<()> {
    let q = Query::default();
    let opts = WriteOpts {
        query: &q,
        manager: "flotilla-controller".into(),
        operation: "Update",
        fields: None,
    };
    let ns_res = registry::find("", "v1", "namespaces").expect("namespaces are served");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        if api.store.get(&Key::cluster("namespaces", ns))?.is_none() {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            create_object(api, ns_res, None, obj, &opts, &mut Vec::new())
                .await
                .map_err(|e| anyhow::anyhow!("creating namespace {ns}: {}", e.message))?;
        }
    }
    let svc_res = registry::find("", "v1", "services").expect("services are served");
    if api
        .store
        .get(&Key::new("services", "default", "kubernetes"))?
        .is_none()
    {
        let obj = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}});
        create_object(api, svc_res, Some("default"), obj, &opts, &mut Vec::new())
            .await
            .map_err(|e| anyhow::anyhow!("creating the kubernetes service: {}", e.message))?;
    }
    Ok(())
}
