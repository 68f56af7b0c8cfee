//! Audit-event features that compare a field's values (a new entity, a new IP for an actor) on
//! tenants whose ledger seals those fields: each value becomes a 64-bit hash under a key drawn
//! once per backend, so equal values stay equal inside one feature query while neither the
//! plaintext nor a hash anyone could recompute (an IPv4 address is quickly brute-forced) reaches
//! the query's sorts, which may spill to temporary files.

use crate::crypto::{envelope, keys};
use pgrx::prelude::*;
use std::hash::BuildHasher;

thread_local! {
    /// SipHash keys from the operating system's random source, never stored.
    static KEY: std::collections::hash_map::RandomState = std::collections::hash_map::RandomState::new();
}

fn keyed_hash(value: &str) -> i64 {
    KEY.with(|k| k.hash_one(value) as i64)
}

/// `custos_internal.event_value_key`: the keyed hash of an event's field as its reader sees it
/// (opened in memory if sealed); NULL if the field is NULL or its subject was forgotten.
#[pg_extern(stable, parallel_restricted)]
fn event_value_key(
    tenant: pgrx::Uuid,
    event_id: pgrx::Uuid,
    field: &str,
    stored: Option<&str>,
) -> Option<i64> {
    let stored = stored?;
    if !envelope::is_sealed(stored) {
        return Some(keyed_hash(stored));
    }
    crate::tenancy::authorize_tenant(uuid::Uuid::from_bytes(*tenant.as_bytes()));
    keys::open_stored(tenant.as_bytes(), event_id.as_bytes(), field, stored)
        .ok()
        .flatten()
        .map(|plain| keyed_hash(&plain))
}

thread_local! {
    static ON_INSERT: crate::tenancy::TenantCache<bool> = crate::tenancy::TenantCache::new();
}

/// `custos_internal.anomaly_scores_on_insert`: the tenant's `anomaly.score_on_insert`, cached
/// until settings change: the WHEN of the insert trigger, paid by every insert.
///
/// EXECUTE is PUBLIC (a trigger's WHEN runs as whoever inserts), so it answers only for the
/// caller's own tenant, or to a superuser (custos' SECURITY DEFINER writers, capture): about any
/// other tenant it says false and so reveals nothing.
#[pg_extern(stable, parallel_safe)]
fn anomaly_scores_on_insert(tenant: pgrx::Uuid) -> bool {
    let tenant = *tenant.as_bytes();
    let own = crate::tenancy::current_tenant_id().is_some_and(|t| *t.as_bytes() == tenant);
    if !own && !crate::pg::backend::current_user_is_superuser() {
        return false;
    }
    ON_INSERT.with(|c| {
        c.get_or_load(&tenant, || {
            crate::tenancy::as_superuser(|| {
                crate::tenancy::setting_for(&tenant, "anomaly.score_on_insert")
            })
            .as_deref()
                == Some("true")
        })
    })
}

#[cfg(test)]
mod unit {
    use super::keyed_hash;

    #[test]
    fn equal_values_hash_alike_and_others_apart() {
        assert_eq!(keyed_hash("10.0.0.1"), keyed_hash("10.0.0.1"));
        assert_ne!(keyed_hash("10.0.0.1"), keyed_hash("10.0.0.2"));
    }
}
