//! Signing, the key ring, verification, replay protection and reputation.
//!
//! The origin signs each chunk header once ([`Signer`]); every other node
//! checks the signature, the payload digest, the signing key's state in the
//! [`KeyRing`] and the chunk's freshness ([`Verifier`]) before it stores,
//! forwards or serves the chunk. [`ReplayGuard`] refuses a live chunk accepted
//! before, and [`Reputation`] turns repeated bad input from one peer into a
//! ban. Everything here takes time as an argument and does no I/O except the
//! explicit key-file functions.

use crate::chunk::{Chunk, ChunkHeader, ChunkId, KeyId, PeerId, StreamId, digest};
use bytes::Bytes;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use parking_lot::RwLock;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most keys a ring holds; rotation needs two or three at a time.
pub const MAX_KEYS: usize = 64;

/// Why a key operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key {0} is not in the key ring")]
    Unknown(KeyId),
    #[error("key {0} is revoked")]
    Revoked(KeyId),
    #[error(
        "key {0} is the active signing key; activate another key before revoking or removing it"
    )]
    ActiveKey(KeyId),
    #[error("the key ring is full ({MAX_KEYS} keys); remove revoked keys first")]
    Full,
    #[error("invalid public key {0}")]
    BadPublicKey(String),
    #[error("trust bundle generation {offered} is older than the current {current}")]
    Rollback { offered: u64, current: u64 },
    #[error("trust bundle: {0}")]
    Bundle(String),
    #[error("key file {path}: {message}")]
    File { path: String, message: String },
}

/// A signing key and its id. The secret never appears in `Debug` output.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
    id: KeyId,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A new random key.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self::from_secret(SigningKey::generate(rng).to_bytes())
    }

    /// The key whose 32-byte secret seed is `seed`.
    pub fn from_secret(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let id = KeyId::of_public_key(key.verifying_key().as_bytes());
        Self { key, id }
    }

    pub fn key_id(&self) -> KeyId {
        self.id
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs a chunk: fills in length, digest and key id, signs the header.
    pub fn sign_chunk(&self, id: ChunkId, payload: Bytes, timestamp_ms: u64) -> Chunk {
        let header = ChunkHeader {
            id,
            len: payload.len() as u32,
            digest: digest(&payload),
            key_id: self.id,
            timestamp_ms,
        };
        let signature = self.key.sign(&header.signing_bytes()).to_bytes();
        Chunk {
            header,
            signature,
            payload,
        }
    }

    /// Signs arbitrary bytes, which must carry their own domain separator.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Reads a key file: the 32-byte secret seed as 64 hex characters
    /// (surrounding whitespace ignored). Refuses files others can read or
    /// anyone but the owner can write; group-read is allowed because
    /// Kubernetes projects Secrets with `fsGroup` as 0440.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let err = |message: String| KeyError::File {
            path: path.display().to_string(),
            message,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
            if meta.permissions().mode() & 0o037 != 0 {
                return Err(err(format!(
                    "mode {:o} lets others read or write a secret key; chmod 600 it",
                    meta.permissions().mode() & 0o777
                )));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::from_secret_hex(&text).map_err(err)
    }

    /// Parses the 32-byte secret seed from 64 hex characters.
    pub fn from_secret_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("expected 32 bytes, found {}", b.len()))?;
        Ok(Self::from_secret(seed))
    }

    /// The secret seed as 64 hex characters, for key files and Secrets only.
    pub fn to_secret_hex(&self) -> String {
        hex::encode(self.key.to_bytes())
    }

    /// Writes the key file with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let err = |message: String| KeyError::File {
            path: path.display().to_string(),
            message,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        use std::io::Write;
        let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
        f.write_all(format!("{}\n", self.to_secret_hex()).as_bytes())
            .map_err(|e| err(e.to_string()))
    }
}

/// A key's state in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// The key origins sign with; also trusted.
    Active,
    /// Chunks signed with it verify.
    Trusted,
    /// Chunks signed with it are refused.
    Revoked,
}

#[derive(Debug, Clone)]
struct RingKey {
    key: VerifyingKey,
    state: KeyState,
}

/// The keys a node knows, their states, and a generation that bumps on every
/// change so nodes can tell whether they have caught up.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<KeyId, RingKey>,
    generation: u64,
}

/// One key in a trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    /// Key id, 16 hex digits (derived from the public key; checked on load).
    pub id: String,
    /// Ed25519 public key, 64 hex digits.
    pub public_key: String,
    pub state: KeyState,
}

/// The key ring as JSON: what the operator writes into a ConfigMap and the
/// admin API serves. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustBundle {
    pub generation: u64,
    pub keys: Vec<TrustedKey>,
}

impl TrustBundle {
    pub fn from_json(text: &str) -> Result<Self, KeyError> {
        serde_json::from_str(text).map_err(|e| KeyError::Bundle(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = hex::decode(hex_key.trim()).map_err(|e| KeyError::BadPublicKey(e.to_string()))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyError::BadPublicKey("expected 32 bytes".into()))?;
    strict_public_key(&arr)
}

/// The one gate every public key passes to enter a key ring (admin API,
/// trust bundle, config): a point that decodes, in canonical encoding, of
/// the prime order a real key has. A small-order key (all-zero, the identity
/// and the other six torsion points) verifies forged signatures under
/// non-strict equations; a key with a torsion component or a non-canonical
/// encoding makes the same key verify differently in different libraries.
pub fn strict_public_key(bytes: &[u8; 32]) -> Result<VerifyingKey, KeyError> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|e| KeyError::BadPublicKey(e.to_string()))?;
    if key.is_weak() {
        return Err(KeyError::BadPublicKey(
            "weak key: a small-order point (all-zero, identity or another torsion point)".into(),
        ));
    }
    let point = key.to_edwards();
    if point.compress().to_bytes() != *bytes {
        return Err(KeyError::BadPublicKey(
            "weak key: not the canonical encoding of its point".into(),
        ));
    }
    if !point.is_torsion_free() {
        return Err(KeyError::BadPublicKey(
            "weak key: the point has a small-order component".into(),
        ));
    }
    Ok(key)
}

