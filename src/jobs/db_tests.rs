use crate::testing::{assert_error, count};
use pgrx::prelude::*;

const A: &str = "00000000-0000-4000-8000-0000000e7001";

fn tenant(t: &str) {
    Spi::run(&format!("SELECT custos.set_tenant('{t}')")).unwrap();
}

#[pg_test]
fn changed_profiles_are_queued_once_and_embedded_by_hand() {
    tenant(A);
    Spi::run(
        "SELECT custos.upsert_identities('[{\"user_id\": \"ana\", \"department\": \"finance\"},
                                           {\"user_id\": \"bo\", \"department\": \"it\"}]')",
    )
    .unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.embedding_queue WHERE kind = 'identity' AND generation = 1"),
        2
    );
    // An update that leaves the profile text as it was queues nothing new.
    Spi::run("UPDATE custos.identities SET display_name = 'Ana' WHERE user_id = 'ana'").unwrap();
    assert_eq!(
        count("SELECT max(generation) FROM custos.embedding_queue WHERE item = 'ana'"),
        1
    );
    Spi::run("UPDATE custos.identities SET department = 'audit' WHERE user_id = 'ana'").unwrap();
    assert_eq!(
        count("SELECT max(generation) FROM custos.embedding_queue WHERE item = 'ana'"),
        2
    );
    // New events of a tenant that embeds them: a watermark, no row a event.
    Spi::run("SELECT custos.set_setting('jobs.embed_events', 'true')").unwrap();
    Spi::run("SELECT custos.record_event('login', 'user', 'u' || g) FROM generate_series(1, 3) g")
        .unwrap();
    let (items, outcome, error) = Spi::get_three::<i64, String, String>(
        "SELECT items, outcome, error FROM custos.run_job('embedding_refresh')",
    )
    .unwrap();
    assert_eq!(outcome.as_deref(), Some("ok"), "{error:?}");
    assert_eq!(items, Some(5), "two identities and three events");
    assert_eq!(
        count("SELECT count(*) FROM custos.embedding_queue WHERE kind <> 'events'"),
        0
    );
    assert_eq!(
        count("SELECT done_seq FROM custos.embedding_queue WHERE kind = 'events'"),
        count("SELECT max(seq) FROM custos.events WHERE tenant_id = custos.current_tenant()")
    );
    assert_eq!(count("SELECT count(*) FROM custos.event_embeddings"), 3);
    assert_eq!(
        count("SELECT count(*) FROM custos.identity_embeddings WHERE user_id IN ('ana', 'bo')"),
        2
    );
    // Nothing left: a second run writes nothing.
    assert_eq!(
        count("SELECT items FROM custos.run_job('embedding_refresh')"),
        0
    );
    // A removed identity leaves the queue.
    Spi::run("UPDATE custos.identities SET department = 'x' WHERE user_id = 'bo'").unwrap();
    Spi::run("DELETE FROM custos.identities WHERE user_id = 'bo'").unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.embedding_queue WHERE item = 'bo'"),
        0
    );
}

#[pg_test]
fn a_refused_batch_is_split_and_a_refused_item_fails_until_retried() {
    tenant(A);
    Spi::run(
        "SELECT custos.upsert_identities('[{\"user_id\": \"a1\"}, {\"user_id\": \"a2\"}, {\"user_id\": \"a3\"}]')",
    )
    .unwrap();
    let claim =
        "SELECT count(*) FROM custos_internal.claim_embeddings(10, 60, custos.current_tenant())";
    assert_eq!(count(claim), 3);
    Spi::run(
        "SELECT custos_internal.embeddings_failed(custos.current_tenant(), '{identity,identity,identity}',
                '{a1,a2,a3}', '{NULL,NULL,NULL}', 'ValidationException: input too long', true, true)",
    )
    .unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.embedding_queue WHERE solo AND state = 'pending'"),
        3
    );
    // Alone now: one item a claim.
    assert_eq!(count(claim), 1);
    let first =
        Spi::get_one::<String>("SELECT item FROM custos.embedding_queue WHERE lease_until > now()")
            .unwrap()
            .unwrap();
    Spi::run(&format!(
        "SELECT custos_internal.embeddings_failed(custos.current_tenant(), '{{identity}}', '{{{first}}}', '{{NULL}}',
                'ValidationException: input too long', true, true)"
    ))
    .unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.embedding_queue WHERE state = 'failed' AND last_error LIKE 'Validation%'"),
        1
    );
    // The others go on; the failed one waits for retry_failed.
    assert_eq!(count(claim), 1);
    assert_eq!(count("SELECT custos.retry_failed()"), 1);
    assert_eq!(
        count("SELECT count(*) FROM custos.embedding_queue WHERE state = 'failed'"),
        0
    );
    // An unavailable provider only delays: never failed, whatever the attempts.
    Spi::run("UPDATE custos.embedding_queue SET attempts = 99, lease_until = NULL").unwrap();
    Spi::run(
        "SELECT custos_internal.embeddings_failed(custos.current_tenant(), '{identity}', '{a1}', '{NULL}',
                'bedrock is unavailable', false, true)",
    )
    .unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.embedding_queue WHERE item = 'a1' AND state = 'pending' AND next_attempt_at > now()"),
        1
    );
}

