//! Key management: the master key (superuser-only setting or key file), each tenant's versioned
//! data keys wrapped by it (`custos.data_keys`), and each subject's keys wrapped by a data key
//! (`custos.subject_keys`). Destroying a subject's key is how a person is forgotten.
//!
//! Unwrapped data and subject keys stay in backend memory until custos' caches are invalidated
//! (`custos_internal.invalidate_caches`, which `forget_subject` and `rotate_data_key` call): a destroyed
//! key is gone from every other session before its next statement touches a table. Keys are read
//! under a snapshot taken at the read, not the transaction's ([`fresh_rows`]), and cached only if
//! no invalidation arrived meanwhile: a REPEATABLE READ transaction that began before an erasure
//! cannot put the destroyed key back. The master key is not kept; it is read from its setting
//! whenever a data key must be unwrapped.

use super::envelope::{self, CryptoError, FieldSealer, KeyRef, SecretKey, KEY_LEN, NONCE_LEN};
use crate::error::raise;
use crate::gucs;
use crate::pg::spi::{column, fresh_rows};
use crate::tenancy::as_superuser;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

type Tenant = [u8; 16];
type KeyId = [u8; 16];

#[derive(Default)]
struct Cache {
    generation: u64,
    data_keys: HashMap<(Tenant, i32), SecretKey>,
    subject_keys: HashMap<(Tenant, KeyRef), Option<SecretKey>>,
    writing_keys: HashMap<Tenant, HashMap<String, Rc<SubjectWriter>>>,
    subject_names: HashMap<(Tenant, KeyId), Option<String>>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// The cache, emptied when custos' caches were invalidated since it was filled.
fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> R {
    let generation = crate::tenancy::cache_generation();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.generation != generation {
            *c = Cache {
                generation,
                ..Cache::default()
            };
        }
        f(&mut c)
    })
}

/// Caches what `load` read unless custos' caches were invalidated while it ran (the rows it read
/// may then predate the change).
fn load_then_cache<T>(load: impl FnOnce() -> T, store: impl FnOnce(&mut Cache, &T)) -> T {
    let before = crate::tenancy::cache_generation();
    let value = load();
    with_cache(|c| {
        if c.generation == before {
            store(c, &value)
        }
    });
    value
}

/// Bytes from the server's strong random source, drawn in blocks: each `pg_strong_random` call
/// costs about as much as sealing a field, and the ledger needs fresh bytes for every event id
/// and nonce. The block belongs to one process (a forked child starts its own) and is wiped as
/// it is handed out.
struct RandomPool {
    pid: i32,
    block: [u8; RANDOM_BLOCK],
    used: usize,
}

const RANDOM_BLOCK: usize = 4096;

thread_local! {
    static RANDOM: RefCell<RandomPool> = const {
        RefCell::new(RandomPool { pid: 0, block: [0; RANDOM_BLOCK], used: RANDOM_BLOCK })
    };
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    const { assert!(N <= RANDOM_BLOCK) };
    let pid = crate::pg::backend::process_id();
    RANDOM.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.pid != pid || pool.used + N > RANDOM_BLOCK {
            if !crate::pg::backend::strong_random(&mut pool.block) {
                raise(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    "could not generate random bytes",
                    None,
                );
            }
            pool.pid = pid;
            pool.used = 0;
        }
        let start = pool.used;
        let mut out = [0u8; N];
        out.copy_from_slice(&pool.block[start..start + N]);
        pool.block[start..start + N].fill(0);
        pool.used += N;
        out
    })
}

/// A random (version 4) UUID.
pub fn random_uuid_v4() -> [u8; 16] {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// A master key with its id, which `custos.data_keys` records for every data key it wraps.
pub struct MasterKey {
    pub key: SecretKey,
    pub id: String,
}

fn configured_master(
    inline: &pgrx::GucSetting<Option<std::ffi::CString>>,
    file: &pgrx::GucSetting<Option<std::ffi::CString>>,
    what: &str,
) -> Option<MasterKey> {
    let text = gucs::secret(inline, file, what)?;
    let key = custos_core::ledger::checkpoint::decode_32(&text, &format!("the {what}"))
        .unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("custos {what}: {e}"),
                None,
            )
        });
    Some(MasterKey {
        id: envelope::master_key_id(&key),
        key,
    })
}

