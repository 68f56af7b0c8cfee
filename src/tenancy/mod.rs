//! Tenancy: which tenant a request runs as. Every tenant-isolated table's policy compares its
//! tenant column with `(select custos.current_tenant())`, so everything here fails closed: with no
//! tenant, or an unreadable one, the answer is NULL and policies match no row.

pub mod claims;

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

fn with_claims<R>(f: impl FnOnce(&ClaimsCache) -> R) -> R {
    let text = read_setting(c"request.jwt.claims").unwrap_or_default();
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
        pg_sys::set_config_option(
            c"custos.tenant_id".as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            pgrx::PgLogLevel::ERROR as i32,
            false,
        );
    }
    tenant
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

/// Per-tenant values that hold for one transaction (settings read once per transaction): an entry
/// filled in an earlier transaction is read again.
pub(crate) struct TenantXactCache<P>(
    std::cell::RefCell<std::collections::HashMap<[u8; 16], (i64, P)>>,
);

impl<P: Clone> TenantXactCache<P> {
    pub(crate) fn new() -> Self {
        TenantXactCache(Default::default())
    }

    pub(crate) fn get_or_load(&self, tenant: &[u8; 16], load: impl FnOnce() -> P) -> P {
        // SAFETY: plain read of the transaction's start time, backend thread.
        let xact = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
        if let Some((_, p)) = self.0.borrow().get(tenant).filter(|(x, _)| *x == xact) {
            return p.clone();
        }
        let p = load();
        self.0.borrow_mut().insert(*tenant, (xact, p.clone()));
        p
    }

    pub(crate) fn clear(&self) {
        self.0.borrow_mut().clear();
    }
}
