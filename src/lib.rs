//! custos: a tamper-evident audit ledger and identity-risk toolkit that lives inside PostgreSQL.
//!
//! One module per capability; each owns its SQL file under `sql/` (pulled in below in dependency
//! order) and keeps its logic in plain Rust functions that are tested without a database.

use pgrx::prelude::*;

/// The version-1 calling-convention record PostgreSQL looks up (`pg_finfo_<name>`) for a function
/// written against fmgr directly (`LANGUAGE c AS 'MODULE_PATHNAME', '<name>'`).
macro_rules! fmgr_v1_info {
    ($finfo:ident) => {
        // The symbol PostgreSQL looks up by name; nothing unsafe runs in it.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn $finfo() -> &'static pgrx::pg_sys::Pg_finfo_record {
            static V1: pgrx::pg_sys::Pg_finfo_record =
                pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}
pub(crate) use fmgr_v1_info;

pub mod ai;
pub mod alerts;
pub mod anomaly;
pub mod capture;
pub mod crypto;
pub mod dormant;
pub mod error;
pub mod gucs;
pub mod insights;
pub mod jobs;
pub mod ledger;
pub mod pg;
pub mod protection;
pub mod search;
pub mod tenancy;
pub mod webhooks;

::pgrx::pg_module_magic!();

// SQL objects, in the order they depend on each other. `bootstrap` creates what the generated
// function definitions need (roles), `finalize` runs after every Rust function exists.
extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/tenancy.sql",
    name = "tenancy",
    requires = [
        tenancy::current_tenant,
        tenancy::set_tenant,
        tenancy::invalidate_caches
    ]
);
extension_sql_file!(
    "../sql/crypto.sql",
    name = "crypto",
    requires = ["tenancy", crypto::rotate_data_key, crypto::rewrap_data_keys]
);
extension_sql_file!(
    "../sql/ledger.sql",
    name = "ledger",
    requires = [
        "tenancy",
        ledger::trigger::events_chain,
        ledger::api::verify_chain,
        ledger::api::settled_seq,
        ledger::api::checkpoint,
        ledger::api::verify_checkpoint,
        ledger::api::checkpoint_public_key
    ]
);
extension_sql_file!("../sql/alerts.sql", name = "alerts", requires = ["ledger"]);
extension_sql_file!(
    "../sql/capture.sql",
    name = "capture",
    requires = ["ledger", capture::capture_changes]
);
extension_sql_file!(
    "../sql/protection.sql",
    name = "protection",
    requires = [
        "ledger",
        "crypto",
        protection::reveal,
        protection::reveal_actor,
        protection::is_erased,
        ledger::event_id::event_seq,
        ledger::access::log_access,
        ledger::access::verify_access_log,
        ledger::api::require_tenant_access,
        crypto::require_master_key
    ]
);
extension_sql_file!(
    "../sql/dormant.sql",
    name = "dormant",
    requires = [
        "ledger",
        "protection",
        dormant::identities_derive,
        dormant::lock_activity_fold,
        ledger::trigger::current_actor,
        dormant::explain_risk,
        dormant::risk_level_of,
        dormant::peer_score
    ]
);
extension_sql_file!(
    "../sql/anomaly.sql",
    name = "anomaly",
    requires = [
        "ledger",
        "alerts",
        "dormant",
        anomaly::if_train,
        anomaly::train_event_model,
        anomaly::if_score,
        anomaly::if_explain,
        anomaly::if_assess,
        anomaly::events::event_value_key,
        anomaly::events::anomaly_scores_on_insert,
        anomaly::models::invalidate_model_cache
    ]
);
extension_sql_file!(
    "../sql/ai.sql",
    name = "ai",
    requires = [
        "tenancy",
        "dormant",
        "ledger",
        ai::redact,
        ai::embed_texts,
        ai::check_redaction_pattern,
        ai::tasks::complete_json,
        ai::tasks::run_ai_task,
        ai::tasks::check_ai_task
    ]
);

extension_sql_file!(
    "../sql/search.sql",
    name = "search",
    requires = ["ai", "protection", "dormant"]
);

extension_sql_file!(
    "../sql/insights.sql",
    name = "insights",
    requires = ["search"]
);

extension_sql_file!(
    "../sql/webhooks.sql",
    name = "webhooks",
    requires = [
        "alerts",
        "insights",
        webhooks::check_webhook_url,
        webhooks::shown_url,
        jobs::wake_worker_at_commit
    ]
);

extension_sql_file!(
    "../sql/jobs.sql",
    name = "jobs",
    requires = [
        "webhooks",
        "anomaly",
        jobs::worker_states,
        jobs::worker_progress,
        ai::guard::breaker_states
    ]
);

// Every function's EXECUTE privilege, in one place (the README's privilege table mirrors it).
extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Errors never carry a Rust backtrace in DETAIL, whatever RUST_BACKTRACE the server was
    // started with: they would show internals to every client. (Read once, before any capture.)
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    gucs::init();
    ledger::head::init();
    ledger::guard::init();
    pg::cache::init();
    ai::guard::init();
    jobs::init();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}

#[cfg(any(test, feature = "pg_test"))]
pub mod testing;
