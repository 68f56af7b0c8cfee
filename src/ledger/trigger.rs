//! The BEFORE INSERT trigger of `custos.events`: fills in what the client may not set (seq, id,
//! times, actor, role, transaction, hashes) and links the row into its tenant's chain. It deforms
//! the new row once and forms the result once; pgrx's per-field setters would copy the row for
//! every field.

use super::chain::{event_hash, genesis_hash, HASH_LEN};
use super::head::{self, Head};
use super::protect;
use super::row::{bytes_of, event_fields, Columns};
use crate::error::raise;
use crate::gucs;
use crate::tuple::Row;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use std::ffi::CStr;

/// The actor of an event nobody named: `custos.set_actor`, else the JWT `sub`, else the role.
/// `role` is the caller's role name, already looked up for `db_role`.
pub fn default_actor(role: &str) -> String {
    if let Some(a) = gucs::ACTOR.get() {
        if !a.as_bytes().is_empty() {
            return a.to_string_lossy().into_owned();
        }
    }
    crate::tenancy::current_subject().unwrap_or_else(|| role.to_owned())
}

/// The role that called in: after SET ROLE, but not the owner of a SECURITY DEFINER function.
pub fn current_role_name() -> String {
    // SAFETY: backend thread; GetUserNameFromId with noerr = false raises if the role is gone.
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), false);
        CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

fn assigned_by_custos(column: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_GENERATED_ALWAYS,
        format!("column \"{column}\" of custos.events is assigned by custos"),
        Some("leave it out of the INSERT: custos fills seq, recorded_at, db_role, txid, prev_hash and hash"),
    )
}

const SEVERITIES: [&[u8]; 5] = [b"info", b"low", b"medium", b"high", b"critical"];

fn check_failed(message: String, hint: &str) -> ! {
    raise(PgSqlErrorCode::ERRCODE_CHECK_VIOLATION, message, Some(hint))
}

/// Characters in stored UTF-8 text; counted only when the byte length could exceed the limit.
fn within_chars(text: &[u8], min: usize, max: usize) -> bool {
    if text.len() <= max {
        return text.len() >= min;
    }
    let chars = std::str::from_utf8(text)
        .map(|s| s.chars().count())
        .unwrap_or(text.len());
    (min..=max).contains(&chars)
}

/// The column rules of custos.events, checked here rather than as CHECK constraints.
pub fn check_event(fields: &super::chain::EventFields<'_>) {
    for (name, value, min, max) in [
        ("action", fields.action, 1, 200),
        ("entity_type", fields.entity_type, 1, 200),
    ] {
        if !within_chars(value, min, max) {
            check_failed(
                format!("custos.events.{name} must be {min} to {max} characters"),
                "name what happened briefly; put the rest in details",
            );
        }
    }
    if fields.entity_id.is_some_and(|v| !within_chars(v, 0, 1000)) {
        check_failed(
            "custos.events.entity_id must be at most 1000 characters".into(),
            "use a key, not the entity",
        );
    }
    if fields.user_agent.is_some_and(|v| !within_chars(v, 0, 2000)) {
        check_failed(
            "custos.events.user_agent must be at most 2000 characters".into(),
            "truncate it first",
        );
    }
    if !SEVERITIES.contains(&fields.severity) {
        check_failed(
            format!(
                "custos.events.severity cannot be \"{}\"",
                String::from_utf8_lossy(fields.severity)
            ),
            "severity is one of info, low, medium, high, critical",
        );
    }
    if fields.details.first() != Some(&b'{') {
        check_failed(
            "custos.events.details must be a JSON object".into(),
            "wrap values in an object: {\"value\": ...}",
        );
    }
}

fn required(column: &str, hint: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
        format!("null value in column \"{column}\" of custos.events"),
        Some(hint),
    )
}

#[pg_trigger]
fn events_chain<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, PgTriggerError> {
    let td = trigger.trigger_data();
    // SAFETY: fired as a row-level BEFORE INSERT trigger (checked below), so tg_trigtuple and
    // tg_relation are valid for the duration of the call.
    unsafe {
        let fired_right = matches!(trigger.op(), Ok(PgTriggerOperation::Insert))
            && matches!(trigger.level(), PgTriggerLevel::Row)
            && matches!(trigger.when(), Ok(PgTriggerWhen::Before));
        if !fired_right {
            raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "events_chain must be a BEFORE INSERT ... FOR EACH ROW trigger",
                None,
            );
        }
        Ok(Some(chain_row(td.tg_relation, td.tg_trigtuple)))
    }
}