/// Whether a signature's `R` passes the checks `verify_strict` makes of it
/// (canonical, not of small order), which the batch equation does not.
/// Byte comparisons only: decompressing `R` to ask cost a field
/// exponentiation per chunk (~10 % of a batch). An `R` that is no point at
/// all passes here and fails the batch, which then judges each alone.
fn strict_r(signature: &Signature) -> bool {
    let r = signature.r_bytes();
    !has_small_order_r(r) && y_is_canonical(r)
}

/// Whether the y coordinate (sign bit cleared) is below p = 2²⁵⁵ − 19. The
/// other non-canonical encodings, x = 0 with the sign bit set, are y = ±1:
/// small-order points, refused by [`has_small_order_r`].
fn y_is_canonical(r: &[u8; 32]) -> bool {
    // p in little-endian: ed ff … ff 7f. y ≥ p only if bytes 1..=30 are all
    // 0xff, byte 31 (sign cleared) is 0x7f and byte 0 is ≥ 0xed.
    !(r[31] & 0x7f == 0x7f && r[1..31].iter().all(|&b| b == 0xff) && r[0] >= 0xed)
}

impl KeyRing {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key origins sign with.
    pub fn active(&self) -> Option<KeyId> {
        self.keys
            .iter()
            .find(|(_, k)| k.state == KeyState::Active)
            .map(|(id, _)| *id)
    }

    pub fn state(&self, id: KeyId) -> Option<KeyState> {
        self.keys.get(&id).map(|k| k.state)
    }

    /// Ids and states of every key.
    pub fn keys(&self) -> Vec<(KeyId, KeyState)> {
        self.keys.iter().map(|(id, k)| (*id, k.state)).collect()
    }

    /// Trusts a public key (idempotent for a key already trusted).
    pub fn add_trusted(&mut self, public_key: [u8; 32]) -> Result<KeyId, KeyError> {
        let key = strict_public_key(&public_key)?;
        let id = KeyId::of_public_key(&public_key);
        if let Some(existing) = self.keys.get(&id) {
            return match existing.state {
                KeyState::Revoked => Err(KeyError::Revoked(id)),
                _ => Ok(id),
            };
        }
        if self.keys.len() >= MAX_KEYS {
            return Err(KeyError::Full);
        }
        self.keys.insert(
            id,
            RingKey {
                key,
                state: KeyState::Trusted,
            },
        );
        self.generation += 1;
        Ok(id)
    }

    /// Makes `id` the signing key; the previous active key stays trusted.
    pub fn activate(&mut self, id: KeyId) -> Result<(), KeyError> {
        match self.keys.get(&id).map(|k| k.state) {
            None => return Err(KeyError::Unknown(id)),
            Some(KeyState::Revoked) => return Err(KeyError::Revoked(id)),
            Some(KeyState::Active) => return Ok(()),
            Some(KeyState::Trusted) => {}
        }
        for k in self.keys.values_mut() {
            if k.state == KeyState::Active {
                k.state = KeyState::Trusted;
            }
        }
        if let Some(k) = self.keys.get_mut(&id) {
            k.state = KeyState::Active;
        }
        self.generation += 1;
        Ok(())
    }

    /// Revokes `id`: chunks signed with it are refused from now on.
    pub fn revoke(&mut self, id: KeyId) -> Result<(), KeyError> {
        match self.keys.get_mut(&id) {
            None => Err(KeyError::Unknown(id)),
            Some(k) if k.state == KeyState::Active => Err(KeyError::ActiveKey(id)),
            Some(k) if k.state == KeyState::Revoked => Ok(()),
            Some(k) => {
                k.state = KeyState::Revoked;
                self.generation += 1;
                Ok(())
            }
        }
    }

    /// Forgets `id` entirely (after revocation has propagated).
    pub fn remove(&mut self, id: KeyId) -> Result<(), KeyError> {
        match self.keys.get(&id).map(|k| k.state) {
            None => Err(KeyError::Unknown(id)),
            Some(KeyState::Active) => Err(KeyError::ActiveKey(id)),
            Some(_) => {
                self.keys.remove(&id);
                self.generation += 1;
                Ok(())
            }
        }
    }

    fn verifying_key(&self, id: KeyId) -> Result<&VerifyingKey, Rejection> {
        match self.keys.get(&id) {
            None => Err(Rejection::UnknownKey(id)),
            Some(k) if k.state == KeyState::Revoked => Err(Rejection::RevokedKey(id)),
            Some(k) => Ok(&k.key),
        }
    }

    pub fn to_bundle(&self) -> TrustBundle {
        TrustBundle {
            generation: self.generation,
            keys: self
                .keys
                .iter()
                .map(|(id, k)| TrustedKey {
                    id: id.to_string(),
                    public_key: hex::encode(k.key.as_bytes()),
                    state: k.state,
                })
                .collect(),
        }
    }

