//! The versioned binary format of every frame nodes exchange.
//!
//! Every frame is `version(1) type(1) body`, big-endian fixed-width integers,
//! variable fields length-prefixed with explicit maximums. Decoding checks
//! each declared length against both its maximum and the bytes actually
//! present before allocating, so no input can make a node panic or allocate
//! more than a frame's bounded size. Trailing bytes are an error: a frame
//! means exactly one thing.

use super::{
    Chunk, ChunkHeader, ChunkId, Digest, HeaderError, KeyId, MAX_CHUNK_LEN, StreamId, WIRE_VERSION,
};
use bytes::{BufMut, Bytes, BytesMut};

/// Most shards (data + parity) one FEC group may have: Reed–Solomon over
/// GF(2^8) allows 256.
pub const MAX_SHARDS_PER_GROUP: u16 = 256;
/// Largest shard payload a frame may carry.
pub const MAX_SHARD_LEN: usize = 16 * 1024;
/// Longest object or node name.
pub const MAX_NAME_LEN: usize = 255;
/// Longest error message.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Most bytes in a bitfield (8192 sequence numbers).
pub const MAX_BITFIELD_BYTES: usize = 1024;
/// Most chunks one range request may ask for.
pub const MAX_RANGE_COUNT: u32 = 1024;
/// Domain separator for manifest signatures, distinct from the chunk one.
pub const MANIFEST_SIGNING_CONTEXT: &[u8] = b"dcdn/manifest/v1\0";
/// Domain separator for purge signatures.
pub const PURGE_SIGNING_CONTEXT: &[u8] = b"dcdn/purge/v1\0";
/// Domain separator for preheat signatures.
pub const PREHEAT_SIGNING_CONTEXT: &[u8] = b"dcdn/preheat/v1\0";
/// Domain separator for upload (open / aborted) signatures: an upload
/// frame's bytes can never verify as a manifest, a purge or a preheat.
pub const UPLOAD_SIGNING_CONTEXT: &[u8] = b"dcdn/upload/v1\0";

/// A node's role as announced on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireRole {
    Origin,
    Relay,
    Edge,
}

impl WireRole {
    fn to_u8(self) -> u8 {
        match self {
            Self::Origin => 0,
            Self::Relay => 1,
            Self::Edge => 2,
        }
    }

    fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            0 => Ok(Self::Origin),
            1 => Ok(Self::Relay),
            2 => Ok(Self::Edge),
            other => Err(WireError::BadValue {
                field: "role",
                value: u64::from(other),
            }),
        }
    }
}

/// One Reed–Solomon shard of a FEC group. A chunk's encoded bytes are split
/// into `blocks` blocks; each block is a group of `k` data and `m` parity
/// shards of equal length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardFrame {
    pub chunk: ChunkId,
    pub block: u16,
    pub blocks: u16,
    pub k: u16,
    pub m: u16,
    pub index: u16,
    /// Bytes of this block before padding.
    pub block_len: u32,
    pub data: Bytes,
}

/// The signed description of a static object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFrame {
    pub name: String,
    /// `StreamId::object(name, version)`: the id every chunk of this
    /// version carries.
    pub stream: StreamId,
    /// Which publish of `name` this is; a later publish has a higher one,
    /// and nodes serve the highest they verified.
    pub version: u64,
    /// The `Cache-Control` edges answer with, as the publisher gave it (or
    /// the origin's default); signed, so no node can change it.
    pub cache_control: String,
    pub object_len: u64,
    pub chunk_size: u32,
    pub chunk_count: u64,
    /// BLAKE3 of the whole object.
    pub digest: Digest,
    pub key_id: KeyId,
    pub timestamp_ms: u64,
    pub signature: [u8; 64],
}

impl ManifestFrame {
    /// The bytes the manifest signature covers: everything but the signature,
    /// after its own domain separator.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(MANIFEST_SIGNING_CONTEXT.len() + 128);
        out.put_slice(MANIFEST_SIGNING_CONTEXT);
        put_manifest_fields(&mut out, self);
        out.to_vec()
    }
}

/// The origin's signed order to forget every version of `name` up to and
/// including `up_to_version`. Nodes verify it like a chunk, drop those
/// versions' manifests, refuse them if offered again, and pass it on; a
/// later publish has a higher version and is unaffected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeFrame {
    pub name: String,
    pub up_to_version: u64,
    pub key_id: KeyId,
    pub timestamp_ms: u64,
    pub signature: [u8; 64],
}

impl PurgeFrame {
    /// The bytes the purge signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(PURGE_SIGNING_CONTEXT.len() + 300);
        out.put_slice(PURGE_SIGNING_CONTEXT);
        put_purge_fields(&mut out, self);
        out.to_vec()
    }
}

fn put_purge_fields(out: &mut BytesMut, p: &PurgeFrame) {
    put_short_str(out, &p.name);
    out.put_u64(p.up_to_version);
    out.put_u64(p.key_id.0);
    out.put_u64(p.timestamp_ms);
}

/// The origin's signed order to swarm one version of an object before any
/// client asks. Signed like a purge so that no peer — a relay included —
/// can make the mesh pull what the publisher did not ask to preheat: every
/// node verifies it before acting on it or passing it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreheatFrame {
    /// The object key (`StreamId::object_key(name)`).
    pub object: StreamId,
    pub version: u64,
    pub key_id: KeyId,
    pub timestamp_ms: u64,
    pub signature: [u8; 64],
}

