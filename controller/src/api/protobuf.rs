//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), as
//! kubectl's typed client sends them for `kubectl create configmap|secret|deployment…`:
//! the `k8s\0` envelope around a `runtime.Unknown`, decoded by descriptor
//! (Kubernetes' own generated.proto, compiled into `protobuf/k8s-v1.33.binpb` by
//! `protobuf/generate.sh`) and converted to the JSON the Go API server would produce.
//! Responses stay JSON; a client that accepts nothing but protobuf gets 406.

use super::status::{ApiError, ApiResult};
use base64::Engine as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, ReflectMessage as _, Value,
};
use serde_json::{Map, Value as Json, json};
use std::sync::LazyLock;

/// The media type of Kubernetes protobuf.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!("protobuf/k8s-v1.33.binpb")[..])
        .expect("the embedded Kubernetes descriptor set decodes")
});

const META: &str = "apimachinery.pkg.apis.meta.v1";
const TIME: &str = "apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "apimachinery.pkg.apis.meta.v1.FieldsV1";
const QUANTITY: &str = "apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "apimachinery.pkg.runtime.RawExtension";
const UNKNOWN: &str = "apimachinery.pkg.runtime.Unknown";

/// Go structs embedded with `json:",inline"`: protobuf nests them as a field, JSON
/// flattens them into the parent. (field name, message name)
const INLINE: &[(&str, &str)] = &[
    ("handler", "ProbeHandler"),
    ("volumeSource", "VolumeSource"),
    ("persistentVolumeSource", "PersistentVolumeSource"),
    ("ephemeralContainerCommon", "EphemeralContainerCommon"),
    ("localObjectReference", "LocalObjectReference"),
];

/// Non-pointer Go fields tagged `omitempty` whose zero value Go always writes to
/// protobuf but leaves out of JSON (for pointer fields, presence means "set", so a
/// zero there is kept). Empty strings are left out everywhere. (message, field)
const VALUE_FIELDS: &[(&str, &str)] = &[
    ("ObjectMeta", "generation"),
    ("Container", "stdin"),
    ("Container", "stdinOnce"),
    ("Container", "tty"),
    ("EphemeralContainerCommon", "stdin"),
    ("EphemeralContainerCommon", "stdinOnce"),
    ("EphemeralContainerCommon", "tty"),
    ("ContainerPort", "hostPort"),
    ("Probe", "initialDelaySeconds"),
    ("Probe", "timeoutSeconds"),
    ("Probe", "periodSeconds"),
    ("Probe", "successThreshold"),
    ("Probe", "failureThreshold"),
    ("PodSpec", "hostNetwork"),
    ("PodSpec", "hostPID"),
    ("PodSpec", "hostIPC"),
    ("VolumeMount", "readOnly"),
    ("ServicePort", "nodePort"),
    ("ServicePort", "targetPort"),
    ("ServiceSpec", "healthCheckNodePort"),
    ("ServiceSpec", "publishNotReadyAddresses"),
    ("DeploymentSpec", "minReadySeconds"),
    ("DeploymentSpec", "paused"),
    ("ReplicaSetSpec", "minReadySeconds"),
    ("DaemonSetSpec", "minReadySeconds"),
    ("NodeSpec", "unschedulable"),
    ("Event", "count"),
];

/// Whether a Content-Type is Kubernetes protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    media_type(content_type) == MEDIA_TYPE
}

fn media_type(s: &str) -> &str {
    s.split(';').next().unwrap_or("").trim()
}

/// Fails with 406 when the Accept header lists only encodings this server does not
/// write (protobuf, CBOR); JSON is the answer otherwise.
pub fn check_accept(accept: &str) -> ApiResult<()> {
    let types: Vec<&str> = accept
        .split(',')
        .map(media_type)
        .filter(|t| !t.is_empty())
        .collect();
    let unsupported = |t: &&str| t.contains("protobuf") || t.contains("cbor");
    if !types.is_empty() && types.iter().all(unsupported) {
        return Err(ApiError::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, application/yaml (the client accepts only {accept})"
            ),
        ));
    }
    Ok(())
}

