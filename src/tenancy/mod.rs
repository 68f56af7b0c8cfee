//! Tenancy: which tenant a request runs as. Every tenant-isolated table's policy compares its
//! tenant column with `(select custos.current_tenant())`, so everything here fails closed: with no
//! tenant, or an unreadable one, the answer is NULL and policies match no row.

pub use custos_core::tenancy::claims;

use crate::gucs;
pub use claims::{resolve_tenant, subject_of};
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

/// Reads any setting, including placeholders such as `request.jwt.claims`; `None` when unset.
pub(crate) fn read_setting(name: &CStr) -> Option<String> {
    // SAFETY: backend thread; missing_ok = true returns NULL instead of raising, and the returned
    // string is copied before any other GUC call can free it.
    unsafe {
        let raw = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        (!raw.is_null()).then(|| CStr::from_ptr(raw).to_string_lossy().into_owned())
    }
}

/// What a request's claims say, parsed once per distinct claims text: triggers ask for every row.
#[derive(Clone, Default)]
struct ClaimsCache {
    text: String,
    claim_name: String,
    tenant: Option<uuid::Uuid>,
    subject: Option<String>,
}

thread_local! {
    static CLAIMS: std::cell::RefCell<ClaimsCache> = std::cell::RefCell::new(ClaimsCache::default());
}

/// Compares setting names as PostgreSQL's `guc_name_compare` does (ASCII case-insensitive), the
/// order its array of settings is sorted in.
#[cfg(not(any(feature = "pg16", feature = "pg17", feature = "pg18")))]
fn guc_name_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.iter()
        .map(u8::to_ascii_lowercase)
        .cmp(b.iter().map(u8::to_ascii_lowercase))
}

/// Whether the value `name` holds now was set for the current transaction only (`SET LOCAL`,
/// `set_config(..., true)`), not for the session: a session value outlives the request that set
/// it on a pooled connection, so custos never takes a tenant or an actor from one.
pub(crate) fn set_for_transaction(name: &CStr) -> bool {
    // SAFETY: backend thread; the setting's stack of saved values is read, not changed.
    unsafe {
        let var = find_setting(name);
        if var.is_null() {
            return false;
        }
        let stack = (*var).stack;
        !stack.is_null()
            && matches!(
                (*stack).state,
                pg_sys::GucStackState::GUC_LOCAL | pg_sys::GucStackState::GUC_SET_LOCAL
            )
    }
}

/// PostgreSQL's record of a setting (a placeholder included), or null if there is none.
#[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
unsafe fn find_setting(name: &CStr) -> *mut pg_sys::config_generic {
    // SAFETY: skip_errors: a missing setting gives null, never an ERROR.
    unsafe { pg_sys::find_option(name.as_ptr(), false, true, pgrx::PgLogLevel::ERROR as i32) }
}

/// PostgreSQL's record of a setting (a placeholder included), or null if there is none: found by
/// binary search in PostgreSQL 15's array of settings, sorted by name.
#[cfg(not(any(feature = "pg16", feature = "pg17", feature = "pg18")))]
unsafe fn find_setting(name: &CStr) -> *mut pg_sys::config_generic {
    // SAFETY: the array holds GetNumConfigOptions() valid pointers.
    unsafe {
        let vars = pg_sys::get_guc_variables();
        let count = usize::try_from(pg_sys::GetNumConfigOptions()).unwrap_or(0);
        if vars.is_null() || count == 0 {
            return std::ptr::null_mut();
        }
        let vars = std::slice::from_raw_parts(vars, count);
        match vars.binary_search_by(|&v| {
            guc_name_order(CStr::from_ptr((*v).name).to_bytes(), name.to_bytes())
        }) {
            Ok(i) => vars[i],
            Err(_) => std::ptr::null_mut(),
        }
    }
}

thread_local! {
    /// (session user, custos.jwt_authenticators) and whether that user may set claims.
    static TRUSTED_SESSION: std::cell::RefCell<Option<(pg_sys::Oid, String, bool)>> =
        const { std::cell::RefCell::new(None) };
}

/// Whether the session user is one custos takes JWT claims from: an authenticator named in
/// `custos.jwt_authenticators`, or a superuser (who may choose any tenant anyway).
fn session_user_trusted() -> bool {
    // SAFETY: backend thread; reads the session's user id.
    let session = unsafe { pg_sys::GetSessionUserId() };
    let authenticators = gucs::JWT_AUTHENTICATORS
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    TRUSTED_SESSION.with(|cell| {
        if let Some((user, list, trusted)) = &*cell.borrow() {
            if *user == session && *list == authenticators {
                return *trusted;
            }
        }
        // SAFETY: catalog lookups inside a transaction; a missing role gives NULL (noerr).
        let trusted = unsafe {
            pg_sys::superuser_arg(session) || {
                let name = pg_sys::GetUserNameFromId(session, true);
                !name.is_null() && is_listed(CStr::from_ptr(name).to_bytes(), &authenticators)
            }
        };
        *cell.borrow_mut() = Some((session, authenticators, trusted));
        trusted
    })
}

