//! The background workers: a launcher, and one worker per database of
//! `custos.worker_databases`, each named `custos worker <database>` in pg_stat_activity's
//! backend_type.
//!
//! They sleep on their latch (woken at commit by whatever queues work, or after
//! `custos.worker_naptime_ms`), reload settings on SIGHUP, and end on SIGTERM at the next
//! interrupt check: PostgreSQL's own `die` handler, so a provider call or webhook in flight is
//! interrupted too (both wait in short slices that check for interrupts). The launcher starts a
//! worker again within a second of its end (killed, crashed), the postmaster the launcher 5 s
//! after its own. Work happens in short transactions; provider
//! calls and deliveries happen between them, with no transaction open and no lock held.

use super::board::{self, Activity};
use crate::gucs;
use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker};
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use std::ffi::CString;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

const RESTART: Duration = Duration::from_secs(5);
/// How often a worker looks for scheduled jobs that are due.
const JOB_CHECK: Duration = Duration::from_secs(10);

/// Registers the launcher (from _PG_init, while preloading).
pub fn register_launcher() {
    BackgroundWorkerBuilder::new("custos launcher")
        .set_type("custos launcher")
        .set_library("custos")
        .set_function("custos_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(RESTART))
        .load();
}

// PostgreSQL's own signal handlers, by their C symbols (pg_sys wraps them as Rust functions).
#[allow(unsafe_code)]
unsafe extern "C-unwind" {
    fn die(signal: std::ffi::c_int);
    fn SignalHandlerForConfigReload(signal: std::ffi::c_int);
}

/// PostgreSQL's own handlers: SIGTERM ends the process at the next interrupt check, SIGHUP asks
/// for a reload.
#[allow(unsafe_code)]
fn attach_signals() {
    // SAFETY: standard handlers of PostgreSQL's, installed before signals are unblocked.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        {
            pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(die));
            pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(SignalHandlerForConfigReload));
        }
        #[cfg(feature = "pg18")]
        {
            pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(die));
            pg_sys::pqsignal_be(pg_sys::SIGHUP as i32, Some(SignalHandlerForConfigReload));
        }
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

/// Reloads the configuration files if a SIGHUP asked for it.
#[allow(unsafe_code)]
fn reload_if_asked() {
    // SAFETY: the flag is set by the signal handler; ProcessConfigFile runs outside transactions.
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}

