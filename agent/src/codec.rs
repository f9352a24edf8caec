//! Agent-link frames to and from the controller: the shared frame reader and writer
//! ([`flotilla_shared::frame_io`]), with errors that say which side did what.

use anyhow::{Context, Result, anyhow};
use flotilla_shared::frame_io::{self, ReadError};
use flotilla_shared::wire::{Frame, MAX_FRAME_LEN};
use futures_lite::{AsyncRead, AsyncWrite};

/// Reads one frame; `None` when the peer closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>> {
    frame_io::read_frame(r, MAX_FRAME_LEN)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge(len, limit) => {
                anyhow!("the controller sent a frame of {len} bytes, over the limit of {limit}")
            }
            ReadError::Truncated => anyhow!("the controller closed the connection inside a frame"),
            other => anyhow!(other).context("reading from the controller"),
        })
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<()> {
    frame_io::write_frame(w, frame)
        .await
        .context("writing to the controller")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_a_byte_stream_in_order() {
        smol::block_on(async {
            let mut out = Vec::new();
            write_frame(&mut out, &Frame::Ping(7)).await.unwrap();
            write_frame(
                &mut out,
                &Frame::StreamData {
                    stream: 1,
                    channel: 1,
                    data: vec![9; 100_000],
                },
            )
            .await
            .unwrap();
            let mut input = futures_lite::io::Cursor::new(out);
            assert_eq!(read_frame(&mut input).await.unwrap(), Some(Frame::Ping(7)));
            let Some(Frame::StreamData { data, .. }) = read_frame(&mut input).await.unwrap() else {
                panic!("expected stream data")
            };
            assert_eq!(data.len(), 100_000);
            assert_eq!(read_frame(&mut input).await.unwrap(), None);
        });
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors() {
        smol::block_on(async {
            let bytes = flotilla_shared::wire::encode(&Frame::Pong(1)).unwrap();
            let mut cut = futures_lite::io::Cursor::new(bytes[..bytes.len() - 1].to_vec());
            let err = read_frame(&mut cut).await.unwrap_err();
            assert!(err.to_string().contains("inside a frame"), "{err}");
            let mut huge =
                futures_lite::io::Cursor::new((MAX_FRAME_LEN + 1).to_be_bytes().to_vec());
            let err = read_frame(&mut huge).await.unwrap_err();
            assert!(err.to_string().contains("over the limit"), "{err}");
        });
    }
}
