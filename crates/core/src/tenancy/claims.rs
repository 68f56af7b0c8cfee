//! Reading the tenant and the subject out of a request: pure functions over the raw texts, so they
//! are tested (and fuzzed, see `fuzz/`) without a database.

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

/// The `sub` claim: who the request is, for the ledger's `actor`.
pub fn subject_of(claims: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_str(claims).ok()?;
    doc.get("sub")?.as_str().map(str::to_owned)
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
