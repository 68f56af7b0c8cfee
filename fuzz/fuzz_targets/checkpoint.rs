//! Checkpoint texts come from outside the database: parsing must never panic, and only a text
//! signed by the key verifies.
#![no_main]
use custos_core::ledger::checkpoint;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let text = String::from_utf8_lossy(data);
    if let Ok(cp) = checkpoint::verify(&text, &key.verifying_key()) {
        // Anything that verifies must be exactly what the key signed.
        assert_eq!(
            checkpoint::verify(&checkpoint::sign(&cp, &key), &key.verifying_key()),
            Ok(cp)
        );
    }
    let _ = checkpoint::parse_public_key(&text);
    let _ = checkpoint::parse_signing_key(&text);
});
