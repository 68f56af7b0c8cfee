//! Reading ledger rows at the level of datums: the trigger and the verifier turn a row into
//! [`EventFields`] with the same function, so what is hashed at insert is what is checked later,
//! and the verifier scans the primary-key index directly (no SPI, no per-column allocation).

use super::chain::{hash_from_bytes, EventFields, Hash};
use super::head;
use super::head::HeadColumns;
use crate::error::raise;
use pgrx::{pg_sys, PgSqlErrorCode};

/// Column positions (0-based) in `custos.events`, found by name so that column order is free.
#[derive(Clone, Copy)]
pub struct Columns {
    pub tenant_id: usize,
    pub seq: usize,
    pub id: usize,
    pub occurred_at: usize,
    pub recorded_at: usize,
    pub actor: usize,
    pub db_role: usize,
    pub txid: usize,
    pub action: usize,
    pub entity_type: usize,
    pub entity_id: usize,
    pub severity: usize,
    pub details: usize,
    pub ip_address: usize,
    pub user_agent: usize,
    pub prev_hash: usize,
    pub hash: usize,
}

/// Each column of `custos.events` with the type its datums are read as: a datum is never read as
/// anything but what its column holds (an int8 read as a pointer would crash the server).
const COLUMN_TYPES: [(&str, pg_sys::Oid); 17] = [
    ("tenant_id", pg_sys::UUIDOID),
    ("seq", pg_sys::INT8OID),
    ("id", pg_sys::UUIDOID),
    ("occurred_at", pg_sys::TIMESTAMPTZOID),
    ("recorded_at", pg_sys::TIMESTAMPTZOID),
    ("actor", pg_sys::TEXTOID),
    ("db_role", pg_sys::TEXTOID),
    ("txid", pg_sys::INT8OID),
    ("action", pg_sys::TEXTOID),
    ("entity_type", pg_sys::TEXTOID),
    ("entity_id", pg_sys::TEXTOID),
    ("severity", pg_sys::TEXTOID),
    ("details", pg_sys::JSONBOID),
    ("ip_address", pg_sys::TEXTOID),
    ("user_agent", pg_sys::TEXTOID),
    ("prev_hash", pg_sys::BYTEAOID),
    ("hash", pg_sys::BYTEAOID),
];

thread_local! {
    static LAYOUT: crate::pg::tuple::Layout<17> = const { crate::pg::tuple::Layout::new() };
}

impl Columns {
    /// The columns of `custos.events`; raises for any other relation.
    ///
    /// # Safety
    /// `rel` must be an open relation.
    pub unsafe fn of(rel: pg_sys::Relation) -> Columns {
        unsafe {
            let pos = LAYOUT.with(|l| {
                l.of(
                    rel,
                    c"events",
                    "custos_internal.events_chain",
                    &COLUMN_TYPES,
                )
            });
            Columns {
                tenant_id: pos[0],
                seq: pos[1],
                id: pos[2],
                occurred_at: pos[3],
                recorded_at: pos[4],
                actor: pos[5],
                db_role: pos[6],
                txid: pos[7],
                action: pos[8],
                entity_type: pos[9],
                entity_id: pos[10],
                severity: pos[11],
                details: pos[12],
                ip_address: pos[13],
                user_agent: pos[14],
                prev_hash: pos[15],
                hash: pos[16],
            }
        }
    }

    pub fn head_columns(&self) -> HeadColumns {
        HeadColumns {
            tenant_id: self.tenant_id as i16 + 1,
            seq: self.seq as i16 + 1,
            hash: self.hash as i16 + 1,
        }
    }
}

pub use crate::pg::varlena::bytes_of;

/// The hashed fields of a deformed `custos.events` row. `details` is printed with jsonb's
/// output function, in the current memory context; `ip_address` is stored as inet's text.
///
/// # Safety
/// `values`/`nulls` must come from deforming a row of the relation `c` was taken from, with every
/// NOT NULL column of the chain set.
pub unsafe fn event_fields<'a>(
    c: &Columns,
    values: &[pg_sys::Datum],
    nulls: &[bool],
) -> EventFields<'a> {
    // SAFETY: as promised by the caller.
    unsafe {
        let details = crate::pg::jsonb::Doc::of(values[c.details]).text();
        event_fields_with_details(c, values, nulls, details)
    }
}

