//! How custos treats a provider that fails: which errors are retried, how long to wait (full
//! jitter, Retry-After honoured), when a circuit breaker opens and lets a probe through, and
//! budget arithmetic. Pure: the clock and the random draw are arguments, so every rule is tested
//! without a network or a database.

/// What a provider call ended with, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    /// An HTTP status with the provider's error type, if its body named one.
    Status(u16, Option<String>),
    Timeout,
    /// The connection failed before any answer (refused, reset, DNS).
    Connection,
}

/// Whether an outcome is worth another attempt: throttling, a model still loading, a server
/// error or a timeout. Client errors (400, 401, 403, 404, 413, 422) never are: retrying them
/// only repeats the mistake and spends budget.
pub fn retryable(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Ok => false,
        Outcome::Timeout | Outcome::Connection => true,
        Outcome::Status(status, kind) => {
            matches!(status, 429 | 500 | 502 | 503 | 504)
                || kind.as_deref().is_some_and(|k| {
                    matches!(
                        k,
                        "ThrottlingException"
                            | "ModelNotReadyException"
                            | "ServiceUnavailableException"
                            | "InternalServerException"
                            | "ModelTimeoutException"
                    )
                })
        }
    }
}

/// The wait before retry number `attempt` (1 for the first retry): "full jitter" (AWS
/// Architecture Blog, 2015), uniform in [0, min(cap, base * 2^(attempt - 1))], with `draw`
/// uniform in [0, 1). A server's Retry-After, when given, is a floor.
pub fn backoff_ms(
    attempt: u32,
    base_ms: u64,
    cap_ms: u64,
    draw: f64,
    retry_after_ms: Option<u64>,
) -> u64 {
    let ceiling = base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(30))
        .min(cap_ms);
    let jittered = (ceiling as f64 * draw.clamp(0.0, 1.0)) as u64;
    jittered.max(retry_after_ms.unwrap_or(0))
}

/// A Retry-After header in seconds (the HTTP-date form is not used by the providers custos
/// talks to; it reads as absent).
pub fn retry_after_ms(header: &str) -> Option<u64> {
    header
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| s.saturating_mul(1000))
}

/// A circuit breaker per provider and tenant: after `threshold` consecutive failures it opens for
/// `cool_down_ms`; then one call may probe (half-open): its success closes it, its failure opens
/// it again. A probe that never reports (its backend was cancelled) is replaced by another after
/// one more cool-down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Breaker {
    Closed { failures: u32 },
    Open { until_ms: i64 },
    HalfOpen { probe_until_ms: i64 },
}

impl Breaker {
    pub fn new() -> Breaker {
        Breaker::Closed { failures: 0 }
    }

    /// Whether a call may go out at `now_ms`, and the state to keep (an open breaker whose
    /// cool-down is over lets one probe through).
    pub fn admit(self, now_ms: i64, cool_down_ms: i64) -> (bool, Breaker) {
        let probe = Breaker::HalfOpen {
            probe_until_ms: now_ms.saturating_add(cool_down_ms),
        };
        match self {
            Breaker::Closed { .. } => (true, self),
            Breaker::Open { until_ms } if now_ms >= until_ms => (true, probe),
            Breaker::Open { .. } => (false, self),
            // A probe is out: others wait for its answer, unless it is overdue.
            Breaker::HalfOpen { probe_until_ms } if now_ms >= probe_until_ms => (true, probe),
            Breaker::HalfOpen { .. } => (false, self),
        }
    }

    /// The state after a call's result.
    pub fn record(self, success: bool, now_ms: i64, threshold: u32, cool_down_ms: i64) -> Breaker {
        match (self, success) {
            (_, true) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, false) if failures + 1 < threshold => Breaker::Closed {
                failures: failures + 1,
            },
            (_, false) => Breaker::Open {
                until_ms: now_ms.saturating_add(cool_down_ms),
            },
        }
    }

    /// When a refused call may try again.
    pub fn retry_at_ms(self) -> Option<i64> {
        match self {
            Breaker::Closed { .. } => None,
            Breaker::Open { until_ms } => Some(until_ms),
            Breaker::HalfOpen { probe_until_ms } => Some(probe_until_ms),
        }
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new()
    }
}