impl PreheatFrame {
    /// The bytes the preheat signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(PREHEAT_SIGNING_CONTEXT.len() + 32);
        out.put_slice(PREHEAT_SIGNING_CONTEXT);
        put_preheat_fields(&mut out, self);
        out.to_vec()
    }
}

fn put_preheat_fields(out: &mut BytesMut, p: &PreheatFrame) {
    out.put_u64(p.object.0);
    out.put_u64(p.version);
    out.put_u64(p.key_id.0);
    out.put_u64(p.timestamp_ms);
}

/// Where an object upload stands, as its origin signed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    /// Chunks are being published; the final manifest will follow.
    Open,
    /// The upload ended without a manifest: this version never exists.
    Aborted,
}

/// The origin's signed word on an object version whose upload has not
/// ended in a manifest: *open* (its chunks, all of `chunk_size` but the
/// last, are fetchable as they are stored; length and digest come with the
/// final manifest of the same version) or *aborted*. Answered to a
/// `ManifestRequest` for a name that has no complete version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadFrame {
    pub name: String,
    /// `StreamId::object(name, version)`.
    pub stream: StreamId,
    pub version: u64,
    pub state: UploadState,
    pub cache_control: String,
    pub chunk_size: u32,
    pub key_id: KeyId,
    pub timestamp_ms: u64,
    pub signature: [u8; 64],
}

impl UploadFrame {
    /// The bytes the upload signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(UPLOAD_SIGNING_CONTEXT.len() + 600);
        out.put_slice(UPLOAD_SIGNING_CONTEXT);
        put_upload_fields(&mut out, self);
        out.to_vec()
    }
}

fn put_upload_fields(out: &mut BytesMut, u: &UploadFrame) {
    put_short_str(out, &u.name);
    out.put_u64(u.stream.0);
    out.put_u64(u.version);
    out.put_u8(match u.state {
        UploadState::Open => 0,
        UploadState::Aborted => 1,
    });
    put_short_str(out, &u.cache_control);
    out.put_u32(u.chunk_size);
    out.put_u64(u.key_id.0);
    out.put_u64(u.timestamp_ms);
}

/// Every frame of the mesh protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame on a connection's control stream, both ways.
    Hello {
        node_name: String,
        role: WireRole,
        keyset_generation: u64,
    },
    Chunk(Chunk),
    Shard(ShardFrame),
    Request {
        id: ChunkId,
    },
    RequestRange {
        stream: StreamId,
        from_seq: u64,
        count: u32,
    },
    Cancel {
        id: ChunkId,
    },
    Have {
        id: ChunkId,
    },
    /// Bit i (most significant first) says the sender has `base_seq + i`.
    Bitfield {
        stream: StreamId,
        base_seq: u64,
        bits: Bytes,
    },
    Choke,
    Unchoke,
    Interested {
        stream: StreamId,
    },
    NotInterested {
        stream: StreamId,
    },
    /// What a downstream node lost of the pushes it was sent, so the sender
    /// can adapt parity.
    LossReport {
        stream: StreamId,
        window_start: u64,
        expected_shards: u32,
        received_shards: u32,
        rebuilt: u32,
        failed: u32,
    },
    Manifest(ManifestFrame),
    /// Asks for the newest manifest of the object whose
    /// `StreamId::object_key` is `object`. `name` is that object's name
    /// when the asker knows it (empty otherwise): an origin pulling through
    /// from an upstream needs the name, which the key cannot give back.
    ManifestRequest {
        object: StreamId,
        name: String,
    },
    NotFound {
        id: ChunkId,
    },
    Error {
        code: u16,
        message: String,
    },
    /// Asks the receiver to push live chunks to the sender.
    Subscribe,
    /// A signed purge, flooded to every peer.
    Purge(PurgeFrame),
    /// From an upstream, signed by the origin: swarm this version of the
    /// object (the receiver checks it against a verified manifest) before
    /// any client asks for it.
    Preheat(PreheatFrame),
    /// An answer to a `ManifestRequest`: the name has no complete version,
    /// but an upload of one is open (or was aborted).
    Upload(UploadFrame),
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame is empty")]
    Empty,
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("frame truncated reading {field}")]
    Truncated { field: &'static str },
    #[error("{field} of {len} exceeds the maximum of {max}")]
    TooLong {
        field: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{0} trailing bytes after the frame")]
    Trailing(usize),
    #[error("{field} has invalid value {value}")]
    BadValue { field: &'static str, value: u64 },
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("chunk header: {0}")]
    Header(#[from] HeaderError),
}

impl WireError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Version(_) => "version",
            Self::UnknownType(_) => "unknown_type",
            Self::Truncated { .. } => "truncated",
            Self::TooLong { .. } => "too_long",
            Self::Trailing(_) => "trailing",
            Self::BadValue { .. } => "bad_value",
            Self::Utf8(_) => "utf8",
            Self::Header(_) => "header",
        }
    }
}

mod tag {
    pub(super) const HELLO: u8 = 1;
    pub(super) const CHUNK: u8 = 2;
    pub(super) const SHARD: u8 = 3;
    pub(super) const REQUEST: u8 = 4;
    pub(super) const REQUEST_RANGE: u8 = 5;
    pub(super) const CANCEL: u8 = 6;
    pub(super) const HAVE: u8 = 7;
    pub(super) const BITFIELD: u8 = 8;
    pub(super) const CHOKE: u8 = 9;
    pub(super) const UNCHOKE: u8 = 10;
    pub(super) const INTERESTED: u8 = 11;
    pub(super) const NOT_INTERESTED: u8 = 12;
    pub(super) const LOSS_REPORT: u8 = 13;
    pub(super) const MANIFEST: u8 = 14;
    pub(super) const MANIFEST_REQUEST: u8 = 15;
    pub(super) const NOT_FOUND: u8 = 16;
    pub(super) const ERROR: u8 = 17;
    pub(super) const SUBSCRIBE: u8 = 18;
    pub(super) const PURGE: u8 = 19;
    pub(super) const PREHEAT: u8 = 20;
    pub(super) const UPLOAD: u8 = 21;
}

