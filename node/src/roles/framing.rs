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

/// Writes one length-prefixed frame. A chunk's payload is handed to quinn
/// as the buffer it is (`encode_framed_split`), not copied.
pub async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), FramingError> {
    let mut head = BytesMut::new();
    let payload = crate::chunk::wire::encode_framed_split(frame, &mut head);
    let len = head.len() - 4 + payload.as_ref().map_or(0, bytes::Bytes::len);
    if len > u32::MAX as usize {
        return Err(FramingError::TooLarge {
            len,
            max: u32::MAX as usize,
        });
    }
    let mut parts = [head.freeze(), payload.unwrap_or_default()];
    send.write_all_chunks(&mut parts)
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
    read_frame_from(recv, max).await
}

/// Reads one length-prefixed frame of at most `max` bytes from any reader:
/// the node's stream-read path (a QUIC stream is one reader), generic so
/// tests and the fuzz target drive exactly this code with bytes.
///
/// The body buffer grows with the bytes that arrive, not with the length
/// the peer declared: a peer announcing a `max`-byte frame and sending
/// nothing holds 16 KiB, not `max`.
pub async fn read_frame_from<R>(recv: &mut R, max: usize) -> Result<Frame, FramingError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match recv.read(&mut len[got..]).await {
            Ok(0) if got == 0 => return Err(FramingError::Finished),
            Ok(0) => {
                return Err(FramingError::Read(format!(
                    "stream ended after {got} of 4 length bytes"
                )));
            }
            Ok(n) => got += n,
            Err(e) => return Err(FramingError::Read(e.to_string())),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FramingError::TooLarge { len, max });
    }
    let mut body: Vec<u8> = Vec::with_capacity(len.min(INITIAL_BODY));
    while body.len() < len {
        if body.len() == body.capacity() {
            // At most GROWTH × what arrived, and the last step lands on the
            // frame's length exactly: a 256 KiB chunk costs three buffers
            // and 144 KiB of copying, not six and 500 KiB by doubling, and
            // the payload kept in the store carries no slack (doubling
            // left a 256 KiB chunk in a 512 KiB buffer).
            let want = len.min(body.len().saturating_mul(GROWTH).max(INITIAL_BODY));
            body.reserve_exact(want - body.len());
        }
        let left = (len - body.len()) as u64;
        let n = (&mut *recv)
            .take(left)
            .read_buf(&mut body)
            .await
            .map_err(|e| FramingError::Read(e.to_string()))?;
        if n == 0 {
            return Err(FramingError::Read(format!(
                "stream ended after {} of {len} frame bytes",
                body.len()
            )));
        }
    }
    // The body becomes the payload's buffer as it is, not a copy of it.
    Ok(Frame::decode_bytes(&bytes::Bytes::from(body))?)
}

/// What a frame body buffer starts at before bytes arrive.
const INITIAL_BODY: usize = 16 * 1024;
/// A frame body buffer holds at most this many times the bytes that
/// arrived (a peer that declares a large frame and goes silent after 16 KiB
/// holds 128 KiB, within the stream limits of its connection).
const GROWTH: usize = 8;

/// Reads one length-prefixed frame of at most `max` bytes, judging the
/// peer by progress: it fails only when no byte has arrived for `stall`.
/// A lossy link that delivers slowly is waited for; a silent peer is not.
/// The caller bounds the whole read (a peer trickling a byte just inside
/// `stall` must not hold it for ever).
pub async fn read_frame_progressing<R>(
    recv: &mut R,
    max: usize,
    stall: Duration,
) -> Result<Frame, FramingError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut guarded = StallGuard {
        inner: recv,
        stall,
        timer: Box::pin(tokio::time::sleep(stall)),
        fired: false,
    };
    match read_frame_from(&mut guarded, max).await {
        Err(_) if guarded.fired => Err(FramingError::Timeout(stall)),
        other => other,
    }
}

/// A reader that fails once nothing has arrived for `stall`; every read
/// that brings bytes restarts the clock.
struct StallGuard<'a, R> {
    inner: &'a mut R,
    stall: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    fired: bool,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for StallGuard<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut *this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + this.stall;
                    this.timer.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.fired = true;
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no progress",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkId;
    use crate::chunk::StreamId;
    use proptest::prelude::*;

    fn read_all(mut input: &[u8], max: usize) -> Vec<Result<Frame, String>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut out = Vec::new();
            loop {
                match read_frame_from(&mut input, max).await {
                    Ok(f) => out.push(Ok(f)),
                    Err(FramingError::Finished) => break,
                    Err(e) => {
                        out.push(Err(e.to_string()));
                        break;
                    }
                }
            }
            out
        })
    }

    fn framed(frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            let body = encode(f);
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body);
        }
        out
    }

    #[test]
    fn frames_round_trip_and_a_clean_end_is_finished() {
        let frames = vec![
            Frame::Request {
                id: ChunkId::new(StreamId(1), 2),
            },
            Frame::Subscribe,
        ];
        let got = read_all(&framed(&frames), 1 << 16);
        assert_eq!(got, frames.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn oversized_truncated_and_garbage_frames_are_named_errors() {
        let too_big = read_all(&(1u32 << 20).to_be_bytes(), 1024);
        assert!(matches!(&too_big[..], [Err(e)] if e.contains("limit here is 1024")));
        let short = read_all(&[0, 0, 0, 10, 1, 2], 1024);
        assert!(matches!(&short[..], [Err(e)] if e.contains("2 of 10")));
        let half_len = read_all(&[0, 0], 1024);
        assert!(matches!(&half_len[..], [Err(e)] if e.contains("2 of 4")));
        let garbage = read_all(&[0, 0, 0, 3, 0xFF, 0xFF, 0xFF], 1024);
        assert!(matches!(&garbage[..], [Err(e)] if e.starts_with("malformed")));
    }

    /// A frame that arrives slowly but steadily is read whole, though it
    /// takes several times the stall limit; one whose sender goes silent
    /// fails with a timeout after about the stall limit.
    #[tokio::test]
    async fn a_slow_but_steady_reply_is_read_and_a_silent_one_times_out() {
        use tokio::io::AsyncWriteExt;
        let frame = Frame::NotFound {
            id: ChunkId::new(StreamId(9), 4),
        };
        let mut bytes = (encode(&frame).len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&encode(&frame));
        let stall = Duration::from_millis(200);

        let (mut tx, mut rx) = tokio::io::duplex(64);
        let steady = bytes.clone();
        let writer = tokio::spawn(async move {
            for b in steady {
                tx.write_all(&[b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            tx
        });
        let began = std::time::Instant::now();
        let got = read_frame_progressing(&mut rx, 1024, stall).await;
        assert!(matches!(got, Ok(Frame::NotFound { .. })), "{got:?}");
        assert!(
            began.elapsed() > stall * 2,
            "the test must outlast the stall limit"
        );
        drop(writer.await.unwrap());

        let (mut tx, mut rx) = tokio::io::duplex(64);
        tx.write_all(&bytes[..bytes.len() / 2]).await.unwrap();
        let began = std::time::Instant::now();
        let got = read_frame_progressing(&mut rx, 1024, stall).await;
        assert!(matches!(got, Err(FramingError::Timeout(_))), "{got:?}");
        assert!(began.elapsed() < stall * 10);
        drop(tx);
    }

    proptest! {
        /// The property the fuzz target `stream_read` checks, on every run.
        #[test]
        fn any_bytes_read_as_a_stream_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let _ = read_all(&bytes, 1 << 16);
        }
    }
}
