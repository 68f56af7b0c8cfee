//! custos' pure logic, with no pgrx or PostgreSQL type in sight: what the extension computes and
//! what anyone may recompute outside the database (an export verifier, a fuzz target). The module
//! tree mirrors the extension's capabilities, so `custos_core::ledger::chain` is the pure half of
//! `custos::ledger`.
#![deny(unsafe_code)]

pub mod ledger {
    pub mod chain;
    pub mod checkpoint;
    pub mod event_id;
    pub mod verify;
}

pub mod crypto {
    pub mod envelope;
    pub mod pseudonym;
}

pub mod tenancy {
    pub mod claims;
}

pub mod dormant {
    pub mod risk;
}

pub mod jobs;
pub mod time;
pub mod webhooks;

pub mod ai {
    pub mod bedrock;
    pub mod embed;
    pub mod openai;
    pub mod provider;
    pub mod redact;
    pub mod resilience;
    pub mod sigv4;
    pub mod tasks;
}

pub mod anomaly {
    pub mod forest;
    mod simd;
}
