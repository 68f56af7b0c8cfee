//! The backend's own state, behind safe functions: settings (and whether one was set for the
//! transaction), users and roles, switching to the superuser, replication role and application
//! name, recovery, the process id and the strong random source. Capabilities build on these and
//! keep no `unsafe` of their own for them.

use pgrx::pg_sys;
use std::ffi::CStr;

/// Reads any setting, including placeholders such as `request.jwt.claims`; `None` when unset.
pub fn read_setting(name: &CStr) -> Option<String> {
    // SAFETY: backend thread; missing_ok = true returns NULL instead of raising, and the returned
    // string is copied before any other GUC call can free it.
    unsafe {
        let raw = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        (!raw.is_null()).then(|| CStr::from_ptr(raw).to_string_lossy().into_owned())
    }
}

/// Compares setting names as PostgreSQL's `guc_name_compare` does (ASCII case-insensitive), the
/// order its array of settings is sorted in.
#[cfg(not(any(feature = "pg16", feature = "pg17", feature = "pg18")))]
fn guc_name_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.iter()
        .map(u8::to_ascii_lowercase)
        .cmp(b.iter().map(u8::to_ascii_lowercase))
}

/// Whether the value `name` holds now was set for the current transaction only (`SET LOCAL`,
/// `set_config(..., true)`), not for the session: a session value outlives the request that set
/// it on a pooled connection, so custos never takes a tenant or an actor from one.
pub fn set_for_transaction(name: &CStr) -> bool {
    // SAFETY: backend thread; the setting's stack of saved values is read, not changed.
    unsafe {
        let var = find_setting(name);
        if var.is_null() {
            return false;
        }
        let stack = (*var).stack;
        !stack.is_null()
            && matches!(
                (*stack).state,
                pg_sys::GucStackState::GUC_LOCAL | pg_sys::GucStackState::GUC_SET_LOCAL
            )
    }
}

/// PostgreSQL's record of a setting (a placeholder included), or null if there is none.
#[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
unsafe fn find_setting(name: &CStr) -> *mut pg_sys::config_generic {
    // SAFETY: skip_errors: a missing setting gives null, never an ERROR.
    unsafe { pg_sys::find_option(name.as_ptr(), false, true, pgrx::PgLogLevel::ERROR as i32) }
}

/// PostgreSQL's record of a setting (a placeholder included), or null if there is none: found by
/// binary search in PostgreSQL 15's array of settings, sorted by name.
#[cfg(not(any(feature = "pg16", feature = "pg17", feature = "pg18")))]
unsafe fn find_setting(name: &CStr) -> *mut pg_sys::config_generic {
    // SAFETY: the array holds GetNumConfigOptions() valid pointers.
    unsafe {
        let vars = pg_sys::get_guc_variables();
        let count = usize::try_from(pg_sys::GetNumConfigOptions()).unwrap_or(0);
        if vars.is_null() || count == 0 {
            return std::ptr::null_mut();
        }
        let vars = std::slice::from_raw_parts(vars, count);
        match vars.binary_search_by(|&v| {
            guc_name_order(CStr::from_ptr((*v).name).to_bytes(), name.to_bytes())
        }) {
            Ok(i) => vars[i],
            Err(_) => std::ptr::null_mut(),
        }
    }
}

/// How long a value set with [`set_setting`] holds.
pub enum Scope {
    /// Until the end of the transaction (`SET LOCAL`).
    Transaction,
}

/// Sets a superuser-only setting for `scope`, raising ERROR if the value is refused.
pub fn set_setting(name: &CStr, value: &CStr, scope: Scope) {
    let action = match scope {
        Scope::Transaction => pg_sys::GucAction::GUC_ACTION_LOCAL,
    };
    // SAFETY: backend thread inside a transaction; the strings are valid C strings.
    unsafe { set_guc(name, value, pg_sys::GucContext::PGC_SUSET, action) }
}

/// Sets a server setting in this session, raising ERROR if the value is refused; `action` says
/// how long it holds (the transaction, or the current GUC nest level).
///
/// # Safety
/// Backend thread inside a transaction.
unsafe fn set_guc(
    name: &CStr,
    value: &CStr,
    context: pg_sys::GucContext::Type,
    action: pg_sys::GucAction::Type,
) {
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            pgrx::PgLogLevel::ERROR as i32,
            false,
        );
    }
}

/// The session user (the role that logged in; PostgREST's authenticator).
pub fn session_user() -> pg_sys::Oid {
    // SAFETY: reads the session's user id, backend thread.
    unsafe { pg_sys::GetSessionUserId() }
}

/// The role that called in: after SET ROLE, but not the owner of a SECURITY DEFINER function.
pub fn outer_user() -> pg_sys::Oid {
    // SAFETY: reads the session's user id, backend thread.
    unsafe { pg_sys::GetOuterUserId() }
}

/// Whether `role` is a superuser.
pub fn is_superuser(role: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup (cached by PostgreSQL) inside a transaction.
    unsafe { pg_sys::superuser_arg(role) }
}

/// Whether the current user (inside SECURITY DEFINER: the owner) is a superuser.
pub fn current_user_is_superuser() -> bool {
    // SAFETY: a catalog lookup (cached by PostgreSQL) inside a transaction.
    unsafe { pg_sys::superuser() }
}

