use crate::testing::{assert_error, count};
use pgrx::prelude::*;

#[pg_test]
fn redaction_uses_the_tenants_patterns_and_identities() {
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000a1001')").unwrap();
    Spi::run("SELECT custos.upsert_identities('[{\"user_id\": \"jdoe42\"}]')").unwrap();
    Spi::run("INSERT INTO custos.ai_redaction_patterns (pattern) VALUES ('EMP-[0-9]{5}')").unwrap();
    let out = Spi::get_one::<String>(
        "SELECT custos.redact('jdoe42 (EMP-12345, ana@example.com, +44 20 7946 0958) reset 10.0.0.7; order ORD-2024-001234')",
    )
    .unwrap();
    assert_eq!(
        out.as_deref(),
        Some(
            "<PERSON_1> (<REDACTED_1>, <EMAIL_1>, <PHONE_1>) reset <IPV4_1>; order ORD-2024-001234"
        )
    );
    // Another tenant's rules do not apply.
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000a1002')").unwrap();
    assert_eq!(
        Spi::get_one::<String>("SELECT custos.redact('jdoe42 EMP-12345')")
            .unwrap()
            .as_deref(),
        Some("jdoe42 EMP-12345")
    );
    assert_error(
        "INSERT INTO custos.ai_redaction_patterns (pattern) VALUES ('(unclosed')",
        "22023",
        "invalid redaction pattern",
    );
}

#[pg_test]
fn embeddings_are_pgvector_values_in_order_and_bad_input_is_refused() {
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000a1003')").unwrap();
    assert_eq!(
        count("SELECT vector_dims(custos.embed('failed login from a new address'))::bigint"),
        384
    );
    assert_eq!(
        count("SELECT vector_dims(custos.embed('x y', 'local-lexical-1536'))::bigint"),
        1536
    );
    // Closer for shared words; the batch keeps its order and equals single calls.
    let closer = Spi::get_one::<bool>(
        "SELECT custos.embed('failed login from a new IP') <=> custos.embed('failed logins from new IPs')
              < custos.embed('failed login from a new IP') <=> custos.embed('quarterly invoice totals')",
    )
    .unwrap();
    assert_eq!(closer, Some(true));
    assert_eq!(
        count("SELECT count(*) FROM (SELECT e, row_number() OVER () n FROM custos.embed_batch(ARRAY['alpha beta', 'gamma', 'alpha beta']) e) b
                WHERE e = custos.embed(CASE n WHEN 2 THEN 'gamma' ELSE 'alpha beta' END)"),
        3
    );
    // PII never reaches the vector: the same text with another e-mail embeds alike.
    assert_eq!(
        Spi::get_one::<bool>("SELECT custos.embed('mail ana@example.com now') = custos.embed('mail bob@example.org now')")
            .unwrap(),
        Some(true)
    );
    for (sql, state, needle) in [
        ("SELECT custos.embed(NULL)", "22004", "cannot be NULL"),
        ("SELECT custos.embed('  ;;  ')", "22023", "no word to embed"),
        (
            "SELECT custos.embed('a', 'no-such-model')",
            "22023",
            "unknown embedding model",
        ),
        (
            "SELECT custos.embed(repeat('a', 1048577))",
            "54000",
            "more than",
        ),
        (
            "SELECT * FROM custos.embed_batch(ARRAY['ok', NULL])",
            "22004",
            "input 2 cannot be NULL",
        ),
        ("SELECT custos.redact(NULL)", "22004", "cannot be NULL"),
    ] {
        assert_error(sql, state, needle);
    }
}
