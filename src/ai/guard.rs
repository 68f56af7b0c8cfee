//! What stands between a tenant and a provider: the circuit breaker of (tenant, provider) and the
//! tenant's monthly budget in tokens and money, both shared by every backend.
//!
//! Preloaded (`shared_preload_libraries = 'custos'`), both live in shared memory under one
//! LWLock, held only to read and update a slot, never during a call. A budget slot counts every
//! call made since the server started (or since the month began), rolled back or not: money spent
//! is spent. It is filled from custos.ai_calls the first time the tenant calls in the month; calls
//! in flight hold a reservation (their estimate) until they settle, so that concurrent callers
//! can never overspend together.
//!
//! Not preloaded, there is no memory the backends share outside transactions, and a table cannot
//! stand in: a failed call raises an error, which rolls back whatever recorded the failure. Each
//! backend then keeps its own breakers, the tenant's calls take turns (a transaction-level lock
//! per tenant), and the budget is what custos.ai_calls holds for the month: calls of rolled-back
//! transactions are not counted. Preloading is what makes both exact across backends.

use super::config::{AiConfig, ProviderKind};
use crate::error::raise;
use crate::pg::locks::{lock_until_end, LockKind};
use custos_core::ai::resilience::Breaker;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock, PgSqlErrorCode::*};
use std::sync::atomic::{AtomicBool, Ordering};

const BREAKER_SLOTS: usize = 256;
const BUDGET_SLOTS: usize = 256;

#[derive(Clone, Copy, Default)]
struct BreakerSlot {
    used: bool,
    database: u32,
    tenant: [u8; 16],
    provider: u8,
    /// 0 closed, 1 open, 2 half-open.
    state: u8,
    failures: u32,
    until_ms: i64,
    last_ms: i64,
}

#[derive(Clone, Copy, Default)]
struct BudgetSlot {
    used: bool,
    database: u32,
    tenant: [u8; 16],
    /// year * 12 + month - 1, UTC.
    month: i32,
    tokens_spent: u64,
    micros_spent: u64,
    tokens_reserved: u64,
    micros_reserved: u64,
    last_ms: i64,
}

#[derive(Clone, Copy)]
pub struct AiShared {
    breakers: [BreakerSlot; BREAKER_SLOTS],
    budgets: [BudgetSlot; BUDGET_SLOTS],
}

impl Default for AiShared {
    fn default() -> Self {
        AiShared {
            breakers: [BreakerSlot::default(); BREAKER_SLOTS],
            budgets: [BudgetSlot::default(); BUDGET_SLOTS],
        }
    }
}

// SAFETY: plain data (no pointers), the same layout in every backend of the server.
#[allow(unsafe_code)]
unsafe impl PGRXSharedMemory for AiShared {}

// SAFETY: the lock's name is unique to custos; pg_shmem_init! registers it in init().
#[allow(unsafe_code)]
static SHARED: PgLwLock<AiShared> = unsafe { PgLwLock::new(c"custos_ai") };
static SHARED_READY: AtomicBool = AtomicBool::new(false);

/// Called from _PG_init: asks for the shared state when the library is being preloaded.
// pg_shmem_init! tests pg13/pg14 features this crate does not have.
#[allow(unexpected_cfgs)]
pub fn init() {
    if crate::pg::backend::preloading() {
        pg_shmem_init!(SHARED);
        SHARED_READY.store(true, Ordering::SeqCst);
    }
}

fn shared() -> bool {
    SHARED_READY.load(Ordering::SeqCst)
}

fn database() -> u32 {
    crate::pg::backend::database_id()
}

pub fn now_ms() -> i64 {
    crate::pg::backend::now() / 1000
}

fn breaker_of(slot: &BreakerSlot) -> Breaker {
    match slot.state {
        1 => Breaker::Open {
            until_ms: slot.until_ms,
        },
        2 => Breaker::HalfOpen {
            probe_until_ms: slot.until_ms,
        },
        _ => Breaker::Closed {
            failures: slot.failures,
        },
    }
}

