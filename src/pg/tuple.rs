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

/// The new row of a BEFORE INSERT or UPDATE row trigger on `custos.<table>`, with the columns of
/// `expected` checked by type: read and written by their index in `expected`, each accessor
/// refusing a column of another type, so that no datum is ever read as what it is not.
pub struct TriggerRow<const N: usize> {
    row: Row,
    tupdesc: pg_sys::TupleDesc,
    pos: [usize; N],
    types: [pg_sys::Oid; N],
}

impl<const N: usize> TriggerRow<N> {
    /// The row the trigger is about to write; raises unless it fires as a row-level BEFORE
    /// INSERT or UPDATE trigger on `custos.<table>` with the expected columns.
    pub fn of(
        trigger: &PgTrigger<'_>,
        layout: &Layout<N>,
        table: &CStr,
        function: &str,
        expected: &[(&str, pg_sys::Oid); N],
    ) -> Self {
        let protocol = || -> ! {
            raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                format!("{function} is a BEFORE INSERT OR UPDATE ... FOR EACH ROW trigger"),
                None,
            )
        };
        if !matches!(trigger.level(), PgTriggerLevel::Row)
            || !matches!(trigger.when(), Ok(PgTriggerWhen::Before))
        {
            protocol();
        }
        let td = trigger.trigger_data();
        let update = matches!(trigger.op(), Ok(PgTriggerOperation::Update));
        let tuple = if update {
            td.tg_newtuple
        } else {
            td.tg_trigtuple
        };
        if tuple.is_null() {
            protocol();
        }
        // SAFETY: a row-level BEFORE trigger (checked above): its relation and new tuple are
        // valid for the call, and the layout checks the relation and its column types.
        unsafe {
            let pos = layout.of(td.tg_relation, table, function, expected);
            let tupdesc = (*td.tg_relation).rd_att;
            TriggerRow {
                row: Row::deform(tuple, tupdesc),
                tupdesc,
                pos,
                types: expected.map(|(_, t)| t),
            }
        }
    }

    fn datum(&self, k: usize, typ: pg_sys::Oid) -> Option<pg_sys::Datum> {
        if self.types[k] != typ {
            raise(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!("column {k} of the trigger's row is read as another type than its own"),
                None,
            );
        }
        let i = self.pos[k];
        (!self.row.nulls[i]).then_some(self.row.values[i])
    }

    pub fn flag(&self, k: usize) -> bool {
        self.datum(k, pg_sys::BOOLOID)
            .is_some_and(|d| d.value() != 0)
    }

    /// A timestamptz as microseconds since 2000-01-01.
    pub fn time(&self, k: usize) -> Option<i64> {
        self.datum(k, pg_sys::TIMESTAMPTZOID)
            .map(|d| d.value() as i64)
    }

    pub fn uuid(&self, k: usize) -> Option<[u8; 16]> {
        // SAFETY: a uuid datum points at its 16 bytes (type checked by `datum`).
        self.datum(k, pg_sys::UUIDOID)
            .map(|d| unsafe { *d.cast_mut_ptr::<[u8; 16]>() })
    }

    pub fn text(&self, k: usize) -> Option<String> {
        // SAFETY: a text datum (type checked by `datum`).
        self.datum(k, pg_sys::TEXTOID)
            .and_then(|d| unsafe { String::from_datum(d, false) })
    }

    pub fn real(&self, k: usize) -> Option<f32> {
        // SAFETY: a float4 datum (type checked by `datum`).
        self.datum(k, pg_sys::FLOAT4OID)
            .and_then(|d| unsafe { f32::from_datum(d, false) })
    }

    fn set(&mut self, k: usize, typ: pg_sys::Oid, d: Option<pg_sys::Datum>) {
        if self.types[k] != typ {
            raise(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!("column {k} of the trigger's row is written as another type than its own"),
                None,
            );
        }
        self.row.set(self.pos[k], d);
    }

    pub fn set_int4(&mut self, k: usize, v: i32) {
        self.set(k, pg_sys::INT4OID, v.into_datum());
    }

    pub fn set_real(&mut self, k: usize, v: f32) {
        self.set(k, pg_sys::FLOAT4OID, v.into_datum());
    }

    pub fn set_float8(&mut self, k: usize, v: Option<f64>) {
        self.set(k, pg_sys::FLOAT8OID, v.and_then(IntoDatum::into_datum));
    }

    /// A timestamptz from microseconds since 2000-01-01.
    pub fn set_time(&mut self, k: usize, v: Option<i64>) {
        self.set(k, pg_sys::TIMESTAMPTZOID, v.map(pg_sys::Datum::from));
    }

    /// The row as the heap tuple the trigger returns.
    pub fn form<'a>(&self, what: &str) -> PgHeapTuple<'a, AllocatedByRust> {
        // SAFETY: the descriptor is the relation's, and every datum was read from the row or
        // written through a setter of its column's type.
        unsafe { self.row.form(self.tupdesc, what) }
    }
}
