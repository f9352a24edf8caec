//! Event recording, as client-go's recorder does it: one `core/v1` Event per object,
//! reason and message, whose `count` and `lastTimestamp` go up when it repeats.
//! Loops hand events to a queue and go on; a writer task drains it, several writes at
//! a time, so an event never delays the binding or creation it reports (and a full
//! queue drops events with a warning, as client-go's broadcaster does).

use super::Ctx;
use super::write;
use crate::api::meta;
use flotilla_controllers::Event;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Events waiting to be written at most.
const QUEUE: usize = 16384;
/// Event writes in flight at most.
const WRITERS: usize = 16;

/// The queue of events to write, and recent events so repeats update them instead of
/// piling up.
pub struct Recorder {
    recent: Mutex<HashMap<String, (String, String)>>,
    tx: smol::channel::Sender<(Event, &'static str)>,
    rx: smol::channel::Receiver<(Event, &'static str)>,
    dropped: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Recorder {
        // Unbounded with a length check rather than `bounded(QUEUE)`, which would
        // allocate every slot (~4 MiB) at start; the queue grows only as events wait.
        let (tx, rx) = smol::channel::unbounded();
        Recorder {
            recent: Mutex::default(),
            tx,
            rx,
            dropped: AtomicU64::new(0),
        }
    }
}

const REMEMBERED: usize = 4096;

/// Queues `ev` for writing (events are best effort: a full queue drops it).
pub fn record(ctx: &Ctx, ev: Event, component: &'static str) {
    let full = ctx.events.tx.len() >= QUEUE;
    if full || ctx.events.tx.try_send((ev, component)).is_err() {
        let n = ctx.events.dropped.fetch_add(1, Ordering::Relaxed);
        if n.is_power_of_two() {
            tracing::warn!(dropped = n + 1, "the event queue is full; dropping events");
        }
    }
}

/// Writes queued events forever, up to [`WRITERS`] at a time.
pub async fn run(ctx: Arc<Ctx>) {
    let rx = ctx.events.rx.clone();
    while let Ok(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < WRITERS {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let tasks: Vec<_> = batch
            .into_iter()
            .map(|(ev, component)| {
                let ctx = ctx.clone();
                crate::exec::executor()
                    .spawn(async move { write_event(&ctx, &ev, component).await })
            })
            .collect();
        for t in tasks {
            t.await;
        }
    }
}

/// Writes one event (failures are logged, never fatal).
async fn write_event(ctx: &Ctx, ev: &Event, component: &str) {
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
