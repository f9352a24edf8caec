//! The daemon against a small in-test hub speaking the real protocol over real TLS on
//! 127.0.0.1: join with the token (CSR signed by the test CA), then a mutual-TLS
//! session.

use super::*;
use crate::codec;
use crate::testing::{Call, TestPods, pod};
use flotilla_shared::wire::{AgentEvent, Hello, PROTOCOL_VERSION};
use futures_lite::future;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use smol::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What the test hub saw: (identity from the client certificate, frame).
type Seen = async_channel::Receiver<(String, Frame)>;

struct TestHub {
    addr: std::net::SocketAddr,
    ca_der: Vec<u8>,
    joins: Arc<AtomicUsize>,
    seen: Seen,
    _task: smol::Task<()>,
}

impl TestHub {
    fn start(secret: &'static str) -> TestHub {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test-ca");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca_der = ca_cert.der().to_vec();
        let ca_pem = ca_cert.pem();
        let issuer = Arc::new(Issuer::new(ca_params, ca_key));
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving = params.signed_by(&key, &issuer).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca_der.clone())).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![serving.der().clone(), CertificateDer::from(ca_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let acceptor = futures_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = smol::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let joins = Arc::new(AtomicUsize::new(0));
        let (seen_tx, seen) = async_channel::unbounded();
        let j = joins.clone();
        let task = smol::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let (seen_tx, j, issuer, ca_pem) =
                    (seen_tx.clone(), j.clone(), issuer.clone(), ca_pem.clone());
                smol::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let who = tls.get_ref().1.peer_certificates().map(|c| {
                        let (_, cert) = x509_parser::parse_x509_certificate(c[0].as_ref()).unwrap();
                        let cn = cert.subject().iter_common_name().next().unwrap();
                        cn.as_str().unwrap().to_string()
                    });
                    let Ok(Some(Frame::Hello(_))) = codec::read_frame(&mut tls).await else {
                        return;
                    };
                    let hello = Frame::Hello(Hello {
                        protocol_version: PROTOCOL_VERSION,
                        release: "test".into(),
                        name: "test-hub".into(),
                        platform: "linux/amd64".into(),
                    });
                    codec::write_frame(&mut tls, &hello).await.unwrap();
                    let Some(who) = who else {
                        // A join.
                        let Ok(Some(Frame::Join {
                            secret: s,
                            node_name,
                            csr_pem,
                        })) = codec::read_frame(&mut tls).await
                        else {
                            return;
                        };
                        j.fetch_add(1, Ordering::SeqCst);
                        let answer = if s != secret {
                            Frame::Refused {
                                reason: "invalid join token".into(),
                            }
                        } else {
                            let csr = CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
                            let cert = csr.signed_by(&issuer).unwrap();
                            let _ = seen_tx
                                .send((format!("join:{node_name}"), Frame::Ping(0)))
                                .await;
                            Frame::Joined {
                                cert_pem: cert.pem(),
                                ca_pem: ca_pem.clone(),
                            }
                        };
                        let _ = codec::write_frame(&mut tls, &answer).await;
                        return;
                    };
                    // A session: config, one pod, then record what the agent sends.
                    for f in [
                        Frame::NodeConfig(flotilla_shared::pod::NodeConfig {
                            pod_cidr: "10.42.1.0/24".into(),
                            ..Default::default()
                        }),
                        Frame::PodSet(vec![pod("u1")]),
                    ] {
                        codec::write_frame(&mut tls, &f).await.unwrap();
                    }
                    while let Ok(Some(frame)) = codec::read_frame(&mut tls).await {
                        if let Frame::Ping(n) = frame {
                            let _ = codec::write_frame(&mut tls, &Frame::Pong(n)).await;
                        }
                        if seen_tx.send((who.clone(), frame)).await.is_err() {
                            return;
                        }
                    }
                })
                .detach();
            }
        });
        TestHub {
            addr,
            ca_der,
            joins,
            seen,
            _task: task,
        }
    }

    fn token(&self, secret: &str) -> JoinToken {
        format!(
            "K10{}::node:{secret}",
            hex::encode(crate::tls::cert_hash(&self.ca_der))
        )
        .parse()
        .unwrap()
    }

    fn server(&self) -> Server {
        format!("https://127.0.0.1:{}", self.addr.port())
            .parse()
            .unwrap()
    }
}