/// The configured master key (custos.master_key or its file).
pub fn master_key() -> MasterKey {
    configured_master(&gucs::MASTER_KEY, &gucs::MASTER_KEY_FILE, "master key").unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "no master key is configured for ledger encryption",
            Some("a superuser points custos.master_key_file at a file holding the key (32 bytes, hex or base64), or sets custos.master_key in the session"),
        )
    })
}

/// The master key being replaced, during a rotation.
fn previous_master_key() -> Option<MasterKey> {
    configured_master(
        &gucs::MASTER_KEY_PREVIOUS,
        &gucs::MASTER_KEY_PREVIOUS_FILE,
        "previous master key",
    )
}

/// The configured key that wrapped a data key recorded as wrapped by master key `wrapped_by`:
/// the current one, or during a rotation the previous one.
fn master_for(tenant: &Tenant, version: i32, wrapped_by: &str) -> MasterKey {
    let current = master_key();
    if current.id == wrapped_by {
        return current;
    }
    match previous_master_key() {
        Some(previous) if previous.id == wrapped_by => previous,
        _ => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "the configured master key {} does not open data key version {version} of tenant {} (wrapped by master key {wrapped_by})",
                current.id,
                uuid::Uuid::from_bytes(*tenant)
            ),
            Some("custos.master_key must hold the key the data keys were made with; while rotating it, set the old one as custos.master_key_previous and run custos.rewrap_data_keys()"),
        ),
    }
}

fn uuid_arg(b: &[u8; 16]) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*b)
}

/// A uuid argument for [`fresh_rows`]: a datum pointing at the 16 bytes, valid while `b` is.
fn uuid_datum(b: &[u8; 16]) -> (pg_sys::Oid, pg_sys::Datum) {
    (pg_sys::UUIDOID, pg_sys::Datum::from(b.as_ptr()))
}

fn key_failed(e: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("key lookup failed: {e}"),
        None,
    )
}

fn corrupt_data_key(tenant: &Tenant, version: i32, master_id: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        format!(
            "data key version {version} of tenant {} does not open with master key {master_id}, which it records as its own",
            uuid::Uuid::from_bytes(*tenant)
        ),
        Some("the wrapped key in custos.data_keys was changed"),
    )
}

/// Data key `version` of a tenant, unwrapped.
pub fn data_key(tenant: &Tenant, version: i32) -> SecretKey {
    if let Some(k) = with_cache(|c| c.data_keys.get(&(*tenant, version)).copied()) {
        return k;
    }
    let load = || {
        let found = fresh_rows(
            c"SELECT wrapped, master_key_id FROM custos.data_keys WHERE tenant_id = $1 AND version = $2",
            &[uuid_datum(tenant), (pg_sys::INT4OID, pg_sys::Datum::from(version))],
            |r| (column::<Vec<u8>>(r, 0), column::<String>(r, 1)),
        );
        let Some((Some(wrapped), Some(wrapped_by))) = found.into_iter().next() else {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("tenant has no data key version {version}"),
                None,
            )
        };
        let master = master_for(tenant, version, &wrapped_by);
        envelope::unwrap_data_key(&master.key, tenant, version, &wrapped)
            .unwrap_or_else(|_| corrupt_data_key(tenant, version, &master.id))
    };
    load_then_cache(load, |c, key| {
        c.data_keys.insert((*tenant, version), *key);
    })
}

/// The tenant's newest data key version, made (version 1) on first use.
pub fn current_data_key_version(tenant: &Tenant) -> i32 {
    let latest = || {
        fresh_rows(
            c"SELECT max(version) FROM custos.data_keys WHERE tenant_id = $1",
            &[uuid_datum(tenant)],
            |r| column::<i32>(r, 0),
        )
        .into_iter()
        .next()
        .flatten()
    };
    if let Some(v) = latest() {
        return v;
    }
    new_data_key_version(tenant, 1);
    latest().unwrap_or(1)
}

