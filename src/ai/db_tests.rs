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
    // A caller's own `=` placed before pg_catalog does not empty the rules.
    Spi::run(
        "CREATE SCHEMA evil; CREATE FUNCTION evil.never(uuid, uuid) RETURNS boolean LANGUAGE sql AS 'SELECT false';
         CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.never);
         SET LOCAL search_path = evil, pg_catalog",
    )
    .unwrap();
    assert_eq!(
        Spi::get_one::<String>("SELECT custos.redact('EMP-12345 and jdoe42')")
            .unwrap()
            .as_deref(),
        Some("<REDACTED_1> and <PERSON_1>")
    );
    Spi::run("RESET search_path").unwrap();
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

/// Sets `key` of the current tenant's settings to the JSON `value`.
fn set(key: &str, value: &str) {
    Spi::run(&format!("SELECT custos.set_setting('{key}', '{value}')")).unwrap();
}

#[pg_test]
fn complete_json_answers_by_rules_in_the_database() {
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000a1004')").unwrap();
    let answer = Spi::get_one::<pgrx::JsonB>(
        "SELECT custos.complete_json('triage_alert', '{\"alert\": \"Critical: bulk export by ana@example.com\", \"events\": [1, 2, 3]}')",
    )
    .unwrap()
    .unwrap()
    .0;
    assert_eq!(answer["severity"], "critical", "{answer}");
    assert_eq!(answer["likely_benign"], false);
    assert_eq!(answer["next_steps"].as_array().map(Vec::len), Some(1));
    // The answer is the caller's: the original values are in it.
    assert!(answer["summary"]
        .as_str()
        .unwrap()
        .contains("ana@example.com"));
    // Answered in the database: nothing was sent, so nothing is billed or logged.
    assert_eq!(count("SELECT count(*) FROM custos.ai_calls"), 0);
    assert_eq!(
        count("SELECT count(*) FROM custos.events WHERE action = 'ai.call'"),
        0
    );
    for (sql, state, needle) in [
        ("SELECT custos.complete_json('no_such_task', '{}')", "42704", "does not exist"),
        ("SELECT custos.complete_json(NULL, '{}')", "22004", "task cannot be NULL"),
        ("SELECT custos.complete_json('triage_alert', NULL)", "22004", "input cannot be NULL"),
        (
            "SELECT custos.complete_json('triage_alert', jsonb_build_object('t', repeat('a', 1048577)))",
            "54000",
            "more than",
        ),
    ] {
        assert_error(sql, state, needle);
    }
    Spi::run("SELECT set_config('custos.tenant_id', '', true)").unwrap();
    assert_error(
        "SELECT custos.complete_json('triage_alert', '{}')",
        "42501",
        "needs a tenant",
    );
}

