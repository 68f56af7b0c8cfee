//! Sealed values are read back from table rows a superuser could have edited: parsing must never
//! panic, and nothing but a value sealed with the key opens with it.
#![no_main]
use custos_core::crypto::envelope;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let key = [7u8; 32];
    if let Ok((_, body)) = envelope::parse_sealed(&text) {
        assert!(envelope::open_field(&key, &[1; 16], &[2; 16], "ip_address", &body).is_err());
    }
    // What custos seals from this input opens to the input, and only where it was sealed.
    let sealer = envelope::FieldSealer::new(&key, 3);
    let stored = sealer.seal(&[1; 16], &[2; 16], "details.email", &text);
    let (kid, body) = envelope::parse_sealed(&stored).expect("custos' own format parses");
    assert_eq!(kid, envelope::KeyRef::Short(3));
    assert_eq!(
        envelope::open_field(&key, &[1; 16], &[2; 16], "details.email", &body).as_deref(),
        Ok(&*text)
    );
    assert!(envelope::open_field(&key, &[1; 16], &[9; 16], "details.email", &body).is_err());
    let _ = envelope::unwrap_data_key(&key, &[1; 16], 1, data);
    let _ = envelope::unwrap_subject_key(&key, &[1; 16], &[3; 16], data);
});
