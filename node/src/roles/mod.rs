//! Origin, relay and edge: the wiring of the node's parts into running roles.

pub mod discovery;
pub mod flight;
pub mod ingest;
pub mod serve;
