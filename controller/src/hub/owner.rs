//! Who owns a node name: the machine that first joined with it, known by the SHA-256 of
//! its public key (the SubjectPublicKeyInfo of its CSR, then of its certificate). The
//! hub records it in the Secret `kube-system/<node>.node-key.flotilla`, as k3s records
//! a node's password in `<node>.node-password.k3s`: in the store with everything else
//! (backed up, restored and compacted with the Nodes it guards, written with optimistic
//! concurrency so two racing joins cannot both win), visible to `kubectl`, and out of
//! the nodes' reach (a node credential reads only Secrets its pods use).
//!
//! The rule, the same for a join and for a session: the owner's key holds the name
//! while the name's Node exists. A different key is refused with a message naming the
//! node and how to free the name — `kubectl delete node <name>`, after which the next
//! machine to join or connect with a certificate for it takes it over. The owner itself
//! (same key: a restart, a reconnect, a renewed certificate) is always accepted. A name
//! without a record (a node that joined before records were kept) is taken by the first
//! key seen for it.

use super::Hub;
use super::write;
use crate::api::meta;
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest;

/// The Secret type of ownership records.
pub const SECRET_TYPE: &str = "flotilla.dev/node-key";
/// The data key holding the owner's key hash (hex SHA-256 of its SubjectPublicKeyInfo).
const DATA_KEY: &str = "public-key-sha256";
/// The annotation naming the node (the Secret name is hashed for very long names).
const NODE_ANNOTATION: &str = "flotilla.dev/node";
const NAMESPACE: &str = "kube-system";
const SUFFIX: &str = ".node-key.flotilla";

/// Why a key may not have a name.
#[derive(Debug)]
pub enum Refusal {
    /// Another machine owns the name: the message for the agent.
    Taken(String),
    /// The record could not be read or written (try again later).
    Store(String),
}

/// The hex SHA-256 of the SubjectPublicKeyInfo in a PEM CSR.
pub fn key_of_csr(csr_pem: &str) -> Result<String, String> {
    let bad = |e: String| format!("invalid certificate signing request: {e}");
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|e| bad(format!("not PEM ({e})")))?;
    let (_, csr) =
        <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&pem.contents)
            .map_err(|e| bad(e.to_string()))?;
    Ok(hash(csr.certification_request_info.subject_pki.raw))
}

/// The hex SHA-256 of the SubjectPublicKeyInfo of a DER certificate.
pub fn key_of_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(hash(cert.public_key().raw))
}

fn hash(spki: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(spki))
}

/// The name of `node`'s record: `<node>.node-key.flotilla`, or, when that would be
/// longer than an object name may be, a hash of the node name in its place.
pub fn secret_name(node: &str) -> String {
    let name = format!("{node}{SUFFIX}");
    if name.len() <= 253 {
        name
    } else {
        format!("{}{SUFFIX}", &hash(node.as_bytes())[..40])
    }
}

/// What to do with a key asking for a name.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// It is the owner's key.
    Owner,
    /// The name is free: record this key as its owner.
    Take,
    /// Another key owns the name.
    Refuse,
}

fn verdict(recorded: Option<&str>, node_exists: bool, key: &str) -> Verdict {
    match recorded {
        Some(k) if k == key => Verdict::Owner,
        Some(_) if node_exists => Verdict::Refuse,
        _ => Verdict::Take,
    }
}

/// The message for a machine whose key does not own `node`, asking by `what` ("join"
/// or "session").
fn taken(node: &str, what: &str) -> String {
    let whose = if what == "join" {
        format!("a different key joined as {node} first and Node {node} exists")
    } else {
        format!("this certificate's key is not the one recorded for {node}, and Node {node} exists")
    };
    format!(
        "node name {node:?} belongs to another machine: {whose}. Two machines cannot share a node name \
         (a cloned SD card keeps its hostname): give this one its own --node-name, or, if the machine \
         that had {node} is gone for good, free the name with `kubectl delete node {node}`"
    )
}

/// The recorded owner key of `node` and the record's revision, if any.
fn recorded(hub: &Hub, node: &str) -> Result<Option<String>, String> {
    let key = flotilla_store::Key::new("secrets", NAMESPACE, secret_name(node));
    let Some(o) = hub.api.store.get(&key).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    Ok(owner_key(&meta::decode(&o.value, o.revision)))
}

