//! Webhooks (sql/webhooks.sql): integrations checked when configured, and the outbox delivered by
//! the workers outside any transaction. Payloads, URL rules and signatures are
//! custos_core::webhooks; this module adds the settings, the HTTP exchange and the bookkeeping.

use crate::ai::http::{self, Failure, Request};
use crate::error::raise;
use crate::gucs;
use crate::jobs::board::{self, Activity};
use crate::jobs::worker::{in_transaction, report};
use custos_core::webhooks::{self as rules, Allowance, Kind};
use pgrx::prelude::*;
use pgrx::JsonB;
use pgrx::PgSqlErrorCode::*;
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

/// What the server's settings let webhooks reach.
fn allowance() -> Allowance {
    Allowance {
        http: gucs::WEBHOOK_ALLOW_HTTP.get(),
        private: gucs::WEBHOOK_ALLOW_PRIVATE.get(),
    }
}

/// `custos_internal.check_webhook_url`: raises 22023 unless `url` may receive notifications.
#[pg_extern(stable, parallel_safe)]
fn check_webhook_url(url: Option<&str>) {
    let Some(url) = url else {
        raise(ERRCODE_NULL_VALUE_NOT_ALLOWED, "url cannot be NULL", None)
    };
    if let Err(why) = rules::check_url(url, allowance()) {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("custos does not send notifications to {}: {why}", rules::shown(url)),
            Some("an https URL of a public host; a superuser allows plain http or private networks with custos.webhook_allow_http and custos.webhook_allow_private"),
        );
    }
}

/// `custos_internal.shown_url`: a URL as custos shows it (scheme, host and port: a Slack or Teams
/// URL's path is its credential).
#[pg_extern(immutable, parallel_safe)]
fn shown_url(url: &str) -> String {
    rules::shown(url)
}

/// A claimed notification.
struct Claim {
    id: i64,
    topic: String,
    kind: String,
    url: Option<String>,
    secret: Option<Vec<u8>>,
    subject: serde_json::Value,
    tenant: String,
}

/// How a delivery ended.
struct Delivery {
    delivered: bool,
    /// A refusal that retrying cannot change (an invalid URL, a 4xx other than 408 and 429).
    permanent: bool,
    error: Option<String>,
}

fn failed(permanent: bool, error: String) -> Delivery {
    Delivery {
        delivered: false,
        permanent,
        error: Some(error),
    }
}

/// Refuses a host that resolves to an address webhooks may not reach (checked again at each
/// delivery: a name may point elsewhere since it was configured). A name that does not resolve
/// now is refused too, for this attempt. (The HTTP client resolves the name once more to connect:
/// a name that changes its answer within that instant is not caught; see the README.)
fn resolved_refusal(url: &url::Url, allowance: Allowance) -> Option<String> {
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(443);
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let ips: Vec<_> = addrs.map(|a| a.ip()).collect();
            if ips.is_empty() {
                return Some("the host has no address".into());
            }
            ips.into_iter()
                .find_map(|ip| rules::address_refusal(ip, allowance))
        }
        Err(_) => Some("the host name did not resolve".into()),
    }
}

fn body_of(c: &Claim) -> Vec<u8> {
    if c.topic == "checkpoint" {
        return c.subject.to_string().into_bytes();
    }
    let s = &c.subject;
    let empty = serde_json::Value::Object(Default::default());
    let text = |k: &str| s.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let alert = rules::Alert {
        id: s.get("id").and_then(serde_json::Value::as_i64).unwrap_or(0),
        tenant: &c.tenant,
        source: text("source"),
        severity: text("severity"),
        title: text("title"),
        created_at: text("created_at"),
        details: s.get("details").unwrap_or(&empty),
    };
    let kind = Kind::parse(&c.kind).unwrap_or(Kind::Generic);
    let mut body = rules::payload(kind, &alert);
    if kind == Kind::Generic {
        if c.topic == "summary" {
            body["type"] = "custos.summary".into();
        }
        // In the signed body, so that a replay cannot pass as another delivery.
        body["delivery_id"] = c.id.into();
    }
    body.to_string().into_bytes()
}

