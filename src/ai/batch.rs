//! Embeddings for a background worker, in three steps so that no transaction stays open while a
//! provider answers: [`prepare`] inside a transaction (the tenant's settings and redaction rules,
//! the price, the budget hold; local models compute right there), [`Batch::perform`] outside any
//! transaction (the provider call, through the same transport, retries and breaker as every
//! call), then [`Done::log`] in the transaction that writes the vectors.

use super::calls::{self, CallRecord, Prepared, Usage};
use super::config::{AiConfig, ProviderKind};
use super::providers::{self, Operation, Provider};
use super::transport::{CallError, Transport};
use custos_core::ai::provider::estimate_tokens;
use custos_core::ai::redact;

/// A batch made ready to embed.
pub struct Batch {
    cfg: AiConfig,
    provider: Box<dyn Provider>,
    pub model: String,
    sent: Vec<String>,
    state: State,
}

enum State {
    /// A local model embedded it while it was prepared.
    Embedded(Vec<Vec<f32>>),
    /// A remote call, checked and held against the budget.
    Ready(Prepared),
    /// Refused before any call (a model the provider lacks, a text with no word).
    Refused(String),
    /// Not now: the tenant's budget is spent, or too many calls are in flight (53xxx).
    Deferred(String),
}

/// What became of a batch.
pub enum Outcome {
    Vectors(Vec<Vec<f32>>),
    Failed {
        message: String,
        /// The provider (or custos) refused the request: retrying it as it is cannot help.
        refused: bool,
        /// A call was made (an open breaker or a refusal before sending spends no attempt).
        counted: bool,
    },
}

/// A performed batch: its outcome, and the call's log row if a remote call answered.
pub struct Done {
    pub outcome: Outcome,
    log: Option<(String, Usage, &'static str)>,
    tenant: Option<[u8; 16]>,
    pub model: String,
}

/// Prepares `texts` for the current tenant's embedding model (inside a transaction, tenant set).
/// Raises only where any embedding would (the settings cannot be read).
pub fn prepare(texts: &[String]) -> Batch {
    let cfg = AiConfig::current();
    let model = cfg.embedding_model.clone();
    let provider = providers::for_model(&cfg, &model);
    let refused = |cfg: AiConfig, provider: Box<dyn Provider>, message: String| Batch {
        cfg,
        provider,
        model: model.clone(),
        sent: Vec::new(),
        state: State::Refused(message),
    };
    if let Some(i) = texts
        .iter()
        .position(|t| !t.chars().any(char::is_alphanumeric))
    {
        return refused(
            cfg,
            provider,
            format!("text {} has no word to embed", i + 1),
        );
    }
    let views: Vec<&str> = texts.iter().map(String::as_str).collect();
    let rules = super::tenant_rules(&views);
    let sent: Vec<String> = views
        .iter()
        .map(|t| redact::redact(t, &rules).text)
        .collect();
    let refs: Vec<&str> = sent.iter().map(String::as_str).collect();
    if provider.kind() == ProviderKind::Local {
        let mut unused = Transport::new(&cfg, ProviderKind::Local);
        let state = match provider.embed(&mut unused, &model, None, &refs) {
            Ok(e) => State::Embedded(e.vectors),
            Err(e) => State::Refused(e.message().to_string()),
        };
        return Batch {
            cfg,
            provider,
            model,
            sent,
            state,
        };
    }
    let estimate: u64 = refs.iter().map(|t| estimate_tokens(t)).sum();
    let operation = Operation::Embed {
        dims: cfg.embedding_dims,
    };
    // A refusal here (an exhausted budget, a model the provider lacks) is the batch's outcome,
    // not the worker's end: caught, with whatever it started rolled back.
    let prepared = crate::pg::subxact::catching(|| {
        calls::prepare(&cfg, provider.as_ref(), &model, &operation, estimate, 0)
    });
    let state = match prepared {
        Ok(Ok(p)) => State::Ready(p),
        Ok(Err(e)) => State::Refused(e.message().to_string()),
        Err(caught) if caught.sqlstate.starts_with("53") => State::Deferred(caught.message),
        Err(caught) => State::Refused(caught.message),
    };
    Batch {
        cfg,
        provider,
        model,
        sent,
        state,
    }
}

impl Batch {
    /// The remote provider this batch will call, if any (for rate limits).
    pub fn remote_provider(&self) -> Option<ProviderKind> {
        matches!(self.state, State::Ready(_)).then(|| self.provider.kind())
    }

    /// Performs the batch: the provider call of a remote one, outside any transaction.
    pub fn perform(self) -> Done {
        let Batch {
            cfg,
            provider,
            model,
            sent,
            state,
        } = self;
        let tenant = cfg.tenant;
        let (outcome, log) = match state {
            State::Embedded(vectors) => (Outcome::Vectors(vectors), None),
            State::Refused(message) => (
                Outcome::Failed {
                    message,
                    refused: true,
                    counted: false,
                },
                None,
            ),
            // Waits like an unavailable provider: delayed, never failed for it.
            State::Deferred(message) => (
                Outcome::Failed {
                    message,
                    refused: false,
                    counted: false,
                },
                None,
            ),
            State::Ready(prepared) => {
                let refs: Vec<&str> = sent.iter().map(String::as_str).collect();
                let dims = cfg.embedding_dims;
                let result = calls::perform(&cfg, provider.as_ref(), prepared, |t| {
                    provider
                        .embed(t, &model, dims, &refs)
                        .map(|e| (e.vectors, e.tokens, 0))
                });
                match result {
                    Ok((vectors, usage)) => (
                        Outcome::Vectors(vectors),
                        Some((sent.join("\n"), usage, provider.kind().name())),
                    ),
                    Err((e, usage)) => (
                        Outcome::Failed {
                            refused: !matches!(e, CallError::Unavailable(_)),
                            counted: usage.attempts > 0,
                            message: e.message().to_string(),
                        },
                        None,
                    ),
                }
            }
        };
        Done {
            outcome,
            log,
            tenant,
            model,
        }
    }
}

impl Done {
    /// Writes the call's custos.ai_calls row (inside the transaction that stores the vectors).
    pub fn log(&self) {
        let (Some((joined, usage, provider)), Some(tenant)) = (&self.log, self.tenant) else {
            return;
        };
        calls::log(&CallRecord {
            tenant,
            provider,
            model: &self.model,
            operation: "embed",
            task: None,
            usage,
            outcome: "ok",
            error: None,
            sent: joined,
            excerpt: joined,
        });
    }
}
