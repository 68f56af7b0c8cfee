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
use custos_core::ai::redact::{self, Kind, Redactor};
use custos_core::ai::tasks::{self, AnswerSchema};
use pgrx::prelude::*;
use pgrx::JsonB;
use pgrx::PgSqlErrorCode::*;
use serde_json::Value;

/// The largest input document of a task (1 MiB as JSON text).
const MAX_INPUT_BYTES: usize = 1 << 20;

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

/// The task `tenant` runs under `name`: its own latest active version, else the shared one. The
/// tenant is named in the query, not left to row-level security (which a superuser bypasses).
fn load_task(name: &str, tenant: [u8; 16]) -> Task {
    let task = crate::pg::backend::with_pinned_search_path(|| Spi::connect(|client| {
        let mut rows = client.select(
            "SELECT name, version, system_prompt, prompt_template, answer_schema, model, max_tokens, temperature
               FROM custos.ai_tasks
              WHERE name = $1 AND active AND (tenant_id = $2 OR tenant_id IS NULL)
              ORDER BY tenant_id IS NULL, version DESC
              LIMIT 1",
            None,
            &[name.into(), pgrx::Uuid::from_bytes(tenant).into()],
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
    }))
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
    /// The answer, with its placeholders mapped back.
    Valid(Value),
    /// The answer's errors, found while it still held placeholders only (they quote values, and
    /// go back to the model and into the log), and its text as received.
    Invalid(Vec<String>),
}

fn judge(schema: &AnswerSchema, text: &str, mapping: &[(String, Kind, String)]) -> Verdict {
    let Some(answer) = tasks::extract_json(text) else {
        return Verdict::Invalid(vec!["/: the answer is not a JSON object".into()]);
    };
    let errors = schema.errors(&answer);
    if !errors.is_empty() {
        return Verdict::Invalid(errors);
    }
    let restored = restore_strings(answer, mapping);
    if schema.errors(&restored).is_empty() {
        Verdict::Valid(restored)
    } else {
        // Valid with placeholders, not with the values: say so without quoting them.
        Verdict::Invalid(vec!["/: the answer breaks the schema once its placeholders are replaced by the values they stand for (a length limit, say)".into()])
    }
}

/// Every string and object key of `v`, in order.
fn json_strings<'v>(v: &'v Value, out: &mut Vec<&'v str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k);
            json_strings(x, out);
        }),
        _ => {}
    }
}

/// A task's answer and how it came about.
pub struct Ran {
    pub answer: Value,
    pub provider: &'static str,
    pub model: String,
    pub version: i32,
    /// The rule-based answer: the provider is local, or failed.
    pub fallback: bool,
}

/// `custos.complete_json`: runs task `task` on `input` and returns its schema-valid answer.
#[pg_extern(volatile, parallel_unsafe)]
fn complete_json(task: Option<&str>, input: Option<JsonB>) -> JsonB {
    JsonB(run(task, input).answer)
}

/// `custos_internal.run_ai_task`: what custos.complete_json does, with who answered: for custos'
/// own analyses, which store the provider, model, prompt version and whether rules answered.
#[pg_extern(volatile, parallel_unsafe)]
fn run_ai_task(
    task: Option<&str>,
    input: Option<JsonB>,
) -> TableIterator<
    'static,
    (
        name!(answer, JsonB),
        name!(provider, String),
        name!(model, String),
        name!(prompt_version, i32),
        name!(fallback, bool),
    ),
> {
    let r = run(task, input);
    TableIterator::once((
        JsonB(r.answer),
        r.provider.to_string(),
        r.model,
        r.version,
        r.fallback,
    ))
}

fn run(task: Option<&str>, input: Option<JsonB>) -> Ran {
    let name =
        task.unwrap_or_else(|| raise(ERRCODE_NULL_VALUE_NOT_ALLOWED, "task cannot be NULL", None));
    let input = input
        .map(|j| j.0)
        .unwrap_or_else(|| raise(ERRCODE_NULL_VALUE_NOT_ALLOWED, "input cannot be NULL", None));
    stage(name, input).perform().finish()
}

/// A task made ready inside a transaction (the tenant's task, settings and redaction rules, the
/// price and the budget held for a first call and a repair), to be asked with [`Staged::perform`]
/// where no transaction need be open, and finished with [`Performed::finish`] in one.
/// `custos.complete_json` does the three in the caller's transaction; a background worker commits
/// between them.
pub struct Staged {
    base: Base,
    plan: Plan,
}

