//! AI providers from a client, against the mock Bedrock (and OpenAI-compatible) server on
//! 127.0.0.1: SigV4 checked by the mock, each error class retried or not, the circuit breaker
//! shared across backends, budgets exact under eight concurrent callers, no raw PII in any body
//! the mock captured, schema-invalid answers repaired or replaced, cancel and timeouts during a
//! stalled call, bad input, and tenants' settings kept apart through PostgREST's protocol.

use custos_integration_tests::mock_bedrock::{MockBedrock, MockConfig, Reply, TEST_BEARER_KEY};
use custos_integration_tests::{connect, fresh_db, postgrest_request, postgrest_roles, sqlstate};
use postgres::{Client, Row};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ACME: &str = "a1000000-0000-4000-8000-0000000000a1";
const GLOBEX: &str = "b2000000-0000-4000-8000-0000000000b2";
const TITAN_V2: &str = "amazon.titan-embed-text-v2:0";
const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";

/// A database with custos whose sessions may call `mock`, with the test credentials in a file
/// the server reads (settings given in a session would not reach PostgREST's sessions).
fn setup(name: &str, mock: &MockBedrock) -> (String, Client) {
    let (db, mut su) = fresh_db(name);
    let creds = format!("/tmp/custos-it-{name}.credentials");
    let c = mock.config();
    std::fs::write(
        &creds,
        format!(
            "# test credentials of the mock\naws_access_key_id = {}\naws_secret_access_key = {}\nopenai_api_key = {}\n",
            c.access_key_id, c.secret_access_key, TEST_BEARER_KEY
        ),
    )
    .unwrap();
    su.batch_execute(&format!(
        "ALTER DATABASE {db} SET custos.ai_credentials_file = '{creds}';
         ALTER DATABASE {db} SET custos.ai_allowed_endpoints = '{}';",
        mock.url()
    ))
    .unwrap();
    (db.clone(), connect(&db, "postgres"))
}

