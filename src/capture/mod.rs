//! `custos_internal.capture_changes()`: the AFTER … FOR EACH STATEMENT trigger that `custos.track_table`
//! puts on a business table. It reads the statement's transition tables directly, turns each row
//! into JSON text in Rust (no row_to_json/json_agg, no JSON re-parsing per row) and writes the
//! events straight to `custos.events` in batches ([`crate::ledger::append`]), or, when the table has more
//! than the chain trigger to run, with one INSERT per batch through a plan kept for the session.
//!
//! Trigger arguments, as `track_table` writes them: tenant column, entity_type, rows per event,
//! then the primary-key columns.

pub mod changes;

use crate::error::raise;
use crate::gucs;
use crate::ledger::append::{Appender, NewEvent};
use crate::pg::jsonb::ObjectLayout;
use crate::pg::varlena::bytes_of;
use changes::{GroupDetails, JsonValue, RowJson};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{pg_sys, PgSqlErrorCode};
use rustc_hash::FxHashMap;
use std::cell::{Cell, OnceCell};
use std::ffi::CStr;
use std::ops::Range;

/// Events are written when this many are pending, or this many bytes of details.
const EVENTS_PER_INSERT: usize = 1000;
const BYTES_PER_INSERT: usize = 8 * 1024 * 1024;

const INSERT_EVENTS: &str =
    "INSERT INTO custos.events (tenant_id, action, entity_type, entity_id, details)
     SELECT t, $4, $5, e, d FROM unnest($1::uuid[], $2::text[], $3::jsonb[]) AS u(t, e, d)";

/// A statement's sink buffers are kept for the next statement up to this capacity each (a
/// 1,000-row statement of narrow rows needs about a quarter of it).
const KEPT_BUFFER_BYTES: usize = 1024 * 1024;

thread_local! {
    static INSERT_PLAN: OnceCell<OwnedPreparedStatement> = const { OnceCell::new() };
    /// The buffers of the last statement's [`EventSink`], emptied.
    static SPARE_BUFFERS: Cell<Option<SinkBuffers>> = const { Cell::new(None) };
}

/// How a column's value becomes JSON. The common types are written from the datum in Rust;
/// the rest go through the type's output function.
#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Bool,
    /// int2, int4, int8: the datum's width in bytes.
    Integer(u8),
    /// numeric, float4, float8 (as they print; NaN and the infinities as strings).
    Number,
    Json,
    DateTime,
    Uuid,
    /// text, varchar, bpchar: the stored characters are the printed ones.
    PlainText,
    Text,
}

struct Column {
    name: String,
    /// `"name": `, as the row's JSON writes the key.
    json_key: String,
    /// Position in the tuple descriptor.
    attr: usize,
    typid: pg_sys::Oid,
    /// The type under any domain.
    base: pg_sys::Oid,
    encoding: Encoding,
    output: pg_sys::FmgrInfo,
}

fn encoding_of(base: pg_sys::Oid) -> Encoding {
    match base {
        pg_sys::BOOLOID => Encoding::Bool,
        pg_sys::INT2OID => Encoding::Integer(2),
        pg_sys::INT4OID => Encoding::Integer(4),
        pg_sys::INT8OID => Encoding::Integer(8),
        pg_sys::FLOAT4OID | pg_sys::FLOAT8OID | pg_sys::NUMERICOID => Encoding::Number,
        pg_sys::JSONOID | pg_sys::JSONBOID => Encoding::Json,
        pg_sys::DATEOID
        | pg_sys::TIMEOID
        | pg_sys::TIMETZOID
        | pg_sys::TIMESTAMPOID
        | pg_sys::TIMESTAMPTZOID => Encoding::DateTime,
        pg_sys::UUIDOID => Encoding::Uuid,
        pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID => Encoding::PlainText,
        _ => Encoding::Text,
    }
}

/// The text of a NUL-terminated string from PostgreSQL, borrowed when it is UTF-8 (as it is in a
/// UTF-8 database), else converted into `scratch`.
unsafe fn cstr_str(ptr: *const std::ffi::c_char, scratch: &mut String) -> &str {
    if ptr.is_null() {
        return "";
    }
    // SAFETY: a NUL-terminated string from PostgreSQL, alive until the row's memory is reset.
    utf8_or_lossy(unsafe { CStr::from_ptr(ptr) }.to_bytes(), scratch)
}

