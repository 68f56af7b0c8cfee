//! Writing many events at once without the executor: capture turns a 1,000-row statement into
//! 1,000 events, and an INSERT through SPI would plan, scan an unnest, fire the chain trigger and
//! insert index entries one row at a time. Here each row is chained by the same function the
//! trigger uses ([`chain_event`]), the rows go to the heap with `heap_multi_insert` (one WAL record
//! per page, as COPY does) and then into every index of `custos.events`.
//!
//! Only while `custos.events` has nothing else that an INSERT would run: no other INSERT trigger,
//! no CHECK constraint, no generated column (see [`Appender::open`]). Otherwise callers fall back
//! to a plain INSERT, so what other modules hang on the table still fires.

use super::row::{open_events, Columns};
use super::trigger::{chain_event, Caller, Made};
use crate::error::raise;
use crate::pg::tuple::Row;
use pgrx::{pg_sys, PgSqlErrorCode};
use std::ffi::CStr;

/// The fields a client gives for one event; the rest is filled in by [`chain_event`].
pub struct NewEvent<'a> {
    pub tenant: [u8; 16],
    pub action: &'a str,
    pub entity_type: &'a str,
    pub entity_id: Option<&'a str>,
    /// A JSON object as text; stored as jsonb ([`crate::pg::jsonb::from_json_text`]).
    pub details: &'a str,
    /// `details` already as a whole jsonb value (varlena header first); then `details` must be
    /// exactly its print.
    pub details_stored: Option<&'a [u8]>,
}

/// Rows written by one `heap_multi_insert` (COPY buffers 1,000; a few pages' worth is enough).
const SLOTS: usize = 64;

/// `custos.events` opened for direct appends; closed on drop (on ERROR, the transaction's
/// resource owner releases what is open).
pub struct Appender {
    rel: pg_sys::Relation,
    columns: Columns,
    estate: *mut pg_sys::EState,
    result_rel: *mut pg_sys::ResultRelInfo,
    /// A copy of the relation's descriptor, for the slots.
    tupdesc: pg_sys::TupleDesc,
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    /// Rows and index entries of one batch live here until the batch is written.
    batch_memory: pg_sys::MemoryContext,
    /// The primary key, when it is the table's only index.
    primary_key: Option<PrimaryKey>,
}

/// `custos.events`' primary key (tenant_id, seq), when it is the table's only index: its entries
/// are then made from the values just chained, where the executor's path would read them back out
/// of each stored row (and cost another guarded FFI call per event).
struct PrimaryKey {
    index: pg_sys::Relation,
    info: *mut pg_sys::IndexInfo,
}

/// The relation's [`PrimaryKey`], if it has no other index and the key is as custos made it.
unsafe fn sole_primary_key(
    result_rel: *mut pg_sys::ResultRelInfo,
    c: &Columns,
) -> Option<PrimaryKey> {
    unsafe {
        if (*result_rel).ri_NumIndices != 1 {
            return None;
        }
        let index = *(*result_rel).ri_IndexRelationDescs;
        let info = *(*result_rel).ri_IndexRelationInfo;
        let i = &*info;
        let as_made = i.ii_NumIndexAttrs == 2
            && i.ii_NumIndexKeyAttrs == 2
            && i.ii_IndexAttrNumbers[0] as usize == c.tenant_id + 1
            && i.ii_IndexAttrNumbers[1] as usize == c.seq + 1
            && i.ii_Expressions.is_null()
            && i.ii_Predicate.is_null()
            && i.ii_ExclusionOps.is_null()
            && i.ii_Unique
            && i.ii_ReadyForInserts
            && (*(*index).rd_index).indimmediate;
        as_made.then_some(PrimaryKey { index, info })
    }
}

/// Whether an INSERT into the relation would do more than the chain trigger and the indexes.
unsafe fn needs_executor(rel: pg_sys::Relation) -> bool {
    unsafe {
        let relkind = (*(*rel).rd_rel).relkind as u8;
        if relkind != pg_sys::RELKIND_RELATION {
            return true;
        }
        let constr = (*(*rel).rd_att).constr;
        if !constr.is_null() && ((*constr).num_check > 0 || (*constr).has_generated_stored) {
            return true;
        }
        let triggers = (*rel).trigdesc;
        if triggers.is_null() {
            return false;
        }
        let n = (*triggers).numtriggers.max(0) as usize;
        std::slice::from_raw_parts((*triggers).triggers, n)
            .iter()
            .any(|t| {
                let on_insert = t.tgtype as u32 & pg_sys::TRIGGER_TYPE_INSERT != 0;
                let enabled = t.tgenabled as u8 != pg_sys::TRIGGER_DISABLED;
                on_insert && enabled && CStr::from_ptr(t.tgname).to_bytes() != b"zz_chain"
            })
    }
}

