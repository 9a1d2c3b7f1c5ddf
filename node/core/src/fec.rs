//! Reed–Solomon forward error correction for the push path.
//!
//! A chunk's encoded bytes are cut into blocks; each block becomes `k` data
//! shards plus `m` parity shards of equal length, one datagram each, and any
//! `k` of them rebuild the block. [`Encoder`] makes shards, [`Assembler`]
//! collects them under a memory cap and an age limit (the way IP reassembly
//! is bounded) and hands back whole chunks, and [`ParityPolicy`] picks `m`
//! for a link from the loss its receiver reports. Nothing here does I/O or
//! reads the clock.
//!
//! **Which Reed–Solomon crate.** Measured here with `dcdn bench fec` (k=16,
//! m=4, 1200-byte shards, 4 data shards lost in a different pattern each
//! time): `reed-solomon-erasure` 6 with `simd-accel` encodes ~7.8 GB/s and
//! rebuilds ~4.5 GB/s once its decode matrices are cached, while
//! `reed-solomon-simd` 3 (Leopard-style FFT codes over GF(2^16)) encodes
//! ~8.4 GB/s but rebuilds only ~90 MB/s at this small k even with a reused
//! decoder — its decoder's fixed cost dwarfs 19 KB of data. The two codes are
//! not interchangeable, so one crate must serve both directions:
//! `reed-solomon-erasure`. We use its code (parity rows read back from it)
//! and its SIMD kernels but keep the decode rows ourselves, per (k, m) and
//! erasure pattern, in a cache bounded by bytes: the crate's own holds 254
//! patterns, and random loss over k=16, m=4 has 1,820. Full blocks are
//! encoded straight from the chunk's buffer without a copy. GF(2^8) limits
//! a group to 256 shards, which the wire format and the config enforce.

use crate::chunk::ChunkId;
use crate::chunk::wire::{
    MAX_SHARD_LEN, MAX_SHARDS_PER_GROUP, SHARD_FRAME_HEAD_LEN, ShardFrame, ShardHead, encode_shard,
};
use bytes::{Bytes, BytesMut};
use reed_solomon_erasure::galois_8::{self, ReedSolomon};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// One shard; the same fields as its wire frame.
pub type Shard = ShardFrame;

/// Why encoding or assembly failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FecError {
    #[error("invalid FEC parameters k={k} m={m} shard_len={shard_len}: {why}")]
    Params {
        k: u16,
        m: u16,
        shard_len: usize,
        why: &'static str,
    },
    #[error("shard for {chunk} block {block} disagrees with its group on {field}")]
    Mismatch {
        chunk: ChunkId,
        block: u16,
        field: &'static str,
    },
    #[error("reed-solomon: {0}")]
    Codec(String),
}

/// One Reed–Solomon code (k, m): the parity rows of the crate's systematic
/// matrix, and our own bounded cache of decode rows by erasure pattern.
///
/// The crate's own decode-matrix cache is an LRU of 254 patterns; k=16,
/// m=4 with 4 shards lost has 1,820, so under random loss most rebuilds
/// missed it and paid a matrix inversion (`dcdn bench fec_decode`: 1.9
/// GB/s random against ~4.5 GB/s on one fixed pattern). Encoding and
/// rebuilding here call the crate's SIMD `mul_slice(_xor)` kernels directly
/// with rows we hold, so no pattern is ever inverted twice while it fits
/// the cache, and no per-call check or allocation sits in front of the
/// kernels.
struct Codec {
    k: usize,
    /// `m` rows of `k` coefficients: parity `j` = Σ `parity[j*k + i]` · data `i`.
    parity: Vec<u8>,
    /// Rows rebuilding the missing data shards, keyed by which shards were
    /// used (the first `k` present; see [`Codec::decode_rows`]).
    decode_rows: HashMap<Pattern, Box<[u8]>>,
    /// Bytes of coefficients held in `decode_rows`.
    cached_bytes: usize,
}

/// Which of up to 256 shards a rebuild used, as a bit set.
type Pattern = [u64; 4];

/// Coefficient bytes one codec's decode cache may hold; past it the cache
/// starts over. 64 KiB holds every pattern of k=16, m=4 (1,820 × 64 bytes
/// for four lost shards, fewer bytes for fewer); at most [`MAX_CODECS`]
/// codecs per encoder or decoder bounds the total.
const MAX_DECODE_CACHE_BYTES: usize = 256 * 1024;

impl Codec {
    fn new(k: usize, m: usize) -> Result<Self, FecError> {
        let rs = ReedSolomon::new(k, m).map_err(|e| FecError::Codec(format!("{e:?}")))?;
        // Read the parity matrix back from the crate: encoding the unit
        // vector e_i gives column i. Shards stay compatible with any peer
        // that encodes with the crate itself.
        let mut parity = vec![0u8; m * k];
        let mut data = vec![[0u8; 1]; k];
        let mut out = vec![[0u8; 1]; m];
        for i in 0..k {
            data[i][0] = 1;
            rs.encode_sep(&data, &mut out)
                .map_err(|e| FecError::Codec(format!("{e:?}")))?;
            data[i][0] = 0;
            for (j, o) in out.iter().enumerate() {
                parity[j * k + i] = o[0];
            }
        }
        Ok(Self {
            k,
            parity,
            decode_rows: HashMap::new(),
            cached_bytes: 0,
        })
    }

    /// Writes the `m` parity shards of `data` (`k` shards of `shard_len`
    /// bytes, back to back) into `parity` (`m` of the same, back to back).
    /// Contiguous buffers rather than slices of slices: the two `Vec`s of
    /// slices were allocated per block. Input-major, as the crate does: each
    /// data shard is read once while the parity it feeds stays in cache.
    fn encode(&self, data: &[u8], parity: &mut [u8], shard_len: usize) {
        let k = self.k;
        for (i, input) in data.chunks_exact(shard_len).take(k).enumerate() {
            for (j, out) in parity.chunks_exact_mut(shard_len).enumerate() {
                let c = self.parity[j * k + i];
                if i == 0 {
                    galois_8::mul_slice(c, input, out);
                } else {
                    galois_8::mul_slice_xor(c, input, out);
                }
            }
        }
    }

    /// Rows (one per missing data shard, ascending, `k` coefficients each)
    /// that rebuild the missing data shards from the shards in `used`
    /// (`k` indices, ascending), from the cache or by inverting the
    /// matrix rows of `used`.
    fn decode_rows(&mut self, used: &[usize]) -> Result<&[u8], FecError> {
        let mut key: Pattern = [0; 4];
        for &u in used {
            key[u / 64] |= 1 << (u % 64);
        }
        if !self.decode_rows.contains_key(&key) {
            let rows = self.invert(used)?;
            if self.cached_bytes + rows.len() > MAX_DECODE_CACHE_BYTES {
                self.decode_rows.clear();
                self.cached_bytes = 0;
            }
            self.cached_bytes += rows.len();
            self.decode_rows.insert(key, rows);
        }
        self.decode_rows
            .get(&key)
            .map(|r| &r[..])
            .ok_or_else(|| FecError::Codec("decode cache".into()))
    }

