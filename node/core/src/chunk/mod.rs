//! Chunk identity and the signed chunk header.
//!
//! A chunk is the unit that is signed, stored and served. One Ed25519
//! signature covers the fixed-size header, and the header covers the payload
//! through its BLAKE3 digest, so verifying a chunk costs one hash pass and one
//! signature check, never one per packet. This module owns the ids, the
//! header's canonical encoding (what gets signed) and the wire format of every
//! frame nodes exchange ([`wire`]); signing and verification live in
//! `crypto`, storage in `store`.

pub mod wire;

use bytes::Bytes;
use std::fmt;

/// Version of the header encoding and of the wire format. Bumped on any
/// incompatible change; decoders refuse versions they do not know.
///
/// 2: stream ids name a kind (object or live) and, for objects, a version
/// ([`StreamId::object`], [`StreamId::live`]); manifests carry the version;
/// a manifest request names an object by [`StreamId::object_key`] and is
/// answered with its newest version. A v1 node derives different ids for
/// the same content, so the two must not mix: the bump makes each refuse
/// the other's frames instead of serving the wrong bytes.
pub const WIRE_VERSION: u8 = 2;

/// Largest payload a single chunk may carry. Decoders refuse larger declared
/// lengths before allocating anything.
pub const MAX_CHUNK_LEN: u32 = 4 * 1024 * 1024;

/// Domain separator prepended to the header before signing, so a signature
/// over a chunk header can never be replayed as a signature over anything
/// else the cluster key signs (manifests, for instance).
pub const CHUNK_SIGNING_CONTEXT: &[u8] = b"dcdn/chunk/v1\0";

/// The first eight bytes of the BLAKE3 hash of `bytes`: how every id here is
/// derived from what it names.
fn hash64(bytes: &[u8]) -> u64 {
    let hash = blake3::hash(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// Identifies a live stream or one version of an object. Derived from what
/// it names so every node computes the same id without coordination.
///
/// Objects and live streams hash under different domain prefixes, so a live
/// stream and an object of the same name never share an id; an object's
/// every version hashes to its own id, so chunks of two versions can never
/// stand in for each other in a store, a request or a body.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct StreamId(pub u64);

impl StreamId {
    /// The live stream called `name`. 64 bits keep the chunk id small; a
    /// collision needs ~2^32 names in one cluster.
    pub fn live(name: &str) -> Self {
        Self(hash64(&[b"dcdn/live\0", name.as_bytes()].concat()))
    }

    /// Version `version` of the object called `name`: the id its chunks and
    /// its manifest carry.
    pub fn object(name: &str, version: u64) -> Self {
        Self(hash64(
            &[
                b"dcdn/object\0".as_slice(),
                name.as_bytes(),
                b"\0",
                &version.to_be_bytes(),
            ]
            .concat(),
        ))
    }

    /// The object called `name` whatever its version: what a manifest
    /// request asks for (the answer is the newest version).
    pub fn object_key(name: &str) -> Self {
        Self(hash64(&[b"dcdn/object-name\0", name.as_bytes()].concat()))
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({:016x})", self.0)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A chunk's identity: which stream, which position in it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct ChunkId {
    pub stream: StreamId,
    pub seq: u64,
}

impl ChunkId {
    pub fn new(stream: StreamId, seq: u64) -> Self {
        Self { stream, seq }
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.stream, self.seq)
    }
}

/// Names a signing key: the first eight bytes of the BLAKE3 hash of its
/// Ed25519 public key, so the id cannot be chosen independently of the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct KeyId(pub u64);

impl KeyId {
    pub fn of_public_key(public_key: &[u8; 32]) -> Self {
        Self(hash64(public_key))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({:016x})", self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A node's identity in the mesh, derived from its certificate's public key
/// by the transport. Reputation, the choker and the swarm key on it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerId(pub u64);

impl PeerId {
    /// The id of the peer whose certificate's public key (DER) is `spki`.
    pub fn of_public_key(spki: &[u8]) -> Self {
        Self(hash64(spki))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({:016x})", self.0)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// BLAKE3 digest of a payload.
pub type Digest = [u8; 32];

/// Computes the digest a header must carry for `payload`.
pub fn digest(payload: &[u8]) -> Digest {
    *blake3::hash(payload).as_bytes()
}

/// The signed part of a chunk. Fixed size, so it encodes without a length
/// prefix and decodes without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChunkHeader {
    pub id: ChunkId,
    /// Payload length in bytes, at most [`MAX_CHUNK_LEN`].
    pub len: u32,
    /// BLAKE3 of the payload.
    pub digest: Digest,
    /// The key that signed this header.
    pub key_id: KeyId,
    /// When the origin signed it, milliseconds since the Unix epoch; drives
    /// the freshness window and TTL.
    pub timestamp_ms: u64,
}

impl ChunkHeader {
    /// Encoded size: version(1) stream(8) seq(8) len(4) digest(32) key(8) ts(8).
    pub const ENCODED_LEN: usize = 1 + 8 + 8 + 4 + 32 + 8 + 8;

    /// The canonical big-endian encoding; this is exactly what is signed
    /// (after [`CHUNK_SIGNING_CONTEXT`]) and what travels on the wire.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0] = WIRE_VERSION;
        out[1..9].copy_from_slice(&self.id.stream.0.to_be_bytes());
        out[9..17].copy_from_slice(&self.id.seq.to_be_bytes());
        out[17..21].copy_from_slice(&self.len.to_be_bytes());
        out[21..53].copy_from_slice(&self.digest);
        out[53..61].copy_from_slice(&self.key_id.0.to_be_bytes());
        out[61..69].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out
    }

    /// Decodes a header; refuses unknown versions and oversize lengths.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < Self::ENCODED_LEN {
            return Err(HeaderError::Truncated {
                needed: Self::ENCODED_LEN,
                got: bytes.len(),
            });
        }
        if bytes[0] != WIRE_VERSION {
            return Err(HeaderError::Version(bytes[0]));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[17..21]);
        let len = u32::from_be_bytes(len);
        if len > MAX_CHUNK_LEN {
            return Err(HeaderError::TooLong(len));
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&bytes[21..53]);
        Ok(Self {
            id: ChunkId::new(StreamId(u64_at(1)), u64_at(9)),
            len,
            digest,
            key_id: KeyId(u64_at(53)),
            timestamp_ms: u64_at(61),
        })
    }

    /// The bytes an Ed25519 signature over this header covers.
    pub fn signing_bytes(&self) -> [u8; CHUNK_SIGNING_CONTEXT.len() + Self::ENCODED_LEN] {
        let mut out = [0u8; CHUNK_SIGNING_CONTEXT.len() + Self::ENCODED_LEN];
        out[..CHUNK_SIGNING_CONTEXT.len()].copy_from_slice(CHUNK_SIGNING_CONTEXT);
        out[CHUNK_SIGNING_CONTEXT.len()..].copy_from_slice(&self.encode());
        out
    }
}

/// Why a header could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("chunk header truncated: needed {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },
    #[error("unsupported chunk header version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    #[error("chunk length {0} exceeds the maximum of {MAX_CHUNK_LEN} bytes")]
    TooLong(u32),
}

/// A signed chunk: header, signature and payload. Cheap to clone (the
/// payload is reference-counted), so the store, the forwarder and the HTTP
/// server share one copy.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Chunk {
    pub header: ChunkHeader,
    pub signature: [u8; 64],
    pub payload: Bytes,
}