fn store_breaker(slot: &mut BreakerSlot, b: Breaker, now: i64) {
    (slot.state, slot.failures, slot.until_ms) = match b {
        Breaker::Closed { failures } => (0, failures, 0),
        Breaker::Open { until_ms } => (1, 0, until_ms),
        Breaker::HalfOpen { probe_until_ms } => (2, 0, probe_until_ms),
    };
    slot.last_ms = now;
}

/// The slot of `key` in `slots`, taking a free one or the least recently used one that `idle`
/// allows to be given up. None when every slot is busy.
fn slot_index<T>(
    slots: &[T],
    matches: impl Fn(&T) -> bool,
    used: impl Fn(&T) -> bool,
    idle: impl Fn(&T) -> Option<i64>,
) -> (Option<usize>, bool) {
    if let Some(i) = slots.iter().position(|s| used(s) && matches(s)) {
        return (Some(i), true);
    }
    if let Some(i) = slots.iter().position(|s| !used(s)) {
        return (Some(i), false);
    }
    let oldest = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| idle(s).map(|t| (t, i)))
        .min()
        .map(|(_, i)| i);
    (oldest, false)
}

/// The slot of (tenant, provider) among the breakers ([`slot_index`]).
fn breaker_slot(
    breakers: &[BreakerSlot],
    tenant: &[u8; 16],
    provider: ProviderKind,
) -> (Option<usize>, bool) {
    slot_index(
        breakers,
        |s| s.database == database() && s.tenant == *tenant && s.provider == provider.index(),
        |s| s.used,
        // A closed breaker without failures says nothing: it may be given up.
        |s| (s.state == 0 && s.failures == 0).then_some(s.last_ms),
    )
}

/// Refuses a call while the breaker of (tenant, provider) is open: the caller gets the time it
/// may try again. Admitting a probe moves an open breaker to half-open.
pub fn admit(cfg: &AiConfig, provider: ProviderKind) -> Result<(), i64> {
    let (Some(tenant), now) = (cfg.tenant, now_ms()) else {
        return Ok(());
    };
    let cool_down = cfg.breaker_cool_down_ms;
    if shared() {
        let mut state = SHARED.exclusive();
        let (index, found) = breaker_slot(&state.breakers, &tenant, provider);
        let Some(i) = index else {
            return Ok(());
        };
        if !found {
            return Ok(());
        }
        let slot = &mut state.breakers[i];
        let (admitted, next) = breaker_of(slot).admit(now, cool_down);
        store_breaker(slot, next, now);
        return if admitted {
            Ok(())
        } else {
            Err(next.retry_at_ms().unwrap_or(now))
        };
    }
    let (admitted, next) = local_breaker(&tenant, provider, |b| b.admit(now, cool_down));
    if admitted {
        Ok(())
    } else {
        Err(next.retry_at_ms().unwrap_or(now))
    }
}

/// Records a call's success or failure in the breaker of (tenant, provider).
pub fn record(cfg: &AiConfig, provider: ProviderKind, success: bool) {
    let (Some(tenant), now) = (cfg.tenant, now_ms()) else {
        return;
    };
    let (threshold, cool_down) = (cfg.breaker_failures, cfg.breaker_cool_down_ms);
    if shared() {
        let mut state = SHARED.exclusive();
        let (index, found) = breaker_slot(&state.breakers, &tenant, provider);
        // A success with no slot changes nothing; a failure takes one (else it goes uncounted).
        let Some(i) = index.filter(|_| found || !success) else {
            return;
        };
        let slot = &mut state.breakers[i];
        if !found {
            *slot = BreakerSlot {
                used: true,
                database: database(),
                tenant,
                provider: provider.index(),
                ..BreakerSlot::default()
            };
        }
        let next = breaker_of(slot).record(success, now, threshold, cool_down);
        store_breaker(slot, next, now);
        return;
    }
    local_breaker(&tenant, provider, |b| {
        ((), b.record(success, now, threshold, cool_down))
    });
}

