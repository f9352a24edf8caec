//! `pods/{name}/exec` over WebSocket (the subprotocols `v5.channel.k8s.io` and
//! `v4.channel.k8s.io` that kubectl 1.30+ speaks): each binary message starts with
//! its channel byte (stdin 0, stdout 1, stderr 2, error 3, resize 4; v5 adds 255 to
//! close a channel). The hub relays the channels to the pod's node as a stream; the
//! command's exit status comes back on the error channel as a Kubernetes Status, so
//! `kubectl exec` exits with the command's code. SPDY is refused with a clear error.

use super::auth::Identity;
use super::podlog::{container, locate};
use super::status::{ApiError, ApiResult};
use super::{Api, Body, full};
use crate::hub::streams::{Incoming, Stream};
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use flotilla_shared::pod::StreamRequest;
use flotilla_shared::wire::{CHANNEL_ERROR, CHANNEL_RESIZE, CHANNEL_STDIN};
use futures_lite::StreamExt as _;
use hyper::Response;
use hyper::http::request::Parts;
use serde_json::{Value, json};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

/// The subprotocols served, best first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// v5's message type that closes a channel (the client's stdin).
const CHANNEL_CLOSE: u8 = 255;

fn header<'a>(parts: &'a Parts, name: &str) -> impl Iterator<Item = &'a str> {
    parts
        .headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
}

/// The subprotocol to answer with, from the client's `Sec-WebSocket-Protocol`.
pub fn negotiate<'a>(offered: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let offered: Vec<String> = offered
        .flat_map(|h| h.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    PROTOCOLS
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
}

/// The exec options of a query string (`command` repeats).
#[derive(Debug)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Parses and checks the exec options, with the API server's messages.
pub fn options(query: Option<&str>) -> ApiResult<ExecOptions> {
    let mut o = ExecOptions {
        command: Vec::new(),
        stdin: false,
        stdout: false,
        stderr: false,
        tty: false,
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let on = v == "true" || v == "1";
        match &*k {
            "command" => o.command.push(v.into_owned()),
            "stdin" => o.stdin = on,
            "stdout" => o.stdout = on,
            "stderr" => o.stderr = on,
            "tty" => o.tty = on,
            _ => {}
        }
    }
    if o.command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    if !(o.stdin || o.stdout || o.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least one of stdin, stdout, stderr",
        ));
    }
    if o.tty {
        // A terminal merges stderr into stdout.
        o.stderr = false;
    }
    Ok(o)
}

/// The Status the error channel carries when the agent ends a stream.
pub fn final_status(error: &str) -> Value {
    if error.is_empty() {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure", "message": error, "reason": "InternalError",
               "details": {"causes": [{"message": error}]}, "code": 500})
    }
}

fn container_running(pod: &Value, name: &str) -> bool {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .any(|k| {
            pod["status"][k]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"] == name && c["state"]["running"].is_object())
        })
}

/// Serves `pods/{name}/exec`.
pub async fn serve(
    api: &Arc<Api>,
    ident: Identity,
    ns: &str,
    name: &str,
    mut parts: Parts,
) -> ApiResult<Response<Body>> {
    let upgrade = header(&parts, "upgrade")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if upgrade != "websocket" {
        return Err(ApiError::bad_request(format!(
            "flotilla serves pods/exec over WebSocket ({}) only, not {}; use kubectl 1.30 or newer",
            PROTOCOLS.join(", "),
            if upgrade.is_empty() {
                "a plain request".to_owned()
            } else {
                upgrade
            }
        )));
    }
    let t = locate(api, ident, ns, name, "exec", &parts).await?;
    let opts = options(parts.uri.query())?;
    let c = container(&t.pod, &t.query)?;
    let phase = t.pod["status"]["phase"].as_str().unwrap_or("");
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::bad_request(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    if !container_running(&t.pod, &c) {
        return Err(ApiError::bad_request(format!(
            "container {c} in pod {name} is not running"
        )));
    }
    let Some(proto) = negotiate(header(&parts, "sec-websocket-protocol")) else {
        return Err(ApiError::bad_request(format!(
            "unsupported WebSocket subprotocol: this server speaks {}",
            PROTOCOLS.join(", ")
        )));
    };
    let key = header(&parts, "sec-websocket-key")
        .next()
        .unwrap_or("")
        .to_owned();
    if key.is_empty() {
        return Err(ApiError::bad_request("missing Sec-WebSocket-Key"));
    }
    let on_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| {
            ApiError::bad_request(
                "this connection cannot be upgraded (HTTP/1.1 is needed for WebSocket)",
            )
        })?;
    let uid = t.pod["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    let request = StreamRequest::Exec {
        pod_uid: uid,
        container: c,
        command: opts.command,
        stdin: opts.stdin,
        stdout: opts.stdout,
        stderr: opts.stderr,
        tty: opts.tty,
    };
    let stream = Stream::open(&t.session, request).ok_or_else(|| {
        ApiError::new(503, "ServiceUnavailable", "the node's session just closed")
    })?;
    let v5 = proto == PROTOCOLS[0];
    crate::exec::spawn(async move {
        match on_upgrade.await {
            Ok(io) => bridge(UpgradedIo(io), stream, v5).await,
            Err(e) => tracing::debug!(error = %e, "exec upgrade failed"),
        }
    });
    Ok(Response::builder()
        .status(101)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .header("sec-websocket-protocol", proto)
        .body(full(""))
        .expect("valid response"))
}