/// Like [`event_fields`], with `details` already printed.
///
/// # Safety
/// As for [`event_fields`].
pub unsafe fn event_fields_with_details<'a>(
    c: &Columns,
    values: &[pg_sys::Datum],
    nulls: &[bool],
    details: &'a [u8],
) -> EventFields<'a> {
    unsafe {
        let uuid = |i: usize| -> [u8; 16] { *values[i].cast_mut_ptr::<[u8; 16]>() };
        let opt = |i: usize| -> Option<&'a [u8]> { (!nulls[i]).then(|| bytes_of(values[i])) };
        EventFields {
            tenant_id: uuid(c.tenant_id),
            seq: values[c.seq].value() as i64,
            id: uuid(c.id),
            occurred_at: values[c.occurred_at].value() as i64,
            recorded_at: values[c.recorded_at].value() as i64,
            actor: bytes_of(values[c.actor]),
            db_role: bytes_of(values[c.db_role]),
            txid: values[c.txid].value() as i64,
            action: bytes_of(values[c.action]),
            entity_type: bytes_of(values[c.entity_type]),
            entity_id: opt(c.entity_id),
            severity: bytes_of(values[c.severity]),
            details,
            ip_address: opt(c.ip_address),
            user_agent: opt(c.user_agent),
        }
    }
}

/// Opens `custos.events`.
pub fn open_events(lockmode: u32) -> pg_sys::Relation {
    open_custos_table(c"events", lockmode)
}

/// Opens a table of the custos schema.
pub fn open_custos_table(name: &std::ffi::CStr, lockmode: u32) -> pg_sys::Relation {
    let relid = crate::pg::tuple::custos_relid(name);
    if relid == pg_sys::InvalidOid {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("custos.{} does not exist", name.to_string_lossy()),
            None,
        );
    }
    // SAFETY: backend thread inside a transaction; the relation exists.
    unsafe { pg_sys::table_open(relid, lockmode as pg_sys::LOCKMODE) }
}

/// One stored row as the verifier sees it.
pub struct StoredRow<'a> {
    pub seq: i64,
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
    /// Not visible to the snapshot yet, though its writer has committed or is committing: a hole
    /// that a later writer of the tenant left by becoming visible first (see `head`).
    pub settling: bool,
    columns: &'a Columns,
    values: &'a [pg_sys::Datum],
    nulls: &'a [bool],
}

impl StoredRow<'_> {
    /// The hashed fields. Prints `details`, so readers that only follow seqs do not call it.
    pub fn fields(&self) -> EventFields<'_> {
        // SAFETY: the row was deformed from `custos.events` with these columns (`stored_row`).
        unsafe { event_fields(self.columns, self.values, self.nulls) }
    }
}

/// Calls `f` for each row of `tenant` with `seq >= from_seq` (and `<= to_seq`), in seq order,
/// through the primary key with the statement's snapshot, and fills the holes that snapshot may
/// show below a visible row with the rows of writers that are committing (`settling`). A seq that
/// nobody wrote stays missing. Each row's memory is freed before the next, so the scan runs in
/// constant memory. `f` returns false to stop.
pub fn scan_chain(
    tenant: &[u8; 16],
    from_seq: i64,
    to_seq: Option<i64>,
    mut f: impl FnMut(&StoredRow<'_>) -> bool,
) {
    // SAFETY: backend thread; every resource opened here is closed before returning, and on ERROR
    // the transaction's resource owner releases the scan, snapshot, locks and memory context.
    unsafe {
        let (rel, c, index) = open_events_for_reading();
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetActiveSnapshot());
        let mut tenant_key = *tenant;
        let mut keys = tenant_seq_keys(&c, &mut tenant_key, from_seq, false);
        let scan = pg_sys::systable_beginscan_ordered(rel, index, snapshot, 2, keys.as_mut_ptr());
        let row_cx = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CurrentMemoryContext,
            c"custos verify row".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        let tupdesc = (*rel).rd_att;
        let natts = (*tupdesc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![true; natts];
        let mut hole_values = values.clone();
        let mut hole_nulls = nulls.clone();
        let mut expected = from_seq;
        let in_range = |seq: i64| to_seq.is_none_or(|to| seq <= to);
        loop {
            let tuple =
                pg_sys::systable_getnext_ordered(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let old_cx = pg_sys::MemoryContextSwitchTo(row_cx);
            pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
            let seq = values[c.seq].value() as i64;
            let mut go_on = true;
            while go_on && expected < seq && in_range(expected) {
                let hole = settled_tuple(rel, index, &c, tenant, expected);
                if hole.is_null() {
                    break;
                }
                pg_sys::heap_deform_tuple(
                    hole,
                    tupdesc,
                    hole_values.as_mut_ptr(),
                    hole_nulls.as_mut_ptr(),
                );
                go_on = f(&stored_row(&c, &hole_values, &hole_nulls, true));
                expected += 1;
            }
            go_on = go_on && in_range(seq) && f(&stored_row(&c, &values, &nulls, false));
            expected = seq + 1;
            pg_sys::MemoryContextSwitchTo(old_cx);
            pg_sys::MemoryContextReset(row_cx);
            if !go_on {
                break;
            }
        }
        pg_sys::MemoryContextDelete(row_cx);
        pg_sys::systable_endscan_ordered(scan);
        pg_sys::UnregisterSnapshot(snapshot);
        close_events_for_reading(rel, index);
    }
}

/// `custos.events`, its columns and its primary key, opened for reading.
fn open_events_for_reading() -> (pg_sys::Relation, Columns, pg_sys::Relation) {
    let rel = open_events(pg_sys::AccessShareLock);
    // SAFETY: `rel` is the open ledger relation; it has a primary key (custos creates it).
    unsafe {
        let index = pg_sys::index_open(
            crate::pg::tuple::primary_key_index(rel),
            pg_sys::AccessShareLock as pg_sys::LOCKMODE,
        );
        (rel, Columns::of(rel), index)
    }
}

fn close_events_for_reading(rel: pg_sys::Relation, index: pg_sys::Relation) {
    // SAFETY: both were opened by `open_events_for_reading` and are closed once.
    unsafe {
        pg_sys::index_close(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    }
}

/// # Safety
/// `values`/`nulls` hold a deformed `custos.events` row that outlives the result.
unsafe fn stored_row<'a>(
    c: &'a Columns,
    values: &'a [pg_sys::Datum],
    nulls: &'a [bool],
    settling: bool,
) -> StoredRow<'a> {
    // SAFETY: as the caller promised.
    unsafe {
        StoredRow {
            seq: values[c.seq].value() as i64,
            prev_hash: bytes_of(values[c.prev_hash]),
            hash: bytes_of(values[c.hash]),
            settling,
            columns: c,
            values,
            nulls,
        }
    }
}

/// Scan keys on the primary key: `tenant_id = tenant` and `seq >= seq` (or `= seq`). The tenant
/// key points at `tenant`, which must outlive the scan.
unsafe fn tenant_seq_keys(
    c: &Columns,
    tenant: &mut [u8; 16],
    seq: i64,
    exact: bool,
) -> [pg_sys::ScanKeyData; 2] {
    // SAFETY: plain initialisation of scan keys with built-in btree operators.
    unsafe {
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut keys[0],
            (c.tenant_id + 1) as pg_sys::AttrNumber,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::Oid::from(pg_sys::F_UUID_EQ),
            pg_sys::Datum::from(tenant.as_mut_ptr()),
        );
        let (strategy, proc) = if exact {
            (pg_sys::BTEqualStrategyNumber, pg_sys::F_INT8EQ)
        } else {
            (pg_sys::BTGreaterEqualStrategyNumber, pg_sys::F_INT8GE)
        };
        pg_sys::ScanKeyInit(
            &mut keys[1],
            (c.seq + 1) as pg_sys::AttrNumber,
            strategy as pg_sys::StrategyNumber,
            pg_sys::Oid::from(proc),
            pg_sys::Datum::from(seq),
        );
        keys
    }
}

