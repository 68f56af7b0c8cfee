use crate::testing::{assert_error, count};
use pgrx::prelude::*;

fn set_tenant(t: &str) {
    Spi::run(&format!("SELECT custos.set_tenant('{t}')")).unwrap();
}

fn one_f64(sql: &str) -> f64 {
    Spi::get_one::<f64>(sql).unwrap().unwrap()
}

/// 300 rows on a grid near the origin and one far away (id 301), in table pg_temp.toy.
fn toy_table() {
    Spi::run(
        "CREATE TEMP TABLE toy AS
           SELECT g AS id, (g % 20) * 0.1 AS x, ((g / 20) % 15) * 0.1 AS y, 'label' || g AS tag
             FROM generate_series(1, 300) g;
         INSERT INTO toy VALUES (301, 25.0, -30.0, 'far')",
    )
    .unwrap();
}

#[pg_test]
fn a_trained_model_scores_the_outlier_highest_and_versions_count_up() {
    toy_table();
    let v1 = Spi::get_one::<i32>(
        "SELECT custos.if_train('toy', 'SELECT x, y, tag FROM toy', 100, 64, 7)",
    )
    .unwrap();
    assert_eq!(v1, Some(1));
    let far = one_f64("SELECT custos.if_score('toy', ARRAY[25.0, -30.0])");
    let near = one_f64("SELECT custos.if_score('toy', ARRAY[1.0, 0.7])");
    assert!(
        far > 0.65 && near < 0.55 && far < 1.0 && near > 0.0,
        "far {far}, near {near}"
    );
    // The whole table: one row each, numbered in the query's order, the outlier on top.
    assert_eq!(
        count(
            "SELECT count(*) FROM custos.if_score_query('toy', 'SELECT x, y FROM toy ORDER BY id')"
        ),
        301
    );
    let top = Spi::get_one::<i64>(
        "SELECT row_number FROM custos.if_score_query('toy', 'SELECT x, y FROM toy ORDER BY id') ORDER BY score DESC LIMIT 1",
    )
    .unwrap();
    assert_eq!(top, Some(301));
    let same = one_f64(
        "SELECT score FROM custos.if_score_query('toy', 'SELECT 25.0::float8, -30') WHERE row_number = 1",
    );
    assert_eq!(same, far);
    // What was stored: features named after the numeric columns (tag is not one), parameters,
    // normalisation and metrics; one active version.
    assert_eq!(
        Spi::get_one::<String>(
            "SELECT format('%s %s %s %s %s', feature_names, kind, parameters->>'n_trees', training_rows, normalisation->0->>'feature')
               FROM custos.models WHERE name = 'toy' AND active"
        )
        .unwrap()
        .as_deref(),
        Some("{x,y} isolation_forest 100 301 x")
    );
    let v2 = Spi::get_one::<i32>(
        "SELECT custos.if_train('toy', 'SELECT x, y FROM toy', extended => true)",
    )
    .unwrap();
    assert_eq!(v2, Some(2));
    assert_eq!(
        count("SELECT count(*) FROM custos.models WHERE name = 'toy' AND active"),
        1
    );
    assert!(one_f64("SELECT custos.if_score('toy', ARRAY[25.0, -30.0])") > 0.6);
    // The explanation names the feature that isolates the row.
    let explained = Spi::get_one::<String>(
        "SELECT custos.if_explain('toy', ARRAY[1.0, -30.0], 1)->0->>'feature'",
    )
    .unwrap();
    assert_eq!(explained.as_deref(), Some("y"));
}

#[pg_test]
fn a_seed_gives_the_same_model_and_scores() {
    toy_table();
    Spi::run("SELECT custos.if_train('seeded', 'SELECT x, y FROM toy', 50, 128, 42)").unwrap();
    let first = one_f64("SELECT custos.if_score('seeded', ARRAY[1.5, 0.2])");
    Spi::run("SELECT custos.if_train('seeded', 'SELECT x, y FROM toy', 50, 128, 42)").unwrap();
    assert_eq!(
        one_f64("SELECT custos.if_score('seeded', ARRAY[1.5, 0.2])"),
        first
    );
    assert_eq!(
        count("SELECT count(DISTINCT model) FROM custos.models WHERE name = 'seeded'"),
        1
    );
    // No seed: a random one, stored, which reproduces the model.
    Spi::run("SELECT custos.if_train('unseeded', 'SELECT x, y FROM toy', 50, 128)").unwrap();
    Spi::run(
        "SELECT custos.if_train('unseeded', 'SELECT x, y FROM toy', 50, 128,
                                (SELECT (parameters->>'seed')::bigint FROM custos.models WHERE name = 'unseeded'))",
    )
    .unwrap();
    assert_eq!(
        count("SELECT count(DISTINCT model) FROM custos.models WHERE name = 'unseeded'"),
        1
    );
}

