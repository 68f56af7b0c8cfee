//! A user's query read as rows of numbers: checked to be one SELECT, run through a read-only SPI
//! cursor with the caller's rights, its numeric columns (in order) read in batches as f64 without
//! copying through Rust types per value. What the anomaly functions train and score on.

use crate::error::raise;
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode::*;
use std::ffi::CString;

/// How a numeric column's datum becomes an f64.
#[derive(Clone, Copy)]
enum Kind {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
}

fn kind_of(type_oid: pg_sys::Oid) -> Option<Kind> {
    Some(match type_oid {
        pg_sys::INT2OID => Kind::Int2,
        pg_sys::INT4OID => Kind::Int4,
        pg_sys::INT8OID => Kind::Int8,
        pg_sys::FLOAT4OID => Kind::Float4,
        pg_sys::FLOAT8OID => Kind::Float8,
        pg_sys::NUMERICOID => Kind::Numeric,
        _ => return None,
    })
}

/// An open query: SPI stays connected until [`NumericRows::close`] (or the transaction's abort,
/// which cleans SPI and the cursor up after an ERROR).
pub struct NumericRows {
    portal: pg_sys::Portal,
    /// (attribute index, kind) of each numeric column.
    columns: Vec<(usize, Kind)>,
    natts: usize,
    /// The numeric columns' names, in order.
    pub names: Vec<String>,
    /// Rows read so far (for messages: "row 12").
    pub rows_read: u64,
    /// Scratch for one deformed tuple.
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
    /// What converting a batch allocates (a numeric's detoasted copy), reset after each batch so
    /// that memory stays flat however many rows are read. Made before SPI connects, outside
    /// SPI's own context.
    scratch: pgrx::PgMemoryContexts,
}