    /// Gauss–Jordan inversion over GF(2^8) of the encoding-matrix rows
    /// `used`; returns the inverse's rows for the data shards not in `used`.
    fn invert(&self, used: &[usize]) -> Result<Box<[u8]>, FecError> {
        let k = self.k;
        let w = 2 * k;
        // [S | I], S's row r = encoding-matrix row used[r].
        let mut a = vec![0u8; k * w];
        for (r, &u) in used.iter().enumerate() {
            let row = &mut a[r * w..(r + 1) * w];
            if u < k {
                row[u] = 1;
            } else {
                row[..k].copy_from_slice(&self.parity[(u - k) * k..(u - k + 1) * k]);
            }
            row[k + r] = 1;
        }
        for col in 0..k {
            let pivot = (col..k)
                .find(|&r| a[r * w + col] != 0)
                .ok_or_else(|| FecError::Codec("singular decode matrix".into()))?;
            if pivot != col {
                for c in 0..w {
                    a.swap(pivot * w + c, col * w + c);
                }
            }
            let inv = galois_8::div(1, a[col * w + col]);
            for c in 0..w {
                a[col * w + c] = galois_8::mul(a[col * w + c], inv);
            }
            for r in 0..k {
                let f = a[r * w + col];
                if r != col && f != 0 {
                    for c in 0..w {
                        let v = galois_8::mul(f, a[col * w + c]);
                        a[r * w + c] ^= v;
                    }
                }
            }
        }
        let missing = (0..k).filter(|i| !used.contains(i));
        Ok(missing
            .flat_map(|i| a[i * w + k..(i + 1) * w].iter().copied())
            .collect())
    }
}

/// Codecs by (k, m), so each keeps its decode cache between groups.
#[derive(Default)]
struct Codecs {
    by_params: HashMap<(usize, usize), Codec>,
}

/// Distinct (k, m) pairs kept; past this the cache starts over.
const MAX_CODECS: usize = 64;

impl Codecs {
    fn get(&mut self, k: usize, m: usize) -> Result<&mut Codec, FecError> {
        // One hash per block in the common case (the codec is held).
        if self.by_params.len() >= MAX_CODECS && !self.by_params.contains_key(&(k, m)) {
            self.by_params.clear();
        }
        match self.by_params.entry((k, m)) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => Ok(e.insert(Codec::new(k, m)?)),
        }
    }
}

/// Encodes chunks into shards.
#[derive(Default)]
pub struct Encoder {
    codecs: Codecs,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

/// Parity for a block that has fewer data shards than a full one: the same
/// ratio, at least one shard when the link wants any.
fn scaled_parity(m: u16, k_full: u16, k_block: u16) -> u16 {
    if m == 0 {
        return 0;
    }
    let scaled = (u32::from(m) * u32::from(k_block)).div_ceil(u32::from(k_full.max(1)));
    scaled.max(1) as u16
}

/// Where one FEC block of an encoded chunk lies and how it is coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    /// Offset of the block in the encoded chunk.
    pub start: usize,
    /// Bytes of chunk data in the block.
    pub len: usize,
    /// Data shards.
    pub k: u16,
    /// Parity shards.
    pub m: u16,
    /// Bytes per shard (the last data shard is zero-padded to it).
    pub shard_len: usize,
}

/// Blocks a `len`-byte encoded chunk is cut into (at least one).
/// `max_shard_len` must already be clamped to `1..=MAX_SHARD_LEN`.
pub fn block_count(len: usize, max_shard_len: usize, k: u16) -> usize {
    let block_cap = usize::from(k.max(1)) * max_shard_len.max(1);
    len.div_ceil(block_cap).max(1)
}

/// The shortest shard that cannot share a QUIC packet with another
/// datagram on a path whose datagrams may be `max_datagram` bytes long.
/// quinn packs datagrams that fit together into one packet, and shards
/// that share a packet share its loss: a chunk of 1.2 KB cut into two
/// 629-byte shards and one parity shard lost two of its three shards to one
/// dropped packet, where FEC counts on each shard being lost on its own.
pub fn min_shard_len(max_datagram: usize) -> usize {
    max_datagram / 2 + 1
}

/// The layout of block `b` of a `len`-byte chunk: the encoder cuts shards
/// by it, and the simulator counts datagrams and parity by it without
/// materialising bytes. Shards are at least `min_shard_len` long (a short
/// block's last data shard is zero-padded; see [`min_shard_len`]).
pub fn block_layout(
    len: usize,
    max_shard_len: usize,
    min_shard_len: usize,
    k: u16,
    m: u16,
    b: usize,
) -> BlockLayout {
    let max_shard_len = max_shard_len.max(1);
    let block_cap = usize::from(k.max(1)) * max_shard_len;
    let start = (b * block_cap).min(len);
    let end = (start + block_cap).min(len);
    let block_len = end - start;
    let kb = block_len.div_ceil(max_shard_len).max(1);
    let shard_len = block_len
        .div_ceil(kb)
        .max(min_shard_len.min(max_shard_len))
        .max(1);
    // Longer shards may need fewer of them.
    let kb = block_len.div_ceil(shard_len).max(1);
    BlockLayout {
        start,
        len: block_len,
        k: kb as u16,
        m: scaled_parity(m, k, kb as u16),
        shard_len,
    }
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Splits `bytes` (an encoded chunk frame) into blocks of at most `k`
    /// shards of at most `max_shard_len` bytes, and adds `m` parity shards
    /// per full block (proportionally fewer for a short last block). Data
    /// shards of full blocks share `bytes`' buffer.
    pub fn encode_chunk(
        &mut self,
        chunk: ChunkId,
        bytes: &Bytes,
        max_shard_len: usize,
        k: u16,
        m: u16,
    ) -> Result<Vec<Shard>, FecError> {
        let blocks = self.encode_blocks(chunk, bytes, max_shard_len, 0, k, m)?;
        Ok(blocks
            .iter()
            .flat_map(|b| (0..b.shards()).map(move |i| b.shard(i)))
            .collect())
    }

    /// [`Encoder::encode_chunk`] a block at a time: each [`Block`] holds its
    /// data shards as one slice of `bytes` (a zero-padded copy for a short
    /// last block) and its parity in one fresh buffer. The push path frames
    /// every shard straight from these ([`Block::encode_frame`]): a
    /// `Shard` with its own buffer handle per shard cost two atomic
    /// reference-count updates each, 15 % of encoding a 16 + 4 block.
    pub fn encode_blocks(
        &mut self,
        chunk: ChunkId,
        bytes: &Bytes,
        max_shard_len: usize,
        min_shard_len: usize,
        k: u16,
        m: u16,
    ) -> Result<Vec<Block>, FecError> {
        let bad = |why| FecError::Params {
            k,
            m,
            shard_len: max_shard_len,
            why,
        };
        if k == 0 {
            return Err(bad("k must be at least 1"));
        }
        if u32::from(k) + u32::from(m) > u32::from(MAX_SHARDS_PER_GROUP) {
            return Err(bad("k + m exceeds 256 shards"));
        }
        let max_shard_len = max_shard_len.min(MAX_SHARD_LEN);
        if max_shard_len == 0 {
            return Err(bad("shard length must be at least 1 byte"));
        }
        let blocks = block_count(bytes.len(), max_shard_len, k);
        let blocks16 =
            u16::try_from(blocks).map_err(|_| bad("chunk needs more than 65535 blocks"))?;
        let mut out = Vec::with_capacity(blocks);
        for b in 0..blocks {
            let BlockLayout {
                start,
                len: block_len,
                k: kb,
                m: mb,
                shard_len,
            } = block_layout(bytes.len(), max_shard_len, min_shard_len, k, m, b);
            let end = start + block_len;
            let kb = usize::from(kb);
            // A full block is cut straight from the buffer; a short one is
            // copied once and zero-padded to kb equal shards.
            let data = if block_len == kb * shard_len {
                bytes.slice(start..end)
            } else {
                let mut padded = BytesMut::zeroed(kb * shard_len);
                padded[..block_len].copy_from_slice(&bytes[start..end]);
                padded.freeze()
            };
            let parity = if mb > 0 {
                let codec = self.codecs.get(kb, usize::from(mb))?;
                let mut parity = BytesMut::zeroed(usize::from(mb) * shard_len);
                codec.encode(&data, &mut parity, shard_len);
                parity.freeze()
            } else {
                Bytes::new()
            };
            out.push(Block {
                chunk,
                block: b as u16,
                blocks: blocks16,
                k: kb as u16,
                m: mb,
                block_len: block_len as u32,
                shard_len,
                data,
                parity,
            });
        }
        Ok(out)
    }
}