fn put_id(out: &mut BytesMut, id: ChunkId) {
    out.put_u64(id.stream.0);
    out.put_u64(id.seq);
}

/// A shard frame's fields without its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHead {
    pub chunk: ChunkId,
    pub block: u16,
    pub blocks: u16,
    pub k: u16,
    pub m: u16,
    pub index: u16,
    pub block_len: u32,
}

impl ShardFrame {
    pub fn with_head(head: ShardHead, data: Bytes) -> Self {
        let ShardHead {
            chunk,
            block,
            blocks,
            k,
            m,
            index,
            block_len,
        } = head;
        Self {
            chunk,
            block,
            blocks,
            k,
            m,
            index,
            block_len,
            data,
        }
    }

    pub fn head(&self) -> ShardHead {
        ShardHead {
            chunk: self.chunk,
            block: self.block,
            blocks: self.blocks,
            k: self.k,
            m: self.m,
            index: self.index,
            block_len: self.block_len,
        }
    }
}

/// Bytes a shard frame adds to its data (version, tag, fields, length).
pub const SHARD_FRAME_HEAD_LEN: usize = 1 + 1 + 16 + 2 * 5 + 4 + 2;

/// One whole `Shard` frame from its fields and bytes, the bytes copied
/// once: what the push path sends as a datagram for each shard of a
/// `fec::Block`, with no `ShardFrame` (and no buffer handle) made per
/// shard. The same bytes as `Frame::Shard(..).encode`.
pub fn encode_shard(out: &mut BytesMut, head: &ShardHead, data: &[u8]) {
    out.put_u8(WIRE_VERSION);
    put_shard(out, head, data);
}

fn put_shard(out: &mut BytesMut, head: &ShardHead, data: &[u8]) {
    let data = &data[..data.len().min(MAX_SHARD_LEN)];
    out.reserve(SHARD_FRAME_HEAD_LEN + data.len());
    out.put_u8(tag::SHARD);
    put_id(out, head.chunk);
    out.put_u16(head.block);
    out.put_u16(head.blocks);
    out.put_u16(head.k);
    out.put_u16(head.m);
    out.put_u16(head.index);
    out.put_u32(head.block_len);
    out.put_u16(data.len() as u16);
    out.put_slice(data);
}

fn put_short_str(out: &mut BytesMut, s: &str) {
    // Callers bound names at construction; a longer one is cut rather than
    // producing a frame the peer must refuse.
    let bytes = &s.as_bytes()[..s.len().min(MAX_NAME_LEN)];
    out.put_u8(bytes.len() as u8);
    out.put_slice(bytes);
}

fn put_manifest_fields(out: &mut BytesMut, m: &ManifestFrame) {
    put_short_str(out, &m.name);
    out.put_u64(m.stream.0);
    out.put_u64(m.version);
    put_short_str(out, &m.cache_control);
    out.put_u64(m.object_len);
    out.put_u32(m.chunk_size);
    out.put_u64(m.chunk_count);
    out.put_slice(&m.digest);
    out.put_u64(m.key_id.0);
    out.put_u64(m.timestamp_ms);
}

