//! The hub's writes, through the API layer's own functions (so defaulting, validation
//! and admission apply) as the field manager `flotilla-agent`: create, read-modify-write
//! with retries on conflicts, delete.

use crate::api::Api;
use crate::api::meta;
use crate::api::objects::{
    DeleteOpts, WriteOpts, create_object, delete_object, key_of, update_object,
};
use crate::api::query::Query;
use crate::api::registry::{self, Resource};
use crate::api::status::{ApiError, ApiResult};
use serde_json::Value;

/// The field manager of what the hub writes for agents.
pub const MANAGER: &str = "flotilla-agent";

/// The registry entry of a built-in resource.
pub fn resource(group: &str, plural: &str) -> &'static Resource {
    registry::find(group, "v1", plural).expect("a built-in resource")
}

fn opts(q: &Query) -> WriteOpts<'_> {
    WriteOpts {
        query: q,
        manager: MANAGER.to_owned(),
        operation: "Update",
        fields: None,
    }
}

/// Creates an object.
pub async fn create(api: &Api, res: &'static Resource, ns: &str, obj: Value) -> ApiResult<Value> {
    let q = Query::default();
    let ns = Some(ns).filter(|n| !n.is_empty());
    create_object(api, res, ns, obj, &opts(&q), &mut Vec::new()).await
}

/// Reads the object, lets `f` change it (false: leave it) and writes it back to `sub`
/// (e.g. `status`), retrying on conflicts. None when it is gone or `f` declined.
pub async fn modify(
    api: &Api,
    res: &'static Resource,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    mut f: impl FnMut(&mut Value) -> bool,
) -> ApiResult<Option<Value>> {
    let key = key_of(res, Some(ns), name);
    let q = Query::default();
    let mut last = None;
    for _ in 0..5 {
        let Some(old) = api.store.get(&key)? else {
            return Ok(None);
        };
        let mut v = meta::decode(&old.value, old.revision);
        if !f(&mut v) {
            return Ok(None);
        }
        match update_object(
            api,
            res,
            sub,
            &old,
            v,
            Some(old.revision),
            &opts(&q),
            &mut Vec::new(),
        )
        .await
        {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.code == 409 => last = Some(e),
            Err(e) if e.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ApiError::internal("too many conflicts")))
}

/// Deletes a pod at once (grace period 0) if it still has `uid`.
pub async fn delete_pod_now(api: &Api, ns: &str, name: &str, uid: &str) -> ApiResult<()> {
    let res = resource("", "pods");
    let o = DeleteOpts {
        grace: Some(0),
        policy: None,
        uid: Some(uid.to_owned()),
        rv: None,
        dry_run: false,
    };
    match delete_object(api, res, &key_of(res, Some(ns), name), &o).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
