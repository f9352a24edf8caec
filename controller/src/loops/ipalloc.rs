//! Service address allocation: cluster IPs from the service CIDR (`--service-cidr`,
//! default 10.43.0.0/16, the first address reserved for the `kubernetes` service) and
//! node ports from `--service-node-port-range` (default 30000-32767), done at admission
//! as Kubernetes' API server does. The store is the record of what is taken (durable,
//! so nothing is handed out twice across restarts); addresses of a create still in
//! flight are held by a [`Reservation`] until the create has landed or failed, and a
//! deleted service's addresses are free again at once.

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

/// Addresses of creates in flight: handed out, not yet (or never to be) in the store.
static IN_FLIGHT: Mutex<(Vec<u32>, Vec<i64>)> = Mutex::new((Vec::new(), Vec::new()));

/// Holds the addresses given to one new Service until its create has finished
/// (stored, or failed); dropping it releases them from the in-flight set.
#[must_use = "the addresses are released when the reservation is dropped"]
#[derive(Default)]
pub struct Reservation {
    ips: Vec<u32>,
    ports: Vec<i64>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut f = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
        for ip in &self.ips {
            if let Some(i) = f.0.iter().position(|x| x == ip) {
                f.0.swap_remove(i);
            }
        }
        for port in &self.ports {
            if let Some(i) = f.1.iter().position(|x| x == port) {
                f.1.swap_remove(i);
            }
        }
    }
}

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
            if let Some(n) = p["nodePort"].as_i64().filter(|n| *n != 0) {
                ports.insert(n);
            }
        }
    }
    Ok((ips, ports))
}

fn invalid(svc: &Value, field: &str, value: Value, msg: impl Into<String>) -> ApiError {
    ApiError::invalid(
        "Service",
        "",
        svc["metadata"]["name"].as_str().unwrap_or(""),
        vec![Cause::invalid(field, &value, msg)],
    )
}