/// (database, tenant, provider).
type BreakerKey = (u32, [u8; 16], u8);

thread_local! {
    /// Breakers of this backend alone, when custos is not preloaded.
    static LOCAL_BREAKERS: std::cell::RefCell<std::collections::HashMap<BreakerKey, Breaker>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Applies `f` to this backend's breaker of (tenant, provider) and keeps the state it returns.
fn local_breaker<R>(
    tenant: &[u8; 16],
    provider: ProviderKind,
    f: impl FnOnce(Breaker) -> (R, Breaker),
) -> (R, Breaker) {
    LOCAL_BREAKERS.with(|map| {
        let mut map = map.borrow_mut();
        let entry = map
            .entry((database(), *tenant, provider.index()))
            .or_default();
        let (out, next) = f(*entry);
        *entry = next;
        (out, next)
    })
}

/// Tokens and micro-dollars of the tenant's calls this month, as custos.ai_calls holds them.
fn logged_spend(tenant: &[u8; 16]) -> (u64, u64) {
    crate::pg::backend::as_superuser(|| {
        Spi::connect(|client| {
            let mut rows = client.select(
                "SELECT coalesce(sum(tokens_in + tokens_out), 0)::bigint, coalesce(sum(cost_micros), 0)::bigint
                   FROM custos.ai_calls
                  WHERE tenant_id = $1
                    AND at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
                None,
                &[pgrx::Uuid::from_bytes(*tenant).into()],
            )?;
            Ok::<_, pgrx::spi::Error>(rows.next().map_or((0, 0), |r| {
                (
                    r.get::<i64>(1).ok().flatten().unwrap_or(0).max(0) as u64,
                    r.get::<i64>(2).ok().flatten().unwrap_or(0).max(0) as u64,
                )
            }))
        })
    })
    .unwrap_or_else(|e| raise(ERRCODE_INTERNAL_ERROR, format!("reading the AI spend: {e}"), None))
}

/// A call's hold on its tenant's budget: its estimate until it settles. Dropped unsettled (the
/// call was cancelled or failed mid-way), the estimate counts as spent: never undercount.
pub struct Reservation {
    /// What this call holds in shared memory; None when nothing is (no tenant, not preloaded)
    /// or once settled.
    held: Option<Held>,
}

/// A call's hold on a budget slot.
#[derive(Clone, Copy)]
struct Held {
    id: u64,
    tenant: [u8; 16],
    month: i32,
    tokens: u64,
    micros: u64,
}

thread_local! {
    /// This backend's holds, released as spent if it exits before they settle (a FATAL error
    /// or a terminated backend skips the Drop of a Reservation).
    static HELD: std::cell::RefCell<Vec<Held>> = const { std::cell::RefCell::new(Vec::new()) };
    static NEXT_HOLD: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static EXIT_HOOKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Replaces a hold's amounts in its slot by what the call spent.
fn settle_slot(h: &Held, tokens: u64, micros: u64) {
    let mut state = SHARED.exclusive();
    if let Some(slot) = state
        .budgets
        .iter_mut()
        .find(|s| s.used && s.database == database() && s.tenant == h.tenant && s.month == h.month)
    {
        slot.tokens_reserved = slot.tokens_reserved.saturating_sub(h.tokens);
        slot.micros_reserved = slot.micros_reserved.saturating_sub(h.micros);
        slot.tokens_spent = slot.tokens_spent.saturating_add(tokens);
        slot.micros_spent = slot.micros_spent.saturating_add(micros);
    }
}

/// At backend exit: every hold still open counts as spent.
#[pgrx::pg_guard]
extern "C-unwind" fn settle_holds_at_exit(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    let held = HELD.with(|h| std::mem::take(&mut *h.borrow_mut()));
    for h in &held {
        settle_slot(h, h.tokens, h.micros);
    }
}

fn hold(tenant: [u8; 16], month: i32, tokens: u64, micros: u64) -> Reservation {
    if !EXIT_HOOKED.get() {
        crate::pg::backend::before_backend_exit(settle_holds_at_exit);
        EXIT_HOOKED.set(true);
    }
    let id = NEXT_HOLD.get();
    NEXT_HOLD.set(id + 1);
    let h = Held {
        id,
        tenant,
        month,
        tokens,
        micros,
    };
    HELD.with(|held| held.borrow_mut().push(h));
    Reservation { held: Some(h) }
}

/// Spent and held amounts of a tenant's month, in tokens and micro-dollars.
#[derive(Clone, Copy)]
struct Usage {
    tokens_spent: u64,
    tokens_held: u64,
    micros_spent: u64,
    micros_held: u64,
}

/// Why a call of `tokens` and `micros` does not fit the budgets beside `usage`: (setting, limit,
/// used), or None if it fits.
fn over_budget(
    cfg: &AiConfig,
    usage: Usage,
    tokens: u64,
    micros: u64,
) -> Option<(&'static str, String, String)> {
    use custos_core::ai::resilience::fits_budget;
    let usd = |m: u64| format!("${:.6}", m as f64 / 1e6);
    if let Some(limit) = cfg.token_budget {
        if !fits_budget(limit, usage.tokens_spent, usage.tokens_held, tokens) {
            let used = usage.tokens_spent.saturating_add(usage.tokens_held);
            return Some((
                "ai.monthly_token_budget",
                format!("{limit} tokens"),
                format!("{used} tokens"),
            ));
        }
    }
    if let Some(limit) = cfg.budget_micros {
        if !fits_budget(limit, usage.micros_spent, usage.micros_held, micros) {
            let used = usage.micros_spent.saturating_add(usage.micros_held);
            return Some(("ai.monthly_budget_usd", usd(limit), usd(used)));
        }
    }
    None
}

fn refuse_over_budget((setting, limit, used): (&'static str, String, String), tokens: u64) -> ! {
    raise(
        ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        format!("the tenant's monthly AI budget of {limit} would be exceeded: {used} are spent or held by calls in flight, and this call may take up to {tokens} tokens"),
        Some(&format!(
            "a tenant admin raises {setting} with custos.set_setting, or the calls wait for next month; custos.ai_calls lists this month's calls"
        )),
    )
}

/// Holds `tokens` and `micros` of the tenant's monthly budget for one call, or raises 53400 if
/// they do not fit beside what is spent and held.
pub fn reserve(cfg: &AiConfig, tokens: u64, micros: u64) -> Reservation {
    let Some(tenant) = cfg.tenant else {
        return Reservation { held: None };
    };
    let month = custos_core::time::month_index(crate::pg::backend::now());
    if !shared() {
        lock_until_end(&tenant, LockKind::AiBudget);
        let (tokens_spent, micros_spent) = logged_spend(&tenant);
        let usage = Usage {
            tokens_spent,
            tokens_held: 0,
            micros_spent,
            micros_held: 0,
        };
        if let Some(why) = over_budget(cfg, usage, tokens, micros) {
            refuse_over_budget(why, tokens);
        }
        // The call's own row in custos.ai_calls will count it; the lock makes the others wait.
        return Reservation { held: None };
    }
    let matches = |s: &BudgetSlot| {
        s.used && s.database == database() && s.tenant == tenant && s.month == month
    };
    let loaded = SHARED.share().budgets.iter().any(matches);
    // Read outside the lock: a query under an LWLock would stall every caller.
    let logged = (!loaded).then(|| logged_spend(&tenant));
    // Nothing below may raise while the lock is held: the verdict is taken, then the lock dropped.
    let verdict: Result<Option<_>, &str> = {
        let mut state = SHARED.exclusive();
        let (index, found) = slot_index(
            &state.budgets,
            matches,
            |s| s.used,
            // Idle slots may be given up; so may a past month's, whatever it still holds (its
            // holders settle into nothing).
            |s| {
                let idle = s.tokens_reserved == 0 && s.micros_reserved == 0;
                (idle || s.month != month).then_some(s.last_ms)
            },
        );
        match (index, found, logged) {
            (None, _, _) => Err("too many tenants have AI calls in flight"),
            // Filled by another backend, then given up again, since this one looked: read anew.
            (Some(_), false, None) => Err(""),
            (Some(i), found, logged) => {
                let slot = &mut state.budgets[i];
                if !found {
                    let (tokens_spent, micros_spent) = logged.unwrap_or((0, 0));
                    *slot = BudgetSlot {
                        used: true,
                        database: database(),
                        tenant,
                        month,
                        tokens_spent,
                        micros_spent,
                        ..BudgetSlot::default()
                    };
                }
                slot.last_ms = now_ms();
                let usage = Usage {
                    tokens_spent: slot.tokens_spent,
                    tokens_held: slot.tokens_reserved,
                    micros_spent: slot.micros_spent,
                    micros_held: slot.micros_reserved,
                };
                let over = over_budget(cfg, usage, tokens, micros);
                if over.is_none() {
                    slot.tokens_reserved += tokens;
                    slot.micros_reserved += micros;
                }
                Ok(over)
            }
        }
    };
    match verdict {
        Ok(None) => hold(tenant, month, tokens, micros),
        Ok(Some(why)) => refuse_over_budget(why, tokens),
        Err("") => reserve(cfg, tokens, micros),
        Err(busy) => raise(
            ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            busy,
            Some("try again in a moment"),
        ),
    }
}

impl Reservation {
    /// Replaces the call's estimate by what it cost.
    pub fn settle(mut self, tokens: u64, micros: u64) {
        self.release(tokens, micros);
    }

    fn release(&mut self, tokens: u64, micros: u64) {
        if let Some(h) = self.held.take() {
            HELD.with(|held| held.borrow_mut().retain(|x| x.id != h.id));
            settle_slot(&h, tokens, micros);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(h) = self.held {
            self.release(h.tokens, h.micros);
        }
    }
}

/// `custos_internal.breaker_states`: the circuit breakers of this database that are not plainly
/// closed (open, half-open, or closed with failures counted): the current tenant's, or every
/// tenant's when `every_tenant` and the function runs as a superuser (custos.metrics).
#[allow(unsafe_code)]
#[pg_extern(stable, parallel_safe)]
fn breaker_states(
    every_tenant: bool,
) -> TableIterator<
    'static,
    (
        name!(tenant_id, pgrx::Uuid),
        name!(provider, String),
        name!(state, String),
        name!(failures, i32),
        name!(retry_at, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    // SAFETY: reads the current user's superuser flag.
    let all = every_tenant && unsafe { pg_sys::superuser() };
    let current = crate::tenancy::current_tenant_id().map(|t| *t.as_bytes());
    let slots: Vec<BreakerSlot> = if shared() {
        SHARED.share().breakers.to_vec()
    } else {
        Vec::new()
    };
    let rows: Vec<_> = slots
        .into_iter()
        .filter(|s| s.used && s.database == database() && (s.state != 0 || s.failures > 0))
        .filter(|s| all || current == Some(s.tenant))
        .map(|s| {
            let provider = ["local", "bedrock", "openai"]
                .get(usize::from(s.provider))
                .copied()
                .unwrap_or("unknown");
            let state = match s.state {
                1 => "open",
                2 => "half-open",
                _ => "closed",
            };
            let retry_at = (s.state != 0)
                .then(|| pgrx::datum::TimestampWithTimeZone::try_from(s.until_ms * 1000).ok());
            (
                pgrx::Uuid::from_bytes(s.tenant),
                provider.to_string(),
                state.to_string(),
                s.failures as i32,
                retry_at.flatten(),
            )
        })
        .collect();
    TableIterator::new(rows)
}