/// Whether `role` is one of the comma-separated names of `list`.
pub fn is_listed(role: &[u8], list: &str) -> bool {
    list.split(',').any(|n| n.trim().as_bytes() == role)
}

/// The request's JWT claims as custos trusts them: set for this transaction by a trusted session
/// user (see `custos.jwt_authenticators`), else empty.
fn trusted_claims_text() -> String {
    let text = read_setting(c"request.jwt.claims").unwrap_or_default();
    if text.is_empty() || !set_for_transaction(c"request.jwt.claims") || !session_user_trusted() {
        return String::new();
    }
    text
}

fn with_claims<R>(f: impl FnOnce(&ClaimsCache) -> R) -> R {
    let text = trusted_claims_text();
    let claim_name = gucs::JWT_TENANT_CLAIM
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tenant_id".to_owned());
    CLAIMS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.text != text || cache.claim_name != claim_name {
            *cache = ClaimsCache {
                tenant: resolve_tenant(None, Some(&text), &claim_name),
                subject: subject_of(&text),
                text,
                claim_name,
            };
        }
        f(&cache)
    })
}

pub(crate) fn current_tenant_id() -> Option<uuid::Uuid> {
    match gucs::TENANT_ID.get() {
        Some(local) if !local.as_bytes().is_empty() => {
            resolve_tenant(Some(&local.to_string_lossy()), None, "")
        }
        _ => with_claims(|c| c.tenant),
    }
}

/// Only superusers (scheduled workers, DBAs) cross tenants; everyone else works in the tenant of
/// the current request. Checked against the role that called in, not the function's owner.
pub(crate) fn authorize_tenant(tenant: uuid::Uuid) {
    // SAFETY: backend thread; plain lookups of the session's roles.
    let outer_is_superuser = unsafe { pg_sys::superuser_arg(pg_sys::GetOuterUserId()) };
    if outer_is_superuser {
        return;
    }
    if current_tenant_id() != Some(tenant) {
        crate::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for the ledger of tenant {tenant}"),
            Some("set that tenant first (custos.set_tenant or the JWT tenant_id claim); only superusers work across tenants"),
        );
    }
}

/// The JWT `sub` of the current request, if any.
pub(crate) fn current_subject() -> Option<String> {
    with_claims(|c| c.subject.clone())
}

/// The current tenant, or NULL: set_tenant's value, else the JWT claim.
#[pg_extern(stable, parallel_safe)]
fn current_tenant() -> Option<pgrx::Uuid> {
    current_tenant_id().map(|u| pgrx::Uuid::from_bytes(*u.as_bytes()))
}

/// Sets the tenant for the rest of the transaction; NULL clears it.
#[pg_extern(volatile, parallel_unsafe)]
fn set_tenant(tenant: Option<pgrx::Uuid>) -> Option<pgrx::Uuid> {
    let text = tenant
        .map(|t| {
            uuid::Uuid::from_bytes(*t.as_bytes())
                .hyphenated()
                .to_string()
        })
        .unwrap_or_default();
    let value = CString::new(text).unwrap_or_default();
    // SAFETY: backend thread. PGC_SUSET context: the setting is superuser-only on purpose and
    // EXECUTE on this function is the privilege check. GUC_ACTION_LOCAL reverts at transaction end.
    unsafe {
        set_guc(
            c"custos.tenant_id",
            &value,
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
        )
    };
    tenant
}

/// Sets a server setting in this session, raising ERROR if the value is refused; `action` says
/// how long it holds (the transaction, or the current GUC nest level).
///
/// # Safety
/// Backend thread inside a transaction.
unsafe fn set_guc(
    name: &CStr,
    value: &CStr,
    context: pg_sys::GucContext::Type,
    action: pg_sys::GucAction::Type,
) {
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            pgrx::PgLogLevel::ERROR as i32,
            false,
        );
    }
}

/// Whether the current work is a restore or replication by a superuser: a pg_restore session, a
/// logical replication apply worker (session_replication_role = replica), or a session with
/// `custos.restore_mode` on. There, ledger rows keep the chain fields they carry and capture
/// records nothing; an ordinary role never gets here.
pub fn restore_context() -> bool {
    // SAFETY: backend globals read on the backend thread; superuser() looks up the current user.
    unsafe {
        if !pg_sys::superuser() {
            return false;
        }
        if pg_sys::SessionReplicationRole == pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32
            || gucs::RESTORE_MODE.get()
        {
            return true;
        }
        let app = pg_sys::application_name;
        !app.is_null() && CStr::from_ptr(app).to_bytes() == b"pg_restore"
    }
}