/// One block of a chunk as [`Encoder::encode_blocks`] makes it: `k` data
/// shards back to back, then `m` parity shards back to back.
#[derive(Debug, Clone)]
pub struct Block {
    pub chunk: ChunkId,
    pub block: u16,
    pub blocks: u16,
    pub k: u16,
    pub m: u16,
    /// Bytes of this block before padding.
    pub block_len: u32,
    shard_len: usize,
    data: Bytes,
    parity: Bytes,
}

impl Block {
    /// Shards in the block: `k + m`.
    pub fn shards(&self) -> usize {
        usize::from(self.k) + usize::from(self.m)
    }

    /// The bytes of shard `index` (`0..k` data, `k..k + m` parity).
    ///
    /// # Panics
    /// If `index >= self.shards()`.
    pub fn shard_data(&self, index: usize) -> &[u8] {
        let (buf, i) = self.locate(index);
        &buf[i * self.shard_len..(i + 1) * self.shard_len]
    }

    fn locate(&self, index: usize) -> (&Bytes, usize) {
        let k = usize::from(self.k);
        assert!(
            index < self.shards(),
            "shard {index} of a {k} + {} block",
            self.m
        );
        if index < k {
            (&self.data, index)
        } else {
            (&self.parity, index - k)
        }
    }

    fn head(&self, index: usize) -> ShardHead {
        ShardHead {
            chunk: self.chunk,
            block: self.block,
            blocks: self.blocks,
            k: self.k,
            m: self.m,
            index: index as u16,
            block_len: self.block_len,
        }
    }

    /// Shard `index` as a frame value, sharing the block's buffers.
    pub fn shard(&self, index: usize) -> Shard {
        let (buf, i) = self.locate(index);
        Shard::with_head(
            self.head(index),
            buf.slice(i * self.shard_len..(i + 1) * self.shard_len),
        )
    }

    /// The datagram for shard `index`: its whole `Shard` frame in one
    /// buffer of exactly its size, the shard's bytes copied once.
    pub fn encode_frame(&self, index: usize) -> Bytes {
        let data = self.shard_data(index);
        let mut out = BytesMut::with_capacity(SHARD_FRAME_HEAD_LEN + data.len());
        encode_shard(&mut out, &self.head(index), data);
        out.freeze()
    }
}

/// Rebuilds blocks from any k shards.
#[derive(Default)]
pub struct Decoder {
    codecs: Codecs,
    used: Vec<usize>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Given `shards[i]` for indices `0..k+m` (at least `k` present, all the
    /// same length), returns the `k` data shards concatenated.
    pub fn decode_block(
        &mut self,
        k: usize,
        m: usize,
        shards: &[Option<Bytes>],
    ) -> Result<BytesMut, FecError> {
        let shard_len = shards.iter().flatten().map(Bytes::len).next().unwrap_or(0);
        if shard_len == 0
            || shards.len() != k + m
            || shards.iter().flatten().any(|s| s.len() != shard_len)
        {
            return Err(FecError::Codec("shard count or lengths disagree".into()));
        }
        // Present shards are copied in and only the holes zeroed (the
        // kernels overwrite them): zeroing the whole block first wrote every
        // byte twice.
        let mut out = BytesMut::with_capacity(k * shard_len);
        let mut missing = false;
        for s in shards.iter().take(k) {
            match s {
                Some(s) => out.extend_from_slice(s),
                None => {
                    out.resize(out.len() + shard_len, 0);
                    missing = true;
                }
            }
        }
        if !missing {
            return Ok(out);
        }
        // The first k present shards; every present data shard is among
        // them, so the rows rebuild exactly the missing ones.
        self.used.clear();
        self.used.extend(
            shards
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|_| i))
                .take(k),
        );
        if self.used.len() < k {
            return Err(FecError::Codec("too few shards to rebuild".into()));
        }
        let rows = self.codecs.get(k, m)?.decode_rows(&self.used)?;
        let lost = (0..k).filter(|&i| shards[i].is_none());
        for (row, i) in rows.chunks_exact(k).zip(lost) {
            let target = &mut out[i * shard_len..(i + 1) * shard_len];
            for (n, (&u, &c)) in self.used.iter().zip(row).enumerate() {
                let Some(input) = shards[u].as_deref() else {
                    continue;
                };
                if n == 0 {
                    galois_8::mul_slice(c, input, target);
                } else {
                    galois_8::mul_slice_xor(c, input, target);
                }
            }
        }
        Ok(out)
    }
}

/// A chunk rebuilt from its shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    pub chunk: ChunkId,
    pub bytes: Bytes,
    /// Parity was needed for at least one block.
    pub recovered: bool,
}

/// Limits of the assembler.
#[derive(Debug, Clone, Copy)]
pub struct AssemblerConfig {
    /// Bytes of shards and finished blocks held for incomplete chunks.
    pub max_bytes: usize,
    /// A chunk not complete this long after its first shard is given up.
    pub max_age: Duration,
    /// Completed chunks remembered so late shards are ignored, not re-assembled.
    pub remember_done: usize,
    /// Bytes one source may hold; past it that source's oldest chunks go
    /// first, so a flooding peer evicts its own groups, not everyone's.
    pub max_bytes_per_source: usize,
    /// The largest encoded chunk a sender may cut into shards: a shard
    /// declaring more blocks, or a chunk whose groups declare more bytes,
    /// than a chunk this size can have is refused.
    pub max_chunk_bytes: usize,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        Self {
            max_bytes: 32 * 1024 * 1024,
            max_age: Duration::from_secs(2),
            remember_done: 65_536,
            max_bytes_per_source: 8 * 1024 * 1024,
            max_chunk_bytes: MAX_CHUNK_FRAME_LEN,
        }
    }
}

/// The largest encoded chunk frame: version and tag, header, signature and
/// the largest payload.
pub const MAX_CHUNK_FRAME_LEN: usize =
    2 + crate::chunk::ChunkHeader::ENCODED_LEN + 64 + crate::chunk::MAX_CHUNK_LEN as usize;

/// The smallest shard a sender cuts (the node refuses to push with less),
/// so every block but a chunk's last holds at least this many bytes.
pub const MIN_SHARD_LEN: usize = 256;

/// What the assembler charges for holding things, besides their bytes: a
/// peer pays for every structure it makes us allocate, so the cap bounds
/// the real memory, not just the shard payloads. Each figure is the
/// structure's size plus its slot in the collections that hold it (hash
/// tables run at most 7/8 full and double, so a slot is counted twice).
const PENDING_COST: usize =
    2 * std::mem::size_of::<(Key, Pending)>() + 2 * std::mem::size_of::<(Instant, Key)>();
const GROUP_COST: usize = 2 * std::mem::size_of::<(u16, Group)>();
const SLOT_COST: usize = std::mem::size_of::<Option<Bytes>>();
const DONE_BLOCK_COST: usize = 2 * std::mem::size_of::<(u16, Bytes)>();
/// A shard's bytes share its datagram's buffer, header included.
const SHARD_OVERHEAD: usize = 64;

