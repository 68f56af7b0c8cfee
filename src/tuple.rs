//! A row being rewritten by a BEFORE trigger: deformed once into datums, changed in place, formed
//! once. (pgrx's `PgHeapTuple::set_by_name` copies the whole row on every call.)

use crate::error::raise;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, PgTupleDesc};

pub struct Row {
    pub values: Vec<pg_sys::Datum>,
    pub nulls: Vec<bool>,
}

impl Row {
    /// # Safety
    /// `tuple` must be a valid heap tuple described by `tupdesc`.
    pub unsafe fn deform(tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> Row {
        unsafe {
            let natts = (*tupdesc).natts as usize;
            let mut row = Row {
                values: vec![pg_sys::Datum::from(0usize); natts],
                nulls: vec![true; natts],
            };
            pg_sys::heap_deform_tuple(
                tuple,
                tupdesc,
                row.values.as_mut_ptr(),
                row.nulls.as_mut_ptr(),
            );
            row
        }
    }

    pub fn set(&mut self, i: usize, d: Option<pg_sys::Datum>) {
        self.nulls[i] = d.is_none();
        self.values[i] = d.unwrap_or(pg_sys::Datum::from(0usize));
    }

    /// The row as a new heap tuple, for a trigger to return.
    ///
    /// # Safety
    /// `tupdesc` must describe the row, and every datum must be valid for its column.
    pub unsafe fn form<'a>(
        &self,
        tupdesc: pg_sys::TupleDesc,
        what: &str,
    ) -> PgHeapTuple<'a, AllocatedByRust> {
        unsafe {
            let desc = PgTupleDesc::from_pg_unchecked(tupdesc);
            PgHeapTuple::from_datums(
                desc,
                self.values
                    .iter()
                    .zip(self.nulls.iter())
                    .map(|(v, n)| (!n).then_some(*v)),
            )
            .unwrap_or_else(|e| {
                raise(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("could not form the {what} row: {e}"),
                    None,
                )
            })
        }
    }
}
