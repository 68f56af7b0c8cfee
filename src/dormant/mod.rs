//! Dormant identity detection: which accounts of a tenant have gone unused, and how risky each
//! one is. The score is in `risk.rs` (pure); this module keeps each identity's derived columns
//! current and exposes the scoring to SQL (`sql/dormant.sql` holds the tables and the report).

#![deny(unsafe_code)]

pub use custos_core::dormant::risk;

use crate::error::raise;
use crate::pg::tuple::TriggerRow;
use crate::tenancy::TenantCache;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use risk::Factors;

const USECS_PER_DAY: i64 = 86_400_000_000;
/// PostgreSQL timestamps count from 2000-01-01; Unix time from 1970-01-01.
const PG_EPOCH_UNIX_SECONDS: f64 = 946_684_800.0;
/// Clocks of identity providers drift; anything later than this ahead of ours is refused.
const FUTURE_TOLERANCE_USECS: i64 = 5 * 60 * 1_000_000;

/// A tenant's dormant.* settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub threshold_days: i64,
    pub grace_days: i64,
    pub count_never_active: bool,
    pub privileged_threshold_days: i64,
    pub service_threshold_days: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            threshold_days: 30,
            grace_days: 30,
            count_never_active: true,
            privileged_threshold_days: 0,
            service_threshold_days: 0,
        }
    }
}

impl Policy {
    /// The threshold that applies to an account: the strictest of those its kind has.
    pub fn threshold_for(&self, privileged: bool, service: bool) -> i64 {
        let mut t = self.threshold_days;
        if privileged && self.privileged_threshold_days > 0 {
            t = self.privileged_threshold_days;
        }
        if service && self.service_threshold_days > 0 {
            t = if privileged && self.privileged_threshold_days > 0 {
                t.min(self.service_threshold_days)
            } else {
                self.service_threshold_days
            };
        }
        t
    }

    /// (days that count, when the account turns dormant), from its activity anchor; None: never.
    pub fn dormancy(
        &self,
        privileged: bool,
        service: bool,
        last_active: Option<i64>,
        created: i64,
    ) -> (i64, Option<i64>) {
        match last_active {
            Some(at) => {
                let days = self.threshold_for(privileged, service);
                (days, Some(at + days * USECS_PER_DAY))
            }
            None if self.count_never_active => (
                self.grace_days,
                Some(created + self.grace_days * USECS_PER_DAY),
            ),
            None => (self.grace_days, None),
        }
    }
}

thread_local! {
    static POLICIES: TenantCache<Policy> = TenantCache::new();
}

fn policy_for(tenant: &[u8; 16]) -> Policy {
    POLICIES.with(|c| c.get_or_load(tenant, || load_policy(tenant)))
}

fn load_policy(tenant: &[u8; 16]) -> Policy {
    let rows = crate::tenancy::settings_for(tenant, "dormant.");
    let mut p = Policy::default();
    for (key, value) in rows {
        let n = value.parse::<i64>().ok();
        match key.as_str() {
            "dormant.threshold_days" => p.threshold_days = n.unwrap_or(p.threshold_days),
            "dormant.grace_days" => p.grace_days = n.unwrap_or(p.grace_days),
            "dormant.privileged_threshold_days" => p.privileged_threshold_days = n.unwrap_or(0),
            "dormant.service_threshold_days" => p.service_threshold_days = n.unwrap_or(0),
            "dormant.count_never_active" => p.count_never_active = value != "false",
            _ => {}
        }
    }
    p
}

/// The columns of custos.identities the derive trigger reads and writes, with their types.
const DERIVE_COLUMNS: [(&str, pg_sys::Oid); 13] = [
    ("tenant_id", pg_sys::UUIDOID),
    ("last_active_at", pg_sys::TIMESTAMPTZOID),
    ("created_at", pg_sys::TIMESTAMPTZOID),
    ("status", pg_sys::TEXTOID),
    ("peer_score", pg_sys::FLOAT4OID),
    ("is_privileged", pg_sys::BOOLOID),
    ("is_service_account", pg_sys::BOOLOID),
    ("mfa_enabled", pg_sys::BOOLOID),
    ("has_valid_credentials", pg_sys::BOOLOID),
    ("threshold_days", pg_sys::INT4OID),
    ("risk_static", pg_sys::FLOAT4OID),
    ("dormant_at", pg_sys::TIMESTAMPTZOID),
    ("risk_key", pg_sys::FLOAT8OID),
];

thread_local! {
    static DERIVE_LAYOUT: crate::pg::tuple::Layout<13> = const { crate::pg::tuple::Layout::new() };
}

/// Refuses -infinity (it would make every later report of the tenant fail) and times ahead of
/// ours (+infinity included).
fn check_time(column: &str, at: i64, now: i64) {
    if at == i64::MIN {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{column} of an identity cannot be -infinity"),
            Some("leave last_active_at out (or null) for an account that was never active"),
        );
    }
    refuse_future(column, at, now);
}

fn refuse_future(column: &str, at: i64, now: i64) {
    if at > now + FUTURE_TOLERANCE_USECS {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{column} of an identity cannot be in the future"),
            Some("send times as the identity provider recorded them, with their time zone"),
        );
    }
}

