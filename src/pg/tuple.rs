//! A row being rewritten by a BEFORE trigger: deformed once into datums, changed in place, formed
//! once. (pgrx's `PgHeapTuple::set_by_name` copies the whole row on every call.) And the checks
//! that come before any datum is read: the trigger runs on its own custos table, and each column
//! has the type it is read as.

use crate::error::raise;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, PgTupleDesc};
use std::ffi::CStr;

/// The attributes of a tuple descriptor, in column order. (PostgreSQL 18 keeps compact
/// attributes before the full ones, so the array is no field of the descriptor any more.)
///
/// # Safety
/// `tupdesc` must be a valid tuple descriptor that outlives the slice.
pub unsafe fn attributes<'a>(tupdesc: pg_sys::TupleDesc) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: natts attributes follow one another in memory from the first.
    unsafe {
        let natts = (*tupdesc).natts as usize;
        if natts == 0 {
            return &[];
        }
        #[cfg(feature = "pg18")]
        let first = pg_sys::TupleDescAttr(tupdesc, 0).cast_const();
        #[cfg(not(feature = "pg18"))]
        let first = (*tupdesc).attrs.as_ptr();
        std::slice::from_raw_parts(first, natts)
    }
}

/// The oid of a relation's primary-key index (PostgreSQL 18 asks whether a deferrable one will
/// do: not for custos, whose keys are immediate).
///
/// # Safety
/// `rel` must be an open relation.
pub unsafe fn primary_key_index(rel: pg_sys::Relation) -> pg_sys::Oid {
    // SAFETY: the caller passes an open relation.
    unsafe {
        #[cfg(feature = "pg18")]
        return pg_sys::RelationGetPrimaryKeyIndex(rel, false);
        #[cfg(not(feature = "pg18"))]
        return pg_sys::RelationGetPrimaryKeyIndex(rel);
    }
}

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

/// The oid of table `name` in schema custos; InvalidOid if there is none.
pub fn custos_relid(name: &CStr) -> pg_sys::Oid {
    // SAFETY: catalog lookups inside a transaction; missing objects give InvalidOid.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"custos".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return pg_sys::InvalidOid;
        }
        pg_sys::get_relname_relid(name.as_ptr(), nsp)
    }
}

/// Refuses to run a custos trigger function on any table but `custos.<name>`: attached to a
/// look-alike table (a temporary one, say), it would read and chain what an attacker chose.
///
/// # Safety
/// `rel` must be an open relation.
pub unsafe fn require_custos_table(rel: pg_sys::Relation, name: &CStr, function: &str) {
    // SAFETY: the caller passes an open relation.
    let relid = unsafe { (*rel).rd_id };
    if relid != custos_relid(name) {
        raise(
            PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            format!(
                "{function} is the trigger of custos.{} and runs on no other table",
                name.to_string_lossy()
            ),
            None,
        );
    }
}

/// The position of each named column in `tupdesc`, refusing a missing column or one of another
/// type than expected.
///
/// # Safety
/// `tupdesc` must be a valid tuple descriptor.
pub unsafe fn typed_columns<const N: usize>(
    tupdesc: pg_sys::TupleDesc,
    table: &str,
    expected: &[(&str, pg_sys::Oid); N],
) -> [usize; N] {
    let mut pos = [usize::MAX; N];
    // SAFETY: the caller passes a valid descriptor; natts attributes follow it.
    unsafe {
        for (i, a) in attributes(tupdesc).iter().enumerate() {
            if a.attisdropped {
                continue;
            }
            let name = CStr::from_ptr(a.attname.data.as_ptr()).to_bytes();
            if let Some(k) = expected.iter().position(|(n, _)| n.as_bytes() == name) {
                if a.atttypid != expected[k].1 {
                    raise(
                        PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                        format!(
                            "column \"{}\" of {table} has an unexpected type",
                            expected[k].0
                        ),
                        Some("custos' tables must keep the column types custos created them with"),
                    );
                }
                pos[k] = i;
            }
        }
    }
    if let Some(missing) = pos.iter().position(|p| *p == usize::MAX) {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("{table} has no column \"{}\"", expected[missing].0),
            None,
        );
    }
    pos
}

/// Column positions of a custos table, checked once per relation and tuple descriptor (any ALTER
/// of the table makes a new descriptor, and so a new check).
pub struct Layout<const N: usize>(std::cell::Cell<Option<(pg_sys::Oid, usize, [usize; N])>>);

impl<const N: usize> Default for Layout<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Layout<N> {
    pub const fn new() -> Self {
        Layout(std::cell::Cell::new(None))
    }

    /// The positions of `expected`'s columns in `rel`, which must be `custos.<table>`.
    ///
    /// # Safety
    /// `rel` must be an open relation.
    pub unsafe fn of(
        &self,
        rel: pg_sys::Relation,
        table: &CStr,
        function: &str,
        expected: &[(&str, pg_sys::Oid); N],
    ) -> [usize; N] {
        // SAFETY: the caller passes an open relation, whose descriptor is valid.
        unsafe {
            let (relid, key) = ((*rel).rd_id, (*rel).rd_att as usize);
            if let Some((r, k, pos)) = self.0.get() {
                if r == relid && k == key {
                    return pos;
                }
            }
            require_custos_table(rel, table, function);
            let label = format!("custos.{}", table.to_string_lossy());
            let pos = typed_columns((*rel).rd_att, &label, expected);
            self.0.set(Some((relid, key, pos)));
            pos
        }
    }
}