    /// Builds a ring from a bundle, checking every id against its key.
    pub fn from_bundle(bundle: &TrustBundle) -> Result<Self, KeyError> {
        if bundle.keys.len() > MAX_KEYS {
            return Err(KeyError::Full);
        }
        let mut keys = BTreeMap::new();
        let mut active = 0;
        for k in &bundle.keys {
            let key = parse_public_key(&k.public_key)?;
            let id = KeyId::of_public_key(key.as_bytes());
            if id.to_string() != k.id.to_ascii_lowercase() {
                return Err(KeyError::Bundle(format!(
                    "key id {} does not match its public key (expected {id})",
                    k.id
                )));
            }
            active += usize::from(k.state == KeyState::Active);
            keys.insert(
                id,
                RingKey {
                    key,
                    state: k.state,
                },
            );
        }
        if active > 1 {
            return Err(KeyError::Bundle(format!(
                "{active} keys are active; at most one may be"
            )));
        }
        Ok(Self {
            keys,
            generation: bundle.generation,
        })
    }

    /// Replaces the ring with `bundle` unless the bundle is older.
    pub fn apply_bundle(&mut self, bundle: &TrustBundle) -> Result<bool, KeyError> {
        if bundle.generation < self.generation {
            return Err(KeyError::Rollback {
                offered: bundle.generation,
                current: self.generation,
            });
        }
        if bundle.generation == self.generation && *bundle == self.to_bundle() {
            return Ok(false);
        }
        *self = Self::from_bundle(bundle)?;
        Ok(true)
    }
}

/// Why a chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("signature does not verify")]
    Signature,
    #[error("payload digest does not match the header")]
    Digest,
    #[error("payload is {actual} bytes, header says {declared}")]
    Length { declared: u32, actual: usize },
    #[error("signed with unknown key {0}")]
    UnknownKey(KeyId),
    #[error("signed with revoked key {0}")]
    RevokedKey(KeyId),
    #[error("chunk {0} was already accepted (replay)")]
    Replay(ChunkId),
    #[error("chunk is {age_ms} ms old, the limit is {max_ms} ms")]
    Expired { age_ms: u64, max_ms: u64 },
    #[error("chunk timestamp is {ahead_ms} ms in the future, the limit is {max_ms} ms")]
    FromFuture { ahead_ms: u64, max_ms: u64 },
    #[error("bytes are not a well-formed chunk")]
    Malformed,
}

impl Rejection {
    /// A stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Signature => "signature",
            Self::Digest => "digest",
            Self::Length { .. } => "length",
            Self::UnknownKey(_) => "unknown_key",
            Self::RevokedKey(_) => "revoked",
            Self::Replay(_) => "replay",
            Self::Expired { .. } => "expired",
            Self::FromFuture { .. } => "future",
            Self::Malformed => "malformed",
        }
    }
}

/// Freshness limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyConfig {
    /// Oldest acceptable chunk, ms (the chunk TTL plus clock skew).
    pub max_age_ms: u64,
    /// How far in the future a timestamp may be, ms (clock skew).
    pub max_skew_ms: u64,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            max_age_ms: 3_600_000,
            max_skew_ms: 5_000,
        }
    }
}

/// Verifies chunks against a shared key ring.
#[derive(Debug, Clone)]
pub struct Verifier {
    ring: Arc<RwLock<KeyRing>>,
    config: VerifyConfig,
}

impl Verifier {
    pub fn new(ring: Arc<RwLock<KeyRing>>, config: VerifyConfig) -> Self {
        Self { ring, config }
    }

    pub fn ring(&self) -> &Arc<RwLock<KeyRing>> {
        &self.ring
    }

    /// Cheap checks first (length, freshness, key state), then the digest,
    /// then the signature: a flood of junk costs as little as possible.
    fn precheck(&self, chunk: &Chunk, now_ms: u64) -> Result<(), Rejection> {
        let h = &chunk.header;
        if h.len as usize != chunk.payload.len() {
            return Err(Rejection::Length {
                declared: h.len,
                actual: chunk.payload.len(),
            });
        }
        if h.timestamp_ms > now_ms.saturating_add(self.config.max_skew_ms) {
            return Err(Rejection::FromFuture {
                ahead_ms: h.timestamp_ms - now_ms,
                max_ms: self.config.max_skew_ms,
            });
        }
        let age = now_ms.saturating_sub(h.timestamp_ms);
        if age > self.config.max_age_ms {
            return Err(Rejection::Expired {
                age_ms: age,
                max_ms: self.config.max_age_ms,
            });
        }
        Ok(())
    }

    fn check_digest(chunk: &Chunk) -> Result<(), Rejection> {
        if digest(&chunk.payload) != chunk.header.digest {
            return Err(Rejection::Digest);
        }
        Ok(())
    }

    /// Verifies one chunk.
    pub fn verify(&self, chunk: &Chunk, now_ms: u64) -> Result<(), Rejection> {
        self.precheck(chunk, now_ms)?;
        let key = *self.ring.read().verifying_key(chunk.header.key_id)?;
        Self::check_digest(chunk)?;
        let sig = Signature::from_bytes(&chunk.signature);
        key.verify_strict(&chunk.header.signing_bytes(), &sig)
            .map_err(|_| Rejection::Signature)
    }

    /// Verifies a signature over `message` by key `id` (manifests).
    pub fn verify_signature(
        &self,
        id: KeyId,
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), Rejection> {
        let key = *self.ring.read().verifying_key(id)?;
        key.verify_strict(message, &Signature::from_bytes(signature))
            .map_err(|_| Rejection::Signature)
    }

