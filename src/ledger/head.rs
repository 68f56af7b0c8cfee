//! Chain heads: where each tenant's chain ends, and the lock that keeps it linear.
//!
//! The first event of a tenant in a transaction takes an exclusive lock on that tenant (an
//! advisory lock tag that SQL-level advisory locks cannot collide with, see [`lock_tenant`]), then
//! reads the tenant's last row through the primary-key index with a dirty snapshot: every committed
//! row, and the rows of a writer that is committing right now (see below), whatever the
//! transaction's own snapshot. So even a REPEATABLE READ or SERIALIZABLE transaction chains onto
//! the writer it waited for, and, the snapshot not being MVCC, takes no SSI predicate lock (with
//! one, writers of a tenant abort each other at SERIALIZABLE). From then on the head lives in
//! backend memory: every further event of that tenant in the transaction costs O(1), so one
//! transaction of a million rows stays linear. Savepoint rollbacks restore the head as it was when
//! the savepoint began; the end of the transaction forgets everything.
//!
//! Hand-off at commit: holding the lock until the commit record is flushed would make the next
//! writer of the tenant wait for that flush before it even starts its insert. Instead the lock is
//! released when the transaction begins to commit (`XACT_EVENT_PRE_COMMIT`), after its last event:
//! the next writer reads the committing rows as the head and does its own work while the
//! predecessor flushes. Before it commits in turn, it waits for that predecessor to end, and fails
//! with SQLSTATE 40001 if the predecessor did not commit after all (an error can still occur in
//! the last steps of a commit). A tenant's transactions therefore still commit in chain order, and
//! a commit record is never durable before its predecessor's. At SERIALIZABLE, where commit-time
//! serialization failures are ordinary, the lock is held until the end instead, so that such a
//! failure cannot take the next writer with it.
//!
//! Commit records in chain order: waiting for the predecessor's end means waiting for its WAL
//! flush, so the successor's commit record cannot join that flush. With `track_commit_timestamp`
//! on, the ledger's writers wait only until the predecessor's commit record is written (its commit
//! timestamp is set right after, inside the commit's critical section: from then on it cannot roll
//! back, and any later commit record follows it in the WAL, so a crash that keeps the successor
//! keeps the predecessor too). The successor may then become visible an instant before its
//! predecessor (or, with a synchronous standby, long before it, if it commits with
//! `synchronous_commit = local`). The chain's readers therefore fill such holes with the rows of
//! writers whose commit record is written ([`super::row::scan_chain`]), and consumers that follow
//! the chain by seq stop below them ([`super::api`]'s `settled_seq`). The access log, whose
//! readers take their snapshot as it is, keeps waiting for its predecessors' end.

use super::chain::{Hash, HASH_LEN};
use crate::pg::locks::tenant_lock_tag;
pub use crate::pg::locks::LockKind;
use pgrx::pg_sys;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

/// `TopSubTransactionId` of xact.h (a macro, so not in the bindings).
const TOP_SUBXACT: pg_sys::SubTransactionId = 1;

/// How much of a predecessor's commit its successor waits for before committing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Succession {
    /// Its commit record (when `track_commit_timestamp` tells), else its end: for the ledger,
    /// whose readers fill the holes this leaves (see the module notes).
    AfterCommitRecord,
    /// Its end: for chains read with the snapshot as it is.
    AfterEnd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: Hash,
}

type TenantKey = [u8; 16];

#[derive(Default)]
struct State {
    /// The relation the heads were read from (custos.events, whose oid changes if the extension
    /// is made anew): heads of any other relation are never handed out.
    relid: pg_sys::Oid,
    /// Looked up and updated for every event: hashed with FxHash, not SipHash. Tenant ids are
    /// random or chosen by a writer who could then only slow down its own transaction.
    heads: FxHashMap<TenantKey, Head>,
    /// Every chain lock this transaction acquired, once per acquisition, to release at pre-commit.
    locks: Vec<pg_sys::LOCKTAG>,
    /// Transactions that were committing when we chained onto their rows; ours may commit only
    /// after them (see [`Succession`]).
    predecessors: Vec<(pg_sys::TransactionId, Succession)>,
    /// Set at pre-commit once the locks were handed over: the transaction may chain no more.
    handed_off: bool,
    /// (subtransaction, tenant, head before that subtransaction first changed it)
    undo: Vec<(pg_sys::SubTransactionId, TenantKey, Option<Head>)>,
    undo_recorded: HashSet<(pg_sys::SubTransactionId, TenantKey)>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// The head this transaction already holds for `tenant` in relation `relid`, if any.
pub fn cached(relid: pg_sys::Oid, tenant: &TenantKey) -> Option<Head> {
    STATE.with(|s| {
        let s = s.borrow();
        (s.relid == relid).then(|| s.heads.get(tenant).copied())?
    })
}

/// Records the new head of `tenant` in relation `relid` after an event was chained in
/// subtransaction `subid` (the current one).
pub fn advance(
    relid: pg_sys::Oid,
    subid: pg_sys::SubTransactionId,
    tenant: &TenantKey,
    head: Head,
) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.relid != relid {
            s.heads.clear();
            s.relid = relid;
        }
        // The top level needs no undo: a transaction abort forgets everything anyway.
        if subid != TOP_SUBXACT && s.undo_recorded.insert((subid, *tenant)) {
            let before = s.heads.get(tenant).copied();
            s.undo.push((subid, *tenant, before));
        }
        s.heads.insert(*tenant, head);
    });
}

