//! Envelope encryption: a master key wraps each tenant's versioned data keys, which wrap each
//! subject's keys, which seal field values (AES-256-GCM throughout). Pure sealing in `envelope`,
//! key storage and caching in `keys`.

#![deny(unsafe_code)]

pub use custos_core::crypto::envelope;
pub mod keys;

use crate::tenancy::authorize_tenant;
use pgrx::prelude::*;

/// Makes a new data key version for the tenant and retires its subjects' current keys, so that
/// new values are sealed under fresh keys; older values stay readable with the versions they
/// were sealed under. Returns the new version.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn rotate_data_key(tenant: pgrx::Uuid) -> i32 {
    authorize_tenant(uuid::Uuid::from_bytes(*tenant.as_bytes()));
    let t = *tenant.as_bytes();
    let version = keys::current_data_key_version(&t) + 1;
    keys::new_data_key_version(&t, version);
    crate::tenancy::as_superuser(|| {
        Spi::run_with_args(
            "UPDATE custos.subject_keys SET retired_at = now() WHERE tenant_id = $1 AND retired_at IS NULL AND destroyed_at IS NULL",
            &[tenant.into()],
        )
    })
    .unwrap_or_else(|e| {
        crate::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("key rotation failed: {e}"),
            None,
        )
    });
    crate::tenancy::invalidate_caches();
    version
}

/// Raises (55000, with the hint where a key comes from) unless a usable master key is configured:
/// turning `ledger.encrypt` on without one would make every later write of the tenant fail.
#[pg_extern(stable, parallel_safe)]
fn require_master_key() {
    // A restore brings settings before anyone configures keys on the new server.
    if !crate::tenancy::restore_context() {
        keys::master_key();
    }
}

/// Master-key rotation: rewraps the data keys of `tenant` (NULL: every tenant) that the previous
/// master key wrapped under the configured one. Set the new key as custos.master_key and the old
/// one as custos.master_key_previous first; clear the latter afterwards. Superusers only.
#[pg_extern(volatile, parallel_unsafe)]
fn rewrap_data_keys(
    tenant: default!(Option<pgrx::Uuid>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(rewrapped, i64),
        name!(already_current, i64),
        name!(master_key_id, String),
    ),
> {
    if !crate::pg::backend::current_user_is_superuser() {
        crate::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "only a superuser may rewrap data keys",
            Some("the master keys are superuser-only settings"),
        );
    }
    let (rewrapped, current) = keys::rewrap_data_keys(tenant.as_ref().map(|t| t.as_bytes()));
    crate::tenancy::invalidate_caches();
    TableIterator::once((rewrapped, current, keys::master_key().id))
}
