//! SQL functions of the ledger that need Rust: verification and signed checkpoints. They run as
//! SECURITY DEFINER with a pinned search_path, so they read every row of the tenant whatever RLS
//! shows the caller; each one first checks that the caller works in that tenant.

use super::chain::{event_hash, genesis_hash, hash_from_bytes, Hash, HASH_LEN};
use super::checkpoint::{self, Checkpoint, CheckpointError};
use super::row::{scan_chain, settled_hash};
use super::verify::{Break, Row, Verifier};
use crate::error::raise;
use crate::gucs;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

const PROGRESS_EVERY: i64 = 250_000;

fn to_uuid(u: pgrx::Uuid) -> uuid::Uuid {
    uuid::Uuid::from_bytes(*u.as_bytes())
}

pub(crate) use crate::tenancy::authorize_tenant;

/// Raises 42501 unless the caller works in `tenant` (superusers work in any).
#[pg_extern(stable, parallel_safe)]
fn require_tenant_access(tenant: pgrx::Uuid) {
    authorize_tenant(to_uuid(tenant));
}

fn spi_failed(e: pgrx::spi::Error) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("ledger read failed: {e}"),
        None,
    )
}

/// The stored hash of one row, if that row exists: committed, or settling (see `head`), whether or
/// not the caller's snapshot sees it yet.
fn stored_hash(tenant: pgrx::Uuid, seq: i64) -> Option<Hash> {
    settled_hash(tenant.as_bytes(), seq)
}

/// The first column of the first row of a query, if any, read with read-only SPI: verification
/// takes no transaction id (it runs on hot standbys too).
fn first_i64(query: &str, args: &[pgrx::datum::DatumWithOid]) -> Option<i64> {
    Spi::connect(|client| {
        client
            .select(query, None, args)?
            .next()
            .map(|r| r.get::<i64>(1))
            .transpose()
            .map(Option::flatten)
    })
    .unwrap_or_else(|e| spi_failed(e))
}

fn last_seq(tenant: pgrx::Uuid) -> i64 {
    Spi::get_one_with_args::<i64>(
        "SELECT max(seq) FROM custos.events WHERE tenant_id = $1",
        &[tenant.into()],
    )
    .unwrap_or_else(|e| spi_failed(e))
    .unwrap_or(0)
}

/// Where retention last cut a tenant's chain: events through `through_seq` were removed, the
/// last of them had `hash`, and the retention event at `event_seq` recorded both.
pub struct Anchor {
    pub through_seq: i64,
    pub hash: Hash,
    pub event_seq: i64,
    pub matches_its_event: bool,
}

pub fn retention_anchor(tenant: pgrx::Uuid) -> Option<Anchor> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT a.through_seq, a.anchor_hash, a.event_seq,
                    coalesce(e.details->>'through_seq' = a.through_seq::text
                             AND e.details->>'anchor_hash' = encode(a.anchor_hash, 'hex'), false)
               FROM custos.chain_anchors a
               LEFT JOIN custos.events e ON e.tenant_id = a.tenant_id AND e.seq = a.event_seq
              WHERE a.tenant_id = $1 ORDER BY a.through_seq DESC LIMIT 1",
            None,
            &[tenant.into()],
        )?;
        let mut found = None;
        for r in rows {
            found = Some(Anchor {
                through_seq: r.get::<i64>(1)?.unwrap_or_default(),
                hash: hash_from_bytes(&r.get::<Vec<u8>>(2)?.unwrap_or_default()),
                event_seq: r.get::<i64>(3)?.unwrap_or_default(),
                matches_its_event: r.get::<bool>(4)?.unwrap_or(false),
            });
        }
        Ok::<_, pgrx::spi::Error>(found)
    })
    .unwrap_or_else(|e| spi_failed(e))
}

/// What a chain verification answers: `(ok, checked, first_broken_seq, reason)`. (Spelled out in
/// each `#[pg_extern]` signature: pgrx derives the SQL result columns from the written type.)
pub fn verdict(
    checked: i64,
    broken: Option<Break>,
) -> TableIterator<
    'static,
    (
        name!(ok, bool),
        name!(checked, i64),
        name!(first_broken_seq, Option<i64>),
        name!(reason, Option<String>),
    ),
> {
    TableIterator::once((
        broken.is_none(),
        checked,
        broken.as_ref().map(Break::seq),
        broken.as_ref().map(Break::describe),
    ))
}