fn utf8_or_lossy<'a>(bytes: &'a [u8], scratch: &'a mut String) -> &'a str {
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => {
            scratch.push_str(&String::from_utf8_lossy(bytes));
            scratch
        }
    }
}

/// A uuid as uuid_out prints it.
fn push_uuid(bytes: &[u8; 16], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// What the trigger needs to know about the table, worked out once per statement.
struct Table {
    label: String,
    columns: Vec<Column>,
    /// Index into `columns`.
    tenant: usize,
    key: Vec<usize>,
    /// Indexes into `columns` in jsonb's key order (shorter names first, then bytewise): rows are
    /// written in the order jsonb prints them, so the chain can hash the text as written.
    json_order: Vec<usize>,
    /// Where each column's value sits in a row's JSON (the inverse of `json_order`).
    json_position: Vec<usize>,
    /// The label as a JSON string.
    label_json: String,
    /// How a row's jsonb object is laid out, when rows are also assembled as jsonb: for one-row
    /// events (grouped ones are parsed), in a UTF-8 database, where the values' text is what
    /// jsonb stores.
    layout: Option<ObjectLayout>,
}

impl Table {
    unsafe fn of(
        rel: pg_sys::Relation,
        tenant_column: &str,
        key_columns: &[String],
        rows_per_event: usize,
    ) -> Table {
        unsafe {
            let tupdesc = (*rel).rd_att;
            let namespace = pg_sys::get_namespace_name((*(*rel).rd_rel).relnamespace);
            let label = format!(
                "{}.{}",
                cstr_text(namespace),
                cstr_text((*(*rel).rd_rel).relname.data.as_ptr())
            );
            let mut columns = Vec::new();
            for (i, attr) in crate::pg::tuple::attributes(tupdesc).iter().enumerate() {
                if attr.attisdropped {
                    continue;
                }
                let mut output_fn = pg_sys::InvalidOid;
                let mut varlena = false;
                pg_sys::getTypeOutputInfo(attr.atttypid, &mut output_fn, &mut varlena);
                let mut output = pg_sys::FmgrInfo::default();
                pg_sys::fmgr_info(output_fn, &mut output);
                columns.push(Column {
                    name: cstr_text(attr.attname.data.as_ptr()),
                    json_key: String::new(),
                    attr: i,
                    typid: attr.atttypid,
                    base: pg_sys::getBaseType(attr.atttypid),
                    encoding: encoding_of(pg_sys::getBaseType(attr.atttypid)),
                    output,
                });
            }
            let find =
                |name: &str| {
                    columns
                        .iter()
                        .position(|c| c.name == name)
                        .unwrap_or_else(|| {
                            raise(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                        format!("{label} has no column {name} any more"),
                        Some("call custos.track_table again after renaming or dropping columns"),
                    )
                        })
                };
            let tenant = find(tenant_column);
            if columns[tenant].typid != pg_sys::UUIDOID {
                raise(
                    PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                    format!("tenant column {tenant_column} of {label} is no longer a uuid"),
                    None,
                );
            }
            let key = key_columns.iter().map(|k| find(k)).collect();
            let mut json_order: Vec<usize> = (0..columns.len()).collect();
            json_order.sort_by(|&a, &b| {
                crate::pg::jsonb::key_order(columns[a].name.as_bytes(), columns[b].name.as_bytes())
            });
            let mut json_position = vec![0; columns.len()];
            for (position, &column) in json_order.iter().enumerate() {
                json_position[column] = position;
                columns[column].json_key = changes::json_key(&columns[column].name, position == 0);
            }
            let assemble_jsonb = rows_per_event == 1
                && pg_sys::GetDatabaseEncoding() == pg_sys::pg_enc::PG_UTF8 as i32;
            let layout = if assemble_jsonb {
                ObjectLayout::new(json_order.iter().map(|&i| columns[i].name.as_bytes())).ok()
            } else {
                None
            };
            let mut label_json = String::new();
            changes::push_json_string(&label, &mut label_json);
            Table {
                label,
                label_json,
                layout,
                columns,
                tenant,
                key,
                json_order,
                json_position,
            }
        }
    }
}

unsafe fn cstr_text(ptr: *const std::ffi::c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated string from PostgreSQL.
    String::from_utf8_lossy(unsafe { CStr::from_ptr(ptr) }.to_bytes()).into_owned()
}

/// One row read from a transition table, encoded.
#[derive(Default)]
struct CapturedRow {
    json: RowJson,
    /// Room for a value's text, reused from column to column.
    scratch: String,
    /// Per column, the last date/time datum printed and its text: a statement's rows often share
    /// a timestamp (`DEFAULT now()`), printed once instead of once per row.
    datetime_memo: Vec<Option<(usize, String)>>,
    tenant: [u8; 16],
    key: String,
}

/// The value just pushed to `row`, as jsonb stores it. Numbers that are not numerics or integers
/// (floats print in forms jsonb would not) and json documents have none: their events' text is
/// parsed instead.
unsafe fn push_stored(
    row: &mut RowJson,
    column: &Column,
    datum: pg_sys::Datum,
    value: JsonValue<'_>,
) {
    match (value, column.encoding) {
        (JsonValue::Null, _) => row.push_stored(pg_sys::JENTRY_ISNULL, &[]),
        (JsonValue::Text(text) | JsonValue::Plain(text), _) => {
            row.push_stored(pg_sys::JENTRY_ISSTRING, text.as_bytes())
        }
        (JsonValue::Raw(_), Encoding::Bool) => {
            let kind = if datum.value() != 0 {
                pg_sys::JENTRY_ISBOOL_TRUE
            } else {
                pg_sys::JENTRY_ISBOOL_FALSE
            };
            row.push_stored(kind, &[]);
        }
        (JsonValue::Raw(_), Encoding::Integer(width)) => {
            row.push_stored_integer(integer_of(datum, width))
        }
        (JsonValue::Raw(_), Encoding::Number) if column.base == pg_sys::NUMERICOID => {
            // SAFETY: a non-null numeric datum.
            row.push_stored_numeric(unsafe { bytes_of(datum) })
        }
        (JsonValue::Raw(_), _) => row.no_stored(),
    }
}

/// An int2, int4 or int8 datum of `width` bytes as an i64.
fn integer_of(datum: pg_sys::Datum, width: u8) -> i64 {
    match width {
        2 => i64::from(datum.value() as i16),
        4 => i64::from(datum.value() as i32),
        _ => datum.value() as i64,
    }
}

impl CapturedRow {
    /// Reads the slot's row. Output functions allocate in the current memory context, which the
    /// caller resets every few rows.
    unsafe fn encode(&mut self, table: &Table, slot: *mut pg_sys::TupleTableSlot) {
        unsafe {
            pg_sys::slot_getallattrs(slot);
            self.datetime_memo.resize(table.columns.len(), None);
            let values = (*slot).tts_values;
            let nulls = (*slot).tts_isnull;
            self.json.begin();
            self.key.clear();
            let single_key = (table.key.len() == 1).then(|| table.key[0]);
            let mut tenant = None;
            for &index in &table.json_order {
                let column = &table.columns[index];
                let datum = *values.add(column.attr);
                let is_null = *nulls.add(column.attr);
                if index == table.tenant && !is_null {
                    tenant = Some(*datum.cast_mut_ptr::<[u8; 16]>());
                }
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.clear();
                let value = if is_null {
                    JsonValue::Null
                } else {
                    match column.encoding {
                        Encoding::Bool => {
                            JsonValue::Raw(if datum.value() != 0 { "true" } else { "false" })
                        }
                        Encoding::Integer(width) => {
                            scratch.push_str(itoa::Buffer::new().format(integer_of(datum, width)));
                            JsonValue::Raw(&scratch)
                        }
                        Encoding::Uuid => {
                            push_uuid(&*datum.cast_mut_ptr::<[u8; 16]>(), &mut scratch);
                            JsonValue::Plain(&scratch)
                        }
                        Encoding::PlainText => {
                            JsonValue::Text(utf8_or_lossy(bytes_of(datum), &mut scratch))
                        }
                        Encoding::DateTime => {
                            // The text of the column's last datum, kept in a buffer of its own,
                            // serves while the datum repeats (timetz, passed by reference, is
                            // printed every time).
                            let memo = &mut self.datetime_memo[index];
                            let repeated = column.base != pg_sys::TIMETZOID
                                && matches!(memo, Some((last, _)) if *last == datum.value());
                            let (last, text) = memo.get_or_insert_with(Default::default);
                            if !repeated {
                                let iso = pg_sys::JsonEncodeDateTime(
                                    std::ptr::null_mut(),
                                    datum,
                                    column.base,
                                    std::ptr::null(),
                                );
                                *last = datum.value();
                                text.clear();
                                text.push_str(cstr_str(iso, &mut scratch));
                            }
                            JsonValue::Text(text)
                        }
                        // Printed in Rust: NaN and the infinities go through numeric_out.
                        Encoding::Number
                            if column.base == pg_sys::NUMERICOID
                                && crate::pg::numeric::print(
                                    bytes_of(datum),
                                    // SAFETY: print appends ASCII digits, signs and points only.
                                    scratch.as_mut_vec(),
                                ) =>
                        {
                            JsonValue::Raw(&scratch)
                        }
                        encoding => {
                            let out = pg_sys::OutputFunctionCall(
                                std::ptr::from_ref(&column.output).cast_mut(),
                                datum,
                            );
                            let text = cstr_str(out, &mut scratch);
                            match encoding {
                                Encoding::Number => changes::number(text),
                                Encoding::Json => JsonValue::Raw(text),
                                _ => JsonValue::Text(text),
                            }
                        }
                    }
                };
                if single_key == Some(index) {
                    if let JsonValue::Raw(text) | JsonValue::Text(text) | JsonValue::Plain(text) =
                        value
                    {
                        self.key.push_str(text);
                    }
                }
                self.json.push_keyed(&column.json_key, value);
                if table.layout.is_some() {
                    push_stored(&mut self.json, column, datum, value);
                } else {
                    self.json.no_stored();
                }
                self.scratch = scratch;
            }
            self.json.finish();
            if single_key.is_none() {
                let positions: Vec<usize> =
                    table.key.iter().map(|&k| table.json_position[k]).collect();
                self.key = changes::composite_key(&self.json, &positions);
            }
            self.tenant = tenant.unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
                    format!(
                        "a row of {} has no tenant in column {}",
                        table.label, table.columns[table.tenant].name
                    ),
                    Some("custos records each change in the tenant named by the row; give every row a tenant"),
                )
            });
        }
    }
}