    /// Verifies many chunks with one batched signature check. If the batch
    /// fails, each remaining chunk is checked alone, so good chunks still pass
    /// and bad ones are named.
    pub fn verify_batch(&self, chunks: &[Chunk], now_ms: u64) -> Vec<Result<(), Rejection>> {
        let mut results: Vec<Result<(), Rejection>> = Vec::with_capacity(chunks.len());
        let mut keys = Vec::with_capacity(chunks.len());
        {
            let ring = self.ring.read();
            for c in chunks {
                let r = self
                    .precheck(c, now_ms)
                    .and_then(|()| ring.verifying_key(c.header.key_id).copied());
                match r {
                    Ok(k) => {
                        keys.push(Some(k));
                        results.push(Ok(()));
                    }
                    Err(e) => {
                        keys.push(None);
                        results.push(Err(e));
                    }
                }
            }
        }
        for (c, r) in chunks.iter().zip(results.iter_mut()) {
            if r.is_ok() {
                *r = Self::check_digest(c);
            }
        }
        let pending: Vec<usize> = (0..chunks.len()).filter(|&i| results[i].is_ok()).collect();
        if pending.is_empty() {
            return results;
        }
        let messages: Vec<
            [u8; crate::chunk::CHUNK_SIGNING_CONTEXT.len() + ChunkHeader::ENCODED_LEN],
        > = pending
            .iter()
            .map(|&i| chunks[i].header.signing_bytes())
            .collect();
        let msg_refs: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
        let sigs: Vec<Signature> = pending
            .iter()
            .map(|&i| Signature::from_bytes(&chunks[i].signature))
            .collect();
        let vks: Vec<VerifyingKey> = pending.iter().filter_map(|&i| keys[i]).collect();
        // The batch equation accepts an `R` that `verify_strict` refuses (a
        // small-order or non-canonical point): such a signature is judged
        // alone, strictly, like every signature of a failed batch.
        let all_strict = sigs.iter().all(strict_r);
        if !all_strict || ed25519_dalek::verify_batch(&msg_refs, &sigs, &vks).is_err() {
            for (j, &i) in pending.iter().enumerate() {
                if vks[j].verify_strict(msg_refs[j], &sigs[j]).is_err() {
                    results[i] = Err(Rejection::Signature);
                }
            }
        }
        results
    }
}

/// The y coordinates (sign bit cleared) of every encoding of a point of
/// small order: the eight torsion points have y ∈ {1, −1, 0, y₈, −y₈}, and
/// only y = 0 and y = 1 also have a non-canonical encoding below 2²⁵⁵
/// (p and p + 1). The same list as libsodium's `has_small_order`; a test
/// checks each entry against ed25519-dalek's own `is_weak`.
const SMALL_ORDER_Y: [[u8; 32]; 7] = {
    let mut t = [[0u8; 32]; 7];
    // 0 (order 4)
    // 1 (order 1)
    t[1][0] = 1;
    // y₈ and −y₈ (order 8)
    t[2] = [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ];
    t[3] = [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ];
    // p − 1 (order 2), p (= 0), p + 1 (= 1)
    let mut i = 4;
    while i < 7 {
        let mut b = 1;
        while b < 31 {
            t[i][b] = 0xff;
            b += 1;
        }
        t[i][31] = 0x7f;
        t[i][0] = 0xec + (i as u8 - 4);
        i += 1;
    }
    t
};

/// Whether `R` encodes a point of small order, which `verify_strict`
/// refuses.
fn has_small_order_r(r: &[u8; 32]) -> bool {
    let mut y = *r;
    y[31] &= 0x7f;
    SMALL_ORDER_Y.contains(&y)
}

/// Per-stream anti-replay window: each sequence number is accepted once;
/// numbers older than the window are refused outright (like IPsec's).
#[derive(Debug)]
pub struct ReplayGuard {
    window: u64,
    max_streams: usize,
    streams: HashMap<StreamId, SeqWindow>,
    order: VecDeque<StreamId>,
}

#[derive(Debug)]
struct SeqWindow {
    highest: u64,
    /// Bit i set: `highest - i` was accepted.
    bits: Vec<u64>,
}

impl SeqWindow {
    fn new(window: u64) -> Self {
        Self {
            highest: 0,
            bits: vec![0; window.div_ceil(64) as usize],
        }
    }

    fn bit(&self, back: u64) -> bool {
        let (w, b) = ((back / 64) as usize, back % 64);
        self.bits.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    fn set(&mut self, back: u64) {
        let (w, b) = ((back / 64) as usize, back % 64);
        if let Some(x) = self.bits.get_mut(w) {
            *x |= 1 << b;
        }
    }

    fn shift(&mut self, by: u64) {
        let total = self.bits.len() as u64 * 64;
        if by >= total {
            self.bits.iter_mut().for_each(|x| *x = 0);
            return;
        }
        let (words, bits) = ((by / 64) as usize, by % 64);
        let n = self.bits.len();
        for i in (0..n).rev() {
            let src = i.checked_sub(words);
            let mut v = src.map_or(0, |s| self.bits[s] << bits);
            if bits > 0 {
                if let Some(s) = src.and_then(|s| s.checked_sub(1)) {
                    v |= self.bits[s] >> (64 - bits);
                }
            }
            self.bits[i] = v;
        }
    }
}

/// Replay-guard limits.
#[derive(Debug, Clone, Copy)]
pub struct ReplayConfig {
    /// Sequence numbers remembered per stream.
    pub window: u64,
    /// Streams tracked; the oldest-tracked is forgotten past this.
    pub max_streams: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            window: 4096,
            max_streams: 4096,
        }
    }
}

