//! DCDN node library: the parts of an origin, relay or edge node.
//!
//! Each module owns one part of `ARCHITECTURE.md`. The protocol cores
//! (`chunk`, `fec`, `crypto`, `p2p`, `store`) live in the `dcdn-core` crate,
//! which depends on no async runtime, socket or HTTP library; they are
//! re-exported here under their old paths so `crate::fec` and
//! `dcdn_node::chunk` name the same items the simulator drives. The transport
//! and HTTP servers are thin shells around them.

pub mod admin;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod h3_client;
pub mod logging;
pub mod metrics;
pub mod roles;
#[cfg(feature = "sim")]
pub mod sim;
pub mod transport;
pub mod up;

pub use dcdn_core::{chunk, crypto, fec, p2p, store};

/// `0.1.0 (commit 1a2b3c4d5e6f)`: what `--version` and `dcdn_build_info` say.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BUILD_GIT_COMMIT"),
    ")"
);

/// The commit this binary was built from, or `unknown`.
pub const COMMIT: &str = env!("BUILD_GIT_COMMIT");