impl Frame {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Chunk(_) => "chunk",
            Self::Shard(_) => "shard",
            Self::Request { .. } => "request",
            Self::RequestRange { .. } => "request_range",
            Self::Cancel { .. } => "cancel",
            Self::Have { .. } => "have",
            Self::Bitfield { .. } => "bitfield",
            Self::Choke => "choke",
            Self::Unchoke => "unchoke",
            Self::Interested { .. } => "interested",
            Self::NotInterested { .. } => "not_interested",
            Self::LossReport { .. } => "loss_report",
            Self::Manifest(_) => "manifest",
            Self::ManifestRequest { .. } => "manifest_request",
            Self::NotFound { .. } => "not_found",
            Self::Error { .. } => "error",
            Self::Subscribe => "subscribe",
            Self::Purge(_) => "purge",
            Self::Preheat(_) => "preheat",
            Self::Upload(_) => "upload",
        }
    }

    /// Appends the frame's encoding to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(WIRE_VERSION);
        match self {
            Self::Hello {
                node_name,
                role,
                keyset_generation,
            } => {
                out.put_u8(tag::HELLO);
                put_short_str(out, node_name);
                out.put_u8(role.to_u8());
                out.put_u64(*keyset_generation);
            }
            Self::Chunk(c) => {
                out.reserve(ChunkHeader::ENCODED_LEN + 64 + c.payload.len() + 1);
                out.put_u8(tag::CHUNK);
                out.put_slice(&c.header.encode());
                out.put_slice(&c.signature);
                out.put_slice(&c.payload);
            }
            Self::Shard(s) => put_shard(out, &s.head(), &s.data),
            Self::Request { id } => {
                out.put_u8(tag::REQUEST);
                put_id(out, *id);
            }
            Self::RequestRange {
                stream,
                from_seq,
                count,
            } => {
                out.put_u8(tag::REQUEST_RANGE);
                out.put_u64(stream.0);
                out.put_u64(*from_seq);
                out.put_u32(*count);
            }
            Self::Cancel { id } => {
                out.put_u8(tag::CANCEL);
                put_id(out, *id);
            }
            Self::Have { id } => {
                out.put_u8(tag::HAVE);
                put_id(out, *id);
            }
            Self::Bitfield {
                stream,
                base_seq,
                bits,
            } => {
                let n = bits.len().min(MAX_BITFIELD_BYTES);
                out.put_u8(tag::BITFIELD);
                out.put_u64(stream.0);
                out.put_u64(*base_seq);
                out.put_u16(n as u16);
                out.put_slice(&bits[..n]);
            }
            Self::Choke => out.put_u8(tag::CHOKE),
            Self::Unchoke => out.put_u8(tag::UNCHOKE),
            Self::Subscribe => out.put_u8(tag::SUBSCRIBE),
            Self::Preheat(p) => {
                out.put_u8(tag::PREHEAT);
                put_preheat_fields(out, p);
                out.put_slice(&p.signature);
            }
            Self::Upload(u) => {
                out.put_u8(tag::UPLOAD);
                put_upload_fields(out, u);
                out.put_slice(&u.signature);
            }
            Self::Purge(p) => {
                out.put_u8(tag::PURGE);
                put_purge_fields(out, p);
                out.put_slice(&p.signature);
            }
            Self::Interested { stream } => {
                out.put_u8(tag::INTERESTED);
                out.put_u64(stream.0);
            }
            Self::NotInterested { stream } => {
                out.put_u8(tag::NOT_INTERESTED);
                out.put_u64(stream.0);
            }
            Self::LossReport {
                stream,
                window_start,
                expected_shards,
                received_shards,
                rebuilt,
                failed,
            } => {
                out.put_u8(tag::LOSS_REPORT);
                out.put_u64(stream.0);
                out.put_u64(*window_start);
                out.put_u32(*expected_shards);
                out.put_u32(*received_shards);
                out.put_u32(*rebuilt);
                out.put_u32(*failed);
            }
            Self::Manifest(m) => {
                out.put_u8(tag::MANIFEST);
                put_manifest_fields(out, m);
                out.put_slice(&m.signature);
            }
            Self::ManifestRequest { object, name } => {
                out.put_u8(tag::MANIFEST_REQUEST);
                out.put_u64(object.0);
                put_short_str(out, name);
            }
            Self::NotFound { id } => {
                out.put_u8(tag::NOT_FOUND);
                put_id(out, *id);
            }
            Self::Error { code, message } => {
                let mut end = message.len().min(MAX_MESSAGE_LEN);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                out.put_u8(tag::ERROR);
                out.put_u16(*code);
                out.put_u16(end as u16);
                out.put_slice(&message.as_bytes()[..end]);
            }
        }
    }

    /// The encoding as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// Decodes exactly one frame from `input`. Payloads are copied once into
    /// a buffer of the declared (bounded) size.
    pub fn decode(input: &[u8]) -> Result<Frame, WireError> {
        Self::decode_bytes(&Bytes::copy_from_slice(input))
    }

    /// Decodes exactly one frame, sharing `input`'s buffer for payloads.
    pub fn decode_bytes(input: &Bytes) -> Result<Frame, WireError> {
        let mut r = Reader { buf: input, pos: 0 };
        let version = r.u8("version").map_err(|_| WireError::Empty)?;
        if version != WIRE_VERSION {
            return Err(WireError::Version(version));
        }
        let frame = match r.u8("type")? {
            tag::HELLO => {
                let node_name = r.short_str("node_name")?;
                let role = WireRole::from_u8(r.u8("role")?)?;
                Frame::Hello {
                    node_name,
                    role,
                    keyset_generation: r.u64("keyset_generation")?,
                }
            }
            tag::CHUNK => {
                let header = ChunkHeader::decode(r.peek_rest())?;
                r.skip(ChunkHeader::ENCODED_LEN, "chunk header")?;
                let mut signature = [0u8; 64];
                signature.copy_from_slice(r.take(64, "signature")?);
                let payload = r.take_bytes(header.len as usize, "payload")?;
                Frame::Chunk(Chunk {
                    header,
                    signature,
                    payload,
                })
            }
            tag::SHARD => {
                let chunk = r.id()?;
                let block = r.u16("block")?;
                let blocks = r.u16("blocks")?;
                let k = r.u16("k")?;
                let m = r.u16("m")?;
                let index = r.u16("index")?;
                let block_len = r.u32("block_len")?;
                let data_len = r.u16("shard length")? as usize;
                if blocks == 0 || block >= blocks {
                    return Err(WireError::BadValue {
                        field: "block",
                        value: u64::from(block),
                    });
                }
                if k == 0 {
                    return Err(WireError::BadValue {
                        field: "k",
                        value: 0,
                    });
                }
                let total = u32::from(k) + u32::from(m);
                if total > u32::from(MAX_SHARDS_PER_GROUP) {
                    return Err(WireError::TooLong {
                        field: "k + m",
                        len: u64::from(total),
                        max: u64::from(MAX_SHARDS_PER_GROUP),
                    });
                }
                if u32::from(index) >= total {
                    return Err(WireError::BadValue {
                        field: "index",
                        value: u64::from(index),
                    });
                }
                check_max("shard length", data_len as u64, MAX_SHARD_LEN as u64)?;
                if u64::from(block_len) > u64::from(k) * data_len as u64 {
                    return Err(WireError::BadValue {
                        field: "block_len",
                        value: u64::from(block_len),
                    });
                }
                Frame::Shard(ShardFrame {
                    chunk,
                    block,
                    blocks,
                    k,
                    m,
                    index,
                    block_len,
                    data: r.take_bytes(data_len, "shard data")?,
                })
            }
            tag::REQUEST => Frame::Request { id: r.id()? },
            tag::REQUEST_RANGE => {
                let stream = StreamId(r.u64("stream")?);
                let from_seq = r.u64("from_seq")?;
                let count = r.u32("count")?;
                check_max("count", u64::from(count), u64::from(MAX_RANGE_COUNT))?;
                Frame::RequestRange {
                    stream,
                    from_seq,
                    count,
                }
            }
            tag::CANCEL => Frame::Cancel { id: r.id()? },
            tag::HAVE => Frame::Have { id: r.id()? },
            tag::BITFIELD => {
                let stream = StreamId(r.u64("stream")?);
                let base_seq = r.u64("base_seq")?;
                let n = r.u16("bitfield length")? as usize;
                check_max("bitfield length", n as u64, MAX_BITFIELD_BYTES as u64)?;
                Frame::Bitfield {
                    stream,
                    base_seq,
                    bits: r.take_bytes(n, "bitfield")?,
                }
            }
            tag::CHOKE => Frame::Choke,
            tag::UNCHOKE => Frame::Unchoke,
            tag::SUBSCRIBE => Frame::Subscribe,
            tag::PURGE => {
                let name = r.short_str("name")?;
                let up_to_version = r.u64("up_to_version")?;
                let key_id = KeyId(r.u64("key_id")?);
                let timestamp_ms = r.u64("timestamp_ms")?;
                let mut signature = [0u8; 64];
                signature.copy_from_slice(r.take(64, "signature")?);
                Frame::Purge(PurgeFrame {
                    name,
                    up_to_version,
                    key_id,
                    timestamp_ms,
                    signature,
                })
            }
            tag::PREHEAT => {
                let object = StreamId(r.u64("object")?);
                let version = r.u64("version")?;
                let key_id = KeyId(r.u64("key_id")?);
                let timestamp_ms = r.u64("timestamp_ms")?;
                let mut signature = [0u8; 64];
                signature.copy_from_slice(r.take(64, "signature")?);
                Frame::Preheat(PreheatFrame {
                    object,
                    version,
                    key_id,
                    timestamp_ms,
                    signature,
                })
            }
            tag::UPLOAD => {
                let name = r.short_str("name")?;
                let stream = StreamId(r.u64("stream")?);
                let version = r.u64("version")?;
                let state = match r.u8("state")? {
                    0 => UploadState::Open,
                    1 => UploadState::Aborted,
                    other => {
                        return Err(WireError::BadValue {
                            field: "state",
                            value: u64::from(other),
                        });
                    }
                };
                let cache_control = r.short_str("cache_control")?;
                let chunk_size = r.u32("chunk_size")?;
                if chunk_size == 0 || chunk_size > MAX_CHUNK_LEN {
                    return Err(WireError::BadValue {
                        field: "chunk_size",
                        value: u64::from(chunk_size),
                    });
                }
                let key_id = KeyId(r.u64("key_id")?);
                let timestamp_ms = r.u64("timestamp_ms")?;
                let mut signature = [0u8; 64];
                signature.copy_from_slice(r.take(64, "signature")?);
                Frame::Upload(UploadFrame {
                    name,
                    stream,
                    version,
                    state,
                    cache_control,
                    chunk_size,
                    key_id,
                    timestamp_ms,
                    signature,
                })
            }
            tag::INTERESTED => Frame::Interested {
                stream: StreamId(r.u64("stream")?),
            },
            tag::NOT_INTERESTED => Frame::NotInterested {
                stream: StreamId(r.u64("stream")?),
            },
            tag::LOSS_REPORT => Frame::LossReport {
                stream: StreamId(r.u64("stream")?),
                window_start: r.u64("window_start")?,
                expected_shards: r.u32("expected_shards")?,
                received_shards: r.u32("received_shards")?,
                rebuilt: r.u32("rebuilt")?,
                failed: r.u32("failed")?,
            },
            tag::MANIFEST => {
                let name = r.short_str("name")?;
                let stream = StreamId(r.u64("stream")?);
                let version = r.u64("version")?;
                let cache_control = r.short_str("cache_control")?;
                let object_len = r.u64("object_len")?;
                let chunk_size = r.u32("chunk_size")?;
                let chunk_count = r.u64("chunk_count")?;
                let mut digest = [0u8; 32];
                digest.copy_from_slice(r.take(32, "digest")?);
                let key_id = KeyId(r.u64("key_id")?);
                let timestamp_ms = r.u64("timestamp_ms")?;
                let mut signature = [0u8; 64];
                signature.copy_from_slice(r.take(64, "signature")?);
                check_max(
                    "chunk_size",
                    u64::from(chunk_size),
                    u64::from(MAX_CHUNK_LEN),
                )?;
                let expected = if object_len == 0 {
                    0
                } else if chunk_size == 0 {
                    return Err(WireError::BadValue {
                        field: "chunk_size",
                        value: 0,
                    });
                } else {
                    object_len.div_ceil(u64::from(chunk_size))
                };
                if chunk_count != expected {
                    return Err(WireError::BadValue {
                        field: "chunk_count",
                        value: chunk_count,
                    });
                }
                Frame::Manifest(ManifestFrame {
                    name,
                    stream,
                    version,
                    cache_control,
                    object_len,
                    chunk_size,
                    chunk_count,
                    digest,
                    key_id,
                    timestamp_ms,
                    signature,
                })
            }
            tag::MANIFEST_REQUEST => {
                let object = StreamId(r.u64("object")?);
                let name = r.short_str("name")?;
                // A name that is not the key's would make an origin pull
                // one object and file it under another's key.
                if !name.is_empty() && StreamId::object_key(&name) != object {
                    return Err(WireError::BadValue {
                        field: "name",
                        value: object.0,
                    });
                }
                Frame::ManifestRequest { object, name }
            }
            tag::NOT_FOUND => Frame::NotFound { id: r.id()? },
            tag::ERROR => {
                let code = r.u16("code")?;
                let n = r.u16("message length")? as usize;
                check_max("message length", n as u64, MAX_MESSAGE_LEN as u64)?;
                let message = std::str::from_utf8(r.take(n, "message")?)
                    .map_err(|_| WireError::Utf8("message"))?
                    .to_owned();
                Frame::Error { code, message }
            }
            other => return Err(WireError::UnknownType(other)),
        };
        match r.buf.len() - r.pos {
            0 => Ok(frame),
            n => Err(WireError::Trailing(n)),
        }
    }
}

