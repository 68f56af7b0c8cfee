//! The embedding refresh of a worker, one batch a turn: claimed under a lease in a first
//! transaction (texts built, redacted, priced, held against the budget), embedded with no
//! transaction open, written in a second one where the items are still of the claimed
//! generation. At least once for calls, exactly once for writes: a crash between the two leaves
//! the lease to expire and the batch to be claimed again.

use super::board::{self, Activity};
use super::set_tenant;
use super::worker::{in_transaction, report};
use crate::ai::batch::{self, Outcome};
use crate::gucs;
use pgrx::prelude::*;

/// How long a claim holds its items: a worker killed mid-batch gives them back after this.
const LEASE_SECONDS: i32 = 120;

/// A claimed batch.
struct Claimed {
    tenant: pgrx::Uuid,
    kinds: Vec<String>,
    items: Vec<String>,
    generations: Vec<i64>,
    seqs: Vec<Option<i64>>,
    texts: Vec<String>,
}

fn claim(batch_size: i32) -> Option<Claimed> {
    Spi::connect_mut(|c| {
        c.update("SELECT custos_internal.watch_event_embeddings()", None, &[])?;
        let rows = c.update(
            "SELECT tenant_id, kind, item, generation, seq, text
               FROM custos_internal.claim_embeddings($1, $2, NULL)",
            None,
            &[batch_size.into(), LEASE_SECONDS.into()],
        )?;
        let mut claimed: Option<Claimed> = None;
        for r in rows {
            let tenant = r.get::<pgrx::Uuid>(1)?;
            let Some(tenant) = tenant else { continue };
            let b = claimed.get_or_insert_with(|| Claimed {
                tenant,
                kinds: Vec::new(),
                items: Vec::new(),
                generations: Vec::new(),
                seqs: Vec::new(),
                texts: Vec::new(),
            });
            b.kinds.push(r.get::<String>(2)?.unwrap_or_default());
            b.items.push(r.get::<String>(3)?.unwrap_or_default());
            b.generations.push(r.get::<i64>(4)?.unwrap_or(0));
            b.seqs.push(r.get::<i64>(5)?);
            b.texts.push(r.get::<String>(6)?.unwrap_or_default());
        }
        Ok::<_, pgrx::spi::Error>(claimed)
    })
    .unwrap_or_else(|e| pgrx::error!("claiming embeddings: {e}"))
}

fn failed(c: &Claimed, message: &str, refused: bool, counted: bool) {
    Spi::run_with_args(
        "SELECT custos_internal.embeddings_failed($1, $2, $3, $4, $5, $6, $7)",
        &[
            c.tenant.into(),
            c.kinds.clone().into(),
            c.items.clone().into(),
            c.seqs.clone().into(),
            message.into(),
            refused.into(),
            counted.into(),
        ],
    )
    .unwrap_or_else(|e| pgrx::error!("recording a failed batch: {e}"));
}

/// Gives a claimed batch back, to be claimed again after `wait_ms` (its provider is at its rate
/// or concurrency limit): no attempt is spent, and the tenant's other due items wait as long,
/// so that the worker serves other tenants meanwhile.
fn defer(c: &Claimed, wait_ms: i64) {
    Spi::run_with_args(
        "UPDATE custos.embedding_queue q
            SET lease_until = NULL,
                attempts = CASE WHEN q.lease_until > clock_timestamp() THEN greatest(q.attempts - 1, 0) ELSE q.attempts END,
                next_attempt_at = greatest(q.next_attempt_at, clock_timestamp() + make_interval(secs => $2 / 1000.0))
          WHERE q.tenant_id = $1 AND q.state = 'pending'
            AND (q.lease_until > clock_timestamp() OR q.next_attempt_at < clock_timestamp() + make_interval(secs => $2 / 1000.0))",
        &[c.tenant.into(), (wait_ms as f64).into()],
    )
    .unwrap_or_else(|e| pgrx::error!("deferring a batch: {e}"));
}

/// One batch of the queue, if there is one due; true if there was.
pub fn refresh_once(slot: usize) -> bool {
    let batch_size = gucs::WORKER_BATCH_SIZE.get().clamp(1, 1000);
    let claimed = in_transaction(|| {
        let c = claim(batch_size)?;
        set_tenant(c.tenant);
        let prepared = batch::prepare(&c.texts);
        // Remote providers pass their gate: requests a minute and calls in flight, shared by
        // every worker.
        let ticket = match prepared.remote_provider() {
            None => None,
            Some(kind) => match board::pass_gate(
                slot,
                kind.index(),
                gucs::WORKER_REQUESTS_PER_MINUTE.get().max(0) as u32,
                gucs::WORKER_PROVIDER_CONCURRENCY.get().max(1) as u32,
            ) {
                Ok(t) => t,
                Err(wait_ms) => {
                    defer(&c, wait_ms);
                    return None;
                }
            },
        };
        Some((c, prepared, ticket))
    });
    let Ok(Some((c, prepared, ticket))) = claimed else {
        return claimed.is_err();
    };
    board::set_activity(
        slot,
        Activity::Embedding,
        Some(*c.tenant.as_bytes()),
        0,
        c.texts.len() as i64,
    );
    report(&format!(
        "embedding {} items of tenant {}",
        c.texts.len(),
        c.tenant
    ));
    // No transaction is open here.
    let done = prepared.perform();
    drop(ticket);
    let written = in_transaction(|| {
        set_tenant(c.tenant);
        match &done.outcome {
            Outcome::Vectors(vectors) => {
                let dims = vectors.first().map_or(0, Vec::len);
                if vectors.len() != c.texts.len() || vectors.iter().any(|v| v.len() != dims) {
                    failed(
                        &c,
                        "the provider returned vectors of the wrong number or length",
                        true,
                        true,
                    );
                    return 0;
                }
                let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
                let n = Spi::get_one_with_args::<i64>(
                    "SELECT custos_internal.store_embeddings($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        c.tenant.into(),
                        done.model.clone().into(),
                        (dims as i32).into(),
                        c.kinds.clone().into(),
                        c.items.clone().into(),
                        c.generations.clone().into(),
                        c.seqs.clone().into(),
                        c.texts.clone().into(),
                        flat.into(),
                    ],
                )
                .unwrap_or_else(|e| pgrx::error!("storing embeddings: {e}"))
                .unwrap_or(0);
                done.log();
                n
            }
            Outcome::Failed {
                message,
                refused,
                counted,
            } => {
                failed(&c, message, *refused, *counted);
                -1
            }
        }
    });
    match written {
        Ok(n) if n >= 0 => board::count(slot, n as u64, 0, 0),
        _ => board::count(slot, 0, 0, 1),
    }
    true
}
