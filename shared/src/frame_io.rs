//! Agent-link frames on an async byte stream (any `futures-io` reader or writer): the
//! one frame reader and writer both ends of the link use. The length prefix is checked
//! against the caller's limit before anything is allocated.

use crate::wire::{self, Frame, MAX_FRAME_LEN, WireError};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("frame of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(u32, u32),
    #[error("the link closed inside a frame")]
    Truncated,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("reading from the link: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame of at most `limit` bytes (and never more than [`MAX_FRAME_LEN`]);
/// `None` when the peer closed the stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: u32,
) -> Result<Option<Frame>, ReadError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(ReadError::Truncated),
            n => got += n,
        }
    }
    let len = u32::from_be_bytes(header);
    let limit = limit.min(MAX_FRAME_LEN);
    if len > limit {
        return Err(ReadError::TooLarge(len, limit));
    }
    let mut buf = vec![0u8; 4 + len as usize];
    buf[..4].copy_from_slice(&header);
    r.read_exact(&mut buf[4..]).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ReadError::Truncated
        } else {
            ReadError::Io(e)
        }
    })?;
    let (frame, _) = wire::decode(&buf)?;
    Ok(Some(frame))
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    let bytes = wire::encode(frame).map_err(std::io::Error::other)?;
    w.write_all(&bytes).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use futures_lite::io::Cursor;

    #[test]
    fn frames_cross_a_byte_stream_in_order_then_end() {
        block_on(async {
            let mut out = Vec::new();
            write_frame(&mut out, &Frame::Ping(7)).await.unwrap();
            let data = Frame::StreamData {
                stream: 1,
                channel: 1,
                data: vec![9; 100_000],
            };
            write_frame(&mut out, &data).await.unwrap();
            let mut input = Cursor::new(out);
            let max = MAX_FRAME_LEN;
            assert_eq!(
                read_frame(&mut input, max).await.unwrap(),
                Some(Frame::Ping(7))
            );
            assert_eq!(read_frame(&mut input, max).await.unwrap(), Some(data));
            assert_eq!(read_frame(&mut input, max).await.unwrap(), None);
        });
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors() {
        block_on(async {
            let bytes = wire::encode(&Frame::Pong(1)).unwrap();
            for cut in [2, bytes.len() - 1] {
                let mut input = Cursor::new(bytes[..cut].to_vec());
                let err = read_frame(&mut input, MAX_FRAME_LEN).await.unwrap_err();
                assert!(matches!(err, ReadError::Truncated), "{err}");
            }
            let big = wire::encode(&Frame::Refused {
                reason: "x".repeat(100),
            })
            .unwrap();
            let err = read_frame(&mut Cursor::new(big), 16).await.unwrap_err();
            assert!(matches!(err, ReadError::TooLarge(_, 16)), "{err}");
            let huge = (MAX_FRAME_LEN + 1).to_be_bytes().to_vec();
            let err = read_frame(&mut Cursor::new(huge), u32::MAX)
                .await
                .unwrap_err();
            assert!(
                matches!(err, ReadError::TooLarge(_, MAX_FRAME_LEN)),
                "{err}"
            );
        });
    }
}
