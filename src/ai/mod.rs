//! The AI layer: PII redaction (`custos.redact`), embeddings (`custos.embed`, `embed_batch`) and
//! validated JSON answers of registered tasks (`custos.complete_json`), from the built-in offline
//! models or from Amazon Bedrock and OpenAI-compatible servers. The pure logic (redaction, wire
//! formats, signing, retry and budget arithmetic, schemas) is in custos_core::ai; this module
//! adds the tenant's rules and settings, the calls and their log.
//!
//! - `config`: the tenant's `ai.*` settings, credentials, allowed endpoints
//! - `providers`: the Provider trait and its three implementations
//! - `transport`, `http`: retries, breakers and deadlines around each HTTP exchange
//! - `guard`: breakers and budgets shared by every backend
//! - `calls`: one remote call from refusal checks to its custos.ai_calls row
//! - `batch`: embeddings for the background workers, prepared, called and logged in three steps
//! - `tasks`: registered tasks and custos.complete_json
#![deny(unsafe_code)]

pub mod batch;
mod calls;
mod config;
pub mod guard;
pub(crate) mod http;
mod providers;
pub mod tasks;
mod transport;

use crate::error::raise;
use custos_core::ai::redact::{self, Rules};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::*;

/// The largest text custos redacts or embeds (1 MiB): beyond it, 54000.
const MAX_TEXT_BYTES: usize = 1 << 20;

fn check_text<'a>(text: Option<&'a str>, what: &str) -> &'a str {
    let Some(text) = text else {
        raise(
            ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{what} cannot be NULL"),
            None,
        )
    };
    if text.len() > MAX_TEXT_BYTES {
        raise(
            ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "{what} has {} bytes, more than the {MAX_TEXT_BYTES} custos accepts",
                text.len()
            ),
            Some("split the text into smaller pieces"),
        );
    }
    text
}

/// The current tenant's redaction rules: its patterns (custos.ai_redaction_patterns) and the
/// identities the text may name (user ids of custos.identities; e-mails are caught as e-mails).
/// Read with the caller's rights (row-level security limits both to the tenant) and a pinned
/// search_path (a caller's schema cannot supply the `=` that would empty them).
fn tenant_rules(texts: &[&str]) -> Rules {
    let Some(tenant) = crate::tenancy::current_tenant_id() else {
        return Rules::default();
    };
    let tenant = pgrx::Uuid::from_bytes(*tenant.as_bytes());
    // The words of all texts, once each: one index probe per candidate for a whole batch.
    let words = redact::identity_candidates(texts);
    crate::pg::backend::with_pinned_search_path(|| Spi::connect(|client| {
        let patterns = client
            .select(
                "SELECT pattern FROM custos.ai_redaction_patterns WHERE tenant_id = $1 ORDER BY id",
                None,
                &[tenant.into()],
            )?
            .filter_map(|r| r.get::<String>(1).ok().flatten())
            .filter_map(|p| regex::Regex::new(&p).ok())
            .collect();
        let known = if words.is_empty() {
            Vec::new()
        } else {
            client
                .select(
                    "SELECT i.user_id FROM custos.identities i WHERE i.tenant_id = $1 AND i.user_id = ANY ($2)",
                    None,
                    &[tenant.into(), words.into()],
                )?
                .filter_map(|r| r.get::<String>(1).ok().flatten())
                .collect()
        };
        Ok::<_, pgrx::spi::Error>(Rules { patterns, known })
    }))
    .unwrap_or_else(|e| raise(ERRCODE_INTERNAL_ERROR, format!("reading redaction rules: {e}"), None))
}

/// The text as it may leave the database: every PII value replaced by a placeholder.
pub fn redacted(text: &str) -> String {
    redact::redact(text, &tenant_rules(&[text])).text
}

/// `custos.redact`: `input` with e-mails, phone numbers, IP addresses, card numbers, IBANs, SSNs,
/// keys and tokens, the tenant's own patterns and the user ids it knows replaced by placeholders.
#[pg_extern(stable, parallel_restricted)]
fn redact(input: Option<&str>) -> String {
    redacted(check_text(input, "input"))
}