/// Forgets this transaction's head of `tenant` in relation `relid`: rows were added that did not
/// go through the chain step (a restore); the next event reads the head from the table.
pub fn forget(relid: pg_sys::Oid, tenant: &TenantKey) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.relid == relid {
            s.heads.remove(tenant);
        }
    });
}

fn forget_all() {
    STATE.with(|s| *s.borrow_mut() = State::default());
}

fn on_subxact_commit(sub: pg_sys::SubTransactionId, parent: pg_sys::SubTransactionId) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let State {
            undo,
            undo_recorded,
            ..
        } = &mut *s;
        for entry in undo.iter_mut().filter(|e| e.0 == sub) {
            undo_recorded.remove(&(sub, entry.1));
            if parent == TOP_SUBXACT {
                entry.0 = 0; // dropped below
            } else if undo_recorded.insert((parent, entry.1)) {
                entry.0 = parent;
            } else {
                entry.0 = 0; // the parent already remembers an older state
            }
        }
        undo.retain(|e| e.0 != 0);
    });
}

fn on_subxact_abort(sub: pg_sys::SubTransactionId) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        while let Some(pos) = s.undo.iter().rposition(|e| e.0 == sub) {
            let (_, tenant, before) = s.undo.remove(pos);
            s.undo_recorded.remove(&(sub, tenant));
            match before {
                Some(h) => s.heads.insert(tenant, h),
                None => s.heads.remove(&tenant),
            };
        }
    });
}

/// Pre-commit: hands the tenants' chains to their next writers (unless SERIALIZABLE, see the
/// module notes), then waits for this transaction's predecessors.
pub(crate) fn hand_off() {
    // SAFETY: plain read of a backend global.
    let serializable = unsafe { pg_sys::XactIsoLevel } == pg_sys::XACT_SERIALIZABLE as i32;
    if !serializable {
        let locks = STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.heads.clear();
            s.handed_off = true;
            std::mem::take(&mut s.locks)
        });
        with_top_transaction_owner(|| {
            for tag in &locks {
                // SAFETY: each entry is one acquisition by the top-level owner, not yet released.
                unsafe {
                    pg_sys::LockRelease(tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false)
                };
            }
        });
    }
    await_predecessors();
}

/// Waits for each transaction whose rows this one chained onto, and fails if one did not commit.
fn await_predecessors() {
    let predecessors = STATE.with(|s| std::mem::take(&mut s.borrow_mut().predecessors));
    for (xid, succession) in predecessors {
        if succession == Succession::AfterCommitRecord && commit_record_written(xid) {
            continue;
        }
        // SAFETY: backend thread inside a transaction; waiting on a transaction id is what a
        // unique-index check does too. The predecessor is committing and waits for nothing of ours.
        let committed = unsafe {
            pg_sys::XactLockTableWait(
                xid,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                pg_sys::XLTW_Oper::XLTW_None,
            );
            pg_sys::TransactionIdDidCommit(xid)
        };
        if !committed {
            crate::error::raise(
                pgrx::PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                format!(
                    "could not commit: transaction {} wrote the audit events this transaction's events follow in their chain, and it was rolled back",
                    xid.into_inner()
                ),
                Some("retry the transaction"),
            );
        }
    }
}

/// Whether `xid` has written its commit record: its commit timestamp is set right after, inside
/// the commit's critical section, so it can no longer roll back. Known only on a primary with
/// `track_commit_timestamp` on; false otherwise.
pub(crate) fn commit_record_written(xid: pg_sys::TransactionId) -> bool {
    // SAFETY: backend thread; reads a setting and the commit-timestamp SLRU, which is active on a
    // primary whenever the setting is on (it takes a restart to change).
    unsafe {
        if !pg_sys::track_commit_timestamp || pg_sys::RecoveryInProgress() {
            return false;
        }
        let mut ts: pg_sys::TimestampTz = 0;
        pg_sys::TransactionIdGetCommitTsData(xid, &mut ts, std::ptr::null_mut())
    }
}

