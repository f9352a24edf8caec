//! The binding as an in-place edit of the stored bytes. The API stores objects as
//! serde_json's compact output with sorted keys, so binding a pod only inserts
//! `spec.nodeName`, puts one condition into `status.conditions` and appends one
//! managedFields entry: the rest of the pod is copied as it is instead of being decoded
//! into a tree and encoded again. Anything off that shape (whitespace, escaped keys,
//! binding annotations, a binding entry already in managedFields, an empty nodeName)
//! makes it step back (`None`) to the general path, which gives the same result.

use super::{ApiError, Binding, Facts, binding_fields, refusal, scheduled};
use serde_json::{Value, json};
use std::ops::Range;

/// One member of an object: its key (inside the quotes) and its value.
struct Member {
    key: Range<usize>,
    value: Range<usize>,
}

/// Just past the string starting at `i`.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    i += 1;
    loop {
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// Just past the value starting at `i`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let end = i + b[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']'))?;
            (end > i && !b[i..end].iter().any(u8::is_ascii_whitespace)).then_some(end)
        }
    }
}

/// The members of the object at `i` and the position of its `}`.
fn members(b: &[u8], i: usize) -> Option<(Vec<Member>, usize)> {
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut out = Vec::new();
    let mut j = i + 1;
    if b.get(j) == Some(&b'}') {
        return Some((out, j));
    }
    loop {
        let key_end = string_end(b, j)?;
        let key = j + 1..key_end - 1;
        if b[key.clone()].contains(&b'\\') || b.get(key_end) != Some(&b':') {
            return None;
        }
        let end = value_end(b, key_end + 1)?;
        out.push(Member {
            key,
            value: key_end + 1..end,
        });
        match *b.get(end)? {
            b',' => j = end + 1,
            b'}' => return Some((out, end)),
            _ => return None,
        }
    }
}

/// The elements of the array at `i` and the position of its `]`.
fn elements(b: &[u8], i: usize) -> Option<(Vec<Range<usize>>, usize)> {
    if b.get(i) != Some(&b'[') {
        return None;
    }
    let mut out = Vec::new();
    let mut j = i + 1;
    if b.get(j) == Some(&b']') {
        return Some((out, j));
    }
    loop {
        let end = value_end(b, j)?;
        out.push(j..end);
        match *b.get(end)? {
            b',' => j = end + 1,
            b']' => return Some((out, end)),
            _ => return None,
        }
    }
}

fn find<'m>(b: &[u8], ms: &'m [Member], key: &str) -> Option<&'m Member> {
    ms.iter().find(|m| &b[m.key.clone()] == key.as_bytes())
}

fn is(b: &[u8], m: Option<&Member>, json: &[u8]) -> bool {
    m.is_some_and(|m| &b[m.value.clone()] == json)
}

/// A string member's value (`""` when absent or null); `None` when it is no string.
fn string(b: &[u8], m: Option<&Member>) -> Option<String> {
    match m {
        None => Some(String::new()),
        Some(m) => match serde_json::from_slice::<Value>(&b[m.value.clone()]).ok()? {
            Value::String(s) => Some(s),
            Value::Null => Some(String::new()),
            _ => None,
        },
    }
}

/// A change of the bytes: `at` replaced by `text` (an insertion when `at` is empty).
struct Splice {
    at: Range<usize>,
    text: Vec<u8>,
}

/// Inserts member `key: value` into the object with members `ms` and `}` at `close`,
/// where sorted order puts it.
fn insert(b: &[u8], ms: &[Member], close: usize, key: &str, value: &[u8]) -> Splice {
    let mut member = Vec::with_capacity(key.len() + value.len() + 4);
    member.push(b'"');
    member.extend_from_slice(key.as_bytes());
    member.extend_from_slice(b"\":");
    member.extend_from_slice(value);
    match ms.iter().find(|m| &b[m.key.clone()] > key.as_bytes()) {
        Some(next) => {
            member.push(b',');
            Splice {
                at: next.key.start - 1..next.key.start - 1,
                text: member,
            }
        }
        None => {
            if !ms.is_empty() {
                member.insert(0, b',');
            }
            Splice {
                at: close..close,
                text: member,
            }
        }
    }
}

/// Appends `item` to the array with elements `items` and `]` at `close`.
fn push(items: &[Range<usize>], close: usize, item: Vec<u8>) -> Splice {
    let mut text = item;
    if !items.is_empty() {
        text.insert(0, b',');
    }
    Splice {
        at: close..close,
        text,
    }
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON values serialize")
}