/// What every step needs.
struct Base {
    name: String,
    tenant: [u8; 16],
    cfg: AiConfig,
    task: Task,
    schema: AnswerSchema,
    model: String,
    provider: Box<dyn providers::Provider>,
    input: Value,
    now: String,
}

enum Plan {
    /// The local rule-based answer, computed while staging.
    Local(Value),
    Remote(Box<RemotePlan>),
}

struct RemotePlan {
    rules: redact::Rules,
    mapping: Vec<(String, Kind, String)>,
    system: String,
    user: String,
    sent: String,
    first: calls::Prepared,
    repair: calls::Prepared,
}

/// How asking the model went.
enum Asked {
    Valid(Value),
    InvalidTwice(Vec<String>),
    Failed(CallError),
}

enum Done {
    Local(Value),
    Remote {
        asked: Asked,
        usage: Usage,
        sent: String,
        user: String,
    },
}

/// A task the model was asked; [`Performed::finish`] logs it and gives the answer.
pub struct Performed {
    base: Base,
    done: Done,
}

/// Stages task `name` on `input` for the current tenant. Raises on bad input, an unknown task,
/// and where a call may not be made (a standby, ledger locks, a spent budget).
pub fn stage(name: &str, input: Value) -> Staged {
    let input_bytes = input.to_string().len();
    if input_bytes > MAX_INPUT_BYTES {
        raise(
            ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("the input has {input_bytes} bytes as JSON, more than the {MAX_INPUT_BYTES} custos sends"),
            Some("pass a smaller document, for example fewer events"),
        );
    }
    let tenant = super::require_tenant(
        "custos.complete_json needs a tenant: tasks, budgets and the log are the tenant's",
        "call custos.set_tenant(uuid) first",
    );
    let cfg = AiConfig::current();
    let task = load_task(name, tenant);
    let schema = AnswerSchema::compile(&task.schema).unwrap_or_else(|e| {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("AI task \"{name}\" has an invalid answer schema: {e}"),
            None,
        )
    });
    let model = task.model.clone().unwrap_or_else(|| cfg.chat_model.clone());
    let provider = providers::for_model(&cfg, &model);
    let now = custos_core::time::rfc3339(crate::pg::backend::now());
    let base = Base {
        name: name.to_string(),
        tenant,
        cfg,
        task,
        schema,
        model,
        provider,
        input,
        now,
    };
    let plan = if base.provider.kind() == ProviderKind::Local {
        Plan::Local(local_answer(&base))
    } else {
        Plan::Remote(Box::new(remote_plan(&base)))
    };
    Staged { base, plan }
}

/// The local rule-based answer: computed from the input alone (nothing leaves the database,
/// nothing is billed or logged, and it works on a hot standby).
fn local_answer(b: &Base) -> Value {
    let prompt = Prompt {
        system: "",
        user: "",
        schema: b.schema.schema(),
        input: &b.input,
        max_tokens: 0,
        temperature: 0.0,
    };
    let mut unused = super::transport::Transport::new(&b.cfg, ProviderKind::Local);
    let text = b
        .provider
        .complete(&mut unused, &b.model, &prompt)
        .unwrap_or_else(|e| calls::raise_call_error(&e))
        .text;
    let answer = tasks::extract_json(&text).unwrap_or(Value::Null);
    let errors = b.schema.errors(&answer);
    if !errors.is_empty() {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "the rule-based answer of task \"{}\" does not fit its schema: {}",
                b.name,
                errors.join("; ")
            ),
            Some("give such fields an enum, a default or looser limits"),
        );
    }
    answer
}

/// The redacted prompt and the budget held for it and a repair round.
fn remote_plan(b: &Base) -> RemotePlan {
    // Every string is redacted on its own (prompt, template, schema, each value of the input),
    // with one set of placeholders: the JSON text of the input would glue escapes to values.
    let mut texts = vec![b.task.system_prompt.as_str(), b.task.template.as_str()];
    json_strings(&b.input, &mut texts);
    let rules = super::tenant_rules(&texts);
    let mut redactor = Redactor::new(&rules);
    let system_text = redactor.redact(&b.task.system_prompt);
    let template = redactor.redact(&b.task.template);
    let schema_sent = redactor.redact_json(b.schema.schema());
    let input_sent = redactor.redact_json(&b.input);
    let mapping = redactor.into_mapping();
    let system = tasks::system_prompt(&system_text, &schema_sent);
    let user = tasks::render(&template, &input_sent);
    let sent = format!("{system}\n{user}");
    let max_out = u64::from(b.task.max_tokens.max(1) as u32);
    let estimate = estimate_tokens(&system).saturating_add(estimate_tokens(&user));
    // The repair round sends the first answer and its errors along: held at the same time.
    let prepare = |tokens_in: u64| {
        calls::prepare(
            &b.cfg,
            b.provider.as_ref(),
            &b.model,
            &providers::Operation::Complete,
            tokens_in,
            max_out,
        )
        .unwrap_or_else(|e| calls::raise_call_error(&e))
    };
    let first = prepare(estimate);
    let repair = prepare(estimate.saturating_add(max_out).saturating_add(300));
    RemotePlan {
        rules,
        mapping,
        system,
        user,
        sent,
        first,
        repair,
    }
}