/// Runs `f` with the top-level transaction's resource owner current, so that chain locks belong to
/// the transaction itself (not to a portal or subtransaction that ends first) and can be released
/// at pre-commit.
fn with_top_transaction_owner<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::ResourceOwner);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the owner that was current, backend thread.
            unsafe { pg_sys::CurrentResourceOwner = self.0 };
        }
    }
    // SAFETY: backend globals, read and written on the backend thread inside a transaction.
    let _restore = unsafe {
        let saved = Restore(pg_sys::CurrentResourceOwner);
        pg_sys::CurrentResourceOwner = pg_sys::TopTransactionResourceOwner;
        saved
    };
    f()
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT if has_chain_state() => hand_off(),
        // A prepared transaction keeps its locks until COMMIT PREPARED, which may be much later.
        XACT_EVENT_PRE_PREPARE if has_chain_state() => await_predecessors(),
        XACT_EVENT_COMMIT
        | XACT_EVENT_ABORT
        | XACT_EVENT_PARALLEL_COMMIT
        | XACT_EVENT_PARALLEL_ABORT
        | XACT_EVENT_PREPARE => forget_all(),
        _ => {}
    }
}

/// Whether this transaction holds any chain lock (it wrote events): other writers of those
/// tenants wait until it commits.
pub fn holds_chain_locks() -> bool {
    STATE.with(|s| !s.borrow().locks.is_empty())
}

fn has_chain_state() -> bool {
    STATE.with(|s| {
        let s = s.borrow();
        !s.locks.is_empty() || !s.predecessors.is_empty()
    })
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_COMMIT_SUB => on_subxact_commit(sub, parent),
        SUBXACT_EVENT_ABORT_SUB => on_subxact_abort(sub),
        _ => {}
    }
}

/// Registers the transaction callbacks; once per backend, from `_PG_init`.
pub fn init() {
    // SAFETY: backend thread, during library load; the callbacks are 'static functions.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

/// Waits for and takes the tenant's chain lock, until the transaction begins to commit. Two tenants
/// may share a lock (64-bit fold of the UUID); that only costs concurrency, never correctness.
pub fn lock_tenant(tenant: &TenantKey) {
    lock_chain(tenant, LockKind::Ledger)
}

/// Like [`lock_tenant`], for the chain whose locks carry `field4`. The lock is released when the
/// transaction begins to commit (see the module notes), or at its end.
pub fn lock_chain(tenant: &TenantKey, kind: LockKind) {
    // Nothing in PostgreSQL's own commit sequence writes after the pre-commit callbacks; another
    // extension's callback might. Its event could only chain onto a successor that already
    // chained onto this transaction, so it is refused.
    if STATE.with(|s| s.borrow().handed_off) {
        crate::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            "an audit event was written after its transaction began to commit",
            Some("write audit events before COMMIT, not from commit-time callbacks"),
        );
    }
    // SAFETY: reading a backend global.
    let tag = tenant_lock_tag(unsafe { pg_sys::MyDatabaseId }.to_u32(), tenant, kind);
    with_top_transaction_owner(|| {
        // SAFETY: backend thread inside a transaction; LockAcquire raises ERROR on deadlock.
        unsafe {
            pg_sys::LockAcquire(
                &tag,
                pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
                false,
                false,
            );
        }
    });
    STATE.with(|s| s.borrow_mut().locks.push(tag));
}

/// Attribute numbers (1-based) of the columns the head lookup needs.
#[derive(Clone, Copy)]
pub struct HeadColumns {
    pub tenant_id: i16,
    pub seq: i16,
    pub hash: i16,
}

thread_local! {
    /// Per (relation, tenant), a seq that this backend's last head lookup found. A tenant's chain
    /// only grows at the top, so the next lookup starts its index scan there: a btree scan reads
    /// every matching entry of the leaf page it lands on, and a tenant's entries fill whole
    /// pages, so without a lower bound each single-row transaction compares a page of keys. The
    /// hint only narrows the scan; when nothing is found at or past it (retention removed the
    /// top, or the seq was never committed), the lookup scans the whole range as before.
    static SEEN: RefCell<HashMap<(pg_sys::Oid, TenantKey), i64>> = RefCell::new(HashMap::new());
}

