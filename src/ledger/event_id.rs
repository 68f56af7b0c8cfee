//! `custos.event_seq(id)`: the seq an event id carries (see `custos_core::ledger::event_id`).
#![deny(unsafe_code)]

pub use custos_core::ledger::event_id::*;
use pgrx::prelude::*;

/// The seq an event id carries (NULL for ids custos did not make so): what custos.event uses to
/// find the event through the primary key.
#[pg_extern(immutable, strict, parallel_safe)]
fn event_seq(id: pgrx::Uuid) -> Option<i64> {
    seq_of(id.as_bytes())
}
