//! Data protection of ledger events: which fields a tenant seals (`ledger.*` settings), sealing
//! them in the chain trigger before the row is hashed, and revealing them to the tenant's readers.
//! The chain covers the stored ciphertext, so verification never needs a key.

#![deny(unsafe_code)]

use crate::crypto::{envelope, keys};
use crate::error::raise;
use crate::pg::jsonb::NewValue;
use crate::tenancy::TenantCache;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub encrypt: bool,
    /// The sealed `details` keys, each with its field name in the associated data.
    pub detail_keys: Vec<(String, String)>,
    /// Entity types whose `entity_id` names a person: sealed with that person's key.
    pub subject_entity_types: Vec<String>,
}

thread_local! {
    static POLICIES: TenantCache<std::rc::Rc<Policy>> = TenantCache::new();
}

/// Parses a comma-list setting (`ledger.encrypted_detail_keys`, `ledger.subject_entity_types`):
/// a JSON string of comma-separated names.
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
pub fn policy(tenant: &[u8; 16]) -> std::rc::Rc<Policy> {
    POLICIES.with(|c| {
        c.get_or_load(tenant, || {
            let mut p = Policy::default();
            let settings =
                crate::tenancy::as_superuser(|| crate::tenancy::settings_for(tenant, "ledger."));
            for (key, value) in settings {
                match key.as_str() {
                    "ledger.encrypt" => p.encrypt = value == "true",
                    "ledger.subject_entity_types" => {
                        p.subject_entity_types = parse_detail_keys(&value)
                    }
                    "ledger.encrypted_detail_keys" => {
                        p.detail_keys = parse_detail_keys(&value)
                            .into_iter()
                            .map(|key| {
                                let field = detail_field(&key);
                                (key, field)
                            })
                            .collect()
                    }
                    _ => {}
                }
            }
            std::rc::Rc::new(p)
        })
    })
}

/// The AAD name of a sealed `details` key.
pub fn detail_field(key: &str) -> String {
    format!("details.{key}")
}

pub use custos_core::crypto::pseudonym::{actor_pseudonym, parse_pseudonym, PSEUDONYM_PREFIX};

/// What the chain trigger stores for a sensitive event: the actor's pseudonym, sealed text for
/// ip_address and user_agent, for each configured `details` key present (or top-level value that
/// holds one at any depth) its value (as JSON text) sealed, and the entity_id sealed with the key
/// of the person it names when the entity type names people.
pub struct Sealed {
    pub actor: String,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub details: Vec<(String, String)>,
    pub entity_id: Option<String>,
}

/// The unsealed parts of an event that sealing reads.
pub struct Plain<'a> {
    pub actor: &'a str,
    pub ip_address: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub entity_type: &'a str,
    pub entity_id: Option<&'a str>,
}

/// Whether the JSON text holds, at any depth, an object key named in `keys`.
pub fn holds_key_deep(json_text: &str, keys: &[(String, String)]) -> bool {
    fn walk(v: &serde_json::Value, keys: &[(String, String)]) -> bool {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .any(|(k, v)| keys.iter().any(|(name, _)| name == k) || walk(v, keys)),
            serde_json::Value::Array(a) => a.iter().any(|v| walk(v, keys)),
            _ => false,
        }
    }
    serde_json::from_str::<serde_json::Value>(json_text).is_ok_and(|v| walk(&v, keys))
}

/// Seals an event's sensitive fields with the subject's key (the entity_id with the key of the
/// person it names). `detail` gives the JSON text of a top-level `details` key (None when absent
/// or null); `containers` the top-level keys whose values are objects or arrays, with their text.
pub fn seal_event(
    policy: &Policy,
    tenant: &[u8; 16],
    event_id: &[u8; 16],
    plain: &Plain<'_>,
    detail: impl Fn(&str) -> Option<String>,
    containers: impl FnOnce() -> Vec<(String, String)>,
) -> Sealed {
    let writer = keys::writing_key(tenant, plain.actor);
    let seal = |field: &str, text: &str| writer.sealer.seal(tenant, event_id, field, text);
    let mut details: Vec<(String, String)> = policy
        .detail_keys
        .iter()
        .filter_map(|(name, field)| detail(name).map(|text| (name.clone(), seal(field, &text))))
        .collect();
    // A listed key nested deeper seals the whole top-level value around it: readers open it
    // like any sealed top-level value, and the person's data is gone with their key.
    if !policy.detail_keys.is_empty() {
        for (name, text) in containers() {
            if details.iter().all(|(n, _)| *n != name) && holds_key_deep(&text, &policy.detail_keys)
            {
                let sealed = seal(&detail_field(&name), &text);
                details.push((name, sealed));
            }
        }
    }
    let entity_id = plain
        .entity_id
        .filter(|_| {
            policy
                .subject_entity_types
                .iter()
                .any(|t| t == plain.entity_type)
        })
        .map(|person| {
            keys::writing_key(tenant, person)
                .sealer
                .seal(tenant, event_id, "entity_id", person)
        });
    Sealed {
        actor: writer.pseudonym.clone(),
        ip_address: plain.ip_address.map(|ip| seal("ip_address", ip)),
        user_agent: plain.user_agent.map(|ua| seal("user_agent", ua)),
        details,
        entity_id,
    }
}