fn bad(msg: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("error decoding protobuf: {msg}"))
}

/// Decodes a protobuf request body into the object's JSON (with apiVersion and kind
/// from the envelope).
pub fn decode(body: &[u8]) -> ApiResult<Json> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return Err(bad("the body does not start with the \"k8s\\x00\" prefix"));
    };
    let unknown_desc = POOL.get_message_by_name(UNKNOWN).expect("runtime.Unknown");
    let unknown = DynamicMessage::decode(unknown_desc, rest).map_err(bad)?;
    let text = |name: &str| -> String {
        unknown
            .get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let encoding = text("contentEncoding");
    if !encoding.is_empty() {
        return Err(bad(format!("unsupported content encoding {encoding:?}")));
    }
    let inner = text("contentType");
    if !inner.is_empty() && media_type(&inner) != MEDIA_TYPE {
        return Err(bad(format!("unsupported inner content type {inner:?}")));
    }
    let type_meta = unknown
        .get_field_by_name("typeMeta")
        .and_then(|v| v.as_message().cloned());
    let field = |name: &str| -> String {
        type_meta
            .as_ref()
            .and_then(|m| m.get_field_by_name(name))
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if kind.is_empty() {
        return Err(bad("the envelope names no kind"));
    }
    let desc = message_for(&api_version, &kind).ok_or_else(|| {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "no protobuf schema for {kind} in version {api_version:?}; send application/json"
            ),
        )
    })?;
    let raw = unknown
        .get_field_by_name("raw")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let msg = DynamicMessage::decode(desc, raw).map_err(bad)?;
    let mut obj = message_json(&msg)?;
    if let Json::Object(m) = &mut obj {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
    }
    Ok(obj)
}

/// The protobuf message of `kind` in `api_version` (`v1`, `apps/v1`,
/// `coordination.k8s.io/v1`); meta/v1 types (DeleteOptions) in any group.
fn message_for(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group.split('.').next().unwrap_or("") {
        "" | "core" => "core",
        g => g,
    };
    POOL.get_message_by_name(&format!("api.{package}.{version}.{kind}"))
        .or_else(|| POOL.get_message_by_name(&format!("{META}.{kind}")))
}

fn message_json(msg: &DynamicMessage) -> ApiResult<Json> {
    let desc = msg.descriptor();
    match desc.full_name() {
        TIME | MICRO_TIME => return Ok(time_json(msg, desc.full_name() == MICRO_TIME)),
        DURATION => {
            let ns = msg
                .get_field_by_name("duration")
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            return Ok(json!(go_duration(ns)));
        }
        QUANTITY => {
            let s = msg.get_field_by_name("string");
            return Ok(json!(s.as_deref().and_then(Value::as_str).unwrap_or("")));
        }
        INT_OR_STRING => {
            let get = |n: &str| msg.get_field_by_name(n).map(|v| v.into_owned());
            let is_string = get("type").and_then(|v| v.as_i64()).unwrap_or(0) == 1;
            return Ok(if is_string {
                json!(get("strVal").and_then(|v| v.as_str().map(str::to_owned)))
            } else {
                json!(get("intVal").and_then(|v| v.as_i32()).unwrap_or(0))
            });
        }
        RAW_EXTENSION | FIELDS_V1 => {
            let name = if desc.full_name() == FIELDS_V1 {
                "Raw"
            } else {
                "raw"
            };
            let raw = msg
                .get_field_by_name(name)
                .and_then(|v| v.as_bytes().cloned())
                .unwrap_or_default();
            if raw.is_empty() {
                return Ok(Json::Null);
            }
            return serde_json::from_slice(&raw).map_err(|e| {
                bad(format!(
                    "{} holds no JSON ({e}); embedded protobuf objects are not supported",
                    desc.name()
                ))
            });
        }
        _ => {}
    }
    let mut out = Map::new();
    for (field, value) in msg.fields() {
        let name = field.name();
        if let (Kind::Message(m), Value::Message(inner)) = (field.kind(), value)
            && INLINE.contains(&(name, m.name()))
        {
            if let Json::Object(flat) = message_json(inner)? {
                out.extend(flat);
            }
            continue;
        }
        let v = value_json(value)?;
        let omitted = match &v {
            Json::Null => true,
            Json::String(s) => s.is_empty(),
            Json::Bool(b) => !b && VALUE_FIELDS.contains(&(desc.name(), name)),
            Json::Number(n) => {
                n.as_f64() == Some(0.0) && VALUE_FIELDS.contains(&(desc.name(), name))
            }
            Json::Array(a) => a.is_empty(),
            Json::Object(_) => false,
        };
        if !omitted {
            out.insert(name.to_owned(), v);
        }
    }
    Ok(Json::Object(out))
}

