use crate::testing::{assert_error, count};
use pgrx::prelude::*;

fn fresh_tenant() -> &'static str {
    let t = Spi::get_one::<String>("SELECT gen_random_uuid()::text")
        .unwrap()
        .unwrap()
        .leak();
    Spi::run(&format!("SELECT custos.set_tenant('{t}')")).unwrap();
    t
}

fn upsert(json: &str) -> i64 {
    Spi::get_one_with_args::<i64>("SELECT custos.upsert_identities($1::jsonb)", &[json.into()])
        .unwrap()
        .unwrap()
}

/// user_id of the dormant report, in its order.
fn report(args: &str) -> Vec<String> {
    Spi::connect(|c| {
        c.select(
            &format!("SELECT user_id FROM custos.dormant_users({args})"),
            None,
            &[],
        )?
        .map(|r| Ok(r.get::<String>(1)?.unwrap()))
        .collect::<pgrx::spi::Result<Vec<_>>>()
    })
    .unwrap()
}

fn days_ago(d: f64) -> String {
    Spi::get_one::<String>(&format!("SELECT (now() - interval '{d} days')::text"))
        .unwrap()
        .unwrap()
}

#[pg_test]
fn threshold_edges_are_exact() {
    fresh_tenant();
    // 30 days exactly (a second past) is dormant; a minute short of 30 days is not.
    upsert(&format!(
        r#"[{{"user_id":"exactly","last_active_at":"{}","mfa_enabled":true,"has_valid_credentials":false}},
            {{"user_id":"almost","last_active_at":"{}"}},
            {{"user_id":"long_ago","last_active_at":"{}"}}]"#,
        days_ago(30.0 + 1.0 / 86400.0),
        days_ago(30.0 - 1.0 / 1440.0),
        days_ago(400.0)
    ));
    let mut ids = report("order_by => 'user_id'");
    ids.sort();
    assert_eq!(ids, ["exactly", "long_ago"]);
    let days = Spi::get_one::<i32>(
        "SELECT days_inactive FROM custos.dormant_users() WHERE user_id = 'exactly'",
    )
    .unwrap();
    assert_eq!(days, Some(30));
    // A different time zone for the client changes nothing: times are absolute.
    Spi::run("SET LOCAL TimeZone = 'Pacific/Kiritimati'").unwrap();
    assert_eq!(report("").len(), 2);
    Spi::run("SET LOCAL TimeZone = 'America/Adak'").unwrap();
    assert_eq!(report("").len(), 2);
}

#[pg_test]
fn never_active_accounts_after_the_grace_period() {
    fresh_tenant();
    upsert(&format!(
        r#"[{{"user_id":"new","created_at":"{}"}}, {{"user_id":"stale_new","created_at":"{}"}}]"#,
        days_ago(3.0),
        days_ago(45.0)
    ));
    assert_eq!(report(""), ["stale_new"]);
    let row =
        Spi::get_two::<bool, i32>("SELECT never_active, days_inactive FROM custos.dormant_users()")
            .unwrap();
    assert_eq!(
        row,
        (Some(true), None),
        "days_inactive is NULL when never active"
    );
    Spi::run("CREATE ROLE custos_test_dadmin NOLOGIN; GRANT custos_admin TO custos_test_dadmin; SET LOCAL ROLE custos_test_dadmin").unwrap();
    Spi::run("SELECT custos.set_setting('dormant.grace_days', '2')").unwrap();
    assert_eq!(report("order_by => 'user_id'"), ["new", "stale_new"]);
    Spi::run("SELECT custos.set_setting('dormant.count_never_active', 'false')").unwrap();
    assert!(report("").is_empty());
}