pub struct Outcome {
    pub checked: i64,
    pub last_seq: i64,
    pub broken: Option<Break>,
    /// Where retention last cut the chain, if it did.
    pub anchor: Option<Anchor>,
}

/// Walks the chain from `from_seq` to `to_seq` (or its end) straight through the primary key, in
/// constant memory however long the chain is.
pub fn walk_chain(tenant: pgrx::Uuid, from_seq: i64, to_seq: Option<i64>) -> Outcome {
    let tenant_bytes = *tenant.as_bytes();
    // Events through the retention anchor are gone: the chain now starts after it.
    let anchor = retention_anchor(tenant);
    if let Some(a) = &anchor {
        if !a.matches_its_event {
            return Outcome {
                checked: 0,
                last_seq: a.through_seq,
                broken: Some(Break::AnchorAltered { seq: a.event_seq }),
                anchor,
            };
        }
    }
    let from_seq = match &anchor {
        Some(a) if from_seq <= a.through_seq => a.through_seq + 1,
        _ => from_seq,
    };
    let start_prev = match &anchor {
        Some(a) if from_seq == a.through_seq + 1 => Some(a.hash),
        _ if from_seq == 1 => Some(genesis_hash(&tenant_bytes)),
        _ => stored_hash(tenant, from_seq - 1),
    };
    let Some(start_prev) = start_prev else {
        return Outcome {
            checked: 0,
            last_seq: from_seq - 1,
            broken: Some(Break::Gap {
                seq: from_seq - 1,
                found: from_seq,
            }),
            anchor,
        };
    };
    let mut verifier = Verifier::new(from_seq, start_prev);
    let mut last_seq = from_seq - 1;
    let mut broken = None;
    let mut next_progress = PROGRESS_EVERY;
    scan_chain(&tenant_bytes, from_seq, to_seq, |row| {
        let pushed = verifier.push(&Row {
            seq: row.seq,
            prev_hash: row.prev_hash,
            hash: row.hash,
            recomputed: event_hash(&hash_from_bytes(row.prev_hash), &row.fields()),
        });
        if let Err(b) = pushed {
            broken = Some(b);
            return false;
        }
        last_seq = row.seq;
        if verifier.checked() >= next_progress {
            pgrx::notice!(
                "custos.verify_chain: {} events checked, at seq {last_seq}",
                verifier.checked()
            );
            next_progress += PROGRESS_EVERY;
        }
        true
    });
    if broken.is_none() {
        broken = verifier.finish().err();
    }
    if let Some(Break::LinkBroken { seq, prev_hash }) = &broken {
        // Does the row link to some other row of the chain? Then rows were moved, not edited.
        let links_to = first_i64(
            "SELECT seq FROM custos.events WHERE tenant_id = $1 AND hash = $2 AND seq <> $3 - 1 LIMIT 1",
            &[tenant.into(), prev_hash.clone().into(), (*seq).into()],
        );
        if let Some(links_to) = links_to {
            broken = Some(Break::Reordered {
                seq: *seq,
                links_to,
            });
        }
    }
    Outcome {
        checked: verifier.checked(),
        last_seq,
        broken,
        anchor,
    }
}

/// custos' own records that the chain no longer agrees with: a stored checkpoint it fell short of
/// (truncation) or whose head hash is gone (the chain was rewritten and recomputed), or an
/// activity watermark beyond its end.
fn check_recorded_checkpoints(tenant: pgrx::Uuid, outcome: &Outcome) -> Option<Break> {
    let checkpoints: Vec<(i64, Vec<u8>)> = Spi::connect(|client| {
        client
            .select(
                "SELECT seq, head FROM custos.checkpoints WHERE tenant_id = $1 ORDER BY seq DESC, signed_at DESC LIMIT 100",
                None,
                &[tenant.into()],
            )?
            .map(|r| Ok((r.get::<i64>(1)?.unwrap_or_default(), r.get::<Vec<u8>>(2)?.unwrap_or_default())))
            .collect::<pgrx::spi::Result<Vec<_>>>()
    })
    .unwrap_or_else(|e| spi_failed(e));
    for (seq, head) in checkpoints {
        // A checkpoint inside the removed part can only be checked at the anchor itself.
        if outcome.anchor.as_ref().is_some_and(|a| seq < a.through_seq) {
            continue;
        }
        if let Some(b) = checkpoint_break(tenant, outcome, seq, &head) {
            return Some(b);
        }
    }
    // The dormant fold's watermark says how far the chain reached when it last read it: an
    // emptied or cut ledger (a restore that lost its rows, say) is truncated, not fine.
    let folded = first_i64(
        "SELECT folded_seq FROM custos.activity_watermarks WHERE tenant_id = $1",
        &[tenant.into()],
    );
    match folded {
        Some(seq) if seq > outcome.last_seq => Some(Break::Truncated {
            last: outcome.last_seq,
            expected: seq,
        }),
        _ => None,
    }
}