/// `custos_internal.check_redaction_pattern`: raises 22023 unless `pattern` compiles.
#[pg_extern(immutable, parallel_safe)]
fn check_redaction_pattern(pattern: &str) {
    if let Err(e) = regex::Regex::new(pattern) {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid redaction pattern: {e}"),
            Some("patterns use Rust regex syntax (no look-around or back-references)"),
        );
    }
}

/// `custos_internal.embed_texts`: each text redacted, then embedded by `model` (default: the
/// tenant's `ai.embedding_model`), in order. Local models compute here and log nothing; remote
/// ones are held against the budget, called once per batch where the provider takes batches, and
/// logged in custos.ai_calls.
#[pg_extern(volatile, parallel_unsafe)]
fn embed_texts(
    inputs: Option<Vec<Option<String>>>,
    model: Option<&str>,
) -> SetOfIterator<'static, Vec<f32>> {
    let inputs = inputs.unwrap_or_else(|| {
        raise(
            ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "inputs cannot be NULL",
            None,
        )
    });
    let cfg = config::AiConfig::current();
    let model = model.map_or_else(|| cfg.embedding_model.clone(), str::to_string);
    let texts: Vec<&str> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| check_text(text.as_deref(), &format!("input {}", i + 1)))
        .collect();
    if let Some(i) = texts
        .iter()
        .position(|t| !t.chars().any(char::is_alphanumeric))
    {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("input {} has no word to embed", i + 1),
            Some("an embedding needs at least one letter or digit"),
        );
    }
    // The tenant's rules are read once for the whole batch.
    let rules = tenant_rules(&texts);
    let redacted: Vec<String> = texts
        .iter()
        .map(|t| redact::redact(t, &rules).text)
        .collect();
    let sent: Vec<&str> = redacted.iter().map(String::as_str).collect();
    let provider = providers::for_model(&cfg, &model);
    let provider_name = provider.kind().name();
    if provider.kind() == config::ProviderKind::Local {
        let mut unused = transport::Transport::new(&cfg, config::ProviderKind::Local);
        let out = provider
            .embed(&mut unused, &model, None, &sent)
            .unwrap_or_else(|e| {
                raise(
                    ERRCODE_INVALID_PARAMETER_VALUE,
                    e.message().to_string(),
                    None,
                )
            });
        return SetOfIterator::new(out.vectors);
    }
    let tenant = require_tenant(
        &format!("calls to {provider_name} need a tenant: they are budgeted and logged per tenant"),
        "call custos.set_tenant(uuid) first, or use a local-* model",
    );
    let estimate: u64 = sent
        .iter()
        .map(|t| custos_core::ai::provider::estimate_tokens(t))
        .sum();
    let operation = providers::Operation::Embed {
        dims: cfg.embedding_dims,
    };
    let result = calls::remote(
        &cfg,
        provider.as_ref(),
        &model,
        &operation,
        estimate,
        0,
        |t| {
            provider
                .embed(t, &model, cfg.embedding_dims, &sent)
                .map(|e| {
                    let tokens = e.tokens;
                    (e.vectors, tokens, 0)
                })
        },
    );
    let joined = sent.join("\n");
    let (vectors, usage, error) = match result {
        Ok((v, usage)) => (Some(v), usage, None),
        Err((e, usage)) => (None, usage, Some(e)),
    };
    if let Some(e) = &error {
        calls::raise_call_error(e);
    }
    calls::log(&calls::CallRecord {
        tenant,
        provider: provider_name,
        model: &model,
        operation: "embed",
        task: None,
        usage: &usage,
        outcome: "ok",
        error: None,
        sent: &joined,
        excerpt: &joined,
    });
    SetOfIterator::new(vectors.unwrap_or_default())
}

/// The current tenant, which AI calls need (tasks, budgets, breakers and the log are the
/// tenant's); without one, 42501 with `message` and `hint`.
fn require_tenant(message: &str, hint: &str) -> [u8; 16] {
    crate::tenancy::current_tenant_id()
        .map(|t| *t.as_bytes())
        .unwrap_or_else(|| raise(ERRCODE_INSUFFICIENT_PRIVILEGE, message, Some(hint)))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("db_tests.rs");
}