/// Sets the tenant's settings (JSON values) in one committed transaction.
fn settings(c: &mut Client, tenant: &str, pairs: &[(&str, Value)]) {
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT custos.set_tenant($1::text::uuid)", &[&tenant])
        .unwrap();
    for (key, value) in pairs {
        tx.execute(
            "SELECT custos.set_setting($1, $2::text::jsonb)",
            &[key, &value.to_string()],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// Bedrock for `tenant`: Titan v2 embeddings, Claude 3 Haiku answers, at the mock.
fn bedrock(c: &mut Client, tenant: &str, mock: &MockBedrock, more: &[(&str, Value)]) {
    let mut pairs = vec![
        ("ai.provider", json!("bedrock")),
        ("ai.endpoint", json!(mock.url())),
        ("ai.embedding_model", json!(TITAN_V2)),
        ("ai.chat_model", json!(HAIKU)),
    ];
    pairs.extend(more.iter().cloned());
    settings(c, tenant, &pairs);
}

/// Runs `sql` as `tenant` in a transaction of its own, committed.
fn as_tenant(c: &mut Client, tenant: &str, sql: &str) -> Result<Vec<Row>, postgres::Error> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT custos.set_tenant($1::text::uuid)", &[&tenant])?;
    let rows = tx.query(sql, &[])?;
    tx.commit()?;
    Ok(rows)
}

/// A failed statement's message (postgres::Error's Display says only "db error").
fn msg(err: &postgres::Error) -> String {
    err.as_db_error()
        .map_or_else(|| err.to_string(), |d| d.message().to_string())
}

fn embed_dims(c: &mut Client, tenant: &str, text: &str) -> Result<i32, postgres::Error> {
    as_tenant(
        c,
        tenant,
        &format!("SELECT vector_dims(custos.embed('{text}'))"),
    )
    .map(|rows| rows[0].get(0))
}

/// The tenant's logged calls: (outcome, attempts), oldest first.
fn calls(c: &mut Client, tenant: &str) -> Vec<(String, i32)> {
    as_tenant(
        c,
        tenant,
        "SELECT outcome, attempts FROM custos.ai_calls ORDER BY id",
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn bedrock_requests_are_signed_and_a_wrong_secret_is_refused() {
    let mock = MockBedrock::start(MockConfig::default());
    let (_db, mut c) = setup("ai_sigv4", &mock);
    bedrock(
        &mut c,
        ACME,
        &mock,
        &[("ai.embedding_dimensions", json!(256))],
    );
    assert_eq!(embed_dims(&mut c, ACME, "signed request").unwrap(), 256);
    let sent = mock.requests();
    assert_eq!(sent.len(), 1);
    let r = &sent[0];
    assert!(r.signature_ok, "{}", r.outcome);
    assert_eq!(r.path, "/model/amazon.titan-embed-text-v2%3A0/invoke");
    let auth = r.header("authorization").unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDCUSTOSTEST000001/"),
        "{auth}"
    );
    assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
    assert_eq!(
        r.json().unwrap(),
        json!({"inputText": "signed request", "dimensions": 256, "normalize": true})
    );

    // A session setting (superuser-only) wins over the file: a wrong secret is refused once,
    // not retried (403 is the request's fault), and named without the key.
    c.batch_execute("SET custos.aws_secret_access_key = 'not-the-secret'")
        .unwrap();
    let err = embed_dims(&mut c, ACME, "wrong secret").unwrap_err();
    assert_eq!(sqlstate(&err), "38000", "{err:?}");
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("403") && message.contains("InvalidSignatureException"),
        "{message}"
    );
    assert!(!message.contains("not-the-secret"));
    assert_eq!(mock.rejected(), 1);
    assert_eq!(mock.requests().len(), 2);

    // A Bedrock API key goes as a bearer token instead.
    c.batch_execute(&format!(
        "RESET custos.aws_secret_access_key; SET custos.bedrock_api_key = '{TEST_BEARER_KEY}'"
    ))
    .unwrap();
    assert_eq!(embed_dims(&mut c, ACME, "api key").unwrap(), 256);
    let last = mock.requests().pop().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {TEST_BEARER_KEY}").as_str())
    );
    // SHOW masks it, even for a superuser.
    let shown: String = c
        .query_one("SHOW custos.bedrock_api_key", &[])
        .unwrap()
        .get(0);
    assert_eq!(shown, "(set, hidden)");
}

#[test]
fn transient_errors_are_retried_with_retry_after_and_client_errors_are_not() {
    let mock = MockBedrock::start(MockConfig::default());
    let (_db, mut c) = setup("ai_retries", &mock);
    bedrock(&mut c, ACME, &mock, &[]);

    mock.script(vec![
        Reply::Throttle {
            retry_after_s: Some(1),
        },
        Reply::Normal,
    ]);
    let started = Instant::now();
    assert_eq!(embed_dims(&mut c, ACME, "throttled once").unwrap(), 1024);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After is a floor"
    );

    mock.script(vec![
        Reply::ServerError(500),
        Reply::ServerError(503),
        Reply::Normal,
    ]);
    assert_eq!(embed_dims(&mut c, ACME, "two server errors").unwrap(), 1024);
    mock.script(vec![Reply::ModelNotReady, Reply::Normal]);
    assert_eq!(embed_dims(&mut c, ACME, "model loading").unwrap(), 1024);
    assert_eq!(
        calls(&mut c, ACME),
        vec![("ok".into(), 2), ("ok".into(), 3), ("ok".into(), 2)]
    );

    // Three 503s: two retries at most, then a clear error.
    mock.clear();
    mock.script(vec![Reply::ServerError(503); 3]);
    let err = embed_dims(&mut c, ACME, "unavailable").unwrap_err();
    assert_eq!(sqlstate(&err), "08006", "{err:?}");
    assert!(msg(&err).contains("after 3 attempts"), "{err:?}");
    assert_eq!(mock.requests().len(), 3);

    // A validation error is the request's fault: one attempt.
    mock.clear();
    mock.script(vec![Reply::Validation]);
    let err = embed_dims(&mut c, ACME, "invalid").unwrap_err();
    assert_eq!(sqlstate(&err), "38000", "{err:?}");
    assert!(msg(&err).contains("ValidationException"), "{err:?}");
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn the_breaker_opens_after_n_failures_for_every_backend_and_half_opens_after_its_cool_down() {
    let mock = MockBedrock::start(MockConfig::default());
    let (db, mut c) = setup("ai_breaker", &mock);
    bedrock(
        &mut c,
        ACME,
        &mock,
        &[
            ("ai.max_retries", json!(0)),
            ("ai.breaker_failures", json!(2)),
            ("ai.breaker_cool_down_s", json!(1)),
        ],
    );
    mock.script(vec![Reply::ServerError(500), Reply::ServerError(500)]);
    for _ in 0..2 {
        assert_eq!(
            sqlstate(&embed_dims(&mut c, ACME, "failing").unwrap_err()),
            "08006"
        );
    }
    // Open, for this backend and another one; nothing reaches the provider.
    let mut other = connect(&db, "postgres");
    for client in [&mut c, &mut other] {
        let err = embed_dims(client, ACME, "refused").unwrap_err();
        assert_eq!(sqlstate(&err), "08006");
        assert!(
            msg(&err).contains("circuit breaker of bedrock is open"),
            "{err:?}"
        );
    }
    assert_eq!(mock.requests().len(), 2);
    // Another tenant's breaker is its own.
    bedrock(&mut c, GLOBEX, &mock, &[]);
    assert_eq!(embed_dims(&mut c, GLOBEX, "other tenant").unwrap(), 1024);
    // After the cool-down one probe goes; its success closes the breaker.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(embed_dims(&mut other, ACME, "probe").unwrap(), 1024);
    assert_eq!(embed_dims(&mut c, ACME, "closed again").unwrap(), 1024);
}

#[test]
fn a_token_budget_holds_exactly_under_eight_concurrent_callers() {
    let mock = MockBedrock::start(MockConfig::default());
    mock.set_delay_ms(20);
    let (db, mut c) = setup("ai_budget", &mock);
    // "ab ab ab": 3 tokens estimated (8 bytes / 3, rounded up) and 3 counted by the mock.
    bedrock(
        &mut c,
        ACME,
        &mock,
        &[
            ("ai.monthly_token_budget", json!(60)),
            ("ai.monthly_budget_usd", json!(0)),
        ],
    );
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut c = connect(&db, "postgres");
                let mut made = 0;
                loop {
                    match embed_dims(&mut c, ACME, "ab ab ab") {
                        Ok(_) => made += 1,
                        Err(e) if sqlstate(&e) == "53400" => {
                            assert!(msg(&e).contains("monthly AI budget of 60 tokens"), "{e:?}");
                            return made;
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
            })
        })
        .collect();
    let made: u32 = callers.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(made, 20, "60 tokens, 3 a call");
    assert_eq!(mock.requests().len(), 20);
    let spent: i64 = as_tenant(
        &mut c,
        ACME,
        "SELECT sum(tokens_in)::bigint FROM custos.ai_calls",
    )
    .unwrap()[0]
        .get(0);
    assert_eq!(spent, 60);
}

