use crate::testing::{assert_error, count};
use pgrx::prelude::*;

#[pg_test]
fn a_dormant_account_is_analysed_by_rules_without_a_provider_and_stored() {
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000d1001')").unwrap();
    Spi::run(
        "SELECT custos.upsert_identities(jsonb_build_array(
            jsonb_build_object('user_id', 'old_admin', 'department', 'it', 'roles', jsonb_build_array('admin'),
                               'is_privileged', true, 'last_active_at', now() - interval '400 days'),
            jsonb_build_object('user_id', 'old_admin2', 'department', 'it', 'roles', jsonb_build_array('admin'),
                               'is_privileged', true, 'last_active_at', now() - interval '300 days')))",
    )
    .unwrap();
    Spi::run("SELECT * FROM custos.embed_identities()").unwrap();
    let (level, fallback, version) = Spi::get_three::<String, bool, String>(
        "SELECT risk_level, fallback, prompt_version FROM custos.analyze_dormant_user('old_admin')",
    )
    .unwrap();
    let deterministic = Spi::get_one::<String>(
        "SELECT risk_level FROM custos.dormant_users() WHERE user_id = 'old_admin'",
    )
    .unwrap();
    assert_eq!(level, deterministic);
    assert_eq!(fallback, Some(true), "no provider: the rules answer");
    assert_eq!(version.as_deref(), Some("analyze_dormant_user@1"));
    assert_eq!(
        count("SELECT count(*) FROM custos.user_insights WHERE user_id = 'old_admin' AND provider = 'local'
                 AND jsonb_array_length(similar_users) = 1 AND similar_users->0->>'user_id' = 'old_admin2'
                 AND recommendations @> '[{\"priority\": \"urgent\"}]' AND jsonb_array_length(insights) > 0"),
        1
    );
    Spi::run("SELECT * FROM custos.analyze_dormant_user('old_admin')").unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.user_insights"),
        1,
        "the latest only"
    );
    assert_eq!(
        count("SELECT count(*) FROM custos.rag_analysis_history WHERE subject = 'old_admin'"),
        2
    );
    assert_eq!(
        count("SELECT count(*) FROM custos.dormant_insights WHERE user_id = 'old_admin'"),
        1
    );
    assert_error(
        "SELECT * FROM custos.analyze_dormant_user('nobody')",
        "P0002",
        "has no identity",
    );
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000d1002')").unwrap();
    assert_error(
        "SELECT * FROM custos.analyze_dormant_user('old_admin')",
        "P0002",
        "has no identity",
    );
    // A subject's export carries what was said about them.
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000d1001')").unwrap();
    assert_eq!(
        count("SELECT jsonb_array_length(i->'history') + jsonb_array_length(i->'embeddings')
                 FROM (SELECT custos.export_subject('00000000-0000-4000-8000-0000000d1001', 'old_admin')->'insights' AS i) x
                WHERE i->'latest'->>'prompt_version' = 'analyze_dormant_user@1'"),
        3
    );
    // Removing the identity removes what was said about it.
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000d1001')").unwrap();
    Spi::run("DELETE FROM custos.identities WHERE user_id = 'old_admin'").unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.rag_analysis_history WHERE subject = 'old_admin'"),
        0
    );
    assert_eq!(count("SELECT count(*) FROM custos.user_insights"), 0);
}

fn one_row(sql: &str) -> pgrx::JsonB {
    Spi::get_one::<pgrx::JsonB>(&format!("SELECT to_jsonb(r) FROM ({sql}) r"))
        .unwrap()
        .unwrap()
}

