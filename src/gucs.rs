//! Every `custos.*` setting, defined in one place.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PgSqlErrorCode};
use std::ffi::CString;

/// A secret set inline or, failing that, in a file named by a second setting; None if neither is
/// set. `what` names the secret in the error for an unreadable file.
pub fn secret(
    inline: &GucSetting<Option<CString>>,
    file: &GucSetting<Option<CString>>,
    what: &str,
) -> Option<String> {
    let non_empty = |v: Option<CString>| v.filter(|s| !s.as_bytes().is_empty());
    if let Some(value) = non_empty(inline.get()) {
        return Some(value.to_string_lossy().into_owned());
    }
    let path = non_empty(file.get())?.to_string_lossy().into_owned();
    Some(std::fs::read_to_string(&path).unwrap_or_else(|e| {
        crate::error::raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!("could not read {what} file \"{path}\": {e}"),
            Some("the file must be readable by the server's operating-system user"),
        )
    }))
}

/// The tenant of the current transaction. Set only through `custos.set_tenant(uuid)`: the setting is
/// superuser-only so that a role cannot `SET` its way into another tenant; `set_tenant` is the gate,
/// and EXECUTE on it is granted to the custos roles only.
pub static TENANT_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Name of the JWT claim that carries the tenant when PostgREST sets `request.jwt.claims`.
pub static JWT_TENANT_CLAIM: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"tenant_id"));

/// The application user behind the current transaction, recorded as `actor` on ledger events.
pub static ACTOR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Largest canonical `details` document an event may carry, in bytes.
pub static MAX_DETAILS_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

/// Ed25519 signing key for checkpoints: 32-byte seed as hex or base64. Superuser-only, hidden.
pub static CHECKPOINT_SIGNING_KEY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// File holding the signing key, for deployments that keep secrets out of postgresql.conf.
pub static CHECKPOINT_KEY_FILE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// AES-256-GCM master key that wraps every tenant's data keys (32 bytes, hex or base64).
pub static MASTER_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// File holding the master key, for deployments that keep secrets out of postgresql.conf.
pub static MASTER_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// The master key being replaced during a master-key rotation (see `custos.rewrap_data_keys`):
/// data keys it wrapped stay readable until they are rewrapped under `custos.master_key`.
pub static MASTER_KEY_PREVIOUS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static MASTER_KEY_PREVIOUS_FILE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// Set (transaction-locally) only by custos.apply_retention: `tenant:seq` through which the
/// ledger's DELETE guard lets rows go. Superuser-only, so no other role can open that door.
pub static RETENTION_THROUGH: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// Lets a superuser drop the extension, and with it the ledger. Off by default.
pub static ALLOW_LEDGER_DROP: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn init() {
    GucRegistry::define_string_guc(
        c"custos.tenant_id",
        c"Tenant of the current transaction (set with custos.set_tenant).",
        c"Transaction-local; empty means no tenant, and tenant-isolated tables then show no rows. \
Only superusers may SET it directly; everyone else calls custos.set_tenant(uuid).",
        &TENANT_ID,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"custos.jwt_tenant_claim",
        c"JWT claim (in request.jwt.claims) that names the tenant.",
        c"Default 'tenant_id'. Read by custos.current_tenant() when custos.set_tenant was not called.",
        &JWT_TENANT_CLAIM,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"custos.actor",
        c"Application user recorded as the actor of ledger events (set with custos.set_actor).",
        c"Transaction-local when set by custos.set_actor. When empty, the sub claim of \
request.jwt.claims is used, then the database role.",
        &ACTOR,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"custos.max_details_bytes",
        c"Largest details document of a ledger event, in bytes (canonical JSON).",
        c"Default 1048576 (1 MiB), range 1024 to 268435456. Larger events are refused with SQLSTATE 54000.",
        &MAX_DETAILS_BYTES,
        1024,
        256 * 1024 * 1024,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"custos.checkpoint_signing_key",
        c"Ed25519 key that signs ledger checkpoints (32-byte seed, hex or base64).",
        c"Superuser-only and hidden from SHOW ALL and pg_settings. Alternatively custos.checkpoint_key_file.",
        &CHECKPOINT_SIGNING_KEY,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"custos.checkpoint_key_file",
        c"File holding the Ed25519 checkpoint signing key (32-byte seed, hex or base64).",
        c"Read by the server process when a checkpoint is signed; used when custos.checkpoint_signing_key is empty.",
        &CHECKPOINT_KEY_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"custos.master_key",
        c"AES-256-GCM master key wrapping the tenants' data keys (32 bytes, hex or base64).",
        c"Superuser-only and hidden from SHOW ALL and pg_settings. Alternatively custos.master_key_file.",
        &MASTER_KEY,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"custos.master_key_file",
        c"File holding the AES-256-GCM master key (32 bytes, hex or base64).",
        c"Read by the server process when a tenant's data key is first needed in a transaction; used when custos.master_key is empty.",
        &MASTER_KEY_FILE,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"custos.master_key_previous",
        c"The master key being replaced: during a rotation, data keys it wrapped are still opened with it.",
        c"Superuser-only and hidden. Set it with the new custos.master_key, run custos.rewrap_data_keys(), then clear it.",
        &MASTER_KEY_PREVIOUS,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"custos.master_key_previous_file",
        c"File holding the master key being replaced; used when custos.master_key_previous is empty.",
        c"Superuser-only.",
        &MASTER_KEY_PREVIOUS_FILE,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"custos.retention_through",
        c"Internal: set by custos.apply_retention while it removes a tenant's oldest events.",
        c"Superuser-only; never set it by hand.",
        &RETENTION_THROUGH,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_bool_guc(
        c"custos.allow_ledger_drop",
        c"Allows DROP EXTENSION custos (and with it the audit ledger).",
        c"Default off: dropping the extension, its schema or detaching its tables is refused. Superuser-only.",
        &ALLOW_LEDGER_DROP,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: called from _PG_init on the backend thread; the prefix is a static C string.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"custos".as_ptr()) };
}
