//! DCDN protocol cores: the decisions every node and the simulator share.
//!
//! `chunk` (ids, signed headers, the wire format of every frame), `fec`
//! (Reed–Solomon, bounded group assembly, adaptive parity), `crypto` (signer,
//! key ring, verifier, reputation), `p2p` (the tit-for-tat choker and swarm
//! decisions) and `store` (the byte-budgeted, TTL-expiring chunk store).
//!
//! Nothing here opens a socket, spawns a task or reads the clock: time and
//! randomness are arguments. This crate's dependency list keeps that true —
//! no async runtime, socket or HTTP crate may be added to it — so the node's
//! runtime (`dcdn-node`) and `dcdn sim` drive exactly the same code.

pub mod chunk;
pub mod crypto;
pub mod fec;
pub mod p2p;
pub mod store;
