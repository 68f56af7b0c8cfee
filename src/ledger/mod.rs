//! The tamper-evident, append-only audit ledger: per-tenant SHA-256 hash chains computed at insert
//! time, verification that names the first broken link, and signed checkpoints.

pub mod capture;
pub mod chain;
pub mod changes;
pub mod checkpoint;
pub mod head;
pub mod row;
pub mod verify;

pub(crate) mod api;
pub mod guard;
pub(crate) mod trigger;

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
#[allow(non_snake_case, unused_variables)]
mod tests {
    include!("db_tests.rs");
}
