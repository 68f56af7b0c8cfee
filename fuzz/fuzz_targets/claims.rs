//! `request.jwt.claims` and `custos.tenant_id` are untrusted text: resolving a tenant must never
//! panic, and a tenant may only come from a UUID that is actually in the input.
#![no_main]
use custos_core::tenancy::claims;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (local, rest) = text.split_once('\u{1}').unwrap_or(("", &text));
    if let Some(t) = claims::resolve_tenant(Some(local), Some(rest), "tenant_id") {
        let hex = t.simple().to_string();
        let input: String = text
            .chars()
            .filter(char::is_ascii_hexdigit)
            .collect::<String>()
            .to_lowercase();
        assert!(input.contains(&hex), "tenant {t} not in the input");
    }
    let _ = claims::subject_of(rest);
});