/// Makes data key `version` of a tenant (no-op if a concurrent session made it first).
pub fn new_data_key_version(tenant: &Tenant, version: i32) {
    let key: SecretKey = random_bytes::<KEY_LEN>();
    let master = master_key();
    let wrapped = envelope::wrap_data_key(
        &master.key,
        tenant,
        version,
        &key,
        &random_bytes::<NONCE_LEN>(),
    );
    as_superuser(|| {
        Spi::run_with_args(
            "INSERT INTO custos.data_keys (tenant_id, version, wrapped, master_key_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[uuid_arg(tenant).into(), version.into(), wrapped.into(), master.id.into()],
        )
    })
    .unwrap_or_else(|e| key_failed(e));
}

/// How new events of a subject are written: the key their values are sealed with, and the
/// subject's pseudonym (`subject_ref`, the same for all its keys), which stands in for the name.
pub struct SubjectWriter {
    pub sealer: FieldSealer,
    pub subject_ref: [u8; 16],
    /// What encrypted events store as the actor: `subject:<subject_ref>`.
    pub pseudonym: String,
}

/// The writer of `subject`'s new sealed values, its key made on first use.
pub fn writing_key(tenant: &Tenant, subject: &str) -> Rc<SubjectWriter> {
    let cached = with_cache(|c| {
        c.writing_keys
            .get(tenant)
            .and_then(|subjects| subjects.get(subject))
            .cloned()
    });
    if let Some(writer) = cached {
        return writer;
    }
    let load = || {
        let live = || -> Option<(KeyId, i32, i32, Vec<u8>, KeyId)> {
            let subject_text = subject
                .into_datum()
                .unwrap_or_else(|| key_failed("subject"));
            fresh_rows(
            c"SELECT id, short_id, data_key_version, wrapped, subject_ref FROM custos.subject_keys
               WHERE tenant_id = $1 AND subject = $2 AND destroyed_at IS NULL AND retired_at IS NULL",
            &[uuid_datum(tenant), (pg_sys::TEXTOID, subject_text)],
            |r| {
                Some((
                    *column::<pgrx::Uuid>(r, 0)?.as_bytes(),
                    column::<i32>(r, 1)?,
                    column::<i32>(r, 2)?,
                    column::<Vec<u8>>(r, 3)?,
                    *column::<pgrx::Uuid>(r, 4)?.as_bytes(),
                ))
            },
        )
        .into_iter()
        .flatten()
        .last()
        };
        let (id, short_id, version, wrapped, subject_ref) = match live() {
            Some(found) => found,
            None => {
                let version = current_data_key_version(tenant);
                let id: KeyId = random_uuid_v4();
                let key: SecretKey = random_bytes::<KEY_LEN>();
                let wrapped = envelope::wrap_subject_key(
                    &data_key(tenant, version),
                    tenant,
                    &id,
                    &key,
                    &random_bytes::<NONCE_LEN>(),
                );
                // The short id is random, so that it tells nothing of other subjects or tenants; one
                // already taken in the tenant (about one in 400,000 draws at 10,000 keys) makes the
                // insert do nothing, and another is drawn. A concurrent session may have made the
                // subject's key first: then whichever stands is used.
                let mut found = None;
                for _ in 0..SHORT_ID_DRAWS {
                    insert_subject_key(
                        tenant,
                        &id,
                        i32::from_be_bytes(random_bytes()),
                        subject,
                        version,
                        &wrapped,
                    );
                    found = live();
                    if found.is_some() {
                        break;
                    }
                }
                found.unwrap_or_else(|| key_failed("no subject key could be stored"))
            }
        };
        let key = envelope::unwrap_subject_key(&data_key(tenant, version), tenant, &id, &wrapped)
            .unwrap_or_else(|_| corrupt_key(&id));
        let writer = Rc::new(SubjectWriter {
            sealer: FieldSealer::new(&key, short_id),
            subject_ref,
            pseudonym: custos_core::crypto::pseudonym::actor_pseudonym(&subject_ref),
        });
        (writer, key, short_id)
    };
    let (writer, _, _) = load_then_cache(load, |c, (writer, key, short_id)| {
        c.writing_keys
            .entry(*tenant)
            .or_default()
            .insert(subject.to_string(), writer.clone());
        c.subject_keys
            .insert((*tenant, KeyRef::Short(*short_id)), Some(*key));
        c.subject_names
            .insert((*tenant, writer.subject_ref), Some(subject.to_string()));
    });
    writer
}

const SHORT_ID_DRAWS: usize = 8;

