//! Tenancy: which tenant a request runs as. Every tenant-isolated table's policy compares its
//! tenant column with `(select custos.current_tenant())`, so everything here fails closed: with no
//! tenant, or an unreadable one, the answer is NULL and policies match no row.

#![deny(unsafe_code)]

pub use custos_core::tenancy::claims;

use crate::gucs;
use crate::pg::backend;
pub(crate) use crate::pg::backend::{as_superuser, set_for_transaction};
pub(crate) use crate::pg::cache::generation as cache_generation;
pub use claims::{resolve_tenant, subject_of};
use pgrx::prelude::*;
use std::ffi::CString;

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

thread_local! {
    /// (session user, custos.jwt_authenticators) and whether that user may set claims.
    static TRUSTED_SESSION: std::cell::RefCell<Option<(pg_sys::Oid, String, bool)>> =
        const { std::cell::RefCell::new(None) };
}

/// Whether the session user is one custos takes JWT claims from: an authenticator named in
/// `custos.jwt_authenticators`, or a superuser (who may choose any tenant anyway).
fn session_user_trusted() -> bool {
    let session = backend::session_user();
    let authenticators = authenticators();
    TRUSTED_SESSION.with(|cell| {
        if let Some((user, list, trusted)) = &*cell.borrow() {
            if *user == session && *list == authenticators {
                return *trusted;
            }
        }
        let trusted = backend::is_superuser(session) || is_authenticator(session, &authenticators);
        *cell.borrow_mut() = Some((session, authenticators, trusted));
        trusted
    })
}

/// Whether the session logged in as one of `custos.jwt_authenticators` (PostgREST's connection
/// role) and is not a superuser: its requests carry their tenant in a JWT.
fn session_is_jwt_gateway() -> bool {
    let session = backend::session_user();
    !backend::is_superuser(session) && is_authenticator(session, &authenticators())
}

/// `custos.jwt_authenticators` as set.
fn authenticators() -> String {
    gucs::JWT_AUTHENTICATORS
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether `role` is named in the comma-separated `list` of authenticators.
fn is_authenticator(role: pg_sys::Oid, list: &str) -> bool {
    backend::role_name(role).is_some_and(|name| is_listed(name.as_bytes(), list))
}

/// The current tenant, or None for a superuser (who works in shared data); anyone else without
/// a tenant gets 42501 with `hint`: fail closed.
pub(crate) fn tenant_or_superuser(hint: &str) -> Option<uuid::Uuid> {
    let tenant = current_tenant_id();
    if tenant.is_none() && !backend::is_superuser(backend::outer_user()) {
        crate::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "no tenant is set",
            Some(hint),
        );
    }
    tenant
}

/// A tenant's effective value of one setting (its override, else the default), as JSON text.
pub(crate) fn setting_for(tenant: &[u8; 16], key: &str) -> Option<String> {
    settings_for(tenant, key)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Whether `role` is one of the comma-separated names of `list`.
pub fn is_listed(role: &[u8], list: &str) -> bool {
    list.split(',').any(|n| n.trim().as_bytes() == role)
}

/// The request's JWT claims as custos trusts them: set for this transaction by a trusted session
/// user (see `custos.jwt_authenticators`), else empty.
fn trusted_claims_text() -> String {
    let text = backend::read_setting(c"request.jwt.claims").unwrap_or_default();
    if text.is_empty()
        || !backend::set_for_transaction(c"request.jwt.claims")
        || !session_user_trusted()
    {
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
    if backend::is_superuser(backend::outer_user()) {
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
    // A PostgREST request's tenant is its JWT's: a request may not choose another one, not even
    // from inside a query it passes to custos (if_score_query runs the caller's query text).
    if session_is_jwt_gateway() {
        let claimed = with_claims(|c| c.tenant);
        let asked = tenant.map(|t| uuid::Uuid::from_bytes(*t.as_bytes()));
        if asked.is_some() && asked != claimed {
            crate::error::raise(
                pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "a PostgREST request cannot choose its tenant",
                Some("the tenant of a request through custos.jwt_authenticators is the tenant_id claim of its JWT; custos.set_tenant is for application servers that connect as their own role"),
            );
        }
    }
    let text = tenant
        .map(|t| {
            uuid::Uuid::from_bytes(*t.as_bytes())
                .hyphenated()
                .to_string()
        })
        .unwrap_or_default();
    let value = CString::new(text).unwrap_or_default();
    // Superuser context: the setting is superuser-only on purpose, and EXECUTE on this function
    // is the privilege check. It reverts at the end of the transaction.
    backend::set_setting(c"custos.tenant_id", &value, backend::Scope::Transaction);
    tenant
}

/// Whether the current work is a restore or replication by a superuser: a pg_restore session, a
/// logical replication apply worker (session_replication_role = replica), or a session with
/// `custos.restore_mode` on. There, ledger rows keep the chain fields they carry and capture
/// records nothing; an ordinary role never gets here.
pub fn restore_context() -> bool {
    backend::current_user_is_superuser()
        && (backend::replication_role_is_replica()
            || gucs::RESTORE_MODE.get()
            || backend::application_name().as_deref() == Some("pg_restore"))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("db_tests.rs");
}

/// A tenant's effective settings under `prefix` (its override, else the default), as JSON text.
pub(crate) fn settings_for(tenant: &[u8; 16], prefix: &str) -> Vec<(String, String)> {
    crate::pg::backend::with_pinned_search_path(|| settings_as_read(tenant, prefix))
}

fn settings_as_read(tenant: &[u8; 16], prefix: &str) -> Vec<(String, String)> {
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

/// Ages the cached settings and keys of every session: a relcache invalidation of
/// custos.tenant_settings, sent to the other backends when this transaction commits (and
/// processed before they next touch a table), applied here at once. Called when settings change,
/// a key is rotated or a subject forgotten.
#[pg_extern(volatile, parallel_unsafe)]
pub(crate) fn invalidate_caches() {
    crate::pg::cache::invalidate_everywhere();
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