impl Appender {
    /// Opens `custos.events` for appends, or `None` when an INSERT must go through the executor.
    pub fn open() -> Option<Appender> {
        // SAFETY: backend thread inside a transaction. Everything made here is released by Drop,
        // or by the transaction's abort on ERROR.
        unsafe {
            let rel = open_events(pg_sys::RowExclusiveLock);
            if needs_executor(rel) {
                pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
                return None;
            }
            let estate = pg_sys::CreateExecutorState();
            let result_rel = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
                .cast::<pg_sys::ResultRelInfo>();
            pg_sys::InitResultRelInfo(result_rel, rel, 1, std::ptr::null_mut(), 0);
            pg_sys::ExecOpenIndices(result_rel, false);
            let batch_memory = pg_sys::AllocSetContextCreateExtended(
                pg_sys::CurrentMemoryContext,
                c"custos append batch".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            );
            let columns = Columns::of(rel);
            Some(Appender {
                rel,
                primary_key: sole_primary_key(result_rel, &columns),
                columns,
                estate,
                result_rel,
                tupdesc: pg_sys::CreateTupleDescCopy((*rel).rd_att),
                slots: Vec::new(),
                batch_memory,
            })
        }
    }

    /// Chains and writes `events` in order. Each is checked and chained exactly as an INSERT of
    /// the same fields would be; an ERROR leaves the (sub)transaction to roll everything back.
    pub fn append<'e>(&mut self, events: impl Iterator<Item = NewEvent<'e>>) {
        let mut events = events.peekable();
        // SAFETY: the relation, executor state and slots were made by `open` for this relation;
        // every datum is made in batch_memory, which outlives the writes below.
        unsafe {
            // Made before the switch: what it keeps for every event stays in the caller's memory.
            let caller = Caller::current();
            let caller_memory = pg_sys::MemoryContextSwitchTo(self.batch_memory);
            let natts = (*self.tupdesc).natts as usize;
            let c = &self.columns;
            // Most batches repeat the same action and entity type: one datum serves them all,
            // kept in a buffer of its own (batch_memory is reset after every write). A value
            // past the first eight goes into the buffer given for its column.
            let mut constants: Vec<(String, Vec<u8>)> = Vec::new();
            let mut action = Vec::new();
            let mut text_of = |s: &str, buffer: &mut Vec<u8>| {
                if let Some(i) = constants.iter().position(|(k, _)| *k == s) {
                    return pg_sys::Datum::from(constants[i].1.as_ptr());
                }
                if constants.len() < 8 {
                    let mut kept = Vec::new();
                    let d = text_datum_in(s, &mut kept);
                    constants.push((s.to_owned(), kept));
                    return d;
                }
                text_datum_in(s, buffer)
            };
            // One row buffer for every event, cleared before each, and the storage of the datums
            // made for it (valid until the row is formed).
            let mut row = Row {
                values: vec![pg_sys::Datum::from(0usize); natts],
                nulls: vec![true; natts],
            };
            let mut made = Made::default();
            let mut entity_id = Vec::new();
            let mut entity_type = Vec::new();
            // Each row's primary key, for its index entry.
            let mut keys = [([0u8; 16], 0i64); SLOTS];
            while events.peek().is_some() {
                let mut n = 0;
                for event in events.by_ref().take(SLOTS) {
                    if self.slots.len() == n {
                        // The descriptor is a private copy: slots of the relation's own would pin
                        // it in the resource owner, which costs more than the slot.
                        // Made outside batch_memory: the slots outlive each batch.
                        let batch = pg_sys::MemoryContextSwitchTo(caller_memory);
                        let slot = pg_sys::MakeSingleTupleTableSlot(
                            self.tupdesc,
                            &pg_sys::TTSOpsHeapTuple,
                        );
                        pg_sys::MemoryContextSwitchTo(batch);
                        self.slots.push(slot);
                    }
                    row.values.fill(pg_sys::Datum::from(0usize));
                    row.nulls.fill(true);
                    let mut tenant = event.tenant;
                    row.set(c.tenant_id, Some(pg_sys::Datum::from(tenant.as_mut_ptr())));
                    row.set(c.action, Some(text_of(event.action, &mut action)));
                    row.set(
                        c.entity_type,
                        Some(text_of(event.entity_type, &mut entity_type)),
                    );
                    row.set(
                        c.entity_id,
                        event.entity_id.map(|id| text_datum_in(id, &mut entity_id)),
                    );
                    let (details, printed) = match event.details_stored {
                        // Used in place when aligned as jsonb needs (it is read, then copied
                        // into the tuple); else copied.
                        Some(jsonb) if (jsonb.as_ptr() as usize).is_multiple_of(4) => {
                            (pg_sys::Datum::from(jsonb.as_ptr().cast_mut()), true)
                        }
                        Some(jsonb) => (
                            crate::pg::jsonb::jsonb_datum(&jsonb[pg_sys::VARHDRSZ..]),
                            true,
                        ),
                        None => crate::pg::jsonb::from_json_text_printed(event.details),
                    };
                    row.set(c.details, Some(details));
                    let printed = printed.then_some(event.details.as_bytes());
                    chain_event(self.rel, c, &caller, &mut row, printed, &mut made);
                    keys[n] = (event.tenant, row.values[c.seq].value() as i64);
                    check_not_null(self.tupdesc, &row);
                    let tuple = pg_sys::heap_form_tuple(
                        self.tupdesc,
                        row.values.as_mut_ptr(),
                        row.nulls.as_mut_ptr(),
                    );
                    // The slot's to free (cleared below, before batch_memory is reset): a tuple
                    // the slot does not own, heap_multi_insert would first copy into the slot.
                    pg_sys::ExecStoreHeapTuple(tuple, self.slots[n], true);
                    n += 1;
                }
                let cid = pg_sys::GetCurrentCommandId(true);
                pg_sys::heap_multi_insert(
                    self.rel,
                    self.slots.as_mut_ptr(),
                    n as i32,
                    cid,
                    0,
                    std::ptr::null_mut(),
                );
                for (&slot, (tenant, seq)) in self.slots[..n].iter().zip(&mut keys) {
                    match &self.primary_key {
                        Some(key) => {
                            let mut values = [
                                pg_sys::Datum::from(tenant.as_mut_ptr()),
                                pg_sys::Datum::from(*seq),
                            ];
                            let mut isnull = [false; 2];
                            // heap_multi_insert left each row's place in its slot.
                            pg_sys::index_insert(
                                key.index,
                                values.as_mut_ptr(),
                                isnull.as_mut_ptr(),
                                &mut (*slot).tts_tid,
                                self.rel,
                                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES,
                                false,
                                key.info,
                            );
                        }
                        None => insert_index_entries(self.result_rel, slot, self.estate),
                    }
                }
                // What index insertion evaluated per tuple (ResetPerTupleExprContext).
                let per_tuple = (*self.estate).es_per_tuple_exprcontext;
                if !per_tuple.is_null() {
                    pg_sys::MemoryContextReset((*per_tuple).ecxt_per_tuple_memory);
                }
                // The rows are written: their memory serves the next ones. (Reset once a flush, the
                // context grew by fresh blocks for every 1,000 events, and first touching them,
                // page faults, cost more than forming the rows.)
                for &slot in &self.slots[..n] {
                    pg_sys::ExecClearTuple(slot);
                }
                pg_sys::MemoryContextReset(self.batch_memory);
            }
            pg_sys::MemoryContextSwitchTo(caller_memory);
        }
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        // SAFETY: made by `open`, released once; the table lock stays until the transaction ends.
        unsafe {
            // Dropped while unwinding from an ERROR raised mid-batch, batch_memory is still the
            // current context: never leave the current context pointing at a deleted one.
            if pg_sys::CurrentMemoryContext == self.batch_memory {
                pg_sys::MemoryContextSwitchTo((*self.batch_memory).parent);
            }
            for &slot in &self.slots {
                pg_sys::ExecDropSingleTupleTableSlot(slot);
            }
            pg_sys::ExecCloseIndices(self.result_rel);
            pg_sys::FreeTupleDesc(self.tupdesc);
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::MemoryContextDelete(self.batch_memory);
            pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}

/// A text datum of `s` written into `buffer` (a 4-byte header, then the text): valid until the
/// buffer is next written.
fn text_datum_in(s: &str, buffer: &mut Vec<u8>) -> pg_sys::Datum {
    buffer.clear();
    buffer.extend_from_slice(&crate::pg::jsonb::varlena_header_4b(
        pg_sys::VARHDRSZ + s.len(),
    ));
    buffer.extend_from_slice(s.as_bytes());
    pg_sys::Datum::from(buffer.as_mut_ptr())
}

/// The executor checks NOT NULL before writing; the chain fills every such column of
/// `custos.events`, but a column made NOT NULL later must not be written null either.
unsafe fn check_not_null(tupdesc: pg_sys::TupleDesc, row: &Row) {
    unsafe {
        for (i, attr) in crate::pg::tuple::attributes(tupdesc).iter().enumerate() {
            if attr.attnotnull && row.nulls[i] {
                raise(
                    PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
                    format!(
                        "null value in column \"{}\" of custos.events",
                        CStr::from_ptr(attr.attname.data.as_ptr()).to_string_lossy()
                    ),
                    None,
                );
            }
        }
    }
}

unsafe fn insert_index_entries(
    result_rel: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    estate: *mut pg_sys::EState,
) {
    // No ON CONFLICT and no deferred constraints on custos.events: nothing to recheck later.
    unsafe {
        #[cfg(feature = "pg15")]
        pg_sys::ExecInsertIndexTuples(
            result_rel,
            slot,
            estate,
            false,
            false,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        #[cfg(not(feature = "pg15"))]
        pg_sys::ExecInsertIndexTuples(
            result_rel,
            slot,
            estate,
            false,
            false,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            false,
        );
    }
}
