//! Catching a PostgreSQL error where the work must go on (a background worker's loop): the
//! work runs in a subtransaction, rolled back if it raises, as PL/Python's `plpy.subtransaction`
//! does; the caller gets the error's SQLSTATE and message.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;
use std::panic::AssertUnwindSafe;

/// An error caught by [`catching`].
#[derive(Debug, Clone)]
pub struct Caught {
    /// The five-character SQLSTATE (XX000 for a Rust panic).
    pub sqlstate: String,
    pub message: String,
}

fn caught(e: CaughtError) -> Caught {
    let report = match &e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    let code = report.sql_error_code() as i32;
    // SQLSTATEs are packed six bits a character (PGSIXBIT), first character lowest.
    let sqlstate: String = (0..5)
        .map(|i| char::from(b'0' + ((code >> (6 * i)) & 0x3f) as u8))
        .collect();
    Caught {
        sqlstate,
        message: report.message().to_string(),
    }
}

/// Runs `f` in a subtransaction of the current transaction: committed if it returns, rolled back
/// (locks, snapshots, memory and all) if it raises. Needs a transaction.
#[allow(unsafe_code)]
pub fn catching<R>(f: impl FnOnce() -> R) -> Result<R, Caught> {
    // SAFETY: the same sequence as PL/Python's subtransactions: begin, restore the caller's
    // memory context, then release or roll back and restore the context and resource owner.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let result = PgTryBuilder::new(AssertUnwindSafe(|| Ok(f())))
            .catch_others(|e| Err(caught(e)))
            .execute();
        if result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        result
    }
}
