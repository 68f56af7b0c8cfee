//! Similarity search through PostgREST's per-request protocol: a tenant never gets a neighbour's
//! user, event or similarity score, and its searches land in its own access log.

use custos_integration_tests::{fresh_db, postgrest_request, postgrest_roles, sqlstate};
use postgres::Client;
use serde_json::json;

const ACME: &str = "a1000000-0000-4000-8000-0000000000a1";
const GLOBEX: &str = "b2000000-0000-4000-8000-0000000000b2";

fn claims(role: &str, tenant: &str) -> serde_json::Value {
    json!({"role": role, "sub": format!("auditor@{tenant}"), "tenant_id": tenant, "exp": 4102444800u64})
}

/// Identities and events for `tenant`, all named with its prefix, embedded.
fn fill(su: &mut Client, tenant: &str, prefix: &str) {
    let mut tx = su.transaction().unwrap();
    tx.execute("SELECT custos.set_tenant($1::text::uuid)", &[&tenant])
        .unwrap();
    tx.execute(
        "SELECT custos.upsert_identities(jsonb_build_array(
            jsonb_build_object('user_id', $1 || '_fin1', 'department', 'finance', 'roles', jsonb_build_array('approver')),
            jsonb_build_object('user_id', $1 || '_fin2', 'department', 'finance', 'roles', jsonb_build_array('approver')),
            jsonb_build_object('user_id', $1 || '_eng', 'department', 'engineering', 'roles', jsonb_build_array('developer'))))",
        &[&prefix],
    )
    .unwrap();
    tx.execute(
        "SELECT custos.record_events((SELECT jsonb_agg(jsonb_build_object('action', a, 'entity_type', 'user',
                 'entity_id', $1 || '_' || g, 'details', jsonb_build_object('reason', r)))
            FROM generate_series(1, 6) g,
                 LATERAL (SELECT CASE WHEN g % 2 = 0 THEN 'login_failed' ELSE 'report_exported' END AS a,
                                 CASE WHEN g % 2 = 0 THEN 'bad password' ELSE 'quarterly numbers' END AS r) x))",
        &[&prefix],
    )
    .unwrap();
    tx.batch_execute(
        "SELECT * FROM custos.embed_identities(); SELECT * FROM custos.embed_events();",
    )
    .unwrap();
    tx.commit().unwrap();
}

#[test]
fn searches_stay_in_their_tenant_through_postgrest() {
    let (db, mut su) = fresh_db("search_postgrest");
    postgrest_roles(&mut su, &[("it_web_auditor", "custos_auditor")]);
    fill(&mut su, ACME, "acme");
    fill(&mut su, GLOBEX, "globex");
    let mut api = custos_integration_tests::connect(&db, "authenticator");
    let rpc = |api: &mut Client, tenant: &str, sql: &str| {
        postgrest_request(
            api,
            "it_web_auditor",
            &claims("it_web_auditor", tenant),
            "POST",
            "/rpc/x",
            sql,
        )
    };
    let found: Vec<String> = rpc(
        &mut api,
        ACME,
        "SELECT entity_id FROM custos.search_events('failed login, bad password', 1000)",
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert_eq!(found.len(), 6, "{found:?}");
    assert!(found.iter().all(|e| e.starts_with("acme_")), "{found:?}");
    assert!(
        found[..3]
            .iter()
            .all(|e| ["acme_2", "acme_4", "acme_6"].contains(&e.as_str())),
        "nearest first: {found:?}"
    );
    let near: Vec<String> = rpc(
        &mut api,
        GLOBEX,
        "SELECT similar_user_id FROM custos.similar_users('globex_fin1', 5)",
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert_eq!(near.first().map(String::as_str), Some("globex_fin2"));
    assert!(near.iter().all(|u| u.starts_with("globex_")), "{near:?}");
    // Another tenant's user is unknown here, whatever its id.
    let err = rpc(
        &mut api,
        GLOBEX,
        "SELECT * FROM custos.similar_users('acme_fin1')",
    )
    .unwrap_err();
    assert_eq!(sqlstate(&err), "P0002", "{err:?}");
    let rows: i64 = rpc(
        &mut api,
        GLOBEX,
        "SELECT count(*) FROM custos.event_embeddings",
    )
    .unwrap()[0]
        .get(0);
    assert_eq!(rows, 6);
    // Nor can it have another tenant's event explained, and its summary counts its own events.
    let acme_event: String = rpc(
        &mut api,
        ACME,
        "SELECT id::text FROM custos.timeline() LIMIT 1",
    )
    .unwrap()[0]
        .get(0);
    let err = rpc(
        &mut api,
        GLOBEX,
        &format!("SELECT * FROM custos.explain_event('{acme_event}')"),
    )
    .unwrap_err();
    assert_eq!(sqlstate(&err), "P0002", "{err:?}");
    let counted: String = rpc(
        &mut api,
        GLOBEX,
        "SELECT statistics->>'events' FROM custos.summarize('weekly')",
    )
    .unwrap()[0]
        .get(0);
    assert_eq!(counted, "6");
    // Each tenant's searches are in its own access log.
    let logged = |api: &mut Client, tenant: &str| -> i64 {
        rpc(
            api,
            tenant,
            "SELECT count(*) FROM custos.access_log WHERE function = 'custos.search_events'",
        )
        .unwrap()[0]
            .get(0)
    };
    assert_eq!((logged(&mut api, ACME), logged(&mut api, GLOBEX)), (1, 0));
}
