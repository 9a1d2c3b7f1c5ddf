#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unreachable_pub)]
pub mod cluster;
pub mod impair;
