//! The providers behind one trait: `local` (built in, no network), `bedrock` (InvokeModel, SigV4
//! or a Bedrock API key) and `openai` (any OpenAI-compatible server). Texts arrive redacted;
//! what goes out is built by custos_core's wire formats.

use super::config::{self, AiConfig, BedrockAuth, ProviderKind};
use super::http::{Request, Response};
use super::transport::{CallError, Transport};
use custos_core::ai::provider::{Answer, Embeddings};
use custos_core::ai::{bedrock, embed, openai, sigv4, tasks};
use serde_json::Value;
use std::time::SystemTime;

/// A prompt for a JSON answer: what remote models read (system, user, both redacted) and what the
/// rule-based answerer reads (the task's schema and input).
pub struct Prompt<'a> {
    pub system: &'a str,
    pub user: &'a str,
    pub schema: &'a Value,
    pub input: &'a Value,
    pub max_tokens: u32,
    pub temperature: f64,
}

/// What a call asks of a provider, for checks made before anything is priced or sent.
pub enum Operation {
    Embed { dims: Option<usize> },
    Complete,
}

pub trait Provider {
    fn kind(&self) -> ProviderKind;
    /// Refuses a model or option the provider does not have (before the budget is touched).
    fn check(&self, _model: &str, _operation: &Operation) -> Result<(), CallError> {
        Ok(())
    }
    /// The vectors of `texts` (redacted), in order, each of `dims` values when `dims` is known.
    fn embed(
        &self,
        t: &mut Transport,
        model: &str,
        dims: Option<usize>,
        texts: &[&str],
    ) -> Result<Embeddings, CallError>;
    /// A model's answer to `prompt`.
    fn complete(
        &self,
        t: &mut Transport,
        model: &str,
        prompt: &Prompt,
    ) -> Result<Answer, CallError>;
}

/// The provider of a model: `local-*` models are always local; others belong to the tenant's
/// `ai.provider`.
pub fn for_model(cfg: &AiConfig, model: &str) -> Box<dyn Provider> {
    if model.starts_with("local-") {
        return Box::new(Local);
    }
    match cfg.provider {
        ProviderKind::Local => Box::new(Local),
        ProviderKind::Bedrock => Box::new(Bedrock {
            base: cfg.base_url(),
            region: cfg.region.clone(),
        }),
        ProviderKind::OpenAi => Box::new(OpenAi {
            base: cfg.base_url(),
        }),
    }
}

pub struct Local;

/// The dimensions of a local model name: `local-lexical-<dims>`.
pub fn local_dims(model: &str) -> Option<usize> {
    let dims: usize = model.strip_prefix("local-lexical-")?.parse().ok()?;
    [256, 384, 512, 768, 1024, 1536]
        .contains(&dims)
        .then_some(dims)
}

impl Provider for Local {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }

    fn embed(
        &self,
        _: &mut Transport,
        model: &str,
        _: Option<usize>,
        texts: &[&str],
    ) -> Result<Embeddings, CallError> {
        let dims = local_dims(model).ok_or_else(|| {
            CallError::Invalid(format!(
                "unknown embedding model \"{model}\": the built-in ones are local-lexical-256, -384, -512, -768, -1024 and -1536"
            ))
        })?;
        let vectors = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                embed::embed(text, dims).ok_or_else(|| {
                    CallError::Invalid(format!("input {} has no word to embed", i + 1))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Embeddings { vectors, tokens: 0 })
    }

    fn complete(
        &self,
        _: &mut Transport,
        model: &str,
        prompt: &Prompt,
    ) -> Result<Answer, CallError> {
        if model != "local-rules" {
            return Err(CallError::Invalid(format!(
                "unknown model \"{model}\": the built-in answerer is local-rules"
            )));
        }
        let now = custos_core::time::rfc3339(crate::pg::backend::now());
        Ok(Answer {
            text: tasks::rule_based_answer(prompt.schema, prompt.input, &now).to_string(),
            ..Answer::default()
        })
    }
}

pub struct Bedrock {
    base: String,
    region: String,
}

fn json_request(url: String, mut headers: Vec<(String, String)>, body: Vec<u8>) -> Request {
    headers.push(("content-type".into(), "application/json".into()));
    headers.push(("accept".into(), "application/json".into()));
    Request { url, headers, body }
}