#[pg_test]
fn activating_another_version_changes_scores_at_once() {
    toy_table();
    Spi::run("SELECT custos.if_train('v', 'SELECT x, y FROM toy', 50, 64, 1)").unwrap();
    let v1 = one_f64("SELECT custos.if_score('v', ARRAY[1.0, 1.0])");
    Spi::run("SELECT custos.if_train('v', 'SELECT x, y FROM toy WHERE id <= 100', 50, 64, 2)")
        .unwrap();
    let v2 = one_f64("SELECT custos.if_score('v', ARRAY[1.0, 1.0])");
    assert_ne!(v1, v2);
    Spi::run("SELECT * FROM custos.activate_model('v', 1)").unwrap();
    assert_eq!(one_f64("SELECT custos.if_score('v', ARRAY[1.0, 1.0])"), v1);
    assert_error(
        "SELECT * FROM custos.activate_model('v', 9)",
        "42704",
        "no version 9",
    );
}

#[pg_test]
fn bad_input_is_refused_and_nothing_is_stored() {
    toy_table();
    Spi::run("SELECT custos.if_train('ok', 'SELECT x, y FROM toy', 10, 16, 1)").unwrap();
    let cases = [
        ("SELECT custos.if_train(NULL, 'SELECT x FROM toy')", "22004", "name cannot be NULL"),
        ("SELECT custos.if_train('m', NULL)", "22004", "query cannot be NULL"),
        ("SELECT custos.if_train('', 'SELECT x FROM toy')", "22023", "1 to 200 characters"),
        ("SELECT custos.if_train('audit_events', 'SELECT x FROM toy')", "42939", "reserved"),
        ("SELECT custos.if_train('m', 'SELECT x FROM toy', 0)", "22023", "n_trees must be between 1"),
        ("SELECT custos.if_train('m', 'SELECT x FROM toy', 10, 1)", "22023", "sample_size must be between 2"),
        ("SELECT custos.if_train('m', 'SELECT x FROM toy', 10, 1000)", "22023", "sample_size 1000 is larger than the 301 rows"),
        ("SELECT custos.if_train('m', 'SELECT tag FROM toy')", "42804", "no numeric column"),
        ("SELECT custos.if_train('m', 'SELECT x FROM toy WHERE false')", "22023", "no rows to train on"),
        ("SELECT custos.if_train('m', 'SELECT x, NULL::int FROM toy')", "22004", "is NULL"),
        ("SELECT custos.if_train('m', 'SELECT x, CASE WHEN id = 5 THEN ''NaN''::float8 ELSE y END AS y FROM toy')", "22003", "row 5, column \"y\" is NaN"),
        ("SELECT custos.if_train('m', 'SELECT ''Infinity''::numeric')", "22003", "is inf"),
        ("SELECT custos.if_train('m', 'INSERT INTO toy VALUES (1, 1, 1, ''x'') RETURNING id')", "22023", "not a INSERT statement"),
        ("SELECT custos.if_train('m', 'SELECT 1; SELECT 2')", "22023", "not 2 statements"),
        ("SELECT custos.if_train('m', 'SELECT x FROM no_such_table')", "42P01", "no_such_table"),
        ("SELECT custos.if_train('m', 'SELEC x')", "42601", "syntax error"),
        ("SELECT custos.if_score('no_such_model', ARRAY[1.0])", "42704", "no anomaly model named \"no_such_model\""),
        ("SELECT custos.if_score('ok', ARRAY[1.0])", "22023", "expects 2 features, not 1"),
        ("SELECT custos.if_score('ok', ARRAY[1.0, NULL])", "22004", "feature 2 is NULL"),
        ("SELECT custos.if_score('ok', ARRAY[1.0, 'NaN'])", "22003", "NaN"),
        ("SELECT custos.if_score('ok', ARRAY['-Infinity', 1.0])", "22003", "-inf"),
        ("SELECT custos.if_score('ok', NULL)", "22004", "features cannot be NULL"),
        ("SELECT * FROM custos.if_score_query('ok', 'SELECT x FROM toy')", "22023", "returns 1 numeric columns (x), model \"ok\" version 1 expects 2 (x, y)"),
        ("SELECT * FROM custos.if_score_query('ok', 'DELETE FROM toy')", "22023", "one SELECT"),
        ("SELECT * FROM custos.if_score_query(NULL, 'SELECT 1')", "22004", "name cannot be NULL"),
    ];
    for (sql, state, needle) in cases {
        assert_error(sql, state, needle);
    }
    assert_eq!(
        count("SELECT count(*) FROM custos.models WHERE name <> 'ok'"),
        0
    );
    assert_eq!(count("SELECT count(*) FROM toy"), 301);
}