fn settings(hub: &TestHub, token: JoinToken, data_dir: &Path) -> Settings {
    Settings {
        server: hub.server(),
        token: Some(token),
        data_dir: data_dir.to_path_buf(),
        report: ReportConfig {
            node_name: "n1".into(),
            node_ip: Some("192.0.2.1".parse().unwrap()),
            labels: vec![],
            taints: vec![],
            data_dir: data_dir.to_path_buf(),
        },
        identity: None,
    }
}

async fn next_seen(seen: &Seen) -> (String, Frame) {
    crate::dial::timeout(Duration::from_secs(20), "a frame at the test hub", async {
        Ok(seen.recv().await?)
    })
    .await
    .unwrap()
}

#[test]
fn joins_with_the_token_then_runs_a_mutual_tls_session() {
    let hub = TestHub::start("right");
    let data = tempfile::tempdir().unwrap();
    let pods = Arc::new(TestPods::default());
    let (updates_tx, updates) = async_channel::unbounded();
    let daemon = smol::spawn(serve(
        pods.clone(),
        updates,
        settings(&hub, hub.token("right"), data.path()),
    ));
    smol::block_on(async {
        assert_eq!(next_seen(&hub.seen).await.0, "join:n1");
        let (who, frame) = next_seen(&hub.seen).await;
        assert_eq!(
            who, "system:node:n1",
            "the session uses the certificate from the join"
        );
        let Frame::NodeReport(report) = frame else {
            panic!("first frame {frame:?}")
        };
        assert!(
            report
                .addresses
                .contains(&("InternalIP".into(), "192.0.2.1".into()))
        );
        // The PodSet reached the workload and every pod's report came back.
        let (_, frame) = next_seen(&hub.seen).await;
        let Frame::PodStatus(status) = frame else {
            panic!("expected a report, got {frame:?}")
        };
        assert_eq!(status.uid, "u1");
        assert_eq!(
            *pods.calls.lock().unwrap(),
            vec![
                Call::NodeConfig("10.42.1.0/24".into()),
                Call::Desired(vec!["u1".into()])
            ]
        );
        // Workload updates are forwarded.
        let event = AgentEvent {
            pod_uid: "u1".into(),
            namespace: "default".into(),
            pod_name: "u1".into(),
            field_path: String::new(),
            warning: false,
            reason: "Started".into(),
            message: "Started container".into(),
        };
        updates_tx.send(Frame::Event(event.clone())).await.unwrap();
        assert_eq!(next_seen(&hub.seen).await.1, Frame::Event(event));
    });
    drop(daemon);
    let stored = identity::load(data.path())
        .unwrap()
        .expect("credentials stored");
    assert_eq!(stored.node_name, "n1");
    assert_eq!(hub.joins.load(Ordering::SeqCst), 1);
}

#[test]
fn a_wrong_secret_is_refused_with_the_reason() {
    let hub = TestHub::start("right");
    let data = tempfile::tempdir().unwrap();
    let (_tx, updates) = async_channel::unbounded();
    let err = smol::block_on(serve(
        Arc::new(TestPods::default()),
        updates,
        settings(&hub, hub.token("wrong"), data.path()),
    ))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the controller refused to let this node join: invalid join token"
    );
    assert!(
        identity::load(data.path()).unwrap().is_none(),
        "nothing stored"
    );
}

#[test]
fn a_token_pinning_another_ca_sends_no_secret() {
    let hub = TestHub::start("right");
    let other = TestHub::start("right");
    let data = tempfile::tempdir().unwrap();
    let (_tx, updates) = async_channel::unbounded();
    let err = smol::block_on(future::or(
        serve(
            Arc::new(TestPods::default()),
            updates,
            settings(&hub, other.token("right"), data.path()),
        ),
        async {
            smol::Timer::after(Duration::from_secs(20)).await;
            Err(anyhow::anyhow!("timed out"))
        },
    ))
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("without the CA pinned by the join token"),
        "{message}"
    );
    assert!(message.contains("no secret was sent"), "{message}");
    assert_eq!(hub.joins.load(Ordering::SeqCst), 0);
    assert!(identity::load(data.path()).unwrap().is_none());
}
