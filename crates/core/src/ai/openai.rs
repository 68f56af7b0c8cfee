//! The OpenAI-compatible wire format (OpenAI, Ollama, vLLM, LiteLLM and other servers that speak
//! it): `/v1/embeddings` with a whole batch in one request, `/v1/chat/completions`, their answers
//! and errors. No network here.

use super::provider::{finite_vector, Answer, Embeddings};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpenAiError {
    #[error("the answer is not what an OpenAI-compatible {0} endpoint returns: {1}")]
    Malformed(&'static str, String),
}

/// The URL of an endpoint's path under `base` (`https://api.openai.com`, `http://ollama:11434`):
/// `/v1` is added unless the base already ends with it.
pub fn url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/{path}")
    } else {
        format!("{base}/v1/{path}")
    }
}

/// One request for a batch of texts (already redacted). `dims` is sent only when the model takes
/// it (text-embedding-3 models shorten their vectors on request).
pub fn embeddings_request(model: &str, texts: &[&str], dims: Option<usize>) -> Value {
    let mut body = json!({ "model": model, "input": texts, "encoding_format": "float" });
    if let Some(d) = dims {
        body["dimensions"] = json!(d);
    }
    body
}

/// The vectors of a batch of `count` texts, put back in the order asked (`index`), each of `dims`
/// values when `dims` is known.
pub fn parse_embeddings(
    body: &[u8],
    count: usize,
    dims: Option<usize>,
) -> Result<Embeddings, OpenAiError> {
    let bad = |why: String| OpenAiError::Malformed("embeddings", why);
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let data = v["data"]
        .as_array()
        .ok_or_else(|| bad("no data array".into()))?;
    if data.len() != count {
        return Err(bad(format!("{} vectors for {count} texts", data.len())));
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; count];
    for (position, item) in data.iter().enumerate() {
        let index = item["index"].as_u64().map_or(position, |i| i as usize);
        let values = item["embedding"]
            .as_array()
            .and_then(|a| finite_vector(a))
            .ok_or_else(|| bad(format!("item {index} has no vector of finite numbers")))?;
        if dims.is_some_and(|d| d != values.len()) || values.is_empty() {
            return Err(bad(format!("a vector of {} values", values.len())));
        }
        match vectors.get_mut(index) {
            Some(slot @ None) => *slot = Some(values),
            _ => return Err(bad(format!("index {index} is out of range or repeated"))),
        }
    }
    let vectors: Vec<Vec<f32>> = vectors.into_iter().flatten().collect();
    if let Some(first) = vectors.first() {
        if vectors.iter().any(|x| x.len() != first.len()) {
            return Err(bad("vectors of different lengths".into()));
        }
    }
    Ok(Embeddings {
        vectors,
        tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
    })
}

/// A chat completion request: a system prompt and one user message (both redacted), asking for
/// a JSON object.
pub fn chat_request(
    model: &str,
    system: &str,
    user: &str,
    max_tokens: u32,
    temperature: f64,
) -> Value {
    json!({
        "model": model,
        "messages": [
            { "role": "system", "content": system },
            { "role": "user", "content": user },
        ],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "response_format": { "type": "json_object" },
    })
}

pub fn parse_chat(body: &[u8]) -> Result<Answer, OpenAiError> {
    let bad = |why: String| OpenAiError::Malformed("chat completions", why);
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let choice = &v["choices"][0];
    let text = choice["message"]["content"]
        .as_str()
        .ok_or_else(|| bad("no message content".into()))?;
    Ok(Answer {
        text: text.to_string(),
        tokens_in: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        tokens_out: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        stop_reason: choice["finish_reason"].as_str().unwrap_or("").to_string(),
    })
}

/// The error type and message of a failed call (`{"error": {"type", "code", "message"}}`).
pub fn error_of(body: &[u8]) -> (Option<String>, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &v["error"];
    let kind = e["type"]
        .as_str()
        .or_else(|| e["code"].as_str())
        .map(str::to_string);
    let message = e["message"]
        .as_str()
        .or_else(|| e.as_str())
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
    fn urls_add_v1_once() {
        assert_eq!(
            url("https://api.openai.com", "embeddings"),
            "https://api.openai.com/v1/embeddings"
        );
        assert_eq!(
            url("http://127.0.0.1:11434/v1/", "chat/completions"),
            "http://127.0.0.1:11434/v1/chat/completions"
        );
    }

    #[test]
    fn a_batch_comes_back_in_the_order_asked() {
        let body = embeddings_request("text-embedding-3-small", &["a", "b"], Some(2));
        assert_eq!(body["input"], json!(["a", "b"]));
        assert_eq!(body["dimensions"], 2);
        let answer =
            br#"{"data": [{"index": 1, "embedding": [0, 1]}, {"index": 0, "embedding": [1, 0]}],
                          "usage": {"prompt_tokens": 4}}"#;
        let e = parse_embeddings(answer, 2, Some(2)).unwrap();
        assert_eq!(e.vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert_eq!(e.tokens, 4);
        assert!(parse_embeddings(answer, 3, Some(2)).is_err(), "count");
        assert!(parse_embeddings(answer, 2, Some(3)).is_err(), "dimensions");
        let repeated =
            br#"{"data": [{"index": 0, "embedding": [0, 1]}, {"index": 0, "embedding": [1, 0]}]}"#;
        assert!(parse_embeddings(repeated, 2, None).is_err());
        assert!(parse_embeddings(b"<html>", 2, None).is_err());
    }

    #[test]
    fn chat_answers_and_errors() {
        let a = parse_chat(
            br#"{"choices": [{"message": {"role": "assistant", "content": "{}"}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 9, "completion_tokens": 2}}"#,
        )
        .unwrap();
        assert_eq!((a.text.as_str(), a.tokens_in, a.tokens_out), ("{}", 9, 2));
        assert!(parse_chat(br#"{"choices": []}"#).is_err());
        assert_eq!(
            error_of(
                br#"{"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}}"#
            ),
            (
                Some("rate_limit_exceeded".into()),
                "Rate limit reached".into()
            )
        );
    }
}
