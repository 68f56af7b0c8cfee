//! The built-in offline embedder (`ai.provider = 'local'`, the default): no network, no model
//! download, the same vector for the same text on every machine. It captures lexical
//! similarity only: texts that share words, word pairs and parts of words come out close; a
//! synonym or a paraphrase does not. Features are hashed into `dims` buckets with a sign
//! (feature hashing, Weinberger et al. 2009) and the vector is L2-normalised, so cosine and
//! inner product agree.
//!
//! Features of a text (lower-cased, split on anything not alphanumeric): each word (weight 1),
//! each pair of neighbouring words (0.5), each character trigram of `#word#` (0.25).

/// Dimensions when none are asked for.
pub const DEFAULT_DIMS: usize = 384;
pub const MAX_DIMS: usize = 16_000;

/// FNV-1a, 64 bits: fixed, so vectors never change between versions or platforms.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn add(v: &mut [f32], parts: &[&[u8]], weight: f32) {
    let h = fnv1a(parts);
    let i = (h % v.len() as u64) as usize;
    v[i] += if h >> 63 == 0 { weight } else { -weight };
}

/// The embedding of `text` in `dims` dimensions; None when the text has no word at all.
pub fn embed(text: &str, dims: usize) -> Option<Vec<f32>> {
    let mut v = vec![0.0f32; dims.clamp(1, MAX_DIMS)];
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return None;
    }
    let mut padded = Vec::with_capacity(64);
    for (i, w) in words.iter().enumerate() {
        add(&mut v, &[b"w", w.as_bytes()], 1.0);
        if let Some(next) = words.get(i + 1) {
            add(&mut v, &[b"b", w.as_bytes(), next.as_bytes()], 0.5);
        }
        padded.clear();
        padded.push(b'#');
        padded.extend_from_slice(w.as_bytes());
        padded.push(b'#');
        for tri in padded.windows(3) {
            add(&mut v, &[b"c", tri], 0.25);
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn similar_texts_are_closer_than_unrelated_ones() {
        let a = embed("failed login from a new IP address", 384).unwrap();
        let b = embed("Failed logins from new IP addresses", 384).unwrap();
        let c = embed("quarterly invoice totals by region", 384).unwrap();
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-5);
        assert!(cosine(&a, &b) > 0.5, "{}", cosine(&a, &b));
        assert!(cosine(&a, &c) < 0.2, "{}", cosine(&a, &c));
    }

    #[test]
    fn vectors_are_fixed_and_textless_input_has_none() {
        assert_eq!(embed("same text", 64), embed("Same   TEXT!", 64));
        assert_eq!(embed(" ,;- ", 64), None);
        assert_eq!(embed("x", 8).map(|v| v.len()), Some(8));
    }
}
