//! `custos.access_log`: who read the ledger, when, through which function, with which filters and
//! how many rows came back. Append-only, with its own per-tenant SHA-256 chain (same encoding
//! rules as events, its own domain tags and lock), written only by custos' read functions.

use super::chain::{field, Hash, HASH_LEN};
use super::head::{self, HeadColumns, LockKind};
use super::row::open_custos_table;
use super::verify::{Row, Verifier};
use crate::error::raise;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use sha2::{Digest, Sha256};

const DOMAIN_ACCESS: &[u8] = b"custos/access/v1\0";
const DOMAIN_ACCESS_GENESIS: &[u8] = b"custos/access/genesis/v1\0";

pub struct AccessFields<'a> {
    pub tenant_id: [u8; 16],
    pub seq: i64,
    pub id: [u8; 16],
    /// Microseconds since 2000-01-01 UTC.
    pub accessed_at: i64,
    pub reader: &'a str,
    pub actor: &'a str,
    pub function: &'a str,
    /// Canonical JSON (jsonb text) of the filters.
    pub filters: &'a str,
    pub rows_returned: i64,
}

pub fn access_genesis(tenant: &[u8; 16]) -> Hash {
    let mut h = Sha256::new();
    h.update(DOMAIN_ACCESS_GENESIS);
    h.update(tenant);
    h.finalize().into()
}

pub fn access_hash(prev: &Hash, a: &AccessFields<'_>) -> Hash {
    let mut buf = Vec::with_capacity(256 + a.filters.len());
    buf.extend_from_slice(DOMAIN_ACCESS);
    buf.extend_from_slice(prev);
    field(&mut buf, 0x01, Some(&a.tenant_id));
    field(&mut buf, 0x02, Some(&a.seq.to_be_bytes()));
    field(&mut buf, 0x03, Some(&a.id));
    field(&mut buf, 0x04, Some(&a.accessed_at.to_be_bytes()));
    field(&mut buf, 0x05, Some(a.reader.as_bytes()));
    field(&mut buf, 0x06, Some(a.actor.as_bytes()));
    field(&mut buf, 0x07, Some(a.function.as_bytes()));
    field(&mut buf, 0x08, Some(a.filters.as_bytes()));
    field(&mut buf, 0x09, Some(&a.rows_returned.to_be_bytes()));
    Sha256::digest(&buf).into()
}

fn spi_failed(e: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("access log: {e}"),
        None,
    )
}

/// Columns of custos.access_log the head lookup needs, found by name.
unsafe fn head_columns(rel: pg_sys::Relation) -> HeadColumns {
    unsafe {
        let attnum = |name: &std::ffi::CStr| pg_sys::get_attnum((*rel).rd_id, name.as_ptr());
        HeadColumns {
            tenant_id: attnum(c"tenant_id"),
            seq: attnum(c"seq"),
            hash: attnum(c"hash"),
        }
    }
}

/// What a person filter that names no subject of the tenant is stored as.
#[derive(Clone, Copy, PartialEq)]
enum Unknown {
    NotASubject,
    AsGiven,
}

/// Filters of custos' read functions that may name a person.
const PERSON_FILTERS: [(&str, Unknown); 3] = [
    ("subject", Unknown::NotASubject),
    ("by_actor", Unknown::NotASubject),
    ("of_entity", Unknown::AsGiven),
];

/// What a sealing tenant's access log stores for a searched name that is no subject of it.
const NOT_A_SUBJECT: &str = "(not a subject)";

