//! The background workers, each test on a preloaded cluster of its own: workers per database
//! that wait for custos quietly and restart when killed, queued rows embedded within seconds, a
//! provider down then up (nothing lost, nothing twice), a worker killed mid-batch, a poisoned
//! item, webhooks delivered with retries, signatures and dead letters, and a fast shutdown while
//! a provider call stalls.

use custos_integration_tests::cluster::{new_cluster_with, Cluster};
use custos_integration_tests::mock_bedrock::{MockBedrock, MockConfig, Reply, TEST_BEARER_KEY};
use custos_integration_tests::receiver::Receiver;
use custos_integration_tests::{one, within};
use hmac::{Hmac, Mac};
use postgres::Client;
use sha2::Sha256;
use std::time::{Duration, Instant};

const A: &str = "a7000000-0000-4000-8000-000000000001";

/// A preloaded cluster whose workers serve `databases`, napping 200 ms.
fn cluster(name: &str, databases: &str, extra: &str) -> Cluster {
    new_cluster_with(
        name,
        &format!(
            "custos.worker_databases = '{databases}'\ncustos.worker_naptime_ms = 200\nmax_worker_processes = 16\n{extra}"
        ),
    )
}

/// Creates `db` with custos in the cluster; a superuser client of it.
fn custos_db(c: &Cluster, db: &str) -> Client {
    let mut admin = c.connect("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    let mut client = c.connect(db);
    client
        .batch_execute("CREATE EXTENSION custos CASCADE")
        .unwrap();
    client
}

/// Runs `sql` as tenant A, committed.
fn as_a(c: &mut Client, sql: &str) {
    c.batch_execute(&format!(
        "BEGIN; SELECT custos.set_tenant('{A}'); {sql}; COMMIT;"
    ))
    .unwrap_or_else(|e| {
        panic!(
            "{sql}: {}",
            e.as_db_error().map_or(e.to_string(), |d| d.to_string())
        )
    });
}

fn worker_pid(c: &mut Client, db: &str) -> Option<i32> {
    c.query_opt(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = $1",
        &[&format!("custos worker {db}")],
    )
    .unwrap()
    .map(|r| r.get(0))
}

/// The tenant embeds with the OpenAI-compatible mock (a batch a call), retries off.
fn use_mock(c: &mut Client, db: &str, mock: &MockBedrock) {
    let creds = format!("/tmp/custos-it-workers-{db}.credentials");
    std::fs::write(&creds, format!("openai_api_key = {TEST_BEARER_KEY}\n")).unwrap();
    c.batch_execute(&format!(
        "ALTER DATABASE {db} SET custos.ai_credentials_file = '{creds}';
         ALTER DATABASE {db} SET custos.ai_allowed_endpoints = '{}';",
        mock.url()
    ))
    .unwrap();
    as_a(
        c,
        &format!(
            "SELECT custos.set_setting('ai.provider', '\"openai\"');
             SELECT custos.set_setting('ai.endpoint', '\"{}\"');
             SELECT custos.set_setting('ai.embedding_model', '\"text-embedding-3-small\"');
             SELECT custos.set_setting('ai.max_retries', '0');
             SELECT custos.set_setting('ai.breaker_failures', '100')",
            mock.url()
        ),
    );
    // The worker's session reads the database's settings when it connects: restart it.
    let pid = worker_pid(c, db);
    if let Some(pid) = pid {
        c.execute("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap();
        assert!(
            within(Duration::from_secs(15), || worker_pid(c, db)
                .is_some_and(|p| p != pid)),
            "the worker came back"
        );
    }
}

#[test]
fn workers_serve_two_databases_wait_for_custos_and_come_back_when_killed() {
    let c = cluster("workers-basic", "w1, w2", "");
    let mut admin = c.connect("postgres");
    admin.batch_execute("CREATE DATABASE w1").unwrap();
    // Without custos the worker waits, saying so once.
    assert!(within(Duration::from_secs(10), || worker_pid(
        &mut admin, "w1"
    )
    .is_some()));
    std::thread::sleep(Duration::from_secs(2));
    let said = c.log().matches("custos is not installed").count();
    assert_eq!(said, 1, "{}", c.log());
    let mut w1 = c.connect("w1");
    w1.batch_execute("CREATE EXTENSION custos CASCADE").unwrap();
    let mut w2 = custos_db(&c, "w2");
    for db in [&mut w1, &mut w2] {
        as_a(
            db,
            "SELECT custos.upsert_identities((SELECT jsonb_agg(jsonb_build_object('user_id', 'u' || g,
                     'department', 'd' || (g % 3))) FROM generate_series(1, 50) g))",
        );
    }
    let started = Instant::now();
    for db in [&mut w1, &mut w2] {
        assert!(
            within(Duration::from_secs(15), || one::<i64>(
                db,
                "SELECT count(*) FROM custos.identity_embeddings"
            ) == 50),
            "{}",
            c.log()
        );
    }
    eprintln!("embedded in both databases after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        one::<i64>(&mut w1, "SELECT count(*) FROM custos.embedding_queue"),
        0
    );
    // Killed, it comes back within 10 s.
    let pid = worker_pid(&mut admin, "w1").unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    assert!(within(Duration::from_secs(10), || {
        worker_pid(&mut admin, "w1").is_some_and(|p| p != pid)
    }));
    let health: serde_json::Value = one(&mut w1, "SELECT custos.health()");
    assert_eq!(
        health["workers"].as_array().map(Vec::len),
        Some(1),
        "{health}"
    );
    assert_eq!(health["embedding_queue"]["pending"], 0);
    // A reload that drops a database stops its worker.
    admin
        .batch_execute("ALTER SYSTEM SET custos.worker_databases = 'w1'")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert!(within(Duration::from_secs(10), || worker_pid(
        &mut admin, "w2"
    )
    .is_none()));
    assert!(worker_pid(&mut admin, "w1").is_some());
}

