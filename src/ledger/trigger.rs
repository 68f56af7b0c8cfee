//! The BEFORE INSERT trigger of `custos.events`: fills in what the client may not set (seq, id,
//! times, actor, role, transaction, hashes) and links the row into its tenant's chain. It deforms
//! the new row once and forms the result once; pgrx's per-field setters would copy the row for
//! every field.

use super::chain::{canonical_json_string, event_hash, genesis_hash, EventFields, HASH_LEN};
use super::head::{self, Head, HeadColumns};
use crate::error::raise;
use crate::gucs;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode, PgTupleDesc};
use std::ffi::CStr;

/// Column positions (0-based) in `custos.events`, found by name so that column order is free.
pub struct Columns {
    pub tenant_id: usize,
    pub seq: usize,
    pub id: usize,
    pub occurred_at: usize,
    pub recorded_at: usize,
    pub actor: usize,
    pub db_role: usize,
    pub txid: usize,
    pub action: usize,
    pub entity_type: usize,
    pub entity_id: usize,
    pub severity: usize,
    pub details: usize,
    pub ip_address: usize,
    pub user_agent: usize,
    pub prev_hash: usize,
    pub hash: usize,
}

impl Columns {
    /// # Safety
    /// `tupdesc` must be a valid tuple descriptor.
    pub unsafe fn find(tupdesc: pg_sys::TupleDesc) -> Columns {
        let desc = unsafe { PgTupleDesc::from_pg_unchecked(tupdesc) };
        let pos = |name: &str| -> usize {
            desc.iter()
                .position(|a| !a.is_dropped() && a.name() == name)
                .unwrap_or_else(|| {
                    raise(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                        format!("ledger table has no column \"{name}\""),
                        Some("the custos ledger trigger belongs on custos.events only"),
                    )
                })
        };
        Columns {
            tenant_id: pos("tenant_id"),
            seq: pos("seq"),
            id: pos("id"),
            occurred_at: pos("occurred_at"),
            recorded_at: pos("recorded_at"),
            actor: pos("actor"),
            db_role: pos("db_role"),
            txid: pos("txid"),
            action: pos("action"),
            entity_type: pos("entity_type"),
            entity_id: pos("entity_id"),
            severity: pos("severity"),
            details: pos("details"),
            ip_address: pos("ip_address"),
            user_agent: pos("user_agent"),
            prev_hash: pos("prev_hash"),
            hash: pos("hash"),
        }
    }

    pub fn head_columns(&self) -> HeadColumns {
        HeadColumns {
            tenant_id: self.tenant_id as i16 + 1,
            seq: self.seq as i16 + 1,
            hash: self.hash as i16 + 1,
        }
    }
}

/// The actor of an event nobody named: `custos.set_actor`, else the JWT `sub`, else the role.
pub fn default_actor() -> String {
    if let Some(a) = gucs::ACTOR.get() {
        if !a.as_bytes().is_empty() {
            return a.to_string_lossy().into_owned();
        }
    }
    crate::tenancy::current_subject().unwrap_or_else(current_role_name)
}

/// The role that called in: after SET ROLE, but not the owner of a SECURITY DEFINER function.
pub fn current_role_name() -> String {
    // SAFETY: backend thread; GetUserNameFromId with noerr = false raises if the role is gone.
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), false);
        CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