/// A call's cost in micro-dollars from its tokens and the model's prices per 1,000 tokens (in
/// micro-dollars), rounded up: budgets never undercount.
pub fn cost_micros(
    tokens_in: u64,
    tokens_out: u64,
    price_in_per_1k: u64,
    price_out_per_1k: u64,
) -> u64 {
    let total = u128::from(tokens_in) * u128::from(price_in_per_1k)
        + u128::from(tokens_out) * u128::from(price_out_per_1k);
    u64::try_from(total.div_ceil(1000)).unwrap_or(u64::MAX)
}

/// Whether a call estimated at `reserve` fits a monthly budget of which `spent` is used and
/// `reserved` held by calls in flight.
pub fn fits_budget(limit: u64, spent: u64, reserved: u64, reserve: u64) -> bool {
    // An overflow is a total beyond any limit.
    spent
        .checked_add(reserved)
        .and_then(|t| t.checked_add(reserve))
        .is_some_and(|total| total <= limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_are_retried() {
        for o in [
            Outcome::Status(429, None),
            Outcome::Status(503, None),
            Outcome::Status(400, Some("ThrottlingException".into())),
            Outcome::Status(424, Some("ModelNotReadyException".into())),
            Outcome::Timeout,
            Outcome::Connection,
        ] {
            assert!(retryable(&o), "{o:?}");
        }
        for o in [
            Outcome::Ok,
            Outcome::Status(400, Some("ValidationException".into())),
            Outcome::Status(403, Some("AccessDeniedException".into())),
            Outcome::Status(404, None),
        ] {
            assert!(!retryable(&o), "{o:?}");
        }
    }

    #[test]
    fn backoff_is_jittered_capped_and_honours_retry_after() {
        assert_eq!(backoff_ms(1, 200, 5000, 0.999_999, None), 199);
        assert_eq!(backoff_ms(2, 200, 5000, 0.5, None), 200);
        assert_eq!(backoff_ms(10, 200, 5000, 0.5, None), 2500);
        assert_eq!(backoff_ms(1, 200, 5000, 0.0, Some(3000)), 3000);
        assert_eq!(retry_after_ms(" 7 "), Some(7000));
        assert_eq!(retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn the_breaker_opens_after_n_failures_and_half_opens_after_its_cool_down() {
        let mut b = Breaker::new();
        for t in 0..3 {
            assert!(b.admit(t, 1000).0);
            b = b.record(false, t, 3, 1000);
        }
        assert_eq!(b, Breaker::Open { until_ms: 1002 });
        assert!(!b.admit(1001, 1000).0);
        assert_eq!(b.retry_at_ms(), Some(1002));
        let (probe, half) = b.admit(1002, 1000);
        assert!(
            probe
                && half
                    == Breaker::HalfOpen {
                        probe_until_ms: 2002
                    }
        );
        assert!(!half.admit(1003, 1000).0, "one probe at a time");
        assert!(half.admit(2002, 1000).0, "an overdue probe is replaced");
        assert_eq!(
            half.record(false, 1010, 3, 1000),
            Breaker::Open { until_ms: 2010 }
        );
        assert_eq!(
            half.record(true, 1010, 3, 1000),
            Breaker::Closed { failures: 0 }
        );
    }

    #[test]
    fn costs_round_up_and_budgets_count_calls_in_flight() {
        assert_eq!(cost_micros(1, 0, 250, 1250), 1);
        assert_eq!(cost_micros(1000, 1000, 250, 1250), 1500);
        assert!(fits_budget(10_000, 6000, 2000, 2000));
        assert!(!fits_budget(10_000, 6000, 2000, 2001));
        assert!(!fits_budget(u64::MAX, u64::MAX, 1, 1));
    }
}
