//! The Endpoints reconciler: each service's ready (and not-ready) pod addresses, kept
//! in its Endpoints object; a deleted service's Endpoints go too.

use super::Ctx;
use super::cache::ObjKey;
use super::write;
use crate::api::status::ApiResult;
use flotilla_controllers::endpoints;
use flotilla_scheduler::selectors::map_selector_matches;
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One service (the key of the service and of its Endpoints).
pub async fn reconcile(ctx: Arc<Ctx>, key: ObjKey) -> ApiResult<Option<Duration>> {
    let existing = ctx.endpoints.get(&key);
    let actions = match ctx.services.get(&key) {
        None => match existing {
            Some(ep) => endpoints::reconcile_deleted(&ep),
            None => return Ok(None),
        },
        Some(svc) => {
            // Only the pods the selector picks become transient Pods (the controller
            // ignores the others).
            let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
            let empty = BTreeMap::new();
            let pods: Vec<Pod> = match selector.filter(|s| !s.is_empty()) {
                None => Vec::new(),
                Some(sel) => ctx
                    .pods
                    .list_ns(&key.0)
                    .iter()
                    .filter(|p| map_selector_matches(sel, p.labels.as_deref().unwrap_or(&empty)))
                    .map(|p| p.to_pod(true))
                    .collect(),
            };
            endpoints::reconcile(&svc, existing.as_deref(), &pods)
        }
    };
    let out = write::execute(&ctx, None, actions).await?;
    write::settle(&ctx, &out).await;
    Ok(out.requeue)
}