#[pg_test]
fn future_timestamps_are_refused() {
    let t = fresh_tenant();
    assert_error(
        r#"SELECT custos.upsert_identities(format('[{"user_id":"x","last_active_at":"%s"}]', now() + interval '1 day')::jsonb)"#,
        "22023",
        "last_active_at of an identity cannot be in the future",
    );
    upsert(r#"[{"user_id":"x"}]"#);
    assert_error(
        &format!("SELECT custos.touch_activity('{t}', 'x', now() + interval '2 hours')"),
        "22023",
        "in the future",
    );
    assert_error(
        &format!("SELECT custos.touch_activity('{t}', 'nobody')"),
        "P0002",
        "no identity \"nobody\"",
    );
}

#[pg_test]
fn risk_order_and_reasons() {
    fresh_tenant();
    let old = days_ago(60.0);
    upsert(&format!(
        r#"[{{"user_id":"admin","is_privileged":true,"mfa_enabled":true,"has_valid_credentials":true,"last_active_at":"{old}"}},
            {{"user_id":"bot","is_service_account":true,"mfa_enabled":true,"has_valid_credentials":true,"last_active_at":"{old}"}},
            {{"user_id":"plain","mfa_enabled":true,"has_valid_credentials":false,"last_active_at":"{old}"}},
            {{"user_id":"ghost","status":"deprovisioned","mfa_enabled":true,"has_valid_credentials":true,"last_active_at":"{old}"}}]"#
    ));
    // admin 1.0 + 0.5, bot 0.5 + 0.5, ghost 0.5 + 0.3, plain 0 (each + 0.30 for 30 days past).
    assert_eq!(report(""), ["admin", "bot", "ghost", "plain"]);
    let reasons = Spi::get_one::<Vec<String>>(
        "SELECT reasons FROM custos.dormant_users() WHERE user_id = 'admin'",
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        reasons,
        [
            "privileged account (+1.00)",
            "credentials still valid (+0.50)",
            "inactive 60 days, 30 past the 30-day threshold (+0.30)"
        ]
    );
    let level = Spi::get_two::<f32, String>(
        "SELECT risk_score, risk_level FROM custos.dormant_users() WHERE user_id = 'admin'",
    )
    .unwrap();
    // raw 1.8 -> 1 - e^-0.9
    assert!((level.0.unwrap() - 0.5934).abs() < 0.001, "{level:?}");
    assert_eq!(level.1.as_deref(), Some("medium"));
    assert_eq!(report("only_privileged => true"), ["admin"]);
    assert_eq!(report("risk_level => 'low'"), ["plain"]);
}

