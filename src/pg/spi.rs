//! Reading through SPI under a fresh snapshot (see [`fresh_rows`]).

use super::backend::as_superuser;
use pgrx::prelude::*;

fn failed(e: impl std::fmt::Display) -> ! {
    crate::error::raise(
        pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("fresh read failed: {e}"),
        None,
    )
}

/// The rows of a query, each turned into `R` by `each` (the datums are valid only inside it).
/// Read as the superuser, with read-only SPI (no transaction id: it works on a hot standby and
/// costs a primary nothing) and a snapshot taken now, not the transaction's: what a committed
/// change removed is never read back by a transaction whose own snapshot is older (custos' key
/// look-ups depend on it).
pub fn fresh_rows<R>(
    query: &std::ffi::CStr,
    args: &[(pg_sys::Oid, pg_sys::Datum)],
    mut each: impl FnMut(&[Option<pg_sys::Datum>]) -> R,
) -> Vec<R> {
    as_superuser(|| {
        // SAFETY: backend thread inside a transaction. SPI is connected and finished here; an
        // ERROR in between unwinds through the transaction abort, which cleans SPI up. The
        // latest snapshot is pushed by SPI itself for the query; result rows are read before
        // SPI_finish frees them.
        unsafe {
            if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                failed("SPI_connect failed");
            }
            let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.0).collect();
            let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.1).collect();
            let plan = pg_sys::SPI_prepare(query.as_ptr(), types.len() as i32, types.as_mut_ptr());
            if plan.is_null() {
                failed("SPI_prepare failed");
            }
            let status = pg_sys::SPI_execute_snapshot(
                plan,
                values.as_mut_ptr(),
                std::ptr::null(),
                pg_sys::GetLatestSnapshot(),
                std::ptr::null_mut(),
                true,
                false,
                0,
            );
            if status != pg_sys::SPI_OK_SELECT as i32 {
                failed(format!("query returned SPI status {status}"));
            }
            let table = pg_sys::SPI_tuptable;
            let mut out = Vec::new();
            for i in 0..pg_sys::SPI_processed as usize {
                let tuple = *(*table).vals.add(i);
                let natts = (*(*table).tupdesc).natts;
                let row: Vec<Option<pg_sys::Datum>> = (1..=natts)
                    .map(|col| {
                        let mut null = false;
                        let d = pg_sys::SPI_getbinval(tuple, (*table).tupdesc, col, &mut null);
                        (!null).then_some(d)
                    })
                    .collect();
                out.push(each(&row));
            }
            pg_sys::SPI_finish();
            out
        }
    })
}

/// A column of a row from [`fresh_rows`], copied out of SPI's memory.
pub fn column<T: FromDatum>(row: &[Option<pg_sys::Datum>], i: usize) -> Option<T> {
    // SAFETY: the datum comes from a column of type T (each query below names its columns).
    row.get(i)
        .copied()
        .flatten()
        .and_then(|d| unsafe { T::from_datum(d, false) })
}