unsafe fn chain_row<'a>(
    rel: pg_sys::Relation,
    tuple: pg_sys::HeapTuple,
) -> PgHeapTuple<'a, AllocatedByRust> {
    unsafe {
        let tupdesc = (*rel).rd_att;
        let c = Columns::of(rel);
        let mut row = Row::deform(tuple, tupdesc);

        for (i, name) in [
            (c.seq, "seq"),
            (c.recorded_at, "recorded_at"),
            (c.db_role, "db_role"),
            (c.txid, "txid"),
            (c.prev_hash, "prev_hash"),
            (c.hash, "hash"),
        ] {
            if !row.nulls[i] {
                assigned_by_custos(name);
            }
        }
        if row.nulls[c.tenant_id] {
            required(
                "tenant_id",
                "call custos.set_tenant(uuid) first, or give tenant_id",
            );
        }
        if row.nulls[c.action] {
            required(
                "action",
                "every event needs an action, such as 'login' or 'invoice.update'",
            );
        }
        if row.nulls[c.entity_type] {
            required(
                "entity_type",
                "every event needs an entity_type, such as 'user' or 'invoice'",
            );
        }
        if row.nulls[c.id] {
            row.set(
                c.id,
                pgrx::Uuid::from_bytes(crate::crypto::keys::random_uuid_v4()).into_datum(),
            );
        }
        let recorded_at = pg_sys::GetCurrentTimestamp();
        row.set(c.recorded_at, Some(pg_sys::Datum::from(recorded_at)));
        if row.nulls[c.occurred_at] {
            row.set(c.occurred_at, Some(pg_sys::Datum::from(recorded_at)));
        }
        let role = current_role_name();
        if row.nulls[c.actor] {
            row.set(c.actor, default_actor(&role).as_str().into_datum());
        }
        row.set(c.db_role, role.as_str().into_datum());
        row.set(
            c.txid,
            Some(pg_sys::Datum::from(
                pg_sys::GetTopFullTransactionId().value as i64,
            )),
        );
        if row.nulls[c.severity] {
            row.set(c.severity, "info".into_datum());
        }
        if row.nulls[c.details] {
            row.set(
                c.details,
                JsonB(serde_json::Value::Object(Default::default())).into_datum(),
            );
        }
        row.set(c.seq, Some(pg_sys::Datum::from(0i64)));
        protect_row(&c, &mut row);

        let mut fields = event_fields(&c, &row.values, &row.nulls);
        check_event(&fields);
        let limit = gucs::MAX_DETAILS_BYTES.get() as usize;
        if fields.details.len() > limit {
            raise(
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "event details are {} bytes, more than custos.max_details_bytes ({limit})",
                    fields.details.len()
                ),
                Some("store large documents elsewhere and reference them from details"),
            );
        }

        let tenant = fields.tenant_id;
        let prev = match head::cached(&tenant) {
            Some(h) => h,
            None => {
                head::lock_tenant(&tenant);
                head::read_committed_head(rel, c.head_columns(), &tenant).unwrap_or(Head {
                    seq: 0,
                    hash: genesis_hash(&tenant),
                })
            }
        };
        fields.seq = prev.seq + 1;
        let hash = event_hash(&prev.hash, &fields);
        head::advance(
            &tenant,
            Head {
                seq: fields.seq,
                hash,
            },
        );

        row.set(c.seq, Some(pg_sys::Datum::from(fields.seq)));
        row.set(c.prev_hash, (&prev.hash[..HASH_LEN]).into_datum());
        row.set(c.hash, (&hash[..]).into_datum());
        row.form(tupdesc, "event")
    }
}

/// The canonical text of an IP address (as `inet` prints it), refusing what is not one.
unsafe fn canonical_inet(text: &[u8]) -> String {
    let Ok(input) = std::ffi::CString::new(text) else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            "ip_address contains a NUL byte",
            None,
        )
    };
    unsafe {
        let inet = pgrx::direct_function_call::<pg_sys::Datum>(
            pg_sys::inet_in,
            &[input.as_c_str().into_datum()],
        );
        pgrx::direct_function_call::<&CStr>(pg_sys::inet_out, &[inet])
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Normalises ip_address and, when the tenant's policy says so, seals ip_address, user_agent and
/// the configured details keys, before the row is hashed.
unsafe fn protect_row(c: &Columns, row: &mut Row) {
    unsafe {
        let ip =
            (!row.nulls[c.ip_address]).then(|| canonical_inet(bytes_of(row.values[c.ip_address])));
        let tenant = *row.values[c.tenant_id].cast_mut_ptr::<[u8; 16]>();
        let policy = protect::policy(&tenant);
        if !policy.encrypt {
            if let Some(ip) = ip {
                row.set(c.ip_address, ip.as_str().into_datum());
            }
            return;
        }
        let id = *row.values[c.id].cast_mut_ptr::<[u8; 16]>();
        let actor = String::from_utf8_lossy(bytes_of(row.values[c.actor])).into_owned();
        let user_agent = (!row.nulls[c.user_agent])
            .then(|| String::from_utf8_lossy(bytes_of(row.values[c.user_agent])).into_owned());
        let details = row.values[c.details];
        let sealed = protect::seal_event(
            &policy,
            &tenant,
            &id,
            &actor,
            ip.as_deref(),
            user_agent.as_deref(),
            || {
                JsonB::from_datum(details, false)
                    .map(|j| j.0)
                    .unwrap_or_default()
            },
        );
        if let Some(ip) = sealed.ip_address {
            row.set(c.ip_address, ip.as_str().into_datum());
        }
        if let Some(ua) = sealed.user_agent {
            row.set(c.user_agent, ua.as_str().into_datum());
        }
        if let Some(details) = sealed.details {
            row.set(c.details, JsonB(details).into_datum());
        }
    }
}
