//! Notifications to chat tools and webhooks: where they may go (URL rules against server-side
//! request forgery), what they carry (Slack blocks, a Microsoft Teams adaptive card, a generic
//! JSON document) and how a receiver checks a generic one (HMAC-SHA256 over timestamp and body).

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

/// The kinds of integration custos delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Slack,
    Teams,
    Generic,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "slack" => Some(Kind::Slack),
            "teams" => Some(Kind::Teams),
            "generic" => Some(Kind::Generic),
            _ => None,
        }
    }
}

/// What a server lets webhooks reach beyond public https hosts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allowance {
    /// Plain http (`custos.webhook_allow_http`).
    pub http: bool,
    /// Loopback and private networks (`custos.webhook_allow_private`): internal services.
    pub private: bool,
}

/// Hosts that answer with cloud credentials or instance data, by name.
const METADATA_HOSTS: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// The IPv4 address an IPv6 address carries, if it carries one: IPv4-mapped (::ffff:0:0/96),
/// IPv4-compatible (::/96), NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0, _, _] if !v6.is_loopback() && !v6.is_unspecified() => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        _ => None,
    }
}

/// Whether an address is never a webhook's: link-local (169.254/16 holds the cloud metadata
/// services), the clouds' other metadata and host addresses, "this network", reserved,
/// benchmarking, multicast and broadcast ranges.
fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0
                // IETF protocol assignments (Oracle Cloud's metadata is 192.0.0.192).
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                // Benchmarking (198.18/15) and reserved (240/4).
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
                // Alibaba Cloud's metadata service, Azure's host (WireServer).
                || v4 == Ipv4Addr::new(100, 100, 100, 200)
                || v4 == Ipv4Addr::new(168, 63, 129, 16)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return forbidden(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            (first & 0xffc0) == 0xfe80
                // Site-local (deprecated, still routed by some stacks).
                || (first & 0xffc0) == 0xfec0
                || v6.is_unspecified()
                || v6.is_multicast()
                // AWS' and Google Cloud's IPv6 metadata addresses.
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6 == Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

/// Whether an address belongs to this machine or a private network (reachable only with
/// [`Allowance::private`]).
fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                // Carrier-grade NAT (100.64/10).
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return private(IpAddr::V4(v4));
            }
            v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00
        }
    }
}

/// Why a resolved address may not be sent to, if it may not.
pub fn address_refusal(ip: IpAddr, allowance: Allowance) -> Option<String> {
    if forbidden(ip) {
        return Some(format!(
            "{ip} is a link-local, metadata or non-unicast address"
        ));
    }
    if private(ip) && !allowance.private {
        return Some(format!(
            "{ip} is a loopback or private address (custos.webhook_allow_private is off)"
        ));
    }
    None
}

/// Checks a webhook URL when it is configured: https (http only if allowed), no credentials in
/// it, a host that is not a metadata service or a link-local address, and not a private one
/// unless allowed. Names are checked again, resolved, when a notification is sent.
pub fn check_url(raw: &str, allowance: Allowance) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if allowance.http => {}
        "http" => {
            return Err(
                "webhooks go over https (plain http needs custos.webhook_allow_http)".into(),
            )
        }
        other => return Err(format!("scheme {other} is not https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a URL must not carry a user name or password".into());
    }
    match url.host() {
        None => Err("the URL has no host".into()),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if METADATA_HOSTS.contains(&name.as_str()) {
                return Err(format!("{name} is a cloud metadata service"));
            }
            if (name == "localhost" || name.ends_with(".localhost")) && !allowance.private {
                return Err(
                    "localhost is this machine (custos.webhook_allow_private is off)".into(),
                );
            }
            Ok(url)
        }
        Some(Host::Ipv4(v4)) => match address_refusal(IpAddr::V4(v4), allowance) {
            Some(why) => Err(why),
            None => Ok(url),
        },
        Some(Host::Ipv6(v6)) => match address_refusal(IpAddr::V6(v6), allowance) {
            Some(why) => Err(why),
            None => Ok(url),
        },
    }
}

/// A URL as it may be shown or logged: scheme, host and port. Slack's and Teams' webhook URLs are
/// secrets in their path.
pub fn shown(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}/…", u.scheme()),
            (Some(h), None) => format!("{}://{h}/…", u.scheme()),
            _ => "(no host)".into(),
        },
        Err(_) => "(not a URL)".into(),
    }
}

/// The alert a notification is about, as custos stores it.
#[derive(Debug, Clone)]
pub struct Alert<'a> {
    pub id: i64,
    pub tenant: &'a str,
    pub source: &'a str,
    pub severity: &'a str,
    pub title: &'a str,
    pub created_at: &'a str,
    pub details: &'a Value,
}

/// Ranks of severities, for an integration's minimum.
pub fn severity_rank(s: &str) -> Option<u8> {
    ["info", "low", "medium", "high", "critical"]
        .iter()
        .position(|x| *x == s)
        .map(|p| p as u8)
}

