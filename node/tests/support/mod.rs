#![allow(unreachable_pub)]
pub mod cluster;
pub mod impair;
