//! A stub DNS server for tests (DNS forwarding in tests goes to a stub, never to the
//! outside): answers A and AAAA queries over UDP from a fixed table, NXDOMAIN for
//! other names, and records every query so a test can assert what was asked. Runs on
//! a thread — in the test's own network namespace or inside a sandbox node — and
//! stops on drop.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;

/// TTL of every answer.
pub const TTL: u32 = 30;

/// A running stub DNS server.
pub struct Stub {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    queries: Arc<Mutex<Vec<(String, u16)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Stub {
    /// Serves `records` (name → address; a name may appear several times) on
    /// 127.0.0.1 at a free port of the test's own network namespace.
    pub fn start(records: &[(&str, IpAddr)]) -> Stub {
        Self::try_start("127.0.0.1:0".parse().unwrap(), None, records)
            .unwrap_or_else(|e| panic!("cannot start the DNS stub: {e:#}"))
    }

    /// Serves `records` on `addr` inside the node's network namespace (e.g.
    /// `10.99.0.10:53`, for resolvers that only use port 53).
    pub fn start_in(
        node: &crate::sandbox::Node,
        addr: SocketAddr,
        records: &[(&str, IpAddr)],
    ) -> Stub {
        Self::try_start(addr, Some(&node.netns_path()), records)
            .unwrap_or_else(|e| panic!("cannot start the DNS stub in {}: {e:#}", node.netns()))
    }