#[pg_test]
fn jobs_run_by_hand_are_recorded_and_bad_names_refused() {
    tenant(A);
    Spi::run("SELECT custos.record_event('login', 'user', 'u1')").unwrap();
    let (outcome, error) = Spi::get_two::<String, String>(
        "SELECT outcome, error FROM custos.run_job('checkpoint_publication')",
    )
    .unwrap();
    assert_eq!(outcome.as_deref(), Some("skipped"));
    assert!(error.unwrap_or_default().contains("checkpoint_url"));
    for job in [
        "retention",
        "budget_alert",
        "summary_report",
        "dormant_insights",
    ] {
        let (outcome, error) = Spi::get_two::<String, String>(&format!(
            "SELECT outcome, error FROM custos.run_job('{job}')"
        ))
        .unwrap();
        assert_eq!(outcome.as_deref(), Some("ok"), "{job}: {error:?}");
    }
    assert_eq!(
        count("SELECT count(*) FROM custos.job_runs WHERE run_by = 'hand'"),
        5
    );
    // Just run: not due again before its interval.
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM custos_internal.due_jobs() WHERE tenant_id = '{A}' AND job = 'retention'"
        )),
        0
    );
    let skipped = Spi::get_one::<String>("SELECT error FROM custos.run_job('anomaly_detection')")
        .unwrap()
        .unwrap_or_default();
    assert!(
        skipped.contains("no audit_events model for the tenant"),
        "{skipped}"
    );
    assert_error(
        "SELECT * FROM custos.run_job('vacuum')",
        "22023",
        "unknown job",
    );
    let health = Spi::get_one::<pgrx::JsonB>("SELECT custos.health()")
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(health["jobs"]["retention"]["outcome"], "ok");
    assert!(health["embedding_queue"]["pending"].is_number());
    let runs = count("SELECT count(*) FROM custos.metrics WHERE metric = 'custos_job_last_run_timestamp_seconds'");
    assert_eq!(
        runs,
        6,
        "{:?}",
        Spi::get_one::<pgrx::JsonB>("SELECT jsonb_agg(m) FROM custos.metrics m")
            .unwrap()
            .map(|j| j.0)
    );
}

#[pg_test]
fn integrations_are_checked_and_alerts_fill_the_outbox() {
    tenant(A);
    for (url, needle) in [
        ("http://hooks.example.com/x", "over https"),
        ("https://169.254.169.254/latest", "link-local"),
        ("https://metadata.google.internal/", "metadata"),
        ("https://10.0.0.5/hook", "private"),
        ("https://user:pw@hooks.example.com/", "password"),
    ] {
        assert_error(
            &format!("SELECT * FROM custos.set_integration('x', 'slack', '{url}')"),
            "22023",
            needle,
        );
    }
    assert_error(
        "SELECT * FROM custos.set_integration('x', 'pager', 'https://hooks.example.com/')",
        "22023",
        "unknown integration kind",
    );
    let secret = Spi::get_one::<String>(
        "SELECT signing_secret FROM custos.set_integration('siem', 'generic', 'https://siem.example.com/in', 'medium')",
    )
    .unwrap()
    .unwrap();
    assert_eq!(secret.len(), 64, "32 bytes, hex");
    // Changing it later keeps the key and does not show it again.
    let again = Spi::get_one::<String>(
        "SELECT signing_secret FROM custos.set_integration('siem', 'generic', 'https://siem.example.com/v2', 'medium')",
    )
    .unwrap();
    assert_eq!(again, None);
    Spi::run("SELECT * FROM custos.set_integration('chat', 'slack', 'https://hooks.slack.com/services/T0/B0/SECRET', 'high')")
        .unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.integration_list WHERE url NOT LIKE '%SECRET%' AND url LIKE 'https://%/…'"),
        2
    );
    Spi::run(&format!(
        "INSERT INTO custos.alerts (tenant_id, source, severity, title) VALUES
           ('{A}', 'test', 'medium', 'to the SIEM only'), ('{A}', 'test', 'critical', 'to both')"
    ))
    .unwrap();
    assert_eq!(
        count(
            "SELECT count(*) FROM custos.notifications WHERE topic = 'alert' AND state = 'pending'"
        ),
        3
    );
    assert_eq!(count("SELECT custos.remove_integration('chat')::int"), 1);
    assert_eq!(
        count("SELECT count(*) FROM custos.notifications"),
        2,
        "its undelivered notifications go with it"
    );
}
