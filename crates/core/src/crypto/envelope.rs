//! AES-256-GCM envelope encryption, pure: key wrapping (master key → tenant data key → subject
//! key) and sealed field values. Every ciphertext is bound by its associated data to where it
//! belongs (tenant, key version, event, field), so a value copied elsewhere fails to open.
//! Key-wrapping nonces come from the caller (the server's strong random source), which keeps this
//! testable; a field's nonce is derived from the event id, which carries 74 random bits (see
//! `field_nonce`).

use aes_gcm::aead::{Aead, AeadInPlace, Payload};
use aes_gcm::{Aes256Gcm, Key, KeyInit, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
pub type SecretKey = [u8; KEY_LEN];

/// Sealed field values are stored as
/// `enc3.<base64url(subject key's short id)>.<base64url(ciphertext || tag)>`, the short id four
/// bytes (six characters) that name the key within its tenant, the nonce derived from the event
/// id and the field (`field_nonce`). The previous form, `enc2.`, named the key by its 16-byte id
/// (22 characters) and is still read. Every byte here is stored, logged and hashed for every
/// sealed field of every event, which is what encryption mostly costs at ingest.
pub const SEALED_PREFIX: &str = "enc3.";
const SEALED_PREFIX_V2: &str = "enc2.";

/// How a sealed value names its subject key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// The key's id (`subject_keys.id`), in `enc2.` values.
    Id([u8; 16]),
    /// The key's short id within its tenant (`subject_keys.short_id`), in `enc3.` values.
    Short(i32),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CryptoError {
    #[error("not a sealed value")]
    NotSealed,
    #[error("malformed sealed value")]
    Malformed,
    #[error("ciphertext does not open with this key here (tampered, moved to another row or tenant, or another key)")]
    Rejected,
    #[error("the key that sealed it is not here: this database holds no subject keys (replicate or restore custos.subject_keys and custos.data_keys with the ledger)")]
    KeyMissing,
}

fn seal(key: &SecretKey, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(aad.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
    buf.extend_from_slice(aad);
    buf.extend_from_slice(nonce);
    buf.extend_from_slice(plaintext);
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    encrypt_tail(&cipher, nonce, &mut buf, aad.len(), aad.len() + NONCE_LEN);
    buf.drain(..aad.len());
    buf
}

/// Encrypts `buf[body_start..]` in place, bound to the associated data `buf[..aad_len]`, and
/// appends the tag.
fn encrypt_tail(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_LEN],
    buf: &mut Vec<u8>,
    aad_len: usize,
    body_start: usize,
) {
    let (head, body) = buf.split_at_mut(body_start);
    // AES-GCM encryption cannot fail for inputs below 64 GiB.
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(nonce), &head[..aad_len], body)
        .unwrap_or_default();
    buf.extend_from_slice(&tag);
}

/// Opens nonce || ciphertext || tag (a wrapped key).
fn open(key: &SecretKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Malformed);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    decrypt(key, nonce, aad, ciphertext)
}

fn decrypt(
    key: &SecretKey,
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Rejected)
}

/// A master key's public name: the first 8 bytes of SHA-256 over a domain and the key, in hex.
/// It tells which key wrapped a data key without revealing anything of the key.
pub fn master_key_id(key: &SecretKey) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"custos/master-key-id/v1\0")
        .chain_update(key)
        .finalize();
    hex::encode(&digest[..8])
}

fn to_key(bytes: Vec<u8>) -> Result<SecretKey, CryptoError> {
    SecretKey::try_from(bytes).map_err(|_| CryptoError::Malformed)
}