/// Sleeps on the latch for at most `timeout`; exits with the postmaster, and at a pending
/// SIGTERM (the interrupt check).
#[allow(unsafe_code)]
fn nap(timeout: Duration) {
    // SAFETY: the process latch of a background worker.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().min(i64::MAX as u128) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

fn naptime() -> Duration {
    Duration::from_millis(gucs::WORKER_NAPTIME_MS.get().max(100) as u64)
}

/// Shows `what` as the worker's query in pg_stat_activity.
#[allow(unsafe_code)]
pub fn report(what: &str) {
    let text = CString::new(what).unwrap_or_default();
    // SAFETY: copies the string into the backend's status entry.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, text.as_ptr()) };
}

/// Runs `f` in a transaction of its own: committed if it returns, aborted if it raises (the
/// error, LOGged, is returned: one bad batch or tenant never ends the worker).
#[allow(unsafe_code)]
pub fn in_transaction<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    // SAFETY: a background worker outside any transaction; the same calls as pgrx's
    // BackgroundWorker::transaction, with an abort instead of a rethrow on error.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = PgTryBuilder::new(AssertUnwindSafe(|| Ok(f())))
        .catch_others(|e| {
            let caught = match e {
                pgrx::pg_sys::panic::CaughtError::PostgresError(r)
                | pgrx::pg_sys::panic::CaughtError::ErrorReport(r)
                | pgrx::pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r,
            };
            Err(caught.message().to_string())
        })
        .execute();
    // SAFETY: ends the transaction begun above.
    unsafe {
        match &result {
            Ok(_) => {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
            Err(_) => pg_sys::AbortCurrentTransaction(),
        }
    }
    if let Err(message) = &result {
        pgrx::log!("custos worker: {message}");
    }
    result
}

/// The launcher: keeps one worker running per database of `custos.worker_databases`.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn custos_launcher_main(_arg: pg_sys::Datum) {
    attach_signals();
    // Connected to no database: it reads the shared catalog pg_database only.
    pgrx::bgworkers::BackgroundWorker::connect_worker_to_spi(None, None);
    let pid = crate::pg::backend::process_id();
    let mut running: Vec<(String, DynamicBackgroundWorker)> = Vec::new();
    let mut missing_logged: Vec<String> = Vec::new();
    loop {
        reload_if_asked();
        board::launcher_alive(pid);
        let setting = gucs::WORKER_DATABASES
            .get()
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        let wanted = custos_core::jobs::worker_databases(&setting).unwrap_or_else(|e| {
            pgrx::log!("custos launcher: custos.worker_databases: {e}");
            Vec::new()
        });
        // Databases no longer listed: their workers stop (also those an earlier launcher
        // started, found on the board).
        let (keep, gone): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|(db, _)| wanted.contains(db));
        for (db, worker) in gone {
            pgrx::log!("custos launcher: stopping the worker of database \"{db}\"");
            let _ = worker.terminate();
        }
        running = keep;
        let oids: Vec<(String, Option<u32>)> = wanted
            .iter()
            .map(|db| (db.clone(), database_oid(db)))
            .collect();
        let live = board::live_workers();
        for (database, pid) in &live {
            if !oids.iter().any(|(_, o)| *o == Some(*database)) {
                // SAFETY: SIGTERM to a custos worker of this server (its pid is on the board).
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(*pid, libc::SIGTERM);
                }
            }
        }
        for (db, oid) in &oids {
            let Some(oid) = *oid else {
                if !missing_logged.contains(db) {
                    pgrx::log!("custos launcher: database \"{db}\" of custos.worker_databases does not exist; its worker starts once it does");
                    missing_logged.push(db.clone());
                }
                continue;
            };
            missing_logged.retain(|d| d != db);
            // Running already: on the board (this launcher's, or an earlier one's), or started
            // and not yet there.
            let on_board = live.iter().any(|(d, _)| *d == oid);
            let starting = running.iter().any(|(d, w)| {
                d == db
                    && !matches!(
                        w.pid(),
                        Err(pgrx::bgworkers::BackgroundWorkerStatus::Stopped)
                    )
            });
            if on_board || starting {
                continue;
            }
            running.retain(|(d, _)| d != db);
            match start_worker(db, oid) {
                Some(w) => running.push((db.clone(), w)),
                None => pgrx::log!("custos launcher: no background worker slot for database \"{db}\" (raise max_worker_processes)"),
            }
        }
        nap(naptime().max(Duration::from_secs(1)));
    }
}

/// The oid of database `name`, if it exists: read from pg_database with a plain catalog scan,
/// which needs no database connection nor relation cache files (as TimescaleDB's launcher does).
#[allow(unsafe_code)]
fn database_oid(name: &str) -> Option<u32> {
    in_transaction(|| {
        let mut found = None;
        // SAFETY: a heap scan of the shared catalog pg_database inside a transaction; each
        // tuple's struct is read before the next one is fetched.
        unsafe {
            let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
            let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
            let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
            loop {
                let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if tuple.is_null() {
                    break;
                }
                let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
                let datname = std::ffi::CStr::from_ptr((*form).datname.data.as_ptr());
                if datname.to_bytes() == name.as_bytes() {
                    found = Some((*form).oid.to_u32());
                    break;
                }
            }
            pg_sys::table_endscan(scan);
            pg_sys::table_close(rel, lock);
        }
        found
    })
    .ok()
    .flatten()
}

