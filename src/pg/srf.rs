//! Set-returning functions in materialize mode: rows go straight into the executor's tuplestore
//! (which spills to disk past work_mem), with no per-row function call as value-per-call costs.

use pgrx::pg_sys;

/// The result of a `RETURNS TABLE (bigint, double precision)` function being filled.
pub struct Int8Float8Rows {
    store: *mut pg_sys::Tuplestorestate,
    desc: pg_sys::TupleDesc,
}

impl Int8Float8Rows {
    /// Sets the call up for materialize mode.
    ///
    /// # Safety
    /// `fcinfo` is the call of a set-returning function declared to return (bigint, double
    /// precision) rows, called in a context that accepts a materialized set.
    pub unsafe fn materialize(fcinfo: pg_sys::FunctionCallInfo) -> Int8Float8Rows {
        // SAFETY: as promised by the caller; InitMaterializedSRF raises ERROR when the context
        // does not accept a set, and builds the tuplestore in the per-query memory context.
        unsafe {
            pg_sys::InitMaterializedSRF(fcinfo, 0);
            let info = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
            Int8Float8Rows {
                store: (*info).setResult,
                desc: (*info).setDesc,
            }
        }
    }

    pub fn push(&mut self, a: i64, b: f64) {
        let mut values = [pg_sys::Datum::from(a), pg_sys::Datum::from(b.to_bits())];
        let mut nulls = [false, false];
        // SAFETY: the tuplestore and descriptor of materialize(); both columns are by-value
        // 8-byte types, as the descriptor says. The tuplestore copies the values.
        unsafe {
            pg_sys::tuplestore_putvalues(
                self.store,
                self.desc,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            )
        };
    }
}
