//! Request query parameters and the label and field selectors used by list, watch
//! and deletecollection.

use super::status::ApiError;
use serde_json::Value;
use std::collections::BTreeMap;

/// The query parameters the API understands.
#[derive(Default, Debug, Clone)]
pub struct Query {
    pub watch: bool,
    pub resource_version: Option<String>,
    pub label_selector: Option<LabelSelector>,
    pub field_selector: Option<FieldSelector>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_bookmarks: bool,
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub field_validation: Option<String>,
    pub force: bool,
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub pretty: bool,
    pub raw: BTreeMap<String, String>,
}

impl Query {
    pub fn parse(q: Option<&str>) -> Result<Query, ApiError> {
        let mut out = Query::default();
        let Some(q) = q else { return Ok(out) };
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            let v = v.into_owned();
            match &*k {
                "watch" => out.watch = v == "true" || v == "1",
                "resourceVersion" => {
                    out.resource_version = Some(v.clone()).filter(|s| !s.is_empty())
                }
                "labelSelector" if !v.is_empty() => {
                    out.label_selector = Some(LabelSelector::parse(&v)?)
                }
                "fieldSelector" if !v.is_empty() => {
                    out.field_selector = Some(FieldSelector::parse(&v)?)
                }
                "limit" => {
                    let n: usize = v
                        .parse()
                        .map_err(|_| ApiError::bad_request(format!("invalid limit {v:?}")))?;
                    out.limit = (n > 0).then_some(n);
                }
                "continue" => out.continue_token = Some(v.clone()).filter(|s| !s.is_empty()),
                "timeoutSeconds" => {
                    out.timeout_seconds = Some(v.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid timeoutSeconds {v:?}"))
                    })?)
                }
                "allowWatchBookmarks" => out.allow_bookmarks = v == "true",
                "dryRun" => out.dry_run = v == "All",
                "fieldManager" => out.field_manager = Some(v.clone()),
                "fieldValidation" => out.field_validation = Some(v.clone()),
                "force" => out.force = v == "true",
                "gracePeriodSeconds" => {
                    out.grace_period_seconds = Some(v.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid gracePeriodSeconds {v:?}"))
                    })?)
                }
                "propagationPolicy" => out.propagation_policy = Some(v.clone()),
                "pretty" => out.pretty = v == "true",
                _ => {}
            }
            out.raw.insert(k.into_owned(), v);
        }
        if let Some(d) = out.raw.get("dryRun")
            && d != "All"
        {
            return Err(ApiError::bad_request(format!(
                "Invalid dry run value: {d:?}: supported values: \"All\""
            )));
        }
        Ok(out)
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (`app=web,tier!=db,env in (a,b),!legacy`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabelSelector(pub Vec<Requirement>);

fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn set_values(s: &str) -> Result<Vec<String>, ApiError> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to parse requirement: expected '(' ... ')' in {s:?}"
            ))
        })?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, ApiError> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().to_owned(), set_values(v)?)
            } else if let Some((k, v)) = part.split_once(" in ") {
                Requirement::In(k.trim().to_owned(), set_values(v)?)
            } else {
                Requirement::Exists(part.to_owned())
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether the labels (a JSON object or null) satisfy every requirement.
    pub fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }

    /// Builds a selector from a `metav1.LabelSelector` JSON object (matchLabels and
    /// matchExpressions).
    pub fn from_json(sel: &Value) -> LabelSelector {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Requirement::Eq(
                    k.clone(),
                    v.as_str().unwrap_or("").to_owned(),
                ));
            }
        }
        if let Some(es) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in es {
                let k = e["key"].as_str().unwrap_or("").to_owned();
                let vals: Vec<String> = e["values"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                reqs.push(match e["operator"].as_str().unwrap_or("") {
                    "In" => Requirement::In(k, vals),
                    "NotIn" => Requirement::NotIn(k, vals),
                    "Exists" => Requirement::Exists(k),
                    _ => Requirement::NotExists(k),
                });
            }
        }
        LabelSelector(reqs)
    }
}

/// A parsed field selector: `metadata.name=x,spec.nodeName!=`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, ApiError> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            out.push((k.trim().to_owned(), eq, v.trim().to_owned()));
        }
        Ok(FieldSelector(out))
    }

    /// Fields are looked up by their dotted path in the object; a missing field
    /// reads as the empty string (as Kubernetes' field labels do).
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let mut cur = obj;
            for p in path.split('.') {
                cur = cur.get(p).unwrap_or(&Value::Null);
            }
            let have = match cur {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (have == *want) == *eq
        })
    }

    /// The value required for `field` by an equality term, if any.
    pub fn required(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, eq, _)| *eq && k == field)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_forms() {
        let s = LabelSelector::parse("app=web,tier!=db,env in (a, b),!legacy,track").unwrap();
        assert!(s.matches(&json!({"app": "web", "env": "b", "track": "x"})));
        assert!(!s.matches(&json!({"app": "web", "env": "c", "track": "x"})));
        assert!(!s.matches(&json!({"app": "web", "env": "a", "track": "x", "legacy": "1"})));
        assert!(!s.matches(&json!({"app": "web", "env": "a", "tier": "db", "track": ""})));
        assert!(!s.matches(&Value::Null));
    }

    #[test]
    fn field_selector_reads_paths() {
        let f = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").unwrap();
        assert!(f.matches(&json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})));
        assert!(!f.matches(&json!({"spec": {"nodeName": "n2"}})));
        let empty = FieldSelector::parse("spec.nodeName=").unwrap();
        assert!(empty.matches(&json!({"spec": {}})));
        assert!(FieldSelector::parse("bogus").is_err());
    }
}