/// The binding as splices of `b`, or its refusal; `Ok(None)` for a dry run.
#[allow(clippy::type_complexity)]
pub(super) fn bind(
    b: &[u8],
    binding: &Binding<'_>,
    revision: u64,
    now: &str,
) -> Option<Result<Option<Vec<u8>>, ApiError>> {
    if binding.annotations.is_some_and(|a| !a.is_empty()) {
        return None;
    }
    let (top, top_close) = members(b, 0)?;
    if top_close + 1 != b.len() {
        return None;
    }
    let md = find(b, &top, "metadata")?;
    let (md_ms, md_close) = members(b, md.value.start)?;
    let spec = find(b, &top, "spec")?;
    let (spec_ms, spec_close) = members(b, spec.value.start)?;
    let node = find(b, &spec_ms, "nodeName");
    let gates = find(b, &spec_ms, "schedulingGates");
    let facts = Facts {
        uid: string(b, find(b, &md_ms, "uid"))?,
        deleting: find(b, &md_ms, "deletionTimestamp").is_some_and(|m| !is(b, Some(m), b"null")),
        node: string(b, node)?,
        gated: gates.is_some_and(|g| b[g.value.start] == b'[' && !is(b, Some(g), b"[]")),
    };
    if let Some(e) = refusal(binding, revision, &facts) {
        return Some(Err(e));
    }
    if binding.dry_run {
        return Some(Ok(None));
    }
    if node.is_some() {
        // Present but empty: the general path replaces it.
        return None;
    }
    let mut splices = Vec::with_capacity(3);

    // metadata.managedFields: one more entry, unless this manager has one to merge.
    let api_version = string(b, find(b, &top, "apiVersion"))?;
    let entry = to_vec(&json!({
        "apiVersion": api_version, "fieldsType": "FieldsV1", "fieldsV1": binding_fields(),
        "manager": binding.manager, "operation": "Update", "subresource": "binding",
        "time": now,
    }));
    match find(b, &md_ms, "managedFields") {
        None => {
            let mut list = entry;
            list.insert(0, b'[');
            list.push(b']');
            splices.push(insert(b, &md_ms, md_close, "managedFields", &list));
        }
        Some(mf) => {
            let (items, close) = elements(b, mf.value.start)?;
            let manager = to_vec(&json!(binding.manager));
            for item in &items {
                let (ms, _) = members(b, item.start)?;
                if is(b, find(b, &ms, "manager"), &manager)
                    && is(b, find(b, &ms, "operation"), b"\"Update\"")
                    && is(b, find(b, &ms, "subresource"), b"\"binding\"")
                {
                    return None;
                }
            }
            splices.push(push(&items, close, entry));
        }
    }

    // spec.nodeName.
    splices.push(insert(
        b,
        &spec_ms,
        spec_close,
        "nodeName",
        &to_vec(&json!(binding.node)),
    ));

    // status.conditions: PodScheduled=True in place of the old one, or appended.
    let mut cond = scheduled();
    match find(b, &top, "status") {
        None => {
            cond.insert("lastTransitionTime".into(), now.into());
            let status = to_vec(&json!({"conditions": [cond]}));
            splices.push(insert(b, &top, top_close, "status", &status));
        }
        Some(st) => {
            let (st_ms, st_close) = members(b, st.value.start)?;
            match find(b, &st_ms, "conditions") {
                None => {
                    cond.insert("lastTransitionTime".into(), now.into());
                    let list = to_vec(&json!([cond]));
                    splices.push(insert(b, &st_ms, st_close, "conditions", &list));
                }
                Some(cs) => {
                    let (items, close) = elements(b, cs.value.start)?;
                    let mut old = None;
                    for item in &items {
                        let (ms, _) = members(b, item.start)?;
                        if is(b, find(b, &ms, "type"), b"\"PodScheduled\"") {
                            old = Some((item.clone(), ms));
                            break;
                        }
                    }
                    match old {
                        None => {
                            cond.insert("lastTransitionTime".into(), now.into());
                            splices.push(push(&items, close, to_vec(&Value::Object(cond))));
                        }
                        Some((at, ms)) => {
                            let same_status = is(b, find(b, &ms, "status"), b"\"True\"");
                            let plain = find(b, &ms, "reason").is_none()
                                && find(b, &ms, "message").is_none();
                            if !(same_status && plain) {
                                let kept = find(b, &ms, "lastTransitionTime")
                                    .filter(|_| same_status)
                                    .and_then(|m| {
                                        serde_json::from_slice::<Value>(&b[m.value.clone()]).ok()
                                    });
                                cond.insert(
                                    "lastTransitionTime".into(),
                                    kept.unwrap_or_else(|| now.into()),
                                );
                                splices.push(Splice {
                                    at,
                                    text: to_vec(&Value::Object(cond)),
                                });
                            }
                        }
                    }
                }
            }
        }
    }

    splices.sort_by_key(|s| s.at.start);
    let extra: usize = splices.iter().map(|s| s.text.len()).sum();
    let mut out = Vec::with_capacity(b.len() + extra);
    let mut from = 0;
    for s in splices {
        out.extend_from_slice(&b[from..s.at.start]);
        out.extend_from_slice(&s.text);
        from = s.at.end;
    }
    out.extend_from_slice(&b[from..]);
    Some(Ok(Some(out)))
}