#[pg_test]
fn an_event_is_explained_by_rules_with_its_context_and_stored() {
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000d2001')").unwrap();
    Spi::run("SELECT custos.set_actor('mallory')").unwrap();
    Spi::run(
        "SELECT custos.record_events(jsonb_build_array(
            jsonb_build_object('action', 'login', 'entity_type', 'user', 'entity_id', 'mallory'),
            jsonb_build_object('action', 'role_granted', 'entity_type', 'user', 'entity_id', 'mallory',
                               'severity', 'high', 'details', jsonb_build_object('role', 'admin')),
            jsonb_build_object('action', 'report_exported', 'entity_type', 'report', 'entity_id', 'R-1')))",
    )
    .unwrap();
    let id =
        Spi::get_one::<pgrx::Uuid>("SELECT id FROM custos.events WHERE action = 'role_granted'")
            .unwrap()
            .unwrap();
    let row = one_row(&format!("SELECT * FROM custos.explain_event('{id}')")).0;
    assert_eq!(row["explained_event_id"], id.to_string());
    assert_eq!(row["fallback"], true, "no provider: the rules answer");
    assert_eq!(row["prompt_version"], "explain_event@1");
    assert_eq!(
        row["significance"], "high",
        "high severity, first of its kind, rare: {row}"
    );
    let what = row["what_happened"].as_str().unwrap_or_default();
    assert!(
        what.starts_with("role_granted on user mallory by mallory"),
        "{what}"
    );
    let why = row["why_it_matters"].as_str().unwrap_or_default();
    assert!(
        why.contains("severity high") && why.contains("first \"role_granted\""),
        "{why}"
    );
    let related: Vec<&str> = row["related_events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        related,
        vec!["login", "report_exported"],
        "same actor or entity, by time"
    );
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM custos.rag_analysis_history WHERE subject_type = 'event' AND subject = '{id}'
                AND prompt_version = 'explain_event@1' AND analysis ? 'statistics'"
        )),
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM custos.access_log WHERE function = 'custos.explain_event'"),
        1
    );
    // A routine event of the same kind reads as routine.
    let login = Spi::get_one::<pgrx::Uuid>("SELECT id FROM custos.events WHERE action = 'login'")
        .unwrap()
        .unwrap();
    Spi::run("SELECT custos.record_event('login', 'user', 'mallory')").unwrap();
    let later = Spi::get_one::<String>(&format!(
        "SELECT significance FROM custos.explain_event((SELECT id FROM custos.events WHERE action = 'login' AND id <> '{login}'))"
    ))
    .unwrap();
    assert_ne!(later.as_deref(), Some("critical"));
    assert_error(
        "SELECT * FROM custos.explain_event('00000000-0000-8000-8000-000000000000')",
        "P0002",
        "has no event",
    );
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000d2002')").unwrap();
    assert_error(
        &format!("SELECT * FROM custos.explain_event('{id}')"),
        "P0002",
        "has no event",
    );
    assert_eq!(count("SELECT count(*) FROM custos.rag_analysis_history WHERE tenant_id = custos.current_tenant()"), 0);
}

#[pg_test]
fn periods_are_summarised_by_rules_and_stored() {
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000d3001')").unwrap();
    Spi::run(
        "SELECT custos.record_event('login', 'user', 'u' || i % 3, occurred_at => now() - make_interval(hours => i),
                                   actor => 'u' || i % 3)
           FROM generate_series(1, 30) i",
    )
    .unwrap();
    Spi::run(
        "SELECT custos.record_event('role_granted', 'user', 'u1', severity => 'critical', occurred_at => now() - interval '2 hours', actor => 'u1')",
    )
    .unwrap();
    let row = one_row("SELECT * FROM custos.summarize('daily')").0;
    let stats = &row["statistics"];
    assert_eq!(
        stats["events"], 25,
        "24 logins and the grant in the last day: {stats}"
    );
    assert_eq!(stats["previous_period_events"], 6);
    assert_eq!(stats["by_severity"]["critical"], 1);
    assert_eq!(stats["top_actions"][0]["action"], "login");
    assert_eq!(row["risk"], "critical");
    assert_eq!(row["fallback"], true);
    assert_eq!(row["prompt_version"], "summarize_period@1");
    let summary = row["summary"].as_str().unwrap_or_default();
    assert!(
        summary.starts_with("25 events by 3 actors in the last day (6 in the day before)"),
        "{summary}"
    );
    let weekly = one_row("SELECT * FROM custos.summarize('weekly')").0;
    assert_eq!(weekly["statistics"]["events"], 31);
    let empty = one_row("SELECT * FROM custos.summarize('monthly', now() - interval '1 year')").0;
    assert_eq!(empty["risk"], "none");
    assert_eq!(count("SELECT count(*) FROM custos.summaries"), 3);
    assert_eq!(
        count("SELECT count(*) FROM custos.access_log WHERE function = 'custos.summarize'"),
        3
    );
    assert_error(
        "SELECT * FROM custos.summarize('hourly')",
        "22023",
        "unknown period",
    );
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000d3002')").unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.summaries WHERE tenant_id = custos.current_tenant()"),
        0
    );
    let other = one_row("SELECT * FROM custos.summarize('weekly')").0;
    assert_eq!(
        other["statistics"]["events"], 0,
        "only the tenant's own events"
    );
}
