//! Dormant identities on a live server: tenant isolation through PostgREST's protocol, paging
//! stability while another connection keeps inserting, and bad input.

use custos_integration_tests::{
    connect, fresh_db, postgrest_request, postgrest_roles, sqlstate, Beside,
};
use serde_json::json;
use std::collections::HashSet;

const ACME: &str = "f1000000-0000-4000-8000-000000000001";
const GLOBEX: &str = "f2000000-0000-4000-8000-000000000002";

fn load(c: &mut postgres::Client, tenant: &str, prefix: &str, n: usize) {
    let departments = ["eng", "ops", "sales"];
    let people: Vec<_> = (0..n)
        .map(|i| {
            let department = departments[i % 3];
            json!({"user_id": format!("{prefix}{i:04}"), "email": format!("{prefix}{i}@example.com"),
                   "is_privileged": i % 7 == 0, "department": department,
                   "last_active_at": format!("2025-{:02}-15T10:00:00Z", 1 + i % 12)})
        })
        .collect();
    c.batch_execute(&format!(
        "SELECT custos.set_tenant('{tenant}'); SELECT custos.upsert_identities($j${}$j$)",
        serde_json::Value::Array(people)
    ))
    .unwrap();
}

#[test]
fn each_tenant_sees_only_its_accounts_through_postgrest() {
    let (db, mut su) = fresh_db("dormant_postgrest");
    load(&mut su, ACME, "acme", 30);
    load(&mut su, GLOBEX, "globex", 20);
    postgrest_roles(&mut su, &[("it_web_user", "custos_reader")]);
    let mut c = connect(&db, "authenticator");
    let rpc = "SELECT user_id, risk_level FROM custos.dormant_users(lim => 1000)";
    for (tenant, prefix, n) in [(ACME, "acme", 30), (GLOBEX, "globex", 20)] {
        let claims = json!({"role": "it_web_user", "tenant_id": tenant});
        let rows = postgrest_request(
            &mut c,
            "it_web_user",
            &claims,
            "POST",
            "/rpc/dormant_users",
            rpc,
        )
        .unwrap();
        assert_eq!(rows.len(), n);
        assert!(rows
            .iter()
            .all(|r| r.get::<_, String>(0).starts_with(prefix)));
        let summary = postgrest_request(
            &mut c,
            "it_web_user",
            &claims,
            "POST",
            "/rpc/dormant_summary",
            "SELECT identities FROM custos.dormant_summary() WHERE dimension = 'total'",
        )
        .unwrap();
        assert_eq!(summary[0].get::<_, i64>(0), n as i64);
    }
    // The anonymous role holds no custos role: the report is not even callable.
    let anon = postgrest_request(
        &mut c,
        "it_web_anon",
        &json!({"role": "it_web_anon"}),
        "POST",
        "/rpc/dormant_users",
        rpc,
    )
    .unwrap_err();
    assert_eq!(sqlstate(&anon), "42501");
    // A reader without a tenant gets no rows.
    let none = postgrest_request(
        &mut c,
        "it_web_user",
        &json!({"role": "it_web_user"}),
        "POST",
        "/rpc/dormant_users",
        rpc,
    )
    .unwrap();
    assert!(none.is_empty(), "no tenant, no accounts");
    // Readers cannot change identities or review them.
    let claims = json!({"role": "it_web_user", "tenant_id": ACME});
    let e = postgrest_request(
        &mut c,
        "it_web_user",
        &claims,
        "POST",
        "/rpc/mark_reviewed",
        "SELECT * FROM custos.mark_reviewed('acme0001', 'keep')",
    )
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
}

#[test]
fn cursor_pages_neither_overlap_nor_skip_under_concurrent_inserts() {
    let (db, mut su) = fresh_db("dormant_paging");
    load(&mut su, ACME, "base", 500);
    let writer = Beside::start(&db, |c, i| {
        // New accounts of every risk, landing before, between and after the pages read so far.
        let batch: Vec<_> = (0..5)
            .map(|k| {
                json!({"user_id": format!("new{i:05}-{k}"), "is_privileged": k % 2 == 0,
                            "last_active_at": format!("2025-{:02}-01T00:00:00Z", 1 + (i + k) % 12)})
            })
            .collect();
        c.batch_execute(&format!(
            "SELECT custos.set_tenant('{ACME}'); SELECT custos.upsert_identities($j${}$j$)",
            serde_json::Value::Array(batch)
        ))
        .unwrap();
    });
    let mut reader = connect(&db, "postgres");
    // Start paging once the writer is under way.
    while reader
        .query_one(
            "SELECT count(*) FROM custos.identities WHERE user_id LIKE 'new%'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut tx = reader.transaction().unwrap();
        tx.execute(&format!("SELECT custos.set_tenant('{ACME}')"), &[])
            .unwrap();
        let rows = tx
            .query(
                "SELECT user_id, cursor FROM custos.dormant_users(lim => 37, after => $1)",
                &[&after],
            )
            .unwrap();
        tx.commit().unwrap();
        if rows.is_empty() {
            break;
        }
        after = Some(rows.last().unwrap().get(1));
        seen.extend(rows.iter().map(|r| r.get::<_, String>(0)));
        std::thread::sleep(std::time::Duration::from_millis(40));
    }
    let batches = writer.stop();
    assert!(
        batches > 3,
        "the writer inserted while we paged ({batches} batches)"
    );
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no account appears on two pages");
    for i in 0..500 {
        assert!(
            unique.contains(&format!("base{i:04}")),
            "base{i:04} was skipped"
        );
    }
}

#[test]
fn bad_input_from_a_client() {
    let (_db, mut c) = fresh_db("dormant_bad_input");
    let in_tenant = |sql: &str| format!("SELECT custos.set_tenant('{ACME}'); {sql}");
    for (sql, code) in [
        ("SELECT * FROM custos.dormant_users(inactive_days => -1)", "22023"),
        ("SELECT * FROM custos.dormant_users(lim => 1001)", "22023"),
        ("SELECT * FROM custos.dormant_users(order_by => 'email; drop table x')", "22023"),
        ("SELECT custos.upsert_identities('[{\"user_id\": \"a\", \"last_active_at\": \"not a time\"}]')", "22007"),
        ("SELECT custos.upsert_identities('[{\"user_id\": \"a\", \"last_active_at\": \"2999-01-01T00:00:00Z\"}]')", "22023"),
        ("SELECT custos.upsert_identities('[{\"user_id\": \"a\", \"is_privileged\": \"very\"}]')", "22P02"),
    ] {
        let e = c.batch_execute(&in_tenant(sql)).unwrap_err();
        assert_eq!(sqlstate(&e), code, "{sql}: {e:?}");
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM custos.identities", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}