fn insert_subject_key(
    tenant: &Tenant,
    id: &KeyId,
    short_id: i32,
    subject: &str,
    version: i32,
    wrapped: &[u8],
) {
    // A subject keeps its pseudonym across key rotations.
    as_superuser(|| {
        Spi::run_with_args(
            "INSERT INTO custos.subject_keys (tenant_id, id, short_id, subject, subject_ref, data_key_version, wrapped)
             VALUES ($1, $2, $3, $4, coalesce((SELECT k.subject_ref FROM custos.subject_keys k
                                                WHERE k.tenant_id = $1 AND k.subject = $4 LIMIT 1), $7), $5, $6)
             ON CONFLICT DO NOTHING",
            &[
                uuid_arg(tenant).into(),
                uuid_arg(id).into(),
                short_id.into(),
                subject.into(),
                version.into(),
                wrapped.into(),
                uuid_arg(&random_uuid_v4()).into(),
            ],
        )
    })
    .unwrap_or_else(|e| key_failed(e));
}

/// The pseudonym of a subject the tenant holds keys for; None if it holds none (never had, or
/// forgot them). Makes no key.
pub fn known_pseudonym(tenant: &Tenant, subject: &str) -> Option<String> {
    let subject_text = subject.into_datum()?;
    fresh_rows(
        c"SELECT subject_ref FROM custos.subject_keys WHERE tenant_id = $1 AND subject = $2 LIMIT 1",
        &[uuid_datum(tenant), (pg_sys::TEXTOID, subject_text)],
        |r| column::<pgrx::Uuid>(r, 0),
    )
    .into_iter()
    .flatten()
    .next()
    .map(|r| custos_core::crypto::pseudonym::actor_pseudonym(r.as_bytes()))
}

/// The subject a pseudonym stands for; None once the subject was forgotten (or never existed).
pub fn subject_name(tenant: &Tenant, subject_ref: &[u8; 16]) -> Option<String> {
    if let Some(name) = with_cache(|c| c.subject_names.get(&(*tenant, *subject_ref)).cloned()) {
        return name;
    }
    load_then_cache(
        || {
            fresh_rows(
                c"SELECT subject FROM custos.subject_keys WHERE tenant_id = $1 AND subject_ref = $2 AND subject IS NOT NULL LIMIT 1",
                &[uuid_datum(tenant), uuid_datum(subject_ref)],
                |r| column::<String>(r, 0),
            )
            .into_iter()
            .next()
            .flatten()
        },
        |c, name| {
            c.subject_names
                .insert((*tenant, *subject_ref), name.clone());
        },
    )
}

fn corrupt_key(id: &KeyId) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        format!(
            "subject key {} does not unwrap with its data key",
            uuid::Uuid::from_bytes(*id)
        ),
        None,
    )
}

/// A subject key by id, as this tenant knows it.
#[derive(Clone, Copy)]
pub enum SubjectKey {
    Live(SecretKey),
    /// Destroyed by custos.forget_subject: what it sealed is gone.
    Destroyed,
    /// Not a key of this tenant: the value was copied from elsewhere or made up.
    Unknown,
}

pub fn subject_key(tenant: &Tenant, key_ref: &KeyRef) -> SubjectKey {
    if let Some(k) = with_cache(|c| c.subject_keys.get(&(*tenant, *key_ref)).copied()) {
        return k.map_or(SubjectKey::Destroyed, SubjectKey::Live);
    }
    let load = || {
        let row = match key_ref {
            KeyRef::Id(id) => fresh_rows(
                c"SELECT id, data_key_version, wrapped FROM custos.subject_keys WHERE tenant_id = $1 AND id = $2",
                &[uuid_datum(tenant), uuid_datum(id)],
                |r| (column::<pgrx::Uuid>(r, 0), column::<i32>(r, 1), column::<Vec<u8>>(r, 2)),
            ),
            KeyRef::Short(short) => fresh_rows(
                c"SELECT id, data_key_version, wrapped FROM custos.subject_keys WHERE tenant_id = $1 AND short_id = $2",
                &[uuid_datum(tenant), (pg_sys::INT4OID, pg_sys::Datum::from(*short))],
                |r| (column::<pgrx::Uuid>(r, 0), column::<i32>(r, 1), column::<Vec<u8>>(r, 2)),
            ),
        }
        .into_iter()
        .last();
        match row {
            None => SubjectKey::Unknown,
            Some((Some(id), Some(version), Some(wrapped))) => {
                let id = *id.as_bytes();
                SubjectKey::Live(
                    envelope::unwrap_subject_key(&data_key(tenant, version), tenant, &id, &wrapped)
                        .unwrap_or_else(|_| corrupt_key(&id)),
                )
            }
            Some(_) => SubjectKey::Destroyed,
        }
    };
    load_then_cache(load, |c, key| match key {
        SubjectKey::Live(k) => {
            c.subject_keys.insert((*tenant, *key_ref), Some(*k));
        }
        SubjectKey::Destroyed => {
            c.subject_keys.insert((*tenant, *key_ref), None);
        }
        // Not cached: a key made later under this reference must be found.
        SubjectKey::Unknown => {}
    })
}