#[pg_trigger]
fn identities_derive<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, PgTriggerError> {
    // Indices into DERIVE_COLUMNS.
    const TENANT: usize = 0;
    const LAST_ACTIVE: usize = 1;
    const CREATED: usize = 2;
    const STATUS: usize = 3;
    const PEER: usize = 4;
    const PRIVILEGED: usize = 5;
    const SERVICE: usize = 6;
    const MFA: usize = 7;
    const CREDENTIALS: usize = 8;
    const THRESHOLD: usize = 9;
    const STATIC: usize = 10;
    const DORMANT_AT: usize = 11;
    const RISK_KEY: usize = 12;
    let mut row = DERIVE_LAYOUT.with(|l| {
        TriggerRow::of(
            trigger,
            l,
            c"identities",
            "custos_internal.identities_derive",
            &DERIVE_COLUMNS,
        )
    });
    let now = crate::pg::backend::now();
    let last_active = row.time(LAST_ACTIVE);
    let created = row.time(CREATED).unwrap_or(now);
    if let Some(at) = last_active {
        check_time("last_active_at", at, now);
    }
    check_time("created_at", created, now);
    let Some(tenant) = row.uuid(TENANT) else {
        raise(
            PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
            "an identity needs a tenant",
            Some("call custos.set_tenant(uuid) first"),
        )
    };
    let status = row.text(STATUS).unwrap_or_else(|| "active".to_owned());
    let factors = Factors {
        privileged: row.flag(PRIVILEGED),
        never_active: last_active.is_none(),
        service_account: row.flag(SERVICE),
        mfa_enabled: row.flag(MFA),
        valid_credentials: row.flag(CREDENTIALS),
        disabled: matches!(status.as_str(), "suspended" | "deprovisioned"),
        peer_score: row.real(PEER).unwrap_or(0.0) as f64,
    };
    let policy = policy_for(&tenant);
    let (threshold, dormant_at) = policy.dormancy(
        factors.privileged,
        factors.service_account,
        last_active,
        created,
    );
    let static_score = risk::static_score(&factors);
    row.set_int4(THRESHOLD, threshold as i32);
    row.set_real(STATIC, static_score as f32);
    row.set_time(DORMANT_AT, dormant_at);
    row.set_float8(
        RISK_KEY,
        dormant_at.map(|at| risk::risk_key(static_score, at as f64 / 1e6 + PG_EPOCH_UNIX_SECONDS)),
    );
    Ok(Some(row.form("identity")))
}

/// Takes the tenant's activity-fold lock until the end of the transaction: one fold at a time.
#[pg_extern(volatile, parallel_unsafe)]
fn lock_activity_fold(tenant: pgrx::Uuid) {
    crate::pg::locks::lock_until_end(tenant.as_bytes(), crate::pg::locks::LockKind::ActivityFold);
}

/// The score, level and reasons of one account at the moment of the call.
#[allow(clippy::too_many_arguments)]
#[pg_extern(immutable, parallel_safe)]
fn explain_risk(
    is_privileged: bool,
    never_active: bool,
    is_service_account: bool,
    mfa_enabled: bool,
    has_valid_credentials: bool,
    status: &str,
    peer_score: f32,
    days_since_activity: f64,
    threshold_days: i32,
) -> TableIterator<
    'static,
    (
        name!(risk_score, f32),
        name!(risk_level, String),
        name!(reasons, Vec<String>),
    ),
> {
    let f = Factors {
        privileged: is_privileged,
        never_active,
        service_account: is_service_account,
        mfa_enabled,
        valid_credentials: has_valid_credentials,
        disabled: matches!(status, "suspended" | "deprovisioned"),
        peer_score: peer_score as f64,
    };
    let days_past = days_since_activity - threshold_days as f64;
    let score = risk::score(risk::raw_at(risk::static_score(&f), days_past));
    let days_inactive = (!never_active).then_some(days_since_activity.floor() as i64);
    TableIterator::once((
        score as f32,
        risk::level(score).to_owned(),
        risk::reasons(&f, days_inactive, days_past, threshold_days as i64),
    ))
}

#[pg_extern(immutable, parallel_safe)]
fn risk_level_of(raw: f64) -> &'static str {
    risk::level(risk::score(raw))
}

#[pg_extern(immutable, parallel_safe)]
fn risk_level_bounds(
) -> TableIterator<'static, (name!(medium, f64), name!(high, f64), name!(critical, f64))> {
    let [m, h, c] = risk::level_bounds();
    TableIterator::once((m, h, c))
}

#[pg_extern(immutable, parallel_safe)]
fn peer_score(active_share: f64, peers: i64) -> f32 {
    risk::peer_score(active_share, peers) as f32
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn thresholds_per_kind() {
        let p = Policy {
            privileged_threshold_days: 14,
            service_threshold_days: 90,
            ..Policy::default()
        };
        assert_eq!(p.threshold_for(false, false), 30);
        assert_eq!(p.threshold_for(true, false), 14);
        assert_eq!(p.threshold_for(false, true), 90);
        assert_eq!(p.threshold_for(true, true), 14, "the strictest applies");
        assert_eq!(
            Policy::default().threshold_for(true, true),
            30,
            "0 means the general threshold"
        );
    }

    #[test]
    fn never_active_accounts_use_the_grace_period() {
        let p = Policy {
            grace_days: 7,
            ..Policy::default()
        };
        assert_eq!(
            p.dormancy(false, false, None, 0),
            (7, Some(7 * USECS_PER_DAY))
        );
        assert_eq!(
            p.dormancy(false, false, Some(USECS_PER_DAY), 0),
            (30, Some(31 * USECS_PER_DAY))
        );
        let not_counted = Policy {
            count_never_active: false,
            ..p
        };
        assert_eq!(not_counted.dormancy(false, false, None, 0).1, None);
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
#[allow(non_snake_case)]
mod tests {
    include!("db_tests.rs");
}
