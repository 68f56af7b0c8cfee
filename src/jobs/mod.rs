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
        match job.as_str() {
            // Jobs that ask a model do so between transactions.
            "summary_report" | "dormant_insights" => model_job(*tenant, job),
            _ => {
                let _ = in_transaction(|| {
                    Spi::run_with_args(
                        "SELECT custos_internal.run_job_for($1, $2, 'worker')",
                        &[(*tenant).into(), job.as_str().into()],
                    )
                    .unwrap_or_else(|e| pgrx::error!("running {job}: {e}"))
                });
            }
        }
        board::count(slot, 0, 0, 0);
        pgrx::check_for_interrupts!();
    }
    !due.is_empty()
}

type Timestamp = pgrx::datum::TimestampWithTimeZone;

/// Sets the tenant of the worker's transaction.
pub(super) fn set_tenant(tenant: pgrx::Uuid) {
    Spi::run_with_args("SELECT custos.set_tenant($1)", &[tenant.into()])
        .unwrap_or_else(|e| pgrx::error!("setting the tenant: {e}"));
}

fn clock() -> Timestamp {
    Spi::get_one::<Timestamp>("SELECT clock_timestamp()")
        .ok()
        .flatten()
        .unwrap_or_else(|| pgrx::error!("reading the clock"))
}

fn record_run(tenant: pgrx::Uuid, job: &str, started: Timestamp, items: i64, error: Option<&str>) {
    let _ = in_transaction(|| {
        Spi::run_with_args(
            "SELECT custos_internal.record_job_run($1, $2, $3, $4, $5, $6, 'worker')",
            &[
                tenant.into(),
                job.into(),
                started.into(),
                items.into(),
                if error.is_some() { "failed" } else { "ok" }.into(),
                error.into(),
            ],
        )
        .unwrap_or_else(|e| pgrx::error!("recording the run of {job}: {e}"))
    });
}

/// Asks `task` about the input `before` returns (with what `after` needs besides), for
/// `tenant`, with no transaction open while the model answers: staged in the transaction
/// `before` runs in (committed), performed, then finished in the transaction `after` runs in.
fn ask_between<E, T>(
    tenant: pgrx::Uuid,
    task: &str,
    before: impl FnOnce() -> (serde_json::Value, E),
    after: impl FnOnce(crate::ai::tasks::Ran, E) -> T,
) -> Result<T, String> {
    let (staged, extra) = in_transaction(|| {
        set_tenant(tenant);
        let (input, extra) = before();
        crate::pg::subxact::catching(|| crate::ai::tasks::stage(task, input))
            .map(|staged| (staged, extra))
            .map_err(|c| c.message)
    })
    .and_then(|r| r)?;
    let performed = staged.perform();
    in_transaction(|| {
        set_tenant(tenant);
        after(performed.finish(), extra)
    })
}

/// The summary_report and dormant_insights jobs of a worker: what
/// custos_internal.run_job_for does by hand, with the model asked between transactions.
fn model_job(tenant: pgrx::Uuid, job: &str) {
    let Ok(started) = in_transaction(clock) else {
        return;
    };
    let result = if job == "summary_report" {
        summary_report(tenant)
    } else {
        dormant_insights(tenant)
    };
    match result {
        Ok(items) => record_run(tenant, job, started, items, None),
        Err(e) => record_run(tenant, job, started, 0, Some(&e)),
    }
}

fn summary_report(tenant: pgrx::Uuid) -> Result<i64, String> {
    ask_between(
        tenant,
        "summarize_period",
        || {
            let (start, end) = Spi::get_two::<Timestamp, Timestamp>(
                "SELECT * FROM custos_internal.period_window('weekly', NULL)",
            )
            .unwrap_or_else(|e| pgrx::error!("the week's window: {e}"));
            let (Some(start), Some(end)) = (start, end) else {
                pgrx::error!("the week's window is empty")
            };
            let st = Spi::get_one_with_args::<JsonB>(
                "SELECT custos_internal.period_statistics($1, $2, $3)",
                &[tenant.into(), start.into(), end.into()],
            )
            .ok()
            .flatten()
            .map_or(serde_json::Value::Null, |j| j.0);
            let mut input = st.clone();
            input["period"] = "weekly".into();
            (input, (start, end, st))
        },
        |ran, (start, end, st)| {
            Spi::get_one_with_args::<i64>(
                "SELECT custos_internal.notify_summary($1,
                        custos_internal.store_summary($1, 'weekly', $2, $3, $4, $5, $6, $7, $8, $9))",
                &[
                    tenant.into(),
                    start.into(),
                    end.into(),
                    JsonB(st).into(),
                    JsonB(ran.answer).into(),
                    ran.provider.into(),
                    ran.model.into(),
                    ran.version.into(),
                    ran.fallback.into(),
                ],
            )
            .unwrap_or_else(|e| pgrx::error!("storing the summary: {e}"))
            .unwrap_or(0)
        },
    )
}

fn dormant_insights(tenant: pgrx::Uuid) -> Result<i64, String> {
    let accounts: Vec<(String, Option<i32>)> = in_transaction(|| {
        set_tenant(tenant);
        Spi::connect(|c| {
            let rows = c.select(
                "SELECT user_id, days_inactive FROM custos_internal.newly_dormant($1)",
                None,
                &[tenant.into()],
            )?;
            let mut out = Vec::new();
            for r in rows {
                if let Some(u) = r.get::<String>(1)? {
                    out.push((u, r.get::<i32>(2)?));
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .unwrap_or_else(|e| pgrx::error!("listing dormant accounts: {e}"))
    })?;
    let mut analysed = 0;
    for (user, days) in accounts {
        ask_between(
            tenant,
            "analyze_dormant_user",
            || {
                let context = Spi::get_one_with_args::<JsonB>(
                    "SELECT custos_internal.dormant_context($1, $2)",
                    &[tenant.into(), user.as_str().into()],
                )
                .ok()
                .flatten()
                .map_or(serde_json::Value::Null, |j| j.0);
                (context.clone(), context)
            },
            |ran, context| {
                Spi::run_with_args(
                    "SELECT custos_internal.alert_dormant($1, $2, $3,
                            custos_internal.store_dormant_analysis($1, $2, $4, $5, $6, $7, $8, $9))",
                    &[
                        tenant.into(),
                        user.as_str().into(),
                        days.into(),
                        JsonB(context).into(),
                        JsonB(ran.answer).into(),
                        ran.provider.into(),
                        ran.model.into(),
                        ran.version.into(),
                        ran.fallback.into(),
                    ],
                )
                .unwrap_or_else(|e| pgrx::error!("storing the analysis of {user}: {e}"))
            },
        )?;
        analysed += 1;
        pgrx::check_for_interrupts!();
    }
    Ok(analysed)
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

/// `custos.job_progress` (a view over this, naming the job): what each worker of this database
/// is doing now.
#[allow(clippy::type_complexity)]
#[pg_extern(stable, parallel_safe)]
fn worker_progress() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(activity, String),
        name!(tenant_id, Option<pgrx::Uuid>),
        name!(job_number, Option<i32>),
        name!(items_done, i64),
        name!(items_total, i64),
        name!(since, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
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
                // Its place in custos_internal.job_names(), which the view reads.
                (s.activity == Activity::Job).then_some(i32::from(s.job)),
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
