//! Data protection of ledger events: which fields a tenant seals (`ledger.*` settings), sealing
//! them in the chain trigger before the row is hashed, and revealing them to the tenant's readers.
//! The chain covers the stored ciphertext, so verification never needs a key.

use crate::crypto::{envelope, keys};
use crate::error::raise;
use crate::tenancy::TenantCache;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub encrypt: bool,
    pub detail_keys: Vec<String>,
}

thread_local! {
    static POLICIES: TenantCache<Policy> = TenantCache::new();
}

/// Parses the `ledger.encrypted_detail_keys` setting: a JSON string of comma-separated keys.
pub fn parse_detail_keys(json_text: &str) -> Vec<String> {
    let list = serde_json::from_str::<String>(json_text).unwrap_or_default();
    list.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect()
}

/// The tenant's protection settings, cached until settings change (read as the key owner, so that what a
/// writer's role may see of the settings never decides whether its events are sealed).
pub fn policy(tenant: &[u8; 16]) -> Policy {
    POLICIES.with(|c| {
        c.get_or_load(tenant, || {
            let mut p = Policy::default();
            let settings = keys::as_key_owner(|| crate::tenancy::settings_for(tenant, "ledger."));
            for (key, value) in settings {
                match key.as_str() {
                    "ledger.encrypt" => p.encrypt = value == "true",
                    "ledger.encrypted_detail_keys" => p.detail_keys = parse_detail_keys(&value),
                    _ => {}
                }
            }
            p
        })
    })
}

/// The AAD name of a sealed `details` key.
pub fn detail_field(key: &str) -> String {
    format!("details.{key}")
}

/// What the chain trigger stores for a sensitive event: sealed text for ip_address and
/// user_agent, and `details` with the configured keys' values sealed (as their JSON text).
pub struct Sealed {
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub details: Option<serde_json::Value>,
}

pub fn seal_event(
    policy: &Policy,
    tenant: &[u8; 16],
    event_id: &[u8; 16],
    subject: &str,
    ip_address: Option<&str>,
    user_agent: Option<&str>,
    details: impl FnOnce() -> serde_json::Value,
) -> Sealed {
    let (key_id, key) = keys::writing_key(tenant, subject);
    let seal = |field: &str, plain: &str| {
        envelope::seal_field(
            &key,
            &key_id,
            tenant,
            event_id,
            field,
            plain,
            &keys::random_bytes::<{ envelope::NONCE_LEN }>(),
        )
    };
    let mut sealed_details = None;
    if !policy.detail_keys.is_empty() {
        let mut doc = details();
        let mut changed = false;
        if let Some(map) = doc.as_object_mut() {
            for name in &policy.detail_keys {
                if let Some(value) = map.get_mut(name) {
                    if value.is_null() {
                        continue;
                    }
                    let mut plain = String::new();
                    super::chain::canonical_json(value, &mut plain);
                    *value = serde_json::Value::String(seal(&detail_field(name), &plain));
                    changed = true;
                }
            }
        }
        if changed {
            sealed_details = Some(doc);
        }
    }
    Sealed {
        ip_address: ip_address.map(|ip| seal("ip_address", ip)),
        user_agent: user_agent.map(|ua| seal("user_agent", ua)),
        details: sealed_details,
    }
}

fn tampered(event: pgrx::Uuid, field: &str, e: envelope::CryptoError) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        format!(
            "sealed {field} of event {} cannot be opened: {e}",
            uuid::Uuid::from_bytes(*event.as_bytes())
        ),
        Some("verify the tenant's chain (custos.verify_chain); the stored ciphertext was changed or copied from elsewhere"),
    )
}

/// One stored field as the tenant's reader sees it: plaintext if it was sealed and its key still
/// exists, NULL if the key was destroyed (the subject was forgotten), as stored otherwise.
/// For custos' own read functions only; decrypts for the current tenant (superusers: any).
#[pg_extern(stable, parallel_unsafe)]
fn reveal(
    tenant: pgrx::Uuid,
    event_id: pgrx::Uuid,
    field: &str,
    stored: Option<&str>,
) -> Option<String> {
    let stored = stored?;
    if !envelope::is_sealed(stored) {
        return Some(stored.to_string());
    }
    super::api::authorize_tenant(uuid::Uuid::from_bytes(*tenant.as_bytes()));
    keys::open_stored(tenant.as_bytes(), event_id.as_bytes(), field, stored)
        .unwrap_or_else(|e| tampered(event_id, field, e))
}

/// `details` with every sealed value opened (its JSON restored), or null where the key is gone.
#[pg_extern(stable, parallel_unsafe)]
fn reveal_details(tenant: pgrx::Uuid, event_id: pgrx::Uuid, details: JsonB) -> JsonB {
    let JsonB(mut doc) = details;
    if let Some(map) = doc.as_object_mut() {
        let mut authorized = false;
        for (name, value) in map.iter_mut() {
            let Some(stored) = value.as_str().filter(|s| envelope::is_sealed(s)) else {
                continue;
            };
            if !authorized {
                super::api::authorize_tenant(uuid::Uuid::from_bytes(*tenant.as_bytes()));
                authorized = true;
            }
            let field = detail_field(name);
            *value = match keys::open_stored(tenant.as_bytes(), event_id.as_bytes(), &field, stored)
            {
                Ok(Some(plain)) => serde_json::from_str(&plain).unwrap_or_else(|_| {
                    tampered(event_id, &field, envelope::CryptoError::Malformed)
                }),
                Ok(None) => serde_json::Value::Null,
                Err(e) => tampered(event_id, &field, e),
            };
        }
    }
    JsonB(doc)
}

/// Whether a stored value is sealed under a key that no longer exists.
#[pg_extern(stable, parallel_unsafe)]
fn is_erased(tenant: pgrx::Uuid, stored: Option<&str>) -> bool {
    let Some(stored) = stored.filter(|s| envelope::is_sealed(s)) else {
        return false;
    };
    match envelope::parse_sealed(stored) {
        Ok((kid, _)) => matches!(
            keys::subject_key(tenant.as_bytes(), &kid),
            keys::SubjectKey::Destroyed
        ),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_keys_setting_is_a_comma_list() {
        assert_eq!(
            parse_detail_keys("\"email, phone,,name \""),
            ["email", "phone", "name"]
        );
        assert!(parse_detail_keys("\"\"").is_empty());
        assert!(parse_detail_keys("42").is_empty());
    }
}
