//! The AI layer, first step: PII redaction (`custos.redact`) and the built-in offline embedder
//! (`custos.embed`, `custos.embed_batch`, provider `local`). The pure logic is in
//! custos_core::ai; this module adds the tenant's rules (its own patterns and the identities it
//! knows) and the SQL surface.
#![deny(unsafe_code)]

use crate::error::raise;
use custos_core::ai::embed;
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
/// Read with the caller's rights: row-level security limits both to the tenant.
fn tenant_rules(texts: &[&str]) -> Rules {
    let Some(tenant) = crate::tenancy::current_tenant_id() else {
        return Rules::default();
    };
    let tenant = pgrx::Uuid::from_bytes(*tenant.as_bytes());
    // The words of all texts, once each: one index probe per distinct word for a whole batch.
    let mut words: Vec<String> = texts
        .iter()
        .flat_map(|text| text.split(|c: char| c.is_whitespace() || ",;()[]{}<>\"'".contains(c)))
        .map(|w| w.trim_matches(|c: char| c == '.' || c == ':' || c == '!' || c == '?'))
        .filter(|w| w.len() >= 3 && w.len() <= 256)
        .map(str::to_string)
        .collect();
    words.sort_unstable();
    words.dedup();
    Spi::connect(|client| {
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
    })
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

/// The dimensions of a local model name: `local-lexical-<dims>`.
fn local_dims(model: &str) -> Option<usize> {
    let dims: usize = model.strip_prefix("local-lexical-")?.parse().ok()?;
    [256, 384, 512, 768, 1024, 1536]
        .contains(&dims)
        .then_some(dims)
}

/// The embedding model to use: the argument, else the tenant's `ai.embedding_model`.
fn embedding_model(model: Option<&str>) -> String {
    if let Some(m) = model {
        return m.to_string();
    }
    let value = crate::tenancy::current_tenant_id()
        .and_then(|t| crate::tenancy::setting_for(t.as_bytes(), "ai.embedding_model"))
        .unwrap_or_else(|| "\"local-lexical-384\"".to_string());
    serde_json::from_str::<String>(&value).unwrap_or_else(|_| "local-lexical-384".to_string())
}

/// `custos_internal.embed_texts`: each text redacted, then embedded by the local model, in
/// order. (Providers that call out, Bedrock and OpenAI-compatible ones, come with issue 21's
/// next step; `ai.provider` accepts only `local` until then.)
#[pg_extern(stable, parallel_restricted)]
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
    let model = embedding_model(model);
    let Some(dims) = local_dims(&model) else {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown embedding model \"{model}\""),
            Some("the built-in models are local-lexical-256, -384, -512, -768, -1024 and -1536"),
        )
    };
    let texts: Vec<&str> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| check_text(text.as_deref(), &format!("input {}", i + 1)))
        .collect();
    // The tenant's rules are read once for the whole batch.
    let rules = tenant_rules(&texts);
    let vectors: Vec<Vec<f32>> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            embed::embed(&redact::redact(text, &rules).text, dims).unwrap_or_else(|| {
                raise(
                    ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("input {} has no word to embed", i + 1),
                    Some("an embedding needs at least one letter or digit"),
                )
            })
        })
        .collect();
    SetOfIterator::new(vectors)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("db_tests.rs");
}