fn check_max(field: &'static str, len: u64, max: u64) -> Result<(), WireError> {
    if len > max {
        Err(WireError::TooLong { field, len, max })
    } else {
        Ok(())
    }
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError::Truncated { field })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn take_bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, WireError> {
        let start = self.pos;
        self.take(n, field)?;
        Ok(self.buf.slice(start..start + n))
    }

    fn skip(&mut self, n: usize, field: &'static str) -> Result<(), WireError> {
        self.take(n, field).map(|_| ())
    }

    fn peek_rest(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn id(&mut self) -> Result<ChunkId, WireError> {
        Ok(ChunkId::new(
            StreamId(self.u64("stream")?),
            self.u64("seq")?,
        ))
    }

    fn short_str(&mut self, field: &'static str) -> Result<String, WireError> {
        let n = self.u8(field)? as usize;
        let bytes = self.take(n, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::Utf8(field))
    }
}

/// Appends `frame` with a u32 length prefix to `out`, except a chunk's
/// payload, which is returned to be sent after `out` as the buffer it
/// already is: copying a 256 KiB payload into a frame buffer, and the
/// stream then copying that buffer again, was two copies of every chunk on
/// every hop. `out` followed by the returned bytes is exactly what
/// [`encode_framed`] writes.
pub fn encode_framed_split(frame: &Frame, out: &mut BytesMut) -> Option<Bytes> {
    let Frame::Chunk(c) = frame else {
        encode_framed(frame, out);
        return None;
    };
    let len = 2 + ChunkHeader::ENCODED_LEN + 64 + c.payload.len();
    out.reserve(4 + len - c.payload.len());
    out.put_u32(len as u32);
    out.put_u8(WIRE_VERSION);
    out.put_u8(tag::CHUNK);
    out.put_slice(&c.header.encode());
    out.put_slice(&c.signature);
    Some(c.payload.clone())
}

