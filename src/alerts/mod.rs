//! Alerts custos raises into `custos.alerts` (a broken chain now; anomalies, budgets and dormant
//! privileged accounts later), and their triage (`custos.set_alert_status`, in `sql/alerts.sql`).
#![deny(unsafe_code)]

use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

/// One alert: what raised it, how bad it is, a title and details.
pub struct Alert {
    pub source: &'static str,
    pub severity: &'static str,
    pub title: String,
    pub details: serde_json::Value,
}

/// Records an alert for `tenant`. A hot standby cannot write: there a WARNING says the alert is
/// the primary's to raise, and the caller's verdict alone reports what was found.
pub fn raise(tenant: &[u8; 16], alert: &Alert) {
    if crate::pg::recovery_in_progress() {
        pgrx::warning!(
            "custos: {} for tenant {}; no alert recorded on a standby (run it on the primary to raise one)",
            alert.title,
            uuid::Uuid::from_bytes(*tenant)
        );
        return;
    }
    Spi::run_with_args(
        "INSERT INTO custos.alerts (tenant_id, source, severity, title, details) VALUES ($1, $2, $3, $4, $5)",
        &[
            pgrx::Uuid::from_bytes(*tenant).into(),
            alert.source.into(),
            alert.severity.into(),
            alert.title.as_str().into(),
            JsonB(alert.details.clone()).into(),
        ],
    )
    .unwrap_or_else(|e| {
        crate::error::raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("could not record an alert: {e}"),
            None,
        )
    });
}