/// One event waiting in an [`EventSink`]: where its texts sit in the sink's buffers.
struct Pending {
    tenant: [u8; 16],
    entity_id: Option<Range<usize>>,
    details: Range<usize>,
    /// `details` as a jsonb value (varlena header first), where it could be assembled.
    stored: Option<Range<usize>>,
}

/// Where an [`EventSink`]'s events wait.
#[derive(Default)]
struct SinkBuffers {
    pending: Vec<Pending>,
    /// Entity ids and details, one after another.
    text: String,
    /// Assembled jsonb details, each at a multiple of 4.
    stored: Vec<u8>,
}

impl SinkBuffers {
    fn clear(&mut self) {
        self.pending.clear();
        self.text.clear();
        self.stored.clear();
    }

    /// The last statement's buffers, else new ones. Growing new buffers to a statement's size
    /// each time costs page faults on memory the allocator had just given back.
    fn reuse() -> SinkBuffers {
        SPARE_BUFFERS.with(Cell::take).unwrap_or_default()
    }

    /// Keeps the buffers for the next statement, unless one grew large.
    fn keep(mut self) {
        let small = self.text.capacity() <= KEPT_BUFFER_BYTES
            && self.stored.capacity() <= KEPT_BUFFER_BYTES
            && self.pending.capacity() * std::mem::size_of::<Pending>() <= KEPT_BUFFER_BYTES;
        if small {
            self.clear();
            // (try_with: the thread-local may be gone when the backend exits)
            let _ = SPARE_BUFFERS.try_with(|spare| spare.set(Some(self)));
        }
    }
}