impl Chunk {
    pub fn id(&self) -> ChunkId {
        self.header.id
    }

    /// Bytes this chunk occupies when stored: payload plus header and
    /// signature. The store's budget counts this.
    pub fn stored_len(&self) -> usize {
        self.payload.len() + ChunkHeader::ENCODED_LEN + 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ChunkHeader {
        ChunkHeader {
            id: ChunkId::new(StreamId::live("live/cam1"), 42),
            len: 5,
            digest: digest(b"hello"),
            key_id: KeyId::of_public_key(&[7u8; 32]),
            timestamp_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = header();
        assert_eq!(ChunkHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn header_refuses_unknown_version_and_oversize_length() {
        let mut bytes = header().encode();
        bytes[0] = 9;
        assert_eq!(ChunkHeader::decode(&bytes), Err(HeaderError::Version(9)));
        let mut h = header();
        h.len = MAX_CHUNK_LEN + 1;
        assert_eq!(
            ChunkHeader::decode(&h.encode()),
            Err(HeaderError::TooLong(MAX_CHUNK_LEN + 1))
        );
        assert!(matches!(
            ChunkHeader::decode(&bytes[..10]),
            Err(HeaderError::Truncated { .. })
        ));
    }

    #[test]
    fn signing_bytes_start_with_the_domain_separator() {
        let h = header();
        let s = h.signing_bytes();
        assert!(s.starts_with(CHUNK_SIGNING_CONTEXT));
        assert_eq!(&s[CHUNK_SIGNING_CONTEXT.len()..], &h.encode());
    }

    #[test]
    fn stream_ids_are_stable_and_distinct() {
        assert_eq!(StreamId::live("a"), StreamId::live("a"));
        assert_ne!(StreamId::live("a"), StreamId::live("b"));
        assert_eq!(StreamId::object("a", 1), StreamId::object("a", 1));
    }

    #[test]
    fn kinds_and_versions_never_share_an_id() {
        let ids = [
            StreamId::live("a"),
            StreamId::object_key("a"),
            StreamId::object("a", 1),
            StreamId::object("a", 2),
            // A name that ends where another's version begins.
            StreamId::object("a\0", 1),
        ];
        for (i, x) in ids.iter().enumerate() {
            for y in &ids[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }
}