fn emoji(severity: &str) -> &'static str {
    match severity {
        "critical" => ":rotating_light:",
        "high" => ":red_circle:",
        "medium" => ":large_orange_circle:",
        "low" => ":large_yellow_circle:",
        _ => ":information_source:",
    }
}

/// The details worth a line each in a chat message (at most 8, values shortened).
fn detail_lines(details: &Value) -> Vec<(String, String)> {
    let Some(map) = details.as_object() else {
        return Vec::new();
    };
    map.iter()
        .take(8)
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let short: String = text.chars().take(200).collect();
            (k.clone(), short)
        })
        .collect()
}

/// Text as Slack's mrkdwn and Teams' markdown show it literally: `&`, `<` and `>` escaped, so an
/// event's text cannot mention `<!channel>` or make a link that reads as something else.
fn literal(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The body of a notification for `kind`. Chat messages show every value literally.
pub fn payload(kind: Kind, alert: &Alert) -> Value {
    if kind != Kind::Generic {
        let details = match alert.details {
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (literal(k), Value::String(literal(&text)))
                    })
                    .collect(),
            ),
            _ => Value::Null,
        };
        let (source, title) = (literal(alert.source), literal(alert.title));
        let escaped = Alert {
            source: &source,
            title: &title,
            details: &details,
            ..alert.clone()
        };
        return chat_payload(kind, &escaped);
    }
    json!({
        "type": "custos.alert",
        "alert": {
            "id": alert.id,
            "tenant_id": alert.tenant,
            "source": alert.source,
            "severity": alert.severity,
            "title": alert.title,
            "created_at": alert.created_at,
            "details": alert.details,
        }
    })
}

fn chat_payload(kind: Kind, alert: &Alert) -> Value {
    let headline = format!("[{}] {}", alert.severity.to_uppercase(), alert.title);
    match kind {
        Kind::Slack => {
            let mut fields: Vec<Value> = vec![
                json!({"type": "mrkdwn", "text": format!("*Severity*\n{}", alert.severity)}),
                json!({"type": "mrkdwn", "text": format!("*Source*\n{}", alert.source)}),
                json!({"type": "mrkdwn", "text": format!("*Tenant*\n{}", alert.tenant)}),
                json!({"type": "mrkdwn", "text": format!("*Raised*\n{}", alert.created_at)}),
            ];
            for (k, v) in detail_lines(alert.details) {
                if fields.len() >= 10 {
                    break;
                }
                fields.push(json!({"type": "mrkdwn", "text": format!("*{k}*\n{v}")}));
            }
            json!({
                "text": headline,
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": headline.chars().take(150).collect::<String>()}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": format!("{} {}", emoji(alert.severity), alert.title)}},
                    {"type": "section", "fields": fields},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("custos alert {}", alert.id)}]}
                ]
            })
        }
        Kind::Teams => {
            let mut facts = vec![
                json!({"title": "Severity", "value": alert.severity}),
                json!({"title": "Source", "value": alert.source}),
                json!({"title": "Tenant", "value": alert.tenant}),
                json!({"title": "Raised", "value": alert.created_at}),
            ];
            facts.extend(
                detail_lines(alert.details)
                    .into_iter()
                    .map(|(k, v)| json!({"title": k, "value": v})),
            );
            json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": [
                            {"type": "TextBlock", "text": headline, "weight": "Bolder", "size": "Medium", "wrap": true,
                             "color": if matches!(alert.severity, "high" | "critical") { "Attention" } else { "Default" }},
                            {"type": "FactSet", "facts": facts},
                            {"type": "TextBlock", "text": format!("custos alert {}", alert.id), "isSubtle": true, "size": "Small"}
                        ]
                    }
                }]
            })
        }
        Kind::Generic => Value::Null,
    }
}

