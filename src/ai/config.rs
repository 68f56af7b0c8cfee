//! Who answers a tenant's AI calls and within which limits: the tenant's `ai.*` settings, the
//! server's credentials (superuser settings, a credentials file, the environment), and the
//! endpoints a tenant may name.

use crate::error::raise;
use crate::gucs;
use custos_core::ai::sigv4::AwsCredentials;
use pgrx::PgSqlErrorCode::*;
use serde_json::Value;
use std::ffi::CString;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Local,
    Bedrock,
    OpenAi,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Bedrock => "bedrock",
            ProviderKind::OpenAi => "openai",
        }
    }

    /// The index of the provider in shared state (breakers).
    pub fn index(self) -> u8 {
        self as u8
    }
}

/// A tenant's AI settings, read once per call.
#[derive(Debug, Clone)]
pub struct AiConfig {
    pub tenant: Option<[u8; 16]>,
    pub provider: ProviderKind,
    pub embedding_model: String,
    /// `ai.embedding_dimensions`: None (0) for the model's own.
    pub embedding_dims: Option<usize>,
    pub chat_model: String,
    pub region: String,
    /// The tenant's `ai.endpoint`, checked against the allowed ones; None for the provider's own.
    pub endpoint: Option<String>,
    pub timeout_ms: u64,
    pub max_retries: u32,
    pub breaker_failures: u32,
    pub breaker_cool_down_ms: i64,
    /// Monthly limits; None when the setting is 0 (no limit).
    pub token_budget: Option<u64>,
    pub budget_micros: Option<u64>,
}

fn text(settings: &[(String, String)], key: &str, default: &str) -> String {
    settings
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| serde_json::from_str::<Value>(v).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| default.to_string())
}

fn number(settings: &[(String, String)], key: &str, default: f64) -> f64 {
    settings
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| serde_json::from_str::<Value>(v).ok())
        .and_then(|v| v.as_f64())
        .unwrap_or(default)
}

impl AiConfig {
    /// The current tenant's settings; without a tenant, the defaults (provider `local`).
    pub fn current() -> AiConfig {
        let tenant = crate::tenancy::current_tenant_id().map(|t| *t.as_bytes());
        let settings = tenant
            .map(|t| crate::tenancy::settings_for(&t, "ai."))
            .unwrap_or_default();
        let provider = match text(&settings, "ai.provider", "local").as_str() {
            "bedrock" => ProviderKind::Bedrock,
            "openai" => ProviderKind::OpenAi,
            _ => ProviderKind::Local,
        };
        let region = text(&settings, "ai.region", "us-east-1");
        let endpoint = Some(text(&settings, "ai.endpoint", "")).filter(|e| !e.is_empty());
        let limit = |key: &str, scale: f64| {
            let v = number(&settings, key, 0.0);
            (v > 0.0).then(|| (v * scale).round() as u64)
        };
        AiConfig {
            tenant,
            provider,
            embedding_model: text(&settings, "ai.embedding_model", "local-lexical-384"),
            embedding_dims: Some(number(&settings, "ai.embedding_dimensions", 0.0) as usize)
                .filter(|d| *d > 0),
            chat_model: text(&settings, "ai.chat_model", "local-rules"),
            region,
            endpoint,
            timeout_ms: number(&settings, "ai.timeout_ms", 15_000.0) as u64,
            max_retries: number(&settings, "ai.max_retries", 2.0).clamp(0.0, 2.0) as u32,
            breaker_failures: number(&settings, "ai.breaker_failures", 5.0).max(1.0) as u32,
            breaker_cool_down_ms: (number(&settings, "ai.breaker_cool_down_s", 30.0) * 1000.0)
                as i64,
            token_budget: limit("ai.monthly_token_budget", 1.0),
            budget_micros: limit("ai.monthly_budget_usd", 1e6),
        }
    }