impl ReplayGuard {
    pub fn new(config: ReplayConfig) -> Self {
        Self {
            window: config.window.max(64),
            max_streams: config.max_streams.max(1),
            streams: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Accepts `id` once; a repeat, or a sequence number older than the
    /// window, is a replay.
    pub fn check_and_record(&mut self, id: ChunkId) -> Result<(), Rejection> {
        if !self.streams.contains_key(&id.stream) {
            if self.streams.len() >= self.max_streams {
                if let Some(old) = self.order.pop_front() {
                    self.streams.remove(&old);
                }
            }
            let mut w = SeqWindow::new(self.window);
            w.highest = id.seq;
            w.set(0);
            self.streams.insert(id.stream, w);
            self.order.push_back(id.stream);
            return Ok(());
        }
        let window = self.window;
        let Some(w) = self.streams.get_mut(&id.stream) else {
            return Ok(());
        };
        if id.seq > w.highest {
            w.shift(id.seq - w.highest);
            w.highest = id.seq;
            w.set(0);
            return Ok(());
        }
        let back = w.highest - id.seq;
        if back >= window || w.bit(back) {
            return Err(Rejection::Replay(id));
        }
        w.set(back);
        Ok(())
    }

    pub fn streams(&self) -> usize {
        self.streams.len()
    }
}

/// Reputation limits.
#[derive(Debug, Clone, Copy)]
pub struct ReputationConfig {
    /// Score at which a peer is banned.
    pub ban_threshold: f64,
    /// How long a ban lasts.
    pub ban_duration: Duration,
    /// Scores halve every `half_life`.
    pub half_life: Duration,
    /// Peers tracked; the best-behaved is forgotten past this.
    pub max_peers: usize,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        Self {
            ban_threshold: 30.0,
            ban_duration: Duration::from_secs(600),
            half_life: Duration::from_secs(60),
            max_peers: 4096,
        }
    }
}

/// What recording a strike did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Banned,
}

impl Verdict {
    pub fn is_banned(self) -> bool {
        self == Self::Banned
    }
}

#[derive(Debug, Clone, Copy)]
struct Standing {
    score: f64,
    at: Instant,
    banned_until: Option<Instant>,
}

/// Strikes per peer, decaying over time; past the threshold, a ban.
#[derive(Debug)]
pub struct Reputation {
    config: ReputationConfig,
    peers: HashMap<PeerId, Standing>,
}

impl Reputation {
    pub fn new(config: ReputationConfig) -> Self {
        Self {
            config,
            peers: HashMap::new(),
        }
    }

    /// How much each kind of bad input costs. Forgery and corruption are
    /// never accidents; stale or early chunks can be clock trouble.
    pub fn weight(rejection: &Rejection) -> f64 {
        match rejection {
            Rejection::Signature | Rejection::Digest | Rejection::Length { .. } => 10.0,
            Rejection::Malformed => 10.0,
            Rejection::RevokedKey(_) | Rejection::Replay(_) => 5.0,
            Rejection::UnknownKey(_) => 2.0,
            Rejection::Expired { .. } | Rejection::FromFuture { .. } => 1.0,
        }
    }

    fn decayed(&self, s: &Standing, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(s.at).as_secs_f64();
        let hl = self.config.half_life.as_secs_f64().max(1e-3);
        s.score * 0.5f64.powf(dt / hl)
    }

    /// Records a strike against `peer`.
    pub fn record(&mut self, peer: PeerId, rejection: &Rejection, now: Instant) -> Verdict {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.config.max_peers {
            // Forget the best-behaved unbanned peer: a flood of new identities
            // cannot push out the record of a bad one.
            let victim = self
                .peers
                .iter()
                .filter(|(_, s)| s.banned_until.is_none_or(|u| u <= now))
                .min_by(|a, b| {
                    self.decayed(a.1, now)
                        .partial_cmp(&self.decayed(b.1, now))
                        .unwrap_or(std::cmp::Ordering::Equal)
                })
                .map(|(p, _)| *p);
            match victim {
                Some(v) => {
                    self.peers.remove(&v);
                }
                None => return Verdict::Ok,
            }
        }
        let current = self
            .peers
            .get(&peer)
            .map(|s| (self.decayed(s, now), s.banned_until))
            .unwrap_or((0.0, None));
        let score = current.0 + Self::weight(rejection);
        let banned_until = if score >= self.config.ban_threshold {
            Some(now + self.config.ban_duration)
        } else {
            current.1
        };
        self.peers.insert(
            peer,
            Standing {
                score,
                at: now,
                banned_until,
            },
        );
        if banned_until.is_some_and(|u| u > now) {
            Verdict::Banned
        } else {
            Verdict::Ok
        }
    }

    pub fn is_banned(&self, peer: PeerId, now: Instant) -> bool {
        self.peers
            .get(&peer)
            .and_then(|s| s.banned_until)
            .is_some_and(|u| u > now)
    }

    /// How many peers are serving a ban at `now`.
    pub fn banned(&self, now: Instant) -> usize {
        self.peers
            .values()
            .filter(|s| s.banned_until.is_some_and(|u| u > now))
            .count()
    }

    /// The peer's current score (0 = spotless).
    pub fn score(&self, peer: PeerId, now: Instant) -> f64 {
        self.peers.get(&peer).map_or(0.0, |s| self.decayed(s, now))
    }