/// The signature of a generic webhook's body, sent as `X-Custos-Signature: sha256=<hex>` with
/// `X-Custos-Timestamp: <unix seconds>`: HMAC-SHA256 with the integration's secret over
/// `<timestamp>.<body>` (the receiver refuses old timestamps, so a captured request cannot be
/// replayed later).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `signature` is the one of `body` at `timestamp` (in constant time).
pub fn verify_signature(secret: &[u8], timestamp: i64, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// Seconds before attempt `attempt` (1-based: the wait after the first failure is the base),
/// doubling up to `cap`.
pub fn backoff_seconds(attempt: u32, base: u64, cap: u64) -> u64 {
    let doublings = attempt.saturating_sub(1).min(30);
    base.saturating_mul(1u64 << doublings).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OPEN: Allowance = Allowance {
        http: false,
        private: false,
    };

    #[test]
    fn only_public_https_urls_pass_by_default() {
        assert!(check_url("https://hooks.slack.com/services/T/B/x", OPEN).is_ok());
        for bad in [
            "http://hooks.example.com/x",
            "ftp://example.com",
            "https://user:pw@example.com/",
            "https://169.254.169.254/latest/meta-data",
            "https://[fe80::1]/",
            "https://metadata.google.internal/computeMetadata",
            "https://127.0.0.1:8080/",
            "https://10.1.2.3/",
            "https://[::1]/",
            "https://localhost/",
            "https://[::ffff:169.254.169.254]/",
            "https://100.100.100.200/",
            "https://0.0.0.0/",
            "not a url",
        ] {
            assert!(check_url(bad, OPEN).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_hidden_in_ipv6_or_reserved_ranges_are_refused() {
        let all = Allowance {
            http: true,
            private: true,
        };
        for bad in [
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:a9fe:a9fe::1]/",
            "http://[::a9fe:a9fe]/",
            "http://[fd20:ce::254]/",
            "http://[fec0::1]/",
            "http://0.1.2.3/",
            "http://192.0.0.192/",
            "http://198.18.0.1/",
            "http://240.0.0.1/",
            "http://168.63.129.16/",
        ] {
            assert!(check_url(bad, all).is_err(), "{bad}");
        }
        assert!(
            check_url("http://[64:ff9b::a00:1]/", OPEN).is_err(),
            "NAT64 of 10.0.0.1"
        );
        assert!(check_url("https://[2606:4700::1111]/", OPEN).is_ok());
    }

    #[test]
    fn chat_messages_show_values_literally() {
        let d = json!({"note": "<!channel> <https://evil.example|bank>"});
        let mut a = alert(&d);
        a.title = "x <@U123> & y";
        let s = payload(Kind::Slack, &a).to_string();
        assert!(!s.contains("<!channel>") && !s.contains("<@U123>"), "{s}");
        assert!(s.contains("&lt;!channel&gt;"));
        let t = payload(Kind::Teams, &a).to_string();
        assert!(!t.contains("<https://evil"));
        let g = payload(Kind::Generic, &a);
        assert_eq!(
            g["alert"]["title"], "x <@U123> & y",
            "generic JSON keeps the value"
        );
    }

    #[test]
    fn allowances_open_http_and_private_networks_but_never_metadata() {
        let all = Allowance {
            http: true,
            private: true,
        };
        assert!(check_url("http://127.0.0.1:9000/hook", all).is_ok());
        assert!(check_url("http://localhost:9000/hook", all).is_ok());
        assert!(check_url("http://169.254.169.254/", all).is_err());
        assert!(check_url(
            "http://127.0.0.1:9000/hook",
            Allowance {
                http: true,
                private: false
            }
        )
        .is_err());
    }

    #[test]
    fn shown_urls_keep_no_path() {
        assert_eq!(
            shown("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            shown("http://127.0.0.1:9000/x?k=1"),
            "http://127.0.0.1:9000/…"
        );
    }

    fn alert(details: &Value) -> Alert<'_> {
        Alert {
            id: 7,
            tenant: "a1",
            source: "anomaly",
            severity: "high",
            title: "Mass export",
            created_at: "2026-12-03T00:00:00Z",
            details,
        }
    }

    #[test]
    fn payloads_have_each_tool_s_shape() {
        let d = json!({"rows": 5000});
        let s = payload(Kind::Slack, &alert(&d));
        assert_eq!(s["blocks"][0]["type"], "header");
        assert_eq!(s["text"], "[HIGH] Mass export");
        let t = payload(Kind::Teams, &alert(&d));
        assert_eq!(
            t["attachments"][0]["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(t["attachments"][0]["content"]["type"], "AdaptiveCard");
        let g = payload(Kind::Generic, &alert(&d));
        assert_eq!(g["alert"]["details"]["rows"], 5000);
    }

    #[test]
    fn signatures_verify_and_bind_the_timestamp() {
        let sig = signature(b"k", 1700000000, b"{}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify_signature(b"k", 1700000000, b"{}", &sig));
        assert!(!verify_signature(b"k", 1700000001, b"{}", &sig));
        assert!(!verify_signature(b"other", 1700000000, b"{}", &sig));
        assert!(!verify_signature(b"k", 1700000000, b"{ }", &sig));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff_seconds(1, 10, 3600), 10);
        assert_eq!(backoff_seconds(2, 10, 3600), 20);
        assert_eq!(backoff_seconds(9, 10, 3600), 2560);
        assert_eq!(backoff_seconds(10, 10, 3600), 3600);
        assert_eq!(backoff_seconds(u32::MAX, 10, 3600), 3600);
    }

    proptest! {
        #[test]
        fn check_url_never_panics(s in ".{0,200}") {
            let _ = check_url(&s, OPEN);
            let _ = shown(&s);
        }

        #[test]
        fn no_link_local_v4_address_ever_passes(b in 0u8..=255, c in 0u8..=255) {
            let url = format!("http://169.254.{b}.{c}/x");
            let all = Allowance { http: true, private: true };
            prop_assert!(check_url(&url, all).is_err());
        }
    }
}