/// The row at (`tenant`, `seq`) whose writer has committed or written its commit record, whether
/// or not the statement's snapshot sees it, copied into the current memory context; null if there
/// is none. A writer still in progress before that point may yet roll back: its row is not taken.
///
/// # Safety
/// `rel` and `index` are the open ledger relation and its primary key.
unsafe fn settled_tuple(
    rel: pg_sys::Relation,
    index: pg_sys::Relation,
    c: &Columns,
    tenant: &[u8; 16],
    seq: i64,
) -> pg_sys::HeapTuple {
    // SAFETY: as the caller promised; the scan is closed before returning.
    unsafe {
        // InitDirtySnapshot: the visibility check sets xmin to the writer of a row it accepts when
        // that writer is another transaction still in progress.
        let mut dirty: pg_sys::SnapshotData = std::mem::zeroed();
        dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
        let mut tenant_key = *tenant;
        let mut keys = tenant_seq_keys(c, &mut tenant_key, seq, true);
        let scan = pg_sys::systable_beginscan_ordered(rel, index, &mut dirty, 2, keys.as_mut_ptr());
        let mut found = std::ptr::null_mut();
        loop {
            let tuple =
                pg_sys::systable_getnext_ordered(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let writer = dirty.xmin;
            if writer == pg_sys::InvalidTransactionId || head::commit_record_written(writer) {
                found = pg_sys::heap_copytuple(tuple);
                break;
            }
        }
        pg_sys::systable_endscan_ordered(scan);
        found
    }
}

/// The stored hash of the row at (`tenant`, `seq`), visible or settling (see [`settled_tuple`]).
pub fn settled_hash(tenant: &[u8; 16], seq: i64) -> Option<Hash> {
    // SAFETY: backend thread; the relations are closed and the copy freed before returning.
    unsafe {
        let (rel, c, index) = open_events_for_reading();
        let tuple = settled_tuple(rel, index, &c, tenant, seq);
        let hash = (!tuple.is_null()).then(|| {
            let mut is_null = false;
            let d = pg_sys::heap_getattr(tuple, (c.hash + 1) as i32, (*rel).rd_att, &mut is_null);
            hash_from_bytes(if is_null { &[] } else { bytes_of(d) })
        });
        if !tuple.is_null() {
            pg_sys::heap_freetuple(tuple);
        }
        close_events_for_reading(rel, index);
        hash
    }
}