/// The labelled corpus: (text, pii) with pii empty for the near-misses.
fn corpus() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crates/core/tests/data/redaction_corpus.tsv"
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (_kind, text, pii) = (f.next()?, f.next()?, f.next().unwrap_or(""));
            Some((text.to_string(), pii.to_string()))
        })
        .collect()
}

#[test]
fn no_raw_pii_reaches_any_request_body() {
    let mock = MockBedrock::start(MockConfig::default());
    let (_db, mut c) = setup("ai_pii", &mock);
    let cases = corpus();
    let texts: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();
    // OpenAI-compatible: the whole corpus in one embeddings request.
    settings(
        &mut c,
        ACME,
        &[
            ("ai.provider", json!("openai")),
            ("ai.endpoint", json!(mock.url())),
            ("ai.embedding_model", json!("text-embedding-3-small")),
        ],
    );
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT custos.set_tenant($1::text::uuid)", &[&ACME])
        .unwrap();
    let n: i64 = tx
        .query_one("SELECT count(*) FROM custos.embed_batch($1)", &[&texts])
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    assert_eq!(n as usize, texts.len());
    // Bedrock: the corpus as a task's input, also joined by newlines in one string (JSON escapes
    // them as \n, glued to the next value). The first answer quotes placeholders where the schema
    // wants other values: the errors sent back with the repair request must not carry the values.
    bedrock(&mut c, ACME, &mock, &[]);
    mock.script(vec![Reply::Answer(
        r#"{"summary": "x", "risk": "<EMAIL_1>", "key_terms": [], "event_count": "<PHONE_1>"}"#
            .into(),
    )]);
    let pii: Vec<&str> = cases
        .iter()
        .filter(|c| !c.1.is_empty())
        .map(|c| c.0.as_str())
        .collect();
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT custos.set_tenant($1::text::uuid)", &[&ACME])
        .unwrap();
    tx.query_one(
        "SELECT custos.complete_json('summarize_events', jsonb_build_object('notes', $1::text[], 'joined', array_to_string($2::text[], E'\\n')))",
        &[&texts, &pii],
    )
    .unwrap();
    tx.commit().unwrap();
    let repair = String::from_utf8_lossy(&mock.requests()[2].body).into_owned();
    assert!(
        repair.contains("<EMAIL_1>") && repair.contains("risk"),
        "the errors are quoted: {repair:.300}"
    );

    let bodies: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(
        bodies.len(),
        3,
        "one embeddings request, an answer and its repair"
    );
    // Near-misses go out as they are (in the task's prompt, JSON inside JSON): take them out,
    // then no PII value may be left anywhere.
    let mut rest = bodies.join("\n");
    let mut survived = 0;
    for (text, _) in cases.iter().filter(|c| c.1.is_empty()) {
        let once = serde_json::to_string(text).unwrap();
        let twice = serde_json::to_string(&once).unwrap();
        survived += usize::from(bodies[0].contains(&once));
        rest = rest
            .replace(&once, "")
            .replace(&twice[1..twice.len() - 1], "");
    }
    for (_, pii) in cases.iter().filter(|c| !c.1.is_empty()) {
        assert!(!rest.contains(pii.as_str()), "{pii} was sent");
    }
    let near_misses = cases.iter().filter(|c| c.1.is_empty()).count();
    assert!(
        survived * 10 >= near_misses * 9,
        "near-misses kept: {survived} of {near_misses}"
    );
}