#[test]
fn a_provider_down_then_up_loses_nothing_and_writes_nothing_twice() {
    let mock = MockBedrock::start(MockConfig::default());
    let c = cluster("workers-outage", "w", "custos.worker_batch_size = 16");
    let mut w = custos_db(&c, "w");
    use_mock(&mut w, "w", &mock);
    mock.script(vec![Reply::ServerError(503); 4]);
    as_a(
        &mut w,
        "SELECT custos.set_setting('jobs.embed_events', 'true');
         SELECT custos.record_event('login', 'user', 'u' || g) FROM generate_series(1, 60) g",
    );
    let embedded = within(Duration::from_secs(60), || {
        one::<i64>(&mut w, "SELECT count(*) FROM custos.event_embeddings") == 60
    });
    let queue: String = one(
        &mut w,
        "SELECT coalesce(string_agg(to_jsonb(q)::text, E'\n'), '') FROM custos.embedding_queue q",
    );
    assert!(embedded, "{queue}\n{}", c.log());
    let failures = mock
        .requests()
        .iter()
        .filter(|r| r.outcome.starts_with("503"))
        .count();
    assert_eq!(failures, 4, "the outage was seen");
    assert_eq!(
        one::<i64>(
            &mut w,
            "SELECT count(DISTINCT seq) FROM custos.event_embeddings"
        ),
        60
    );
    assert_eq!(
        one::<i64>(
            &mut w,
            "SELECT count(*) FROM custos.embedding_queue WHERE state = 'failed' OR kind = 'event'"
        ),
        0
    );
    // Each successful call was logged once, and is on the ledger.
    let calls: i64 = one(&mut w, "SELECT count(*) FROM custos.ai_calls");
    assert_eq!(calls as usize, mock.requests().len() - failures);
}

#[test]
fn a_worker_killed_mid_batch_loses_nothing_and_a_poisoned_item_fails_alone() {
    let mock = MockBedrock::start(MockConfig::default());
    let c = cluster("workers-kill", "w", "");
    let mut w = custos_db(&c, "w");
    use_mock(&mut w, "w", &mock);
    mock.set_delay_ms(3000);
    let before = mock.requests().len();
    as_a(
        &mut w,
        "SELECT custos.upsert_identities((SELECT jsonb_agg(jsonb_build_object('user_id', 'k' || g))
                                            FROM generate_series(1, 20) g))",
    );
    assert!(within(Duration::from_secs(15), || mock.requests().len() > before));
    let pid = worker_pid(&mut w, "w").unwrap();
    w.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    mock.set_delay_ms(0);
    assert!(
        within(Duration::from_secs(30), || one::<i64>(
            &mut w,
            "SELECT count(*) FROM custos.identity_embeddings"
        ) == 20),
        "{}",
        c.log()
    );
    assert_eq!(
        one::<i64>(&mut w, "SELECT count(*) FROM custos.embedding_queue"),
        0
    );
    // The killed worker's request has had its answer (to a closed connection) before the script.
    assert!(within(Duration::from_secs(10), || mock
        .requests()
        .iter()
        .all(|r| !r.outcome.is_empty())));
    // A batch the provider refuses is split; the item it refuses alone fails, the rest go on.
    mock.script(vec![Reply::Validation, Reply::Validation]);
    as_a(
        &mut w,
        "SELECT custos.upsert_identities((SELECT jsonb_agg(jsonb_build_object('user_id', 'p' || g))
                                            FROM generate_series(1, 5) g))",
    );
    assert!(
        within(Duration::from_secs(30), || one::<i64>(
            &mut w,
            "SELECT count(*) FROM custos.embedding_queue WHERE state = 'pending'"
        ) == 0),
        "{}",
        c.log()
    );
    let outcomes: Vec<String> = mock.requests().iter().map(|r| r.outcome.clone()).collect();
    assert_eq!(
        one::<i64>(
            &mut w,
            "SELECT count(*) FROM custos.embedding_queue WHERE state = 'failed' AND last_error LIKE '%HTTP 400%'"
        ),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        one::<i64>(
            &mut w,
            "SELECT count(*) FROM custos.identity_embeddings WHERE user_id LIKE 'p%'"
        ),
        4
    );
}