    /// The base URL calls go to: the tenant's endpoint if a superuser allowed it, else the
    /// provider's own (Bedrock's regional endpoint; OpenAI's API).
    pub fn base_url(&self) -> String {
        if let Some(endpoint) = &self.endpoint {
            let endpoint = endpoint.trim_end_matches('/');
            let allowed = setting_text(&gucs::AI_ALLOWED_ENDPOINTS);
            if !endpoint_allowed(endpoint, self.provider.name(), &allowed) {
                raise(
                    ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!("the endpoint \"{endpoint}\" of setting ai.endpoint is not allowed"),
                    Some("a superuser lists the endpoints tenants may use in custos.ai_allowed_endpoints"),
                );
            }
            return endpoint.to_string();
        }
        match self.provider {
            ProviderKind::Bedrock => {
                if !region_is_valid(&self.region) {
                    raise(
                        ERRCODE_INVALID_PARAMETER_VALUE,
                        format!("\"{}\" is not an AWS region", self.region),
                        Some("set ai.region to a region name such as us-east-1"),
                    );
                }
                format!("https://bedrock-runtime.{}.amazonaws.com", self.region)
            }
            _ => "https://api.openai.com".to_string(),
        }
    }
}

/// A region name as AWS spells them (`us-east-1`, `eu-central-2`): it becomes part of a host name.
pub fn region_is_valid(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `endpoint` is one of the comma-separated base URLs of `allowed` for `provider`,
/// exactly (scheme, host, port and path; a trailing slash aside). An entry `bedrock=URL` or
/// `openai=URL` allows the URL for that provider only, so that one provider's credentials never go
/// to an endpoint allowed for another; a bare URL allows it for both.
pub fn endpoint_allowed(endpoint: &str, provider: &str, allowed: &str) -> bool {
    let endpoint = endpoint.trim_end_matches('/');
    allowed.split(',').map(str::trim).any(|entry| {
        let (for_provider, url) = match entry.split_once('=') {
            Some((p, url)) if !p.contains(':') => (Some(p.trim()), url.trim()),
            _ => (None, entry),
        };
        let url = url.trim_end_matches('/');
        !url.is_empty() && url == endpoint && for_provider.is_none_or(|p| p == provider)
    })
}

/// Whether a key may be sent to `url` as a bearer token: over https, or plain http to this
/// machine's loopback interface only (a local Ollama, a test server).
pub fn key_may_travel_to(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

/// Raises unless a key may be sent to `url` ([`key_may_travel_to`]).
pub fn require_key_may_travel_to(url: &str) {
    if !key_may_travel_to(url) {
        raise(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            "custos sends API keys only over https, or over http to the loopback interface",
            Some("use an https endpoint, or SigV4 credentials for Bedrock (the signature carries no secret)"),
        );
    }
}

fn setting_text(setting: &pgrx::GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A credential: the superuser setting, else the credentials file's line, else the environment.
fn credential(
    setting: &pgrx::GucSetting<Option<CString>>,
    file_key: &str,
    env: &str,
) -> Option<String> {
    let inline = setting_text(setting);
    if !inline.is_empty() {
        return Some(inline);
    }
    let path = setting_text(&gucs::AI_CREDENTIALS_FILE);
    if !path.is_empty() {
        let content = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            raise(
                ERRCODE_CONFIG_FILE_ERROR,
                format!(
                    "could not read the AI credentials file \"{path}\": {}",
                    e.kind()
                ),
                Some("the file must be readable by the server's operating-system user"),
            )
        });
        if let Some(value) = file_value(&content, file_key) {
            return Some(value);
        }
    }
    std::env::var(env).ok().filter(|v| !v.is_empty())
}

/// The value of `key` in a credentials file (`key = value` lines; `#` comments).
pub fn file_value(content: &str, key: &str) -> Option<String> {
    content
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// How custos authenticates to Bedrock.
pub enum BedrockAuth {
    /// A Bedrock API key, sent as a bearer token.
    ApiKey(String),
    SigV4(AwsCredentials),
}

/// Bedrock's credentials: an API key if one is set, else an AWS key pair. A missing credential
/// is an error that names where custos looked, never a value.
pub fn bedrock_auth() -> BedrockAuth {
    if let Some(key) = credential(
        &gucs::BEDROCK_API_KEY,
        "bedrock_api_key",
        "AWS_BEARER_TOKEN_BEDROCK",
    ) {
        return BedrockAuth::ApiKey(key);
    }
    let id = credential(
        &gucs::AWS_ACCESS_KEY_ID,
        "aws_access_key_id",
        "AWS_ACCESS_KEY_ID",
    );
    let secret = credential(
        &gucs::AWS_SECRET_ACCESS_KEY,
        "aws_secret_access_key",
        "AWS_SECRET_ACCESS_KEY",
    );
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => BedrockAuth::SigV4(AwsCredentials {
            access_key_id,
            secret_access_key,
            session_token: credential(&gucs::AWS_SESSION_TOKEN, "aws_session_token", "AWS_SESSION_TOKEN"),
        }),
        _ => raise(
            ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            "no credentials for Amazon Bedrock",
            Some("a superuser sets custos.aws_access_key_id and custos.aws_secret_access_key (or custos.bedrock_api_key), or names a custos.ai_credentials_file, or starts the server with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ),
    }
}

/// The OpenAI-compatible endpoint's key, if any (local servers need none).
pub fn openai_key() -> Option<String> {
    credential(&gucs::OPENAI_API_KEY, "openai_api_key", "OPENAI_API_KEY")
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn endpoints_must_be_listed_exactly_and_for_the_provider() {
        let allowed = "http://127.0.0.1:9000, bedrock=https://vpce-1.bedrock-runtime.eu-west-1.vpce.amazonaws.com/, openai = http://ollama:11434";
        assert!(endpoint_allowed(
            "http://127.0.0.1:9000/",
            "bedrock",
            allowed
        ));
        assert!(endpoint_allowed(
            "http://127.0.0.1:9000/",
            "openai",
            allowed
        ));
        let vpce = "https://vpce-1.bedrock-runtime.eu-west-1.vpce.amazonaws.com";
        assert!(endpoint_allowed(vpce, "bedrock", allowed));
        assert!(!endpoint_allowed(vpce, "openai", allowed));
        assert!(endpoint_allowed("http://ollama:11434", "openai", allowed));
        assert!(!endpoint_allowed("http://ollama:11434", "bedrock", allowed));
        assert!(!endpoint_allowed(
            "http://127.0.0.1:9001",
            "bedrock",
            allowed
        ));
        assert!(!endpoint_allowed(
            "http://127.0.0.1:9000.evil.example",
            "bedrock",
            allowed
        ));
        assert!(!endpoint_allowed("http://127.0.0.1:9000", "bedrock", ""));
    }

    #[test]
    fn keys_travel_over_https_or_to_loopback_only() {
        assert!(key_may_travel_to("https://api.openai.com/v1/embeddings"));
        assert!(key_may_travel_to("http://127.0.0.1:11434/v1/embeddings"));
        assert!(key_may_travel_to("http://localhost/v1"));
        assert!(key_may_travel_to("http://[::1]:8080/x"));
        assert!(!key_may_travel_to("http://ollama:11434/v1/embeddings"));
        assert!(!key_may_travel_to("http://127.0.0.1.evil.example/v1"));
        assert!(!key_may_travel_to("ftp://127.0.0.1/"));
    }

    #[test]
    fn regions_cannot_change_the_host() {
        assert!(region_is_valid("eu-central-2"));
        assert!(!region_is_valid("evil.example/#"));
        assert!(!region_is_valid(""));
    }

    #[test]
    fn credentials_files_are_read_by_name() {
        let file = "# rotated monthly\naws_access_key_id = AKIA1\naws_secret_access_key=\"s3cr3t\"\nbedrock_api_key =\n";
        assert_eq!(
            file_value(file, "aws_access_key_id").as_deref(),
            Some("AKIA1")
        );
        assert_eq!(
            file_value(file, "aws_secret_access_key").as_deref(),
            Some("s3cr3t")
        );
        assert_eq!(file_value(file, "bedrock_api_key"), None);
        assert_eq!(file_value(file, "rotated monthly"), None);
    }
}
