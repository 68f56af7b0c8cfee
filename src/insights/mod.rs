//! Insights (sql/insights.sql): retrieval-augmented analyses of custos' own data, validated and
//! stored with who answered. `custos.analyze_dormant_user` gathers an identity's profile,
//! inactivity, deterministic risk and similar accounts, and runs the `analyze_dormant_user` task
//! (src/ai) on them. Written in SQL: what is Rust here is its tests.

#[cfg(any(test, feature = "pg_test"))]
use pgrx::prelude::*;

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("db_tests.rs");
}