fn signature_ok(secret_hex: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let key = hex::decode(secret_hex).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    signature == format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn webhooks_are_delivered_signed_retried_and_dead_lettered() {
    let receiver = Receiver::start();
    let c = cluster(
        "workers-webhooks",
        "w",
        "custos.webhook_allow_http = on\ncustos.webhook_allow_private = on\ncustos.webhook_retry_base_ms = 100\ncustos.webhook_max_attempts = 3",
    );
    let mut w = custos_db(&c, "w");
    let secret: String = {
        let mut tx = w.transaction().unwrap();
        tx.execute("SELECT custos.set_tenant($1::text::uuid)", &[&A])
            .unwrap();
        let s = tx
            .query_one(
                "SELECT signing_secret FROM custos.set_integration('siem', 'generic', $1, 'medium')",
                &[&receiver.url("siem")],
            )
            .unwrap()
            .get(0);
        tx.execute(
            "SELECT * FROM custos.set_integration('chat', 'slack', $1, 'critical')",
            &[&receiver.url("slack/T0/B0/SECRETPATH")],
        )
        .unwrap();
        tx.commit().unwrap();
        s
    };
    // The SIEM fails twice, then takes it.
    receiver.script(&[500, 500]);
    w.batch_execute(&format!(
        "INSERT INTO custos.alerts (tenant_id, source, severity, title, details)
         VALUES ('{A}', 'test', 'high', 'mass export', '{{\"rows\": 5000}}')"
    ))
    .unwrap();
    assert!(
        within(Duration::from_secs(20), || one::<i64>(
            &mut w,
            "SELECT count(*) FROM custos.notifications WHERE state = 'delivered'"
        ) == 1),
        "{}",
        c.log()
    );
    let got = receiver.received();
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 500, 200]
    );
    let last = got.last().unwrap();
    assert_eq!(last.json()["alert"]["title"], "mass export");
    assert!(signature_ok(
        &secret,
        last.header("x-custos-timestamp").unwrap(),
        &last.body,
        last.header("x-custos-signature").unwrap()
    ));
    // The same delivery id each time: a receiver drops what it has seen.
    assert!(got
        .windows(2)
        .all(|p| p[0].header("x-custos-delivery") == p[1].header("x-custos-delivery")));
    // Slack takes critical alerts only, as blocks; a receiver that always fails dead-letters it.
    receiver.always(Some(503));
    w.batch_execute(&format!(
        "INSERT INTO custos.alerts (tenant_id, source, severity, title) VALUES ('{A}', 'test', 'critical', 'chain broken')"
    ))
    .unwrap();
    assert!(
        within(Duration::from_secs(20), || one::<i64>(
            &mut w,
            "SELECT count(*) FROM custos.notifications WHERE state = 'dead'"
        ) == 2),
        "{}",
        c.log()
    );
    let slack: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|r| r.path.starts_with("/slack"))
        .collect();
    assert_eq!(slack.len(), 3, "max_attempts");
    assert_eq!(slack[0].json()["blocks"][0]["type"], "header");
    let errors: Vec<String> = w
        .query(
            "SELECT last_error FROM custos.notifications WHERE state = 'dead'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for e in &errors {
        assert!(
            e.contains("503") && !e.contains("SECRETPATH") && !e.contains(&secret),
            "{e}"
        );
    }
    // After the fix, sent again.
    receiver.always(None);
    as_a(&mut w, "SELECT custos.retry_dead_notifications()");
    assert!(within(Duration::from_secs(20), || one::<i64>(
        &mut w,
        "SELECT count(*) FROM custos.notifications WHERE state = 'delivered'"
    ) == 3));
}

