//! The dormant-identity risk score, as plain functions: documented, deterministic, explained.
//!
//! ```text
//! raw   = 1.0 privileged + 0.6 never active + 0.5 service account + 0.4 no MFA
//!       + 0.5 credentials still valid (+0.3 more when the account is suspended or deprovisioned)
//!       + peer score (0 to 0.6: share of the account's department peers who are active, in 0.2 steps)
//!       + 0.01 per day past the account's threshold
//! score = 1 - exp(-raw / 2)          (0..1, strictly increasing in raw)
//! level = low < 0.40 <= medium < 0.65 <= high < 0.85 <= critical
//! ```
//!
//! The time term is linear, so the order of two accounts never depends on the clock: an account
//! stores `risk_key = static - 0.01 * (day its dormancy began)`, and ordering by it is ordering by
//! `raw` at any moment. Only the displayed score, level and days are computed at query time.

pub const PER_DAY_PAST: f64 = 0.01;
pub const SECONDS_PER_DAY: f64 = 86_400.0;

/// What the score looks at, besides time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Factors {
    pub privileged: bool,
    pub never_active: bool,
    pub service_account: bool,
    pub mfa_enabled: bool,
    pub valid_credentials: bool,
    /// suspended or deprovisioned
    pub disabled: bool,
    /// 0, 0.2, 0.4 or 0.6
    pub peer_score: f64,
}

/// One named contribution to the score, for the reasons an analyst reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub weight: f64,
    pub reason: String,
}

pub fn static_contributions(f: &Factors) -> Vec<Contribution> {
    let mut out = Vec::new();
    let mut add = |on: bool, weight: f64, reason: &str| {
        if on && weight > 0.0 {
            out.push(Contribution {
                weight,
                reason: reason.to_owned(),
            });
        }
    };
    add(f.privileged, 1.0, "privileged account");
    add(f.never_active, 0.6, "never signed in");
    add(f.service_account, 0.5, "service account");
    add(!f.mfa_enabled, 0.4, "no MFA");
    add(f.valid_credentials, 0.5, "credentials still valid");
    add(
        f.valid_credentials && f.disabled,
        0.3,
        "valid credentials on a suspended or deprovisioned account",
    );
    add(
        f.peer_score > 0.0,
        f.peer_score,
        &format!(
            "unusual among its department: {:.0}% of peers are active",
            f.peer_score / 0.6 * 100.0
        ),
    );
    out
}

pub fn static_score(f: &Factors) -> f64 {
    static_contributions(f).iter().map(|c| c.weight).sum()
}

/// Peer score from the share (0..1) of an account's department peers who are active: the more of
/// them are active, the more unusual an inactive account is. Bucketed so that small changes among
/// peers do not rewrite every row. Fewer than 5 peers say nothing.
pub fn peer_score(active_share: f64, peers: i64) -> f64 {
    if peers < 5 || !active_share.is_finite() {
        return 0.0;
    }
    ((active_share.clamp(0.0, 1.0) * 3.0).floor() / 3.0 * 0.6 * 10.0).round() / 10.0
}

/// The clock-free ordering key: `raw(now) = risk_key + 0.01 * now_in_days` for every account.
pub fn risk_key(static_score: f64, dormant_since_epoch_seconds: f64) -> f64 {
    static_score - PER_DAY_PAST * dormant_since_epoch_seconds / SECONDS_PER_DAY
}

pub fn raw_at(static_score: f64, days_past_threshold: f64) -> f64 {
    static_score + PER_DAY_PAST * days_past_threshold.max(0.0)
}

pub fn score(raw: f64) -> f64 {
    1.0 - (-raw.max(0.0) / 2.0).exp()
}

pub fn level(score: f64) -> &'static str {
    match score {
        s if s >= 0.85 => "critical",
        s if s >= 0.65 => "high",
        s if s >= 0.40 => "medium",
        _ => "low",
    }
}

pub const LEVELS: [&str; 4] = ["low", "medium", "high", "critical"];

/// The raw scores at which medium, high and critical begin: the inverse of [`score`] at the
/// level edges, so SQL can compare raw values without calling back for every row.
pub fn level_bounds() -> [f64; 3] {
    [0.40f64, 0.65, 0.85].map(|s| -2.0 * (1.0 - s).ln())
}