/// Appends one read to the tenant's access log and returns its seq. For custos' read functions.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn log_access(tenant: pgrx::Uuid, function: &str, filters: JsonB, rows_returned: i64) -> i64 {
    let t = *tenant.as_bytes();
    super::api::authorize_tenant(uuid::Uuid::from_bytes(t));
    if crate::pg::recovery_in_progress() {
        return log_on_standby(&t, function, filters.0, rows_returned);
    }
    head::lock_chain(&t, LockKind::AccessLog);
    // SAFETY: the relation is opened and closed here; the tenant's access-log lock is held.
    let prev = unsafe {
        let rel = open_custos_table(c"access_log", pg_sys::RowExclusiveLock);
        let h = head::read_head(rel, head_columns(rel), &t, head::Succession::AfterEnd);
        pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        h
    }
    .unwrap_or(head::Head {
        seq: 0,
        hash: access_genesis(&t),
    });
    let reader = super::trigger::current_role_name();
    let (actor, filters_text) = recorded_people(&t, &reader, filters.0, true);
    let id = crate::crypto::keys::random_uuid_v4();
    // SAFETY: plain read of the clock, backend thread.
    let accessed_at = unsafe { pg_sys::GetCurrentTimestamp() };
    let fields = AccessFields {
        tenant_id: t,
        seq: prev.seq + 1,
        id,
        accessed_at,
        reader: &reader,
        actor: &actor,
        function,
        filters: &filters_text,
        rows_returned,
    };
    let hash = access_hash(&prev.hash, &fields);
    Spi::run_with_args(
        "INSERT INTO custos.access_log (tenant_id, seq, id, accessed_at, reader, actor, function, filters, rows_returned, prev_hash, hash)
         VALUES ($1, $2, $3, '2000-01-01 00:00:00+00'::timestamptz + $4 * interval '1 microsecond', $5, $6, $7, $8::jsonb, $9, $10, $11)",
        &[
            tenant.into(),
            fields.seq.into(),
            pgrx::Uuid::from_bytes(id).into(),
            accessed_at.into(),
            reader.as_str().into(),
            actor.as_str().into(),
            function.into(),
            filters_text.as_str().into(),
            rows_returned.into(),
            prev.hash.to_vec().into(),
            hash.to_vec().into(),
        ],
    )
    .unwrap_or_else(|e| spi_failed(e));
    fields.seq
}

/// The actor and the canonical filters text a read is recorded with. On tenants that seal their
/// events, the people a read names (who read, whom it searched for) are stored as pseudonyms:
/// forgetting them leaves nothing readable here either. The reader gets a key like any actor
/// (`may_make_keys`; a standby cannot, and records an unknown reader as not a subject). A
/// searched name gets its pseudonym if it is a subject (every actor of a sealing tenant is, and
/// every person an entity_id names); a search must not make a key, which would store the very
/// name searched for. An actor or subject that is no subject is stored as such (it matches
/// nothing); an entity id that is none is no person and stays as it is.
fn recorded_people(
    t: &[u8; 16],
    reader: &str,
    mut filters: serde_json::Value,
    may_make_keys: bool,
) -> (String, String) {
    use crate::crypto::keys;
    let mut actor = super::trigger::default_actor(reader);
    if crate::protection::policy(t).encrypt {
        actor = if may_make_keys {
            keys::writing_key(t, &actor).pseudonym.clone()
        } else {
            keys::known_pseudonym(t, &actor).unwrap_or_else(|| NOT_A_SUBJECT.to_owned())
        };
        if let Some(object) = filters.as_object_mut() {
            for (key, unknown) in PERSON_FILTERS {
                if let Some(serde_json::Value::String(name)) = object.get_mut(key) {
                    match keys::known_pseudonym(t, name) {
                        Some(pseudonym) => *name = pseudonym,
                        None if unknown == Unknown::NotASubject => *name = NOT_A_SUBJECT.to_owned(),
                        None => {}
                    }
                }
            }
        }
    }
    let mut filters_text = String::new();
    super::chain::canonical_json(&filters, &mut filters_text);
    (actor, filters_text)
}

/// A logged read on a hot standby, which cannot append to the access log: refused, or written to
/// the server log, as `custos.standby_access_log` says. Returns 0 (no access-log seq).
fn log_on_standby(t: &[u8; 16], function: &str, filters: serde_json::Value, rows: i64) -> i64 {
    let policy = crate::gucs::STANDBY_ACCESS_LOG
        .get()
        .map(|c| c.to_string_lossy().trim().to_ascii_lowercase())
        .unwrap_or_default();
    if policy != "server_log" {
        raise(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            format!("{function} records every read in custos.access_log, which a hot standby cannot write"),
            Some("read on the primary, or have a superuser set custos.standby_access_log = 'server_log' on the standby to log such reads to its server log instead"),
        );
    }
    let reader = super::trigger::current_role_name();
    let (actor, filters_text) = recorded_people(t, &reader, filters, false);
    pgrx::log!(
        "custos access (standby): tenant={} reader={reader} actor={actor} function={function} filters={filters_text} rows={rows}",
        uuid::Uuid::from_bytes(*t)
    );
    0
}

