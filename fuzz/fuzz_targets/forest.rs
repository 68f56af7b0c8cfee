//! custos.models.model is bytes a restore or a superuser may have written: decoding a forest
//! must never panic, and whatever decodes must score any finite row without panicking.
#![no_main]
use custos_core::anomaly::forest::Forest;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(forest) = Forest::from_bytes(data) {
        let row = vec![0.5; forest.features()];
        let score = forest
            .score(&row)
            .expect("a decoded forest scores a row of its width");
        assert!(score > 0.0 && score <= 1.0, "score {score}");
        let _ = forest.contributions(&row);
        assert_eq!(Forest::from_bytes(&forest.to_bytes()).as_ref(), Ok(&forest));
    }
});
