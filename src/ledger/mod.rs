//! The tamper-evident, append-only audit ledger: per-tenant SHA-256 hash chains computed at insert
//! time, verification that names the first broken link, and signed checkpoints.

pub mod chain;
pub mod checkpoint;
pub mod verify;
