//! The DCDN operator: reconciles a `DcdnCluster` into origin, relay and
//! edge tiers.

pub mod build;
pub mod crd;