#[test]
fn invalid_answers_are_repaired_once_then_replaced_by_the_rules() {
    let mock = MockBedrock::start(MockConfig::default());
    let (_db, mut c) = setup("ai_answers", &mock);
    bedrock(&mut c, ACME, &mock, &[]);
    let ask = |c: &mut Client| -> Value {
        let rows = as_tenant(
            c,
            ACME,
            "SELECT custos.complete_json('triage_alert', '{\"alert\": \"critical export by alice@example.com\"}')",
        )
        .unwrap();
        rows[0].get::<_, Value>(0)
    };
    let valid = r#"{"summary": "Export by <EMAIL_1>", "severity": "high", "likely_benign": false, "next_steps": ["ask <EMAIL_1>"]}"#;
    // Invalid, then valid after the repair prompt: placeholders mapped back.
    mock.script(vec![
        Reply::Answer(r#"{"summary": 3}"#.into()),
        Reply::Answer(format!("Here you go:\n```json\n{valid}\n```")),
    ]);
    let answer = ask(&mut c);
    assert_eq!(answer["summary"], "Export by alice@example.com");
    assert_eq!(answer["next_steps"], json!(["ask alice@example.com"]));
    let repair = mock.requests()[1].json().unwrap();
    let repair_text = repair["messages"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        repair_text.contains("/summary") && repair_text.contains("<EMAIL_1>"),
        "{repair_text}"
    );
    assert!(!repair_text.contains("alice@example.com"));
    // Invalid twice: the rule-based answer, marked as a fallback.
    mock.script(vec![
        Reply::Answer("not json".into()),
        Reply::Answer(r#"{"severity": "urgent"}"#.into()),
    ]);
    let answer = ask(&mut c);
    assert_eq!(answer["severity"], "critical", "{answer}");
    // A malformed provider answer, then an unavailable provider: the rules as well.
    mock.script(vec![Reply::Malformed]);
    ask(&mut c);
    as_tenant(
        &mut c,
        ACME,
        "SELECT custos.set_setting('ai.max_retries', '0')",
    )
    .unwrap();
    mock.script(vec![Reply::ServerError(503)]);
    ask(&mut c);
    assert_eq!(
        calls(&mut c, ACME),
        vec![
            ("ok".into(), 2),
            ("fallback".into(), 2),
            ("fallback".into(), 1),
            ("fallback".into(), 1)
        ]
    );
    let logged: Vec<(Option<String>, i32)> = as_tenant(
        &mut c,
        ACME,
        "SELECT error, prompt_version FROM custos.ai_calls ORDER BY id",
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert!(logged[1].0.as_deref().unwrap().contains("invalid twice"));
    assert!(logged[3].0.as_deref().unwrap().contains("503"));
    assert!(logged.iter().all(|l| l.1 == 1));
    // Each call is on the tenant's ledger, which still verifies.
    let events: i64 = as_tenant(
        &mut c,
        ACME,
        "SELECT count(*) FROM custos.events WHERE action = 'ai.call'",
    )
    .unwrap()[0]
        .get(0);
    assert_eq!(events, 4);
    let ok: bool = as_tenant(
        &mut c,
        ACME,
        "SELECT bool_and(ok) FROM custos.verify_chain($$a1000000-0000-4000-8000-0000000000a1$$)",
    )
    .unwrap()[0]
        .get(0);
    assert!(ok);
}

#[test]
fn a_stalled_call_ends_on_cancel_statement_timeout_and_its_own_timeout() {
    let mock = MockBedrock::start(MockConfig::default());
    let (db, mut c) = setup("ai_stall", &mock);
    bedrock(&mut c, ACME, &mock, &[("ai.timeout_ms", json!(60000))]);
    // Cancel.
    mock.script(vec![Reply::Stall { ms: 20_000 }]);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        connect(&db, "postgres")
            .execute("SELECT pg_cancel_backend($1)", &[&pid])
            .unwrap();
    });
    let started = Instant::now();
    let err = embed_dims(&mut c, ACME, "stalled").unwrap_err();
    canceller.join().unwrap();
    assert_eq!(sqlstate(&err), "57014", "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // statement_timeout shortens the call's own deadline.
    mock.script(vec![Reply::Stall { ms: 20_000 }]);
    c.batch_execute("SET statement_timeout = 500").unwrap();
    let started = Instant::now();
    let err = embed_dims(&mut c, ACME, "stalled").unwrap_err();
    assert!(
        ["57014", "08006"].contains(&sqlstate(&err).as_str()),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    c.batch_execute("RESET statement_timeout").unwrap();
    // ai.timeout_ms alone.
    bedrock(
        &mut c,
        ACME,
        &mock,
        &[("ai.timeout_ms", json!(400)), ("ai.max_retries", json!(0))],
    );
    mock.script(vec![Reply::Stall { ms: 5_000 }]);
    let started = Instant::now();
    let err = embed_dims(&mut c, ACME, "stalled").unwrap_err();
    assert_eq!(sqlstate(&err), "08006", "{err:?}");
    assert!(msg(&err).contains("did not answer in time"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn bad_input_and_missing_credentials_are_refused_clearly() {
    let mock = MockBedrock::start(MockConfig::default());
    let (db, mut c) = setup("ai_bad_input", &mock);
    bedrock(&mut c, ACME, &mock, &[]);
    for (sql, state, needle) in [
        ("SELECT custos.embed(NULL)", "22004", "cannot be NULL"),
        ("SELECT custos.embed('   ')", "22023", "no word to embed"),
        (
            "SELECT custos.embed(repeat('word ', 300000))",
            "54000",
            "more than",
        ),
        (
            "SELECT custos.embed('x', 'amazon.nope-v9')",
            "22023",
            "not one custos knows",
        ),
    ] {
        let err = as_tenant(&mut c, ACME, sql).unwrap_err();
        assert_eq!(sqlstate(&err), state, "{sql}: {err:?}");
        assert!(msg(&err).contains(needle), "{sql}: {err:?}");
    }
    assert_eq!(mock.requests().len(), 0, "nothing bad was sent");
    // An endpoint no superuser allowed.
    settings(
        &mut c,
        ACME,
        &[("ai.endpoint", json!("http://127.0.0.1:1"))],
    );
    let err = embed_dims(&mut c, ACME, "elsewhere").unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err:?}");
    // No credentials anywhere.
    bedrock(&mut c, ACME, &mock, &[]);
    c.batch_execute(&format!(
        "ALTER DATABASE {db} RESET custos.ai_credentials_file"
    ))
    .unwrap();
    let mut fresh = connect(&db, "postgres");
    let err = embed_dims(&mut fresh, ACME, "no keys").unwrap_err();
    assert_eq!(sqlstate(&err), "28000", "{err:?}");
    assert!(
        msg(&err).contains("no credentials for Amazon Bedrock"),
        "{err:?}"
    );
}

fn claims(role: &str, tenant: &str) -> Value {
    json!({"role": role, "sub": format!("svc@{tenant}"), "tenant_id": tenant, "exp": 4102444800u64})
}

#[test]
fn tenants_settings_and_calls_stay_apart_through_postgrest() {
    let mock = MockBedrock::start(MockConfig::default());
    let (db, mut c) = setup("ai_postgrest", &mock);
    postgrest_roles(&mut c, &[("it_web_user", "custos_reader")]);
    bedrock(&mut c, ACME, &mock, &[]);
    let mut api = connect(&db, "authenticator");
    let dims = |api: &mut Client, tenant: &str| -> i32 {
        postgrest_request(
            api,
            "it_web_user",
            &claims("it_web_user", tenant),
            "POST",
            "/rpc/embed",
            "SELECT vector_dims(custos.embed('quarterly access review'))",
        )
        .unwrap()[0]
            .get(0)
    };
    assert_eq!(dims(&mut api, ACME), 1024);
    // Globex keeps the built-in default: nothing goes out for it.
    assert_eq!(dims(&mut api, GLOBEX), 384);
    assert_eq!(mock.requests().len(), 1);
    let seen = |api: &mut Client, tenant: &str| -> i64 {
        postgrest_request(
            api,
            "it_web_user",
            &claims("it_web_user", tenant),
            "GET",
            "/ai_calls",
            "SELECT count(*) FROM custos.ai_calls",
        )
        .unwrap()[0]
            .get(0)
    };
    assert_eq!((seen(&mut api, ACME), seen(&mut api, GLOBEX)), (1, 0));
    // A web user cannot change where its tenant's calls go, nor see the keys.
    let err = postgrest_request(
        &mut api,
        "it_web_user",
        &claims("it_web_user", GLOBEX),
        "POST",
        "/rpc/set_setting",
        "SELECT custos.set_setting('ai.endpoint', '\"http://127.0.0.1:9\"')",
    )
    .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err:?}");
    let err = postgrest_request(
        &mut api,
        "it_web_user",
        &claims("it_web_user", ACME),
        "GET",
        "/",
        "SHOW custos.ai_credentials_file",
    )
    .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err:?}");
}

#[test]
fn a_dormant_account_is_analysed_by_the_model_and_the_answer_stored_with_who_gave_it() {
    let mock = MockBedrock::start(MockConfig::default());
    let (_db, mut c) = setup("ai_analysis", &mock);
    bedrock(&mut c, ACME, &mock, &[]);
    as_tenant(
        &mut c,
        ACME,
        "SELECT custos.upsert_identities(jsonb_build_array(jsonb_build_object('user_id', 'old_admin',
           'roles', jsonb_build_array('admin'), 'is_privileged', true, 'last_active_at', now() - interval '400 days')))",
    )
    .unwrap();
    mock.set_answer(
        r#"{"risk_score": 0.92, "risk_level": "critical", "summary": "<PERSON_1> holds admin rights unused for 400 days.",
            "insights": ["privileged and dormant"],
            "recommendations": [{"action": "Disable <PERSON_1>", "priority": "urgent", "rationale": "Unused admin rights."}]}"#,
    );
    let analyse = |c: &mut Client| {
        as_tenant(
            c,
            ACME,
            "SELECT risk_score, risk_level, summary, fallback, provider, model, prompt_version, recommendations
               FROM custos.analyze_dormant_user('old_admin')",
        )
        .unwrap()
        .remove(0)
    };
    let row = analyse(&mut c);
    assert_eq!(row.get::<_, f64>(0), 0.92);
    assert_eq!(row.get::<_, String>(1), "critical");
    assert_eq!(
        row.get::<_, String>(2),
        "old_admin holds admin rights unused for 400 days."
    );
    assert!(!row.get::<_, bool>(3));
    assert_eq!(
        (row.get::<_, String>(4), row.get::<_, String>(5)),
        ("bedrock".into(), HAIKU.into())
    );
    assert_eq!(row.get::<_, String>(6), "analyze_dormant_user@1");
    assert_eq!(row.get::<_, Value>(7)[0]["action"], "Disable old_admin");
    // The user id went out as a placeholder.
    let sent = String::from_utf8_lossy(&mock.requests()[0].body).into_owned();
    assert!(
        !sent.contains("old_admin") && sent.contains("<PERSON_1>"),
        "{sent:.400}"
    );
    // Invalid twice: the analysis by rules, marked as such, with the deterministic level.
    mock.set_answer("not json at all");
    let row = analyse(&mut c);
    assert!(row.get::<_, bool>(3));
    let deterministic: String = as_tenant(
        &mut c,
        ACME,
        "SELECT risk_level FROM custos.dormant_users() WHERE user_id = 'old_admin'",
    )
    .unwrap()[0]
        .get(0);
    assert_eq!(row.get::<_, String>(1), deterministic);
    let history: i64 = as_tenant(
        &mut c,
        ACME,
        "SELECT count(*) FROM custos.rag_analysis_history",
    )
    .unwrap()[0]
        .get(0);
    assert_eq!(history, 2);
}