fn data_key_aad(tenant: &[u8; 16], version: i32) -> Vec<u8> {
    let mut aad = b"custos/key/tenant/v1\0".to_vec();
    aad.extend_from_slice(tenant);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn subject_key_aad(tenant: &[u8; 16], key_id: &[u8; 16]) -> Vec<u8> {
    let mut aad = b"custos/key/subject/v1\0".to_vec();
    aad.extend_from_slice(tenant);
    aad.extend_from_slice(key_id);
    aad
}

const FIELD_DOMAIN: &[u8] = b"custos/field/v1\0";

fn field_aad(tenant: &[u8; 16], event_id: &[u8; 16], field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(FIELD_DOMAIN.len() + 32 + field.len());
    push_field_aad(&mut aad, tenant, event_id, field);
    aad
}

fn push_field_aad(aad: &mut Vec<u8>, tenant: &[u8; 16], event_id: &[u8; 16], field: &str) {
    aad.extend_from_slice(FIELD_DOMAIN);
    aad.extend_from_slice(tenant);
    aad.extend_from_slice(event_id);
    aad.extend_from_slice(field.as_bytes());
}

/// A tenant's data key (version `version`), wrapped by the master key.
pub fn wrap_data_key(
    master: &SecretKey,
    tenant: &[u8; 16],
    version: i32,
    key: &SecretKey,
    nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    seal(master, nonce, &data_key_aad(tenant, version), key)
}

pub fn unwrap_data_key(
    master: &SecretKey,
    tenant: &[u8; 16],
    version: i32,
    wrapped: &[u8],
) -> Result<SecretKey, CryptoError> {
    to_key(open(master, &data_key_aad(tenant, version), wrapped)?)
}

/// A subject's key, wrapped by its tenant's data key.
pub fn wrap_subject_key(
    data_key: &SecretKey,
    tenant: &[u8; 16],
    key_id: &[u8; 16],
    key: &SecretKey,
    nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    seal(data_key, nonce, &subject_key_aad(tenant, key_id), key)
}

pub fn unwrap_subject_key(
    data_key: &SecretKey,
    tenant: &[u8; 16],
    key_id: &[u8; 16],
    wrapped: &[u8],
) -> Result<SecretKey, CryptoError> {
    to_key(open(data_key, &subject_key_aad(tenant, key_id), wrapped)?)
}

/// A subject key ready to seal many fields: its AES key schedule and the stored values' prefix
/// are made once, not per value.
#[derive(Clone)]
pub struct FieldSealer {
    cipher: Aes256Gcm,
    prefix: String,
}

impl FieldSealer {
    pub fn new(key: &SecretKey, short_id: i32) -> FieldSealer {
        FieldSealer {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
            prefix: format!("{SEALED_PREFIX}{}.", B64.encode(short_id.to_be_bytes())),
        }
    }

    /// Seals one field of one event as stored text.
    pub fn seal(
        &self,
        tenant: &[u8; 16],
        event_id: &[u8; 16],
        field: &str,
        plaintext: &str,
    ) -> String {
        // One buffer holds the associated data, then ciphertext || tag, and one string the stored
        // text: this runs for several fields of every event written.
        let sealed_len = plaintext.len() + TAG_LEN;
        let aad_len = FIELD_DOMAIN.len() + 32 + field.len();
        let mut buf = Vec::with_capacity(aad_len + sealed_len);
        push_field_aad(&mut buf, tenant, event_id, field);
        buf.extend_from_slice(plaintext.as_bytes());
        encrypt_tail(
            &self.cipher,
            &field_nonce(event_id, field),
            &mut buf,
            aad_len,
            aad_len,
        );
        let sealed = &buf[aad_len..];
        let encoded_len = base64::encoded_len(sealed.len(), false).unwrap_or(0);
        let mut out = Vec::with_capacity(self.prefix.len() + encoded_len);
        out.extend_from_slice(self.prefix.as_bytes());
        out.resize(self.prefix.len() + encoded_len, 0);
        let written = B64
            .encode_slice(sealed, &mut out[self.prefix.len()..])
            .unwrap_or(0);
        out.truncate(self.prefix.len() + written);
        // Base64 and the prefix are ASCII.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A field's nonce: SHA-256 over a domain, the event id and the field name, cut to 96 bits. A
/// subject key seals each (event, field) once: event ids are unique in a tenant, and an id that
/// an aborted insert used is not used again (its 74 random bits are drawn anew), so nonces repeat
/// under one key only as often as random 96-bit ones would. Nothing of it needs storing.
fn field_nonce(event_id: &[u8; 16], field: &str) -> [u8; NONCE_LEN] {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"custos/nonce/v2\0")
        .chain_update(event_id)
        .chain_update(field.as_bytes())
        .finalize();
    let mut nonce = [0; NONCE_LEN];
    nonce.copy_from_slice(&digest[..NONCE_LEN]);
    nonce
}

pub fn is_sealed(stored: &str) -> bool {
    looks_sealed(stored.as_bytes())
}

pub fn looks_sealed(stored: &[u8]) -> bool {
    stored.starts_with(SEALED_PREFIX.as_bytes()) || stored.starts_with(SEALED_PREFIX_V2.as_bytes())
}

/// The subject key a sealed value needs, and the sealed bytes (ciphertext || tag).
pub fn parse_sealed(stored: &str) -> Result<(KeyRef, Vec<u8>), CryptoError> {
    let (rest, short) = match stored.strip_prefix(SEALED_PREFIX) {
        Some(rest) => (rest, true),
        None => (
            stored
                .strip_prefix(SEALED_PREFIX_V2)
                .ok_or(CryptoError::NotSealed)?,
            false,
        ),
    };
    let (key_text, body) = rest.split_once('.').ok_or(CryptoError::Malformed)?;
    let key_bytes = B64.decode(key_text).map_err(|_| CryptoError::Malformed)?;
    let key_id = if short {
        <[u8; 4]>::try_from(key_bytes).map(|b| KeyRef::Short(i32::from_be_bytes(b)))
    } else {
        <[u8; 16]>::try_from(key_bytes).map(KeyRef::Id)
    }
    .map_err(|_| CryptoError::Malformed)?;
    let sealed = B64.decode(body).map_err(|_| CryptoError::Malformed)?;
    if sealed.len() < TAG_LEN {
        return Err(CryptoError::Malformed);
    }
    Ok((key_id, sealed))
}

pub fn open_field(
    key: &SecretKey,
    tenant: &[u8; 16],
    event_id: &[u8; 16],
    field: &str,
    sealed: &[u8],
) -> Result<String, CryptoError> {
    let nonce = field_nonce(event_id, field);
    let plain = decrypt(key, &nonce, &field_aad(tenant, event_id, field), sealed)?;
    String::from_utf8(plain).map_err(|_| CryptoError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T1: [u8; 16] = [1; 16];
    const T2: [u8; 16] = [2; 16];
    const E1: [u8; 16] = [0xE1; 16];
    const E2: [u8; 16] = [0xE2; 16];
    const KID: i32 = 0x4B4B_4B4B;
    const KEY: SecretKey = [7; 32];

    fn sealed(plain: &str) -> String {
        FieldSealer::new(&KEY, KID).seal(&T1, &E1, "ip_address", plain)
    }

    #[test]
    fn a_field_opens_only_where_it_was_sealed() {
        let stored = sealed("10.1.2.3");
        assert!(is_sealed(&stored));
        let (kid, body) = parse_sealed(&stored).unwrap();
        assert_eq!(kid, KeyRef::Short(KID));
        assert_eq!(
            open_field(&KEY, &T1, &E1, "ip_address", &body).unwrap(),
            "10.1.2.3"
        );
        // Another event, tenant, field or key: refused.
        assert_eq!(
            open_field(&KEY, &T1, &E2, "ip_address", &body),
            Err(CryptoError::Rejected)
        );
        assert_eq!(
            open_field(&KEY, &T2, &E1, "ip_address", &body),
            Err(CryptoError::Rejected)
        );
        assert_eq!(
            open_field(&KEY, &T1, &E1, "user_agent", &body),
            Err(CryptoError::Rejected)
        );
        assert_eq!(
            open_field(&[8; 32], &T1, &E1, "ip_address", &body),
            Err(CryptoError::Rejected)
        );
        // The previous form names the key by its full id; its body opens the same way.
        let previous = format!("enc2.{}.{}", B64.encode([0x4B; 16]), B64.encode(&body));
        assert!(is_sealed(&previous));
        assert_eq!(parse_sealed(&previous), Ok((KeyRef::Id([0x4B; 16]), body)));
    }

    #[test]
    fn malformed_values_are_named() {
        let short = B64.encode(KID.to_be_bytes());
        let long = B64.encode([0x4B; 16]);
        for bad in ["10.1.2.3", "enc1.4b4b.abc"] {
            assert_eq!(parse_sealed(bad), Err(CryptoError::NotSealed), "{bad}");
        }
        for bad in [
            "enc3.zz.abc",
            "enc3.!!!!.abc",
            &format!("enc3.{short}"),
            // A short id where a long one belongs, and the other way round.
            &format!("enc2.{short}.{}", B64.encode([0; 20])),
            &format!("enc3.{long}.{}", B64.encode([0; 20])),
            // A short id with bits set past its four bytes.
            &format!("enc3.S0tLSx.{}", B64.encode([0; 20])),
        ] {
            assert_eq!(parse_sealed(bad), Err(CryptoError::Malformed), "{bad}");
        }
        // Shorter than a tag.
        assert_eq!(
            parse_sealed(&format!("enc3.{short}.AAAA")),
            Err(CryptoError::Malformed)
        );
    }

    #[test]
    fn stored_form_is_compact_and_nonces_differ_by_event_and_field() {
        // prefix, 6 characters of short key id, dot, base64 of ciphertext and tag: no stored nonce.
        assert_eq!(sealed("10.1.2.3").len(), 5 + 6 + 1 + 32);
        assert_ne!(
            field_nonce(&E1, "ip_address"),
            field_nonce(&E2, "ip_address")
        );
        assert_ne!(
            field_nonce(&E1, "ip_address"),
            field_nonce(&E1, "user_agent")
        );
    }

    #[test]
    fn master_key_ids_name_keys_without_revealing_them() {
        assert_eq!(master_key_id(&KEY), master_key_id(&KEY));
        assert_ne!(master_key_id(&KEY), master_key_id(&[8; 32]));
        assert_eq!(master_key_id(&KEY).len(), 16);
    }

    #[test]
    fn keys_wrap_and_unwrap_bound_to_tenant_and_version() {
        let wrapped = wrap_data_key(&KEY, &T1, 2, &[9; 32], &[1; 12]);
        assert_eq!(unwrap_data_key(&KEY, &T1, 2, &wrapped).unwrap(), [9; 32]);
        assert!(unwrap_data_key(&KEY, &T1, 1, &wrapped).is_err());
        assert!(unwrap_data_key(&KEY, &T2, 2, &wrapped).is_err());
        assert!(unwrap_data_key(&[0; 32], &T1, 2, &wrapped).is_err());
        let wrapped = wrap_subject_key(&[9; 32], &T1, &[0x4B; 16], &[5; 32], &[2; 12]);
        assert_eq!(
            unwrap_subject_key(&[9; 32], &T1, &[0x4B; 16], &wrapped).unwrap(),
            [5; 32]
        );
        assert!(unwrap_subject_key(&[9; 32], &T1, &E1, &wrapped).is_err());
    }

    proptest! {
        #[test]
        fn round_trip_and_any_flipped_bit_is_caught(plain in "\\PC{0,200}", event in any::<[u8; 16]>(), flip in any::<prop::sample::Index>()) {
            let stored = FieldSealer::new(&KEY, KID).seal(&T1, &event, "details.email", &plain);
            let (_, mut body) = parse_sealed(&stored).unwrap();
            let open = |body: &[u8]| open_field(&KEY, &T1, &event, "details.email", body);
            prop_assert_eq!(open(&body).unwrap(), plain);
            let bit = flip.index(body.len() * 8);
            body[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(open(&body).is_err());
        }
    }
}