    pub fn tracked(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    const NOW: u64 = 1_800_000_000_000;

    fn signer(seed: u64) -> Signer {
        Signer::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }

    fn ring_with(s: &Signer) -> Arc<RwLock<KeyRing>> {
        let mut ring = KeyRing::new();
        let id = ring.add_trusted(s.public_key()).unwrap();
        ring.activate(id).unwrap();
        Arc::new(RwLock::new(ring))
    }

    fn chunk(s: &Signer, seq: u64) -> Chunk {
        s.sign_chunk(
            ChunkId::new(StreamId(9), seq),
            Bytes::from(vec![seq as u8; 1000]),
            NOW,
        )
    }

    fn verifier(s: &Signer) -> Verifier {
        Verifier::new(ring_with(s), VerifyConfig::default())
    }

    #[test]
    fn a_signed_chunk_verifies() {
        let s = signer(1);
        assert_eq!(verifier(&s).verify(&chunk(&s, 1), NOW), Ok(()));
    }

    #[test]
    fn forged_signature_unknown_and_revoked_keys_are_refused() {
        let s = signer(1);
        let v = verifier(&s);
        let mut c = chunk(&s, 1);
        c.signature[5] ^= 1;
        assert_eq!(v.verify(&c, NOW), Err(Rejection::Signature));

        let stranger = signer(2);
        let c = chunk(&stranger, 1);
        assert_eq!(
            v.verify(&c, NOW),
            Err(Rejection::UnknownKey(stranger.key_id()))
        );

        // A stranger's key id on a chunk signed by another key.
        let mut c = chunk(&stranger, 1);
        c.header.key_id = s.key_id();
        assert_eq!(v.verify(&c, NOW), Err(Rejection::Signature));

        let s2 = signer(3);
        {
            let mut ring = v.ring().write();
            let id2 = ring.add_trusted(s2.public_key()).unwrap();
            ring.activate(id2).unwrap();
            ring.revoke(s.key_id()).unwrap();
        }
        assert_eq!(
            v.verify(&chunk(&s, 1), NOW),
            Err(Rejection::RevokedKey(s.key_id()))
        );
        assert_eq!(v.verify(&chunk(&s2, 1), NOW), Ok(()));
    }

    #[test]
    fn tampered_payload_and_header_are_refused() {
        let s = signer(1);
        let v = verifier(&s);
        let mut c = chunk(&s, 1);
        let mut p = c.payload.to_vec();
        p[10] ^= 0x80;
        c.payload = Bytes::from(p);
        assert_eq!(v.verify(&c, NOW), Err(Rejection::Digest));

        let mut c = chunk(&s, 1);
        c.header.id.seq = 2;
        assert_eq!(v.verify(&c, NOW), Err(Rejection::Signature));

        let mut c = chunk(&s, 1);
        c.payload = c.payload.slice(1..);
        assert!(matches!(v.verify(&c, NOW), Err(Rejection::Length { .. })));
    }

    #[test]
    fn stale_and_future_chunks_are_refused() {
        let s = signer(1);
        let v = Verifier::new(
            ring_with(&s),
            VerifyConfig {
                max_age_ms: 1000,
                max_skew_ms: 100,
            },
        );
        let c = chunk(&s, 1);
        assert!(matches!(
            v.verify(&c, NOW + 1001),
            Err(Rejection::Expired { .. })
        ));
        assert!(matches!(
            v.verify(&c, NOW - 101),
            Err(Rejection::FromFuture { .. })
        ));
        assert_eq!(v.verify(&c, NOW + 1000), Ok(()));
    }

    #[test]
    fn a_batch_mixing_good_and_bad_names_the_bad_ones() {
        let s = signer(1);
        let v = verifier(&s);
        let mut chunks: Vec<Chunk> = (0..10).map(|i| chunk(&s, i)).collect();
        chunks[3].signature[0] ^= 1;
        chunks[7].payload = Bytes::from(vec![0u8; 1000]);
        chunks[8] = chunk(&signer(5), 8);
        let results = v.verify_batch(&chunks, NOW);
        for (i, r) in results.iter().enumerate() {
            match i {
                3 => assert_eq!(r, &Err(Rejection::Signature)),
                7 => assert_eq!(r, &Err(Rejection::Digest)),
                8 => assert!(matches!(r, Err(Rejection::UnknownKey(_)))),
                _ => assert_eq!(r, &Ok(()), "chunk {i}"),
            }
        }
        let good: Vec<Chunk> = (0..5).map(|i| chunk(&s, i)).collect();
        assert!(v.verify_batch(&good, NOW).iter().all(Result::is_ok));
    }

    #[test]
    fn the_small_order_list_is_the_torsion_points() {
        // Every entry, with either sign bit, is a small-order point or no
        // point at all, by ed25519-dalek's own test; y₈ + (−y₈) = p.
        let mut weak = 0;
        for y in SMALL_ORDER_Y {
            for sign in [0u8, 0x80] {
                let mut b = y;
                b[31] |= sign;
                if let Ok(k) = VerifyingKey::from_bytes(&b) {
                    assert!(k.is_weak(), "{b:02x?} is not of small order");
                    weak += 1;
                }
            }
        }
        assert!(weak >= 10, "only {weak} encodings decoded");
        let (a, b) = (SMALL_ORDER_Y[2], SMALL_ORDER_Y[3]);
        let mut sum = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(a[i]) + u16::from(b[i]) + carry;
            sum[i] = v as u8;
            carry = v >> 8;
        }
        assert_eq!(sum, SMALL_ORDER_Y[5], "y8 and -y8 must sum to p");
        // An ordinary signature's R is not in the list.
        let s = signer(1);
        let sig = Signature::from_bytes(&chunk(&s, 1).signature);
        assert!(!has_small_order_r(sig.r_bytes()));
    }

