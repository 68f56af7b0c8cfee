//! Event ids that carry their event's place in the chain: an RFC 9562 version-8 UUID whose first
//! 48 bits are the tenant's seq and whose other 74 free bits are random. `custos.event(id)` reads
//! the seq back and finds the event through the primary key (tenant_id, seq), so no second index
//! has to be kept up to date on every insert. The id still looks up nothing outside the caller's
//! tenant, and the random bits keep ids of different tenants apart.

/// Largest seq an id can carry (48 bits); later events get fully random (version 4) ids.
pub const MAX_EMBEDDED_SEQ: i64 = (1 << 48) - 1;

/// The id of event `seq`, with `random` filling the free bits.
pub fn event_id(seq: i64, random: [u8; 16]) -> [u8; 16] {
    let mut id = random;
    if (1..=MAX_EMBEDDED_SEQ).contains(&seq) {
        id[..6].copy_from_slice(&seq.to_be_bytes()[2..]);
        id[6] = 0x80 | (id[6] & 0x0f);
    } else {
        id[6] = 0x40 | (id[6] & 0x0f);
    }
    id[8] = 0x80 | (id[8] & 0x3f);
    id
}

/// The seq an event id carries, if custos made it that way.
pub fn seq_of(id: &[u8; 16]) -> Option<i64> {
    let custos_made = id[6] >> 4 == 8 && id[8] >> 6 == 0b10;
    let mut seq = [0u8; 8];
    seq[2..].copy_from_slice(&id[..6]);
    let seq = i64::from_be_bytes(seq);
    (custos_made && seq > 0).then_some(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_version_8_with_the_rfc_variant() {
        let id = uuid::Uuid::from_bytes(event_id(42, [0xff; 16]));
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(seq_of(id.as_bytes()), Some(42));
    }

    #[test]
    fn other_uuids_carry_no_seq() {
        let v4 = event_id(MAX_EMBEDDED_SEQ + 1, [0x11; 16]);
        assert_eq!(uuid::Uuid::from_bytes(v4).get_version_num(), 4);
        assert_eq!(seq_of(&v4), None);
        assert_eq!(seq_of(&[0; 16]), None);
        let mut v8_seq_0 = event_id(1, [0; 16]);
        v8_seq_0[5] = 0;
        assert_eq!(seq_of(&v8_seq_0), None);
    }

    proptest! {
        #[test]
        fn the_seq_comes_back(seq in 1..=MAX_EMBEDDED_SEQ, random in any::<[u8; 16]>()) {
            prop_assert_eq!(seq_of(&event_id(seq, random)), Some(seq));
        }
    }
}
