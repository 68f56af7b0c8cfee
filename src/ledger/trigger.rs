//! The BEFORE INSERT trigger of `custos.events`: fills in what the client may not set (seq, id,
//! times, actor, role, transaction, hashes) and links the row into its tenant's chain. It deforms
//! the new row once and forms the result once; pgrx's per-field setters would copy the row for
//! every field.

use super::chain::{event_hash, genesis_hash, EventFields, HASH_LEN};
use super::event_id::event_id;
use super::head::{self, Head, Succession};
use super::row::{bytes_of, event_fields_with_details, Columns};
use crate::crypto::envelope;
use crate::error::raise;
use crate::gucs;
use crate::pg::tuple::Row;
use crate::protection as protect;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use std::cell::OnceCell;
use std::ffi::CStr;

/// The actor of an event nobody named: `custos.set_actor`, else the JWT `sub`, else the role.
/// `role` is the caller's role name, already looked up for `db_role`.
/// Like the tenant, the actor counts only when set for the current transaction (`set_actor`).
pub fn default_actor(role: &str) -> String {
    if let Some(a) = gucs::ACTOR.get() {
        if !a.as_bytes().is_empty() && crate::tenancy::set_for_transaction(c"custos.actor") {
            return a.to_string_lossy().into_owned();
        }
    }
    crate::tenancy::current_subject().unwrap_or_else(|| role.to_owned())
}

/// Who is writing: the role, and the actor for events that name none (looked up only when one
/// needs it). A writer of many events looks them up once, and makes their datums once, in the
/// memory context current at first use: a `Caller` must not outlive that context.
pub struct Caller {
    role: String,
    actor: OnceCell<String>,
    role_datum: OnceCell<Option<pg_sys::Datum>>,
    actor_datum: OnceCell<Option<pg_sys::Datum>>,
    info_datum: OnceCell<Option<pg_sys::Datum>>,
    /// `recorded_at` of the events written in this call (a batch shares one).
    recorded_at: OnceCell<pg_sys::TimestampTz>,
    txid: OnceCell<i64>,
    subtransaction: OnceCell<pg_sys::SubTransactionId>,
    /// Where the datums above are made: the context current when the caller was, which outlives
    /// the per-row memory its events may be made in.
    memory: pg_sys::MemoryContext,
}

impl Caller {
    /// The writer of the events of one call: a row of the trigger, or a batch of appends (no
    /// subtransaction begins or ends within either).
    pub fn current() -> Caller {
        Caller {
            role: current_role_name(),
            actor: OnceCell::new(),
            role_datum: OnceCell::new(),
            actor_datum: OnceCell::new(),
            info_datum: OnceCell::new(),
            recorded_at: OnceCell::new(),
            txid: OnceCell::new(),
            subtransaction: OnceCell::new(),
            // SAFETY: backend thread.
            memory: unsafe { pg_sys::CurrentMemoryContext },
        }
    }

    fn default_actor(&self) -> &str {
        self.actor.get_or_init(|| default_actor(&self.role))
    }

    /// A text datum made once in the caller's memory.
    fn kept_text<'a>(
        &'a self,
        cell: &OnceCell<Option<pg_sys::Datum>>,
        text: impl FnOnce() -> &'a str,
    ) -> Option<pg_sys::Datum> {
        *cell.get_or_init(|| {
            let text = text();
            // SAFETY: backend thread; the context is the one current when the caller was made,
            // still alive while its events are written.
            unsafe {
                let current = pg_sys::MemoryContextSwitchTo(self.memory);
                let datum = text.into_datum();
                pg_sys::MemoryContextSwitchTo(current);
                datum
            }
        })
    }
}