#[test]
fn a_fast_shutdown_returns_within_10_s_while_a_provider_call_stalls() {
    let mock = MockBedrock::start(MockConfig::default());
    let c = cluster("workers-stop", "w", "");
    let mut w = custos_db(&c, "w");
    use_mock(&mut w, "w", &mock);
    mock.script(vec![Reply::Stall { ms: 60_000 }]);
    let before = mock.requests().len();
    as_a(
        &mut w,
        "SELECT custos.upsert_identities('[{\"user_id\": \"stalled\"}]')",
    );
    assert!(within(Duration::from_secs(15), || mock.requests().len() > before));
    drop(w);
    let started = Instant::now();
    assert!(c.pg_ctl(&["-m", "fast", "-w", "stop"]), "{}", c.log());
    let took = started.elapsed();
    eprintln!("pg_ctl stop -m fast took {took:?} with a provider call stalled");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn scheduled_jobs_ask_the_model_with_no_transaction_open_and_publish_checkpoints() {
    let mock = MockBedrock::start(MockConfig::default());
    let receiver = Receiver::start();
    let key = "/tmp/custos-it-workers-jobs-signer.key";
    std::fs::write(
        key,
        "7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e",
    )
    .unwrap();
    let c = cluster(
        "workers-jobs",
        "w",
        &format!(
            "custos.webhook_allow_http = on\ncustos.webhook_allow_private = on\ncustos.checkpoint_url = '{}'\ncustos.checkpoint_key_file = '{key}'",
            receiver.url("checkpoints")
        ),
    );
    let mut w = custos_db(&c, "w");
    let creds = "/tmp/custos-it-workers-jobs.credentials";
    let mc = mock.config();
    std::fs::write(
        creds,
        format!(
            "aws_access_key_id = {}\naws_secret_access_key = {}\n",
            mc.access_key_id, mc.secret_access_key
        ),
    )
    .unwrap();
    w.batch_execute(&format!(
        "ALTER DATABASE w SET custos.ai_credentials_file = '{creds}';
         ALTER DATABASE w SET custos.ai_allowed_endpoints = '{}';",
        mock.url()
    ))
    .unwrap();
    mock.set_answer(
        r#"{"summary": "A quiet week: one export.", "risk": "low", "highlights": ["one export"], "follow_up": []}"#,
    );
    mock.set_delay_ms(2000);
    {
        let mut tx = w.transaction().unwrap();
        tx.execute("SELECT custos.set_tenant($1::text::uuid)", &[&A])
            .unwrap();
        for (k, v) in [
            ("ai.provider", "\"bedrock\"".to_string()),
            ("ai.endpoint", format!("\"{}\"", mock.url())),
            (
                "ai.chat_model",
                "\"anthropic.claude-3-haiku-20240307-v1:0\"".into(),
            ),
            ("jobs.dormant_insights_minutes", "0".into()),
            ("jobs.retention_minutes", "0".into()),
            ("jobs.budget_alert_minutes", "0".into()),
            ("jobs.anomaly_detection_minutes", "0".into()),
            ("jobs.model_retraining_minutes", "0".into()),
        ] {
            tx.execute("SELECT custos.set_setting($1, $2::text::jsonb)", &[&k, &v])
                .unwrap();
        }
        tx.query_one(
            "SELECT signing_secret FROM custos.set_integration('weekly', 'generic', $1, 'info', '{summary}')",
            &[&receiver.url("summaries")],
        )
        .unwrap();
        tx.execute("SELECT custos.record_event('export', 'report', 'r1')", &[])
            .unwrap();
        tx.commit().unwrap();
    }
    // The worker restarts to read the database's settings (credentials, endpoints).
    let pid = worker_pid(&mut w, "w").unwrap();
    w.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    // While the model answers (2 s), the worker has no transaction open.
    assert!(
        within(Duration::from_secs(30), || !mock.requests().is_empty()),
        "{}",
        c.log()
    );
    let open: Option<std::time::SystemTime> = w
        .query_one(
            "SELECT xact_start FROM pg_stat_activity WHERE backend_type = 'custos worker w'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(open, None, "a transaction was open during the model's call");
    assert!(
        within(Duration::from_secs(30), || {
            receiver.received().len() >= 2
        }),
        "{}",
        c.log()
    );
    let got = receiver.received();
    let summary = got.iter().find(|r| r.path == "/summaries").unwrap();
    assert_eq!(summary.json()["type"], "custos.summary");
    assert!(summary.json()["alert"]["title"]
        .as_str()
        .unwrap_or_default()
        .contains("A quiet week"));
    let checkpoint = got.iter().find(|r| r.path == "/checkpoints").unwrap();
    assert_eq!(checkpoint.json()["tenant_id"], A);
    assert!(checkpoint.json()["checkpoint"].is_string());
    let runs: Vec<(String, String)> = w
        .query(
            "SELECT job, outcome FROM custos.job_runs WHERE run_by = 'worker' ORDER BY job",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        runs,
        vec![
            ("checkpoint_publication".to_string(), "ok".to_string()),
            ("summary_report".to_string(), "ok".to_string())
        ]
    );
    let (provider, fallback): (String, bool) = {
        let r = w
            .query_one("SELECT provider, fallback FROM custos.summaries", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((provider.as_str(), fallback), ("bedrock", false));
}
