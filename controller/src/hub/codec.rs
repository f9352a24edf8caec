//! Frame I/O on the hub's side of the agent link: the shared frame reader
//! ([`flotilla_shared::frame_io`]) with a per-read size limit, so an unauthenticated
//! peer cannot make the hub allocate large buffers, and a time limit; the hub's hello.

use flotilla_shared::frame_io;
use flotilla_shared::wire::{self, Frame, Hello, PROTOCOL_VERSION};
use futures_lite::AsyncRead;
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
        match frame_io::read_frame(r, limit).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) | Err(frame_io::ReadError::Truncated) => Err(ReadError::Closed),
            Err(frame_io::ReadError::TooLarge(len, limit)) => Err(ReadError::TooLarge(len, limit)),
            Err(frame_io::ReadError::Wire(e)) => Err(ReadError::Wire(e)),
            Err(frame_io::ReadError::Io(e)) => Err(ReadError::Io(e)),
        }
    };
    futures_lite::future::or(read, async {
        smol::Timer::after(timeout).await;
        Err(ReadError::Timeout(timeout))
    })
    .await
}

pub use frame_io::write_frame;

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
