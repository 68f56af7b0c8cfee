//! A remote provider call from start to log: refused where it must not happen (a standby, a
//! transaction holding ledger chain locks), priced, held against the tenant's budget, sent, then
//! settled and written to custos.ai_calls (whose deferred trigger appends the `ai.call` ledger
//! event at commit, after every call of the transaction has returned).

use super::config::AiConfig;
use super::guard;
use super::providers::{Operation, Provider};
use super::transport::{CallError, Transport};
use crate::error::raise;
use custos_core::ai::resilience::cost_micros;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::*;
use sha2::{Digest, Sha256};
use std::time::Instant;

/// What a finished call used, for its log row.
#[derive(Debug, Default, Clone)]
pub struct Usage {
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_micros: u64,
    pub attempts: u32,
    pub latency_ms: f64,
}

impl Usage {
    /// Adds another call's usage (a repair round). Counts come from providers: saturating.
    pub fn add(&mut self, other: &Usage) {
        self.tokens_in = self.tokens_in.saturating_add(other.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(other.tokens_out);
        self.cost_micros = self.cost_micros.saturating_add(other.cost_micros);
        self.attempts = self.attempts.saturating_add(other.attempts);
        self.latency_ms += other.latency_ms;
    }
}

/// A model's prices in micro-dollars per 1,000 input and output tokens (custos.ai_model_prices:
/// the built-in list, overridden by custos.ai_prices).
fn prices(provider: &str, model: &str, cfg: &AiConfig) -> (u64, u64) {
    // A pinned search_path: a caller's own `*` must not make every call free.
    let row = crate::pg::backend::with_pinned_search_path(|| {
        Spi::connect(|client| {
            let mut rows = client.select(
                "SELECT (usd_per_1k_input * 1000000)::bigint, (usd_per_1k_output * 1000000)::bigint
               FROM custos.ai_model_prices WHERE provider = $1 AND model = $2",
                None,
                &[provider.into(), model.into()],
            )?;
            Ok::<_, pgrx::spi::Error>(rows.next().map(|r| {
                (
                    r.get::<i64>(1).ok().flatten().unwrap_or(0).max(0) as u64,
                    r.get::<i64>(2).ok().flatten().unwrap_or(0).max(0) as u64,
                )
            }))
        })
    })
    .unwrap_or_else(|e| {
        raise(
            ERRCODE_INTERNAL_ERROR,
            format!("reading AI prices: {e}"),
            None,
        )
    });
    match row {
        Some(p) => p,
        // Without a money budget an unpriced model costs nothing that matters; with one, custos
        // will not guess.
        None if cfg.budget_micros.is_none() => (0, 0),
        None => raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("custos has no price for {provider} model \"{model}\", so the tenant's money budget cannot be kept"),
            Some("a superuser adds one: INSERT INTO custos.ai_prices (provider, model, usd_per_1k_input, usd_per_1k_output) VALUES (...)"),
        ),
    }
}

/// Raises unless a provider may be called from here.
fn refuse_unsafe_call(provider: &str) {
    if crate::pg::backend::recovery_in_progress() {
        raise(
            ERRCODE_READ_ONLY_SQL_TRANSACTION,
            format!("custos does not call {provider} from a hot standby: the call could not be logged or counted"),
            Some("call it on the primary, or use a local-* model"),
        );
    }
    if crate::ledger::head::holds_chain_locks() {
        raise(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("custos does not call {provider} while this transaction holds ledger chain locks: other writers of the tenant would wait for the provider"),
            Some("make AI calls before recording events in the transaction, or in a transaction of their own"),
        );
    }
}

/// A call made ready inside a transaction (checked, priced, held against the budget): it may be
/// performed later, outside any transaction (a background worker never waits for a provider with
/// a transaction open).
pub struct Prepared {
    price_in: u64,
    price_out: u64,
    tokens_in: u64,
    reservation: guard::Reservation,
}

impl Prepared {
    /// Gives the hold back unspent (a repair round that was not needed).
    pub fn cancel(self) {
        self.reservation.settle(0, 0);
    }
}

/// Checks, prices and holds one provider operation for the current tenant: `tokens_in`
/// estimated and `max_tokens_out`. Raises where a call must not happen (a standby, ledger chain
/// locks, an exhausted budget).
pub fn prepare(
    cfg: &AiConfig,
    provider: &dyn Provider,
    model: &str,
    operation: &Operation,
    tokens_in: u64,
    max_tokens_out: u64,
) -> Result<Prepared, CallError> {
    provider.check(model, operation)?;
    refuse_unsafe_call(provider.kind().name());
    let (price_in, price_out) = prices(provider.kind().name(), model, cfg);
    let reservation = guard::reserve(
        cfg,
        tokens_in + max_tokens_out,
        cost_micros(tokens_in, max_tokens_out, price_in, price_out),
    );
    Ok(Prepared {
        price_in,
        price_out,
        tokens_in,
        reservation,
    })
}

