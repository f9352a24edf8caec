//! Service address allocation: cluster IPs from the service CIDR (`--service-cidr`,
//! default 10.43.0.0/16, the first address reserved for the `kubernetes` service) and
//! node ports from `--service-node-port-range` (default 30000-32767), done at admission
//! as Kubernetes' API server does.

use crate::api::Api;
use crate::api::status::{ApiError, ApiResult, Cause};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Mutex, OnceLock};

/// The service CIDR (as written, network address, size) and the node port range.
struct Ranges {
    cidr: String,
    base: u32,
    size: u32,
    ports: (i64, i64),
}

static RANGES: OnceLock<Ranges> = OnceLock::new();

/// Sets the service CIDR (`a.b.c.d/n`, validated by the caller) and the node port
/// range, once, before serving; without it the defaults apply.
pub fn configure(service_cidr: &str, node_ports: (u16, u16)) {
    let cidr = flotilla_controllers::allocators::Cidr::parse(service_cidr)
        .expect("a validated service CIDR");
    let _ = RANGES.set(Ranges {
        cidr: service_cidr.to_owned(),
        base: u32::from(cidr.network),
        size: 1u32 << (32 - cidr.prefix),
        ports: (i64::from(node_ports.0), i64::from(node_ports.1)),
    });
}

fn ranges() -> &'static Ranges {
    RANGES.get_or_init(|| Ranges {
        cidr: "10.43.0.0/16".to_owned(),
        base: u32::from_be_bytes([10, 43, 0, 0]),
        size: 1 << 16,
        ports: (30000, 32767),
    })
}

/// Addresses handed out by this process (the store may not show them yet).
static ISSUED: Mutex<Option<(HashSet<u32>, HashSet<i64>)>> = Mutex::new(None);

fn used(api: &Api) -> ApiResult<(HashSet<u32>, HashSet<i64>)> {
    let page = api.store.list("services", None, None, None)?;
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for o in page.items {
        let v: Value = serde_json::from_slice(&o.value).unwrap_or(Value::Null);
        if let Some(ip) = v["spec"]["clusterIP"]
            .as_str()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        {
            ips.insert(u32::from(ip));
        }
        for p in v["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(n) = p["nodePort"].as_i64() {
                ports.insert(n);
            }
        }
    }
    Ok((ips, ports))
}

/// Fills spec.clusterIP(s), ipFamilies and node ports of a new Service.
pub fn assign_cluster_ip(api: &Api, svc: &mut Value) -> ApiResult<()> {
    let spec = &mut svc["spec"];
    if spec["type"] == "ExternalName" {
        return Ok(());
    }
    let Ranges {
        cidr,
        base,
        size,
        ports: (first_port, last_port),
    } = ranges();
    let (base, size) = (*base, *size);
    let mut guard = ISSUED.lock().unwrap_or_else(|p| p.into_inner());
    let (store_ips, store_ports) = used(api)?;
    let issued = guard.get_or_insert_with(|| (HashSet::new(), HashSet::new()));
    let want = spec["clusterIP"].as_str().unwrap_or("").to_owned();
    let ip = if want == "None" {
        "None".to_owned()
    } else if !want.is_empty() {
        let parsed: Ipv4Addr = want.parse().map_err(|_| {
            ApiError::invalid(
                "Service",
                "",
                "",
                vec![Cause::invalid(
                    "spec.clusterIPs[0]",
                    &json!(want),
                    "must be a valid IP address",
                )],
            )
        })?;
        let n = u32::from(parsed);
        if !(base..base + size).contains(&n) {
            return Err(ApiError::invalid(
                "Service",
                "",
                svc["metadata"]["name"].as_str().unwrap_or(""),
                vec![Cause::invalid(
                    "spec.clusterIPs[0]",
                    &json!(want),
                    format!(
                        "provided IP is not in the valid range. The range of valid IPs is {cidr}"
                    ),
                )],
            ));
        }
        if store_ips.contains(&n) {
            return Err(ApiError::invalid(
                "Service",
                "",
                svc["metadata"]["name"].as_str().unwrap_or(""),
                vec![Cause::invalid(
                    "spec.clusterIPs",
                    &json!([want]),
                    "failed to allocate IP: provided IP is already allocated",
                )],
            ));
        }
        issued.0.insert(n);
        want
    } else {
        let name = svc["metadata"]["name"].as_str().unwrap_or("");
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or("");
        let first = if name == "kubernetes" && ns == "default" {
            1
        } else {
            10
        };
        let n = (first..size - 1)
            .map(|i| base + i)
            .find(|n| !store_ips.contains(n) && !issued.0.contains(n))
            .ok_or_else(|| ApiError::internal("the service IP range is full"))?;
        issued.0.insert(n);
        Ipv4Addr::from(n).to_string()
    };
    let spec = &mut svc["spec"];
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    if ip != "None" {
        spec["ipFamilies"] = json!(["IPv4"]);
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    if matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"))
        && let Some(ports) = spec["ports"].as_array_mut()
    {
        for p in ports {
            if p["nodePort"].is_null() {
                let n = (*first_port..=*last_port)
                    .find(|n| !store_ports.contains(n) && !issued.1.contains(n))
                    .ok_or_else(|| ApiError::internal("the node port range is full"))?;
                issued.1.insert(n);
                p["nodePort"] = json!(n);
            }
        }
    }
    Ok(())
}