#[test]
fn events_are_explained_and_periods_summarised_without_opening_a_sealed_value() {
    let mock = MockBedrock::start(MockConfig::default());
    let (db, mut c) = setup("ai_explain", &mock);
    let key = "/tmp/custos-it-ai_explain.master.key";
    std::fs::write(
        key,
        "5ec0de5ec0de5ec0de5ec0de5ec0de5ec0de5ec0de5ec0de5ec0de5ec0de5ec0",
    )
    .unwrap();
    c.batch_execute(&format!(
        "ALTER DATABASE {db} SET custos.master_key_file = '{key}'"
    ))
    .unwrap();
    let mut c = connect(&db, "postgres");
    bedrock(&mut c, ACME, &mock, &[("ledger.encrypt", json!(true))]);
    let id: String = as_tenant(
        &mut c,
        ACME,
        "SELECT id::text FROM custos.record_event('role_granted', 'user', 'dave.hidden',
                                           '{\"email\": \"dave.hidden@example.com\", \"role\": \"admin\"}',
                                           severity => 'high', ip_address => '203.0.113.77',
                                           user_agent => 'SecretBrowser/9', actor => 'carol.secret')",
    )
    .unwrap()[0]
        .get(0);
    mock.set_answer(
        r#"{"what_happened": "An admin role was granted.", "why_it_matters": "Admin rights are rare here.",
            "significance": "high", "follow_up": ["Confirm the grant."]}"#,
    );
    let row = as_tenant(
        &mut c,
        ACME,
        &format!("SELECT what_happened, significance, fallback, provider, prompt_version FROM custos.explain_event('{id}')"),
    )
    .unwrap()
    .remove(0);
    assert_eq!(row.get::<_, String>(0), "An admin role was granted.");
    assert_eq!(row.get::<_, String>(1), "high");
    assert!(!row.get::<_, bool>(2));
    assert_eq!(
        (row.get::<_, String>(3), row.get::<_, String>(4)),
        ("bedrock".into(), "explain_event@1".into())
    );
    // The model is told the event with its sealed values as <sealed>.
    let sent = String::from_utf8_lossy(&mock.requests()[0].body).into_owned();
    assert!(
        sent.contains("role_granted") && sent.contains("<sealed>"),
        "{sent:.600}"
    );
    // Invalid twice: the summary by rules, stored as such.
    mock.set_answer("no json here");
    let row = as_tenant(
        &mut c,
        ACME,
        "SELECT summary, risk, fallback, statistics->>'events' FROM custos.summarize('weekly')",
    )
    .unwrap()
    .remove(0);
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, String>(1), "high", "an event of severity high");
    assert_eq!(
        row.get::<_, String>(3),
        "2",
        "the grant and the explanation's ai.call"
    );
    assert!(row
        .get::<_, String>(0)
        .starts_with("2 events by 2 actors in the last week"));
    let stored: Vec<String> = as_tenant(
        &mut c,
        ACME,
        "SELECT analysis::text FROM custos.rag_analysis_history
         UNION ALL SELECT to_jsonb(s)::text FROM custos.summaries s",
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert_eq!(stored.len(), 2);
    let sent: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(sent.len(), 3, "an explanation, a summary and its repair");
    for secret in [
        "carol.secret",
        "dave.hidden",
        "203.0.113.77",
        "SecretBrowser",
    ] {
        for text in stored.iter().chain(sent.iter()) {
            assert!(!text.contains(secret), "{secret} in {text:.600}");
        }
    }
    // Another tenant cannot have the event explained, whatever its id.
    let err = as_tenant(
        &mut c,
        GLOBEX,
        &format!("SELECT * FROM custos.explain_event('{id}')"),
    )
    .unwrap_err();
    assert_eq!(sqlstate(&err), "P0002", "{}", msg(&err));
}