/// Runs SPI work as the bootstrap superuser: key tables are closed to every other role, capture
/// writes events of any tenant, and the code that needs them (the ledger trigger, capture) runs as
/// whoever inserts. The search_path is
/// pinned meanwhile, as `SECURITY DEFINER ... SET search_path` would: otherwise a caller's own
/// schema placed before pg_catalog could supply the `=` of a query and have it run with the
/// superuser's rights. Both are restored on error by the transaction abort.
pub(crate) fn as_superuser<R>(f: impl FnOnce() -> R) -> R {
    let mut user = pg_sys::InvalidOid;
    let mut context = 0;
    // SAFETY: backend thread; the previous user, context and search_path are restored below.
    let guc_level = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
            context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        let level = pg_sys::NewGUCNestLevel();
        set_guc(
            c"search_path",
            c"pg_catalog, pg_temp",
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucAction::GUC_ACTION_SAVE,
        );
        level
    };
    let out = f();
    // SAFETY: as above.
    unsafe {
        pg_sys::AtEOXact_GUC(true, guc_level);
        pg_sys::SetUserIdAndSecContext(user, context);
    }
    out
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("db_tests.rs");
}

/// A tenant's effective settings under `prefix` (its override, else the default), as JSON text.
pub(crate) fn settings_for(tenant: &[u8; 16], prefix: &str) -> Vec<(String, String)> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT d.key, coalesce(s.value, d.default_value)::text FROM custos.setting_definitions d \
                 LEFT JOIN custos.tenant_settings s ON s.tenant_id = $1 AND s.key = d.key WHERE starts_with(d.key, $2)",
                None,
                &[pgrx::Uuid::from_bytes(*tenant).into(), prefix.into()],
            )?
            .map(|r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default())))
            .collect::<pgrx::spi::Result<Vec<_>>>()
    })
    .unwrap_or_else(|e| {
        crate::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("reading {prefix}* settings: {e}"),
            None,
        )
    })
}

thread_local! {
    /// Bumped whenever custos.tenant_settings is invalidated (or every relation is, after an
    /// invalidation queue overflow): every cache of settings and keys filled under an older
    /// generation is stale.
    static CACHE_GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// custos.tenant_settings' oid once looked up; InvalidOid until then, and again after each
    /// invalidation of it (the extension may have been dropped and made anew).
    static SETTINGS_RELID: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
}

/// The current cache generation. Call inside a transaction (it may look up a catalog).
pub(crate) fn cache_generation() -> u64 {
    if SETTINGS_RELID.get() == pg_sys::InvalidOid {
        SETTINGS_RELID.set(tenant_settings_relid());
    }
    CACHE_GENERATION.with(std::cell::Cell::get)
}

fn tenant_settings_relid() -> pg_sys::Oid {
    crate::pg::tuple::custos_relid(c"tenant_settings")
}

fn age_caches() {
    CACHE_GENERATION.with(|g| g.set(g.get() + 1));
}

/// Other relations' invalidations (autovacuum's statistics, DDL elsewhere) leave the caches be:
/// reloading every tenant's keys after each would cost more than the caching saves.
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let watched = SETTINGS_RELID.get();
    if relid == pg_sys::InvalidOid || watched == pg_sys::InvalidOid || relid == watched {
        SETTINGS_RELID.set(pg_sys::InvalidOid);
        age_caches();
    }
}

/// A rolled-back (sub)transaction may have made keys that no longer exist: forget them.
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    if matches!(event, XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT) {
        age_caches();
    }
}

unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        age_caches();
    }
}

/// Registers the callbacks that age custos' caches; from `_PG_init`.
pub fn init() {
    // SAFETY: backend thread, at load time; the callbacks only bump a counter.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(
            Some(on_relcache_invalidation),
            pg_sys::Datum::from(0),
        );
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

/// Ages the cached settings and keys of every session: a relcache invalidation of
/// custos.tenant_settings, sent to the other backends when this transaction commits (and
/// processed before they next touch a table), applied here at once. Called when settings change,
/// a key is rotated or a subject forgotten.
#[pg_extern(volatile, parallel_unsafe)]
pub(crate) fn invalidate_caches() {
    age_caches();
    let relid = tenant_settings_relid();
    if relid != pg_sys::InvalidOid {
        // SAFETY: inside a transaction; queues an invalidation of an existing relation.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    }
}

/// Per-tenant values (settings) kept across transactions until custos' caches are invalidated.
/// Looked up for every event: FxHash, as for chain heads (a writer choosing tenant ids to collide
/// could only slow itself).
pub(crate) struct TenantCache<P>(std::cell::RefCell<rustc_hash::FxHashMap<[u8; 16], (u64, P)>>);

impl<P: Clone> TenantCache<P> {
    pub(crate) fn new() -> Self {
        TenantCache(Default::default())
    }

    pub(crate) fn get_or_load(&self, tenant: &[u8; 16], load: impl FnOnce() -> P) -> P {
        let generation = cache_generation();
        if let Some((_, p)) = self
            .0
            .borrow()
            .get(tenant)
            .filter(|(g, _)| *g == generation)
        {
            return p.clone();
        }
        let p = load();
        self.0.borrow_mut().insert(*tenant, (generation, p.clone()));
        p
    }
}