/// Events waiting to be inserted. Their texts share two buffers, kept from flush to flush (and
/// statement to statement), instead of a few allocations per event.
struct EventSink {
    action: &'static str,
    entity_type: String,
    /// Decided at the first write: `None` inside when custos.events needs the executor.
    appender: Option<Option<Appender>>,
    buffers: SinkBuffers,
}

impl Drop for EventSink {
    fn drop(&mut self) {
        std::mem::take(&mut self.buffers).keep();
    }
}

impl EventSink {
    fn clear(&mut self) {
        self.buffers.clear();
    }

    /// Adds an event: `details` appends its text to the buffer it is given, `stored` its jsonb
    /// (returning where that starts) if it can.
    fn add(
        &mut self,
        tenant: [u8; 16],
        entity_id: Option<&str>,
        details: impl FnOnce(&mut String),
        stored: impl FnOnce(&mut Vec<u8>) -> Option<usize>,
    ) {
        let b = &mut self.buffers;
        let entity_id = entity_id.map(|id| {
            let start = b.text.len();
            b.text.push_str(id);
            start..b.text.len()
        });
        let start = b.text.len();
        details(&mut b.text);
        let details = start..b.text.len();
        let stored = stored(&mut b.stored).map(|start| start..b.stored.len());
        b.pending.push(Pending {
            tenant,
            entity_id,
            details,
            stored,
        });
        if b.pending.len() >= EVENTS_PER_INSERT || b.text.len() >= BYTES_PER_INSERT {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buffers.pending.is_empty() {
            return;
        }
        // Written one tenant after another, by either path; the sort is stable, so each tenant's
        // events keep their order, which is their chain order. A statement's events of one tenant
        // then sit together in the heap instead of between other tenants' events, so verifying
        // the chain, which reads it in seq order, finds consecutive events on the same page (the
        // README gives the gain). It also takes the tenants'
        // chain locks in a fixed order: two such flushes over the same tenants, in transactions
        // that held none of those locks before, cannot deadlock on them.
        let mut order: Vec<&Pending> = self.buffers.pending.iter().collect();
        order.sort_by_key(|p| p.tenant);
        if let Some(appender) = self.appender.get_or_insert_with(Appender::open) {
            let (text, stored) = (&self.buffers.text, &self.buffers.stored);
            appender.append(order.into_iter().map(|p| NewEvent {
                tenant: p.tenant,
                action: self.action,
                entity_type: &self.entity_type,
                entity_id: p.entity_id.clone().map(|r| &text[r]),
                details: &text[p.details.clone()],
                details_stored: p.stored.clone().map(|r| &stored[r]),
            }));
            self.clear();
            return;
        }
        // The INSERT chains its rows in the order of the arrays.
        let tenants: Vec<_> = order
            .iter()
            .map(|p| pgrx::Uuid::from_bytes(p.tenant))
            .collect();
        let entity_ids: Vec<Option<String>> = order
            .iter()
            .map(|p| p.entity_id.clone().map(|r| self.buffers.text[r].to_owned()))
            .collect();
        let details = jsonb_array(order.iter().map(|p| &self.buffers.text[p.details.clone()]));
        self.clear();
        // The INSERT writes events of any tenant (row-level security would confine it to the
        // current one), so it runs as the superuser; capture itself runs as the writer.
        let written = crate::tenancy::as_superuser(|| {
            Spi::connect_mut(|client| {
                INSERT_PLAN.with(|cell| {
                    if cell.get().is_none() {
                        use pg_sys::{BuiltinOid, PgOid};
                        let types = [
                            PgOid::BuiltIn(BuiltinOid::UUIDARRAYOID),
                            PgOid::BuiltIn(BuiltinOid::TEXTARRAYOID),
                            PgOid::BuiltIn(BuiltinOid::JSONBARRAYOID),
                            PgOid::BuiltIn(BuiltinOid::TEXTOID),
                            PgOid::BuiltIn(BuiltinOid::TEXTOID),
                        ];
                        let plan = client.prepare_mut(INSERT_EVENTS, &types)?.keep();
                        let _ = cell.set(plan);
                    }
                    let Some(plan) = cell.get() else {
                        unreachable!("set above")
                    };
                    client
                        .update(
                            plan,
                            None,
                            &[
                                tenants.into(),
                                entity_ids.into(),
                                // SAFETY: a jsonb[] datum, made just above in this context.
                                unsafe {
                                    pgrx::datum::DatumWithOid::new(details, pg_sys::JSONBARRAYOID)
                                },
                                self.action.into(),
                                self.entity_type.as_str().into(),
                            ],
                        )
                        .map(|_| ())
                })
            })
        });
        if let Err(e) = written {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("could not record captured changes: {e}"),
                None,
            );
        }
    }
}

