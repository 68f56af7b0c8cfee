//! The arithmetic of custos' background work: which databases the workers serve, how long a
//! failed item waits, and the per-provider request rate.

/// The database names of `custos.worker_databases`: comma-separated, trimmed, each once, in the
/// order given; names longer than PostgreSQL's 63 bytes are reported, not truncated.
pub fn worker_databases(setting: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for name in setting.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name.len() > 63 {
            return Err(format!(
                "database name \"{}…\" is longer than 63 bytes",
                name.chars().take(20).collect::<String>()
            ));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// A token bucket: `per_minute` requests a minute on average, bursts of at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    pub per_minute: u32,
    pub burst: u32,
    tokens: f64,
    at_ms: i64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(per_minute: u32, burst: u32, now_ms: i64) -> TokenBucket {
        TokenBucket {
            per_minute,
            burst: burst.max(1),
            tokens: f64::from(burst.max(1)),
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = (now_ms - self.at_ms).max(0) as f64;
        self.tokens = (self.tokens + elapsed * f64::from(self.per_minute) / 60_000.0)
            .min(f64::from(self.burst));
        self.at_ms = now_ms.max(self.at_ms);
    }

    /// Takes one token, or says how many milliseconds until one is there. A rate of 0 means no
    /// limit.
    pub fn take(&mut self, now_ms: i64) -> Result<(), i64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err((missing * 60_000.0 / f64::from(self.per_minute)).ceil() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn databases_are_trimmed_deduplicated_and_checked() {
        assert_eq!(
            worker_databases(" app, audit ,app,,").unwrap(),
            vec!["app".to_string(), "audit".to_string()]
        );
        assert!(worker_databases("").unwrap().is_empty());
        assert!(worker_databases(&"x".repeat(64)).is_err());
    }

    #[test]
    fn the_bucket_allows_its_burst_then_its_rate() {
        let mut b = TokenBucket::new(60, 2, 0);
        assert!(b.take(0).is_ok());
        assert!(b.take(0).is_ok());
        assert_eq!(b.take(0), Err(1000));
        assert_eq!(b.take(500), Err(500));
        assert!(b.take(1000).is_ok());
        let mut free = TokenBucket::new(0, 1, 0);
        assert!((0..1000).all(|_| free.take(0).is_ok()));
    }

    proptest! {
        #[test]
        fn no_more_than_burst_plus_rate_is_granted(rate in 1u32..600, burst in 1u32..20,
                                                   steps in proptest::collection::vec(0i64..5000, 1..200)) {
            let mut b = TokenBucket::new(rate, burst, 0);
            let mut now = 0i64;
            let mut granted = 0u64;
            for s in steps {
                now += s;
                if b.take(now).is_ok() { granted += 1; }
            }
            let allowed = u64::from(burst) + (now as u64 * u64::from(rate)).div_ceil(60_000);
            prop_assert!(granted <= allowed, "{granted} > {allowed}");
        }
    }
}