/// Whether the walked chain fails a checkpoint of (`seq`, `head`): it ends before `seq` (a row
/// there committed after the walk's snapshot counts), or the row there has another hash.
fn checkpoint_break(tenant: pgrx::Uuid, outcome: &Outcome, seq: i64, head: &[u8]) -> Option<Break> {
    let current = match &outcome.anchor {
        Some(a) if a.through_seq == seq => Some(a.hash),
        _ if seq == 0 => Some(genesis_hash(tenant.as_bytes())),
        _ => stored_hash(tenant, seq),
    };
    match current {
        None if seq > outcome.last_seq => Some(Break::Truncated {
            last: outcome.last_seq,
            expected: seq,
        }),
        Some(h) if h[..] == *head => None,
        _ => Some(Break::Rewritten { seq }),
    }
}

/// Records a proven break as a critical alert (none on a hot standby: see `alerts::raise`).
fn raise_alert(tenant: pgrx::Uuid, b: &Break) {
    crate::alerts::raise(
        tenant.as_bytes(),
        &crate::alerts::Alert {
            source: "ledger.verify",
            severity: "critical",
            title: format!("audit ledger chain broken at seq {}", b.seq()),
            details: serde_json::json!({"kind": b.kind(), "first_broken_seq": b.seq(), "reason": b.describe()}),
        },
    );
}

fn require_at_least(argument: &str, value: i64, least: i64) {
    if value < least {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{argument} must be {least} or more, not {value}"),
            None,
        );
    }
}

/// Consumers that follow a tenant's chain by seq (a watermark: "everything through seq n is
/// done") must not step over an event that is still becoming visible; see `head`.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
pub(crate) fn settled_seq(tenant: pgrx::Uuid, after_seq: default!(i64, 0)) -> i64 {
    authorize_tenant(to_uuid(tenant));
    require_at_least("after_seq", after_seq, 0);
    let mut settled = after_seq;
    scan_chain(
        tenant.as_bytes(),
        after_seq.saturating_add(1),
        None,
        |row| {
            if row.settling {
                return false;
            }
            settled = row.seq;
            true
        },
    );
    settled
}

#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn verify_chain(
    tenant: pgrx::Uuid,
    from_seq: default!(i64, 1),
    to_seq: default!(Option<i64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(ok, bool),
        name!(checked, i64),
        name!(first_broken_seq, Option<i64>),
        name!(reason, Option<String>),
    ),
> {
    authorize_tenant(to_uuid(tenant));
    require_at_least("from_seq", from_seq, 1);
    if let Some(to) = to_seq {
        if to < from_seq {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("to_seq ({to}) is before from_seq ({from_seq})"),
                None,
            );
        }
    }
    let outcome = walk_chain(tenant, from_seq, to_seq);
    // What the stored rows and custos' own records prove is an alert; a to_seq past the end is
    // only the caller's question, answered as truncated without one.
    let proven = outcome.broken.clone().or_else(|| match to_seq {
        Some(_) => None,
        None => check_recorded_checkpoints(tenant, &outcome),
    });
    if let Some(b) = &proven {
        raise_alert(tenant, b);
    }
    let asked_beyond_end = match to_seq {
        Some(to) if outcome.last_seq < to => Some(Break::EndsBeforeAsked {
            last: outcome.last_seq,
            asked: to,
        }),
        _ => None,
    };
    verdict(outcome.checked, proven.or(asked_beyond_end))
}

/// The configured checkpoint key (setting or key file): None if none is configured, Err if it
/// does not parse (the error never quotes the key).
fn configured_signing_key() -> Option<Result<ed25519_dalek::SigningKey, String>> {
    let text = gucs::secret(
        &gucs::CHECKPOINT_SIGNING_KEY,
        &gucs::CHECKPOINT_KEY_FILE,
        "checkpoint key",
    )?;
    Some(checkpoint::parse_signing_key(&text).map_err(|e| e.to_string()))
}