/// The documents as a jsonb[] datum, parsed by custos' JSON-to-jsonb path rather than
/// `jsonb_in` (a document per changed row makes that cost show).
fn jsonb_array<'d>(documents: impl Iterator<Item = &'d str>) -> pg_sys::Datum {
    let mut datums: Vec<pg_sys::Datum> = documents.map(crate::pg::jsonb::from_json_text).collect();
    // SAFETY: datums holds jsonb datums only; jsonb is a 4-aligned varlena.
    unsafe {
        pg_sys::Datum::from(pg_sys::construct_array(
            datums.as_mut_ptr(),
            datums.len() as i32,
            pg_sys::JSONBOID,
            -1,
            false,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
        ))
    }
}

/// Rows of one statement and tenant put together into events of up to `rows_per_event` rows.
struct Groups<'t> {
    table: &'t str,
    rows_per_event: usize,
    max_bytes: usize,
    index: FxHashMap<[u8; 16], usize>,
    open: Vec<([u8; 16], GroupDetails)>,
}

impl Groups<'_> {
    fn push(
        &mut self,
        sink: &mut EventSink,
        tenant: [u8; 16],
        key: &str,
        old: Option<&RowJson>,
        new: Option<&RowJson>,
        flag: Option<(&str, bool)>,
    ) {
        let i = *self.index.entry(tenant).or_insert_with(|| {
            self.open.push((tenant, GroupDetails::new(self.table)));
            self.open.len() - 1
        });
        let group = &mut self.open[i].1;
        group.push(key, old, new, flag);
        if group.rows() >= self.rows_per_event || group.len() >= self.max_bytes {
            let full = std::mem::replace(group, GroupDetails::new(self.table));
            sink.add(tenant, None, |out| out.push_str(&full.finish()), |_| None);
        }
    }

    fn finish(self, sink: &mut EventSink) {
        for (tenant, group) in self.open {
            if !group.is_empty() {
                sink.add(tenant, None, |out| out.push_str(&group.finish()), |_| None);
            }
        }
    }
}