/// Performs a prepared call: `f` (one provider operation, perhaps several HTTP requests)
/// through a transport, then the hold settled with what `f` reports (tokens in, tokens out).
/// Touches no table: it runs inside a transaction or outside one.
pub fn perform<T>(
    cfg: &AiConfig,
    provider: &dyn Provider,
    prepared: Prepared,
    f: impl FnOnce(&mut Transport) -> Result<(T, u64, u64), CallError>,
) -> Result<(T, Usage), (CallError, Usage)> {
    let Prepared {
        price_in,
        price_out,
        tokens_in,
        reservation,
    } = prepared;
    let mut transport = Transport::new(cfg, provider.kind());
    let started = Instant::now();
    let result = f(&mut transport);
    let mut usage = Usage {
        attempts: transport.attempts,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        ..Usage::default()
    };
    match result {
        Ok((value, used_in, used_out)) => {
            // A provider that reports no usage is charged the estimate.
            usage.tokens_in = if used_in > 0 { used_in } else { tokens_in };
            usage.tokens_out = used_out;
            usage.cost_micros = cost_micros(usage.tokens_in, usage.tokens_out, price_in, price_out);
            reservation.settle(
                usage.tokens_in.saturating_add(usage.tokens_out),
                usage.cost_micros,
            );
            Ok((value, usage))
        }
        Err(e) => {
            // A request that got no answer may still have been billed: count the input.
            usage.tokens_in = if usage.attempts > 0 { tokens_in } else { 0 };
            usage.cost_micros = cost_micros(usage.tokens_in, 0, price_in, 0);
            reservation.settle(usage.tokens_in, usage.cost_micros);
            Err((e, usage))
        }
    }
}

/// [`prepare`] then [`perform`], in the caller's transaction.
pub fn remote<T>(
    cfg: &AiConfig,
    provider: &dyn Provider,
    model: &str,
    operation: &Operation,
    tokens_in: u64,
    max_tokens_out: u64,
    f: impl FnOnce(&mut Transport) -> Result<(T, u64, u64), CallError>,
) -> Result<(T, Usage), (CallError, Usage)> {
    match prepare(cfg, provider, model, operation, tokens_in, max_tokens_out) {
        Ok(prepared) => perform(cfg, provider, prepared, f),
        Err(e) => Err((e, Usage::default())),
    }
}

/// One row of custos.ai_calls.
pub struct CallRecord<'a> {
    pub tenant: [u8; 16],
    pub provider: &'a str,
    pub model: &'a str,
    pub operation: &'a str,
    pub task: Option<(&'a str, i32)>,
    pub usage: &'a Usage,
    pub outcome: &'a str,
    pub error: Option<&'a str>,
    /// What was sent (redacted), hashed.
    pub sent: &'a str,
    /// The part of it worth reading back (the user's message; redacted): its beginning is kept.
    pub excerpt: &'a str,
}

/// The hex SHA-256 of what was sent.
pub fn prompt_hash(sent: &str) -> String {
    hex::encode(Sha256::digest(sent.as_bytes()))
}

/// A count for a bigint column (providers' counts are not trusted to fit).
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Writes the call's row (as custos itself: tenants read custos.ai_calls, nobody writes it).
pub fn log(rec: &CallRecord) -> i64 {
    let excerpt: String = rec.excerpt.chars().take(200).collect();
    let u = rec.usage;
    crate::pg::backend::as_superuser_queueing_deferred_triggers(|| {
        Spi::connect_mut(|client| {
            let mut rows = client.update(
                "INSERT INTO custos.ai_calls (tenant_id, provider, model, operation, task, prompt_version,
                        tokens_in, tokens_out, cost_micros, latency_ms, attempts, outcome, error, prompt_hash, excerpt)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                 RETURNING id",
                None,
                &[
                    pgrx::Uuid::from_bytes(rec.tenant).into(),
                    rec.provider.into(),
                    rec.model.into(),
                    rec.operation.into(),
                    rec.task.map(|t| t.0).into(),
                    rec.task.map(|t| t.1).into(),
                    big(u.tokens_in).into(),
                    big(u.tokens_out).into(),
                    big(u.cost_micros).into(),
                    u.latency_ms.into(),
                    (u.attempts as i32).into(),
                    rec.outcome.into(),
                    rec.error.into(),
                    prompt_hash(rec.sent).into(),
                    excerpt.into(),
                ],
            )?;
            Ok::<_, pgrx::spi::Error>(rows.next().and_then(|r| r.get::<i64>(1).ok().flatten()).unwrap_or(0))
        })
    })
    .unwrap_or_else(|e| raise(ERRCODE_INTERNAL_ERROR, format!("logging the AI call: {e}"), None))
}

/// Raises the error of a failed call: 08006 when the provider is unavailable (retries spent,
/// breaker open), 38000 when it refused the request, 22023 when custos would not send it.
pub fn raise_call_error(e: &CallError) -> ! {
    match e {
        CallError::Unavailable(m) => raise(
            ERRCODE_CONNECTION_FAILURE,
            m.clone(),
            Some(
                "transient failures are retried twice at most; custos.ai_calls shows recent calls",
            ),
        ),
        CallError::Refused(m) => raise(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, m.clone(), None),
        CallError::Invalid(m) => raise(ERRCODE_INVALID_PARAMETER_VALUE, m.clone(), None),
    }
}
