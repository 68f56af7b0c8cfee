//! The ledger's hash chain: a documented, versioned canonical encoding of an event and the SHA-256
//! link that chains it to its predecessor. Pure functions: no PostgreSQL types, tested without a
//! database. The format is specified in `docs/ledger-format.md`; any change is a new version.

use sha2::{Digest, Sha256};

pub const HASH_LEN: usize = 32;
pub type Hash = [u8; HASH_LEN];

/// A stored hash as [`Hash`]; a value of another length (only a tampered row has one) becomes
/// zeros, which no chain links to.
pub fn hash_from_bytes(bytes: &[u8]) -> Hash {
    let mut h = [0u8; HASH_LEN];
    if bytes.len() == HASH_LEN {
        h.copy_from_slice(bytes);
    }
    h
}

const DOMAIN_EVENT: &[u8] = b"custos/ledger/event/v1\0";
const DOMAIN_GENESIS: &[u8] = b"custos/ledger/genesis/v1\0";

/// One event as hashed: every stored column except `prev_hash` and `hash`. Text is hashed as the
/// bytes stored (UTF-8); timestamps are microseconds since 2000-01-01 UTC (PostgreSQL's own
/// representation).
#[derive(Debug, Clone, PartialEq)]
pub struct EventFields<'a> {
    pub tenant_id: [u8; 16],
    pub seq: i64,
    pub id: [u8; 16],
    pub occurred_at: i64,
    pub recorded_at: i64,
    pub actor: &'a [u8],
    pub db_role: &'a [u8],
    pub txid: i64,
    pub action: &'a [u8],
    pub entity_type: &'a [u8],
    pub entity_id: Option<&'a [u8]>,
    pub severity: &'a [u8],
    /// Canonical JSON of `details`: PostgreSQL's jsonb text (see [`canonical_json`]).
    pub details: &'a [u8],
    pub ip_address: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

/// The `prev_hash` of a tenant's first event.
pub fn genesis_hash(tenant_id: &[u8; 16]) -> Hash {
    let mut h = Sha256::new();
    h.update(DOMAIN_GENESIS);
    h.update(tenant_id);
    h.finalize().into()
}

/// jsonb's order of object keys: shorter keys first, then bytewise. The canonical JSON the chain
/// hashes follows it, so that it is the text jsonb prints.
pub fn key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

pub fn field(buf: &mut Vec<u8>, tag: u8, value: Option<&[u8]>) {
    buf.push(tag);
    match value {
        // Length-prefixed, so no two different field lists encode to the same bytes.
        Some(v) => {
            buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
            buf.extend_from_slice(v);
        }
        None => buf.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
}

/// SHA-256 over the domain tag, the predecessor's hash and every field, each as
/// `tag(u8) || length(u32 BE) || bytes`, NULL as `tag || 0xFFFFFFFF`. The encoding is assembled
/// in one buffer and hashed in one call: many small `update`s cost more than the copy.
pub fn event_hash(prev_hash: &Hash, e: &EventFields<'_>) -> Hash {
    let variable = e.actor.len()
        + e.db_role.len()
        + e.action.len()
        + e.entity_type.len()
        + e.entity_id.map_or(0, <[u8]>::len)
        + e.severity.len()
        + e.details.len()
        + e.ip_address.map_or(0, <[u8]>::len)
        + e.user_agent.map_or(0, <[u8]>::len);
    let mut buf =
        Vec::with_capacity(DOMAIN_EVENT.len() + HASH_LEN + 15 * 5 + 2 * 16 + 4 * 8 + variable);
    let h = &mut buf;
    h.extend_from_slice(DOMAIN_EVENT);
    h.extend_from_slice(prev_hash);
    field(h, 0x01, Some(&e.tenant_id));
    field(h, 0x02, Some(&e.seq.to_be_bytes()));
    field(h, 0x03, Some(&e.id));
    field(h, 0x04, Some(&e.occurred_at.to_be_bytes()));
    field(h, 0x05, Some(&e.recorded_at.to_be_bytes()));
    field(h, 0x06, Some(e.actor));
    field(h, 0x07, Some(e.db_role));
    field(h, 0x08, Some(&e.txid.to_be_bytes()));
    field(h, 0x09, Some(e.action));
    field(h, 0x0A, Some(e.entity_type));
    field(h, 0x0B, e.entity_id);
    field(h, 0x0C, Some(e.severity));
    field(h, 0x0D, Some(e.details));
    field(h, 0x0E, e.ip_address);
    field(h, 0x0F, e.user_agent);
    Sha256::digest(&buf).into()
}

/// Canonical JSON of a `details` document: exactly the text PostgreSQL's `jsonb` type prints, so
/// the trigger hashes `jsonb_out` without parsing, and anyone holding an export can rebuild it:
/// object keys ordered by UTF-8 length, then bytewise (jsonb's storage order); `", "` between
/// members and elements, `": "` after keys; strings escaped as `escape_json` does (`\"`, `\\`,
/// `\b \f \n \r \t`, other control characters as `\u00xx`, everything else as is); numbers as
/// PostgreSQL prints the numeric (serde_json's `arbitrary_precision` keeps that text). A pg_test
/// checks this function against `jsonb_out` on generated documents.
pub fn canonical_json(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => push_json_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sorted explicitly: serde_json's map order depends on crate features.
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| key_order(a.0.as_bytes(), b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                push_json_string(k, out);
                out.push_str(": ");
                canonical_json(v, out);
            }
            out.push('}');
        }
    }
}

