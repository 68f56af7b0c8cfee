//! Jobs (sql/jobs.sql): the background workers and what they run. The queue, the scheduled jobs
//! and custos.run_job are SQL; this module adds the processes that run them.
//!
//! - `worker`: the launcher and the per-database workers (signals, latch, transactions)
//! - `board`: the workers' state and the providers' gates in shared memory
//! - `embedding`: one batch of the embedding queue, claimed, embedded and written
//!
//! Committed changes that queue work wake the database's worker (custos_internal.
//! wake_worker_at_commit); custos.health() and custos.job_progress read the board.

pub mod board;
mod embedding;
pub mod worker;

use board::Activity;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use worker::{in_transaction, report};

/// Called from _PG_init: the workers' shared state, and the launcher, when preloading.
pub fn init() {
    board::init();
    if crate::pg::backend::preloading() {
        worker::register_launcher();
    }
}

/// The jobs due in this database, each run in a transaction of its own; true if any ran.
fn run_due_jobs(slot: usize) -> bool {
    let due = in_transaction(|| {
        Spi::connect(|c| {
            let rows = c.select(
                "SELECT d.tenant_id, d.job, array_position(custos_internal.job_names(), d.job)
                   FROM custos_internal.due_jobs() d",
                None,
                &[],
            )?;
            let mut out = Vec::new();
            for r in rows {
                if let (Some(t), Some(j)) = (r.get::<pgrx::Uuid>(1)?, r.get::<String>(2)?) {
                    out.push((t, j, r.get::<i32>(3)?.unwrap_or(0)));
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .unwrap_or_else(|e| pgrx::error!("reading due jobs: {e}"))
    })
    .unwrap_or_default();
    for (tenant, job, index) in &due {
        board::set_activity(
            slot,
            Activity::Job,
            Some(*tenant.as_bytes()),
            *index as u8,
            0,
        );
        report(&format!("{job} for tenant {tenant}"));
        let _ = in_transaction(|| {
            Spi::run_with_args(
                "SELECT custos_internal.run_job_for($1, $2, 'worker')",
                &[(*tenant).into(), job.as_str().into()],
            )
            .unwrap_or_else(|e| pgrx::error!("running {job}: {e}"))
        });
        board::count(slot, 0, 0, 0);
        pgrx::check_for_interrupts!();
    }
    !due.is_empty()
}

static WAKE_AT_COMMIT: AtomicBool = AtomicBool::new(false);
static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);

#[allow(unsafe_code)]
#[pg_guard]
unsafe extern "C-unwind" fn wake_on_commit(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT
            if WAKE_AT_COMMIT.swap(false, Ordering::SeqCst) =>
        {
            if let Some(pid) = board::worker_of(crate::pg::backend::database_id()) {
                // SAFETY: looks the worker's PGPROC up under ProcArrayLock and sets its latch (a
                // shared latch: any process may set it).
                unsafe {
                    let proc_ = pg_sys::BackendPidGetProc(pid);
                    if !proc_.is_null() {
                        pg_sys::SetLatch(&raw mut (*proc_).procLatch);
                    }
                }
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            WAKE_AT_COMMIT.store(false, Ordering::SeqCst);
        }
        _ => {}
    }
}

/// `custos_internal.wake_worker_at_commit`: when this transaction commits, the database's worker
/// wakes (what was queued is visible to it then). Nothing without workers.
#[allow(unsafe_code)]
#[pg_extern(volatile, parallel_unsafe)]
fn wake_worker_at_commit() {
    if !board::ready() {
        return;
    }
    if !CALLBACK_REGISTERED.swap(true, Ordering::SeqCst) {
        // SAFETY: registers a plain function for the life of the backend.
        unsafe { pg_sys::RegisterXactCallback(Some(wake_on_commit), std::ptr::null_mut()) };
    }
    WAKE_AT_COMMIT.store(true, Ordering::SeqCst);
}

fn iso(ms: i64) -> String {
    custos_core::time::rfc3339(ms * 1000)
}

fn now_ms() -> i64 {
    crate::pg::backend::now() / 1000
}

/// `custos_internal.worker_states`: the launcher and this database's workers, from shared memory.
#[pg_extern(stable, parallel_safe)]
fn worker_states() -> JsonB {
    let (slots, launcher) = board::snapshot();
    let database = crate::pg::backend::database_id();
    let now = now_ms();
    let workers: Vec<serde_json::Value> = slots
        .iter()
        .filter(|s| s.database == database)
        .map(|s| {
            json!({
                "pid": s.pid,
                "activity": s.activity.name(),
                "started_at": iso(s.started_ms),
                "heartbeat_at": iso(s.heartbeat_ms),
                "heartbeat_age_s": (now - s.heartbeat_ms) as f64 / 1000.0,
                "items_embedded": s.embedded,
                "notifications_delivered": s.delivered,
                "failures": s.failures,
            })
        })
        .collect();
    JsonB(json!({
        "preloaded": board::ready(),
        "launcher": launcher.map(|(pid, hb)| json!({"pid": pid, "heartbeat_age_s": (now - hb) as f64 / 1000.0})),
        "workers": workers,
    }))
}

/// `custos.job_progress` (a view over this): what each worker of this database is doing now.
#[allow(clippy::type_complexity)]
#[pg_extern(stable, parallel_safe)]
fn worker_progress() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(activity, String),
        name!(tenant_id, Option<pgrx::Uuid>),
        name!(job, Option<String>),
        name!(items_done, i64),
        name!(items_total, i64),
        name!(since, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    const JOBS: [&str; 7] = [
        "anomaly_detection",
        "model_retraining",
        "dormant_insights",
        "retention",
        "checkpoint_publication",
        "summary_report",
        "budget_alert",
    ];
    let database = crate::pg::backend::database_id();
    let tenant = crate::tenancy::current_tenant_id();
    let superuser = crate::pg::backend::is_superuser(crate::pg::backend::outer_user());
    let rows: Vec<_> = board::snapshot()
        .0
        .into_iter()
        .filter(|s| s.database == database)
        .map(|s| {
            // A tenant sees which tenant a worker serves only if it is its own.
            let shown = s
                .tenant
                .filter(|t| superuser || tenant.is_some_and(|c| c.as_bytes() == t))
                .map(pgrx::Uuid::from_bytes);
            let since = pgrx::datum::TimestampWithTimeZone::try_from(
                (s.activity_ms * 1000) as pg_sys::TimestampTz,
            )
            .ok();
            (
                s.pid,
                s.activity.name().to_string(),
                shown,
                (s.activity == Activity::Job)
                    .then(|| {
                        JOBS.get(usize::from(s.job).saturating_sub(1))
                            .map(|j| j.to_string())
                    })
                    .flatten(),
                s.done,
                s.total,
                since,
            )
        })
        .collect();
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("db_tests.rs");
}
