//! End-to-end tests of the controller's hub (the agent link), driven from the agent's
//! side by a small test agent that speaks the real frames over rustls — join with the
//! node token, then a mutual-TLS session — and from the user's side by the real
//! `kubectl`: nodes register and turn Ready, pods reach their node resolved and report
//! back, logs and exec are relayed, and whatever does not belong to a node is refused.
//! Everything runs on 127.0.0.1 and needs no root, so these tests always run.

use flotilla_shared::pod::{
    ContainerReport, ContainerState, EnvValue, NodeInfo, NodeReport, NodeResources, PodPhase,
    PodReport, PodSpec, StreamRequest,
};
use flotilla_shared::wire::{
    self, AgentEvent, CHANNEL_ERROR, CHANNEL_STDIN, CHANNEL_STDOUT, Frame, Hello, PROTOCOL_VERSION,
};
use flotilla_tests::kube::kubectl;
use flotilla_tests::process::Process;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::Value;
use sha2::Digest;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// The controller

/// A controller on 127.0.0.1 (API and hub on free ports) with its own data directory.
struct Controller {
    proc: Process,
    dir: tempfile::TempDir,
    hub: SocketAddr,
}

impl Controller {
    fn start(extra: &[&str]) -> Controller {
        let dir = tempfile::tempdir().expect("tempdir");
        let api: SocketAddr = format!("127.0.0.1:{}", flotilla_tests::free_port())
            .parse()
            .unwrap();
        let hub: SocketAddr = format!("127.0.0.1:{}", flotilla_tests::free_port())
            .parse()
            .unwrap();
        let mut cmd = Command::new(flotilla_tests::bin("flotilla-controller"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(api.to_string())
            .arg("--hub-listen")
            .arg(hub.to_string())
            .args(extra);
        let mut proc = Process::spawn(cmd).named("flotilla-controller");
        proc.wait_for_tcp(api, Duration::from_secs(30))
            .expect("the API listens");
        proc.wait_for_tcp(hub, Duration::from_secs(30))
            .expect("the hub listens");
        Controller { proc, dir, hub }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn kubeconfig(&self) -> PathBuf {
        self.data().join("admin.kubeconfig")
    }

    fn token(&self) -> Token {
        Token::parse(&std::fs::read_to_string(self.data().join("node-token")).unwrap())
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        kubectl(&self.kubeconfig(), args, stdin)
    }

    /// kubectl as admin; panics with its output and the controller's log unless it
    /// succeeds.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_in(args, None)
    }

    fn ok_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}\n{}\ncontroller log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.proc.output()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Waits until `check` holds, or panics with `what` and the controller's log.
    fn until(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out: {what}\ncontroller log:\n{}", self.proc.output());
    }
}

/// The parts of a node token.
struct Token {
    ca_hash: String,
    secret: String,
}

impl Token {
    fn parse(text: &str) -> Token {
        let rest = text.trim().strip_prefix("K10").expect("K10 prefix");
        let (hash, secret) = rest.split_once("::node:").expect("::node: separator");
        Token {
            ca_hash: hash.to_owned(),
            secret: secret.to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------
// The test agent's TLS

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies the hub as a joining agent must: the chain must hold the CA the token pins
/// (by the sha256 of its DER), and the serving certificate must verify against it.
#[derive(Debug)]
struct PinnedCa {
    hash: String,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| hex::encode(sha2::Sha256::digest(c.as_ref())) == self.hash)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's chain does not hold the CA the token pins".into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned()).unwrap();
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        v.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A node's credentials after joining.
#[derive(Clone, Debug)]
struct NodeCert {
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
}

fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A raw frame link: TLS over TCP with a frame buffer (reads time out without losing
/// partial frames).
struct Link {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl Link {
    /// Dials the hub: without `cert`, verifying the pinned CA (a join); with it,
    /// mutual TLS against its CA (a session).
    fn dial(addr: SocketAddr, pin: &str, cert: Option<&NodeCert>) -> Result<Link, String> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let config = match cert {
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCa {
                    hash: pin.to_owned(),
                }))
                .with_no_client_auth(),
            Some(c) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in pem_certs(&c.ca_pem) {
                    roots.add(ca).unwrap();
                }
                let key: PrivateKeyDer<'static> =
                    rustls_pemfile::private_key(&mut c.key_pem.as_bytes())
                        .unwrap()
                        .unwrap();
                builder
                    .with_root_certificates(roots)
                    .with_client_auth_cert(pem_certs(&c.cert_pem), key)
                    .unwrap()
            }
        };
        let conn = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::IpAddress(addr.ip().into()),
        )
        .unwrap();
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Finish the handshake now so certificate errors surface here.
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| e.to_string())?;
        }
        Ok(Link {
            tls,
            buf: Vec::new(),
        })
    }

    fn send(&mut self, f: &Frame) {
        let bytes = wire::encode(f).unwrap();
        self.tls.write_all(&bytes).unwrap();
        self.tls.flush().unwrap();
    }

    /// The next frame within `timeout`; None on timeout or when the link closed.
    fn recv(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            match wire::decode(&self.buf) {
                Ok((f, used)) => {
                    self.buf.drain(..used);
                    return Some(f);
                }
                Err(wire::WireError::Incomplete { .. }) => {}
                Err(e) => panic!("undecodable frame from the hub: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut chunk = [0u8; 16384];
            match self.tls.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    fn hello(&mut self, name: &str, version: u32) -> Hello {
        self.send(&Frame::Hello(Hello {
            protocol_version: version,
            release: "test".into(),
            name: name.into(),
            platform: "linux/amd64".into(),
        }));
        match self.recv(Duration::from_secs(10)) {
            Some(Frame::Hello(h)) => h,
            other => panic!("expected the hub's Hello, got {other:?}"),
        }
    }
}

/// Joins as `node` with `secret`: the certificate, or the hub's refusal.
fn join(c: &Controller, node: &str, secret: &str) -> Result<NodeCert, String> {
    join_with_key(c, node, secret, &rcgen::KeyPair::generate().unwrap())
}

/// Joins as `node` with `secret` and the machine key `key`.
fn join_with_key(
    c: &Controller,
    node: &str,
    secret: &str,
    key: &rcgen::KeyPair,
) -> Result<NodeCert, String> {
    let token = c.token();
    let mut link = Link::dial(c.hub, &token.ca_hash, None)?;
    link.hello(node, PROTOCOL_VERSION);
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    link.send(&Frame::Join {
        secret: secret.into(),
        node_name: node.into(),
        csr_pem: csr,
    });
    match link.recv(Duration::from_secs(10)) {
        Some(Frame::Joined { cert_pem, ca_pem }) => Ok(NodeCert {
            cert_pem,
            key_pem: key.serialize_pem(),
            ca_pem,
        }),
        Some(Frame::Refused { reason }) => Err(reason),
        other => panic!("expected Joined or Refused, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// The test agent

/// A node session run on its own thread, as an agent would: it answers pings, plays a
/// small script for log and exec streams, hands every other frame to the test, and
/// sends what the test gives it.
struct Agent {
    frames: mpsc::Receiver<Frame>,
    out: mpsc::Sender<Frame>,
    /// Streams the hub closed (the HTTP client went away).
    closed: mpsc::Receiver<u32>,
}

/// An open stream on the test agent's side.
struct Open {
    request: StreamRequest,
    stdin: Vec<u8>,
    ticks: u32,
    next_tick: Instant,
}

fn node_report() -> NodeReport {
    let res = NodeResources {
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        ephemeral_storage_bytes: 32 << 30,
        pods: 110,
    };
    NodeReport {
        addresses: vec![
            ("InternalIP".into(), "10.0.0.4".into()),
            ("Hostname".into(), "n1".into()),
        ],
        capacity: res.clone(),
        allocatable: res,
        info: NodeInfo {
            machine_id: "m1".into(),
            boot_id: "b1".into(),
            kernel_version: "6.1.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            operating_system: "linux".into(),
            architecture: "arm64".into(),
            agent_version: "v1.33.0-flotilla".into(),
            runtime_version: "flotilla://0.1.0".into(),
        },
        labels: vec![
            ("site".into(), "north".into()),
            ("node-role.kubernetes.io/control-plane".into(), "".into()),
        ],
        taints: vec![],
        memory_pressure: false,
        disk_pressure: false,
        pid_pressure: false,
        images: vec![],
    }
}

impl Agent {
    /// Opens a session with `cert` and starts the agent's thread.
    fn start(c: &Controller, cert: &NodeCert) -> Agent {
        let mut link = Link::dial(c.hub, "", Some(cert)).expect("mutual TLS session");
        link.hello("n1", PROTOCOL_VERSION);
        let (to_test, frames) = mpsc::channel();
        let (out, from_test) = mpsc::channel::<Frame>();
        let (closed_tx, closed) = mpsc::channel();
        std::thread::spawn(move || {
            let mut streams: std::collections::HashMap<u32, Open> = Default::default();
            let mut last_ping = Instant::now();
            loop {
                loop {
                    match from_test.try_recv() {
                        Ok(f) => link.send(&f),
                        Err(mpsc::TryRecvError::Empty) => break,
                        // The test dropped the agent: the session ends with the link.
                        Err(mpsc::TryRecvError::Disconnected) => return,
                    }
                }
                if last_ping.elapsed() > Duration::from_secs(5) {
                    link.send(&Frame::Ping(1));
                    last_ping = Instant::now();
                }
                tick_streams(&mut link, &mut streams);
                let Some(f) = link.recv(Duration::from_millis(50)) else {
                    continue;
                };
                match f {
                    Frame::Ping(n) => link.send(&Frame::Pong(n)),
                    Frame::Pong(_) | Frame::StreamCredit { .. } => {}
                    Frame::StreamOpen { stream, request } => {
                        open_stream(&mut link, &mut streams, stream, request)
                    }
                    Frame::StreamData {
                        stream,
                        channel,
                        data,
                    } => stream_input(&mut link, &mut streams, stream, channel, data),
                    Frame::StreamClose { stream, .. } => {
                        streams.remove(&stream);
                        let _ = closed_tx.send(stream);
                    }
                    other => {
                        if to_test.send(other).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Agent {
            frames,
            out,
            closed,
        }
    }

    fn send(&self, f: Frame) {
        self.out.send(f).unwrap();
    }

    /// The next frame for which `pick` returns Some, within `timeout`.
    fn expect<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(Frame) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frames.recv_timeout(left) {
                Ok(f) => {
                    if let Some(t) = pick(f) {
                        return t;
                    }
                }
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }
}

fn data(link: &mut Link, stream: u32, channel: u8, bytes: &[u8]) {
    link.send(&Frame::StreamData {
        stream,
        channel,
        data: bytes.to_vec(),
    });
}

fn status_frame(link: &mut Link, stream: u32, code: i32) {
    let status = if code == 0 {
        serde_json::json!({"metadata": {}, "status": "Success"})
    } else {
        serde_json::json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    };
    data(
        link,
        stream,
        CHANNEL_ERROR,
        &serde_json::to_vec(&status).unwrap(),
    );
    link.send(&Frame::StreamClose {
        stream,
        error: String::new(),
    });
}

/// The script: logs print two lines (and with follow a tick every 200 ms); exec of
/// `sh -c "exit N"` exits N, `echo ARGS` prints them, `cat` echoes stdin until it ends.
fn open_stream(
    link: &mut Link,
    streams: &mut std::collections::HashMap<u32, Open>,
    stream: u32,
    request: StreamRequest,
) {
    match &request {
        StreamRequest::Logs {
            follow, container, ..
        } => {
            if container == "missing" {
                link.send(&Frame::StreamClose {
                    stream,
                    error: "container \"missing\" is not running".into(),
                });
                return;
            }
            data(
                link,
                stream,
                CHANNEL_STDOUT,
                b"hello from the node\nsecond line\n",
            );
            if !follow {
                link.send(&Frame::StreamClose {
                    stream,
                    error: String::new(),
                });
                return;
            }
        }
        StreamRequest::Exec { command, .. } => {
            let cmd: Vec<&str> = command.iter().map(String::as_str).collect();
            match cmd.as_slice() {
                ["sh", "-c", script] if script.starts_with("exit ") => {
                    let code = script[5..].trim().parse().unwrap();
                    status_frame(link, stream, code);
                    return;
                }
                ["echo", rest @ ..] => {
                    data(
                        link,
                        stream,
                        CHANNEL_STDOUT,
                        format!("{}\n", rest.join(" ")).as_bytes(),
                    );
                    status_frame(link, stream, 0);
                    return;
                }
                ["cat"] => {}
                _ => {
                    link.send(&Frame::StreamClose {
                        stream,
                        error: format!("no such command {:?}", command),
                    });
                    return;
                }
            }
        }
    }
    streams.insert(
        stream,
        Open {
            request,
            stdin: Vec::new(),
            ticks: 0,
            next_tick: Instant::now() + Duration::from_millis(200),
        },
    );
}

fn stream_input(
    link: &mut Link,
    streams: &mut std::collections::HashMap<u32, Open>,
    stream: u32,
    channel: u8,
    bytes: Vec<u8>,
) {
    let Some(open) = streams.get_mut(&stream) else {
        return;
    };
    if channel != CHANNEL_STDIN {
        return;
    }
    if bytes.is_empty() {
        // End of stdin: cat prints what it got and exits 0.
        let echoed = std::mem::take(&mut open.stdin);
        data(link, stream, CHANNEL_STDOUT, &echoed);
        streams.remove(&stream);
        status_frame(link, stream, 0);
        return;
    }
    link.send(&Frame::StreamCredit {
        stream,
        bytes: bytes.len() as u32,
    });
    open.stdin.extend(bytes);
}

fn tick_streams(link: &mut Link, streams: &mut std::collections::HashMap<u32, Open>) {
    for (id, open) in streams.iter_mut() {
        // `--tail=1` streams stay quiet after their first lines.
        if matches!(
            open.request,
            StreamRequest::Logs {
                follow: true,
                tail_lines: -1,
                ..
            }
        ) && Instant::now() >= open.next_tick
        {
            open.ticks += 1;
            open.next_tick = Instant::now() + Duration::from_millis(200);
            data(
                link,
                *id,
                CHANNEL_STDOUT,
                format!("tick {}\n", open.ticks).as_bytes(),
            );
        }
    }
}

fn running_report(pod: &PodSpec) -> PodReport {
    PodReport {
        uid: pod.uid.clone(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        revision: pod.revision,
        phase: PodPhase::Running,
        reason: String::new(),
        message: String::new(),
        pod_ip: "10.42.0.7".into(),
        host_ip: "10.0.0.4".into(),
        start_time: 1_700_000_000,
        initialized: true,
        containers_ready: true,
        init_containers: vec![],
        containers: pod
            .containers
            .iter()
            .map(|c| ContainerReport {
                name: c.name.clone(),
                image: c.image.clone(),
                image_id: "sha256:0123".into(),
                container_id: format!("flotilla://{}-{}", pod.uid, c.name),
                ready: true,
                started: true,
                restart_count: 0,
                state: ContainerState::Running {
                    started_at: 1_700_000_001,
                },
                last_state: None,
            })
            .collect(),
        terminated: false,
    }
}

const POD: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeName: n1
  containers:
  - name: web
    image: busybox:1.36
    command: [sleep, "3600"]
    env:
    - name: GREETING
      valueFrom: {configMapKeyRef: {name: settings, key: greeting}}
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
"#;

fn env_of(pod: &PodSpec, name: &str) -> Option<EnvValue> {
    pod.containers[0]
        .env
        .iter()
        .find(|e| e.name == name)
        .map(|e| e.value.clone())
}

/// Joins n1, opens its session, reports the node and applies the `web` pod; returns
/// the agent and the pod as it first arrived.
fn node_with_pod(c: &Controller) -> (Agent, PodSpec) {
    let cert = join(c, "n1", &c.token().secret).expect("join");
    let agent = Agent::start(c, &cert);
    agent.send(Frame::NodeReport(node_report()));
    agent.expect(
        "the initial pod set",
        Duration::from_secs(10),
        |f| match f {
            Frame::PodSet(set) => Some(set),
            _ => None,
        },
    );
    c.ok_in(&["apply", "-f", "-"], Some(POD));
    let pod = agent.expect("the web pod", Duration::from_secs(10), |f| match f {
        Frame::PodUpsert(p) if p.name == "web" => Some(p),
        _ => None,
    });
    (agent, pod)
}

// ---------------------------------------------------------------------------------
// Tests

#[test]
fn joining_needs_the_token_and_gives_a_node_identity() {
    let c = Controller::start(&[]);
    let path = c.data().join("node-token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600,
        "the node token is private"
    );
    let token = c.token();
    let ca = std::fs::read_to_string(c.data().join("ca.crt")).unwrap();
    assert_eq!(
        token.ca_hash,
        hex::encode(sha2::Sha256::digest(pem_certs(&ca)[0].as_ref())),
        "the token pins the cluster CA"
    );

    // A token pinning another CA fails the TLS handshake, before any secret is sent.
    let err = Link::dial(c.hub, &"0".repeat(64), None)
        .err()
        .expect("another CA is refused");
    assert!(err.contains("does not hold the CA the token pins"), "{err}");

    // A wrong secret, a bad node name, and an older protocol are refused with reasons.
    let reason = join(&c, "n1", "not-the-secret").unwrap_err();
    assert!(reason.starts_with("invalid join token"), "{reason}");
    let reason = join(&c, "Bad_Name", &token.secret).unwrap_err();
    assert!(
        reason.contains("invalid node name \"Bad_Name\""),
        "{reason}"
    );
    let mut link = Link::dial(c.hub, &token.ca_hash, None).unwrap();
    link.send(&Frame::Hello(Hello {
        protocol_version: 1,
        release: "0.0.1".into(),
        name: "n1".into(),
        platform: "linux/arm/v7".into(),
    }));
    let refused = loop {
        match link.recv(Duration::from_secs(10)) {
            Some(Frame::Hello(_)) => continue,
            Some(Frame::Refused { reason }) => break reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    assert!(
        refused.contains("peer speaks agent-link protocol 1, this build speaks 2"),
        "{refused}"
    );

    // The right secret gets a certificate for system:node:n1 in system:nodes.
    let cert = join(&c, "n1", &token.secret).expect("join with the token");
    assert_eq!(cert.ca_pem.trim(), ca.trim());
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut p| {
            p.stdin
                .take()
                .unwrap()
                .write_all(cert.cert_pem.as_bytes())?;
            p.wait_with_output()
        });
    if let Ok(out) = out {
        let subject = String::from_utf8_lossy(&out.stdout);
        assert!(
            subject.contains("system:node:n1") && subject.contains("system:nodes"),
            "{subject}"
        );
    }
    // A session without a certificate cannot act as a node.
    let mut link = Link::dial(c.hub, &token.ca_hash, None).unwrap();
    link.hello("n1", PROTOCOL_VERSION);
    link.send(&Frame::NodeReport(node_report()));
    match link.recv(Duration::from_secs(10)) {
        Some(Frame::Refused { reason }) => {
            assert!(
                reason.contains("send Join with the node token first"),
                "{reason}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_node_registers_runs_its_pods_and_reports_them() {
    let c = Controller::start(&[]);
    let (agent, pod) = node_with_pod(&c);

    // The Node: Ready, the well-known labels, the agent's label but not a role.
    c.until("node n1 Ready", Duration::from_secs(20), || {
        let out = c.ok(&["get", "node", "n1"]);
        out.contains(" Ready ")
    });
    let node = c.json(&["get", "node", "n1"]);
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], "n1");
    assert_eq!(labels["kubernetes.io/arch"], "arm64");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["site"], "north");
    assert!(labels["node-role.kubernetes.io/control-plane"].is_null());
    assert_eq!(node["status"]["capacity"]["cpu"], "4");
    assert_eq!(
        node["status"]["nodeInfo"]["kubeletVersion"],
        "v1.33.0-flotilla"
    );
    let lease = c.json(&["get", "lease", "-n", "kube-node-lease", "n1"]);
    assert_eq!(lease["spec"]["holderIdentity"], "n1");

    // The pod arrives resolved: the ConfigMap value, the pod IP left to the node.
    assert_eq!(
        env_of(&pod, "GREETING"),
        Some(EnvValue::Literal("hello".into()))
    );
    assert_eq!(env_of(&pod, "POD_IP"), Some(EnvValue::PodIp));
    assert_eq!(
        env_of(&pod, "POD_NAME"),
        Some(EnvValue::Literal("web".into()))
    );
    assert_eq!(pod.dns.nameservers, ["10.43.0.10"]);
    assert!(!pod.deleting);

    // The node reports it running: kubectl shows Running, describe shows its events.
    agent.send(Frame::PodStatus(running_report(&pod)));
    agent.send(Frame::Event(AgentEvent {
        pod_uid: pod.uid.clone(),
        namespace: "default".into(),
        pod_name: "web".into(),
        field_path: "spec.containers{web}".into(),
        warning: false,
        reason: "Started".into(),
        message: "Started container web".into(),
    }));
    c.until("pod web Running", Duration::from_secs(10), || {
        c.ok(&["get", "pod", "web"]).contains("Running")
    });
    let got = c.json(&["get", "pod", "web"]);
    assert_eq!(got["status"]["podIP"], "10.42.0.7");
    assert_eq!(got["status"]["containerStatuses"][0]["ready"], true);
    c.until("the Started event", Duration::from_secs(10), || {
        c.ok(&["describe", "pod", "web"])
            .contains("Started container web")
    });

    // A pod the scheduler places on n1 reaches it too.
    c.ok_in(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: {name: placed}\nspec:\n  containers:\n  - {name: c, image: busybox:1.36}\n"),
    );
    let placed = agent.expect("the scheduled pod", Duration::from_secs(20), |f| match f {
        Frame::PodUpsert(p) if p.name == "placed" => Some(p),
        _ => None,
    });
    assert_eq!(placed.containers[0].image, "busybox:1.36");

    // A changed ConfigMap reaches the node as a new revision of the pod.
    c.ok(&[
        "patch",
        "configmap",
        "settings",
        "-p",
        r#"{"data":{"greeting":"bonjour"}}"#,
    ]);
    let changed = agent.expect(
        "the pod with the new greeting",
        Duration::from_secs(10),
        |f| match f {
            Frame::PodUpsert(p) if p.name == "web" => Some(p),
            _ => None,
        },
    );
    assert_eq!(
        env_of(&changed, "GREETING"),
        Some(EnvValue::Literal("bonjour".into()))
    );
    assert!(changed.revision > pod.revision);

    // A pod missing its ConfigMap is not sent; it shows the kubelet's error.
    c.ok_in(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: broken}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: busybox\n    envFrom: [{configMapRef: {name: absent}}]\n",
        ),
    );
    c.until(
        "broken pod shows CreateContainerConfigError",
        Duration::from_secs(10),
        || {
            c.ok(&["get", "pod", "broken"])
                .contains("CreateContainerConfigError")
        },
    );
    assert!(
        c.ok(&["describe", "pod", "broken"])
            .contains("Error: configmap \"absent\" not found")
    );
    c.ok_in(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: absent}\ndata: {A: b}\n"),
    );
    let fixed = agent.expect(
        "the broken pod once its ConfigMap exists",
        Duration::from_secs(10),
        |f| match f {
            Frame::PodUpsert(p) if p.name == "broken" => Some(p),
            _ => None,
        },
    );
    assert_eq!(env_of(&fixed, "A"), Some(EnvValue::Literal("b".into())));

    // Deletion: the node is told, reports the pod terminated, and the object goes.
    c.ok(&["delete", "pod", "web", "--wait=false"]);
    let deleting = agent.expect("the deleting pod", Duration::from_secs(10), |f| match f {
        Frame::PodUpsert(p) if p.name == "web" && p.deleting => Some(p),
        _ => None,
    });
    let mut done = running_report(&deleting);
    done.phase = PodPhase::Succeeded;
    done.terminated = true;
    agent.send(Frame::PodStatus(done));
    c.until("pod web removed", Duration::from_secs(10), || {
        !c.kubectl(&["get", "pod", "web"], None).status.success()
    });
    let removed = agent.expect("the removal", Duration::from_secs(10), |f| match f {
        Frame::PodRemove { uid } => Some(uid),
        _ => None,
    });
    assert_eq!(removed, pod.uid);
}

#[test]
fn a_node_certificate_acts_only_for_its_own_node() {
    let c = Controller::start(&[]);
    let (agent, _pod) = node_with_pod(&c);
    // A pod bound to another node: the n1 session never sees it and cannot report it.
    c.ok_in(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: {name: other}\nspec:\n  nodeName: n2\n  containers:\n  - {name: c, image: busybox}\n"),
    );
    let other = c.json(&["get", "pod", "other"]);
    let uid = other["metadata"]["uid"].as_str().unwrap().to_owned();
    let fake = PodReport {
        uid: uid.clone(),
        namespace: "default".into(),
        name: "other".into(),
        ..running_report(&_pod)
    };
    agent.send(Frame::PodStatus(fake));
    agent.send(Frame::Event(AgentEvent {
        pod_uid: uid,
        namespace: "default".into(),
        pod_name: "other".into(),
        field_path: String::new(),
        warning: true,
        reason: "Forged".into(),
        message: "forged by n1".into(),
    }));
    // A report about its own pod after them proves they were processed.
    agent.send(Frame::PodStatus(running_report(&_pod)));
    c.until("web Running", Duration::from_secs(10), || {
        c.ok(&["get", "pod", "web"]).contains("Running")
    });
    std::thread::sleep(Duration::from_millis(500));
    let other = c.json(&["get", "pod", "other"]);
    assert!(
        other["status"]["phase"] != "Running",
        "n1 wrote n2's pod: {other}"
    );
    assert!(!c.ok(&["get", "events"]).contains("forged by n1"));
    while let Ok(f) = agent.frames.try_recv() {
        if let Frame::PodUpsert(p) = f {
            assert_ne!(p.name, "other", "n1 was sent n2's pod");
        }
    }
}

#[test]
fn logs_and_exec_are_relayed_through_the_node() {
    let c = Controller::start(&[]);
    let (agent, pod) = node_with_pod(&c);
    agent.send(Frame::PodStatus(running_report(&pod)));
    c.until("web Running", Duration::from_secs(10), || {
        c.ok(&["get", "pod", "web"]).contains("Running")
    });

    assert_eq!(c.ok(&["logs", "web"]), "hello from the node\nsecond line\n");
    let out = c.kubectl(&["logs", "web", "-c", "nope"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("container nope is not valid for pod web"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // -f follows until the client goes away; the node is told to stop.
    let mut follow = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(["logs", "-f", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen.contains("tick 3\n") && Instant::now() < deadline {
        let mut b = [0u8; 256];
        let n = stdout.read(&mut b).unwrap();
        if n == 0 {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(&b[..n]));
    }
    assert!(
        seen.starts_with("hello from the node\nsecond line\ntick 1\n"),
        "{seen}"
    );
    assert!(seen.contains("tick 3\n"), "logs -f did not follow: {seen}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follow.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let _ = follow.wait();
    agent
        .closed
        .recv_timeout(Duration::from_secs(10))
        .expect("the node is told the log stream ended");

    // A quiet follower that goes away is noticed too.
    let mut quiet = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(["logs", "-f", "--tail=1", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    quiet
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert_eq!(&first, b"hello fr");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(quiet.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let _ = quiet.wait();
    agent
        .closed
        .recv_timeout(Duration::from_secs(10))
        .expect("the node is told a quiet log stream ended");

    // exec through the WebSocket path: output, exit codes, stdin.
    assert_eq!(
        c.ok(&["exec", "web", "--", "echo", "hi", "there"]),
        "hi there\n"
    );
    let out = c.kubectl(&["exec", "web", "--", "sh", "-c", "exit 3"], None);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echoed = c.ok_in(&["exec", "-i", "web", "--", "cat"], Some("piped input\n"));
    assert_eq!(echoed, "piped input\n");
    let out = c.kubectl(&["exec", "web", "--", "frobnicate"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such command"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_node_whose_session_drops_turns_unknown() {
    let c = Controller::start(&["--node-monitor-grace-period", "6s"]);
    let cert = join(&c, "n1", &c.token().secret).expect("join");
    let agent = Agent::start(&c, &cert);
    agent.send(Frame::NodeReport(node_report()));
    c.until("node n1 Ready", Duration::from_secs(20), || {
        c.ok(&["get", "node", "n1"]).contains(" Ready ")
    });
    // Well past the grace period, the renewing session keeps it Ready.
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        c.ok(&["get", "node", "n1"]).contains(" Ready "),
        "{}",
        c.proc.output()
    );
    drop(agent);
    c.until("node n1 NotReady", Duration::from_secs(40), || {
        c.ok(&["get", "node", "n1"]).contains("NotReady")
    });
    // A new session brings it back.
    let agent = Agent::start(&c, &cert);
    agent.send(Frame::NodeReport(node_report()));
    c.until("node n1 Ready again", Duration::from_secs(30), || {
        c.ok(&["get", "node", "n1"]).contains(" Ready ")
    });
}

/// Opens a session with `cert` that the hub must refuse; its reason.
fn refused_session(c: &Controller, cert: &NodeCert) -> String {
    let mut link = Link::dial(c.hub, "", Some(cert)).expect("mutual TLS session");
    link.hello("n1", PROTOCOL_VERSION);
    link.send(&Frame::NodeReport(node_report()));
    loop {
        match link.recv(Duration::from_secs(10)) {
            Some(Frame::Refused { reason }) => return reason,
            Some(Frame::Ping(_)) => continue,
            other => panic!("expected the session refused, got {other:?}"),
        }
    }
}

#[test]
fn a_node_name_belongs_to_the_machine_that_joined_with_it_first() {
    let c = Controller::start(&[]);
    let secret = c.token().secret;
    let key_a = rcgen::KeyPair::generate().unwrap();
    let cert_a = join_with_key(&c, "n1", &secret, &key_a).expect("the first join");
    let agent_a = Agent::start(&c, &cert_a);
    agent_a.send(Frame::NodeReport(node_report()));
    c.until("node n1 Ready", Duration::from_secs(20), || {
        c.ok(&["get", "node", "n1"]).contains(" Ready ")
    });
    // The owner's key is recorded where the controller keeps its state.
    let record = c.json(&["get", "secret", "-n", "kube-system", "n1.node-key.flotilla"]);
    assert_eq!(record["type"], "flotilla.dev/node-key");
    assert_eq!(record["metadata"]["annotations"]["flotilla.dev/node"], "n1");

    // Another machine (another key) cannot join as n1 while Node n1 exists, and is
    // told how to free the name; nothing changes for the owner.
    let reason = join(&c, "n1", &secret).expect_err("a second machine as n1");
    assert!(
        reason.contains("node name \"n1\" belongs to another machine")
            && reason.contains("--node-name")
            && reason.contains("`kubectl delete node n1`"),
        "{reason}"
    );
    assert_eq!(
        c.json(&["get", "secret", "-n", "kube-system", "n1.node-key.flotilla"])["data"],
        record["data"],
        "the record is unchanged"
    );
    // The owner joining again (a renewed certificate) is accepted.
    let renewed = join_with_key(&c, "n1", &secret, &key_a).expect("the owner joins again");
    assert_ne!(renewed.cert_pem, cert_a.cert_pem);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !c.proc.output().contains("another machine now owns"),
        "the owner's session stays up"
    );
    agent_a.send(Frame::NodeReport(node_report()));
    assert!(c.ok(&["get", "node", "n1"]).contains(" Ready "));

    // `kubectl delete node n1` frees the name: the next machine takes it, and the
    // old owner's session, still up, is ended.
    c.ok(&["delete", "node", "n1"]);
    let key_b = rcgen::KeyPair::generate().unwrap();
    let cert_b = join_with_key(&c, "n1", &secret, &key_b).expect("a join once freed");
    c.until(
        "the old owner's session ended",
        Duration::from_secs(10),
        || {
            c.proc
                .output()
                .contains("another machine now owns node name \"n1\"")
        },
    );
    drop(agent_a);
    assert_ne!(
        c.json(&["get", "secret", "-n", "kube-system", "n1.node-key.flotilla"])["data"],
        record["data"],
        "the record holds the new owner's key"
    );
    let agent_b = Agent::start(&c, &cert_b);
    agent_b.send(Frame::NodeReport(node_report()));
    c.until("node n1 Ready again", Duration::from_secs(20), || {
        c.kubectl(&["get", "node", "n1"], None).status.success()
            && c.ok(&["get", "node", "n1"]).contains(" Ready ")
    });
    // The old owner's certificates are refused their session now.
    for cert in [&cert_a, &renewed] {
        let reason = refused_session(&c, cert);
        assert!(
            reason.contains("node name \"n1\" belongs to another machine")
                && reason.contains("`kubectl delete node n1`"),
            "{reason}"
        );
    }
    // The new owner's session was not disturbed by them.
    agent_b.send(Frame::NodeReport(node_report()));
    std::thread::sleep(Duration::from_secs(1));
    assert!(c.ok(&["get", "node", "n1"]).contains(" Ready "));
    assert_eq!(
        c.proc.output().matches("replaced by a new session").count(),
        0,
        "no session of n1 replaced another"
    );
}

#[test]
fn a_second_live_session_with_the_same_credentials_is_reported() {
    let c = Controller::start(&[]);
    let cert = join(&c, "n1", &c.token().secret).expect("join");
    let first = Agent::start(&c, &cert);
    first.send(Frame::NodeReport(node_report()));
    c.until("node n1 Ready", Duration::from_secs(20), || {
        c.ok(&["get", "node", "n1"]).contains(" Ready ")
    });
    // A copy of the same credentials (a card cloned after the node joined) connects
    // while the first machine still answers: the hub says so.
    let copy = Agent::start(&c, &cert);
    c.until(
        "the replaced live session reported",
        Duration::from_secs(10),
        || {
            c.proc
                .output()
                .contains("two machines hold this node's credentials")
        },
    );
    drop(first);
    // A machine reconnecting after its old link closed is not reported.
    drop(copy);
    c.until("the copy's session down", Duration::from_secs(10), || {
        c.proc.output().matches("node session down").count() == 2
    });
    let again = Agent::start(&c, &cert);
    again.send(Frame::NodeReport(node_report()));
    c.until("node n1 Ready again", Duration::from_secs(20), || {
        c.proc.output().matches("node session up").count() == 3
            && c.ok(&["get", "node", "n1"]).contains(" Ready ")
    });
    assert_eq!(
        c.proc
            .output()
            .matches("two machines hold this node's credentials")
            .count(),
        1,
        "{}",
        c.proc.output()
    );
}