/// Recomputes a tenant's access-log chain; the same answer shape as custos.verify_chain.
#[pg_extern(stable, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn verify_access_log(
    tenant: pgrx::Uuid,
) -> TableIterator<
    'static,
    (
        name!(ok, bool),
        name!(checked, i64),
        name!(first_broken_seq, Option<i64>),
        name!(reason, Option<String>),
    ),
> {
    let t = *tenant.as_bytes();
    super::api::authorize_tenant(uuid::Uuid::from_bytes(t));
    let mut verifier = Verifier::new(1, access_genesis(&t));
    let mut after = 0i64;
    let mut broken = None;
    // Bounded pages keep memory flat however long the log is.
    'pages: loop {
        let page = Spi::connect(|client| {
            client
                .select(
                    "SELECT seq, id, (extract(epoch FROM accessed_at - '2000-01-01 00:00:00+00') * 1e6)::int8,
                            reader, actor, function, filters::text, rows_returned, prev_hash, hash
                       FROM custos.access_log WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT 10000",
                    None,
                    &[tenant.into(), after.into()],
                )?
                .map(|r| {
                    Ok((
                        r.get::<i64>(1)?.unwrap_or_default(),
                        r.get::<pgrx::Uuid>(2)?.map(|u| *u.as_bytes()).unwrap_or_default(),
                        r.get::<i64>(3)?.unwrap_or_default(),
                        r.get::<String>(4)?.unwrap_or_default(),
                        r.get::<String>(5)?.unwrap_or_default(),
                        r.get::<String>(6)?.unwrap_or_default(),
                        r.get::<String>(7)?.unwrap_or_default(),
                        r.get::<i64>(8)?.unwrap_or_default(),
                        r.get::<Vec<u8>>(9)?.unwrap_or_default(),
                        r.get::<Vec<u8>>(10)?.unwrap_or_default(),
                    ))
                })
                .collect::<pgrx::spi::Result<Vec<_>>>()
        })
        .unwrap_or_else(|e| spi_failed(e));
        if page.is_empty() {
            break;
        }
        for (seq, id, at, reader, actor, function, filters, rows, prev_hash, hash) in &page {
            let mut prev = [0u8; HASH_LEN];
            if prev_hash.len() == HASH_LEN {
                prev.copy_from_slice(prev_hash);
            }
            let recomputed = access_hash(
                &prev,
                &AccessFields {
                    tenant_id: t,
                    seq: *seq,
                    id: *id,
                    accessed_at: *at,
                    reader,
                    actor,
                    function,
                    filters,
                    rows_returned: *rows,
                },
            );
            if let Err(b) = verifier.push(&Row {
                seq: *seq,
                prev_hash,
                hash,
                recomputed,
            }) {
                broken = Some(b);
                break 'pages;
            }
            after = *seq;
        }
    }
    if broken.is_none() {
        broken = verifier.finish().err();
    }
    super::api::verdict(verifier.checked(), broken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AccessFields<'static> {
        AccessFields {
            tenant_id: [1; 16],
            seq: 1,
            id: [2; 16],
            accessed_at: 42,
            reader: "auditor",
            actor: "alice",
            function: "custos.timeline",
            filters: "{}",
            rows_returned: 3,
        }
    }

    #[test]
    fn every_field_and_the_chain_are_covered() {
        let base = access_hash(&access_genesis(&[1; 16]), &sample());
        let variants = [
            AccessFields { seq: 2, ..sample() },
            AccessFields {
                reader: "x",
                ..sample()
            },
            AccessFields {
                actor: "bob",
                ..sample()
            },
            AccessFields {
                function: "custos.event",
                ..sample()
            },
            AccessFields {
                filters: "{\"a\": 1}",
                ..sample()
            },
            AccessFields {
                rows_returned: 4,
                ..sample()
            },
            AccessFields {
                accessed_at: 43,
                ..sample()
            },
        ];
        for v in variants {
            assert_ne!(access_hash(&access_genesis(&[1; 16]), &v), base);
        }
        assert_ne!(access_hash(&[0; 32], &sample()), base);
        // Not interchangeable with the events chain.
        assert_ne!(
            access_genesis(&[1; 16]),
            super::super::chain::genesis_hash(&[1; 16])
        );
    }
}
