//! The generations of custos' per-backend caches. Settings and keys: bumped whenever
//! custos.tenant_settings is invalidated, which custos does when settings change, keys rotate or
//! a subject is forgotten. Anomaly models: bumped whenever custos.models is invalidated, which its
//! statement trigger does on every write. Both also when a (sub)transaction rolls back. A cache
//! filled under an older generation is stale.

use pgrx::pg_sys;

thread_local! {
    /// Bumped whenever custos.tenant_settings is invalidated (or every relation is, after an
    /// invalidation queue overflow): every cache of settings and keys filled under an older
    /// generation is stale.
    static CACHE_GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// custos.tenant_settings' oid once looked up; InvalidOid until then, and again after each
    /// invalidation of it (the extension may have been dropped and made anew).
    static SETTINGS_RELID: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
    /// The same for custos.models and the cached anomaly models.
    static MODEL_GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static MODELS_RELID: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
}

/// The current cache generation. Call inside a transaction (it may look up a catalog).
pub fn generation() -> u64 {
    if SETTINGS_RELID.get() == pg_sys::InvalidOid {
        SETTINGS_RELID.set(tenant_settings_relid());
    }
    CACHE_GENERATION.with(std::cell::Cell::get)
}

/// The generation of the cached anomaly models. Call inside a transaction.
pub fn model_generation() -> u64 {
    if MODELS_RELID.get() == pg_sys::InvalidOid {
        MODELS_RELID.set(super::tuple::custos_relid(c"models"));
    }
    MODEL_GENERATION.with(std::cell::Cell::get)
}

fn tenant_settings_relid() -> pg_sys::Oid {
    super::tuple::custos_relid(c"tenant_settings")
}

fn age_caches() {
    CACHE_GENERATION.with(|g| g.set(g.get() + 1));
}

fn age_models() {
    MODEL_GENERATION.with(|g| g.set(g.get() + 1));
}

/// Other relations' invalidations (autovacuum's statistics, DDL elsewhere) leave the caches be:
/// reloading every tenant's keys after each would cost more than the caching saves.
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let watched = SETTINGS_RELID.get();
    if relid == pg_sys::InvalidOid || watched == pg_sys::InvalidOid || relid == watched {
        SETTINGS_RELID.set(pg_sys::InvalidOid);
        age_caches();
    }
    let models = MODELS_RELID.get();
    if relid == pg_sys::InvalidOid || models == pg_sys::InvalidOid || relid == models {
        MODELS_RELID.set(pg_sys::InvalidOid);
        age_models();
    }
}

/// A rolled-back (sub)transaction may have made keys that no longer exist: forget them.
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    if matches!(event, XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT) {
        age_caches();
        age_models();
    }
}

unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        age_caches();
        age_models();
    }
}

/// Registers the callbacks that age custos' caches; from `_PG_init`.
pub fn init() {
    // SAFETY: backend thread, at load time; the callbacks only bump a counter.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(
            Some(on_relcache_invalidation),
            pg_sys::Datum::from(0),
        );
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

/// Ages the cached settings and keys of every session: a relcache invalidation of
/// custos.tenant_settings, sent to the other backends when this transaction commits (and
/// processed before they next touch a table), applied here at once.
pub fn invalidate_everywhere() {
    age_caches();
    let relid = tenant_settings_relid();
    if relid != pg_sys::InvalidOid {
        // SAFETY: inside a transaction; queues an invalidation of an existing relation.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    }
}

/// Ages every session's cached anomaly models: at once here, in the others when this
/// transaction commits (a relcache invalidation of custos.models).
pub fn invalidate_models_everywhere() {
    age_models();
    let relid = super::tuple::custos_relid(c"models");
    if relid != pg_sys::InvalidOid {
        // SAFETY: inside a transaction; queues an invalidation of an existing relation.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    }
}
