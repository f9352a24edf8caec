//! Logs and exec streams the controller opens on the link: each runs as its own task,
//! its blocking readers and writer on their own threads, bridged by bounded channels.
//! Output is sent only within the credit the controller granted (starting at
//! [`INITIAL_STREAM_CREDIT`]); stdin bytes are acknowledged with credit once written.
//! An exec ends with a Kubernetes `Status` on [`CHANNEL_ERROR`] (the kubelet's
//! format, so `kubectl exec` exits with the command's code), then `StreamClose`.
//! A stream that cannot start (no such pod or container) is closed at once with the
//! reason in `StreamClose.error`.
//!
//! An empty `StreamData` on [`CHANNEL_STDIN`] from the controller closes the
//! process's stdin; `StreamClose` from the controller cancels the stream.

use anyhow::{Result, anyhow};
use async_channel::{Receiver, Sender};
use flotilla_shared::pod::StreamRequest;
use flotilla_shared::wire::{
    CHANNEL_ERROR, CHANNEL_RESIZE, CHANNEL_STDERR, CHANNEL_STDIN, CHANNEL_STDOUT, Frame,
    INITIAL_STREAM_CREDIT,
};
use futures_lite::future;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, Weak};

use crate::workload::{ExecControl, Workload};

/// Largest `StreamData` payload the agent sends.
const MAX_CHUNK: usize = 32 * 1024;

/// The open streams of one session.
pub struct Streams<W: Workload> {
    workload: Arc<W>,
    out: Sender<Frame>,
    open: Mutex<HashMap<u32, Handle>>,
}

/// The controller's side of one open stream; dropping it cancels the stream.
struct Handle {
    grants: Sender<u32>,
    stdin: Sender<Vec<u8>>,
    resize: Sender<(u16, u16)>,
    _cancel: Sender<()>,
}

/// Receivers a stream task owns.
struct Inbox {
    grants: Receiver<u32>,
    stdin: Receiver<Vec<u8>>,
    resize: Receiver<(u16, u16)>,
}