/// The name of `role`; None if it no longer exists.
pub fn role_name(role: pg_sys::Oid) -> Option<String> {
    // SAFETY: a catalog lookup inside a transaction; noerr gives NULL for a missing role.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, true);
        (!name.is_null()).then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
    }
}

/// Whether the session applies replicated changes (`session_replication_role = replica`, as
/// logical replication's workers do).
pub fn replication_role_is_replica() -> bool {
    // SAFETY: reads a backend global.
    unsafe { pg_sys::SessionReplicationRole == pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32 }
}

/// The session's `application_name`, if any.
pub fn application_name() -> Option<String> {
    // SAFETY: reads a backend global, a C string or NULL.
    unsafe {
        let app = pg_sys::application_name;
        (!app.is_null()).then(|| CStr::from_ptr(app).to_string_lossy().into_owned())
    }
}

/// Whether this server is a hot standby (in recovery): it can read, not write.
pub fn recovery_in_progress() -> bool {
    // SAFETY: reads shared state of the startup process, on the backend thread.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// The current time, as a timestamptz (microseconds since 2000-01-01).
pub fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Whether the library is being loaded by shared_preload_libraries (in the postmaster).
pub fn preloading() -> bool {
    // SAFETY: reads a postmaster global on the main thread.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

/// The current database's oid.
pub fn database_id() -> u32 {
    // SAFETY: reads a backend global.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// What is left of `statement_timeout` for the running statement, if it is set.
pub fn statement_time_left() -> Option<std::time::Duration> {
    use std::time::Duration;
    // SAFETY: reads backend globals on the backend thread.
    let (timeout_ms, started) = unsafe {
        (
            pg_sys::StatementTimeout,
            pg_sys::GetCurrentStatementStartTimestamp(),
        )
    };
    if timeout_ms <= 0 {
        return None;
    }
    let elapsed_us = (now() - started).max(0) as u64;
    Some(Duration::from_millis(timeout_ms as u64).saturating_sub(Duration::from_micros(elapsed_us)))
}

/// Runs `callback` when this backend exits (before it detaches from shared memory), also after
/// a FATAL error. Register once.
pub fn before_backend_exit(callback: extern "C-unwind" fn(std::ffi::c_int, pg_sys::Datum)) {
    // SAFETY: registers a plain function pointer with PostgreSQL's exit callbacks.
    unsafe { pg_sys::before_shmem_exit(Some(callback), pg_sys::Datum::from(0)) };
}

/// This backend's process id (a forked child has another).
pub fn process_id() -> i32 {
    // SAFETY: reads a backend global.
    unsafe { pg_sys::MyProcPid }
}

/// Fills `buf` from the server's strong random source; false if it failed.
pub fn strong_random(buf: &mut [u8]) -> bool {
    // SAFETY: writes exactly buf.len() bytes into buf.
    unsafe { pg_sys::pg_strong_random(buf.as_mut_ptr().cast(), buf.len()) }
}

/// Runs SPI work as the bootstrap superuser: key tables are closed to every other role, capture
/// writes events of any tenant, and the code that needs them (the ledger trigger, capture) runs as
/// whoever inserts. The search_path is
/// pinned meanwhile, as `SECURITY DEFINER ... SET search_path` would: otherwise a caller's own
/// schema placed before pg_catalog could supply the `=` of a query and have it run with the
/// superuser's rights. Both are restored on error by the transaction abort.
pub fn as_superuser<R>(f: impl FnOnce() -> R) -> R {
    as_bootstrap_superuser(pg_sys::SECURITY_RESTRICTED_OPERATION as i32, f)
}

/// [`as_superuser`] without the security-restricted flag, which forbids queueing deferred
/// triggers: only for an INSERT into a custos table whose triggers are custos' own (custos.ai_calls
/// and its deferred ledger trigger), with nothing user-defined in the statement.
pub fn as_superuser_queueing_deferred_triggers<R>(f: impl FnOnce() -> R) -> R {
    as_bootstrap_superuser(0, f)
}

fn as_bootstrap_superuser<R>(restricted: i32, f: impl FnOnce() -> R) -> R {
    let mut user = pg_sys::InvalidOid;
    let mut context = 0;
    // SAFETY: backend thread; the previous user and context are restored below (and by the
    // transaction's abort on error).
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32 | restricted,
        );
    }
    let out = with_pinned_search_path(f);
    // SAFETY: as above.
    unsafe { pg_sys::SetUserIdAndSecContext(user, context) };
    out
}

/// Runs `f` with search_path pinned to `pg_catalog, pg_temp`, as the caller (privileges and
/// row-level security apply): a caller's own schemas cannot then supply the operators or
/// functions of custos' queries (an `=` or `*` that reads or changes what custos computes).
/// Restored after `f`, or by the transaction's abort on error.
pub fn with_pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: backend thread inside a transaction; the nest level is closed below.
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        set_guc(
            c"search_path",
            c"pg_catalog, pg_temp",
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucAction::GUC_ACTION_SAVE,
        );
        level
    };
    let out = f();
    // SAFETY: as above.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    out
}
