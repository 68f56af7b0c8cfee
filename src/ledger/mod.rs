//! The tamper-evident, append-only audit ledger: per-tenant SHA-256 hash chains computed at insert
//! time, verification that names the first broken link, and signed checkpoints.

// The ledger's format, its verifier and checkpoint texts are pure: they live in custos-core.
pub use custos_core::ledger::{chain, checkpoint, verify};

pub mod access;
pub mod append;
pub mod event_id;
pub mod head;
pub mod row;

pub mod api;
pub mod guard;
pub mod trigger;

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
#[allow(non_snake_case, unused_variables)]
mod tests {
    include!("db_tests.rs");
}
