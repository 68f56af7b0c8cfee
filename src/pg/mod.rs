//! Datum-level code: jsonb read and written in its binary form, numerics printed and made,
//! tuples deformed and formed, varlena bytes, relations checked before their datums are read.
//! Imports no capability: the capabilities build on it.

pub mod jsonb;
pub mod locks;
pub mod numeric;
pub mod tuple;
pub mod varlena;

/// Whether this server is a hot standby (in recovery): it can read, not write.
pub fn recovery_in_progress() -> bool {
    // SAFETY: reads shared state of the startup process, on the backend thread.
    unsafe { pgrx::pg_sys::RecoveryInProgress() }
}