fn start_worker(db: &str, oid: u32) -> Option<DynamicBackgroundWorker> {
    // backend_type is at most 95 bytes.
    let mut kind = format!("custos worker {db}");
    while kind.len() > 95 {
        kind.pop();
    }
    let worker = BackgroundWorkerBuilder::new(&format!("custos worker for database {db}"))
        .set_type(&kind)
        .set_library("custos")
        .set_function("custos_worker_main")
        .set_argument(Some(pg_sys::Datum::from(oid)))
        .set_extra(db)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        // The launcher restarts it (within a second): a postmaster restart would report it
        // stopped while it waits to come back, and the launcher would start a second one.
        .set_restart_time(None)
        .set_notify_pid(crate::pg::backend::process_id())
        .load_dynamic()
        .ok()?;
    pgrx::log!("custos launcher: started the worker of database \"{db}\"");
    Some(worker)
}

/// Whether this database has custos at this library's version; else why not.
fn extension_state() -> Result<(), String> {
    let version: Option<String> = Spi::connect(|c| {
        let mut rows = c.select(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'custos'",
            None,
            &[],
        )?;
        Ok::<_, pgrx::spi::Error>(rows.next().and_then(|r| r.get::<String>(1).ok().flatten()))
    })
    .unwrap_or_else(|e| pgrx::error!("reading pg_extension: {e}"));
    match version {
        Some(v) if v == env!("CARGO_PKG_VERSION") => Ok(()),
        Some(v) => Err(format!(
            "custos {v} is installed, this library is {}: waiting for ALTER EXTENSION custos UPDATE",
            env!("CARGO_PKG_VERSION")
        )),
        None => Err("custos is not installed: waiting for CREATE EXTENSION custos".into()),
    }
}

static SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

extern "C-unwind" fn free_slot(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    board::release(
        SLOT.load(std::sync::atomic::Ordering::SeqCst),
        crate::pg::backend::process_id(),
    );
}

/// A database's worker: embeds what is queued, delivers notifications, runs the jobs that are due.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn custos_worker_main(arg: pg_sys::Datum) {
    attach_signals();
    let oid = pg_sys::Oid::from(arg.value() as u32);
    pgrx::bgworkers::BackgroundWorker::connect_worker_to_spi_by_oid(Some(oid), None);
    let database = pgrx::bgworkers::BackgroundWorker::get_extra().to_string();
    let pid = crate::pg::backend::process_id();
    let Some(slot) = board::register(oid.to_u32(), pid) else {
        pgrx::log!(
            "custos worker: database \"{database}\" has a worker already, or every slot is taken"
        );
        return;
    };
    SLOT.store(slot, std::sync::atomic::Ordering::SeqCst);
    crate::pg::backend::before_backend_exit(free_slot);
    pgrx::log!("custos worker: serving database \"{database}\"");
    let mut waiting: Option<String> = None;
    let mut leases_released = false;
    let mut next_job_check = Instant::now();
    loop {
        reload_if_asked();
        match in_transaction(extension_state).and_then(|r| r) {
            Ok(()) => {
                if waiting.take().is_some() {
                    pgrx::log!("custos worker: custos is ready in database \"{database}\"");
                }
                if !leases_released {
                    leases_released = in_transaction(|| {
                        Spi::run("SELECT custos_internal.release_leases()")
                            .unwrap_or_else(|e| pgrx::error!("releasing leases: {e}"))
                    })
                    .is_ok();
                }
            }
            Err(why) => {
                if waiting.as_deref() != Some(why.as_str()) {
                    pgrx::log!("custos worker for database \"{database}\": {why}");
                    waiting = Some(why);
                }
                board::set_activity(slot, Activity::Waiting, None, 0, 0);
                report("waiting for custos");
                nap(naptime());
                continue;
            }
        }
        let mut busy = super::embedding::refresh_once(slot);
        busy |= crate::webhooks::deliver_once(slot);
        if Instant::now() >= next_job_check {
            next_job_check = Instant::now() + JOB_CHECK;
            busy |= super::run_due_jobs(slot);
        }
        board::set_activity(slot, Activity::Idle, None, 0, 0);
        report("idle");
        if busy {
            pgrx::check_for_interrupts!();
        } else {
            nap(naptime());
        }
    }
}
