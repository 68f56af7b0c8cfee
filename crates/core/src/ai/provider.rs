//! What every provider's wire format reads back into: an answer's text with its token counts, and
//! a batch of vectors with the tokens they took.

/// A model's answer: its text, input and output tokens, and why it stopped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answer {
    pub text: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub stop_reason: String,
}

/// Vectors in the order of the texts asked for, and the input tokens counted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: u64,
}

/// A conservative token estimate for budgets reserved before a call: about four bytes make a
/// token in English text, three is the safer side for code, numbers and other scripts.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(3).max(1)
}

/// The values of a vector as finite f32s, or None.
pub fn finite_vector(values: &[serde_json::Value]) -> Option<Vec<f32>> {
    values
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32).filter(|f| f.is_finite()))
        .collect()
}