impl Bedrock {
    /// One InvokeModel call of `model` with `body`, signed anew for each attempt.
    fn invoke(&self, t: &mut Transport, model: &str, body: &Value) -> Result<Response, CallError> {
        let url = bedrock::invoke_url(&self.region, Some(&self.base), model);
        let auth = config::bedrock_auth();
        if matches!(auth, BedrockAuth::ApiKey(_)) {
            config::require_key_may_travel_to(&url);
        }
        let bytes = body.to_string().into_bytes();
        let build = || {
            let headers: Vec<(String, String)> = match &auth {
                BedrockAuth::ApiKey(key) => vec![("authorization".into(), format!("Bearer {key}"))],
                BedrockAuth::SigV4(creds) => sigv4::signed_headers(
                    creds,
                    &self.region,
                    "bedrock",
                    &sigv4::Unsigned {
                        method: "POST",
                        url: &url,
                        headers: &[
                            ("content-type", "application/json"),
                            ("accept", "application/json"),
                        ],
                        body: &bytes,
                    },
                    SystemTime::now(),
                )
                // Signing fails only on a malformed URL, which invoke_url does not make; the
                // request then goes unsigned and the provider refuses it (403).
                .unwrap_or_default(),
            };
            json_request(url.clone(), headers, bytes.clone())
        };
        t.send(build, |r| {
            bedrock::error_of(r.error_type.as_deref(), &r.body)
        })
    }
}

/// Titan's dimensions when none are asked for.
fn titan_dims(model: &str, dims: Option<usize>) -> usize {
    dims.unwrap_or(if model == bedrock::TITAN_V1 {
        1536
    } else {
        1024
    })
}

impl Provider for Bedrock {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Bedrock
    }

    fn check(&self, model: &str, operation: &Operation) -> Result<(), CallError> {
        match operation {
            Operation::Embed { dims } => bedrock::embedding_request(model, "", titan_dims(model, *dims))
                .map(drop)
                .map_err(|e| CallError::Invalid(e.to_string())),
            Operation::Complete if model.starts_with("anthropic.") || model.contains(".anthropic.") => Ok(()),
            Operation::Complete => Err(CallError::Invalid(format!(
                "model {model} is not one custos calls on Bedrock for answers: use an Anthropic Claude model such as {}",
                bedrock::CLAUDE_3_HAIKU
            ))),
        }
    }

    /// Titan takes one text per request.
    fn embed(
        &self,
        t: &mut Transport,
        model: &str,
        dims: Option<usize>,
        texts: &[&str],
    ) -> Result<Embeddings, CallError> {
        let dims = titan_dims(model, dims);
        let mut out = Embeddings::default();
        for text in texts {
            let body = bedrock::embedding_request(model, text, dims)
                .map_err(|e| CallError::Invalid(e.to_string()))?;
            let response = self.invoke(t, model, &body)?;
            let (vector, tokens) = bedrock::parse_embedding(&response.body, dims)
                .map_err(|e| CallError::Refused(e.to_string()))?;
            out.vectors.push(vector);
            out.tokens += tokens;
        }
        Ok(out)
    }

    fn complete(
        &self,
        t: &mut Transport,
        model: &str,
        prompt: &Prompt,
    ) -> Result<Answer, CallError> {
        self.check(model, &Operation::Complete)?;
        let body = bedrock::messages_request(
            prompt.system,
            prompt.user,
            prompt.max_tokens,
            prompt.temperature,
        );
        let response = self.invoke(t, model, &body)?;
        bedrock::parse_messages(&response.body).map_err(|e| CallError::Unavailable(e.to_string()))
    }
}

pub struct OpenAi {
    base: String,
}

impl OpenAi {
    fn post(&self, t: &mut Transport, path: &str, body: &Value) -> Result<Response, CallError> {
        let url = openai::url(&self.base, path);
        let key = config::openai_key();
        if key.is_some() {
            config::require_key_may_travel_to(&url);
        }
        let headers: Vec<(String, String)> = key
            .map(|k| vec![("authorization".into(), format!("Bearer {k}"))])
            .unwrap_or_default();
        let bytes = body.to_string().into_bytes();
        t.send(
            || json_request(url.clone(), headers.clone(), bytes.clone()),
            |r| openai::error_of(&r.body),
        )
    }
}

impl Provider for OpenAi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenAi
    }

    /// A whole batch in one request.
    fn embed(
        &self,
        t: &mut Transport,
        model: &str,
        dims: Option<usize>,
        texts: &[&str],
    ) -> Result<Embeddings, CallError> {
        let response = self.post(
            t,
            "embeddings",
            &openai::embeddings_request(model, texts, dims),
        )?;
        openai::parse_embeddings(&response.body, texts.len(), dims)
            .map_err(|e| CallError::Refused(e.to_string()))
    }

    fn complete(
        &self,
        t: &mut Transport,
        model: &str,
        prompt: &Prompt,
    ) -> Result<Answer, CallError> {
        let body = openai::chat_request(
            model,
            prompt.system,
            prompt.user,
            prompt.max_tokens,
            prompt.temperature,
        );
        let response = self.post(t, "chat/completions", &body)?;
        openai::parse_chat(&response.body).map_err(|e| CallError::Unavailable(e.to_string()))
    }
}
