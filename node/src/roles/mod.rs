//! Origin, relay and edge: the wiring of the node's parts into running roles.
//!
//! `node` holds the shared state and the one gate every chunk passes
//! (`Shared::accept_chunk`); `mesh` runs peer sessions; `run` starts and
//! stops a node; `ingest` and `serve` are the HTTP faces of origins and
//! edges; `discovery` finds peers; `flight` keeps fetches single.

pub mod certs;
pub mod discovery;
pub mod flight;
pub mod framing;
pub mod hls;
pub mod http3;
pub mod ingest;
pub mod listener;
pub mod live;
pub mod live_http;
pub mod mesh;
pub mod node;
pub mod origin_store;
pub mod run;
pub mod serve;
pub mod settings;
pub mod swarm;
pub mod uploads;
pub mod upstream;