fn value_json(v: &Value) -> ApiResult<Json> {
    Ok(match v {
        Value::Bool(b) => json!(b),
        Value::I32(n) => json!(n),
        Value::I64(n) => json!(n),
        Value::U32(n) => json!(n),
        Value::U64(n) => json!(n),
        Value::F32(n) => json!(n),
        Value::F64(n) => json!(n),
        Value::String(s) => json!(s),
        Value::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::EnumNumber(n) => json!(n),
        Value::Message(m) => message_json(m)?,
        Value::List(items) => Json::Array(items.iter().map(value_json).collect::<ApiResult<_>>()?),
        Value::Map(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                out.insert(key, value_json(v)?);
            }
            Json::Object(out)
        }
    })
}

/// metav1.Time (RFC 3339, seconds) and MicroTime (microseconds); Go writes the zero
/// time as an empty message, which JSON shows as null.
fn time_json(msg: &DynamicMessage, micro: bool) -> Json {
    let secs = msg
        .get_field_by_name("seconds")
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let nanos = msg
        .get_field_by_name("nanos")
        .and_then(|v| v.as_i32())
        .unwrap_or(0);
    if secs == 0 && nanos == 0 {
        return Json::Null;
    }
    let Ok(t) = jiff::Timestamp::new(secs, if micro { nanos } else { 0 }) else {
        return Json::Null;
    };
    if micro {
        json!(t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
    } else {
        json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
    }
}

/// A duration in nanoseconds the way Go's time.Duration prints it (`1h2m3.5s`).
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs();
    if ns < 1_000_000_000 {
        let (unit, div) = if ns < 1_000 {
            ("ns", 1)
        } else if ns < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", trim_fraction(ns, div));
    }
    let (h, rest) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let s = trim_fraction(rest, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, m) => format!("{sign}{m}m{s}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}s"),
    }
}

