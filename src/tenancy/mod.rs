//! Tenancy: which tenant a request runs as. Every tenant-isolated table's policy compares its
//! tenant column with `(select custos.current_tenant())`, so everything here fails closed: with no
//! tenant, or an unreadable one, the answer is NULL and policies match no row.

use crate::gucs;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

/// Resolves the tenant from the transaction-local `custos.tenant_id` (set by `set_tenant`) or,
/// when that is empty, from the `claim` of PostgREST's `request.jwt.claims` JSON.
///
/// A local value that is set but not a UUID yields `None` rather than falling back to the claim:
/// a broken explicit choice must not silently become another tenant.
pub fn resolve_tenant(
    local: Option<&str>,
    claims: Option<&str>,
    claim: &str,
) -> Option<uuid::Uuid> {
    match local.map(str::trim) {
        Some(v) if !v.is_empty() => return uuid::Uuid::try_parse(v).ok(),
        _ => {}
    }
    let claims = claims.map(str::trim).filter(|c| !c.is_empty())?;
    let doc: serde_json::Value = serde_json::from_str(claims).ok()?;
    match doc.get(claim)? {
        serde_json::Value::String(s) => uuid::Uuid::try_parse(s.trim()).ok(),
        _ => None,
    }
}

/// Reads any setting, including placeholders such as `request.jwt.claims`; `None` when unset.
pub(crate) fn read_setting(name: &CStr) -> Option<String> {
    // SAFETY: backend thread; missing_ok = true returns NULL instead of raising, and the returned
    // string is copied before any other GUC call can free it.
    unsafe {
        let raw = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        (!raw.is_null()).then(|| CStr::from_ptr(raw).to_string_lossy().into_owned())
    }
}

/// The `sub` claim: who the request is, for the ledger's `actor`.
pub fn subject_of(claims: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_str(claims).ok()?;
    doc.get("sub")?.as_str().map(str::to_owned)
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

#[cfg(test)]
mod unit {
    use super::resolve_tenant;
    use proptest::prelude::*;

    const A: &str = "6f1c2b9e-4a3d-4f5e-9b7a-0c1d2e3f4a5b";

    #[test]
    fn local_setting_wins_over_claim() {
        let claims = r#"{"tenant_id":"11111111-1111-1111-1111-111111111111"}"#;
        assert_eq!(
            resolve_tenant(Some(A), Some(claims), "tenant_id")
                .unwrap()
                .to_string(),
            A
        );
    }

    #[test]
    fn claim_is_used_when_no_local_setting() {
        let claims = format!(r#"{{"sub":"alice","tenant_id":"{A}"}}"#);
        assert_eq!(
            resolve_tenant(Some(""), Some(&claims), "tenant_id")
                .unwrap()
                .to_string(),
            A
        );
        assert_eq!(
            resolve_tenant(None, Some(&claims), "tenant_id")
                .unwrap()
                .to_string(),
            A
        );
    }

    #[test]
    fn custom_claim_name() {
        let claims = format!(r#"{{"org":"{A}"}}"#);
        assert!(resolve_tenant(None, Some(&claims), "tenant_id").is_none());
        assert!(resolve_tenant(None, Some(&claims), "org").is_some());
    }

    #[test]
    fn fails_closed_on_anything_malformed() {
        for claims in [
            "",
            "not json",
            "[]",
            r#"{"tenant_id":null}"#,
            r#"{"tenant_id":42}"#,
            r#"{"tenant_id":"not-a-uuid"}"#,
            r#"{"tenant_id":["6f1c2b9e-4a3d-4f5e-9b7a-0c1d2e3f4a5b"]}"#,
            r#"{"role":"web_anon"}"#,
        ] {
            assert!(
                resolve_tenant(None, Some(claims), "tenant_id").is_none(),
                "{claims}"
            );
        }
        assert!(resolve_tenant(None, None, "tenant_id").is_none());
    }

    #[test]
    fn broken_local_value_does_not_fall_back_to_claim() {
        let claims = format!(r#"{{"tenant_id":"{A}"}}"#);
        assert!(resolve_tenant(Some("garbage"), Some(&claims), "tenant_id").is_none());
    }

    proptest! {
        // Untrusted input: arbitrary claim text never panics and yields a tenant only for a UUID.
        #[test]
        fn arbitrary_claims_never_panic(claims in ".{0,200}") {
            if let Some(t) = resolve_tenant(None, Some(&claims), "tenant_id") {
                prop_assert!(claims.contains(&t.hyphenated().to_string()) || claims.contains(&t.simple().to_string())
                    || claims.to_lowercase().contains(&t.hyphenated().to_string()));
            }
        }

        #[test]
        fn any_uuid_claim_round_trips(bytes in any::<[u8; 16]>()) {
            let u = uuid::Uuid::from_bytes(bytes);
            let claims = format!(r#"{{"tenant_id":"{u}"}}"#);
            prop_assert_eq!(resolve_tenant(None, Some(&claims), "tenant_id"), Some(u));
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("db_tests.rs");
}
