//! Reading and writing agent-link frames on an async byte stream: a 4-byte big-endian
//! length, then the postcard body ([`flotilla_shared::wire`]), bounded by
//! [`MAX_FRAME_LEN`].

use anyhow::{Context, Result, bail};
use flotilla_shared::wire::{self, Frame, MAX_FRAME_LEN};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one frame; `None` when the peer closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        let n = r
            .read(&mut header[got..])
            .await
            .context("reading from the controller")?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            bail!("the controller closed the connection inside a frame header");
        }
        got += n;
    }
    let len = u32::from_be_bytes(header);
    if len > MAX_FRAME_LEN {
        bail!("the controller sent a frame of {len} bytes, over the limit of {MAX_FRAME_LEN}");
    }
    let mut buf = vec![0u8; 4 + len as usize];
    buf[..4].copy_from_slice(&header);
    r.read_exact(&mut buf[4..])
        .await
        .context("the controller closed the connection inside a frame")?;
    let (frame, _) = wire::decode(&buf)?;
    Ok(Some(frame))
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<()> {
    let bytes = wire::encode(frame)?;
    w.write_all(&bytes)
        .await
        .context("writing to the controller")?;
    w.flush().await.context("writing to the controller")?;
    Ok(())
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
            let bytes = wire::encode(&Frame::Pong(1)).unwrap();
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