impl Staged {
    /// Asks the model (a remote task): the first answer, a repair round if it is invalid. Reads
    /// and writes no table.
    pub fn perform(self) -> Performed {
        let Staged { base, plan } = self;
        let plan = match plan {
            Plan::Local(answer) => {
                return Performed {
                    base,
                    done: Done::Local(answer),
                }
            }
            Plan::Remote(plan) => *plan,
        };
        let mut usage = Usage::default();
        let (provider, model) = (base.provider.as_ref(), base.model.as_str());
        let prompt = Prompt {
            system: &plan.system,
            user: &plan.user,
            schema: base.schema.schema(),
            input: &base.input,
            max_tokens: base.task.max_tokens.max(1) as u32,
            temperature: base.task.temperature,
        };
        let mut ask = |prepared: calls::Prepared, user: &str| -> Result<String, CallError> {
            let p = Prompt { user, ..prompt };
            let asked = calls::perform(&base.cfg, provider, prepared, |t| {
                provider.complete(t, model, &p).map(|a| {
                    let (i, o) = (a.tokens_in, a.tokens_out);
                    (a.text, i, o)
                })
            });
            match asked {
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
        let (first, repair) = (plan.first, plan.repair);
        let asked = match ask(first, &plan.user) {
            Err(e) => {
                repair.cancel();
                Asked::Failed(e)
            }
            Ok(text) => match judge(&base.schema, &text, &plan.mapping) {
                Verdict::Valid(v) => {
                    repair.cancel();
                    Asked::Valid(v)
                }
                Verdict::Invalid(errors) => {
                    let previous = redact::redact(&text, &plan.rules).text;
                    let again = tasks::repair_prompt(&plan.user, &previous, &errors);
                    match ask(repair, &again) {
                        Err(e) => Asked::Failed(e),
                        Ok(text) => match judge(&base.schema, &text, &plan.mapping) {
                            Verdict::Valid(v) => Asked::Valid(v),
                            Verdict::Invalid(errors) => Asked::InvalidTwice(errors),
                        },
                    }
                }
            },
        };
        Performed {
            done: Done::Remote {
                asked,
                usage,
                sent: plan.sent,
                user: plan.user,
            },
            base,
        }
    }
}

impl Performed {
    /// Logs a remote task's call in custos.ai_calls (inside a transaction), and gives its answer:
    /// the model's, or the rule-based one (fallback, with a NOTICE) when it answered invalid JSON
    /// twice or was unavailable; raises when the provider refused the request.
    pub fn finish(self) -> Ran {
        let Performed { base, done } = self;
        let ran = |answer: Value, fallback: bool| Ran {
            answer,
            provider: base.provider.kind().name(),
            model: base.model.clone(),
            version: base.task.version,
            fallback,
        };
        let (asked, usage, sent, user) = match done {
            Done::Local(answer) => return ran(answer, true),
            Done::Remote {
                asked,
                usage,
                sent,
                user,
            } => (asked, usage, sent, user),
        };
        let record = |outcome: &str, error: Option<&str>| {
            calls::log(&CallRecord {
                tenant: base.tenant,
                provider: base.provider.kind().name(),
                model: &base.model,
                operation: "complete",
                task: Some((&base.task.name, base.task.version)),
                usage: &usage,
                outcome,
                error,
                sent: &sent,
                excerpt: &user,
            })
        };
        let fall_back = |why: &str| {
            record("fallback", Some(why));
            pgrx::notice!(
                "custos: task \"{}\" answered by rules (fallback): {why}",
                base.name
            );
            ran(
                tasks::rule_based_answer(base.schema.schema(), &base.input, &base.now),
                true,
            )
        };
        match asked {
            Asked::Valid(answer) => {
                record("ok", None);
                ran(answer, false)
            }
            Asked::InvalidTwice(errors) => fall_back(&format!(
                "the answer was invalid twice: {}",
                errors.join("; ")
            )),
            Asked::Failed(CallError::Unavailable(why)) => fall_back(&why),
            Asked::Failed(e) => calls::raise_call_error(&e),
        }
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
