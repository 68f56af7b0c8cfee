//! Every `custos.*` setting, defined in one place.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// The tenant of the current transaction. Set only through `custos.set_tenant(uuid)`: the setting is
/// superuser-only so that a role cannot `SET` its way into another tenant; `set_tenant` is the gate,
/// and EXECUTE on it is granted to the custos roles only.
pub static TENANT_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Name of the JWT claim that carries the tenant when PostgREST sets `request.jwt.claims`.
pub static JWT_TENANT_CLAIM: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"tenant_id"));

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
    // SAFETY: called from _PG_init on the backend thread; the prefix is a static C string.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"custos".as_ptr()) };
}
