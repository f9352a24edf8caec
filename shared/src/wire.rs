//! The agent-link wire format.
//!
//! One TLS connection per agent carries frames: a 4-byte big-endian length followed by
//! a postcard-encoded [`Frame`]. The first frame in each direction is a [`Hello`]
//! carrying [`PROTOCOL_VERSION`]. Postcard is not self-describing, so these types
//! never use `skip_serializing_if` or untagged enums, and new fields only appear
//! behind a new protocol version.
//!
//! A link is either a join (the agent has no certificate yet: [`Frame::Join`] with the
//! token's secret, answered by [`Frame::Joined`] or [`Frame::Refused`], then closed)
//! or a session under mutual TLS: the controller sends the node its
//! [`NodeConfig`](crate::pod::NodeConfig) and its whole desired pod set, then changes;
//! the agent sends its node report, pod reports and events; streams for logs and exec
//! are multiplexed by id with credit-based flow control.

use crate::pod::{NodeConfig, NodeReport, PodReport, PodSpec, StreamRequest};
use serde::{Deserialize, Serialize};

/// Version of the agent-link protocol spoken by this build.
pub const PROTOCOL_VERSION: u32 = 2;

/// Stream channels, numbered as Kubernetes' remotecommand protocol numbers them.
pub const CHANNEL_STDIN: u8 = 0;
/// Standard output of a stream (also the channel of logs).
pub const CHANNEL_STDOUT: u8 = 1;
/// Standard error of an exec stream.
pub const CHANNEL_STDERR: u8 = 2;
/// The exec's final status, a Kubernetes `Status` JSON document.
pub const CHANNEL_ERROR: u8 = 3;
/// Terminal size changes, `{"Width":80,"Height":24}`.
pub const CHANNEL_RESIZE: u8 = 4;

/// Bytes a receiver grants a new stream before any [`Frame::StreamCredit`].
pub const INITIAL_STREAM_CREDIT: u32 = 256 * 1024;

/// Largest frame either side accepts, to bound memory on small boards.
pub const MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// First frame sent by each side of a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The sender's release (`flotilla-shared::VERSION`).
    pub release: String,
    /// The node name (agent) or the cluster name (controller).
    pub name: String,
    /// The sender's platform, e.g. `linux/arm/v7`.
    pub platform: String,
}

/// A frame on the agent link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Opens the link; must be the first frame.
    Hello(Hello),
    /// Keep-alive; the peer answers with [`Frame::Pong`] carrying the same value.
    Ping(u64),
    /// Answer to [`Frame::Ping`].
    Pong(u64),
    /// Bytes of a multiplexed stream (logs, exec), by stream id and channel. Empty
    /// `data` on [`CHANNEL_STDIN`] (controller → agent) closes the process's stdin
    /// (kubectl's v5 close of stdin); it uses no credit.
    StreamData {
        stream: u32,
        channel: u8,
        data: Vec<u8>,
    },
    /// Flow control: the receiver can take this many more bytes on the stream.
    StreamCredit { stream: u32, bytes: u32 },
    /// The stream is finished (either side); `error` is empty on success.
    StreamClose { stream: u32, error: String },
    /// Agent → controller, on a join link: the secret part of the join token, the node
    /// name, and a PEM certificate signing request for `system:node:<name>`.
    Join {
        secret: String,
        node_name: String,
        csr_pem: String,
    },
    /// Controller → agent: the node's client certificate and the cluster CA (PEM).
    Joined { cert_pem: String, ca_pem: String },
    /// Either side, before closing: why the link or join is refused.
    Refused { reason: String },
    /// Controller → agent: the node's settings (sent again when they change).
    NodeConfig(NodeConfig),
    /// Controller → agent: the complete desired pod set; pods not in it are removed.
    PodSet(Vec<PodSpec>),
    /// Controller → agent: a pod was bound to this node or changed.
    PodUpsert(PodSpec),
    /// Controller → agent: a pod is gone from this node (deleted or rebound).
    PodRemove { uid: String },
    /// Controller → agent: open a stream (logs or exec) with this id.
    StreamOpen { stream: u32, request: StreamRequest },
    /// Agent → controller: the node's addresses, resources, info and pressures.
    NodeReport(NodeReport),
    /// Agent → controller: a pod's status.
    PodStatus(PodReport),
    /// Agent → controller: an event about a pod (Pulled, Started, BackOff, …).
    Event(AgentEvent),
}

impl Frame {
    /// The variant's name, for log lines and errors (never the content: a frame may
    /// hold secrets).
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Ping(_) => "Ping",
            Frame::Pong(_) => "Pong",
            Frame::StreamData { .. } => "StreamData",
            Frame::StreamCredit { .. } => "StreamCredit",
            Frame::StreamClose { .. } => "StreamClose",
            Frame::Join { .. } => "Join",
            Frame::Joined { .. } => "Joined",
            Frame::Refused { .. } => "Refused",
            Frame::NodeConfig(_) => "NodeConfig",
            Frame::PodSet(_) => "PodSet",
            Frame::PodUpsert(_) => "PodUpsert",
            Frame::PodRemove { .. } => "PodRemove",
            Frame::StreamOpen { .. } => "StreamOpen",
            Frame::NodeReport(_) => "NodeReport",
            Frame::PodStatus(_) => "PodStatus",
            Frame::Event(_) => "Event",
        }
    }
}

/// An event the agent records about one of its pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEvent {
    pub pod_uid: String,
    pub namespace: String,
    pub pod_name: String,
    /// `spec.containers{name}`-style field path, empty for the pod itself.
    pub field_path: String,
    /// `Warning` instead of `Normal`.
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// Errors decoding a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge(u64),
    #[error("incomplete frame: need {needed} bytes, have {have}")]
    Incomplete { needed: usize, have: usize },
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("peer speaks agent-link protocol {peer}, this build speaks {PROTOCOL_VERSION}")]
    Version { peer: u32 },
}