/// Tenants remembered per backend before the hints start over.
const SEEN_LIMIT: usize = 65_536;

/// Reads the tenant's last row (highest seq) through the primary key (tenant_id, seq): committed,
/// or written by a transaction that is committing, which then becomes a predecessor this one waits
/// for before it commits (see the module notes). Call only while holding the tenant's lock.
///
/// # Safety
/// `rel` must be the open ledger relation.
pub unsafe fn read_head(
    rel: pg_sys::Relation,
    cols: HeadColumns,
    tenant: &TenantKey,
    succession: Succession,
) -> Option<Head> {
    let relid = unsafe { (*rel).rd_id };
    let hint = SEEN.with(|s| s.borrow().get(&(relid, *tenant)).copied());
    // SAFETY: as the caller promised.
    let (head, writer) = hint
        .and_then(|from| unsafe { scan_head(rel, cols, tenant, Some(from)) })
        .or_else(|| unsafe { scan_head(rel, cols, tenant, None) })?;
    if let Some(xid) = writer {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            match s.predecessors.iter_mut().find(|p| p.0 == xid) {
                Some(p) if succession == Succession::AfterEnd => p.1 = succession,
                Some(_) => {}
                None => s.predecessors.push((xid, succession)),
            }
        });
    }
    SEEN.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() >= SEEN_LIMIT {
            s.clear();
        }
        s.insert((relid, *tenant), head.seq);
    });
    Some(head)
}

/// The tenant's highest row, among those at or past `from_seq` when given, with the id of the
/// transaction that wrote it if that one is still in progress (and not ours).
unsafe fn scan_head(
    rel: pg_sys::Relation,
    cols: HeadColumns,
    tenant: &TenantKey,
    from_seq: Option<i64>,
) -> Option<(Head, Option<pg_sys::TransactionId>)> {
    unsafe {
        let index_oid = crate::pg::tuple::primary_key_index(rel);
        if index_oid == pg_sys::InvalidOid {
            crate::error::raise(
                pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "the ledger table has no primary key on (tenant_id, seq)",
                Some("reinstall the custos extension"),
            );
        }
        let index = pg_sys::index_open(index_oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        // InitDirtySnapshot: the visibility check sets its xmin to the writer of the row it
        // accepts when that writer is another transaction still in progress.
        let mut dirty: pg_sys::SnapshotData = std::mem::zeroed();
        dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
        let snapshot: pg_sys::Snapshot = &mut dirty;
        // The scan key's datum points at our copy of the UUID for the duration of the scan.
        let mut key_bytes: TenantKey = *tenant;
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut keys[0],
            cols.tenant_id,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::Oid::from(pg_sys::F_UUID_EQ),
            pg_sys::Datum::from(key_bytes.as_mut_ptr()),
        );
        if let Some(from) = from_seq {
            pg_sys::ScanKeyInit(
                &mut keys[1],
                cols.seq,
                pg_sys::BTGreaterEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::Oid::from(pg_sys::F_INT8GE),
                pg_sys::Datum::from(from),
            );
        }
        let nkeys = if from_seq.is_some() { 2 } else { 1 };
        let scan =
            pg_sys::systable_beginscan_ordered(rel, index, snapshot, nkeys, keys.as_mut_ptr());
        let tuple =
            pg_sys::systable_getnext_ordered(scan, pg_sys::ScanDirection::BackwardScanDirection);
        let head = if tuple.is_null() {
            None
        } else {
            let tupdesc = (*rel).rd_att;
            let natts = (*tupdesc).natts as usize;
            let mut values = vec![pg_sys::Datum::from(0usize); natts];
            let mut nulls = vec![true; natts];
            pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
            let seq_i = (cols.seq - 1) as usize;
            let hash_i = (cols.hash - 1) as usize;
            if nulls[seq_i] || nulls[hash_i] {
                None
            } else {
                let seq = values[seq_i].value() as i64;
                let bytes = pgrx::varlena::varlena_to_byte_slice(pg_sys::pg_detoast_datum_packed(
                    values[hash_i].cast_mut_ptr(),
                ));
                let mut hash = [0u8; HASH_LEN];
                if bytes.len() == HASH_LEN {
                    hash.copy_from_slice(bytes);
                }
                let xmin = (*snapshot).xmin;
                let writer = (xmin != pg_sys::InvalidTransactionId).then_some(xmin);
                Some((Head { seq, hash }, writer))
            }
        };
        pg_sys::systable_endscan_ordered(scan);
        pg_sys::index_close(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        head
    }
}