impl NumericRows {
    /// Opens `query` (one SELECT, run as the caller); raises 22023 for anything else and 42804 if
    /// it returns no numeric column. `what` names the function for messages.
    pub fn open(query: &str, what: &str) -> NumericRows {
        let Ok(text) = CString::new(query) else {
            raise(
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("{what}: the query contains a NUL byte"),
                None,
            )
        };
        let scratch = pgrx::PgMemoryContexts::new("custos feature batch");
        // SAFETY: backend thread inside a transaction. SPI is connected here and finished in
        // close(); an ERROR in between aborts the (sub)transaction, which releases both. The plan
        // sources are read while the plan lives.
        unsafe {
            if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                raise(ERRCODE_INTERNAL_ERROR, "SPI_connect failed", None);
            }
            let plan = pg_sys::SPI_prepare(text.as_ptr(), 0, std::ptr::null_mut());
            if plan.is_null() {
                raise(
                    ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("{what}: the query could not be prepared"),
                    None,
                );
            }
            let sources = pg_sys::SPI_plan_get_plan_sources(plan);
            let count = if sources.is_null() {
                0
            } else {
                (*sources).length
            };
            let tag = if count == 1 {
                let source = (*(*sources).elements).ptr_value as *mut pg_sys::CachedPlanSource;
                (*source).commandTag
            } else {
                pg_sys::CommandTag::CMDTAG_UNKNOWN
            };
            if count != 1 || tag != pg_sys::CommandTag::CMDTAG_SELECT {
                raise(
                    ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("{what} takes one SELECT query, not {}", describe(count, tag)),
                    Some("pass a single SELECT (or VALUES, or TABLE) whose numeric columns are the features"),
                );
            }
            // read_only: the query runs under this statement's snapshot and may not write.
            let portal = pg_sys::SPI_cursor_open(
                std::ptr::null(),
                plan,
                std::ptr::null_mut(),
                std::ptr::null(),
                true,
            );
            let desc = (*portal).tupDesc;
            let natts = (*desc).natts as usize;
            let mut columns = Vec::new();
            let mut names = Vec::new();
            for (i, att) in super::tuple::attributes(desc).iter().enumerate() {
                if att.attisdropped {
                    continue;
                }
                if let Some(kind) = kind_of(att.atttypid) {
                    columns.push((i, kind));
                    names.push(
                        std::ffi::CStr::from_ptr(att.attname.data.as_ptr())
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
            if columns.is_empty() {
                raise(
                    ERRCODE_DATATYPE_MISMATCH,
                    format!("{what}: the query returns no numeric column"),
                    Some("features are the columns of type smallint, integer, bigint, real, double precision or numeric; cast others, e.g. extract(hour FROM t)::float8"),
                );
            }
            NumericRows {
                portal,
                columns,
                natts,
                names,
                rows_read: 0,
                values: vec![pg_sys::Datum::from(0); natts],
                nulls: vec![false; natts],
                scratch,
            }
        }
    }

    pub fn features(&self) -> usize {
        self.columns.len()
    }

    /// Reads up to `max_rows` more rows, appending their features row-major to `out`; returns
    /// how many were read (0 at the end). A NULL raises 22004, NaN or an infinity 22003.
    pub fn next_batch(&mut self, max_rows: usize, out: &mut Vec<f64>) -> usize {
        let max_rows = max_rows.max(1);
        if out.try_reserve(max_rows * self.columns.len()).is_err() {
            raise(
                ERRCODE_OUT_OF_MEMORY,
                format!("out of memory after {} rows", self.rows_read),
                None,
            );
        }
        // SAFETY: the portal is open; SPI_tuptable holds SPI_processed tuples of the portal's
        // descriptor until it is freed below; datums are read by their column's type.
        unsafe {
            pg_sys::check_for_interrupts!();
            pg_sys::SPI_cursor_fetch(self.portal, true, max_rows as std::ffi::c_long);
            let table = pg_sys::SPI_tuptable;
            let n = pg_sys::SPI_processed as usize;
            if table.is_null() {
                return 0;
            }
            let desc = (*table).tupdesc;
            let previous = pg_sys::MemoryContextSwitchTo(self.scratch.value());
            for i in 0..n {
                let tuple = *(*table).vals.add(i);
                pg_sys::heap_deform_tuple(
                    tuple,
                    desc,
                    self.values.as_mut_ptr(),
                    self.nulls.as_mut_ptr(),
                );
                self.rows_read += 1;
                for (c, &(att, kind)) in self.columns.iter().enumerate() {
                    if self.nulls[att] {
                        self.refuse_null(c);
                    }
                    let d = self.values[att];
                    let v = match kind {
                        Kind::Int2 => f64::from(d.value() as i16),
                        Kind::Int4 => f64::from(d.value() as i32),
                        Kind::Int8 => d.value() as i64 as f64,
                        Kind::Float4 => f64::from(f32::from_bits(d.value() as u32)),
                        Kind::Float8 => f64::from_bits(d.value() as u64),
                        Kind::Numeric => f64::from_bits(
                            pgrx::direct_function_call_as_datum(
                                pg_sys::numeric_float8_no_overflow,
                                &[Some(d)],
                            )
                            .map_or(0, |r| r.value() as u64),
                        ),
                    };
                    if !v.is_finite() {
                        self.refuse_value(c, v);
                    }
                    out.push(v);
                }
            }
            pg_sys::MemoryContextSwitchTo(previous);
            self.scratch.reset();
            pg_sys::SPI_freetuptable(table);
            let _ = self.natts;
            n
        }
    }

    fn refuse_null(&self, column: usize) -> ! {
        raise(
            ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!(
                "row {}, column \"{}\" is NULL",
                self.rows_read, self.names[column]
            ),
            Some("every feature needs a value: filter NULLs out or coalesce them"),
        )
    }

    fn refuse_value(&self, column: usize, v: f64) -> ! {
        raise(
            ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!(
                "row {}, column \"{}\" is {v}",
                self.rows_read, self.names[column]
            ),
            Some("only finite numbers can be features"),
        )
    }

    /// Closes the cursor and disconnects SPI.
    pub fn close(self) {
        // SAFETY: the portal is still open and SPI connected (see open()).
        unsafe {
            pg_sys::SPI_cursor_close(self.portal);
            pg_sys::SPI_finish();
        }
    }
}

fn describe(count: i32, tag: pg_sys::CommandTag::Type) -> String {
    if count != 1 {
        return format!("{count} statements");
    }
    // SAFETY: GetCommandTagName returns a static C string for every tag.
    let name = unsafe { std::ffi::CStr::from_ptr(pg_sys::GetCommandTagName(tag)) };
    format!("a {} statement", name.to_string_lossy())
}