/// Fills spec.clusterIP(s), ipFamilies and node ports of a new Service, checking
/// requested ones against the ranges and what is taken. Keep the returned
/// [`Reservation`] until the create has been written (or has failed).
pub fn assign_cluster_ip(api: &Api, svc: &mut Value) -> ApiResult<Reservation> {
    let mut res = Reservation::default();
    if svc["spec"]["type"] == "ExternalName" {
        return Ok(res);
    }
    let Ranges {
        cidr,
        base,
        size,
        ports: (first_port, last_port),
    } = ranges();
    let (base, size) = (*base, *size);
    let mut flight = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
    let (store_ips, store_ports) = used(api)?;
    let taken_ip = |n: &u32| store_ips.contains(n) || flight.0.contains(n);
    let want = svc["spec"]["clusterIP"].as_str().unwrap_or("").to_owned();
    let ip = if want == "None" {
        "None".to_owned()
    } else if !want.is_empty() {
        let parsed: Ipv4Addr = want.parse().map_err(|_| {
            invalid(
                svc,
                "spec.clusterIPs[0]",
                json!(want),
                "must be a valid IP address",
            )
        })?;
        let n = u32::from(parsed);
        if !(base..base + size).contains(&n) {
            return Err(invalid(
                svc,
                "spec.clusterIPs[0]",
                json!(want),
                format!("provided IP is not in the valid range. The range of valid IPs is {cidr}"),
            ));
        }
        if taken_ip(&n) {
            return Err(invalid(
                svc,
                "spec.clusterIPs",
                json!([want]),
                "failed to allocate IP: provided IP is already allocated",
            ));
        }
        res.ips.push(n);
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
            .find(|n| !taken_ip(n))
            .ok_or_else(|| ApiError::internal("the service IP range is full"))?;
        res.ips.push(n);
        Ipv4Addr::from(n).to_string()
    };
    let node_ports = matches!(
        svc["spec"]["type"].as_str(),
        Some("NodePort" | "LoadBalancer")
    );
    let count = svc["spec"]["ports"].as_array().map_or(0, Vec::len);
    for i in 0..count {
        let asked = svc["spec"]["ports"][i]["nodePort"].as_i64().unwrap_or(0);
        let field = format!("spec.ports[{i}].nodePort");
        if asked != 0 && !node_ports {
            let ty = svc["spec"]["type"]
                .as_str()
                .unwrap_or("ClusterIP")
                .to_owned();
            return Err(ApiError::invalid(
                "Service",
                "",
                svc["metadata"]["name"].as_str().unwrap_or(""),
                vec![Cause::forbidden(
                    field,
                    format!("may not be used when `type` is '{ty}'"),
                )],
            ));
        }
        if asked != 0 {
            if !(*first_port..=*last_port).contains(&asked) {
                return Err(invalid(
                    svc,
                    &field,
                    json!(asked),
                    format!(
                        "provided port is not in the valid range. The range of valid ports is {first_port}-{last_port}"
                    ),
                ));
            }
            if store_ports.contains(&asked)
                || flight.1.contains(&asked)
                || res.ports.contains(&asked)
            {
                return Err(invalid(
                    svc,
                    &field,
                    json!(asked),
                    "provided port is already allocated",
                ));
            }
            res.ports.push(asked);
        }
    }
    for i in 0..count {
        let p = &mut svc["spec"]["ports"][i];
        if p["nodePort"].as_i64().unwrap_or(0) != 0 {
            continue;
        }
        if let Some(m) = p.as_object_mut() {
            m.remove("nodePort");
        }
        if node_ports {
            let n = (*first_port..=*last_port)
                .find(|n| {
                    !store_ports.contains(n) && !flight.1.contains(n) && !res.ports.contains(n)
                })
                .ok_or_else(|| ApiError::internal("the node port range is full"))?;
            res.ports.push(n);
            p["nodePort"] = json!(n);
        }
    }
    let spec = &mut svc["spec"];
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    if ip != "None" {
        spec["ipFamilies"] = json!(["IPv4"]);
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    flight.0.extend(&res.ips);
    flight.1.extend(&res.ports);
    Ok(res)
}

/// Node ports of an updated Service: kept from the old object where the update
/// leaves them out (matched by port and protocol), allocated where the type now
/// needs them, dropped when it no longer does, and a changed port checked against
/// every other Service. Keep the returned [`Reservation`] until the write is done.
pub fn update_node_ports(api: &Api, old: &Value, svc: &mut Value) -> ApiResult<Reservation> {
    let mut res = Reservation::default();
    let node_ports = matches!(
        svc["spec"]["type"].as_str(),
        Some("NodePort" | "LoadBalancer")
    );
    let old_ports: Vec<(i64, String, i64)> = old["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let n = p["nodePort"].as_i64().filter(|n| *n != 0)?;
            let proto = p["protocol"].as_str().unwrap_or("TCP").to_owned();
            Some((p["port"].as_i64().unwrap_or(0), proto, n))
        })
        .collect();
    let count = svc["spec"]["ports"].as_array().map_or(0, Vec::len);
    if count == 0 {
        return Ok(res);
    }
    let ns = svc["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let name = svc["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let (first_port, last_port) = ranges().ports;
    let mut flight = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
    // Ports held by every other Service.
    let page = api.store.list("services", None, None, None)?;
    let mut others = HashSet::new();
    for o in page.items {
        if o.key.namespace == ns && o.key.name == name {
            continue;
        }
        let v: Value = serde_json::from_slice(&o.value).unwrap_or(Value::Null);
        for p in v["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(n) = p["nodePort"].as_i64().filter(|n| *n != 0) {
                others.insert(n);
            }
        }
    }
    let own: Vec<i64> = old_ports.iter().map(|o| o.2).collect();
    let mut claimed: Vec<i64> = Vec::new();
    for i in 0..count {
        let p = &mut svc["spec"]["ports"][i];
        let asked = p["nodePort"].as_i64().unwrap_or(0);
        let port = p["port"].as_i64().unwrap_or(0);
        let proto = p["protocol"].as_str().unwrap_or("TCP").to_owned();
        let field = format!("spec.ports[{i}].nodePort");
        if !node_ports {
            // Left over from the old type: dropped; set anew: refused.
            if asked != 0 && !own.contains(&asked) {
                let ty = svc["spec"]["type"]
                    .as_str()
                    .unwrap_or("ClusterIP")
                    .to_owned();
                return Err(ApiError::invalid(
                    "Service",
                    "",
                    &name,
                    vec![Cause::forbidden(
                        field,
                        format!("may not be used when `type` is '{ty}'"),
                    )],
                ));
            }
            if let Some(m) = svc["spec"]["ports"][i].as_object_mut() {
                m.remove("nodePort");
            }
            continue;
        }
        let n = if asked != 0 {
            if !own.contains(&asked) {
                if !(first_port..=last_port).contains(&asked) {
                    return Err(invalid(
                        svc,
                        &field,
                        json!(asked),
                        format!(
                            "provided port is not in the valid range. The range of valid ports is {first_port}-{last_port}"
                        ),
                    ));
                }
                if others.contains(&asked) || flight.1.contains(&asked) {
                    return Err(invalid(
                        svc,
                        &field,
                        json!(asked),
                        "provided port is already allocated",
                    ));
                }
                res.ports.push(asked);
            }
            asked
        } else if let Some(kept) = old_ports
            .iter()
            .find(|(op, opr, n)| *op == port && *opr == proto && !claimed.contains(n))
        {
            kept.2
        } else {
            let n = (first_port..=last_port)
                .find(|n| {
                    !others.contains(n)
                        && !flight.1.contains(n)
                        && !own.contains(n)
                        && !res.ports.contains(n)
                })
                .ok_or_else(|| ApiError::internal("the node port range is full"))?;
            res.ports.push(n);
            n
        };
        if claimed.contains(&n) {
            return Err(invalid(svc, &field, json!(n), "duplicate nodePort"));
        }
        claimed.push(n);
        svc["spec"]["ports"][i]["nodePort"] = json!(n);
    }
    flight.1.extend(&res.ports);
    Ok(res)
}
