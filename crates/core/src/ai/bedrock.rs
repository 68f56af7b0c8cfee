//! Amazon Bedrock's wire format for the models custos uses: InvokeModel URLs, request bodies for
//! Titan Text Embeddings v1 and v2 and for Claude's Messages API, and their answers and errors
//! read back. No network here: the extension signs and sends what these build.

use super::provider::finite_vector;
pub use super::provider::Answer;
use serde_json::{json, Value};

/// Titan Text Embeddings v1: 1,536 dimensions, no options.
pub const TITAN_V1: &str = "amazon.titan-embed-text-v1";
/// Titan Text Embeddings v2: 1,024, 512 or 256 dimensions, optionally normalised.
pub const TITAN_V2: &str = "amazon.titan-embed-text-v2:0";
/// Claude 3 Haiku, through the Messages API.
pub const CLAUDE_3_HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BedrockError {
    #[error("model {0} is not one custos knows how to call")]
    UnknownModel(String),
    #[error("{model} makes vectors of {allowed}, not {got} dimensions")]
    Dimensions {
        model: String,
        allowed: &'static str,
        got: usize,
    },
    #[error("the answer is not what {0} returns: {1}")]
    Malformed(&'static str, String),
}

/// The InvokeModel URL: the regional endpoint, or `endpoint` (a VPC endpoint, a proxy, a test
/// server). The model id goes into the path percent-encoded (`:` as `%3A`), as SigV4's canonical
/// URI expects.
pub fn invoke_url(region: &str, endpoint: Option<&str>, model: &str) -> String {
    let base = endpoint.map_or_else(
        || format!("https://bedrock-runtime.{region}.amazonaws.com"),
        |e| e.trim_end_matches('/').to_string(),
    );
    let encoded: String = model
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{base}/model/{encoded}/invoke")
}

/// The body of an embedding request for `text` (already redacted) with `dims` dimensions.
pub fn embedding_request(model: &str, text: &str, dims: usize) -> Result<Value, BedrockError> {
    match model {
        TITAN_V1 if dims == 1536 => Ok(json!({ "inputText": text })),
        TITAN_V1 => Err(BedrockError::Dimensions {
            model: model.into(),
            allowed: "1536",
            got: dims,
        }),
        TITAN_V2 if matches!(dims, 256 | 512 | 1024) => {
            Ok(json!({ "inputText": text, "dimensions": dims, "normalize": true }))
        }
        TITAN_V2 => Err(BedrockError::Dimensions {
            model: model.into(),
            allowed: "1024, 512 or 256",
            got: dims,
        }),
        _ => Err(BedrockError::UnknownModel(model.into())),
    }
}

/// An embedding answer: the vector and the input tokens counted.
pub fn parse_embedding(body: &[u8], dims: usize) -> Result<(Vec<f32>, u64), BedrockError> {
    let bad = |why: String| BedrockError::Malformed("Titan embeddings", why);
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let values = v["embedding"]
        .as_array()
        .ok_or_else(|| bad("no embedding array".into()))?;
    let vector =
        finite_vector(values).ok_or_else(|| bad("a value that is not a finite number".into()))?;
    if vector.len() != dims {
        return Err(bad(format!("{} values, not {dims}", vector.len())));
    }
    Ok((vector, v["inputTextTokenCount"].as_u64().unwrap_or(0)))
}

/// A Messages API request: a system prompt and one user message, both redacted already.
pub fn messages_request(system: &str, user: &str, max_tokens: u32, temperature: f64) -> Value {
    json!({
        "anthropic_version": ANTHROPIC_VERSION,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "system": system,
        "messages": [{ "role": "user", "content": [{ "type": "text", "text": user }] }],
    })
}

/// A Messages API answer: its text, input and output tokens, and why it stopped.
pub fn parse_messages(body: &[u8]) -> Result<Answer, BedrockError> {
    let bad = |why: String| BedrockError::Malformed("the Messages API", why);
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let content = v["content"]
        .as_array()
        .ok_or_else(|| bad("no content array".into()))?;
    let text: String = content
        .iter()
        .filter(|c| c["type"] == "text")
        .filter_map(|c| c["text"].as_str())
        .collect();
    Ok(Answer {
        text,
        tokens_in: v["usage"]["input_tokens"].as_u64().unwrap_or(0),
        tokens_out: v["usage"]["output_tokens"].as_u64().unwrap_or(0),
        stop_reason: v["stop_reason"].as_str().unwrap_or("").to_string(),
    })
}

/// The error type of a failed call: the `x-amzn-ErrorType` header (`ThrottlingException:http://…`)
/// else the body's `__type`; and the body's message. Never the request: errors carry no prompt.
pub fn error_of(header: Option<&str>, body: &[u8]) -> (Option<String>, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let kind = header
        .map(|h| h.split(':').next().unwrap_or(h).trim().to_string())
        .or_else(|| {
            v["__type"]
                .as_str()
                .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
        })
        .filter(|k| !k.is_empty());
    let message = v["message"]
        .as_str()
        .or_else(|| v["Message"].as_str())
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    (kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_the_model_id_and_take_an_endpoint() {
        assert_eq!(
            invoke_url("eu-west-1", None, TITAN_V2),
            "https://bedrock-runtime.eu-west-1.amazonaws.com/model/amazon.titan-embed-text-v2%3A0/invoke"
        );
        assert_eq!(
            invoke_url("x", Some("http://127.0.0.1:9000/"), CLAUDE_3_HAIKU),
            "http://127.0.0.1:9000/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke"
        );
    }

    #[test]
    fn embedding_bodies_and_answers() {
        assert_eq!(
            embedding_request(TITAN_V2, "hi", 256).unwrap(),
            json!({"inputText": "hi", "dimensions": 256, "normalize": true})
        );
        assert_eq!(
            embedding_request(TITAN_V1, "hi", 1536).unwrap(),
            json!({"inputText": "hi"})
        );
        assert!(matches!(
            embedding_request(TITAN_V2, "hi", 384),
            Err(BedrockError::Dimensions { .. })
        ));
        assert!(matches!(
            embedding_request("amazon.nope", "hi", 256),
            Err(BedrockError::UnknownModel(_))
        ));
        let (v, tokens) = parse_embedding(
            br#"{"embedding": [0.5, -0.25], "inputTextTokenCount": 3}"#,
            2,
        )
        .unwrap();
        assert_eq!((v, tokens), (vec![0.5, -0.25], 3));
        assert!(parse_embedding(br#"{"embedding": [0.5]}"#, 2).is_err());
        assert!(parse_embedding(br#"{"embedding": [0.5, "x"]}"#, 2).is_err());
        assert!(parse_embedding(b"not json", 2).is_err());
    }

    #[test]
    fn messages_bodies_answers_and_errors() {
        let body = messages_request("answer in JSON", "summarise", 512, 0.0);
        assert_eq!(body["anthropic_version"], "bedrock-2023-05-31");
        assert_eq!(body["messages"][0]["content"][0]["text"], "summarise");
        let a = parse_messages(
            br#"{"content": [{"type": "text", "text": "{\"ok\": true}"}], "stop_reason": "end_turn",
                 "usage": {"input_tokens": 12, "output_tokens": 5}}"#,
        )
        .unwrap();
        assert_eq!(
            (a.text.as_str(), a.tokens_in, a.tokens_out),
            ("{\"ok\": true}", 12, 5)
        );
        assert_eq!(
            error_of(
                Some("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
                br#"{"message": "Too many requests"}"#
            ),
            (
                Some("ThrottlingException".into()),
                "Too many requests".into()
            )
        );
        assert_eq!(
            error_of(
                None,
                br#"{"__type": "com.amazon#ValidationException", "message": "bad"}"#
            )
            .0,
            Some("ValidationException".into())
        );
    }
}