/// The public half of the configured checkpoint key, if one is configured and valid.
fn configured_public_key() -> Option<ed25519_dalek::VerifyingKey> {
    configured_signing_key()?.ok().map(|k| k.verifying_key())
}

fn signing_key() -> ed25519_dalek::SigningKey {
    let configured = configured_signing_key().unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "no checkpoint signing key is configured",
            Some("a superuser sets custos.checkpoint_key_file (or custos.checkpoint_signing_key in the session): a 32-byte seed, hex or base64"),
        )
    });
    configured.unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("checkpoint signing key: {e}"),
            None,
        )
    })
}

fn now_rfc3339() -> String {
    Spi::get_one::<String>(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .unwrap_or_else(|e| spi_failed(e))
    .unwrap_or_default()
}

#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn checkpoint(tenant: pgrx::Uuid) -> String {
    authorize_tenant(to_uuid(tenant));
    let key = signing_key();
    let seq = last_seq(tenant);
    let head = if seq == 0 {
        genesis_hash(tenant.as_bytes())
    } else {
        stored_hash(tenant, seq).unwrap_or([0; HASH_LEN])
    };
    let cp = Checkpoint {
        tenant: to_uuid(tenant),
        seq,
        head,
        at: now_rfc3339(),
    };
    let text = checkpoint::sign(&cp, &key);
    Spi::run_with_args(
        "INSERT INTO custos.checkpoints (tenant_id, seq, head, signed_at, key_id, checkpoint) \
         VALUES ($1, $2, $3, $4::timestamptz, $5, $6)",
        &[
            tenant.into(),
            seq.into(),
            head.to_vec().into(),
            cp.at.clone().into(),
            checkpoint::key_id(&key.verifying_key()).into(),
            text.clone().into(),
        ],
    )
    .unwrap_or_else(|e| spi_failed(e));
    text
}

#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn checkpoint_public_key() -> String {
    hex::encode(signing_key().verifying_key().as_bytes())
}

// pgrx needs the row type spelled out here (no alias), hence the allow.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn verify_checkpoint(
    checkpoint: &str,
    public_key: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(ok, bool),
        name!(tenant_id, Option<pgrx::Uuid>),
        name!(seq, Option<i64>),
        name!(checked, i64),
        name!(reason, Option<String>),
    ),
> {
    let key = match public_key {
        Some(k) => checkpoint::parse_public_key(k).unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("public_key: {e}"),
                None,
            )
        }),
        None => signing_key().verifying_key(),
    };
    // Only a checkpoint signed with custos' own key is evidence worth an alert: anyone can sign a
    // text claiming a longer chain with a key of their own.
    let signed_by_custos = public_key.is_none() || configured_public_key() == Some(key);
    let cp = match checkpoint::verify(checkpoint, &key) {
        Ok(cp) => cp,
        Err(CheckpointError::Malformed(why)) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            format!("malformed checkpoint: {why}"),
            Some("pass the text exactly as custos.checkpoint() returned it"),
        ),
        Err(e) => return TableIterator::once((false, None, None, 0, Some(e.to_string()))),
    };
    authorize_tenant(cp.tenant);
    let tenant = pgrx::Uuid::from_bytes(*cp.tenant.as_bytes());
    let outcome = walk_chain(tenant, 1, None);
    let anchor = outcome.anchor.as_ref();
    if let Some(a) = anchor.filter(|a| cp.seq < a.through_seq && outcome.broken.is_none()) {
        return TableIterator::once((
            false,
            Some(tenant),
            Some(cp.seq),
            outcome.checked,
            Some(format!(
                "not checkable: retention removed events through seq {}, past this checkpoint; check a checkpoint taken since",
                a.through_seq
            )),
        ));
    }
    let broken = outcome
        .broken
        .clone()
        .or_else(|| checkpoint_break(tenant, &outcome, cp.seq, &cp.head));
    if let Some(b) = broken
        .as_ref()
        .filter(|_| signed_by_custos || outcome.broken.is_some())
    {
        raise_alert(tenant, b);
    }
    TableIterator::once((
        broken.is_none(),
        Some(tenant),
        Some(cp.seq),
        outcome.checked,
        broken.as_ref().map(Break::describe),
    ))
}
