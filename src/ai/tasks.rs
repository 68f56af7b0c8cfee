//! Registered tasks and `custos.complete_json`: the task's prompt filled with the input and
//! redacted, the answer parsed, its placeholders mapped back, and validated against the task's
//! JSON Schema; an invalid answer gets one repair round, then the rule-based answer stands in,
//! marked as a fallback (in custos.ai_calls, and by a NOTICE).

use super::calls::{self, CallRecord, Usage};
use super::config::{AiConfig, ProviderKind};
use super::providers::{self, Prompt};
use super::transport::CallError;
use crate::error::raise;
use custos_core::ai::provider::estimate_tokens;
use custos_core::ai::redact::{self, Kind};
use custos_core::ai::tasks::{self, AnswerSchema};
use pgrx::prelude::*;
use pgrx::JsonB;
use pgrx::PgSqlErrorCode::*;
use serde_json::Value;

/// The largest input document of a task (1 MiB as JSON text).
const MAX_INPUT_BYTES: usize = 1 << 20;

/// Separates the system prompt from the user's in the one text that is redacted, so both share
/// one set of placeholders. No pattern matches the record separator.
const SEPARATOR: char = '\u{1e}';

struct Task {
    name: String,
    version: i32,
    system_prompt: String,
    template: String,
    schema: Value,
    model: Option<String>,
    max_tokens: i32,
    temperature: f64,
}

/// The task the current tenant runs under `name`: its own latest version, else the shared one.
fn load_task(name: &str) -> Task {
    let task = Spi::connect(|client| {
        let mut rows = client.select(
            "SELECT name, version, system_prompt, prompt_template, answer_schema, model, max_tokens, temperature
               FROM custos.ai_tasks
              WHERE name = $1 AND active
              ORDER BY tenant_id IS NULL, version DESC
              LIMIT 1",
            None,
            &[name.into()],
        )?;
        Ok::<_, pgrx::spi::Error>(rows.next().map(|r| Task {
            name: r.get::<String>(1).ok().flatten().unwrap_or_default(),
            version: r.get::<i32>(2).ok().flatten().unwrap_or(0),
            system_prompt: r.get::<String>(3).ok().flatten().unwrap_or_default(),
            template: r.get::<String>(4).ok().flatten().unwrap_or_default(),
            schema: r.get::<JsonB>(5).ok().flatten().map_or(Value::Null, |j| j.0),
            model: r.get::<String>(6).ok().flatten(),
            max_tokens: r.get::<i32>(7).ok().flatten().unwrap_or(1024),
            temperature: r.get::<f64>(8).ok().flatten().unwrap_or(0.0),
        }))
    })
    .unwrap_or_else(|e| raise(ERRCODE_INTERNAL_ERROR, format!("reading AI task \"{name}\": {e}"), None));
    task.unwrap_or_else(|| {
        raise(
            ERRCODE_UNDEFINED_OBJECT,
            format!("AI task \"{name}\" does not exist"),
            Some("custos.ai_tasks lists the tasks this tenant can run; custos.register_ai_task adds one"),
        )
    })
}

/// Every string of `v` with the placeholders of `mapping` put back.
fn restore_strings(v: Value, mapping: &[(String, Kind, String)]) -> Value {
    match v {
        Value::String(s) => Value::String(redact::restore(&s, mapping)),
        Value::Array(a) => {
            Value::Array(a.into_iter().map(|x| restore_strings(x, mapping)).collect())
        }
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, x)| (k, restore_strings(x, mapping)))
                .collect(),
        ),
        other => other,
    }
}

/// How a task's answer came about.
enum Verdict {
    Valid(Value),
    /// The answer's errors, and its text as received (redacted).
    Invalid(Vec<String>, String),
}

fn judge(schema: &AnswerSchema, text: &str, mapping: &[(String, Kind, String)]) -> Verdict {
    match tasks::extract_json(text) {
        None => Verdict::Invalid(
            vec!["/: the answer is not a JSON object".into()],
            text.to_string(),
        ),
        Some(v) => {
            let restored = restore_strings(v, mapping);
            let errors = schema.errors(&restored);
            if errors.is_empty() {
                Verdict::Valid(restored)
            } else {
                Verdict::Invalid(errors, text.to_string())
            }
        }
    }
}