fn owner_key(secret: &Value) -> Option<String> {
    let b64 = secret["data"][DATA_KEY].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

fn node_exists(hub: &Hub, node: &str) -> Result<bool, String> {
    Ok(hub
        .api
        .store
        .get(&flotilla_store::Key::cluster("nodes", node))
        .map_err(|e| e.to_string())?
        .is_some())
}

/// Makes sure `key` may have `node` (`what` says how it asks: a join or a session),
/// recording it as the owner when the name is free. Two racing claims are settled by
/// the store: the loser looks again and finds the winner.
pub async fn claim(hub: &Hub, node: &str, key: &str, what: &str) -> Result<(), Refusal> {
    let store =
        |e: String| Refusal::Store(format!("the record of who owns node name {node:?}: {e}"));
    for _ in 0..5 {
        let old = recorded(hub, node).map_err(store)?;
        match verdict(old.as_deref(), node_exists(hub, node).map_err(store)?, key) {
            Verdict::Owner => return Ok(()),
            Verdict::Refuse => return Err(Refusal::Taken(taken(node, what))),
            Verdict::Take => {}
        }
        if record(hub, node, old.as_deref(), key)
            .await
            .map_err(store)?
        {
            match &old {
                Some(_) => {
                    tracing::warn!(%node, %what, "node name taken over by another machine's key (its Node was gone)")
                }
                None => tracing::info!(%node, %what, "node name recorded for this machine's key"),
            }
            return Ok(());
        }
    }
    Err(store("it kept changing".to_owned()))
}

/// Writes `key` as `node`'s owner if the record still holds `old`; false when someone
/// else wrote it meanwhile.
async fn record(hub: &Hub, node: &str, old: Option<&str>, key: &str) -> Result<bool, String> {
    let res = write::resource("", "secrets");
    let data = base64::engine::general_purpose::STANDARD.encode(key);
    let name = secret_name(node);
    match old {
        None => {
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
                "metadata": {"name": name, "namespace": NAMESPACE,
                             "annotations": {NODE_ANNOTATION: node}},
                "data": {DATA_KEY: data},
            });
            match write::create(&hub.api, res, NAMESPACE, secret).await {
                Ok(_) => Ok(true),
                Err(e) if e.code == 409 => Ok(false),
                Err(e) => Err(e.message),
            }
        }
        Some(old) => {
            let mut raced = false;
            let written = write::modify(&hub.api, res, NAMESPACE, &name, None, |v| {
                if owner_key(v).as_deref() != Some(old) {
                    raced = true;
                    return false;
                }
                v["data"] = json!({DATA_KEY: data});
                true
            })
            .await
            .map_err(|e| e.message)?;
            Ok(written.is_some() && !raced)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_belongs_to_its_first_key_while_its_node_exists() {
        assert_eq!(verdict(None, false, "a"), Verdict::Take);
        assert_eq!(verdict(None, true, "a"), Verdict::Take, "no record yet");
        assert_eq!(verdict(Some("a"), true, "a"), Verdict::Owner);
        assert_eq!(verdict(Some("a"), false, "a"), Verdict::Owner);
        assert_eq!(verdict(Some("a"), true, "b"), Verdict::Refuse);
        assert_eq!(
            verdict(Some("a"), false, "b"),
            Verdict::Take,
            "kubectl delete node frees the name"
        );
    }

    #[test]
    fn keys_are_read_alike_from_a_csr_and_from_its_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["n1".to_owned()]).unwrap();
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let from_csr = key_of_csr(&csr).unwrap();
        assert_eq!(from_csr.len(), 64);
        assert_eq!(Some(from_csr), key_of_cert(cert.der()));
        let other = rcgen::KeyPair::generate().unwrap();
        let csr2 = params.serialize_request(&other).unwrap().pem().unwrap();
        assert_ne!(key_of_csr(&csr2).unwrap(), key_of_csr(&csr).unwrap());
        assert!(
            key_of_csr("not a csr")
                .unwrap_err()
                .contains("invalid certificate signing request")
        );
    }

    #[test]
    fn record_names_fit_an_object_name() {
        assert_eq!(secret_name("pi-04"), "pi-04.node-key.flotilla");
        let long = "a".repeat(253);
        let name = secret_name(&long);
        assert!(name.len() <= 253 && name.ends_with(SUFFIX), "{name}");
        assert_ne!(secret_name(&long), secret_name(&"b".repeat(253)));
    }

    #[test]
    fn the_refusal_names_the_node_and_how_to_free_it() {
        for what in ["join", "session"] {
            let m = taken("pi-04", what);
            assert!(
                m.contains("\"pi-04\"") && m.contains("kubectl delete node pi-04"),
                "{m}"
            );
        }
    }
}
