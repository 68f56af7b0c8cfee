//! Similarity search (sql/search.sql): embeddings of identities and events stored with their
//! model, dimensions and content hash; HNSW indexes per common dimension; `similar_users`,
//! `search_events` and `similar_events` for the current tenant. Written in SQL on top of
//! `custos_internal.embed_texts` (src/ai): what is Rust here is its tests.

#[cfg(any(test, feature = "pg_test"))]
use pgrx::prelude::*;

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("db_tests.rs");
}