#[pg_test]
fn peers_make_an_idle_account_stand_out() {
    fresh_tenant();
    let recent = days_ago(1.0);
    let old = days_ago(90.0);
    let mut people: Vec<String> = (0..8)
        .map(|i| format!(r#"{{"user_id":"eng{i}","department":"eng","mfa_enabled":true,"has_valid_credentials":false,"last_active_at":"{recent}"}}"#))
        .collect();
    people.push(format!(r#"{{"user_id":"eng_idle","department":"eng","mfa_enabled":true,"has_valid_credentials":false,"last_active_at":"{old}"}}"#));
    people.push(format!(r#"{{"user_id":"loner","department":"ops","mfa_enabled":true,"has_valid_credentials":false,"last_active_at":"{old}"}}"#));
    upsert(&format!("[{}]", people.join(",")));
    assert_eq!(report(""), ["eng_idle", "loner"]);
    let reasons = Spi::get_one::<Vec<String>>(
        "SELECT reasons FROM custos.dormant_users() WHERE user_id = 'eng_idle'",
    )
    .unwrap()
    .unwrap();
    assert!(
        reasons.iter().any(
            |r| r.starts_with("unusual among its department: 100% of peers are active (+0.60)")
        ),
        "{reasons:?}"
    );
}

#[pg_test]
fn pages_are_stable_and_cursors_survive_inserts() {
    fresh_tenant();
    let old = days_ago(100.0);
    let batch: Vec<String> = (0..25)
        .map(|i| format!(r#"{{"user_id":"u{i:02}","last_active_at":"{old}"}}"#))
        .collect();
    upsert(&format!("[{}]", batch.join(",")));
    let all = report("lim => 100");
    assert_eq!(all.len(), 25);
    let paged: Vec<String> = (0..5)
        .flat_map(|p| report(&format!("skip => {}, lim => 5", p * 5)))
        .collect();
    assert_eq!(
        paged, all,
        "skip pages neither overlap nor skip when nothing changes"
    );
    // Keyset: a row inserted between two pages does not shift the next page.
    let first =
        Spi::get_one::<String>("SELECT cursor FROM custos.dormant_users(lim => 5) OFFSET 4")
            .unwrap()
            .unwrap();
    upsert(&format!(
        r#"[{{"user_id":"zz_new","is_privileged":true,"last_active_at":"{old}"}}]"#
    ));
    let next = report(&format!("lim => 5, after => '{first}'"));
    assert_eq!(next, all[5..10]);
    assert_error(
        "SELECT * FROM custos.dormant_users(after => 'garbage')",
        "22023",
        "not a cursor",
    );
}

#[pg_test]
fn bad_arguments_are_named() {
    fresh_tenant();
    assert_error(
        "SELECT * FROM custos.dormant_users(inactive_days => -5)",
        "22023",
        "inactive_days must be 1 or more",
    );
    assert_error(
        "SELECT * FROM custos.dormant_users(lim => 5000)",
        "22023",
        "lim must be between 1 and 1000",
    );
    assert_error(
        "SELECT * FROM custos.dormant_users(skip => -1)",
        "22023",
        "skip must be 0 or more",
    );
    assert_error(
        "SELECT * FROM custos.dormant_users(order_by => 'colour')",
        "22023",
        "unknown order_by \"colour\"",
    );
    assert_error(
        "SELECT * FROM custos.dormant_users(risk_level => 'spicy')",
        "22023",
        "unknown risk_level",
    );
    assert_error(
        "SELECT custos.upsert_identities('{}')",
        "22023",
        "must be a JSON array",
    );
    assert_error(
        r#"SELECT custos.upsert_identities('[{"email":"x@y"}]')"#,
        "22023",
        "has no user_id",
    );
    assert_error(
        r#"SELECT custos.upsert_identities('[{"user_id":"a"},{"user_id":"a"}]')"#,
        "22023",
        "appears more than once",
    );
    assert_error(
        r#"SELECT custos.upsert_identities('[{"user_id":"a","shoe_size":42}]')"#,
        "22023",
        "unknown key \"shoe_size\"",
    );
    assert_error(
        r#"SELECT custos.upsert_identities('[{"user_id":"a","status":"zombie"}]')"#,
        "23514",
        "",
    );
    assert_error(
        "SELECT * FROM custos.mark_reviewed('a', 'shrug')",
        "22023",
        "unknown decision",
    );
    assert_eq!(
        count("SELECT count(*) FROM custos.identities"),
        0,
        "nothing half-written"
    );
}

#[pg_test]
fn no_tenant_no_report() {
    Spi::run("SELECT custos.set_tenant(NULL)").unwrap();
    assert!(report("").is_empty());
    assert_eq!(count("SELECT count(*) FROM custos.dormant_summary()"), 0);
}

#[pg_test]
fn inactive_days_overrides_the_threshold() {
    fresh_tenant();
    upsert(&format!(
        r#"[{{"user_id":"a","last_active_at":"{}"}},{{"user_id":"b","last_active_at":"{}"}}]"#,
        days_ago(10.0),
        days_ago(3.0)
    ));
    assert!(report("").is_empty());
    assert_eq!(report("inactive_days => 7"), ["a"]);
    assert_eq!(
        report("inactive_days => 1, order_by => 'days_inactive'"),
        ["a", "b"]
    );
}

#[pg_test]
fn ledger_events_count_as_activity() {
    fresh_tenant();
    upsert(&format!(
        r#"[{{"user_id":"ana","email":"Ana@Example.com","last_active_at":"{}"}}]"#,
        days_ago(90.0)
    ));
    assert_eq!(report(""), ["ana"]);
    Spi::run("SELECT custos.set_actor('ana@example.com'); SELECT custos.record_event('login', 'user', 'ana')").unwrap();
    assert!(
        report("").is_empty(),
        "an event by ana (matched by email) makes her active"
    );
    let source = Spi::get_one::<String>(
        "SELECT last_active_source FROM custos.identities WHERE user_id = 'ana'",
    )
    .unwrap();
    assert_eq!(source.as_deref(), Some("ledger"));
}

#[pg_test]
fn reviews_are_shown_and_recorded() {
    fresh_tenant();
    upsert(&format!(
        r#"[{{"user_id":"old","last_active_at":"{}"}}]"#,
        days_ago(90.0)
    ));
    Spi::run("SELECT custos.set_actor('analyst@acme'); SELECT * FROM custos.mark_reviewed('old', 'disable', 'left the company')").unwrap();
    let shown =
        Spi::get_one::<String>("SELECT review_decision FROM custos.dormant_users()").unwrap();
    assert_eq!(shown.as_deref(), Some("disable"));
    let event = Spi::get_one::<String>(
        "SELECT actor || ' ' || action || ' ' || entity_id || ' ' || (details->>'decision') FROM custos.events WHERE action = 'identity.review'",
    )
    .unwrap();
    assert_eq!(
        event.as_deref(),
        Some("analyst@acme identity.review old disable")
    );
    assert_error(
        "SELECT * FROM custos.mark_reviewed('nobody', 'keep')",
        "P0002",
        "no identity",
    );
}

#[pg_test]
fn changing_the_threshold_reorders_at_once() {
    fresh_tenant();
    upsert(&format!(
        r#"[{{"user_id":"a","last_active_at":"{}"}}]"#,
        days_ago(20.0)
    ));
    assert!(report("").is_empty());
    Spi::run("SELECT custos.set_setting('dormant.threshold_days', '14')").unwrap();
    assert_eq!(report(""), ["a"]);
    assert_eq!(
        Spi::get_one::<i32>("SELECT threshold_days FROM custos.identities").unwrap(),
        Some(14)
    );
}

#[pg_test]
fn summary_counts_by_level_source_and_department() {
    fresh_tenant();
    let old = days_ago(200.0);
    upsert(&format!(
        r#"[{{"user_id":"a","source":"okta","department":"eng","is_privileged":true,"last_active_at":"{old}"}},
            {{"user_id":"b","source":"okta","department":"eng","last_active_at":"{}"}},
            {{"user_id":"c","source":"entra","last_active_at":"{old}"}}]"#,
        days_ago(1.0)
    ));
    let rows = Spi::connect(|c| {
        c.select("SELECT dimension || ':' || value || '=' || identities || '/' || dormant || '/' || privileged_dormant FROM custos.dormant_summary()", None, &[])?
            .map(|r| Ok(r.get::<String>(1)?.unwrap()))
            .collect::<pgrx::spi::Result<Vec<_>>>()
    })
    .unwrap();
    assert!(rows.contains(&"total:all=3/2/1".to_owned()), "{rows:?}");
    assert!(rows.contains(&"source:okta=2/1/1".to_owned()), "{rows:?}");
    assert!(
        rows.contains(&"department:(none)=1/1/0".to_owned()),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|r| r.starts_with("risk_level:")),
        "{rows:?}"
    );
}

#[pg_test]
fn summary_levels_agree_with_the_report() {
    fresh_tenant();
    Spi::run(
        "SELECT custos.upsert_identities((SELECT jsonb_agg(jsonb_build_object('user_id', 'u' || g,
            'is_privileged', g % 5 = 0, 'is_service_account', g % 7 = 0, 'mfa_enabled', g % 3 = 0,
            'has_valid_credentials', g % 2 = 0, 'department', 'd' || g % 4,
            'last_active_at', now() - (g * 3) * interval '1 day')) FROM generate_series(1, 300) g))",
    )
    .unwrap();
    let from_report = Spi::get_one::<String>(
        "SELECT string_agg(risk_level || '=' || n, ',' ORDER BY risk_level) FROM
           (SELECT risk_level, count(*) n FROM custos.dormant_users(lim => 1000) GROUP BY 1) x",
    )
    .unwrap();
    let from_summary = Spi::get_one::<String>(
        "SELECT string_agg(value || '=' || dormant, ',' ORDER BY value) FROM custos.dormant_summary() WHERE dimension = 'risk_level'",
    )
    .unwrap();
    assert_eq!(from_report, from_summary);
    assert!(from_report.unwrap().contains("critical"));
}
