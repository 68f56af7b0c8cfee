//! Signed checkpoints: a one-line text naming a tenant's chain head at a point in time, signed with
//! Ed25519, meant to be kept outside the database. A later `verify_checkpoint` proves the chain
//! still extends it, which catches a rewrite of the whole chain or a cut-off tail even when every
//! hash was recomputed.
//!
//! `custos-checkpoint v1 tenant=<uuid> seq=<n> head=<64 hex> at=<RFC 3339 UTC> key=<16 hex> sig=<base64>`
//!
//! The signature covers every byte before ` sig=`. `key` is the first 8 bytes of SHA-256 of the
//! public key, so a verifier can tell which key to use.

use super::chain::{Hash, HASH_LEN};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

const PREFIX: &str = "custos-checkpoint v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub tenant: uuid::Uuid,
    pub seq: i64,
    pub head: Hash,
    pub at: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("checkpoint was signed by key {found}, not by the configured key {expected}")]
    WrongKey { found: String, expected: String },
    #[error("checkpoint signature does not verify: the text was altered or signed by another key")]
    BadSignature,
    #[error("invalid key: {0}")]
    BadKey(String),
}

pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

fn body(cp: &Checkpoint, key: &VerifyingKey) -> String {
    format!(
        "{PREFIX} tenant={} seq={} head={} at={} key={}",
        cp.tenant.hyphenated(),
        cp.seq,
        hex::encode(cp.head),
        cp.at,
        key_id(key)
    )
}

pub fn sign(cp: &Checkpoint, key: &SigningKey) -> String {
    let body = body(cp, &key.verifying_key());
    let sig = key.sign(body.as_bytes());
    format!("{body} sig={}", B64.encode(sig.to_bytes()))
}

/// Parses a checkpoint and checks its signature against `key`.
pub fn verify(text: &str, key: &VerifyingKey) -> Result<Checkpoint, CheckpointError> {
    let text = text.trim();
    let malformed = |why: &str| CheckpointError::Malformed(why.to_owned());
    let (body, sig) = text
        .rsplit_once(" sig=")
        .ok_or_else(|| malformed("no sig= field"))?;
    let rest = body
        .strip_prefix(PREFIX)
        .ok_or_else(|| malformed("does not start with 'custos-checkpoint v1'"))?;
    let mut fields = rest.split(' ').filter(|f| !f.is_empty());
    let mut take = |name: &str| -> Result<&str, CheckpointError> {
        let f = fields
            .next()
            .ok_or_else(|| malformed(&format!("missing {name}=")))?;
        f.strip_prefix(name)
            .and_then(|v| v.strip_prefix('='))
            .ok_or_else(|| malformed(&format!("expected {name}= but found '{f}'")))
    };
    let tenant =
        uuid::Uuid::try_parse(take("tenant")?).map_err(|_| malformed("tenant is not a UUID"))?;
    let seq: i64 = take("seq")?
        .parse()
        .map_err(|_| malformed("seq is not a number"))?;
    let head_hex = take("head")?;
    let at = take("at")?.to_owned();
    let kid = take("key")?;
    if fields.next().is_some() {
        return Err(malformed("unexpected field after key="));
    }
    let mut head = [0u8; HASH_LEN];
    hex::decode_to_slice(head_hex, &mut head)
        .map_err(|_| malformed("head is not 64 hex digits"))?;
    if seq < 0 {
        return Err(malformed("seq is negative"));
    }
    let expected = key_id(key);
    if kid != expected {
        return Err(CheckpointError::WrongKey {
            found: kid.to_owned(),
            expected,
        });
    }
    let sig_bytes: [u8; 64] = B64
        .decode(sig.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed("sig is not a base64 Ed25519 signature"))?;
    key.verify(body.as_bytes(), &Signature::from_bytes(&sig_bytes))
        .map_err(|_| CheckpointError::BadSignature)?;
    Ok(Checkpoint {
        tenant,
        seq,
        head,
        at,
    })
}

pub fn decode_32(text: &str, what: &str) -> Result<[u8; 32], CheckpointError> {
    let t = text.trim();
    let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(t).ok()
    } else {
        B64.decode(t).ok()
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            CheckpointError::BadKey(format!(
                "{what} must be 32 bytes as 64 hex digits or base64"
            ))
        })
}

/// A signing key from its 32-byte seed, written as hex or base64.
pub fn parse_signing_key(text: &str) -> Result<SigningKey, CheckpointError> {
    Ok(SigningKey::from_bytes(&decode_32(text, "the signing key")?))
}

/// A public key, written as hex or base64.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, CheckpointError> {
    VerifyingKey::from_bytes(&decode_32(text, "the public key")?)
        .map_err(|_| CheckpointError::BadKey("not a valid Ed25519 public key".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }
    fn cp() -> Checkpoint {
        Checkpoint {
            tenant: uuid::Uuid::from_bytes([1; 16]),
            seq: 42,
            head: [9; 32],
            at: "2026-11-23T17:00:00.000000Z".into(),
        }
    }

    #[test]
    fn round_trip() {
        let text = sign(&cp(), &key());
        assert!(text.starts_with(
            "custos-checkpoint v1 tenant=01010101-0101-0101-0101-010101010101 seq=42 head=0909"
        ));
        assert_eq!(verify(&text, &key().verifying_key()), Ok(cp()));
        assert_eq!(
            verify(&format!("  {text}\n"), &key().verifying_key()),
            Ok(cp())
        );
    }

    #[test]
    fn any_edit_breaks_the_signature() {
        let text = sign(&cp(), &key());
        for (from, to) in [
            ("seq=42", "seq=43"),
            ("head=09", "head=08"),
            ("at=2026", "at=2025"),
        ] {
            let forged = text.replacen(from, to, 1);
            assert_eq!(
                verify(&forged, &key().verifying_key()),
                Err(CheckpointError::BadSignature),
                "{from}"
            );
        }
    }

    #[test]
    fn another_key_is_named() {
        let text = sign(&cp(), &key());
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(matches!(
            verify(&text, &other),
            Err(CheckpointError::WrongKey { .. })
        ));
    }

    #[test]
    fn malformed_texts_are_refused() {
        let k = key().verifying_key();
        for bad in [
            "",
            "hello",
            "custos-checkpoint v1 sig=abc",
            "custos-checkpoint v1 tenant=x seq=1 head=00 at=t key=k sig=s",
        ] {
            assert!(
                matches!(verify(bad, &k), Err(CheckpointError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_parse_from_hex_and_base64() {
        let hex_seed = "07".repeat(32);
        assert_eq!(parse_signing_key(&hex_seed).unwrap().to_bytes(), [7; 32]);
        assert_eq!(
            parse_signing_key(&B64.encode([7u8; 32]))
                .unwrap()
                .to_bytes(),
            [7; 32]
        );
        assert!(parse_signing_key("short").is_err());
        let public = hex::encode(key().verifying_key().as_bytes());
        assert_eq!(parse_public_key(&public).unwrap(), key().verifying_key());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = verify(&text, &key().verifying_key());
        }
    }
}