/// Assembly statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    pub completed: u64,
    pub recovered: u64,
    pub expired: u64,
    pub dropped_for_cap: u64,
    pub duplicates: u64,
    pub mismatches: u64,
    pub bytes_held: usize,
    pub chunks_pending: usize,
}

struct Group {
    k: u16,
    m: u16,
    block_len: u32,
    shard_len: usize,
    shards: Vec<Option<Bytes>>,
    have: usize,
}

struct Pending {
    first_seen: Instant,
    blocks: u16,
    groups: HashMap<u16, Group>,
    /// Rebuilt blocks by index: sized by what arrived, never by the block
    /// count the peer declared.
    done_blocks: HashMap<u16, Bytes>,
    /// Sum of `block_len` over the groups opened: no more than a chunk holds.
    declared: u64,
    recovered: bool,
    /// Everything this chunk costs us (see `PENDING_COST`).
    bytes: usize,
}

/// Who sent a shard (a peer id). Groups are kept apart per source: a
/// peer's shards are only ever combined with that peer's own, so a
/// malicious peer cannot poison or pre-empt a chunk another peer sends.
pub type Source = u64;

type Key = (Source, ChunkId);

/// Collects shards into chunks with bounded memory.
pub struct Assembler {
    config: AssemblerConfig,
    pending: HashMap<Key, Pending>,
    /// Arrival order, for dropping the oldest when over the cap.
    order: VecDeque<(Instant, Key)>,
    done: HashSet<Key>,
    done_order: VecDeque<Key>,
    held_by: HashMap<Source, usize>,
    decoder: Decoder,
    stats: AssemblerStats,
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Assembler {
    pub fn new(config: AssemblerConfig) -> Self {
        Self {
            config,
            pending: HashMap::new(),
            order: VecDeque::new(),
            done: HashSet::new(),
            done_order: VecDeque::new(),
            held_by: HashMap::new(),
            decoder: Decoder::new(),
            stats: AssemblerStats::default(),
        }
    }

    pub fn stats(&self) -> AssemblerStats {
        AssemblerStats {
            chunks_pending: self.pending.len(),
            ..self.stats
        }
    }

    fn remember_done(&mut self, id: Key) {
        if self.done.insert(id) {
            self.done_order.push_back(id);
            while self.done_order.len() > self.config.remember_done {
                if let Some(old) = self.done_order.pop_front() {
                    self.done.remove(&old);
                }
            }
        }
    }

    fn drop_pending(&mut self, id: &Key) -> bool {
        match self.pending.remove(id) {
            Some(p) => {
                self.stats.bytes_held -= p.bytes;
                self.charge(id.0, -(p.bytes as isize));
                true
            }
            None => false,
        }
    }

    fn charge(&mut self, source: Source, delta: isize) {
        let held = self.held_by.entry(source).or_default();
        *held = held.saturating_add_signed(delta);
        if *held == 0 {
            self.held_by.remove(&source);
        }
    }

    /// Adds a shard from `source`. Returns the chunk's bytes once every
    /// block is rebuilt. Whatever happens, the bytes held stay within the
    /// caps when it returns.
    pub fn insert(
        &mut self,
        source: Source,
        shard: Shard,
        now: Instant,
    ) -> Result<Option<Assembled>, FecError> {
        let result = self.insert_shard(source, shard, now);
        self.enforce_source_cap(source);
        self.enforce_cap();
        result
    }

    /// The most blocks a chunk of `max_chunk_bytes` can be cut into.
    fn max_blocks(&self) -> usize {
        self.config.max_chunk_bytes.div_ceil(MIN_SHARD_LEN).max(1)
    }

    fn hold(&mut self, key: Key, bytes: usize) {
        if let Some(p) = self.pending.get_mut(&key) {
            p.bytes += bytes;
        }
        self.stats.bytes_held += bytes;
        *self.held_by.entry(key.0).or_default() += bytes;
    }

    fn release(&mut self, key: Key, bytes: usize) {
        if let Some(p) = self.pending.get_mut(&key) {
            p.bytes -= bytes;
        }
        self.stats.bytes_held -= bytes;
        self.charge(key.0, -(bytes as isize));
    }

    fn insert_shard(
        &mut self,
        source: Source,
        shard: Shard,
        now: Instant,
    ) -> Result<Option<Assembled>, FecError> {
        let id = shard.chunk;
        let key = (source, id);
        if self.done.contains(&key) {
            self.stats.duplicates += 1;
            return Ok(None);
        }
        let mismatch = |field| FecError::Mismatch {
            chunk: id,
            block: shard.block,
            field,
        };
        let total = usize::from(shard.k) + usize::from(shard.m);
        if shard.k == 0
            || total > usize::from(MAX_SHARDS_PER_GROUP)
            || usize::from(shard.index) >= total
            || shard.block >= shard.blocks
        {
            self.stats.mismatches += 1;
            return Err(mismatch("index"));
        }
        // Declared sizes are checked against what a chunk can be before
        // anything is allocated for them.
        if usize::from(shard.blocks) > self.max_blocks() {
            self.stats.mismatches += 1;
            return Err(mismatch("blocks"));
        }
        if shard.block_len as usize > self.config.max_chunk_bytes {
            self.stats.mismatches += 1;
            return Err(mismatch("block_len"));
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.pending.entry(key) {
            e.insert(Pending {
                first_seen: now,
                blocks: shard.blocks,
                groups: HashMap::new(),
                done_blocks: HashMap::new(),
                declared: 0,
                recovered: false,
                bytes: 0,
            });
            self.order.push_back((now, key));
            self.hold(key, PENDING_COST);
        }
        let len = shard.data.len();
        let max_chunk = self.config.max_chunk_bytes as u64;
        let Some(p) = self.pending.get_mut(&key) else {
            return Ok(None);
        };
        if p.blocks != shard.blocks {
            self.stats.mismatches += 1;
            return Err(mismatch("blocks"));
        }
        if p.done_blocks.contains_key(&shard.block) {
            self.stats.duplicates += 1;
            return Ok(None);
        }
        let mut opened = 0;
        if !p.groups.contains_key(&shard.block) {
            if p.declared + u64::from(shard.block_len) > max_chunk {
                self.stats.mismatches += 1;
                return Err(mismatch("block_len"));
            }
            p.declared += u64::from(shard.block_len);
            p.groups.insert(
                shard.block,
                Group {
                    k: shard.k,
                    m: shard.m,
                    block_len: shard.block_len,
                    shard_len: len,
                    shards: vec![None; total],
                    have: 0,
                },
            );
            opened = GROUP_COST + total * SLOT_COST;
        }
        let Some(group) = p.groups.get_mut(&shard.block) else {
            return Ok(None);
        };
        let field = if group.k != shard.k {
            Some("k")
        } else if group.m != shard.m {
            Some("m")
        } else if group.block_len != shard.block_len {
            Some("block_len")
        } else if group.shard_len != len || len == 0 {
            Some("shard length")
        } else {
            None
        };
        // Only a shard that agrees with its group (hence its size) is
        // indexed into it.
        let duplicate = field.is_none() && group.shards[usize::from(shard.index)].is_some();
        if field.is_none() && !duplicate {
            group.shards[usize::from(shard.index)] = Some(shard.data);
            group.have += 1;
        }
        let complete = group.have >= usize::from(group.k);
        self.hold(key, opened);
        if let Some(field) = field {
            self.stats.mismatches += 1;
            return Err(mismatch(field));
        }
        if duplicate {
            self.stats.duplicates += 1;
            return Ok(None);
        }
        self.hold(key, len + SHARD_OVERHEAD);
        if !complete {
            return Ok(None);
        }
        let Some(p) = self.pending.get_mut(&key) else {
            return Ok(None);
        };
        let Some(group) = p.groups.remove(&shard.block) else {
            return Ok(None);
        };
        let (k, m, block_len) = (usize::from(group.k), usize::from(group.m), group.block_len);
        let used_parity = group.shards[..k].iter().any(Option::is_none);
        let held = GROUP_COST
            + group.shards.len() * SLOT_COST
            + group
                .shards
                .iter()
                .flatten()
                .map(|b| b.len() + SHARD_OVERHEAD)
                .sum::<usize>();
        let decoded = self.decoder.decode_block(k, m, &group.shards);
        drop(group);
        self.release(key, held);
        let mut block = decoded?;
        block.truncate(block_len as usize);
        let block = block.freeze();
        let block_cost = block.len() + DONE_BLOCK_COST;
        let Some(p) = self.pending.get_mut(&key) else {
            return Ok(None);
        };
        p.done_blocks.insert(shard.block, block);
        p.recovered |= used_parity;
        let finished = p.done_blocks.len() == usize::from(p.blocks);
        self.hold(key, block_cost);
        if !finished {
            return Ok(None);
        }
        let Some(p) = self.pending.get(&key) else {
            return Ok(None);
        };
        let size: usize = p.done_blocks.values().map(Bytes::len).sum();
        let mut out = BytesMut::with_capacity(size);
        for b in 0..p.blocks {
            if let Some(block) = p.done_blocks.get(&b) {
                out.extend_from_slice(block);
            }
        }
        let recovered = p.recovered;
        self.drop_pending(&key);
        self.remember_done(key);
        self.stats.completed += 1;
        self.stats.recovered += u64::from(recovered);
        Ok(Some(Assembled {
            chunk: id,
            bytes: out.freeze(),
            recovered,
        }))
    }

    /// Drops `source`'s oldest incomplete chunks until it is within its share.
    fn enforce_source_cap(&mut self, source: Source) {
        while self.held_by.get(&source).copied().unwrap_or(0) > self.config.max_bytes_per_source {
            let Some(pos) = self
                .order
                .iter()
                .position(|(_, k)| k.0 == source && self.pending.contains_key(k))
            else {
                break;
            };
            if let Some((_, k)) = self.order.remove(pos) {
                if self.drop_pending(&k) {
                    self.stats.dropped_for_cap += 1;
                }
            }
        }
    }

    /// Drops the oldest incomplete chunks until within the memory cap.
    fn enforce_cap(&mut self) {
        while self.stats.bytes_held > self.config.max_bytes {
            let Some((_, id)) = self.order.pop_front() else {
                break;
            };
            if self.drop_pending(&id) {
                self.stats.dropped_for_cap += 1;
            }
        }
        self.compact_order();
    }

    fn compact_order(&mut self) {
        // `order` may hold ids already completed; keep it proportional to
        // what is pending so it cannot grow without bound.
        if self.order.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.order.retain(|(_, id)| pending.contains_key(id));
        }
    }

    /// Gives up on chunks older than the age limit; returns their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<ChunkId> {
        let mut gone = Vec::new();
        while let Some(&(seen, id)) = self.order.front() {
            if now.saturating_duration_since(seen) < self.config.max_age {
                break;
            }
            self.order.pop_front();
            if self.pending.get(&id).is_some_and(|p| p.first_seen == seen) && self.drop_pending(&id)
            {
                gone.push(id.1);
            }
        }
        self.stats.expired += gone.len() as u64;
        // The same chunk may have been pending from several sources.
        gone.sort_unstable();
        gone.dedup();
        gone
    }
}

