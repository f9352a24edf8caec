//! Frame I/O on the agent link: length-prefixed postcard frames ([`flotilla_shared::wire`])
//! read from and written to any async byte stream, with a per-read size limit so an
//! unauthenticated peer cannot make the hub allocate large buffers.

use flotilla_shared::wire::{self, Frame, Hello, PROTOCOL_VERSION};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::time::Duration;

/// Largest frame accepted before a peer has authenticated (join links).
pub const UNAUTHENTICATED_FRAME_LIMIT: u32 = 64 * 1024;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the link closed")]
    Closed,
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    #[error("frame of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(u32, u32),
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("reading from the link: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame of at most `limit` bytes, waiting at most `timeout`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: u32,
    timeout: Duration,
) -> Result<Frame, ReadError> {
    let read = async {
        let mut header = [0u8; 4];
        match r.read_exact(&mut header).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ReadError::Closed);
            }
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes(header);
        let limit = limit.min(wire::MAX_FRAME_LEN);
        if len > limit {
            return Err(ReadError::TooLarge(len, limit));
        }
        let mut buf = vec![0u8; 4 + len as usize];
        buf[..4].copy_from_slice(&header);
        r.read_exact(&mut buf[4..]).await?;
        let (frame, _) = wire::decode(&buf)?;
        Ok(frame)
    };
    futures_lite::future::or(read, async {
        smol::Timer::after(timeout).await;
        Err(ReadError::Timeout(timeout))
    })
    .await
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    let bytes = wire::encode(frame).map_err(std::io::Error::other)?;
    w.write_all(&bytes).await?;
    w.flush().await
}

/// The hub's hello.
pub fn hello() -> Frame {
    Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        release: flotilla_shared::VERSION.to_owned(),
        name: "flotilla".to_owned(),
        platform: platform(),
    })
}

/// This build's platform, as OCI writes it (`linux/arm64`, `linux/arm/v7`).
pub fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm/v7",
        other => other,
    };
    format!("linux/{arch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_a_byte_stream() {
        smol::block_on(async {
            let mut buf = Vec::new();
            write_frame(&mut buf, &Frame::Ping(7)).await.unwrap();
            write_frame(&mut buf, &hello()).await.unwrap();
            let mut r = futures_lite::io::Cursor::new(buf);
            let t = Duration::from_secs(1);
            assert_eq!(read_frame(&mut r, 1024, t).await.unwrap(), Frame::Ping(7));
            assert_eq!(read_frame(&mut r, 1024, t).await.unwrap(), hello());
            assert!(matches!(
                read_frame(&mut r, 1024, t).await,
                Err(ReadError::Closed)
            ));
        });
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_them() {
        smol::block_on(async {
            let mut buf = Vec::new();
            write_frame(
                &mut buf,
                &Frame::Refused {
                    reason: "x".repeat(100),
                },
            )
            .await
            .unwrap();
            let mut r = futures_lite::io::Cursor::new(buf);
            let err = read_frame(&mut r, 16, Duration::from_secs(1))
                .await
                .unwrap_err();
            assert!(matches!(err, ReadError::TooLarge(_, 16)), "{err}");
        });
    }
}