#[allow(unsafe_code)]
pub fn push_json_string(s: &str, out: &mut String) {
    // SAFETY: push_json_bytes cuts `s` only next to ASCII bytes (no byte of a multi-byte UTF-8
    // character is ASCII) and adds only ASCII, so `out` stays UTF-8.
    push_json_bytes(s.as_bytes(), unsafe { out.as_mut_vec() })
}

/// Appends `text` as a JSON string, quoted and escaped as jsonb prints strings (`escape_json` in
/// PostgreSQL's json.c). Runs that need no escaping are copied whole, and are found eight bytes at
/// a time: stored strings rarely need any escaping.
pub fn push_json_bytes(text: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut plain_from = 0;
    let mut i = 0;
    while i < text.len() {
        // Eight bytes at a time; a shorter tail (most keys and many values) is padded with
        // spaces, which need no escaping.
        let chunk = &text[i..text.len().min(i + 8)];
        let mut word = [b' '; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        if !any_byte_needs_escape(u64::from_le_bytes(word)) {
            i += chunk.len();
            continue;
        }
        let b = text[i];
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0..=0x1F => b"",
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&text[plain_from..i]);
        if escaped.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xF)]);
        } else {
            out.extend_from_slice(escaped);
        }
        i += 1;
        plain_from = i;
    }
    out.extend_from_slice(&text[plain_from..]);
    out.push(b'"');
}

/// Whether any of the eight bytes of `word` is a control character, `"` or `\`. Exact in this
/// direction (a word it passes needs no escaping); it may report a word that does not need any,
/// which the byte-wise path then copies unchanged.
fn any_byte_needs_escape(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const fn each(b: u8) -> u64 {
        u64::from_ne_bytes([b; 8])
    }
    // A byte below n (n <= 0x80) borrows into its high bit in `word - n` unless it was set before.
    let below = |n: u64| word.wrapping_sub(n) & !word & HIGH != 0;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    below(each(0x20)) || has_zero(word ^ each(b'"')) || has_zero(word ^ each(b'\\'))
}