/// Relays between the WebSocket and the agent's stream until either ends.
async fn bridge(io: UpgradedIo, mut stream: Stream, v5: bool) {
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut tx, mut rx) = ws.split();
    let sender = stream.sender();
    let from_client = async {
        while let Some(msg) = rx.next().await {
            let b = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => continue,
            };
            let Some((&channel, data)) = b.split_first() else {
                continue;
            };
            let delivered = match channel {
                CHANNEL_STDIN | CHANNEL_RESIZE if !data.is_empty() => {
                    sender.send(channel, data).await
                }
                // v5: the client closed its stdin; an empty stdin frame says so.
                CHANNEL_CLOSE if v5 && data.first() == Some(&CHANNEL_STDIN) => {
                    sender.send(CHANNEL_STDIN, &[]).await
                }
                _ => true,
            };
            if !delivered {
                return;
            }
        }
    };
    let to_client = async {
        let mut status_sent = false;
        while let Some(item) = stream.recv().await {
            match item {
                Incoming::Data { channel, data } => {
                    status_sent |= channel == CHANNEL_ERROR;
                    let mut m = Vec::with_capacity(data.len() + 1);
                    m.push(channel);
                    m.extend_from_slice(&data);
                    if tx.send(Message::Binary(m.into())).await.is_err() {
                        return;
                    }
                }
                Incoming::Close { error } => {
                    if !status_sent {
                        let mut m = vec![CHANNEL_ERROR];
                        m.extend(serde_json::to_vec(&final_status(&error)).unwrap_or_default());
                        let _ = tx.send(Message::Binary(m.into())).await;
                    }
                    break;
                }
            }
        }
        // A normal closure (1000): kubectl treats a close without a code as an error.
        let _ = tx
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    };
    futures_lite::future::or(from_client, to_client).await;
}

/// An upgraded HTTP connection as a futures-io byte stream.
struct UpgradedIo(hyper::upgrade::Upgraded);

impl futures_lite::AsyncRead for UpgradedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut rb = hyper::rt::ReadBuf::new(buf);
        ready!(hyper::rt::Read::poll_read(
            Pin::new(&mut self.0),
            cx,
            rb.unfilled()
        ))?;
        Poll::Ready(Ok(rb.filled().len()))
    }
}

impl futures_lite::AsyncWrite for UpgradedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        hyper::rt::Write::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        hyper::rt::Write::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        hyper::rt::Write::poll_shutdown(Pin::new(&mut self.0), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_is_preferred_and_v4_accepted() {
        assert_eq!(
            negotiate(["v5.channel.k8s.io, v4.channel.k8s.io, channel.k8s.io"].into_iter()),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(
            negotiate(["v4.channel.k8s.io", "v3.channel.k8s.io"].into_iter()),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(negotiate(["channel.k8s.io"].into_iter()), None);
    }

    #[test]
    fn exec_options_repeat_command_and_need_a_stream() {
        let o = options(Some(
            "command=sh&command=-c&command=exit+3&stdout=true&tty=true&stderr=true",
        ))
        .unwrap();
        assert_eq!(o.command, ["sh", "-c", "exit 3"]);
        assert!(o.stdout && o.tty && !o.stderr);
        assert_eq!(
            options(Some("stdout=true")).unwrap_err().message,
            "you must specify at least 1 command"
        );
        assert!(options(Some("command=ls")).is_err());
    }

    #[test]
    fn the_final_status_is_what_kubectl_decodes() {
        assert_eq!(
            final_status(""),
            json!({"metadata": {}, "status": "Success"})
        );
        let f = final_status("container not found");
        assert_eq!(f["status"], "Failure");
        assert_eq!(f["message"], "container not found");
    }
}
