//! Log and exec streams multiplexed on a node's session: ids, the frames that reach a
//! stream, and credit-based flow control both ways (each side may send only what the
//! other granted, starting from `INITIAL_STREAM_CREDIT`).

use super::session::Session;
use flotilla_shared::pod::StreamRequest;
use flotilla_shared::wire::{Frame, INITIAL_STREAM_CREDIT};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// What arrives on a stream from the agent.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Data {
        channel: u8,
        data: Vec<u8>,
    },
    /// The agent ended the stream; empty on success.
    Close {
        error: String,
    },
}

/// Bytes the agent may still send us, and bytes we may still send it.
struct Slot {
    tx: smol::channel::Sender<Incoming>,
    /// Bytes received and not yet granted back.
    unacked: u64,
    out: Arc<Credit>,
}

/// Credit the agent granted for our sends, with a wake-up for waiters.
struct Credit {
    bytes: Mutex<u64>,
    wake_tx: smol::channel::Sender<()>,
    wake_rx: smol::channel::Receiver<()>,
}

impl Credit {
    fn new() -> Credit {
        let (wake_tx, wake_rx) = smol::channel::bounded(1);
        Credit {
            bytes: Mutex::new(u64::from(INITIAL_STREAM_CREDIT)),
            wake_tx,
            wake_rx,
        }
    }

    fn add(&self, n: u32) {
        *self.bytes.lock().unwrap_or_else(|p| p.into_inner()) += u64::from(n);
        let _ = self.wake_tx.try_send(());
    }

    /// Takes up to `want` bytes of credit, waiting for some; None once closed.
    async fn take(&self, want: usize) -> Option<usize> {
        loop {
            {
                let mut b = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
                if *b > 0 {
                    let n = (*b).min(want as u64);
                    *b -= n;
                    return Some(n as usize);
                }
            }
            self.wake_rx.recv().await.ok()?;
        }
    }
}

/// A session's open streams.
#[derive(Default)]
pub struct Table {
    slots: Mutex<HashMap<u32, Slot>>,
    next: AtomicU32,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Data from the agent; a stream sending beyond its credit is closed.
    pub fn data(&self, s: &Session, stream: u32, channel: u8, data: Vec<u8>) {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(&stream) else {
            return;
        };
        slot.unacked += data.len() as u64;
        if slot.unacked > u64::from(INITIAL_STREAM_CREDIT) {
            let error = "the agent sent more than its stream credit".to_owned();
            let _ = slot.tx.try_send(Incoming::Close {
                error: error.clone(),
            });
            slots.remove(&stream);
            s.send(Frame::StreamClose { stream, error });
            return;
        }
        let _ = slot.tx.try_send(Incoming::Data { channel, data });
    }

    /// The agent granted more credit.
    pub fn credit(&self, stream: u32, bytes: u32) {
        if let Some(slot) = self.lock().get(&stream) {
            slot.out.add(bytes);
        }
    }

    /// The agent closed the stream.
    pub fn closed(&self, stream: u32, error: String) {
        if let Some(slot) = self.lock().remove(&stream) {
            let _ = slot.tx.try_send(Incoming::Close { error });
            slot.out.wake_tx.close();
        }
    }

    /// Ends every stream (the session is gone).
    pub fn close_all(&self, error: &str) {
        for (_, slot) in self.lock().drain() {
            let _ = slot.tx.try_send(Incoming::Close {
                error: error.to_owned(),
            });
            slot.out.wake_tx.close();
        }
    }

    fn granted(&self, stream: u32, n: u64) {
        if let Some(slot) = self.lock().get_mut(&stream) {
            slot.unacked = slot.unacked.saturating_sub(n);
        }
    }
}

/// One open stream on a node's session. Dropping it before the agent closed it tells
/// the agent to stop (the HTTP client went away).
pub struct Stream {
    session: Arc<Session>,
    id: u32,
    rx: smol::channel::Receiver<Incoming>,
    sender: StreamSender,
    done: bool,
}

/// The sending half of a [`Stream`] (stdin, resize), usable alongside its receiver.
#[derive(Clone)]
pub struct StreamSender {
    session: Arc<Session>,
    id: u32,
    credit: Arc<Credit>,
}

impl Stream {
    /// Opens a stream for `request` on the node's session.
    pub fn open(session: &Arc<Session>, request: StreamRequest) -> Option<Stream> {
        let table = &session.streams;
        let id = table.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let (tx, rx) = smol::channel::unbounded();
        let credit = Arc::new(Credit::new());
        table.lock().insert(
            id,
            Slot {
                tx,
                unacked: 0,
                out: credit.clone(),
            },
        );
        if !session.send(Frame::StreamOpen {
            stream: id,
            request,
        }) {
            table.lock().remove(&id);
            return None;
        }
        Some(Stream {
            session: session.clone(),
            id,
            rx,
            sender: StreamSender {
                session: session.clone(),
                id,
                credit,
            },
            done: false,
        })
    }

    /// The next frame from the agent (granting its bytes back as credit); after a
    /// `Close`, None.
    pub async fn recv(&mut self) -> Option<Incoming> {
        if self.done {
            return None;
        }
        let item = self.rx.recv().await.unwrap_or(Incoming::Close {
            error: "the node's session ended".to_owned(),
        });
        match &item {
            Incoming::Data { data, .. } if !data.is_empty() => {
                let n = data.len() as u32;
                self.session.streams.granted(self.id, u64::from(n));
                self.session.send(Frame::StreamCredit {
                    stream: self.id,
                    bytes: n,
                });
            }
            Incoming::Data { .. } => {}
            Incoming::Close { .. } => self.done = true,
        }
        Some(item)
    }

    /// The sending half.
    pub fn sender(&self) -> StreamSender {
        self.sender.clone()
    }
}

impl StreamSender {
    /// Sends `data` on `channel`, waiting for credit; false once the stream is gone.
    /// Empty data is sent as is (on stdin it means end of input).
    pub async fn send(&self, channel: u8, data: &[u8]) -> bool {
        if data.is_empty() {
            return self.session.send(Frame::StreamData {
                stream: self.id,
                channel,
                data: Vec::new(),
            });
        }
        let mut rest = data;
        while !rest.is_empty() {
            let Some(n) = self.credit.take(rest.len()).await else {
                return false;
            };
            let (chunk, tail) = rest.split_at(n);
            if !self.session.send(Frame::StreamData {
                stream: self.id,
                channel,
                data: chunk.to_vec(),
            }) {
                return false;
            }
            rest = tail;
        }
        true
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.session.streams.lock().remove(&self.id).is_some() {
            self.session.send(Frame::StreamClose {
                stream: self.id,
                error: String::new(),
            });
        }
    }
}