    fn try_start(
        addr: SocketAddr,
        netns: Option<&Path>,
        records: &[(&str, IpAddr)],
    ) -> Result<Stub> {
        let table: Vec<(String, IpAddr)> =
            records.iter().map(|(n, ip)| (normalise(n), *ip)).collect();
        let netns = match netns {
            Some(path) => Some(
                File::open(path)
                    .with_context(|| format!("cannot open network namespace {}", path.display()))?,
            ),
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let (bound_tx, bound_rx) = mpsc::channel();
        let thread = {
            let stop = stop.clone();
            let queries = queries.clone();
            std::thread::spawn(move || {
                let socket = (|| -> Result<UdpSocket> {
                    if let Some(ns) = &netns {
                        setns(ns, CloneFlags::CLONE_NEWNET)
                            .context("cannot enter the namespace")?;
                    }
                    let socket =
                        UdpSocket::bind(addr).with_context(|| format!("cannot bind {addr}"))?;
                    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                    Ok(socket)
                })();
                let socket = match socket {
                    Ok(socket) => {
                        let _ = bound_tx.send(socket.local_addr().map_err(anyhow::Error::from));
                        socket
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                serve(&socket, &table, &stop, &queries);
            })
        };
        let addr = bound_rx
            .recv()
            .context("the DNS stub thread died while starting")??;
        Ok(Stub {
            addr,
            stop,
            queries,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every query so far: (name without trailing dot, lower case; record type).
    pub fn queries(&self) -> Vec<(String, u16)> {
        self.queries.lock().expect("query log").clone()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn serve(
    socket: &UdpSocket,
    table: &[(String, IpAddr)],
    stop: &AtomicBool,
    queries: &Mutex<Vec<(String, u16)>>,
) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Query::parse(&buf[..len]) else {
            continue; // Not a query we understand: no answer, as for garbage.
        };
        queries
            .lock()
            .expect("query log")
            .push((query.name.clone(), query.qtype));
        let _ = socket.send_to(&query.answer(table), peer);
    }
}

/// The one question of a DNS query, and what is needed to answer it.
#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section as sent (copied into the answer).
    question: Vec<u8>,
}

impl Query {
    /// Parses a DNS query with exactly one question (no name compression in it).
    pub fn parse(msg: &[u8]) -> Result<Query> {
        if msg.len() < 12 {
            bail!("message shorter than a DNS header");
        }
        let word = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
        let (id, flags, qdcount) = (word(0), word(2), word(4));
        if flags & 0x8000 != 0 {
            bail!("a response, not a query");
        }
        if qdcount != 1 {
            bail!("{qdcount} questions; only one is supported");
        }
        let mut i = 12;
        let mut labels = Vec::new();
        loop {
            let len = *msg.get(i).context("truncated name")? as usize;
            i += 1;
            if len == 0 {
                break;
            }
            if len > 63 {
                bail!("compressed or invalid label in the question");
            }
            let label = msg.get(i..i + len).context("truncated label")?;
            labels.push(String::from_utf8_lossy(label).into_owned());
            i += len;
        }
        if msg.len() < i + 4 {
            bail!("truncated question");
        }
        Ok(Query {
            id,
            flags,
            name: normalise(&labels.join(".")),
            qtype: word(i),
            qclass: word(i + 2),
            question: msg[12..i + 4].to_vec(),
        })
    }

    /// The response: the matching records of `table`, or NXDOMAIN if the name has
    /// none at all (an empty answer when it only has records of the other type).
    pub fn answer(&self, table: &[(String, IpAddr)]) -> Vec<u8> {
        let known = table.iter().any(|(n, _)| *n == self.name);
        let answers: Vec<&IpAddr> = table
            .iter()
            .filter(|(n, ip)| {
                *n == self.name
                    && self.qclass == 1
                    && match ip {
                        IpAddr::V4(_) => self.qtype == TYPE_A,
                        IpAddr::V6(_) => self.qtype == TYPE_AAAA,
                    }
            })
            .map(|(_, ip)| ip)
            .collect();
        let rcode = if known { 0 } else { 3 };
        // QR, the query's opcode and RD, AA and RA set.
        let flags = 0x8000 | (self.flags & 0x7900) | 0x0400 | 0x0080 | rcode;
        let mut out = Vec::with_capacity(64);
        for v in [self.id, flags, 1, answers.len() as u16, 0, 0] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.question);
        for ip in answers {
            out.extend_from_slice(&0xC00Cu16.to_be_bytes()); // the name at offset 12
            let (rtype, data) = match ip {
                IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
                IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
            };
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&TTL.to_be_bytes());
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(&data);
        }
        out
    }
}

/// Builds a query for `name` and `qtype` (for tests of the stub and of resolvers).
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [id, 0x0100, 1, 0, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(stub: &Stub, id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
            .send_to(&query(id, name, qtype), stub.addr())
            .unwrap();
        let mut buf = [0u8; 512];
        let (len, _) = socket.recv_from(&mut buf).unwrap();
        buf[..len].to_vec()
    }

    #[test]
    fn answers_known_names_and_nxdomain_for_others() {
        let stub = Stub::start(&[
            ("web.test.", "10.99.0.5".parse().unwrap()),
            ("Web.Test", "10.99.0.6".parse().unwrap()),
            ("web.test", "fd00::5".parse().unwrap()),
        ]);
        let reply = ask(&stub, 0x1234, "WEB.test", TYPE_A);
        assert_eq!(&reply[0..2], &[0x12, 0x34]);
        assert_eq!(reply[3] & 0x0f, 0, "rcode");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 2, "two A answers");
        assert!(reply.ends_with(&[0, 4, 10, 99, 0, 6]));

        let reply = ask(&stub, 7, "web.test", TYPE_AAAA);
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1);
        assert!(reply.ends_with(&"fd00::5".parse::<std::net::Ipv6Addr>().unwrap().octets()));

        let reply = ask(&stub, 8, "nothere.test", TYPE_A);
        assert_eq!(reply[3] & 0x0f, 3, "NXDOMAIN");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 0);

        assert_eq!(
            stub.queries(),
            vec![
                ("web.test".to_string(), TYPE_A),
                ("web.test".to_string(), TYPE_AAAA),
                ("nothere.test".to_string(), TYPE_A)
            ]
        );
    }

    #[test]
    fn malformed_messages_are_rejected() {
        assert!(Query::parse(&[0; 5]).is_err());
        let mut q = query(1, "a.test", TYPE_A);
        q[2] |= 0x80; // a response
        assert!(Query::parse(&q).is_err());
        let q = query(1, "a.test", TYPE_A);
        assert!(Query::parse(&q[..q.len() - 2]).is_err());
        let parsed = Query::parse(&query(9, "A.Test.", TYPE_A)).unwrap();
        assert_eq!(
            (parsed.id, parsed.name.as_str(), parsed.qtype),
            (9, "a.test", TYPE_A)
        );
    }
}
