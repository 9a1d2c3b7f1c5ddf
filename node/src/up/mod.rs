//! `dcdn up`: a whole DCDN on one machine — origin, relays and edges as
//! separate processes on 127.0.0.1, with a throwaway CA and signing key.

pub mod check;
pub mod procs;