fn random_uuid_v4() -> [u8; 16] {
    let mut b = [0u8; 16];
    // SAFETY: fills a 16-byte buffer from the server's strong random source.
    if !unsafe { pg_sys::pg_strong_random(b.as_mut_ptr().cast(), b.len()) } {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "could not generate a random event id",
            None,
        );
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

unsafe fn text_of<'a>(d: pg_sys::Datum) -> &'a str {
    unsafe { <&str>::from_datum(d, false).unwrap_or_default() }
}

fn assigned_by_custos(column: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_GENERATED_ALWAYS,
        format!("column \"{column}\" of custos.events is assigned by custos"),
        Some("leave it out of the INSERT: custos fills seq, recorded_at, db_role, txid, prev_hash and hash"),
    )
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
        let c = Columns::find(tupdesc);
        let natts = (*tupdesc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![true; natts];
        pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());

        for (i, name) in [
            (c.seq, "seq"),
            (c.recorded_at, "recorded_at"),
            (c.db_role, "db_role"),
            (c.txid, "txid"),
            (c.prev_hash, "prev_hash"),
            (c.hash, "hash"),
        ] {
            if !nulls[i] {
                assigned_by_custos(name);
            }
        }
        if nulls[c.tenant_id] {
            required(
                "tenant_id",
                "call custos.set_tenant(uuid) first, or give tenant_id",
            );
        }
        if nulls[c.action] {
            required(
                "action",
                "every event needs an action, such as 'login' or 'invoice.update'",
            );
        }
        if nulls[c.entity_type] {
            required(
                "entity_type",
                "every event needs an entity_type, such as 'user' or 'invoice'",
            );
        }

        let tenant: [u8; 16] = *values[c.tenant_id].cast_mut_ptr::<[u8; 16]>();
        let set = |values: &mut Vec<pg_sys::Datum>,
                   nulls: &mut Vec<bool>,
                   i: usize,
                   d: Option<pg_sys::Datum>| {
            nulls[i] = d.is_none();
            values[i] = d.unwrap_or(pg_sys::Datum::from(0usize));
        };

        let id: [u8; 16] = if nulls[c.id] {
            let id = random_uuid_v4();
            set(
                &mut values,
                &mut nulls,
                c.id,
                pgrx::Uuid::from_bytes(id).into_datum(),
            );
            id
        } else {
            *values[c.id].cast_mut_ptr::<[u8; 16]>()
        };
        let recorded_at = pg_sys::GetCurrentTimestamp();
        set(
            &mut values,
            &mut nulls,
            c.recorded_at,
            Some(pg_sys::Datum::from(recorded_at)),
        );
        let occurred_at = if nulls[c.occurred_at] {
            set(
                &mut values,
                &mut nulls,
                c.occurred_at,
                Some(pg_sys::Datum::from(recorded_at)),
            );
            recorded_at
        } else {
            values[c.occurred_at].value() as i64
        };
        let actor_owned;
        let actor: &str = if nulls[c.actor] {
            actor_owned = default_actor();
            set(
                &mut values,
                &mut nulls,
                c.actor,
                actor_owned.as_str().into_datum(),
            );
            &actor_owned
        } else {
            text_of(values[c.actor])
        };
        let db_role = current_role_name();
        set(
            &mut values,
            &mut nulls,
            c.db_role,
            db_role.as_str().into_datum(),
        );
        let txid = pg_sys::GetTopFullTransactionId().value as i64;
        set(
            &mut values,
            &mut nulls,
            c.txid,
            Some(pg_sys::Datum::from(txid)),
        );
        if nulls[c.severity] {
            set(&mut values, &mut nulls, c.severity, "info".into_datum());
        }
        let details_value = if nulls[c.details] {
            let empty = serde_json::Value::Object(Default::default());
            set(
                &mut values,
                &mut nulls,
                c.details,
                JsonB(empty.clone()).into_datum(),
            );
            empty
        } else {
            JsonB::from_datum(values[c.details], false)
                .map(|j| j.0)
                .unwrap_or_default()
        };
        let details = canonical_json_string(&details_value);
        let limit = gucs::MAX_DETAILS_BYTES.get() as usize;
        if details.len() > limit {
            raise(
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "event details are {} bytes, more than custos.max_details_bytes ({limit})",
                    details.len()
                ),
                Some("store large documents elsewhere and reference them from details"),
            );
        }
        let ip_text = (!nulls[c.ip_address])
            .then(|| pgrx::Inet::from_datum(values[c.ip_address], false).map(|i| i.0))
            .flatten();

        let mut fields = EventFields {
            tenant_id: tenant,
            seq: 0,
            id,
            occurred_at,
            recorded_at,
            actor,
            db_role: &db_role,
            txid,
            action: text_of(values[c.action]),
            entity_type: text_of(values[c.entity_type]),
            entity_id: (!nulls[c.entity_id]).then(|| text_of(values[c.entity_id])),
            severity: text_of(values[c.severity]),
            details: &details,
            ip_address: ip_text.as_deref().map(str::as_bytes),
            user_agent: (!nulls[c.user_agent]).then(|| text_of(values[c.user_agent]).as_bytes()),
        };

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

        set(
            &mut values,
            &mut nulls,
            c.seq,
            Some(pg_sys::Datum::from(fields.seq)),
        );
        set(
            &mut values,
            &mut nulls,
            c.prev_hash,
            (&prev.hash[..HASH_LEN]).into_datum(),
        );
        set(&mut values, &mut nulls, c.hash, (&hash[..]).into_datum());

        let desc = PgTupleDesc::from_pg_unchecked(tupdesc);
        PgHeapTuple::from_datums(
            desc,
            values
                .iter()
                .zip(nulls.iter())
                .map(|(v, n)| (!n).then_some(*v)),
        )
        .unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("could not form the event row: {e}"),
                None,
            )
        })
    }
}