/// Reasons, largest contribution first, each with its weight.
pub fn reasons(
    f: &Factors,
    days_inactive: Option<i64>,
    days_past_threshold: f64,
    threshold_days: i64,
) -> Vec<String> {
    let mut all = static_contributions(f);
    let overdue = PER_DAY_PAST * days_past_threshold.max(0.0);
    let idle = match days_inactive {
        Some(d) => format!(
            "inactive {d} days, {} past the {threshold_days}-day threshold",
            days_past_threshold.floor() as i64
        ),
        None => format!(
            "never active, {} days past the {threshold_days}-day grace period",
            days_past_threshold.floor() as i64
        ),
    };
    all.push(Contribution {
        weight: overdue,
        reason: idle,
    });
    all.sort_by(|a, b| {
        b.weight
            .total_cmp(&a.weight)
            .then_with(|| a.reason.cmp(&b.reason))
    });
    all.into_iter()
        .map(|c| format!("{} (+{:.2})", c.reason, c.weight))
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn weights_add_up() {
        let f = Factors {
            privileged: true,
            never_active: true,
            service_account: true,
            valid_credentials: true,
            disabled: true,
            peer_score: 0.6,
            ..Default::default()
        };
        // 1.0 + 0.6 + 0.5 + 0.4 (no MFA) + 0.5 + 0.3 + 0.6
        assert!((static_score(&f) - 3.9).abs() < 1e-9);
        assert_eq!(
            static_score(&Factors {
                mfa_enabled: true,
                ..Default::default()
            }),
            0.0
        );
    }

    #[test]
    fn levels_have_documented_edges() {
        assert_eq!(level(0.0), "low");
        assert_eq!(level(0.3999), "low");
        assert_eq!(level(0.40), "medium");
        assert_eq!(level(0.65), "high");
        assert_eq!(level(0.85), "critical");
        assert_eq!(level(score(0.0)), "low");
        assert!(score(100.0) <= 1.0 && score(100.0) > 0.99);
    }

    #[test]
    fn level_bounds_agree_with_level() {
        let [medium, high, critical] = level_bounds();
        for (raw, expected) in [
            (medium - 1e-9, "low"),
            (medium + 1e-9, "medium"),
            (high - 1e-9, "medium"),
            (high + 1e-9, "high"),
            (critical - 1e-9, "high"),
            (critical + 1e-9, "critical"),
        ] {
            assert_eq!(level(score(raw)), expected, "raw {raw}");
        }
    }

    #[test]
    fn peer_score_buckets() {
        assert_eq!(peer_score(1.0, 10), 0.6);
        assert_eq!(peer_score(0.9, 10), 0.4);
        assert_eq!(peer_score(0.5, 10), 0.2);
        assert_eq!(peer_score(0.2, 10), 0.0);
        assert_eq!(peer_score(1.0, 4), 0.0, "too few peers");
        assert_eq!(peer_score(f64::NAN, 10), 0.0);
    }

    #[test]
    fn reasons_are_ordered_and_weighted() {
        let f = Factors {
            privileged: true,
            mfa_enabled: true,
            ..Default::default()
        };
        let r = reasons(&f, Some(75), 45.0, 30);
        assert_eq!(
            r,
            [
                "privileged account (+1.00)",
                "inactive 75 days, 45 past the 30-day threshold (+0.45)"
            ]
        );
        let never = reasons(
            &Factors {
                never_active: true,
                mfa_enabled: true,
                ..Default::default()
            },
            None,
            10.0,
            30,
        );
        assert_eq!(never[0], "never signed in (+0.60)");
        assert!(never[1].starts_with("never active, 10 days past the 30-day grace period"));
    }

    proptest! {
        // The promise behind the index: ordering by risk_key is ordering by raw score, at any time.
        #[test]
        fn risk_key_orders_like_the_score_at_any_time(
            s1 in 0.0f64..4.0, s2 in 0.0f64..4.0,
            ago1 in 0.0f64..3.2e7, ago2 in 0.0f64..3.2e7, now in 1.5e9f64..4.0e9,
        ) {
            let (d1, d2) = (now - ago1, now - ago2);
            let raw = |s: f64, d: f64| s + PER_DAY_PAST * (now - d) / SECONDS_PER_DAY;
            let (k1, k2) = (risk_key(s1, d1), risk_key(s2, d2));
            let (r1, r2) = (raw(s1, d1), raw(s2, d2));
            prop_assert!((k1 - k2 - (r1 - r2)).abs() < 1e-6);
            // The displayed score never inverts the order (it saturates only far beyond a year).
            if r1 > r2 + 1e-6 { prop_assert!(score(r1) >= score(r2)); }
        }

        #[test]
        fn score_is_within_bounds(raw in -10.0f64..1.0e6) {
            let s = score(raw);
            prop_assert!((0.0..1.0).contains(&s) || s == 1.0);
            prop_assert!(LEVELS.contains(&level(s)));
        }
    }
}