pub fn canonical_json_string(value: &serde_json::Value) -> String {
    let mut out = String::with_capacity(64);
    canonical_json(value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sample<'a>() -> EventFields<'a> {
        EventFields {
            tenant_id: [1; 16],
            seq: 1,
            id: [2; 16],
            occurred_at: 1_000,
            recorded_at: 2_000,
            actor: b"alice",
            db_role: b"app",
            txid: 42,
            action: b"login",
            entity_type: b"user",
            entity_id: Some(&b"u1"[..]),
            severity: b"info",
            details: b"{}",
            ip_address: None,
            user_agent: None,
        }
    }

    #[test]
    fn known_answer() {
        // Pins format v1: changing the encoding must fail this test and bump the version.
        let h = event_hash(&genesis_hash(&[1; 16]), &sample());
        assert_eq!(hex::encode(h), KNOWN_V1);
    }
    const KNOWN_V1: &str = "b1bbb20de2f78d3b74caff351d104d08790e2dd1d97d7cfa74651caa545d7d11";

    #[test]
    fn every_field_changes_the_hash() {
        let base = sample();
        let prev = genesis_hash(&base.tenant_id);
        let h0 = event_hash(&prev, &base);
        let variants: Vec<EventFields> = vec![
            EventFields {
                tenant_id: [9; 16],
                ..base.clone()
            },
            EventFields {
                seq: 2,
                ..base.clone()
            },
            EventFields {
                id: [3; 16],
                ..base.clone()
            },
            EventFields {
                occurred_at: 1_001,
                ..base.clone()
            },
            EventFields {
                recorded_at: 2_001,
                ..base.clone()
            },
            EventFields {
                actor: b"mallory",
                ..base.clone()
            },
            EventFields {
                db_role: b"root",
                ..base.clone()
            },
            EventFields {
                txid: 43,
                ..base.clone()
            },
            EventFields {
                action: b"logout",
                ..base.clone()
            },
            EventFields {
                entity_type: b"group",
                ..base.clone()
            },
            EventFields {
                entity_id: None,
                ..base.clone()
            },
            EventFields {
                entity_id: Some(&b""[..]),
                ..base.clone()
            },
            EventFields {
                severity: b"high",
                ..base.clone()
            },
            EventFields {
                details: b"{\"a\": 1}",
                ..base.clone()
            },
            EventFields {
                ip_address: Some(&b"10.0.0.1"[..]),
                ..base.clone()
            },
            EventFields {
                user_agent: Some(&b""[..]),
                ..base.clone()
            },
        ];
        for v in &variants {
            assert_ne!(event_hash(&prev, v), h0, "{v:?}");
        }
        assert_ne!(event_hash(&[0; 32], &base), h0, "prev_hash is covered");
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let base = sample();
        let prev = [0; 32];
        let a = EventFields {
            action: b"ab",
            entity_type: b"c",
            ..base.clone()
        };
        let b = EventFields {
            action: b"a",
            entity_type: b"bc",
            ..base
        };
        assert_ne!(event_hash(&prev, &a), event_hash(&prev, &b));
    }

    #[test]
    fn genesis_differs_per_tenant() {
        assert_ne!(genesis_hash(&[1; 16]), genesis_hash(&[2; 16]));
    }

    #[test]
    fn canonical_json_is_jsonb_text() {
        // What `SELECT '{ "b": [1, {"zz": null, "a": true}], "a": "x\ny", "aa": 1.50 }'::jsonb` prints.
        let v: serde_json::Value = serde_json::from_str(
            r#"{ "b": [1, {"zz": null, "a": true}], "a": "x\ny", "aa": 1.50 }"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json_string(&v),
            r#"{"a": "x\ny", "b": [1, {"a": true, "zz": null}], "aa": 1.50}"#
        );
        assert_eq!(canonical_json_string(&json!({})), "{}");
        assert_eq!(canonical_json_string(&json!([])), "[]");
    }

    #[test]
    fn canonical_json_keeps_big_and_precise_numbers() {
        let a: serde_json::Value = serde_json::from_str("12345678901234567890").unwrap();
        let b: serde_json::Value = serde_json::from_str("12345678901234567891").unwrap();
        assert_ne!(canonical_json_string(&a), canonical_json_string(&b));
        let c: serde_json::Value = serde_json::from_str("0.1000000000000000000001").unwrap();
        assert_eq!(canonical_json_string(&c), "0.1000000000000000000001");
    }

    #[test]
    fn canonical_json_escapes_control_characters() {
        assert_eq!(
            canonical_json_string(&json!("\u{1}\u{1f}\"\\")),
            r#""\u0001\u001f\"\\""#
        );
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The escaping jsonb's output function does, one byte at a time.
    fn escaped_bytewise(text: &[u8]) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &b in text {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0C => out.extend_from_slice(b"\\f"),
                0..=0x1F => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                _ => out.push(b),
            }
        }
        out.push(b'"');
        out
    }

    #[test]
    fn every_byte_value_at_every_word_position_is_escaped_as_jsonb_does() {
        for b in 0..=255u8 {
            for len in 1..=17 {
                for at in 0..len {
                    let mut text = b"abcdefghijklmnopq"[..len].to_vec();
                    text[at] = b;
                    let mut out = Vec::new();
                    push_json_bytes(&text, &mut out);
                    assert_eq!(
                        out,
                        escaped_bytewise(&text),
                        "byte {b:#04x} at {at} of {len}"
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn escaping_word_at_a_time_matches_bytewise(text in proptest::collection::vec(
            prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x20, 0x20u8..=0xFF], 0..64)) {
            let mut out = Vec::new();
            push_json_bytes(&text, &mut out);
            prop_assert_eq!(out, escaped_bytewise(&text));
        }

        #[test]
        fn canonical_json_is_valid_json_with_the_same_value(v in arb_json()) {
            let text = canonical_json_string(&v);
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(canonical_json_string(&back), text);
        }

        #[test]
        fn canonical_json_ignores_key_order(pairs in prop::collection::vec((".{0,6}", any::<i32>()), 0..8)) {
            let mut forward = serde_json::Map::new();
            for (k, v) in &pairs { forward.insert(k.clone(), json!(v)); }
            let mut reversed_text = String::from("{");
            let entries: Vec<_> = forward.iter().collect();
            for (i, (k, v)) in entries.iter().rev().enumerate() {
                if i > 0 { reversed_text.push_str(" , "); }
                reversed_text.push_str(&format!("{} : {}", serde_json::to_string(k).unwrap(), v));
            }
            reversed_text.push('}');
            let reversed: serde_json::Value = serde_json::from_str(&reversed_text).unwrap();
            prop_assert_eq!(canonical_json_string(&serde_json::Value::Object(forward)), canonical_json_string(&reversed));
        }
    }
}