/// Encodes `frame` with its length prefix.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, WireError> {
    let body = postcard::to_allocvec(frame).map_err(|e| WireError::Decode(e.to_string()))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|len| *len <= MAX_FRAME_LEN)
        .ok_or(WireError::TooLarge(body.len() as u64))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes one frame from the front of `buf`, returning it and the bytes consumed.
pub fn decode(buf: &[u8]) -> Result<(Frame, usize), WireError> {
    let header: [u8; 4] =
        buf.get(..4)
            .and_then(|h| h.try_into().ok())
            .ok_or(WireError::Incomplete {
                needed: 4,
                have: buf.len(),
            })?;
    let len = u32::from_be_bytes(header);
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge(u64::from(len)));
    }
    let end = 4 + len as usize;
    let body = buf.get(4..end).ok_or(WireError::Incomplete {
        needed: end,
        have: buf.len(),
    })?;
    let frame = postcard::from_bytes(body).map_err(|e| WireError::Decode(e.to_string()))?;
    Ok((frame, end))
}

/// Checks a peer's hello against this build's protocol version.
pub fn check_hello(hello: &Hello) -> Result<(), WireError> {
    if hello.protocol_version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(WireError::Version {
            peer: hello.protocol_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Frame {
        Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            release: crate::VERSION.into(),
            name: "pi-04".into(),
            platform: "linux/arm/v7".into(),
        })
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = [
            hello(),
            Frame::Ping(u64::MAX),
            Frame::Pong(7),
            Frame::StreamData {
                stream: 3,
                channel: CHANNEL_STDERR,
                data: vec![0, 255, 10],
            },
            Frame::StreamCredit {
                stream: u32::MAX,
                bytes: 65536,
            },
            Frame::StreamClose {
                stream: 1,
                error: "exit status 2".into(),
            },
            Frame::Join {
                secret: "s3cr3t".into(),
                node_name: "pi-04".into(),
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            },
            Frame::Joined {
                cert_pem: "cert".into(),
                ca_pem: "ca".into(),
            },
            Frame::Refused {
                reason: "invalid join token".into(),
            },
            Frame::NodeConfig(crate::pod::NodeConfig {
                pod_cidr: "10.42.3.0/24".into(),
                ..Default::default()
            }),
            Frame::PodSet(vec![crate::pod::tests::sample_pod()]),
            Frame::PodUpsert(crate::pod::tests::sample_pod()),
            Frame::PodRemove { uid: "u1".into() },
            Frame::StreamOpen {
                stream: 9,
                request: StreamRequest::Exec {
                    pod_uid: "u1".into(),
                    container: "web".into(),
                    command: vec!["sh".into()],
                    stdin: true,
                    stdout: true,
                    stderr: false,
                    tty: true,
                },
            },
            Frame::NodeReport(crate::pod::tests::sample_node_report()),
            Frame::PodStatus(crate::pod::tests::sample_report()),
            Frame::Event(AgentEvent {
                pod_uid: "u1".into(),
                namespace: "default".into(),
                pod_name: "web-1".into(),
                field_path: "spec.containers{web}".into(),
                warning: true,
                reason: "BackOff".into(),
                message: "Back-off restarting failed container".into(),
            }),
        ];
        for frame in frames {
            assert!(format!("{frame:?}").starts_with(frame.name()), "{frame:?}");
            let bytes = encode(&frame).unwrap();
            assert_eq!(decode(&bytes).unwrap(), (frame, bytes.len()));
        }
    }

    /// The exact bytes are part of the protocol: the same on 32- and 64-bit boards.
    #[test]
    fn encoding_is_identical_on_every_architecture() {
        let bytes = encode(&Frame::StreamCredit {
            stream: 300,
            bytes: 1,
        })
        .unwrap();
        assert_eq!(bytes, [0, 0, 0, 4, 4, 0xac, 0x02, 0x01]);
        let ping = encode(&Frame::Ping(u64::MAX)).unwrap();
        assert_eq!(ping.len(), 4 + 1 + 10, "u64 is a 10-byte varint everywhere");
    }

    #[test]
    fn back_to_back_frames_decode_in_order() {
        let mut buf = encode(&Frame::Ping(1)).unwrap();
        buf.extend(encode(&Frame::Pong(1)).unwrap());
        let (first, used) = decode(&buf).unwrap();
        let (second, _) = decode(&buf[used..]).unwrap();
        assert_eq!((first, second), (Frame::Ping(1), Frame::Pong(1)));
    }

    #[test]
    fn partial_and_oversized_frames_are_refused() {
        let bytes = encode(&hello()).unwrap();
        assert!(matches!(
            decode(&bytes[..2]),
            Err(WireError::Incomplete { .. })
        ));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(WireError::Incomplete { .. })
        ));
        let huge = (MAX_FRAME_LEN + 1).to_be_bytes();
        assert_eq!(
            decode(&huge),
            Err(WireError::TooLarge(u64::from(MAX_FRAME_LEN) + 1))
        );
        assert!(matches!(
            decode(&[0, 0, 0, 1, 200]),
            Err(WireError::Decode(_))
        ));
    }

    #[test]
    fn a_peer_with_another_protocol_version_is_refused() {
        let Frame::Hello(mut peer) = hello() else {
            unreachable!()
        };
        assert_eq!(check_hello(&peer), Ok(()));
        peer.protocol_version = 1;
        let err = check_hello(&peer).unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer speaks agent-link protocol 1, this build speaks 2"
        );
    }
}