    /// The byte checks decide exactly what decompressing `R` would: on
    /// every small-order and non-canonical encoding near the edges, and on
    /// real signatures' `R`s.
    #[test]
    fn strict_r_by_bytes_matches_decompressing_r() {
        let reference = |r: &[u8; 32]| {
            VerifyingKey::from_bytes(r)
                .is_ok_and(|k| !k.is_weak() && k.to_edwards().compress().to_bytes() == *r)
        };
        let mut cases: Vec<[u8; 32]> = Vec::new();
        for y in SMALL_ORDER_Y {
            for sign in [0u8, 0x80] {
                let mut b = y;
                b[31] |= sign;
                cases.push(b);
            }
        }
        // Every y from p − 40 to 2²⁵⁵ − 1, both signs: the non-canonical band.
        for low in 0xc5u8..=0xff {
            for sign in [0u8, 0x80] {
                let mut b = [0xffu8; 32];
                b[0] = low;
                b[31] = 0x7f | sign;
                cases.push(b);
            }
        }
        let s = signer(3);
        for i in 0..200 {
            let sig = chunk(&s, i).signature;
            let mut r = [0u8; 32];
            r.copy_from_slice(&sig[..32]);
            cases.push(r);
        }
        for r in cases {
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&r);
            let sig = Signature::from_bytes(&sig);
            // An R that is no point fails the batch and is judged alone:
            // the byte check may pass it, the reference may not.
            if VerifyingKey::from_bytes(&r).is_err() {
                continue;
            }
            assert_eq!(strict_r(&sig), reference(&r), "R = {r:02x?}");
        }
    }

    #[test]
    fn replay_window_accepts_each_sequence_once() {
        let mut g = ReplayGuard::new(ReplayConfig {
            window: 128,
            max_streams: 2,
        });
        let id = |seq| ChunkId::new(StreamId(1), seq);
        assert!(g.check_and_record(id(10)).is_ok());
        assert!(g.check_and_record(id(12)).is_ok());
        assert!(g.check_and_record(id(11)).is_ok());
        assert_eq!(g.check_and_record(id(11)), Err(Rejection::Replay(id(11))));
        assert_eq!(g.check_and_record(id(12)), Err(Rejection::Replay(id(12))));
        assert!(g.check_and_record(id(500)).is_ok());
        // 12 is now far behind the window: refused without memory of it.
        assert!(g.check_and_record(id(300)).is_err());
        assert!(g.check_and_record(id(450)).is_ok());
        assert!(g.check_and_record(id(450)).is_err());
        // Streams are bounded.
        g.check_and_record(ChunkId::new(StreamId(2), 0)).unwrap();
        g.check_and_record(ChunkId::new(StreamId(3), 0)).unwrap();
        assert_eq!(g.streams(), 2);
    }

    #[test]
    fn seq_window_shift_matches_a_naive_model() {
        let mut g = ReplayGuard::new(ReplayConfig {
            window: 200,
            max_streams: 1,
        });
        let mut seen = std::collections::HashSet::new();
        let mut highest = 0u64;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for _ in 0..5000 {
            let seq = highest.saturating_sub(250) + rand::RngCore::next_u64(&mut rng) % 300;
            let want_ok =
                seen.is_empty() || seq > highest || (highest - seq < 200 && !seen.contains(&seq));
            let got = g.check_and_record(ChunkId::new(StreamId(1), seq));
            assert_eq!(got.is_ok(), want_ok, "seq {seq} highest {highest}");
            if got.is_ok() {
                seen.insert(seq);
                highest = highest.max(seq);
            }
        }
    }

    #[test]
    fn key_ring_state_machine_and_generation() {
        let (a, b) = (signer(1), signer(2));
        let mut ring = KeyRing::new();
        let ida = ring.add_trusted(a.public_key()).unwrap();
        assert_eq!(ring.generation(), 1);
        ring.activate(ida).unwrap();
        assert_eq!(ring.active(), Some(ida));
        assert_eq!(ring.revoke(ida), Err(KeyError::ActiveKey(ida)));
        let idb = ring.add_trusted(b.public_key()).unwrap();
        ring.activate(idb).unwrap();
        assert_eq!(ring.state(ida), Some(KeyState::Trusted));
        ring.revoke(ida).unwrap();
        assert_eq!(ring.activate(ida), Err(KeyError::Revoked(ida)));
        assert_eq!(
            ring.add_trusted(a.public_key()),
            Err(KeyError::Revoked(ida))
        );
        ring.remove(ida).unwrap();
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.generation(), 6);
        let unknown = KeyId(1);
        assert_eq!(ring.activate(unknown), Err(KeyError::Unknown(unknown)));
    }

    #[test]
    fn bundles_round_trip_and_refuse_rollback_and_bad_ids() {
        let (a, b) = (signer(1), signer(2));
        let mut ring = KeyRing::new();
        let ida = ring.add_trusted(a.public_key()).unwrap();
        ring.activate(ida).unwrap();
        ring.add_trusted(b.public_key()).unwrap();
        let bundle = ring.to_bundle();
        let json = bundle.to_json();
        assert!(!json.contains(&hex::encode(a.key.to_bytes())));
        let back = KeyRing::from_bundle(&TrustBundle::from_json(&json).unwrap()).unwrap();
        assert_eq!(back.to_bundle(), bundle);

        let mut newer = ring.clone();
        newer.revoke(newer.keys()[0].0).ok();
        let mut old = bundle.clone();
        old.generation = 1;
        assert!(matches!(
            newer.apply_bundle(&old),
            Err(KeyError::Rollback { .. })
        ));
        let mut forged = bundle.clone();
        forged.keys[0].id = "0000000000000001".into();
        assert!(matches!(
            KeyRing::from_bundle(&forged),
            Err(KeyError::Bundle(_))
        ));
    }

    /// Compressed encodings of small-order points: the identity, the
    /// all-zero encoding (order 4) and an order-8 point.
    const WEAK_KEYS: [[u8; 32]; 3] = {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let order8 = [
            0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10,
            0x67, 0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77,
            0x92, 0xac, 0x03, 0x7a,
        ];
        [identity, [0u8; 32], order8]
    };

    #[test]
    fn weak_public_keys_are_refused_by_the_ring_and_in_bundles() {
        for weak in WEAK_KEYS {
            let mut ring = KeyRing::new();
            assert!(
                matches!(ring.add_trusted(weak), Err(KeyError::BadPublicKey(m)) if m.contains("weak")),
                "{} was trusted",
                hex::encode(weak)
            );
            assert!(ring.is_empty());
            let bundle = TrustBundle {
                generation: 1,
                keys: vec![TrustedKey {
                    id: KeyId::of_public_key(&weak).to_string(),
                    public_key: hex::encode(weak),
                    state: KeyState::Active,
                }],
            };
            assert!(matches!(
                KeyRing::from_bundle(&bundle),
                Err(KeyError::BadPublicKey(_))
            ));
        }
        // A real key plus a small-order point: has a torsion component.
        let real = signer(5).key.verifying_key().to_edwards();
        let torsion = VerifyingKey::from_bytes(&WEAK_KEYS[2])
            .unwrap()
            .to_edwards();
        let mixed = (real + torsion).compress().to_bytes();
        assert!(KeyRing::new().add_trusted(mixed).is_err());
        assert!(KeyRing::new().add_trusted(signer(5).public_key()).is_ok());
    }

    #[test]
    fn batch_verification_is_as_strict_as_single_verification() {
        use sha2::{Digest as _, Sha512};
        let s = signer(6);
        let v = verifier(&s);
        // R = identity and s = k·a: the cofactorless batch equation
        // [s]B = R + [k]A holds, but verify_strict refuses a small-order R.
        let mut odd = chunk(&s, 1);
        let a = s.key.to_scalar();
        let mut r = [0u8; 32];
        r[0] = 1;
        let message = odd.header.signing_bytes();
        let mut h = Sha512::new();
        h.update(r);
        h.update(s.public_key());
        h.update(message);
        let k = curve25519_dalek::Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        odd.signature[..32].copy_from_slice(&r);
        odd.signature[32..].copy_from_slice((k * a).as_bytes());
        assert_eq!(v.verify(&odd, NOW), Err(Rejection::Signature));
        let good = chunk(&s, 2);
        assert_eq!(
            v.verify_batch(&[odd, good], NOW),
            vec![Err(Rejection::Signature), Ok(())]
        );
    }

    #[test]
    fn reputation_bans_past_threshold_and_decays() {
        let mut r = Reputation::new(ReputationConfig {
            ban_threshold: 30.0,
            ban_duration: Duration::from_secs(10),
            half_life: Duration::from_secs(1),
            max_peers: 2,
        });
        let t0 = Instant::now();
        let p = PeerId(1);
        assert_eq!(r.record(p, &Rejection::Signature, t0), Verdict::Ok);
        assert_eq!(r.record(p, &Rejection::Signature, t0), Verdict::Ok);
        assert_eq!(r.record(p, &Rejection::Digest, t0), Verdict::Banned);
        assert!(r.is_banned(p, t0 + Duration::from_secs(9)));
        assert!(!r.is_banned(p, t0 + Duration::from_secs(11)));
        // Decay: a strike long ago is nearly forgotten.
        let q = PeerId(2);
        r.record(q, &Rejection::Signature, t0);
        assert!(r.score(q, t0 + Duration::from_secs(10)) < 0.1);
        // Bounded: a third peer pushes out the best-behaved unbanned one.
        r.record(
            PeerId(3),
            &Rejection::Expired {
                age_ms: 0,
                max_ms: 0,
            },
            t0,
        );
        assert_eq!(r.tracked(), 2);
        assert!(r.is_banned(p, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn reputation_with_time_moving_bans_a_burst_but_not_a_trickle() {
        // The defaults the node runs with: forgery costs 10, ban at 30,
        // scores halve every 60 s, a ban lasts 600 s.
        let mut r = Reputation::new(ReputationConfig::default());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Forgeries 10 s apart: three have decayed below the threshold
        // (26.9), the fourth crosses it (33.9).
        let p = PeerId(1);
        for s in [0, 10, 20] {
            assert_eq!(r.record(p, &Rejection::Signature, at(s)), Verdict::Ok);
        }
        assert_eq!(r.record(p, &Rejection::Signature, at(30)), Verdict::Banned);
        // The ban runs from the strike that earned it, while the score decays.
        assert!(r.is_banned(p, at(30 + 599)));
        assert!(!r.is_banned(p, at(30 + 601)));
        assert!(r.score(p, at(30 + 601)) < 0.05);
        // One forgery a minute never bans: the score settles near 20.
        let q = PeerId(2);
        for minute in 0..30 {
            assert_eq!(
                r.record(q, &Rejection::Signature, at(minute * 60)),
                Verdict::Ok,
                "banned at minute {minute}"
            );
        }
        let settled = r.score(q, at(29 * 60));
        assert!((19.0..20.0).contains(&settled), "score {settled}");
    }

    #[test]
    fn key_files_round_trip_and_refuse_loose_permissions() {
        let dir = std::env::temp_dir().join(format!("dcdn-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("signing.key");
        let s = signer(7);
        s.save(&path).unwrap();
        assert_eq!(Signer::load(&path).unwrap().key_id(), s.key_id());
        assert!(!format!("{s:?}").contains(&hex::encode(s.key.to_bytes())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(
                Signer::load(&path)
                    .unwrap_err()
                    .to_string()
                    .contains("chmod 600")
            );
        }
    }

    proptest! {
        #[test]
        fn any_single_bit_flip_is_refused(bit in 0usize..((69 + 64 + 300) * 8)) {
            let s = signer(1);
            let v = verifier(&s);
            let c = s.sign_chunk(ChunkId::new(StreamId(3), 4), Bytes::from(vec![5u8; 300]), NOW);
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&c.header.encode());
            bytes.extend_from_slice(&c.signature);
            bytes.extend_from_slice(&c.payload);
            bytes[bit / 8] ^= 1 << (bit % 8);
            let decoded = ChunkHeader::decode(&bytes[..69]);
            if let Ok(header) = decoded {
                let mut signature = [0u8; 64];
                signature.copy_from_slice(&bytes[69..133]);
                let tampered = Chunk { header, signature, payload: Bytes::copy_from_slice(&bytes[133..]) };
                prop_assert!(v.verify(&tampered, NOW).is_err());
            }
        }
    }
}