/// Appends `frame` with a u32 length prefix, for QUIC streams.
pub fn encode_framed(frame: &Frame, out: &mut BytesMut) {
    let at = out.len();
    out.put_u32(0);
    frame.encode(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Outcome of looking for one length-prefixed frame in a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// A frame, and how many bytes of the buffer it used.
    Frame(Frame, usize),
    /// Not enough bytes yet; at least this many more are needed.
    NeedMore(usize),
}

/// Decodes one length-prefixed frame from the front of `buf`, refusing a
/// declared length over `max` before waiting for (or allocating) its body.
pub fn decode_framed(buf: &[u8], max: usize) -> Result<Framed, WireError> {
    if buf.len() < 4 {
        return Ok(Framed::NeedMore(4 - buf.len()));
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    check_max("frame length", len as u64, max as u64)?;
    if buf.len() - 4 < len {
        return Ok(Framed::NeedMore(len - (buf.len() - 4)));
    }
    let frame = Frame::decode(&buf[4..4 + len])?;
    Ok(Framed::Frame(frame, 4 + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::digest;
    use proptest::prelude::*;

    fn any_id() -> impl Strategy<Value = ChunkId> {
        (any::<u64>(), any::<u64>()).prop_map(|(s, q)| ChunkId::new(StreamId(s), q))
    }

    fn any_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9/._-]{0,60}"
    }

    fn any_chunk() -> impl Strategy<Value = Chunk> {
        (
            any_id(),
            proptest::collection::vec(any::<u8>(), 0..2048),
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 32]>(),
        )
            .prop_map(|(id, payload, key, ts, sig_half)| {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(&sig_half);
                Chunk {
                    header: ChunkHeader {
                        id,
                        len: payload.len() as u32,
                        digest: digest(&payload),
                        key_id: KeyId(key),
                        timestamp_ms: ts,
                    },
                    signature,
                    payload: Bytes::from(payload),
                }
            })
    }

    fn any_shard() -> impl Strategy<Value = ShardFrame> {
        (any_id(), 1u16..64, 1u16..200, 0u16..56, 0usize..1500).prop_flat_map(
            |(chunk, blocks, k, m, len)| {
                (
                    0..blocks,
                    0..(k + m),
                    0..=(u32::from(k) * len as u32),
                    proptest::collection::vec(any::<u8>(), len..=len),
                )
                    .prop_map(move |(block, index, block_len, data)| ShardFrame {
                        chunk,
                        block,
                        blocks,
                        k,
                        m,
                        index,
                        block_len,
                        data: Bytes::from(data),
                    })
            },
        )
    }

    fn any_manifest() -> impl Strategy<Value = ManifestFrame> {
        (
            any_name(),
            any::<u64>(),
            0u64..(1 << 40),
            1u32..=MAX_CHUNK_LEN,
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(name, stream, len, chunk_size, digest, key, ts)| ManifestFrame {
                    name,
                    stream: StreamId(stream),
                    version: ts ^ stream,
                    cache_control: "public, max-age=60".into(),
                    object_len: len,
                    chunk_size,
                    chunk_count: len.div_ceil(u64::from(chunk_size)),
                    digest,
                    key_id: KeyId(key),
                    timestamp_ms: ts,
                    signature: [7u8; 64],
                },
            )
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        let role = prop_oneof![
            Just(WireRole::Origin),
            Just(WireRole::Relay),
            Just(WireRole::Edge)
        ];
        prop_oneof![
            (any_name(), role, any::<u64>()).prop_map(|(node_name, role, g)| Frame::Hello {
                node_name,
                role,
                keyset_generation: g
            }),
            any_chunk().prop_map(Frame::Chunk),
            any_shard().prop_map(Frame::Shard),
            any_id().prop_map(|id| Frame::Request { id }),
            (any::<u64>(), any::<u64>(), 0..=MAX_RANGE_COUNT).prop_map(|(s, f, c)| {
                Frame::RequestRange {
                    stream: StreamId(s),
                    from_seq: f,
                    count: c,
                }
            }),
            any_id().prop_map(|id| Frame::Cancel { id }),
            any_id().prop_map(|id| Frame::Have { id }),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..=MAX_BITFIELD_BYTES)
            )
                .prop_map(|(s, b, bits)| Frame::Bitfield {
                    stream: StreamId(s),
                    base_seq: b,
                    bits: Bytes::from(bits)
                }),
            Just(Frame::Choke),
            Just(Frame::Unchoke),
            Just(Frame::Subscribe),
            (any_name(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(name, v, k, ts)| {
                Frame::Purge(PurgeFrame {
                    name,
                    up_to_version: v,
                    key_id: KeyId(k),
                    timestamp_ms: ts,
                    signature: [9u8; 64],
                })
            }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(s, v, k, ts)| {
                Frame::Preheat(PreheatFrame {
                    object: StreamId(s),
                    version: v,
                    key_id: KeyId(k),
                    timestamp_ms: ts,
                    signature: [7u8; 64],
                })
            }),
            (
                any_name(),
                any::<u64>(),
                any::<bool>(),
                1u32..=MAX_CHUNK_LEN,
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(name, v, open, chunk_size, k, ts)| {
                    Frame::Upload(UploadFrame {
                        stream: StreamId(v ^ ts),
                        name,
                        version: v,
                        state: if open {
                            UploadState::Open
                        } else {
                            UploadState::Aborted
                        },
                        cache_control: "no-cache".into(),
                        chunk_size,
                        key_id: KeyId(k),
                        timestamp_ms: ts,
                        signature: [5u8; 64],
                    })
                }),
            any::<u64>().prop_map(|s| Frame::Interested {
                stream: StreamId(s)
            }),
            any::<u64>().prop_map(|s| Frame::NotInterested {
                stream: StreamId(s)
            }),
            (any::<u64>(), any::<u64>(), any::<[u32; 4]>()).prop_map(|(s, w, n)| {
                Frame::LossReport {
                    stream: StreamId(s),
                    window_start: w,
                    expected_shards: n[0],
                    received_shards: n[1],
                    rebuilt: n[2],
                    failed: n[3],
                }
            }),
            any_manifest().prop_map(Frame::Manifest),
            any::<u64>().prop_map(|s| Frame::ManifestRequest {
                object: StreamId(s),
                name: String::new(),
            }),
            "[a-z0-9/._-]{1,40}".prop_map(|name| Frame::ManifestRequest {
                object: StreamId::object_key(&name),
                name,
            }),
            any_id().prop_map(|id| Frame::NotFound { id }),
            (any::<u16>(), "\\PC{0,100}")
                .prop_map(|(code, message)| Frame::Error { code, message }),
        ]
    }

    #[test]
    fn a_manifest_request_whose_name_is_not_its_key_is_refused() {
        let frame = Frame::ManifestRequest {
            object: StreamId::object_key("a"),
            name: "b".into(),
        };
        let bytes = frame.to_bytes();
        assert!(matches!(
            Frame::decode(&bytes),
            Err(WireError::BadValue { field: "name", .. })
        ));
    }

    proptest! {
        #[test]
        fn every_frame_round_trips(frame in any_frame()) {
            let bytes = frame.to_bytes();
            prop_assert_eq!(Frame::decode(&bytes), Ok(frame.clone()));
            let mut framed = BytesMut::new();
            encode_framed(&frame, &mut framed);
            prop_assert_eq!(
                decode_framed(&framed, 1 << 24),
                Ok(Framed::Frame(frame.clone(), framed.len()))
            );
            let mut split = BytesMut::new();
            if let Some(rest) = encode_framed_split(&frame, &mut split) {
                split.extend_from_slice(&rest);
            }
            prop_assert_eq!(split, framed);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = Frame::decode(&bytes);
            let _ = decode_framed(&bytes, 1 << 16);
        }

        #[test]
        fn decoding_a_mutated_frame_never_panics(
            frame in any_frame(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = frame.to_bytes().to_vec();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let _ = Frame::decode(&bytes);
            bytes.truncate(i);
            let _ = Frame::decode(&bytes);
        }
    }

    #[test]
    fn refuses_unknown_version_type_and_trailing_bytes() {
        let mut b = Frame::Choke.to_bytes().to_vec();
        assert_eq!(Frame::decode(&[]), Err(WireError::Empty));
        b[0] = 99;
        assert_eq!(Frame::decode(&b), Err(WireError::Version(99)));
        assert_eq!(
            Frame::decode(&[WIRE_VERSION, 200]),
            Err(WireError::UnknownType(200))
        );
        let mut b = Frame::Choke.to_bytes().to_vec();
        b.push(0);
        assert_eq!(Frame::decode(&b), Err(WireError::Trailing(1)));
    }

    #[test]
    fn refuses_truncated_frames() {
        let b = Frame::Have {
            id: ChunkId::default(),
        }
        .to_bytes();
        assert!(matches!(
            Frame::decode(&b[..b.len() - 1]),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn refuses_oversize_declared_lengths_before_reading_them() {
        // A stream frame that declares 1 GiB is refused with 4 bytes in hand.
        let declared = (1u32 << 30).to_be_bytes();
        assert!(matches!(
            decode_framed(&declared, 1 << 20),
            Err(WireError::TooLong { .. })
        ));
        // A chunk header declaring more than MAX_CHUNK_LEN.
        let mut b = vec![WIRE_VERSION, tag::CHUNK];
        let mut h = ChunkHeader {
            id: ChunkId::default(),
            len: 0,
            digest: [0; 32],
            key_id: KeyId(0),
            timestamp_ms: 0,
        };
        h.len = MAX_CHUNK_LEN + 1;
        b.extend_from_slice(&h.encode());
        assert!(matches!(
            Frame::decode(&b),
            Err(WireError::Header(HeaderError::TooLong(_)))
        ));
        // A bitfield declaring more than its maximum.
        let mut b = vec![WIRE_VERSION, tag::BITFIELD];
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&(MAX_BITFIELD_BYTES as u16 + 1).to_be_bytes());
        assert!(matches!(Frame::decode(&b), Err(WireError::TooLong { .. })));
    }

    #[test]
    fn refuses_inconsistent_shards() {
        let good = ShardFrame {
            chunk: ChunkId::default(),
            block: 0,
            blocks: 1,
            k: 4,
            m: 2,
            index: 0,
            block_len: 10,
            data: Bytes::from_static(&[1, 2, 3, 4]),
        };
        let bad = |f: &dyn Fn(&mut ShardFrame)| {
            let mut s = good.clone();
            f(&mut s);
            Frame::decode(&Frame::Shard(s).to_bytes())
        };
        assert!(bad(&|_| {}).is_ok());
        assert!(matches!(
            bad(&|s| s.index = 6),
            Err(WireError::BadValue { field: "index", .. })
        ));
        assert!(matches!(
            bad(&|s| {
                s.k = 200;
                s.m = 100;
            }),
            Err(WireError::TooLong { .. })
        ));
        assert!(matches!(
            bad(&|s| s.block = 1),
            Err(WireError::BadValue { field: "block", .. })
        ));
        assert!(matches!(
            bad(&|s| s.k = 0),
            Err(WireError::BadValue { field: "k", .. })
        ));
        assert!(matches!(
            bad(&|s| s.block_len = 17),
            Err(WireError::BadValue {
                field: "block_len",
                ..
            })
        ));
    }

    #[test]
    fn refuses_manifests_whose_counts_disagree() {
        let m = ManifestFrame {
            name: "a".into(),
            stream: StreamId(1),
            version: 3,
            cache_control: String::new(),
            object_len: 10,
            chunk_size: 4,
            chunk_count: 2,
            digest: [0; 32],
            key_id: KeyId(1),
            timestamp_ms: 0,
            signature: [0; 64],
        };
        assert!(matches!(
            Frame::decode(&Frame::Manifest(m.clone()).to_bytes()),
            Err(WireError::BadValue {
                field: "chunk_count",
                ..
            })
        ));
        let ok = ManifestFrame {
            chunk_count: 3,
            ..m
        };
        assert!(Frame::decode(&Frame::Manifest(ok.clone()).to_bytes()).is_ok());
        assert!(ok.signing_bytes().starts_with(MANIFEST_SIGNING_CONTEXT));
    }

    #[test]
    fn upload_signatures_have_their_own_domain() {
        let u = UploadFrame {
            name: "a".into(),
            stream: StreamId(1),
            version: 3,
            state: UploadState::Open,
            cache_control: String::new(),
            chunk_size: 4,
            key_id: KeyId(1),
            timestamp_ms: 0,
            signature: [0; 64],
        };
        let bytes = u.signing_bytes();
        assert!(bytes.starts_with(UPLOAD_SIGNING_CONTEXT));
        for other in [
            MANIFEST_SIGNING_CONTEXT,
            PURGE_SIGNING_CONTEXT,
            PREHEAT_SIGNING_CONTEXT,
        ] {
            assert!(!bytes.starts_with(other));
        }
        let aborted = UploadFrame {
            state: UploadState::Aborted,
            ..u.clone()
        };
        assert_ne!(aborted.signing_bytes(), bytes, "the state is signed");
        let mut bad = Frame::Upload(UploadFrame { chunk_size: 0, ..u })
            .to_bytes()
            .to_vec();
        assert!(Frame::decode(&bad).is_err(), "a zero chunk size is refused");
        bad.truncate(3);
        assert!(Frame::decode(&bad).is_err());
    }

    #[test]
    fn framed_decoding_asks_for_more_on_partial_input() {
        let mut buf = BytesMut::new();
        encode_framed(&Frame::Unchoke, &mut buf);
        assert_eq!(decode_framed(&buf[..2], 100), Ok(Framed::NeedMore(2)));
        assert_eq!(decode_framed(&buf[..4], 100), Ok(Framed::NeedMore(2)));
    }
}