/// Picks the parity count for a link from the loss its receiver reports.
#[derive(Debug, Clone)]
pub struct ParityPolicy {
    k: u16,
    /// The configured parity, already within `[min_m, max_m]`.
    default_m: u16,
    min_m: u16,
    max_m: u16,
    adaptive: bool,
    /// Shards reported expected and lost, each report's counts added to
    /// the earlier ones decayed by `1 - LOSS_ALPHA`: the loss rate is their
    /// ratio, so a report weighs by how many shards it saw, and an idle link
    /// forgets what it knew.
    expected: f64,
    lost: f64,
    current: u16,
}

/// Probability a block may fail to rebuild; m is raised until below this.
const TARGET_RESIDUAL: f64 = 1e-4;
/// How much of the past each report keeps: `1 - LOSS_ALPHA`.
const LOSS_ALPHA: f64 = 0.3;
/// Shards of (decayed) evidence needed before parity goes below the
/// configured default. Without it, the first report of an idle link (no
/// shards, so no loss seen) or a report of a few shards that happened to
/// arrive cut parity to the minimum just before a stream started, and the
/// stream's first half second went out with one parity shard per block
/// into whatever loss the link had (1 in 6 blocks lost at 5 %).
const MIN_EVIDENCE_SHARDS: f64 = 200.0;

impl ParityPolicy {
    pub fn new(k: u16, default_m: u16, min_m: u16, max_m: u16, adaptive: bool) -> Self {
        let default_m = default_m.clamp(min_m, max_m.max(min_m));
        Self {
            k: k.max(1),
            default_m,
            current: default_m,
            min_m,
            max_m: max_m.max(min_m),
            adaptive,
            expected: 0.0,
            lost: 0.0,
        }
    }

    pub fn current(&self) -> u16 {
        self.current
    }

    /// The loss rate the parity is chosen for (0 before any shard was
    /// reported).
    pub fn loss(&self) -> f64 {
        if self.expected > 0.0 {
            self.lost / self.expected
        } else {
            0.0
        }
    }

    /// Folds in a report (shards expected and received since the last one;
    /// an idle link may report 0 and 0) and returns the parity to use from
    /// now on. Parity rises on any evidence of loss, but falls below the
    /// configured default only on [`MIN_EVIDENCE_SHARDS`] of evidence.
    pub fn handle_report(&mut self, expected: u64, received: u64) -> u16 {
        let default = self.default_m;
        if !self.adaptive {
            self.current = default;
            return self.current;
        }
        let lost = expected.saturating_sub(received);
        self.expected = self.expected * (1.0 - LOSS_ALPHA) + expected as f64;
        self.lost = self.lost * (1.0 - LOSS_ALPHA) + lost as f64;
        let m = Self::parity_for(self.k, self.loss(), self.min_m, self.max_m);
        self.current = if self.expected < MIN_EVIDENCE_SHARDS {
            m.max(default)
        } else {
            m
        };
        self.current
    }

    /// The smallest m in `[min_m, max_m]` such that a block of k + m shards,
    /// each lost independently with probability `loss`, fails to rebuild with
    /// probability below the target.
    pub fn parity_for(k: u16, loss: f64, min_m: u16, max_m: u16) -> u16 {
        let p = loss.clamp(0.0, 0.999);
        for m in min_m..=max_m {
            if p == 0.0
                || binomial_tail(u32::from(k) + u32::from(m), u32::from(m), p) < TARGET_RESIDUAL
            {
                return m;
            }
        }
        max_m
    }
}