fn trim_fraction(n: u64, div: u64) -> String {
    let (whole, frac) = (n / div, n % div);
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let f = format!("{frac:0width$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn msg(name: &str) -> DynamicMessage {
        DynamicMessage::new(POOL.get_message_by_name(name).expect(name))
    }

    fn set(m: &mut DynamicMessage, field: &str, v: Value) {
        m.try_set_field_by_name(field, v)
            .unwrap_or_else(|e| panic!("{field}: {e}"));
    }

    fn envelope(api_version: &str, kind: &str, obj: &DynamicMessage) -> Vec<u8> {
        let mut tm = msg("apimachinery.pkg.runtime.TypeMeta");
        set(&mut tm, "apiVersion", Value::String(api_version.into()));
        set(&mut tm, "kind", Value::String(kind.into()));
        let mut u = msg(UNKNOWN);
        set(&mut u, "typeMeta", Value::Message(tm));
        set(&mut u, "raw", Value::Bytes(obj.encode_to_vec().into()));
        let mut out = MAGIC.to_vec();
        out.extend(u.encode_to_vec());
        out
    }

    /// ObjectMeta as Go writes it: every value field present, zero or not.
    fn meta(name: &str) -> DynamicMessage {
        let mut m = msg("apimachinery.pkg.apis.meta.v1.ObjectMeta");
        set(&mut m, "name", Value::String(name.into()));
        set(&mut m, "generateName", Value::String(String::new()));
        set(&mut m, "generation", Value::I64(0));
        set(&mut m, "creationTimestamp", Value::Message(msg(TIME)));
        m
    }

    #[test]
    fn secret_bytes_become_base64_and_zero_values_vanish() {
        let mut s = msg("api.core.v1.Secret");
        set(&mut s, "metadata", Value::Message(meta("creds")));
        let mut data = std::collections::HashMap::new();
        data.insert(MapKey::String("pw".into()), Value::Bytes("hunter2".into()));
        set(&mut s, "data", Value::Map(data));
        set(&mut s, "type", Value::String("Opaque".into()));
        let v = decode(&envelope("v1", "Secret", &s)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                   "data": {"pw": "aHVudGVyMg=="}, "type": "Opaque"})
        );
    }

    #[test]
    fn special_types_follow_kubernetes_json() {
        let mut port = msg("api.core.v1.ServicePort");
        set(&mut port, "port", Value::I32(80));
        set(&mut port, "nodePort", Value::I32(0));
        let mut tp = msg(INT_OR_STRING);
        set(&mut tp, "type", Value::I64(1));
        set(&mut tp, "strVal", Value::String("http".into()));
        set(&mut port, "targetPort", Value::Message(tp));
        let mut spec = msg("api.apps.v1.DeploymentSpec");
        // A pointer field: an explicit zero is kept.
        set(&mut spec, "replicas", Value::I32(0));
        set(&mut spec, "minReadySeconds", Value::I32(0));
        let mut d = msg("api.apps.v1.Deployment");
        set(&mut d, "spec", Value::Message(spec));
        let v = decode(&envelope("apps/v1", "Deployment", &d)).unwrap();
        assert_eq!(v["spec"], json!({"replicas": 0}));
        let mut t = msg(TIME);
        set(&mut t, "seconds", Value::I64(1_700_000_000));
        assert_eq!(time_json(&t, false), json!("2023-11-14T22:13:20Z"));
        assert_eq!(
            message_json(&port).unwrap(),
            json!({"port": 80, "targetPort": "http"})
        );
        assert_eq!(go_duration(3_723_500_000_000), "1h2m3.5s");
        assert_eq!(go_duration(1_500_000), "1.5ms");
    }

    #[test]
    fn inline_structs_are_flattened() {
        let mut get = msg("api.core.v1.HTTPGetAction");
        set(&mut get, "path", Value::String("/healthz".into()));
        let mut handler = msg("api.core.v1.ProbeHandler");
        set(&mut handler, "httpGet", Value::Message(get));
        let mut probe = msg("api.core.v1.Probe");
        set(&mut probe, "handler", Value::Message(handler));
        set(&mut probe, "periodSeconds", Value::I32(0));
        assert_eq!(
            message_json(&probe).unwrap(),
            json!({"httpGet": {"path": "/healthz"}})
        );
    }

    #[test]
    fn bad_envelopes_and_accept_headers() {
        assert!(decode(b"{}").unwrap_err().message.contains("prefix"));
        let cm = msg("api.core.v1.ConfigMap");
        let e = decode(&envelope("example.com/v1", "Widget", &cm)).unwrap_err();
        assert_eq!(e.code, 415);
        assert!(check_accept("application/vnd.kubernetes.protobuf,application/json").is_ok());
        assert!(check_accept("").is_ok());
        assert_eq!(
            check_accept("application/vnd.kubernetes.protobuf")
                .unwrap_err()
                .code,
            406
        );
        assert!(is_protobuf(
            "application/vnd.kubernetes.protobuf; charset=x"
        ));
    }
}