/// Sends one notification (no transaction open). Errors name the host at most.
fn deliver(c: &Claim) -> Delivery {
    let Some(raw) = c.url.as_deref().filter(|u| !u.is_empty()) else {
        return failed(
            true,
            "no URL to deliver to (custos.checkpoint_url is empty)".into(),
        );
    };
    let shown = rules::shown(raw);
    let allowance = allowance();
    let url = match rules::check_url(raw, allowance) {
        Ok(u) => u,
        Err(why) => return failed(true, format!("{shown}: {why}")),
    };
    if let Some(why) = resolved_refusal(&url, allowance) {
        // Possibly passing (DNS): retried, and dead after the attempts like any failure.
        return failed(false, format!("{shown}: {why}"));
    }
    let body = body_of(c);
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("x-custos-event".to_string(), c.topic.clone()),
        // Deliveries are at least once: receivers drop a notification id they have seen.
        ("x-custos-delivery".to_string(), c.id.to_string()),
    ];
    if let Some(secret) = &c.secret {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        headers.push(("x-custos-timestamp".into(), timestamp.to_string()));
        headers.push((
            "x-custos-signature".into(),
            rules::signature(secret, timestamp, &body),
        ));
    }
    let deadline =
        Instant::now() + Duration::from_millis(gucs::WEBHOOK_TIMEOUT_MS.get().max(100) as u64);
    let request = Request {
        url: url.as_str().to_string(),
        headers,
        body,
    };
    match http::send(request, deadline) {
        Ok(r) if (200..300).contains(&r.status) => Delivery {
            delivered: true,
            permanent: false,
            error: None,
        },
        Ok(r) => {
            let retryable = r.status == 408 || r.status == 429 || r.status >= 500;
            failed(!retryable, format!("{shown} answered HTTP {}", r.status))
        }
        Err(Failure::Timeout) => failed(false, format!("{shown} did not answer in time")),
        Err(Failure::Connection(why)) => failed(false, format!("{shown}: {why}")),
    }
}

fn claim(batch: i32) -> Vec<Claim> {
    Spi::connect_mut(|c| {
        let rows = c.update(
            "SELECT id, tenant_id::text, topic, kind, url, secret, subject
               FROM custos_internal.claim_notifications($1, 120)",
            None,
            &[batch.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push(Claim {
                id: r.get::<i64>(1)?.unwrap_or(0),
                tenant: r.get::<String>(2)?.unwrap_or_default(),
                topic: r.get::<String>(3)?.unwrap_or_default(),
                kind: r.get::<String>(4)?.unwrap_or_default(),
                url: r.get::<String>(5)?,
                secret: r.get::<Vec<u8>>(6)?,
                subject: r.get::<JsonB>(7)?.map_or(serde_json::Value::Null, |j| j.0),
            });
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| pgrx::error!("claiming notifications: {e}"))
}

/// One batch of due notifications, delivered; true if there was one.
pub fn deliver_once(slot: usize) -> bool {
    // A few at a time: each may take custos.webhook_timeout_ms, and the lease is 120 s.
    let claimed = in_transaction(|| claim(5)).unwrap_or_default();
    if claimed.is_empty() {
        return false;
    }
    board::set_activity(slot, Activity::Delivering, None, 0, claimed.len() as i64);
    report(&format!("delivering {} notifications", claimed.len()));
    // No transaction is open here.
    let outcomes: Vec<(i64, Delivery)> = claimed.iter().map(|c| (c.id, deliver(c))).collect();
    let delivered = outcomes.iter().filter(|(_, d)| d.delivered).count() as u64;
    let _ = in_transaction(|| {
        for (id, d) in &outcomes {
            Spi::run_with_args(
                "SELECT custos_internal.notification_done($1, $2, $3, $4)",
                &[
                    (*id).into(),
                    d.delivered.into(),
                    d.permanent.into(),
                    d.error.as_deref().into(),
                ],
            )
            .unwrap_or_else(|e| pgrx::error!("recording a delivery: {e}"));
        }
    });
    board::count(slot, 0, delivered, outcomes.len() as u64 - delivered);
    true
}
