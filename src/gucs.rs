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

/// Threads that score a query's rows in `custos.if_score_query` (the backend's own included).
pub static SCORING_THREADS: GucSetting<i32> = GucSetting::<i32>::new(2);

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

/// Session users whose `request.jwt.claims` custos trusts (comma-separated role names; PostgREST
/// connects as its authenticator and switches role per request). Superuser-only.
pub static JWT_AUTHENTICATORS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"authenticator"));

/// Marks a superuser's session as a restore (plain-SQL dumps loaded with psql): ledger rows that
/// carry their chain fields are taken as they are, and capture records nothing. Off by default;
/// pg_restore sessions and logical replication count as restores without it.
pub static RESTORE_MODE: GucSetting<bool> = GucSetting::<bool>::new(false);

/// What a hot standby does with a logged read (it cannot write the access log): `refuse` (the
/// default) or `server_log`.
pub static STANDBY_ACCESS_LOG: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"refuse"));

/// Credentials of the AI providers (superuser-only secrets, shown masked): an AWS key pair with
/// the session token of temporary credentials, a Bedrock API key (bearer), an OpenAI-compatible
/// key. Each may instead come from `custos.ai_credentials_file` or the server's environment.
pub static AWS_ACCESS_KEY_ID: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static AWS_SECRET_ACCESS_KEY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static AWS_SESSION_TOKEN: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static BEDROCK_API_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static OPENAI_API_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// A file of `name = value` lines holding any of the credentials above.
pub static AI_CREDENTIALS_FILE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
/// Endpoints (comma-separated base URLs) a tenant's `ai.endpoint` may name besides the providers'
/// own. Superuser-only: an endpoint receives the prompts and, for bearer keys, the key.
pub static AI_ALLOWED_ENDPOINTS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// Lets a superuser drop the extension, and with it the ledger. Off by default.
pub static ALLOW_LEDGER_DROP: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Databases the background workers serve (comma-separated); empty: none.
pub static WORKER_DATABASES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// How long an idle worker sleeps on its latch between looks at its queues, in milliseconds.
pub static WORKER_NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// Items a worker embeds in one provider call.
pub static WORKER_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(256);
/// Provider requests a minute all workers together make to each provider (0: no limit).
pub static WORKER_REQUESTS_PER_MINUTE: GucSetting<i32> = GucSetting::<i32>::new(600);
/// Provider calls all workers together have in flight to each provider.
pub static WORKER_PROVIDER_CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(2);
/// Where the checkpoint publication job POSTs each tenant's signed checkpoint; empty: nowhere.
pub static CHECKPOINT_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Webhooks over plain http, and to loopback or private networks.
pub static WEBHOOK_ALLOW_HTTP: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static WEBHOOK_ALLOW_PRIVATE: GucSetting<bool> = GucSetting::<bool>::new(false);
/// Attempts before a notification is dead, the first retry's wait, and one attempt's timeout.
pub static WEBHOOK_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(8);
pub static WEBHOOK_RETRY_BASE_MS: GucSetting<i32> = GucSetting::<i32>::new(5000);
pub static WEBHOOK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

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
        c"custos.jwt_authenticators",
        c"Roles whose request.jwt.claims custos trusts (comma-separated session users).",
        c"Default 'authenticator' (PostgREST's convention). Claims count only when the session user \
is one of these roles (or a superuser) and the claims were set for the current transaction \
(set_config(..., true)); otherwise custos ignores them. Superuser-only.",
        &JWT_AUTHENTICATORS,
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
    GucRegistry::define_int_guc(
        c"custos.scoring_threads",
        c"Threads that score rows in custos.if_score_query, the backend's own included.",
        c"Default 2, range 1 to 16; 1 scores in the backend alone. Extra threads only compute (they \
never call into PostgreSQL and ignore signals), while the backend reads the query's rows.",
        &SCORING_THREADS,
        1,
        16,
        GucContext::Userset,
        GucFlags::default(),
    );
    define_secret(
        c"custos.checkpoint_signing_key",
        c"Ed25519 key that signs ledger checkpoints (32-byte seed, hex or base64).",
        c"Superuser-only; shown masked to everyone. Only SET in a session or the server's command line \
may give it: configuration files, ALTER SYSTEM, ALTER DATABASE and ALTER ROLE are refused, because \
PostgreSQL logs and catalogs what they hold. Prefer custos.checkpoint_key_file.",
        &CHECKPOINT_SIGNING_KEY,
        show_checkpoint_signing_key,
    );
    GucRegistry::define_string_guc(
        c"custos.checkpoint_key_file",
        c"File holding the Ed25519 checkpoint signing key (32-byte seed, hex or base64).",
        c"Read by the server process when a checkpoint is signed; used when custos.checkpoint_signing_key is empty.",
        &CHECKPOINT_KEY_FILE,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    define_secret(
        c"custos.master_key",
        c"AES-256-GCM master key wrapping the tenants' data keys (32 bytes, hex or base64).",
        c"Superuser-only; shown masked to everyone. Only SET in a session or the server's command line \
may give it: configuration files, ALTER SYSTEM, ALTER DATABASE and ALTER ROLE are refused. Prefer \
custos.master_key_file.",
        &MASTER_KEY,
        show_master_key,
    );
    GucRegistry::define_string_guc(
        c"custos.master_key_file",
        c"File holding the AES-256-GCM master key (32 bytes, hex or base64).",
        c"Read by the server process when a tenant's data key is first needed in a transaction; used when custos.master_key is empty.",
        &MASTER_KEY_FILE,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    define_secret(
        c"custos.master_key_previous",
        c"The master key being replaced: during a rotation, data keys it wrapped are still opened with it.",
        c"Superuser-only; shown masked. Set it with the new custos.master_key, run \
custos.rewrap_data_keys(), then clear it. Prefer custos.master_key_previous_file.",
        &MASTER_KEY_PREVIOUS,
        show_master_key_previous,
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
    GucRegistry::define_string_guc(
        c"custos.standby_access_log",
        c"What a hot standby does with reads custos logs: refuse (default) or server_log.",
        c"A standby cannot append to custos.access_log. refuse: timeline, event and the exports fail \
there with SQLSTATE 25006 and a hint; server_log: they run, and each read is written to the server \
log (LOG level) with what the access log would have held.",
        &STANDBY_ACCESS_LOG,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"custos.restore_mode",
        c"Loads a dump: ledger rows keep the chain fields they carry, and capture records nothing.",
        c"Default off. Superuser-only. pg_restore sessions (application_name pg_restore) and logical \
replication (session_replication_role = replica) by a superuser count as restores without it; set it \
for plain-SQL dumps: PGOPTIONS='-c custos.restore_mode=on' psql -f dump.sql.",
        &RESTORE_MODE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"custos.allow_ledger_drop",
        c"Allows DROP EXTENSION custos (and with it the audit ledger).",
        c"Default off: dropping the extension, its schema or detaching its tables is refused. Superuser-only.",
        &ALLOW_LEDGER_DROP,
        GucContext::Suset,
        GucFlags::default(),
    );
    define_secret(
        c"custos.aws_access_key_id",
        c"AWS access key id for Amazon Bedrock (else custos.ai_credentials_file, else AWS_ACCESS_KEY_ID).",
        c"Superuser-only; shown masked; refused in configuration files and catalogs.",
        &AWS_ACCESS_KEY_ID,
        show_aws_access_key_id,
    );
    define_secret(
        c"custos.aws_secret_access_key",
        c"AWS secret access key for Amazon Bedrock (else custos.ai_credentials_file, else AWS_SECRET_ACCESS_KEY).",
        c"Superuser-only; shown masked; refused in configuration files and catalogs.",
        &AWS_SECRET_ACCESS_KEY,
        show_aws_secret_access_key,
    );
    define_secret(
        c"custos.aws_session_token",
        c"Session token of temporary AWS credentials (else custos.ai_credentials_file, else AWS_SESSION_TOKEN).",
        c"Superuser-only; shown masked; refused in configuration files and catalogs.",
        &AWS_SESSION_TOKEN,
        show_aws_session_token,
    );
    define_secret(
        c"custos.bedrock_api_key",
        c"Amazon Bedrock API key, sent as a bearer token instead of SigV4 (else the file, else AWS_BEARER_TOKEN_BEDROCK).",
        c"Superuser-only; shown masked; refused in configuration files and catalogs.",
        &BEDROCK_API_KEY,
        show_bedrock_api_key,
    );
    define_secret(
        c"custos.openai_api_key",
        c"API key of the OpenAI-compatible endpoint (else custos.ai_credentials_file, else OPENAI_API_KEY).",
        c"Superuser-only; shown masked; refused in configuration files and catalogs. Servers without keys (Ollama) need none.",
        &OPENAI_API_KEY,
        show_openai_api_key,
    );
    GucRegistry::define_string_guc(
        c"custos.ai_credentials_file",
        c"File of AI provider credentials: lines aws_access_key_id = ..., aws_secret_access_key, aws_session_token, bedrock_api_key, openai_api_key.",
        c"Read by the server process at each provider call (so rotated credentials are picked up); \
settings given in the session win over it, and it wins over the server's environment. Superuser-only.",
        &AI_CREDENTIALS_FILE,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"custos.ai_allowed_endpoints",
        c"Base URLs (comma-separated) a tenant's ai.endpoint may name, besides the providers' own.",
        c"Default empty: tenants reach only https://bedrock-runtime.<region>.amazonaws.com and \
https://api.openai.com. An endpoint receives prompts (redacted) and, with bearer keys, the key: only \
superusers may allow one (a VPC endpoint, a proxy, a local Ollama or vLLM).",
        &AI_ALLOWED_ENDPOINTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    define_worker_settings();
    // SAFETY: called from _PG_init on the backend thread; the prefix is a static C string.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"custos".as_ptr()) };
}

/// The settings of the background workers and of webhook delivery (src/jobs, src/webhooks).
fn define_worker_settings() {
    GucRegistry::define_string_guc(
        c"custos.worker_databases",
        c"Databases (comma-separated) custos' background workers serve; empty: none.",
        c"Needs custos in shared_preload_libraries. A worker starts for each database listed and \
waits quietly until custos is installed (or updated) there. Changed by a reload.",
        &WORKER_DATABASES,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"custos.worker_naptime_ms",
        c"How long an idle worker sleeps on its latch, in milliseconds (100 to 60000).",
        c"Committed changes that queue work wake the database's worker at once; the nap bounds how \
late it notices new events of tenants with jobs.embed_events and due scheduled jobs.",
        &WORKER_NAPTIME_MS,
        100,
        60_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"custos.worker_batch_size",
        c"Items a worker embeds in one provider call (1 to 1000).",
        c"One tenant a batch. Larger batches mean fewer calls and a longer wait for each.",
        &WORKER_BATCH_SIZE,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"custos.worker_requests_per_minute",
        c"Provider requests a minute all workers together make to each remote provider (0: no limit).",
        c"A token bucket in shared memory per provider (bedrock, openai), bursts of up to a tenth of \
a minute's requests; a worker whose provider is out of tokens serves other tenants meanwhile.",
        &WORKER_REQUESTS_PER_MINUTE,
        0,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"custos.worker_provider_concurrency",
        c"Calls all workers together have in flight to each remote provider (1 to 64).",
        c"A worker that finds its provider at the limit serves other tenants meanwhile.",
        &WORKER_PROVIDER_CONCURRENCY,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"custos.checkpoint_url",
        c"URL the checkpoint publication job POSTs each tenant's signed checkpoint to; empty: none.",
        c"Checked like a webhook's URL (https unless custos.webhook_allow_http). Superuser-only: it \
may carry a token.",
        &CHECKPOINT_URL,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_bool_guc(
        c"custos.webhook_allow_http",
        c"Lets webhooks and custos.checkpoint_url use plain http.",
        c"Off by default: notifications carry alerts, and Slack's and Teams' URLs are credentials.",
        &WEBHOOK_ALLOW_HTTP,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"custos.webhook_allow_private",
        c"Lets webhooks reach loopback and private networks (10/8, 172.16/12, 192.168/16, fc00::/7).",
        c"Off by default, so that a tenant cannot aim the server at internal services. Link-local \
and cloud metadata addresses are refused always.",
        &WEBHOOK_ALLOW_PRIVATE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"custos.webhook_max_attempts",
        c"Delivery attempts before a notification is dead (1 to 100).",
        c"custos.retry_dead_notifications() sends a tenant's dead notifications again.",
        &WEBHOOK_MAX_ATTEMPTS,
        1,
        100,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"custos.webhook_retry_base_ms",
        c"Wait before a failed notification's first retry, doubling for each later one (an hour at most).",
        c"Default 5000.",
        &WEBHOOK_RETRY_BASE_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"custos.webhook_timeout_ms",
        c"How long one delivery attempt may take, in milliseconds.",
        c"Default 10000.",
        &WEBHOOK_TIMEOUT_MS,
        100,
        120_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

/// Defines a secret setting: superuser-only, hidden from SHOW ALL, shown masked to whoever may read
/// it (members of pg_read_all_settings included), and refused from every source that PostgreSQL
/// writes to its log or catalogs (configuration files, ALTER SYSTEM, ALTER DATABASE/ROLE ... SET):
/// a reload logs "parameter ... changed to <value>", and pg_db_role_setting is readable by all.
fn define_secret(
    name: &'static std::ffi::CStr,
    short: &'static std::ffi::CStr,
    long: &'static std::ffi::CStr,
    setting: &'static GucSetting<Option<CString>>,
    show: unsafe extern "C-unwind" fn() -> *const std::ffi::c_char,
) {
    // SAFETY: _PG_init on the backend thread; the storage is a static that lives as long as the
    // library, as DefineCustomStringVariable requires.
    unsafe {
        pgrx::pg_sys::DefineCustomStringVariable(
            name.as_ptr(),
            short.as_ptr(),
            long.as_ptr(),
            setting.as_ptr(),
            std::ptr::null(),
            pgrx::pg_sys::GucContext::PGC_SUSET,
            (GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL).bits(),
            Some(check_secret_source),
            None,
            Some(show),
        );
    }
}

/// What a secret shows as: whether it is set, never its value.
pub fn masked(value: Option<&[u8]>) -> &'static std::ffi::CStr {
    match value {
        Some(v) if !v.is_empty() => c"(set, hidden)",
        _ => c"",
    }
}

macro_rules! show_masked {
    ($name:ident, $setting:ident) => {
        unsafe extern "C-unwind" fn $name() -> *const std::ffi::c_char {
            // SAFETY: the setting's storage is a static C string or NULL, read on the backend thread.
            let raw = unsafe { *$setting.as_ptr() };
            let value =
                (!raw.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(raw) }.to_bytes());
            masked(value).as_ptr()
        }
    };
}
show_masked!(show_checkpoint_signing_key, CHECKPOINT_SIGNING_KEY);
show_masked!(show_master_key, MASTER_KEY);
show_masked!(show_master_key_previous, MASTER_KEY_PREVIOUS);
show_masked!(show_aws_access_key_id, AWS_ACCESS_KEY_ID);
show_masked!(show_aws_secret_access_key, AWS_SECRET_ACCESS_KEY);
show_masked!(show_aws_session_token, AWS_SESSION_TOKEN);
show_masked!(show_bedrock_api_key, BEDROCK_API_KEY);
show_masked!(show_openai_api_key, OPENAI_API_KEY);

/// Whether a secret may come from `source`: a session's SET, the server's command line or
/// environment, a client's startup options. Not from files or catalogs, which logs and other
/// roles can read.
pub fn secret_source_allowed(source: pgrx::pg_sys::GucSource::Type) -> bool {
    use pgrx::pg_sys::GucSource::*;
    !matches!(
        source,
        PGC_S_FILE | PGC_S_GLOBAL | PGC_S_DATABASE | PGC_S_USER | PGC_S_DATABASE_USER | PGC_S_TEST
    )
}

unsafe extern "C-unwind" fn check_secret_source(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    source: pgrx::pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the proposed value (NULL or a C string).
    let empty = unsafe { (*newval).is_null() || **newval == 0 };
    if empty || secret_source_allowed(source) {
        return true;
    }
    // SAFETY: GUC_check_errmsg/hint, as the GUC_check_errmsg() macro sets them: strings in the
    // current memory context. The message must not carry the value (PostgreSQL's default does).
    unsafe {
        pgrx::pg_sys::GUC_check_errcode(
            pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as i32,
        );
        pgrx::pg_sys::GUC_check_errmsg_string = pgrx::pg_sys::pstrdup(
            c"custos keys cannot be stored in configuration files or catalogs, where logs and other roles can read them".as_ptr(),
        );
        pgrx::pg_sys::GUC_check_errhint_string = pgrx::pg_sys::pstrdup(
            c"put the key in a file readable only by the server (custos.master_key_file, custos.master_key_previous_file, custos.checkpoint_key_file, custos.ai_credentials_file)".as_ptr(),
        );
    }
    false
}

#[cfg(test)]
mod unit {
    use super::*;
    use pgrx::pg_sys::GucSource::*;

    #[test]
    fn secrets_are_masked_and_refused_from_logged_sources() {
        assert_eq!(masked(None), c"");
        assert_eq!(masked(Some(b"")), c"");
        assert_eq!(masked(Some(b"00112233")), c"(set, hidden)");
        for refused in [
            PGC_S_FILE,
            PGC_S_GLOBAL,
            PGC_S_DATABASE,
            PGC_S_USER,
            PGC_S_DATABASE_USER,
            PGC_S_TEST,
        ] {
            assert!(!secret_source_allowed(refused), "{refused}");
        }
        for allowed in [
            PGC_S_SESSION,
            PGC_S_ARGV,
            PGC_S_ENV_VAR,
            PGC_S_CLIENT,
            PGC_S_DEFAULT,
        ] {
            assert!(secret_source_allowed(allowed), "{allowed}");
        }
    }
}