/// The actor the current transaction's events record when they name none.
#[pg_extern(stable, parallel_safe)]
fn current_actor() -> String {
    default_actor(&current_role_name())
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
        Some("leave it out of the INSERT: custos fills seq, recorded_at, db_role, txid, prev_hash and hash (a superuser restoring a dump uses pg_restore, or sets custos.restore_mode)"),
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
    if fields.user_agent.is_some_and(envelope::looks_sealed) {
        looks_sealed_failed("user_agent");
    }
    if fields.entity_id.is_some_and(envelope::looks_sealed) {
        looks_sealed_failed("entity_id");
    }
    // Readers name the subject behind a pseudonym (and call the event erased once it is gone), so
    // a plaintext one would put another subject's name, or an erasure, on this event.
    if fields
        .actor
        .starts_with(protect::PSEUDONYM_PREFIX.as_bytes())
        && std::str::from_utf8(fields.actor)
            .ok()
            .and_then(protect::parse_pseudonym)
            .is_some()
    {
        check_failed(
            "custos.events.actor cannot be a pseudonym (subject:<reference>)".into(),
            "give the actor's name; custos writes pseudonyms itself on encrypted tenants",
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
}

/// `details` must be a JSON object (checked on the stored jsonb, without printing it).
fn check_details(details: crate::pg::jsonb::Doc) {
    match details.find_top_level_string(envelope::looks_sealed) {
        Err(_) => check_failed(
            "custos.events.details must be a JSON object".into(),
            "wrap values in an object: {\"value\": ...}",
        ),
        Ok(Some(key)) => looks_sealed_failed(&format!("details.{}", String::from_utf8_lossy(key))),
        Ok(None) => {}
    }
}

/// Readers open every value in the sealed form (whatever the tenant's settings are now, or were
/// then), and refuse one that does not open as tampered: a plaintext in that form would make the
/// event, and every read that includes it, fail.
fn looks_sealed_failed(field: &str) -> ! {
    check_failed(
        format!("custos.events.{field} cannot start with \"enc2.\" or \"enc3.\""),
        "those prefixes mark values sealed by custos; store the value with another prefix",
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
        let mut row = Row::deform(tuple, tupdesc);
        let mut made = Made::default();
        chain_event(
            rel,
            &Columns::of(rel),
            &Caller::current(),
            &mut row,
            None,
            &mut made,
        );
        row.form(tupdesc, "event")
    }
}

/// The values [`chain_event`] assigns that are not stored in the row's datums themselves: the
/// row points into this, so it must live until the row is formed. Kept by the caller and reused
/// from event to event instead of a palloc per value.
#[derive(Default)]
pub struct Made {
    id: [u8; 16],
    prev_hash: HashDatum,
    hash: HashDatum,
}

/// A bytea datum of one hash: a 4-byte varlena header, then the hash.
#[repr(C, align(4))]
struct HashDatum([u8; pg_sys::VARHDRSZ + HASH_LEN]);

impl Default for HashDatum {
    fn default() -> Self {
        HashDatum([0; pg_sys::VARHDRSZ + HASH_LEN])
    }
}

impl HashDatum {
    fn set(&mut self, hash: &[u8; HASH_LEN]) -> pg_sys::Datum {
        self.0[..pg_sys::VARHDRSZ].copy_from_slice(&crate::pg::jsonb::varlena_header_4b(
            pg_sys::VARHDRSZ + HASH_LEN,
        ));
        self.0[pg_sys::VARHDRSZ..].copy_from_slice(hash);
        pg_sys::Datum::from(self.0.as_mut_ptr())
    }
}

/// Completes a new row of `custos.events` in place, as the client gave it: checks it, fills in
/// what custos assigns, seals what the tenant's policy seals, and links it into its tenant's
/// chain. The BEFORE INSERT trigger and capture's direct writer ([`super::append`]) both use it.
///
/// # Safety
/// `rel` must be the open `custos.events` and `c` its columns; `row` must hold valid datums for
/// them. `printed_details`, when given, must be exactly what jsonb prints for the details datum.
/// The datums made here point into `made` or are allocated in the current memory context.
pub unsafe fn chain_event(
    rel: pg_sys::Relation,
    c: &Columns,
    caller: &Caller,
    row: &mut Row,
    printed_details: Option<&[u8]>,
    made: &mut Made,
) {
    unsafe {
        let assigned = [
            (c.seq, "seq"),
            (c.id, "id"),
            (c.recorded_at, "recorded_at"),
            (c.db_role, "db_role"),
            (c.txid, "txid"),
            (c.prev_hash, "prev_hash"),
            (c.hash, "hash"),
        ];
        if let Some(&(_, name)) = assigned.iter().find(|(i, _)| !row.nulls[*i]) {
            // A restored or replicated row keeps what it carries; verification judges it.
            if assigned.iter().all(|(i, _)| !row.nulls[*i]) && crate::tenancy::restore_context() {
                keep_restored(rel, c, row);
                return;
            }
            assigned_by_custos(name);
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
        let recorded_at = *caller
            .recorded_at
            .get_or_init(|| pg_sys::GetCurrentTimestamp());
        row.set(c.recorded_at, Some(pg_sys::Datum::from(recorded_at)));
        if row.nulls[c.occurred_at] {
            row.set(c.occurred_at, Some(pg_sys::Datum::from(recorded_at)));
        }
        if row.nulls[c.actor] {
            let actor = caller.kept_text(&caller.actor_datum, || caller.default_actor());
            row.set(c.actor, actor);
        }
        let role = caller.kept_text(&caller.role_datum, || &caller.role);
        row.set(c.db_role, role);
        let txid = *caller
            .txid
            .get_or_init(|| pg_sys::GetTopFullTransactionId().value as i64);
        row.set(c.txid, Some(pg_sys::Datum::from(txid)));
        if row.nulls[c.severity] {
            row.set(c.severity, caller.kept_text(&caller.info_datum, || "info"));
        }
        if row.nulls[c.details] {
            row.set(
                c.details,
                JsonB(serde_json::Value::Object(Default::default())).into_datum(),
            );
        }
        // Checked as the client gave them, before sealing makes values longer (the details size
        // limit applies to what is stored, below); seq and id are placeholders until the chain's
        // head is known.
        row.set(c.seq, Some(pg_sys::Datum::from(0i64)));
        let mut placeholder_id = [0u8; 16];
        row.set(c.id, Some(pg_sys::Datum::from(placeholder_id.as_mut_ptr())));
        normalise_ip(c, row);
        let given = event_fields_with_details(c, &row.values, &row.nulls, b"");
        check_event(&given);
        check_details(crate::pg::jsonb::Doc::of(row.values[c.details]));

        let tenant = *row.values[c.tenant_id].cast_mut_ptr::<[u8; 16]>();
        let relid = (*rel).rd_id;
        let prev = match head::cached(relid, &tenant) {
            Some(h) => h,
            None => {
                head::lock_tenant(&tenant);
                head::read_head(
                    rel,
                    c.head_columns(),
                    &tenant,
                    Succession::AfterCommitRecord,
                )
                .unwrap_or(Head {
                    seq: 0,
                    hash: genesis_hash(&tenant),
                })
            }
        };
        let seq = prev.seq + 1;
        made.id = event_id(seq, crate::crypto::keys::random_bytes::<16>());
        row.set(c.seq, Some(pg_sys::Datum::from(seq)));
        row.set(c.id, Some(pg_sys::Datum::from(made.id.as_mut_ptr())));
        // Sealing binds each value to the event id, so it comes after the id is known.
        let given_details = row.values[c.details];
        let sealed = seal_row(c, row);
        // The hash covers details as jsonb prints them, as stored (sealed values included):
        // printed here once, unless the writer already has that text and sealing changed nothing.
        let details_text = match printed_details {
            Some(text) if row.values[c.details] == given_details => text,
            _ => crate::pg::jsonb::Doc::of(row.values[c.details]).text(),
        };
        let limit = gucs::MAX_DETAILS_BYTES.get() as usize;
        if details_text.len() > limit {
            raise(
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "event details are {} bytes, more than custos.max_details_bytes ({limit})",
                    details_text.len()
                ),
                Some("store large documents elsewhere and reference them from details"),
            );
        }
        // Read back from the row only if sealing changed it; else the fields checked above, with
        // what was assigned since.
        let fields = if sealed {
            event_fields_with_details(c, &row.values, &row.nulls, details_text)
        } else {
            EventFields {
                seq,
                id: made.id,
                details: details_text,
                ..given
            }
        };
        let hash = event_hash(&prev.hash, &fields);
        let subtransaction = *caller
            .subtransaction
            .get_or_init(|| pg_sys::GetCurrentSubTransactionId());
        head::advance(
            relid,
            subtransaction,
            &tenant,
            Head {
                seq: fields.seq,
                hash,
            },
        );

        row.set(c.prev_hash, Some(made.prev_hash.set(&prev.hash)));
        row.set(c.hash, Some(made.hash.set(&hash)));
    }
}

/// Takes a restored row as it is, under the tenant's chain lock (so that no writer chains beside
/// it); this transaction's cached head of the tenant no longer holds.
unsafe fn keep_restored(rel: pg_sys::Relation, c: &Columns, row: &Row) {
    unsafe {
        if row.nulls[c.tenant_id] {
            required("tenant_id", "a restored event carries its tenant");
        }
        let tenant = *row.values[c.tenant_id].cast_mut_ptr::<[u8; 16]>();
        head::lock_tenant(&tenant);
        head::forget((*rel).rd_id, &tenant);
    }
}

/// Whether `text` is an IPv4 address exactly as `inet` prints it (four decimal octets, no
/// leading zeros, no mask), so that parsing and printing it through `inet` would change nothing.
pub fn is_canonical_ipv4(text: &[u8]) -> bool {
    let mut octets = 0;
    for part in text.split(|&b| b == b'.') {
        octets += 1;
        let plain_digits = !part.is_empty()
            && part.len() <= 3
            && part.iter().all(u8::is_ascii_digit)
            && (part.len() == 1 || part[0] != b'0');
        if !plain_digits || part.iter().fold(0u32, |v, &d| v * 10 + u32::from(d - b'0')) > 255 {
            return false;
        }
    }
    octets == 4
}

/// The canonical text of an IP address (as `inet` prints it), refusing what is not one.
unsafe fn canonical_inet(text: &[u8]) -> String {
    if is_canonical_ipv4(text) {
        return String::from_utf8_lossy(text).into_owned();
    }
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

/// Stores ip_address as `inet` prints it, refusing what is not an IP address.
unsafe fn normalise_ip(c: &Columns, row: &mut Row) {
    unsafe {
        if !row.nulls[c.ip_address] {
            let ip = canonical_inet(bytes_of(row.values[c.ip_address]));
            row.set(c.ip_address, ip.as_str().into_datum());
        }
    }
}

/// When the tenant's policy says so, replaces the actor by the subject's pseudonym and seals
/// ip_address, user_agent and the configured details keys with the subject's key, before the row
/// is hashed. Whether the tenant seals events (then the row may have changed).
unsafe fn seal_row(c: &Columns, row: &mut Row) -> bool {
    unsafe {
        let tenant = *row.values[c.tenant_id].cast_mut_ptr::<[u8; 16]>();
        let policy = protect::policy(&tenant);
        if !policy.encrypt {
            return false;
        }
        // Borrowed from the row's datums (stored text is valid UTF-8, so nothing is copied).
        let text =
            |i: usize| (!row.nulls[i]).then(|| String::from_utf8_lossy(bytes_of(row.values[i])));
        let (ip, user_agent) = (text(c.ip_address), text(c.user_agent));
        let entity_id = text(c.entity_id);
        let entity_type = String::from_utf8_lossy(bytes_of(row.values[c.entity_type]));
        let id = *row.values[c.id].cast_mut_ptr::<[u8; 16]>();
        let actor = String::from_utf8_lossy(bytes_of(row.values[c.actor]));
        let details = crate::pg::jsonb::Doc::of(row.values[c.details]).object();
        let sealed = protect::seal_event(
            &policy,
            &tenant,
            &id,
            &protect::Plain {
                actor: &actor,
                ip_address: ip.as_deref(),
                user_agent: user_agent.as_deref(),
                entity_type: &entity_type,
                entity_id: entity_id.as_deref(),
            },
            |key| details.as_ref().and_then(|d| d.field_text(key)),
            || {
                details
                    .as_ref()
                    .map(|d| d.container_fields())
                    .unwrap_or_default()
            },
        );
        row.set(c.actor, sealed.actor.as_str().into_datum());
        if let Some(ip) = sealed.ip_address {
            row.set(c.ip_address, ip.as_str().into_datum());
        }
        if let Some(ua) = sealed.user_agent {
            row.set(c.user_agent, ua.as_str().into_datum());
        }
        if let Some(entity) = sealed.entity_id {
            row.set(c.entity_id, entity.as_str().into_datum());
        }
        if let Some(details) = details.filter(|_| !sealed.details.is_empty()) {
            let replace: Vec<_> = sealed
                .details
                .iter()
                .map(|(key, value)| (key.as_str(), crate::pg::jsonb::NewValue::Text(value)))
                .collect();
            row.set(c.details, Some(details.with_values(&replace)));
        }
        true
    }
}

#[cfg(test)]
mod unit {
    use super::is_canonical_ipv4;

    #[test]
    fn only_canonical_dotted_quads_skip_inet() {
        for ok in ["10.1.2.3", "0.0.0.0", "255.255.255.255", "192.168.100.10"] {
            assert!(is_canonical_ipv4(ok.as_bytes()), "{ok}");
        }
        for other in [
            "",
            "10.1.2",
            "10.1.2.3.4",
            "10.01.2.3",
            "256.1.2.3",
            "10.1.2.3/32",
            "10.1.2.3/24",
            "1.2.3.",
            ".1.2.3",
            "::1",
            "::ffff:1.2.3.4",
            "1.2.3.4 ",
            "1.2.3.1000",
            "a.b.c.d",
        ] {
            assert!(!is_canonical_ipv4(other.as_bytes()), "{other}");
        }
    }
}