/// Walks a transition table with a read pointer of its own (other AFTER triggers of the same
/// statement read the same tuplestore).
struct TransitionScan {
    store: *mut pg_sys::Tuplestorestate,
    pointer: i32,
    slot: *mut pg_sys::TupleTableSlot,
    /// Whether another scan of the same statement's tables runs alongside (an update reads old
    /// and new rows in step): then each read selects this scan's pointer again.
    alongside: bool,
}

impl TransitionScan {
    unsafe fn new(
        store: *mut pg_sys::Tuplestorestate,
        tupdesc: pg_sys::TupleDesc,
        alongside: bool,
    ) -> Self {
        unsafe {
            let pointer = pg_sys::tuplestore_alloc_read_pointer(store, 0);
            pg_sys::tuplestore_select_read_pointer(store, pointer);
            pg_sys::tuplestore_rescan(store);
            let slot = pg_sys::MakeSingleTupleTableSlot(tupdesc, &pg_sys::TTSOpsMinimalTuple);
            TransitionScan {
                store,
                pointer,
                slot,
                alongside,
            }
        }
    }

    /// The next row, valid until the next call.
    unsafe fn next(&mut self) -> Option<*mut pg_sys::TupleTableSlot> {
        unsafe {
            if self.alongside {
                pg_sys::tuplestore_select_read_pointer(self.store, self.pointer);
            }
            pg_sys::tuplestore_gettupleslot(self.store, true, false, self.slot).then_some(self.slot)
        }
    }
}