fn tampered(event: pgrx::Uuid, field: &str, e: envelope::CryptoError) -> ! {
    if e == envelope::CryptoError::KeyMissing {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "sealed {field} of event {} cannot be opened: {e}",
                uuid::Uuid::from_bytes(*event.as_bytes())
            ),
            Some("a subscriber or restored server needs custos.data_keys and custos.subject_keys too, and the same master key"),
        );
    }
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
    crate::tenancy::authorize_tenant(uuid::Uuid::from_bytes(*tenant.as_bytes()));
    keys::open_stored(tenant.as_bytes(), event_id.as_bytes(), field, stored)
        .unwrap_or_else(|e| tampered(event_id, field, e))
}

/// `details` with its sealed values opened: their JSON restored, or null where the key is gone.
/// Documents with nothing sealed are returned as they are, without being printed and parsed.
fn reveal_details(
    tenant: &[u8; 16],
    event_id: &[u8; 16],
    details: pg_sys::Datum,
    doc: crate::pg::jsonb::Doc,
) -> pg_sys::Datum {
    let Some(object) = doc.object() else {
        return details;
    };
    let sealed = object.top_level_strings(envelope::looks_sealed);
    if sealed.is_empty() {
        return details;
    }
    crate::tenancy::authorize_tenant(uuid::Uuid::from_bytes(*tenant));
    let event = pgrx::Uuid::from_bytes(*event_id);
    let opened: Vec<(String, Option<String>)> = sealed
        .into_iter()
        .map(|(name, stored)| {
            let field = detail_field(&name);
            match keys::open_stored(tenant, event_id, &field, &stored) {
                Ok(plain) => (name, plain),
                Err(e) => tampered(event, &field, e),
            }
        })
        .collect();
    let replace: Vec<_> = opened
        .iter()
        .map(|(name, plain)| {
            let value = plain.as_deref().map_or(NewValue::Null, NewValue::Json);
            (name.as_str(), value)
        })
        .collect();
    object.with_values(&replace)
}

crate::fmgr_v1_info!(pg_finfo_custos_reveal_details);

/// `custos_internal.reveal_details(tenant uuid, event_id uuid, details jsonb) RETURNS jsonb`, STRICT.
/// A C-level function so that the jsonb is read in place rather than converted through serde.
///
/// The one `unsafe` of this module: the fmgr entry point reads its three arguments as PostgreSQL
/// passes them.
///
/// # Safety
/// Called by PostgreSQL's function manager with three non-null arguments.
#[allow(unsafe_code)]
#[pgrx::pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn custos_reveal_details(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: as promised above; uuids are passed by reference to 16 bytes, and the third
    // argument is a non-null jsonb (the function is STRICT).
    unsafe {
        let args = (*fcinfo).args.as_slice(3);
        let tenant = *args[0].value.cast_mut_ptr::<[u8; 16]>();
        let event_id = *args[1].value.cast_mut_ptr::<[u8; 16]>();
        let doc = crate::pg::jsonb::Doc::of(args[2].value);
        reveal_details(&tenant, &event_id, args[2].value, doc)
    }
}

/// The actor of an event as the tenant's reader sees it: the subject's name for a pseudonym (NULL
/// once the subject was forgotten), the stored text otherwise.
#[pg_extern(stable, parallel_unsafe)]
fn reveal_actor(tenant: pgrx::Uuid, stored: &str) -> Option<String> {
    let Some(subject_ref) = parse_pseudonym(stored) else {
        return Some(stored.to_string());
    };
    crate::tenancy::authorize_tenant(uuid::Uuid::from_bytes(*tenant.as_bytes()));
    keys::subject_name(tenant.as_bytes(), &subject_ref)
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
    fn listed_keys_are_found_at_any_depth() {
        let keys = vec![("email".to_string(), "details.email".to_string())];
        assert!(holds_key_deep(r#"{"customer": {"email": "a@x"}}"#, &keys));
        assert!(holds_key_deep(r#"[{"x": [{"email": null}]}]"#, &keys));
        assert!(!holds_key_deep(
            r#"{"customer": {"mail": "a@x"}, "n": ["email"]}"#,
            &keys
        ));
        assert!(!holds_key_deep("not json", &keys));
    }

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
