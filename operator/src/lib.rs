//! The DCDN operator: the `DcdnCluster` resource, the pure builders of what
//! it wants, key material and rotation, and the reconciler that applies it.

pub mod build;
pub mod crd;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod node_admin;
pub mod reconcile;
pub mod rotation;
pub mod serve;