/// Whether this database holds any subject key at all (of any tenant).
fn server_has_keys() -> bool {
    !fresh_rows(c"SELECT 1 FROM custos.subject_keys LIMIT 1", &[], |_| ()).is_empty()
}

/// Opens a stored value: Ok(None) when its key was destroyed.
pub fn open_stored(
    tenant: &Tenant,
    event_id: &[u8; 16],
    field: &str,
    stored: &str,
) -> Result<Option<String>, CryptoError> {
    let (kid, sealed) = envelope::parse_sealed(stored)?;
    match subject_key(tenant, &kid) {
        SubjectKey::Destroyed => Ok(None),
        // A server with no subject keys at all lacks them (a subscriber or restore without the
        // key tables); one with keys, but not this one, was handed a value from elsewhere.
        SubjectKey::Unknown if !server_has_keys() => Err(CryptoError::KeyMissing),
        SubjectKey::Unknown => Err(CryptoError::Rejected),
        SubjectKey::Live(key) => {
            envelope::open_field(&key, tenant, event_id, field, &sealed).map(Some)
        }
    }
}

/// Rewraps data keys (of one tenant, or all) that an older master key wrapped under the
/// configured one, opening them with `custos.master_key_previous`. Returns (rewrapped, already
/// under the configured key).
pub fn rewrap_data_keys(tenant: Option<&Tenant>) -> (i64, i64) {
    let current = master_key();
    let rows = as_superuser(|| {
        Spi::connect_mut(|client| {
            client
                .update(
                    "SELECT tenant_id, version, wrapped, master_key_id FROM custos.data_keys
                      WHERE $1::uuid IS NULL OR tenant_id = $1 ORDER BY tenant_id, version FOR UPDATE",
                    None,
                    &[tenant.map(uuid_arg).into()],
                )?
                .map(|r| {
                    Ok((
                        r.get::<pgrx::Uuid>(1)?.map(|u| *u.as_bytes()),
                        r.get::<i32>(2)?,
                        r.get::<Vec<u8>>(3)?,
                        r.get::<String>(4)?,
                    ))
                })
                .collect::<pgrx::spi::Result<Vec<_>>>()
        })
    })
    .unwrap_or_else(|e| key_failed(e));
    let (mut rewrapped, mut current_already) = (0, 0);
    for row in rows {
        let (Some(t), Some(version), Some(wrapped), Some(wrapped_by)) = row else {
            continue;
        };
        if wrapped_by == current.id {
            current_already += 1;
            continue;
        }
        let old = master_for(&t, version, &wrapped_by);
        let key = envelope::unwrap_data_key(&old.key, &t, version, &wrapped)
            .unwrap_or_else(|_| corrupt_data_key(&t, version, &old.id));
        let fresh = envelope::wrap_data_key(
            &current.key,
            &t,
            version,
            &key,
            &random_bytes::<NONCE_LEN>(),
        );
        as_superuser(|| {
            Spi::run_with_args(
                "UPDATE custos.data_keys SET wrapped = $3, master_key_id = $4 WHERE tenant_id = $1 AND version = $2",
                &[uuid_arg(&t).into(), version.into(), fresh.into(), current.id.clone().into()],
            )
        })
        .unwrap_or_else(|e| key_failed(e));
        rewrapped += 1;
    }
    (rewrapped, current_already)
}
