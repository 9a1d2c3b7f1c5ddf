//! DCDN node library: the parts of an origin, relay or edge node.
//!
//! Each module owns one part of `ARCHITECTURE.md`. The protocol cores
//! (`fec`, `crypto`, `p2p`, `store`) take time and randomness as arguments and
//! do no I/O, so they are driven deterministically by tests and by the
//! simulator; the transport and HTTP servers are thin shells around them.

pub mod admin;
pub mod bench;
pub mod chunk;
pub mod client;
pub mod config;
pub mod crypto;
pub mod fec;
pub mod metrics;
pub mod p2p;
pub mod roles;
pub mod sim;
pub mod store;
pub mod transport;
pub mod up;