impl Drop for TransitionScan {
    fn drop(&mut self) {
        // SAFETY: the slot was made by MakeSingleTupleTableSlot and is dropped once.
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.slot) }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Change {
    Insert,
    Update,
    Delete,
}

fn protocol_violation() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
        "custos_internal.capture_changes must be an AFTER INSERT, UPDATE or DELETE ... FOR EACH STATEMENT trigger with transition tables",
        Some("let custos.track_table create it"),
    )
}

#[pg_trigger]
fn capture_changes<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, PgTriggerError> {
    let change = match trigger.op()? {
        PgTriggerOperation::Insert => Change::Insert,
        PgTriggerOperation::Update => Change::Update,
        PgTriggerOperation::Delete => Change::Delete,
        _ => protocol_violation(),
    };
    if !matches!(trigger.level(), PgTriggerLevel::Statement)
        || !matches!(trigger.when()?, PgTriggerWhen::After)
    {
        protocol_violation();
    }
    // Only the triggers custos.track_table made (it checked that the caller owns the table).
    if !trigger.name()?.starts_with("custos_track_") {
        protocol_violation();
    }
    // A restore loads rows whose events the restored ledger already holds.
    if crate::tenancy::restore_context() {
        return Ok(None);
    }
    let args = trigger.extra_args()?;
    let [tenant_column, entity_type, rows_per_event, key_columns @ ..] = args.as_slice() else {
        protocol_violation()
    };
    let rows_per_event: usize = rows_per_event
        .parse()
        .unwrap_or_else(|_| protocol_violation());
    let td = trigger.trigger_data();
    // SAFETY: fired as an AFTER statement trigger (checked above): the relation and the transition
    // tables the trigger declared are valid for the duration of the call.
    unsafe {
        let table = Table::of(td.tg_relation, tenant_column, key_columns, rows_per_event);
        let tupdesc = (*td.tg_relation).rd_att;
        let store_of = |store: *mut pg_sys::Tuplestorestate| {
            if store.is_null() {
                protocol_violation()
            }
            TransitionScan::new(store, tupdesc, change == Change::Update)
        };
        let mut news = (change != Change::Delete).then(|| store_of(td.tg_newtable));
        let mut olds = (change != Change::Insert).then(|| store_of(td.tg_oldtable));
        let mut sink = EventSink {
            action: match change {
                Change::Insert => "insert",
                Change::Update => "update",
                Change::Delete => "delete",
            },
            entity_type: entity_type.clone(),
            appender: None,
            buffers: SinkBuffers::reuse(),
        };
        let mut groups = (rows_per_event > 1).then(|| Groups {
            table: &table.label,
            rows_per_event,
            max_bytes: (gucs::MAX_DETAILS_BYTES.get().max(0) as usize) / 4 * 3,
            index: FxHashMap::default(),
            open: Vec::new(),
        });

        let row_memory = pg_sys::AllocSetContextCreateExtended(
            pg_sys::CurrentMemoryContext,
            c"custos capture row".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        let mut old = CapturedRow::default();
        let mut new = CapturedRow::default();
        let (mut rows_in_memory, mut bytes_in_memory) = (0, 0);
        loop {
            // Fetched in the caller's context: a tuple read back from disk belongs to the slot,
            // which frees it on the next fetch. Only the encoding happens in row_memory.
            let old_slot = olds.as_mut().map(|s| s.next());
            let new_slot = news.as_mut().map(|s| s.next());
            if matches!(old_slot, Some(None))
                || matches!(new_slot, Some(None))
                || (old_slot.is_none() && new_slot.is_none())
            {
                break;
            }
            let caller_memory = pg_sys::MemoryContextSwitchTo(row_memory);
            if let Some(Some(slot)) = old_slot {
                old.encode(&table, slot);
            }
            if let Some(Some(slot)) = new_slot {
                new.encode(&table, slot);
            }
            pg_sys::MemoryContextSwitchTo(caller_memory);
            // What output functions and detoasting left behind, freed every 64 rows or 1 MB of
            // row text (a proxy for it) rather than after every row.
            rows_in_memory += 1;
            bytes_in_memory += old_slot.map_or(0, |_| old.json.text.len())
                + new_slot.map_or(0, |_| new.json.text.len());
            if rows_in_memory == 64 || bytes_in_memory >= 1 << 20 {
                pg_sys::MemoryContextReset(row_memory);
                (rows_in_memory, bytes_in_memory) = (0, 0);
            }
            let old_row = old_slot.is_some().then_some(&old);
            let new_row = new_slot.is_some().then_some(&new);
            record(&table, &mut sink, groups.as_mut(), old_row, new_row);
        }
        if let Some(groups) = groups {
            groups.finish(&mut sink);
        }
        sink.flush();
        pg_sys::MemoryContextDelete(row_memory);
    }
    Ok(None)
}

/// The events of one changed row: the old version (update, delete), the new one (insert, update).
fn record(
    table: &Table,
    sink: &mut EventSink,
    groups: Option<&mut Groups<'_>>,
    old: Option<&CapturedRow>,
    new: Option<&CapturedRow>,
) {
    // A row that changed key or tenant is recorded as leaving one place and arriving in another.
    let moved = match (old, new) {
        (Some(o), Some(n)) if o.tenant != n.tenant => Some(("tenant_changed", true)),
        (Some(o), Some(n)) if o.key != n.key => Some(("key_changed", true)),
        _ => None,
    };
    match groups {
        Some(groups) => match (old, new) {
            (Some(o), Some(n)) if moved.is_some() => {
                groups.push(sink, o.tenant, &o.key, Some(&o.json), None, moved);
                groups.push(sink, n.tenant, &n.key, None, Some(&n.json), moved);
            }
            (Some(o), Some(n)) => groups.push(
                sink,
                n.tenant,
                &n.key,
                Some(&o.json),
                Some(&n.json),
                Some(("key_changed", false)),
            ),
            (Some(o), None) => groups.push(sink, o.tenant, &o.key, Some(&o.json), None, None),
            (None, Some(n)) => groups.push(sink, n.tenant, &n.key, None, Some(&n.json), None),
            (None, None) => {}
        },
        None => match (old, new) {
            (Some(o), Some(n)) if moved.is_some() => {
                one_row_event(table, sink, o, Some(o), None, None, moved);
                one_row_event(table, sink, n, None, Some(n), None, moved);
            }
            (Some(o), Some(n)) => {
                let changed = changes::changed_columns(
                    table
                        .columns
                        .iter()
                        .zip(&table.json_position)
                        .map(|(c, &position)| (c.name.as_str(), position)),
                    &o.json,
                    &n.json,
                );
                one_row_event(table, sink, n, Some(o), Some(n), Some(&changed), None);
            }
            (Some(o), None) => one_row_event(table, sink, o, Some(o), None, None, None),
            (None, Some(n)) => one_row_event(table, sink, n, None, Some(n), None, None),
            (None, None) => {}
        },
    }
}

/// The event of one changed row, in the tenant and under the key of `of`; its details as text
/// and, when both versions have their stored form, assembled as jsonb.
fn one_row_event(
    table: &Table,
    sink: &mut EventSink,
    of: &CapturedRow,
    old: Option<&CapturedRow>,
    new: Option<&CapturedRow>,
    changed: Option<&[&str]>,
    flag: Option<(&str, bool)>,
) {
    let (old, new) = (old.map(|r| &r.json), new.map(|r| &r.json));
    sink.add(
        of.tenant,
        Some(&of.key),
        |out| changes::row_details_into(out, &table.label_json, old, new, changed, flag),
        |out| {
            let layout = table.layout.as_ref()?;
            changes::row_details_stored_into(out, layout, &table.label, old, new, changed, flag)
        },
    );
}

#[cfg(test)]
mod unit {
    #[test]
    fn uuids_print_as_uuid_out_prints_them() {
        let mut out = String::new();
        let bytes: [u8; 16] = [
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ];
        super::push_uuid(&bytes, &mut out);
        assert_eq!(out, "00112233-4455-6677-8899-aabbccddeeff");
    }
}
