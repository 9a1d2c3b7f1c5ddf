//! Frames on QUIC streams and datagrams: length-prefixed on streams, bare in
//! datagrams, always decoded by `chunk::wire` with a size cap checked before
//! any allocation.

use crate::chunk::wire::Frame;
use bytes::BytesMut;
use std::time::Duration;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("peer declared a {len}-byte frame; the limit here is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("reading a frame: {0}")]
    Read(String),
    #[error("writing a frame: {0}")]
    Write(String),
    #[error("malformed frame: {0}")]
    Malformed(#[from] crate::chunk::wire::WireError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("stream ended")]
    Finished,
}

impl FramingError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Read(_) => "read",
            Self::Write(_) => "write",
            Self::Malformed(_) => "malformed",
            Self::Timeout(_) => "timeout",
            Self::Finished => "finished",
        }
    }
}

/// Encodes `frame` without a length prefix (datagrams, FEC payloads).
pub fn encode(frame: &Frame) -> bytes::Bytes {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.freeze()
}

/// Writes one length-prefixed frame.
pub async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), FramingError> {
    let body = encode(frame);
    let len = u32::try_from(body.len()).map_err(|_| FramingError::TooLarge {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| FramingError::Write(e.to_string()))?;
    send.write_all(&body)
        .await
        .map_err(|e| FramingError::Write(e.to_string()))
}

/// Reads one length-prefixed frame of at most `max` bytes within `timeout`.
/// `Finished` means the peer closed the stream cleanly between frames.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: usize,
    timeout: Duration,
) -> Result<Frame, FramingError> {
    tokio::time::timeout(timeout, read_frame_inner(recv, max))
        .await
        .map_err(|_| FramingError::Timeout(timeout))?
}

async fn read_frame_inner(recv: &mut quinn::RecvStream, max: usize) -> Result<Frame, FramingError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(FramingError::Finished),
        Err(e) => return Err(FramingError::Read(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FramingError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| FramingError::Read(e.to_string()))?;
    Ok(Frame::decode(&body)?)
}