#[pg_test]
fn tenants_see_their_models_and_shared_ones_never_each_others() {
    toy_table();
    let (a, b) = (
        "00000000-0000-4000-8000-00000000a001",
        "00000000-0000-4000-8000-00000000b001",
    );
    // A superuser without a tenant trains a shared model.
    Spi::run("SELECT custos.set_tenant(NULL)").unwrap();
    Spi::run("SELECT custos.if_train('m', 'SELECT x, y FROM toy', 20, 32, 1)").unwrap();
    let shared = one_f64("SELECT custos.if_score('m', ARRAY[2.0, 2.0])");
    set_tenant(a);
    assert_eq!(
        one_f64("SELECT custos.if_score('m', ARRAY[2.0, 2.0])"),
        shared
    );
    // Tenant a's own model of that name comes first, for a only.
    Spi::run("SELECT custos.if_train('m', 'SELECT x, y FROM toy WHERE id < 150', 20, 32, 2)")
        .unwrap();
    Spi::run("SELECT custos.if_train('only_a', 'SELECT x, y FROM toy', 20, 32, 3)").unwrap();
    let own = one_f64("SELECT custos.if_score('m', ARRAY[2.0, 2.0])");
    assert_ne!(own, shared);
    set_tenant(b);
    assert_eq!(
        one_f64("SELECT custos.if_score('m', ARRAY[2.0, 2.0])"),
        shared
    );
    assert_error(
        "SELECT custos.if_score('only_a', ARRAY[2.0, 2.0])",
        "42704",
        "only_a",
    );
    // Through row-level security, as a reader of tenant b.
    Spi::run("CREATE ROLE anomaly_reader_test; GRANT custos_reader TO anomaly_reader_test; SET LOCAL ROLE anomaly_reader_test").unwrap();
    set_tenant(b);
    assert_eq!(count("SELECT count(*) FROM custos.models"), 1);
    assert_error(
        "SELECT custos.if_score('only_a', ARRAY[2.0, 2.0])",
        "42704",
        "only_a",
    );
    assert_error(
        "SELECT custos.if_train('x', 'SELECT 1')",
        "42501",
        "permission denied",
    );
    Spi::run("SELECT custos.set_tenant(NULL)").unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.models WHERE tenant_id IS NOT NULL"),
        0
    );
}

/// 1,200 ordinary events over 30 days for one tenant, then a burst of off-hours deletions.
fn record_audit_stream(tenant: &str) {
    set_tenant(tenant);
    Spi::run(
        "SELECT custos.record_events((SELECT jsonb_agg(jsonb_build_object(
                 'occurred_at', timestamptz '2026-10-01 09:00Z' + (g / 40) * interval '1 day' + (g % 40) * interval '12 minutes',
                 'actor', 'user' || (g % 12), 'action', (ARRAY['login', 'view', 'view', 'update'])[1 + g % 4],
                 'entity_type', 'document', 'entity_id', 'doc' || (g % 30), 'ip_address', '10.0.0.' || (g % 12))
                 ORDER BY g) FROM generate_series(0, 1199) g))",
    )
    .unwrap();
    Spi::run(
        "SELECT custos.record_events((SELECT jsonb_agg(jsonb_build_object(
                 'occurred_at', timestamptz '2026-10-25 03:00Z' + g * interval '20 seconds',
                 'actor', 'user3', 'action', 'delete_user', 'severity', 'high',
                 'entity_type', 'user', 'entity_id', 'victim' || g, 'ip_address', '203.0.113.9')
                 ORDER BY g) FROM generate_series(1, 15) g))",
    )
    .unwrap();
}