#[pg_test]
fn tasks_are_versioned_and_their_schemas_must_be_fillable_by_the_fallback() {
    // A tenant admin registers them (row-level security applies to it, not to superusers).
    Spi::run("CREATE ROLE custos_test_ai_admin NOLOGIN; GRANT custos_admin TO custos_test_ai_admin; SET LOCAL ROLE custos_test_ai_admin").unwrap();
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000a1005')").unwrap();
    let schema = r#"{"type": "object", "required": ["label"], "properties": {"label": {"enum": ["spam", "ham"], "default": "ham"}}}"#;
    let register = |prompt: &str| {
        Spi::get_one::<i32>(&format!(
            "SELECT custos.register_ai_task('classify', 'Classify.', '{prompt}', '{schema}')"
        ))
        .unwrap()
    };
    assert_eq!(register("Text: {{input}}"), Some(1));
    assert_eq!(register("Message: {{input}}"), Some(2));
    assert_eq!(
        count("SELECT version FROM custos.ai_tasks WHERE name = 'classify' AND active"),
        2
    );
    let answer = Spi::get_one::<pgrx::JsonB>(
        "SELECT custos.complete_json('classify', '{\"text\": \"buy cheap spam now\"}')",
    )
    .unwrap()
    .unwrap()
    .0;
    assert_eq!(answer, serde_json::json!({"label": "spam"}));
    // Another tenant sees the shared tasks, not this one's.
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000a1006')").unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.ai_tasks WHERE name = 'classify'"),
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM custos.ai_tasks WHERE builtin AND tenant_id IS NULL"),
        count("SELECT count(*) FROM custos.ai_tasks WHERE tenant_id IS NULL"),
        "the shared tasks are the built-in ones"
    );
    assert!(count("SELECT count(*) FROM custos.ai_tasks WHERE name = 'triage_alert'") == 1);
    assert_error(
        "SELECT custos.complete_json('classify', '{}')",
        "42704",
        "does not exist",
    );
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000a1005')").unwrap();
    let bad = |prompt: &str, schema: &str, needle: &str| {
        assert_error(
            &format!("SELECT custos.register_ai_task('bad', 'S.', '{prompt}', '{schema}')"),
            "22023",
            needle,
        );
    };
    bad(
        "no slot",
        r#"{"type": "object"}"#,
        "does not take the input",
    );
    bad(
        "{{input}}",
        r#"{"type": "array"}"#,
        "must have \"type\": \"object\"",
    );
    bad(
        "{{input}}",
        r#"{"type": "object", "properties": {"a": {"type": "wrong"}}}"#,
        "invalid answer schema",
    );
    bad(
        "{{input}}",
        r#"{"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}}"#,
        "invalid answer schema",
    );
    bad(
        "{{input}}",
        r#"{"type": "object", "required": ["code"], "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}}}"#,
        "cannot fill",
    );
    // A version never changes; only whether it is active.
    Spi::run("UPDATE custos.ai_tasks SET active = false WHERE name = 'classify' AND version = 2")
        .unwrap();
    Spi::run("RESET ROLE").unwrap();
    assert_error(
        "UPDATE custos.ai_tasks SET system_prompt = 'changed' WHERE name = 'classify' AND version = 1",
        "55000",
        "cannot change",
    );
}

#[pg_test]
fn remote_calls_are_budgeted_guarded_and_refused_clearly_without_shared_memory() {
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000a1007')").unwrap();
    // Nothing listens on port 1: every attempt fails at once.
    set("ai.provider", "\"bedrock\"");
    set("ai.embedding_model", "\"amazon.titan-embed-text-v2:0\"");
    set("ai.endpoint", "\"http://127.0.0.1:1\"");
    assert_error("SELECT custos.embed('hello')", "42501", "not allowed");
    Spi::run("SET LOCAL custos.ai_allowed_endpoints = 'http://127.0.0.1:1'").unwrap();
    set("ai.max_retries", "0");
    set("ai.breaker_failures", "2");
    // Budget: 5 tokens cannot hold a 40-byte text's estimate; refused before anything is sent.
    set("ai.monthly_token_budget", "5");
    assert_error(
        "SELECT custos.embed('forty bytes of text, give or take a few')",
        "53400",
        "monthly AI budget of 5 tokens",
    );
    set("ai.monthly_token_budget", "100000");
    assert_error(
        "SELECT custos.embed('hello')",
        "28000",
        "no credentials for Amazon Bedrock",
    );
    Spi::run("SET LOCAL custos.aws_access_key_id = 'AKIDEXAMPLE'").unwrap();
    Spi::run("SET LOCAL custos.aws_secret_access_key = 'secret'").unwrap();
    // The key never shows: SHOW masks it.
    assert_eq!(
        Spi::get_one::<String>("SHOW custos.aws_secret_access_key")
            .unwrap()
            .as_deref(),
        Some("(set, hidden)")
    );
    for _ in 0..2 {
        assert_error(
            "SELECT custos.embed('hello')",
            "08006",
            "could not be reached",
        );
    }
    // Two failures in a row: the breaker is open and refuses without trying.
    assert_error(
        "SELECT custos.embed('hello')",
        "08006",
        "circuit breaker of bedrock is open",
    );
    // A Titan dimension Titan does not make is refused before a call (and before the breaker).
    set("ai.embedding_dimensions", "384");
    assert_error("SELECT custos.embed('hello')", "22023", "1024, 512 or 256");
    // Local models stay local whatever the provider.
    assert_eq!(
        count("SELECT vector_dims(custos.embed('hello', 'local-lexical-256'))::bigint"),
        256
    );
    // No call goes out while the transaction holds the tenant's chain lock.
    set("ai.embedding_dimensions", "0");
    Spi::run("SELECT custos.record_event('login', 'user', 'u1')").unwrap();
    assert_error(
        "SELECT custos.embed('hello')",
        "55000",
        "holds ledger chain locks",
    );
}
