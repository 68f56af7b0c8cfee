//! A provider call's way out: the breaker admits it, each attempt is sent under the call's
//! deadline, transient failures are retried (at most `ai.max_retries` times, full-jitter
//! backoff, Retry-After honoured) and the outcome is recorded in the breaker.

use super::config::{AiConfig, ProviderKind};
use super::guard;
use super::http::{self, Failure, Request, Response};
use custos_core::ai::resilience::{backoff_ms, retry_after_ms, retryable, Outcome};
use std::time::{Duration, Instant};

/// First retry waits up to this long, doubling each time, never beyond the cap.
const BACKOFF_BASE_MS: u64 = 250;
const BACKOFF_CAP_MS: u64 = 4_000;

/// Why a provider call failed. Messages carry the provider's error class and message, never
/// what was sent (prompts, keys, headers).
#[derive(Debug)]
pub enum CallError {
    /// Transient and given up on: retries spent, the deadline near, or the breaker open.
    Unavailable(String),
    /// The provider refused the request itself (credentials, validation, unknown model):
    /// retrying would not help.
    Refused(String),
    /// custos refused to send it: a model or option the provider does not have.
    Invalid(String),
}

impl CallError {
    pub fn message(&self) -> &str {
        match self {
            CallError::Unavailable(m) | CallError::Refused(m) | CallError::Invalid(m) => m,
        }
    }
}

pub struct Transport<'a> {
    cfg: &'a AiConfig,
    provider: ProviderKind,
    deadline: Instant,
    /// HTTP requests sent, retries included.
    pub attempts: u32,
}

impl<'a> Transport<'a> {
    /// A call's transport: its deadline is `ai.timeout_ms` from now, or sooner if the
    /// statement's own timeout comes first.
    pub fn new(cfg: &'a AiConfig, provider: ProviderKind) -> Transport<'a> {
        let mut budget = Duration::from_millis(cfg.timeout_ms);
        if let Some(left) = crate::pg::backend::statement_time_left() {
            budget = budget.min(left);
        }
        Transport {
            cfg,
            provider,
            deadline: Instant::now() + budget,
            attempts: 0,
        }
    }

    /// Sends the request `build` makes (called again for each attempt: signatures carry the
    /// time); `error_of` reads a provider's error class and message from a failed answer.
    pub fn send(
        &mut self,
        build: impl Fn() -> Request,
        error_of: impl Fn(&Response) -> (Option<String>, String),
    ) -> Result<Response, CallError> {
        let provider = self.provider.name();
        if let Err(retry_at) = guard::admit(self.cfg, self.provider) {
            let wait_s = ((retry_at - guard::now_ms()).max(0) + 999) / 1000;
            return Err(CallError::Unavailable(format!(
                "the circuit breaker of {provider} is open for this tenant after repeated failures; it lets a call through again in {wait_s} s"
            )));
        }
        let mut retries = 0;
        loop {
            self.attempts += 1;
            let (outcome, detail, retry_after, answer) = match http::send(build(), self.deadline) {
                Ok(r) if (200..300).contains(&r.status) => {
                    guard::record(self.cfg, self.provider, true);
                    return Ok(r);
                }
                Ok(r) => {
                    let (kind, message) = error_of(&r);
                    let detail = format!(
                        "{provider} answered HTTP {}{}{}",
                        r.status,
                        kind.as_deref().map(|k| format!(" {k}")).unwrap_or_default(),
                        if message.is_empty() {
                            String::new()
                        } else {
                            format!(": {message}")
                        }
                    );
                    // A server's wait is honoured up to a minute (the deadline caps it anyway).
                    let retry_after = r
                        .retry_after
                        .as_deref()
                        .and_then(retry_after_ms)
                        .map(|ms| ms.min(60_000));
                    (
                        Outcome::Status(r.status, kind),
                        detail,
                        retry_after,
                        Some(r),
                    )
                }
                Err(Failure::Timeout) => (
                    Outcome::Timeout,
                    format!("{provider} did not answer in time"),
                    None,
                    None,
                ),
                Err(Failure::Connection(why)) => (
                    Outcome::Connection,
                    format!("{provider} could not be reached: {why}"),
                    None,
                    None,
                ),
            };
            drop(answer);
            if !retryable(&outcome) {
                // The request itself is wrong: the provider is not failing, the breaker stays.
                return Err(CallError::Refused(detail));
            }
            let wait = Duration::from_millis(backoff_ms(
                retries + 1,
                BACKOFF_BASE_MS,
                BACKOFF_CAP_MS,
                jitter(),
                retry_after,
            ));
            let in_time = Instant::now() + wait < self.deadline;
            if retries >= self.cfg.max_retries || !in_time {
                guard::record(self.cfg, self.provider, false);
                let tries = self.attempts;
                return Err(CallError::Unavailable(format!(
                    "{detail} (after {tries} attempt{})",
                    if tries == 1 { "" } else { "s" }
                )));
            }
            retries += 1;
            http::pause(wait);
        }
    }
}

/// A uniform draw in [0, 1) for the backoff's jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if !crate::pg::backend::strong_random(&mut bytes) {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