impl<W: Workload> Streams<W> {
    /// Streams of a session whose outgoing frames go to `out`.
    pub fn new(workload: Arc<W>, out: Sender<Frame>) -> Arc<Streams<W>> {
        Arc::new(Streams {
            workload,
            out,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Starts stream `stream` for `request`.
    pub fn open(self: &Arc<Self>, stream: u32, request: StreamRequest) {
        let (grants_tx, grants) = async_channel::unbounded();
        let (stdin_tx, stdin) = async_channel::unbounded();
        let (resize_tx, resize) = async_channel::bounded(4);
        let (cancel_tx, cancel) = async_channel::bounded::<()>(1);
        let handle = Handle {
            grants: grants_tx,
            stdin: stdin_tx,
            resize: resize_tx,
            _cancel: cancel_tx,
        };
        if self.open.lock().unwrap().insert(stream, handle).is_some() {
            tracing::warn!(
                stream,
                "the controller reopened a stream in use; the old one is cancelled"
            );
        }
        let inbox = Inbox {
            grants,
            stdin,
            resize,
        };
        let this = Arc::downgrade(self);
        let workload = self.workload.clone();
        let out = self.out.clone();
        smol::spawn(async move {
            let work = run(workload, out.clone(), stream, request, inbox);
            let result = future::or(work, async {
                let _ = cancel.recv().await;
                Err(anyhow!("cancelled"))
            })
            .await;
            let cancelled = finish(&this, stream);
            if !cancelled {
                let error = match result {
                    Ok(()) => String::new(),
                    Err(e) => format!("{e:#}"),
                };
                let _ = out.send(Frame::StreamClose { stream, error }).await;
            }
        })
        .detach();
    }

    /// The controller granted `bytes` more on `stream`.
    pub fn credit(&self, stream: u32, bytes: u32) {
        if let Some(h) = self.open.lock().unwrap().get(&stream) {
            let _ = h.grants.try_send(bytes);
        }
    }

    /// Bytes from the controller: stdin, or a terminal resize.
    pub fn data(&self, stream: u32, channel: u8, data: Vec<u8>) {
        let open = self.open.lock().unwrap();
        let Some(h) = open.get(&stream) else {
            return;
        };
        match channel {
            CHANNEL_STDIN => {
                let _ = h.stdin.try_send(data);
            }
            CHANNEL_RESIZE => match parse_resize(&data) {
                Some(size) => {
                    let _ = h.resize.try_send(size);
                }
                None => tracing::warn!(stream, "ignoring an unreadable terminal size"),
            },
            other => tracing::warn!(
                stream,
                channel = other,
                "ignoring data on an output channel"
            ),
        }
    }

    /// The controller closed `stream`: cancel it.
    pub fn close(&self, stream: u32) {
        self.open.lock().unwrap().remove(&stream);
    }

    /// Cancels every stream (the session ended).
    pub fn close_all(&self) {
        self.open.lock().unwrap().clear();
    }

    /// Number of streams open.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.lock().unwrap().len()
    }
}

/// Forgets a finished stream; `true` when it had been cancelled already.
fn finish<W: Workload>(streams: &Weak<Streams<W>>, stream: u32) -> bool {
    match streams.upgrade() {
        Some(s) => s.open.lock().unwrap().remove(&stream).is_none(),
        None => true,
    }
}

/// `{"Width":80,"Height":24}`.
fn parse_resize(data: &[u8]) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let w = u16::try_from(v.get("Width")?.as_u64()?).ok()?;
    let h = u16::try_from(v.get("Height")?.as_u64()?).ok()?;
    Some((w, h))
}

async fn run<W: Workload>(
    workload: Arc<W>,
    out: Sender<Frame>,
    stream: u32,
    request: StreamRequest,
    inbox: Inbox,
) -> Result<()> {
    let mut credit = Credit {
        available: u64::from(INITIAL_STREAM_CREDIT),
        grants: inbox.grants,
    };
    match request {
        StreamRequest::Logs { .. } => {
            let reader = smol::unblock(move || workload.logs(&request)).await?;
            let (tx, rx) = async_channel::bounded(4);
            pump(reader, CHANNEL_STDOUT, tx, stream);
            while let Ok((channel, data)) = rx.recv().await {
                credit.send(&out, stream, channel, &data).await?;
            }
            Ok(())
        }
        StreamRequest::Exec { ref command, .. } => {
            let command = command.clone();
            let exec = smol::unblock(move || workload.exec(&request)).await?;
            if let Some(stdin) = exec.stdin {
                feed_stdin(stdin, inbox.stdin, out.clone(), stream);
            }
            let (tx, rx) = async_channel::bounded(4);
            if let Some(r) = exec.stdout {
                pump(r, CHANNEL_STDOUT, tx.clone(), stream);
            }
            if let Some(r) = exec.stderr {
                pump(r, CHANNEL_STDERR, tx.clone(), stream);
            }
            drop(tx);
            let control = Arc::new(Mutex::new(exec.control));
            relay_output(&out, stream, &rx, &inbox.resize, &control, &mut credit).await?;
            let code = smol::unblock(move || control.lock().unwrap().wait()).await?;
            let status = exit_status(code, &command);
            credit
                .send(&out, stream, CHANNEL_ERROR, status.as_bytes())
                .await
        }
    }
}

/// Sends the process's output until every output ends, applying terminal resizes
/// meanwhile.
async fn relay_output(
    out: &Sender<Frame>,
    stream: u32,
    rx: &Receiver<(u8, Vec<u8>)>,
    resize: &Receiver<(u16, u16)>,
    control: &Arc<Mutex<Box<dyn ExecControl>>>,
    credit: &mut Credit,
) -> Result<()> {
    enum Next {
        Output(Option<(u8, Vec<u8>)>),
        Resize(Option<(u16, u16)>),
    }
    let mut resizes_open = true;
    loop {
        let next = if resizes_open {
            future::or(async { Next::Output(rx.recv().await.ok()) }, async {
                Next::Resize(resize.recv().await.ok())
            })
            .await
        } else {
            Next::Output(rx.recv().await.ok())
        };
        match next {
            Next::Output(Some((channel, data))) => credit.send(out, stream, channel, &data).await?,
            Next::Output(None) => return Ok(()),
            Next::Resize(Some((w, h))) => {
                if let Ok(c) = control.try_lock()
                    && let Err(e) = c.resize(w, h)
                {
                    tracing::debug!(stream, "resizing the exec terminal: {e:#}");
                }
            }
            Next::Resize(None) => resizes_open = false,
        }
    }
}

/// The kubelet's exec status: Success, or Failure with reason NonZeroExitCode and the
/// code in `details.causes`.
pub fn exit_status(code: i32, command: &[String]) -> String {
    if code == 0 {
        return r#"{"metadata":{},"status":"Success"}"#.to_string();
    }
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
    .to_string()
}

/// Output credit of one stream.
struct Credit {
    available: u64,
    grants: Receiver<u32>,
}

impl Credit {
    /// Sends `data` as `StreamData` frames, waiting for credit when it runs out.
    async fn send(
        &mut self,
        out: &Sender<Frame>,
        stream: u32,
        channel: u8,
        mut data: &[u8],
    ) -> Result<()> {
        while !data.is_empty() {
            while let Ok(g) = self.grants.try_recv() {
                self.available += u64::from(g);
            }
            if self.available == 0 {
                let g = self
                    .grants
                    .recv()
                    .await
                    .map_err(|_| anyhow!("the stream closed"))?;
                self.available += u64::from(g);
                continue;
            }
            let n = data.len().min(MAX_CHUNK).min(self.available as usize);
            out.send(Frame::StreamData {
                stream,
                channel,
                data: data[..n].to_vec(),
            })
            .await
            .map_err(|_| anyhow!("the link closed"))?;
            self.available -= n as u64;
            data = &data[n..];
        }
        Ok(())
    }
}

/// Reads `reader` on its own thread into `tx` until it ends or nobody listens.
fn pump(mut reader: Box<dyn Read + Send>, channel: u8, tx: Sender<(u8, Vec<u8>)>, stream: u32) {
    let spawned = std::thread::Builder::new()
        .name(format!("stream-{stream}-out"))
        .spawn(move || {
            let mut buf = vec![0u8; MAX_CHUNK];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send_blocking((channel, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!(stream, channel, "stream output ended: {e}");
                        break;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(stream, "cannot start a stream thread: {e}");
    }
}

/// Writes what the controller sends on stdin, granting credit for each chunk written;
/// an empty chunk (or the stream's end) closes stdin.
fn feed_stdin(
    mut stdin: Box<dyn Write + Send>,
    rx: Receiver<Vec<u8>>,
    out: Sender<Frame>,
    stream: u32,
) {
    let spawned = std::thread::Builder::new()
        .name(format!("stream-{stream}-in"))
        .spawn(move || {
            while let Ok(data) = rx.recv_blocking() {
                if data.is_empty() || stdin.write_all(&data).and_then(|()| stdin.flush()).is_err() {
                    break;
                }
                let bytes = u32::try_from(data.len()).unwrap_or(u32::MAX);
                if out
                    .send_blocking(Frame::StreamCredit { stream, bytes })
                    .is_err()
                {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(stream, "cannot start a stream thread: {e}");
    }
}

#[cfg(test)]
mod tests;
