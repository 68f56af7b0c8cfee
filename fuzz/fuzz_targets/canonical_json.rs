//! Canonical JSON of any document parses back to a document with the same canonical form.
#![no_main]
use custos_core::ledger::chain;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let text = chain::canonical_json_string(&value);
        let back: serde_json::Value = serde_json::from_str(&text).expect("canonical JSON is JSON");
        assert_eq!(chain::canonical_json_string(&back), text);
    }
});