/// `custos.complete_json`: runs task `task` on `input` and returns its schema-valid answer.
#[pg_extern(volatile, parallel_unsafe)]
fn complete_json(task: Option<&str>, input: Option<JsonB>) -> JsonB {
    let name =
        task.unwrap_or_else(|| raise(ERRCODE_NULL_VALUE_NOT_ALLOWED, "task cannot be NULL", None));
    let input = input
        .map(|j| j.0)
        .unwrap_or_else(|| raise(ERRCODE_NULL_VALUE_NOT_ALLOWED, "input cannot be NULL", None));
    let input_text = input.to_string();
    if input_text.len() > MAX_INPUT_BYTES {
        raise(
            ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "the input has {} bytes as JSON, more than the {MAX_INPUT_BYTES} custos sends",
                input_text.len()
            ),
            Some("pass a smaller document, for example fewer events"),
        );
    }
    let tenant = crate::tenancy::current_tenant_id()
        .map(|t| *t.as_bytes())
        .unwrap_or_else(|| {
            raise(
                ERRCODE_INSUFFICIENT_PRIVILEGE,
                "custos.complete_json needs a tenant: tasks, budgets and the log are the tenant's",
                Some("call custos.set_tenant(uuid) first"),
            )
        });
    let cfg = AiConfig::current();
    let task = load_task(name);
    let schema = AnswerSchema::compile(&task.schema).unwrap_or_else(|e| {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("AI task \"{name}\" has an invalid answer schema: {e}"),
            None,
        )
    });
    let model = task.model.clone().unwrap_or_else(|| cfg.chat_model.clone());
    let provider = providers::for_model(&cfg, &model);
    let provider_name = provider.kind().name();

    // One redaction for both prompts: the same value gets the same placeholder in either.
    let system = tasks::system_prompt(&task.system_prompt, schema.schema());
    let user = tasks::render(&task.template, &input);
    let texts = [system.as_str(), user.as_str()];
    let rules = super::tenant_rules(&texts);
    let red = redact::redact(&format!("{system}{SEPARATOR}{user}"), &rules);
    let (system_sent, user_sent) = red.text.split_once(SEPARATOR).unwrap_or((&red.text, ""));
    let sent = red.text.replace(SEPARATOR, "\n");
    let prompt = Prompt {
        system: system_sent,
        user: user_sent,
        schema: schema.schema(),
        input: &input,
        max_tokens: task.max_tokens.max(1) as u32,
        temperature: task.temperature,
    };

    let record = |usage: &Usage, outcome: &str, error: Option<&str>| {
        calls::log(&CallRecord {
            tenant,
            provider: provider_name,
            model: &model,
            operation: "complete",
            task: Some((&task.name, task.version)),
            usage,
            outcome,
            error,
            sent: &sent,
            excerpt: user_sent,
        })
    };
    let fallback = || {
        tasks::rule_based_answer(
            schema.schema(),
            &input,
            &custos_core::time::rfc3339(crate::pg::backend::now()),
        )
    };

    if provider.kind() == ProviderKind::Local {
        let mut t = super::transport::Transport::new(&cfg, ProviderKind::Local);
        let answer = provider
            .complete(&mut t, &model, &prompt)
            .unwrap_or_else(|e| {
                raise(
                    ERRCODE_INVALID_PARAMETER_VALUE,
                    e.message().to_string(),
                    None,
                )
            });
        return match judge(&schema, &answer.text, &[]) {
            Verdict::Valid(v) => {
                record(&Usage::default(), "rules", None);
                JsonB(v)
            }
            Verdict::Invalid(errors, _) => raise(
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "the rule-based answer of task \"{name}\" does not fit its schema: {}",
                    errors.join("; ")
                ),
                Some("give such fields an enum, a default or looser limits"),
            ),
        };
    }

    let mut usage = Usage::default();
    let mut ask = |user: &str| -> Result<String, CallError> {
        let p = Prompt { user, ..prompt };
        let estimate = estimate_tokens(p.system) + estimate_tokens(user);
        match calls::remote(
            &cfg,
            provider.as_ref(),
            &model,
            &providers::Operation::Complete,
            estimate,
            u64::from(p.max_tokens),
            |t| {
                provider.complete(t, &model, &p).map(|a| {
                    let (i, o) = (a.tokens_in, a.tokens_out);
                    (a.text, i, o)
                })
            },
        ) {
            Ok((text, u)) => {
                usage.add(&u);
                Ok(text)
            }
            Err((e, u)) => {
                usage.add(&u);
                Err(e)
            }
        }
    };
    let first = ask(user_sent);
    let outcome = first.and_then(|text| match judge(&schema, &text, &red.mapping) {
        Verdict::Valid(v) => Ok(Ok(v)),
        Verdict::Invalid(errors, previous) => {
            let repair = tasks::repair_prompt(user_sent, &previous, &errors);
            ask(&repair).map(|text| match judge(&schema, &text, &red.mapping) {
                Verdict::Valid(v) => Ok(v),
                Verdict::Invalid(errors, _) => Err(errors),
            })
        }
    });
    match outcome {
        Ok(Ok(answer)) => {
            record(&usage, "ok", None);
            JsonB(answer)
        }
        Ok(Err(errors)) => {
            let why = format!("the answer was invalid twice: {}", errors.join("; "));
            record(&usage, "fallback", Some(&why));
            pgrx::notice!("custos: task \"{name}\" answered by rules (fallback): {why}");
            JsonB(fallback())
        }
        Err(CallError::Unavailable(why)) => {
            record(&usage, "fallback", Some(&why));
            pgrx::notice!("custos: task \"{name}\" answered by rules (fallback): {why}");
            JsonB(fallback())
        }
        Err(e) => calls::raise_call_error(&e),
    }
}

/// `custos_internal.check_ai_task`: raises 22023 unless a task's schema compiles, describes an
/// object, can be filled by the rule-based answerer (the fallback must always exist), and its
/// template takes the input.
#[pg_extern(stable, parallel_safe)]
fn check_ai_task(template: &str, answer_schema: JsonB) {
    if !template.contains(tasks::INPUT_SLOT) {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            "the prompt template does not take the input",
            Some("write {{input}} where the task's input (as JSON) goes"),
        );
    }
    let schema = AnswerSchema::compile(&answer_schema.0).unwrap_or_else(|e| {
        raise(ERRCODE_INVALID_PARAMETER_VALUE, format!("invalid answer schema: {e}"), Some("answer schemas are JSON Schema documents (draft 2020-12 by default) of \"type\": \"object\", self-contained"))
    });
    let probe = tasks::rule_based_answer(
        schema.schema(),
        &serde_json::json!({}),
        "2000-01-01T00:00:00Z",
    );
    let errors = schema.errors(&probe);
    if !errors.is_empty() {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("the rule-based fallback cannot fill this schema: {}", errors.join("; ")),
            Some("give such fields an enum, a default or looser limits (patterns and formats other than date and date-time cannot be filled)"),
        );
    }
}
