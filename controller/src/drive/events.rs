//! Event recording, as client-go's recorder does it: one `core/v1` Event per object,
//! reason and message, whose `count` and `lastTimestamp` go up when it repeats.

use super::Ctx;
use super::write;
use crate::api::meta;
use flotilla_controllers::Event;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;

/// Remembers recent events so repeats update them instead of piling up.
#[derive(Default)]
pub struct Recorder {
    recent: Mutex<HashMap<String, (String, String)>>,
}

const REMEMBERED: usize = 4096;

/// Records `ev` (failures are logged, never fatal: events are best effort).
pub async fn record(ctx: &Ctx, ev: &Event, component: &str) {
    let r = &ev.regarding;
    let ns = r
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let name = r.name.clone().unwrap_or_default();
    let dedup = format!(
        "{}/{}/{}/{}/{}",
        r.uid.as_deref().unwrap_or(""),
        ns,
        name,
        ev.reason,
        ev.message
    );
    let res = write::resource("", "events");
    let now = meta::now();
    let known = ctx
        .events
        .recent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&dedup)
        .cloned();
    if let Some((ev_ns, ev_name)) = known {
        let r = write::modify(ctx, res, &ev_ns, &ev_name, None, component, |v| {
            let n = v["count"].as_i64().unwrap_or(1);
            v["count"] = json!(n + 1);
            v["lastTimestamp"] = json!(now);
            true
        })
        .await;
        match r {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e.message, "updating an event");
                return;
            }
        }
    }
    let obj = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": r,
        "reason": ev.reason,
        "message": ev.message,
        "type": ev.type_.as_str(),
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    match write::create(ctx, res, &ns, obj, component).await {
        Ok(v) => {
            let mut recent = ctx.events.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() >= REMEMBERED {
                recent.clear();
            }
            recent.insert(dedup, (ns, meta::name(&v).to_owned()));
        }
        Err(e) => tracing::debug!(error = %e.message, reason = %ev.reason, "recording an event"),
    }
}