/// P(X > m) for X ~ Binomial(n, p).
fn binomial_tail(n: u32, m: u32, p: f64) -> f64 {
    let q = 1.0 - p;
    // P(X = 0), then the recurrence P(X=i+1) = P(X=i) * (n-i)/(i+1) * p/q.
    let mut term = q.powi(n as i32);
    let mut cdf = term;
    for i in 0..m.min(n) {
        term *= f64::from(n - i) / f64::from(i + 1) * p / q;
        cdf += term;
    }
    (1.0 - cdf).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::StreamId;
    use proptest::prelude::*;

    fn id(seq: u64) -> ChunkId {
        ChunkId::new(StreamId(1), seq)
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn a_blocks_frames_are_the_shard_frames_byte_for_byte() {
        use crate::chunk::wire::Frame;
        let mut e = Encoder::new();
        // Full blocks, a short padded last block, no parity.
        for (len, k, m) in [(16 * 1200, 16, 4), (5000, 10, 2), (3001, 6, 0)] {
            let bytes = Bytes::from(data(len, 3));
            let shards = e.encode_chunk(id(7), &bytes, 1200, k, m).unwrap();
            let blocks = e.encode_blocks(id(7), &bytes, 1200, 0, k, m).unwrap();
            let framed: Vec<Bytes> = blocks
                .iter()
                .flat_map(|b| (0..b.shards()).map(move |i| b.encode_frame(i)))
                .collect();
            assert_eq!(framed.len(), shards.len(), "len {len}");
            for (f, s) in framed.iter().zip(&shards) {
                assert_eq!(f, &Frame::Shard(s.clone()).to_bytes(), "len {len} {s:?}");
            }
            assert_eq!(assemble(shards).unwrap().bytes, bytes, "len {len}");
        }
    }

    #[test]
    fn no_two_shards_fit_one_packet_and_padded_shards_still_rebuild() {
        // A path whose datagrams may be 1404 bytes, shards cut for 1088.
        let (max, dgram) = (1088, 1404);
        let min = min_shard_len(dgram);
        let mut e = Encoder::new();
        for len in [1, 300, 1258, 2 * 1088 + 5, 16 * 1088 + 700, 40_000] {
            let bytes = Bytes::from(data(len, 4));
            let blocks = e.encode_blocks(id(3), &bytes, max, min, 16, 2).unwrap();
            let mut shards = Vec::new();
            for b in &blocks {
                for i in 0..b.shards() {
                    let n = b.shard_data(i).len();
                    assert!(
                        2 * n > dgram && n <= max,
                        "len {len}: a {n}-byte shard could share a {dgram}-byte datagram's packet"
                    );
                    shards.push(b.shard(i));
                }
            }
            // Losing one data shard per block still rebuilds the padded bytes.
            let mut seen = std::collections::HashSet::new();
            shards.retain(|s| s.index != 0 || !seen.insert(s.block));
            let got = assemble(shards).unwrap();
            assert_eq!(got.bytes, bytes, "len {len}");
        }
    }

    fn assemble(shards: Vec<Shard>) -> Option<Assembled> {
        let mut a = Assembler::new(AssemblerConfig::default());
        let now = Instant::now();
        let mut out = None;
        for s in shards {
            if let Some(done) = a.insert(1, s, now).unwrap() {
                out = Some(done);
            }
        }
        out
    }

    #[test]
    fn encodes_blocks_of_k_shards_with_proportional_parity() {
        let mut e = Encoder::new();
        let bytes = data(100_000, 1);
        let shards = e
            .encode_chunk(id(1), &Bytes::from(bytes.clone()), 1200, 16, 4)
            .unwrap();
        // 100_000 / (16 * 1200) = 5.2 → 6 blocks, the last one short.
        assert_eq!(shards[0].blocks, 6);
        let last: Vec<&Shard> = shards.iter().filter(|s| s.block == 5).collect();
        assert!(last[0].k < 16);
        assert!(
            last.iter()
                .all(|s| s.data.len() % 2 == 0 && s.data.len() <= 1200)
        );
        assert_eq!(assemble(shards).unwrap().bytes, bytes);
    }

    #[test]
    fn tiny_and_empty_chunks_round_trip() {
        let mut e = Encoder::new();
        for len in [0usize, 1, 3, 1199, 1200, 1201] {
            let bytes = data(len, 2);
            let shards = e
                .encode_chunk(id(len as u64), &Bytes::from(bytes.clone()), 1200, 16, 4)
                .unwrap();
            // Lose the first shard: parity must cover it.
            let kept: Vec<Shard> = shards.into_iter().skip(1).collect();
            let got = assemble(kept).unwrap();
            assert_eq!(got.bytes, bytes, "len {len}");
            assert!(got.recovered);
        }
    }

    proptest! {
        #[test]
        fn any_k_of_k_plus_m_shards_rebuild_the_block(
            k in 1u16..20,
            m in 1u16..8,
            len in 1usize..4000,
            drop_seed in any::<u64>(),
        ) {
            let mut e = Encoder::new();
            let bytes = data(len, 3);
            let shards = e.encode_chunk(id(9), &Bytes::from(bytes.clone()), 256, k, m).unwrap();
            // Per block, drop up to that block's m shards, chosen by seed.
            let mut kept = Vec::new();
            let mut by_block: HashMap<u16, Vec<Shard>> = HashMap::new();
            for s in shards {
                by_block.entry(s.block).or_default().push(s);
            }
            for (b, mut group) in by_block {
                let mb = group[0].m as usize;
                let mut rng = drop_seed ^ u64::from(b);
                for _ in 0..mb {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let i = (rng >> 33) as usize % group.len();
                    group.remove(i);
                }
                kept.extend(group);
            }
            let got = assemble(kept).unwrap();
            prop_assert_eq!(got.bytes, Bytes::from(bytes));
        }
    }

    /// Our decode rows against the crate's own reconstruction, on every
    /// erasure pattern of a few codes: the cache must never hand back rows
    /// of another pattern.
    #[test]
    fn own_decode_matches_the_crate_on_every_erasure_pattern() {
        for (k, m) in [(1usize, 1usize), (4, 2), (5, 3), (8, 4)] {
            let rs = ReedSolomon::new(k, m).unwrap();
            let len = 37;
            let mut full: Vec<Vec<u8>> = (0..k).map(|i| data(len, i as u8)).collect();
            full.extend((0..m).map(|_| vec![0u8; len]));
            rs.encode(&mut full).unwrap();
            // Our encoder's parity is the crate's, byte for byte.
            let codec = Codec::new(k, m).unwrap();
            let originals: Vec<u8> = full[..k].concat();
            let mut parity = vec![0u8; m * len];
            codec.encode(&originals, &mut parity, len);
            assert_eq!(parity, full[k..].concat());
            let mut decoder = Decoder::new();
            // Twice over every pattern: the second pass is served by the cache.
            for _ in 0..2 {
                for mask in 0u32..(1 << (k + m)) {
                    if mask.count_ones() as usize > m {
                        continue;
                    }
                    let shards: Vec<Option<Bytes>> = full
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (mask & (1 << i) == 0).then(|| Bytes::from(s.clone())))
                        .collect();
                    let got = decoder.decode_block(k, m, &shards).unwrap();
                    assert_eq!(
                        &got[..],
                        &full[..k].concat()[..],
                        "k={k} m={m} lost={mask:b}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_decode_cache_stays_under_its_byte_bound() {
        let (k, m) = (32usize, 16usize);
        let mut codec = Codec::new(k, m).unwrap();
        let mut seed = 1u64;
        for _ in 0..3000 {
            // Random 16 of the 48 shards lost: far more patterns than fit.
            let mut idx: Vec<usize> = (0..k + m).collect();
            for i in (1..idx.len()).rev() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                idx.swap(i, (seed >> 33) as usize % (i + 1));
            }
            let mut used: Vec<usize> = idx[..k].to_vec();
            used.sort_unstable();
            codec.decode_rows(&used).unwrap();
            assert!(codec.cached_bytes <= MAX_DECODE_CACHE_BYTES);
        }
        assert!(!codec.decode_rows.is_empty());
    }

    #[test]
    fn too_few_shards_never_complete_and_duplicates_are_ignored() {
        let mut e = Encoder::new();
        let shards = e
            .encode_chunk(id(1), &Bytes::from(data(5000, 4)), 500, 10, 2)
            .unwrap();
        let mut a = Assembler::new(AssemblerConfig::default());
        let now = Instant::now();
        // k - 1 distinct shards, each sent twice.
        for s in shards.iter().take(9) {
            assert_eq!(a.insert(1, s.clone(), now).unwrap(), None);
            assert_eq!(a.insert(1, s.clone(), now).unwrap(), None);
        }
        assert_eq!(a.stats().duplicates, 9);
        assert!(a.insert(1, shards[10].clone(), now).unwrap().is_some());
        // Late shards of a finished chunk are ignored, not reassembled.
        assert_eq!(a.insert(1, shards[11].clone(), now).unwrap(), None);
        assert_eq!(a.stats().chunks_pending, 0);
    }

    #[test]
    fn shards_disagreeing_with_their_group_are_refused() {
        let mut e = Encoder::new();
        let shards = e
            .encode_chunk(id(1), &Bytes::from(data(3000, 5)), 500, 6, 2)
            .unwrap();
        let mut a = Assembler::new(AssemblerConfig::default());
        let now = Instant::now();
        a.insert(1, shards[0].clone(), now).unwrap();
        let mut bad = shards[1].clone();
        bad.m = 3;
        assert!(matches!(
            a.insert(1, bad, now),
            Err(FecError::Mismatch { field: "m", .. })
        ));
        let mut bad = shards[1].clone();
        bad.data = bad.data.slice(2..);
        assert!(matches!(
            a.insert(1, bad, now),
            Err(FecError::Mismatch {
                field: "shard length",
                ..
            })
        ));
        let mut bad = shards[1].clone();
        bad.blocks = 2;
        assert!(matches!(
            a.insert(1, bad, now),
            Err(FecError::Mismatch {
                field: "blocks",
                ..
            })
        ));
        assert_eq!(a.stats().mismatches, 3);
    }

    #[test]
    fn a_flood_of_incomplete_groups_stays_under_the_memory_cap() {
        let cap = 200_000;
        let mut a = Assembler::new(AssemblerConfig {
            max_bytes: cap,
            max_age: Duration::from_secs(60),
            remember_done: 1000,
            max_bytes_per_source: cap,
            ..AssemblerConfig::default()
        });
        let mut e = Encoder::new();
        let now = Instant::now();
        for seq in 0..5000u64 {
            // Only the first shard of each chunk ever arrives.
            let shards = e
                .encode_chunk(id(seq), &Bytes::from(data(12_000, 6)), 1200, 10, 2)
                .unwrap();
            a.insert(1, shards[0].clone(), now).unwrap();
            assert!(a.stats().bytes_held <= cap);
        }
        assert!(a.stats().dropped_for_cap > 4000);
        assert!(a.stats().chunks_pending <= cap / 1200 + 1);
        assert!(a.order.len() <= 2 * a.pending.len() + 64);
    }

    /// What the assembler really holds for its pending chunks, counted
    /// from the structures themselves (their allocated slots and the bytes
    /// the shards and blocks keep alive), not from its own book-keeping.
    fn live_bytes(a: &Assembler) -> usize {
        a.pending
            .values()
            .map(|p| {
                std::mem::size_of::<(Key, Pending)>()
                    + p.groups.capacity() * std::mem::size_of::<(u16, Group)>()
                    + p.groups
                        .values()
                        .map(|g| {
                            g.shards.capacity() * SLOT_COST
                                + g.shards.iter().flatten().map(Bytes::len).sum::<usize>()
                        })
                        .sum::<usize>()
                    + p.done_blocks.capacity() * std::mem::size_of::<(u16, Bytes)>()
                    + p.done_blocks.values().map(Bytes::len).sum::<usize>()
            })
            .sum()
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A shard with arbitrary header fields.
        Hostile {
            source: u64,
            seq: u64,
            block: u16,
            blocks: u16,
            k: u16,
            m: u16,
            index: u16,
            block_len: u32,
            len: usize,
        },
        /// Shard `index` of a real chunk of `len` bytes.
        Real {
            source: u64,
            seq: u64,
            len: usize,
            index: usize,
        },
        /// Time passes and the node expires old groups.
        Tick(u64),
    }

    fn any_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (
                0..3u64,
                0..40u64,
                any::<u16>(),
                any::<u16>(),
                0..300u16,
                0..300u16,
                0..300u16,
                any::<u32>(),
                1..1500usize,
            )
                .prop_map(|(source, seq, block, blocks, k, m, index, block_len, len)| {
                    // Half the time a header that passes the index checks,
                    // so groups really open and grow.
                    let (k, m) = (k.max(1), m);
                    let index = if seq % 2 == 0 { index % (k + m).max(1) } else { index };
                    let blocks = if seq % 2 == 0 { blocks.max(1) } else { blocks };
                    let block = if seq % 2 == 0 { block % blocks } else { block };
                    Op::Hostile {
                        source,
                        seq,
                        block,
                        blocks,
                        k,
                        m,
                        index,
                        block_len,
                        len,
                    }
                }),
            3 => (0..3u64, 100..110u64, 1..40_000usize, 0..200usize)
                .prop_map(|(source, seq, len, index)| Op::Real { source, seq, len, index }),
            1 => (0..3000u64).prop_map(Op::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn assembler_memory_never_exceeds_its_cap_for_any_input_sequence(
            ops in proptest::collection::vec(any_op(), 1..400),
        ) {
            let cap = 256 * 1024;
            let per_source = cap / 2;
            let mut a = Assembler::new(AssemblerConfig {
                max_bytes: cap,
                max_age: Duration::from_secs(2),
                remember_done: 256,
                max_bytes_per_source: per_source,
                max_chunk_bytes: 64 * 1024,
            });
            let mut e = Encoder::new();
            let t0 = Instant::now();
            let mut now = t0;
            for op in ops {
                match op {
                    Op::Hostile { source, seq, block, blocks, k, m, index, block_len, len } => {
                        let shard = Shard {
                            chunk: id(seq),
                            block,
                            blocks,
                            k,
                            m,
                            index,
                            block_len,
                            data: Bytes::from(vec![7u8; len]),
                        };
                        let _ = a.insert(source, shard, now);
                    }
                    Op::Real { source, seq, len, index } => {
                        let shards = e
                            .encode_chunk(id(seq), &Bytes::from(data(len, seq as u8)), 1000, 8, 2)
                            .unwrap();
                        if index >= 150 {
                            // The whole chunk: groups complete, blocks are
                            // held, the chunk comes out.
                            for shard in shards {
                                let _ = a.insert(source, shard, now);
                            }
                        } else {
                            let shard = shards[index % shards.len()].clone();
                            let _ = a.insert(source, shard, now);
                        }
                    }
                    Op::Tick(ms) => {
                        now += Duration::from_millis(ms);
                        a.expire(now);
                    }
                }
                let held = a.stats().bytes_held;
                prop_assert!(held <= cap, "held {held} > cap {cap}");
                for (source, h) in &a.held_by {
                    prop_assert!(*h <= per_source, "source {source} holds {h}");
                }
                let live = live_bytes(&a);
                prop_assert!(live <= held, "really held {live} > counted {held}");
            }
        }
    }

    #[test]
    fn one_datagram_declaring_the_most_blocks_costs_what_it_carries() {
        let mut a = Assembler::new(AssemblerConfig::default());
        let now = Instant::now();
        let hostile = |seq: u64, blocks: u16| Shard {
            chunk: id(seq),
            block: 0,
            blocks,
            k: 1,
            m: 255,
            index: 0,
            block_len: 1,
            data: Bytes::from_static(&[1]),
        };
        // More blocks than a 4 MiB chunk can be cut into: refused outright.
        assert!(matches!(
            a.insert(1, hostile(1, u16::MAX), now),
            Err(FecError::Mismatch {
                field: "blocks",
                ..
            })
        ));
        assert_eq!(a.stats().chunks_pending, 0);
        // As many as a chunk can have: held, and every byte of it counted.
        let most = u16::try_from(a.max_blocks()).unwrap();
        a.insert(1, hostile(2, most), now).unwrap();
        let (held, live) = (a.stats().bytes_held, live_bytes(&a));
        assert!(live <= held, "really held {live} > counted {held}");
        assert!(held < 16 * 1024, "one datagram holds {held} bytes");
    }

    #[test]
    fn groups_declaring_more_bytes_than_a_chunk_holds_are_refused() {
        let mut a = Assembler::new(AssemblerConfig {
            max_chunk_bytes: 10_000,
            ..AssemblerConfig::default()
        });
        let now = Instant::now();
        let shard = |block: u16| Shard {
            chunk: id(1),
            block,
            blocks: 20,
            k: 4,
            m: 0,
            index: 0,
            block_len: 4000,
            data: Bytes::from(vec![0u8; 1000]),
        };
        a.insert(1, shard(0), now).unwrap();
        a.insert(1, shard(1), now).unwrap();
        assert!(matches!(
            a.insert(1, shard(2), now),
            Err(FecError::Mismatch {
                field: "block_len",
                ..
            })
        ));
    }

    #[test]
    fn one_source_cannot_poison_or_crowd_out_anothers_chunk() {
        let mut e = Encoder::new();
        let good = Bytes::from(data(6000, 8));
        let shards = e.encode_chunk(id(7), &good, 500, 6, 2).unwrap();
        let mut a = Assembler::new(AssemblerConfig::default());
        let now = Instant::now();
        // Source 2 completes garbage for the same chunk id first, and sends
        // shards with other parameters: source 1's group is untouched.
        let junk = e
            .encode_chunk(id(7), &Bytes::from(data(6000, 9)), 500, 6, 2)
            .unwrap();
        for s in &junk {
            let _ = a.insert(2, s.clone(), now);
        }
        let mut odd = shards[0].clone();
        odd.m = 5;
        let _ = a.insert(2, odd, now);
        let mut out = None;
        for s in shards {
            if let Some(done) = a.insert(1, s, now).unwrap() {
                out = Some(done);
            }
        }
        assert_eq!(out.unwrap().bytes, good);
    }

    #[test]
    fn a_flooding_source_evicts_its_own_groups_first() {
        let mut a = Assembler::new(AssemblerConfig {
            max_bytes: 1_000_000,
            max_age: Duration::from_secs(60),
            remember_done: 1000,
            max_bytes_per_source: 50_000,
            ..AssemblerConfig::default()
        });
        let mut e = Encoder::new();
        let now = Instant::now();
        let honest = e
            .encode_chunk(id(1), &Bytes::from(data(12_000, 1)), 1200, 10, 2)
            .unwrap();
        a.insert(1, honest[0].clone(), now).unwrap();
        for seq in 100..1000u64 {
            let shards = e
                .encode_chunk(id(seq), &Bytes::from(data(12_000, 2)), 1200, 10, 2)
                .unwrap();
            a.insert(2, shards[0].clone(), now).unwrap();
            assert!(a.held_by[&2] <= 50_000);
        }
        // The honest group survived the flood and still completes.
        let mut out = None;
        for s in honest.into_iter().skip(1) {
            if let Some(done) = a.insert(1, s, now).unwrap() {
                out = Some(done);
            }
        }
        assert!(out.is_some());
    }

    #[test]
    fn incomplete_chunks_expire_after_the_age_limit() {
        let mut a = Assembler::new(AssemblerConfig {
            max_age: Duration::from_millis(100),
            ..AssemblerConfig::default()
        });
        let mut e = Encoder::new();
        let t0 = Instant::now();
        let shards = e
            .encode_chunk(id(1), &Bytes::from(data(3000, 7)), 500, 6, 2)
            .unwrap();
        a.insert(1, shards[0].clone(), t0).unwrap();
        assert!(a.expire(t0 + Duration::from_millis(50)).is_empty());
        assert_eq!(a.expire(t0 + Duration::from_millis(150)), vec![id(1)]);
        assert_eq!(a.stats().bytes_held, 0);
        assert_eq!(a.stats().expired, 1);
    }

    #[test]
    fn parity_policy_rises_with_loss_and_stays_in_bounds() {
        let mut last = 0;
        for loss in [0.0, 0.01, 0.05, 0.1, 0.2, 0.4] {
            let m = ParityPolicy::parity_for(16, loss, 1, 12);
            assert!(m >= last, "m must not fall as loss rises");
            assert!((1..=12).contains(&m));
            last = m;
        }
        assert_eq!(ParityPolicy::parity_for(16, 0.0, 1, 12), 1);
        assert_eq!(ParityPolicy::parity_for(16, 0.9, 1, 12), 12);
        let mut p = ParityPolicy::new(16, 4, 1, 12, true);
        for _ in 0..20 {
            p.handle_report(1000, 900);
        }
        assert!(p.current() > 4);
        for _ in 0..40 {
            p.handle_report(1000, 1000);
        }
        assert!(p.current() <= 2);
        let mut fixed = ParityPolicy::new(16, 4, 1, 12, false);
        assert_eq!(fixed.handle_report(1000, 500), 4);
    }

    #[test]
    fn parity_falls_below_the_default_only_on_evidence() {
        let mut p = ParityPolicy::new(16, 4, 1, 12, true);
        // An idle link reports nothing seen: it must not look loss-free.
        for _ in 0..10 {
            assert_eq!(p.handle_report(0, 0), 4, "idle reports keep the default");
        }
        // A handful of shards that all arrived prove little.
        assert_eq!(p.handle_report(20, 20), 4);
        // But any loss in them raises parity at once.
        assert!(p.handle_report(20, 18) > 4);
        // A steady loss-free stream earns the minimum...
        for _ in 0..30 {
            p.handle_report(1000, 1000);
        }
        assert_eq!(p.current(), 1);
        // ...and a long idle spell forgets it: the next stream starts at
        // the default again.
        for _ in 0..30 {
            p.handle_report(0, 0);
        }
        assert_eq!(p.current(), 4);
    }

    #[test]
    fn a_report_weighs_by_the_shards_it_saw() {
        // 10 % of 10,000 shards lost, then a report of 10 shards with none
        // lost: the small report must not wipe out the large one.
        let mut p = ParityPolicy::new(16, 4, 1, 12, true);
        p.handle_report(10_000, 9_000);
        let high = p.current();
        p.handle_report(10, 10);
        assert_eq!(p.current(), high);
        assert!((p.loss() - 0.1).abs() < 0.01, "loss {}", p.loss());
    }

    #[test]
    fn binomial_tail_matches_simple_cases() {
        assert!((binomial_tail(1, 0, 0.5) - 0.5).abs() < 1e-12);
        assert!((binomial_tail(2, 0, 0.5) - 0.75).abs() < 1e-12);
        assert!((binomial_tail(2, 1, 0.5) - 0.25).abs() < 1e-12);
        assert!(binomial_tail(20, 20, 0.3).abs() < 1e-12);
    }
}