#[pg_test]
fn audit_events_are_trained_on_detected_explained_and_reviewed() {
    let t = "00000000-0000-4000-8000-00000000c001";
    record_audit_stream(t);
    let window = "'2026-10-01Z', '2026-11-01Z'";
    let trained = Spi::get_one::<String>(&format!(
        "SELECT format('%s %s %s %s', model, version, scope, training_rows) FROM custos.train_anomaly_model({window}, seed => 5)"
    ))
    .unwrap();
    assert_eq!(trained.as_deref(), Some("audit_events 1 tenant 1215"));
    assert_eq!(
        count("SELECT count(*) FROM custos.events WHERE action = 'custos.model_trained'"),
        1
    );
    // The injected burst outscores every ordinary event.
    let ranked = Spi::get_one::<i64>(&format!(
        "SELECT count(*) FROM (SELECT seq FROM custos.score_events({window}) ORDER BY score DESC LIMIT 15) s WHERE s.seq > 1200"
    ))
    .unwrap();
    assert!(
        ranked.unwrap_or(0) >= 12,
        "only {ranked:?} of the burst in the top 15"
    );
    let found = count(&format!(
        "SELECT count(*) FROM custos.detect_anomalies({window}, threshold => 0.6)"
    ));
    assert!(found >= 12, "{found} anomalies");
    assert_eq!(
        count("SELECT count(*) FROM custos.anomaly_predictions"),
        1215
    );
    assert_eq!(
        count("SELECT count(*) FROM custos.anomalies WHERE explanation->0 ? 'feature' AND confidence BETWEEN 0 AND 1"),
        found
    );
    assert_eq!(
        count("SELECT count(*) FROM custos.alerts WHERE source = 'anomaly.detect'"),
        count("SELECT count(*) FROM custos.anomalies WHERE severity IN ('high', 'critical')")
    );
    // Running again records nothing twice.
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM custos.detect_anomalies({window}, threshold => 0.6)"
        )),
        0
    );
    // Feedback closes the anomaly's alert and goes on the record.
    let (id, alerted) = Spi::get_two::<i64, bool>(
        "SELECT a.id, EXISTS (SELECT 1 FROM custos.alerts l WHERE (l.details->>'anomaly_id')::bigint = a.id)
           FROM custos.anomalies a ORDER BY a.score DESC LIMIT 1",
    )
    .unwrap();
    let closed = Spi::get_one::<i64>(&format!(
        "SELECT alerts_closed FROM custos.anomaly_feedback({}, true, 'a planned clean-up')",
        id.unwrap()
    ))
    .unwrap();
    assert_eq!(closed, Some(i64::from(alerted.unwrap())));
    assert_eq!(
        count("SELECT count(*) FROM custos.events WHERE action = 'custos.anomaly_feedback' AND details ->> 'with_note' = 'true'"),
        1
    );
    assert_error(
        "SELECT * FROM custos.anomaly_feedback(-1, true)",
        "P0002",
        "no anomaly -1",
    );
    // Rates by group: every scored event counted once per dimension.
    assert_eq!(
        count(&format!("SELECT sum(events)::bigint FROM custos.anomaly_detection_rates({window}) WHERE dimension = 'entity_type'")),
        1215
    );
    assert_error(
        "SELECT * FROM custos.detect_anomalies('2026-11-01Z', '2026-10-01Z')",
        "22023",
        "invalid time window",
    );
}

#[pg_test]
fn a_small_tenant_uses_the_shared_baseline() {
    let big = "00000000-0000-4000-8000-00000000c002";
    record_audit_stream(big);
    Spi::run("SELECT custos.set_tenant(NULL)").unwrap();
    let shared = Spi::get_one::<String>(
        "SELECT scope FROM custos.train_anomaly_model('2026-10-01Z', '2026-11-01Z', seed => 1)",
    )
    .unwrap();
    assert_eq!(shared.as_deref(), Some("shared"));
    set_tenant("00000000-0000-4000-8000-00000000c003");
    Spi::run(
        "SELECT custos.record_event('login', 'user', 'u1', occurred_at => '2026-10-10Z', actor => 'u1')",
    )
    .unwrap();
    let used = Spi::get_one::<String>(
        "SELECT scope FROM custos.train_anomaly_model('2026-10-01Z', '2026-11-01Z')",
    )
    .unwrap();
    assert_eq!(used.as_deref(), Some("shared"));
    assert_eq!(
        count("SELECT count(*) FROM custos.score_events('2026-10-01Z', '2026-11-01Z')"),
        1
    );
}

#[pg_test]
fn with_score_on_insert_a_new_event_is_scored_as_it_is_recorded() {
    let t = "00000000-0000-4000-8000-00000000c004";
    record_audit_stream(t);
    Spi::run("SELECT * FROM custos.train_anomaly_model('2026-10-01Z', '2026-11-01Z', seed => 9)")
        .unwrap();
    // Off (the default): nothing is scored at insert.
    Spi::run("SELECT custos.record_event('view', 'document', 'doc1', occurred_at => '2026-10-30 10:00Z', actor => 'user1')")
        .unwrap();
    assert_eq!(count("SELECT count(*) FROM custos.anomaly_predictions"), 0);
    Spi::run("SELECT custos.set_setting('anomaly.score_on_insert', 'true')").unwrap();
    let seq = Spi::get_one::<i64>(
        "SELECT seq FROM custos.record_event('delete_user', 'user', 'victim99', severity => 'high',
                                             occurred_at => '2026-10-31 03:10Z', actor => 'user5',
                                             ip_address => '198.51.100.7')",
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM custos.anomaly_predictions WHERE event_seq = {seq}"
        )),
        1
    );
    assert_eq!(count("SELECT count(*) FROM custos.anomaly_predictions"), 1);
    // Another tenant without the setting records as ever.
    set_tenant("00000000-0000-4000-8000-00000000c005");
    Spi::run("SELECT custos.record_event('login', 'user', 'u1')").unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.anomaly_predictions WHERE tenant_id = custos.current_tenant()"),
        0
    );
}
