//! API errors as Kubernetes `metav1.Status` objects (reason, code, details with field
//! causes), which is what kubectl prints.

use serde_json::{Value, json};

/// An error reply: HTTP code, Kubernetes reason, message and optional details.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// One field-level problem: `spec.containers[0].image: Required value`.
#[derive(Debug, Clone)]
pub struct Cause {
    pub kind: &'static str,
    pub field: String,
    pub detail: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Cause {
        Cause {
            kind: "FieldValueRequired",
            field: field.into(),
            detail: String::new(),
        }
    }
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl Into<String>) -> Cause {
        Cause {
            kind: "FieldValueInvalid",
            field: field.into(),
            detail: format!("Invalid value: {}: {}", show(value), detail.into()),
        }
    }
    pub fn unsupported(field: impl Into<String>, value: &Value, allowed: &[&str]) -> Cause {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        Cause {
            kind: "FieldValueNotSupported",
            field: field.into(),
            detail: format!(
                "Unsupported value: {}: supported values: {}",
                show(value),
                allowed.join(", ")
            ),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Cause {
        Cause {
            kind: "FieldValueDuplicate",
            field: field.into(),
            detail: format!("Duplicate value: {}", show(value)),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Cause {
        Cause {
            kind: "FieldValueForbidden",
            field: field.into(),
            detail: format!("Forbidden: {}", detail.into()),
        }
    }
    /// The message kubectl shows: `field: Detail`.
    pub fn message(&self) -> String {
        let detail = if self.kind == "FieldValueRequired" {
            "Required value".to_owned()
        } else {
            self.detail.clone()
        };
        format!("{}: {}", self.field, detail)
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }
    pub fn not_found(group: &str, plural: &str, name: &str) -> ApiError {
        let qualified = qualified(group, plural);
        let mut e = ApiError::new(404, "NotFound", format!("{qualified} \"{name}\" not found"));
        e.details = Some(json!({"name": name, "group": group, "kind": plural}));
        e
    }
    pub fn already_exists(group: &str, plural: &str, name: &str) -> ApiError {
        let qualified = qualified(group, plural);
        let mut e = ApiError::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
        );
        e.details = Some(json!({"name": name, "group": group, "kind": plural}));
        e
    }
    pub fn conflict(group: &str, plural: &str, name: &str) -> ApiError {
        let qualified = qualified(group, plural);
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {qualified} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
        e.details = Some(json!({"name": name, "group": group, "kind": plural}));
        e
    }
    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(user: &str, verb: &str, group: &str, plural: &str, ns: &str) -> ApiError {
        let scope = if ns.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{ns}\"")
        };
        let mut e = ApiError::new(
            403,
            "Forbidden",
            format!(
                "{plural}{} is forbidden: User \"{user}\" cannot {verb} resource \"{plural}\" in API group \"{group}\" {scope}",
                if group.is_empty() {
                    String::new()
                } else {
                    format!(".{group}")
                }
            ),
        );
        e.details = Some(json!({"group": group, "kind": plural}));
        e
    }
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }
    /// 422 Invalid with one cause per field problem.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let msgs: Vec<String> = causes.iter().map(Cause::message).collect();
        let joined = if msgs.len() == 1 {
            msgs[0].clone()
        } else {
            format!("[{}]", msgs.join(", "))
        };
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {joined}"),
        );
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| {
                let message = c.message();
                let message = message
                    .strip_prefix(&format!("{}: ", c.field))
                    .unwrap_or(&message)
                    .to_owned();
                json!({"reason": c.kind, "message": message, "field": c.field})
            })
            .collect();
        e.details = Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}));
        e
    }
    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

impl From<flotilla_store::StoreError> for ApiError {
    fn from(e: flotilla_store::StoreError) -> Self {
        use flotilla_store::StoreError as E;
        match e {
            E::Gone { oldest } => ApiError::gone(format!(
                "too old resource version: history before {oldest} has been compacted"
            )),
            E::InvalidKey(m) => ApiError::bad_request(m),
            other => ApiError::internal(other),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_each_field_like_kubernetes() {
        let e = ApiError::invalid(
            "Pod",
            "",
            "p",
            vec![Cause::required("spec.containers[0].image")],
        );
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "Pod \"p\" is invalid: spec.containers[0].image: Required value"
        );
        let s = e.to_status();
        assert_eq!(
            s["details"]["causes"][0]["field"],
            "spec.containers[0].image"
        );
    }
}
