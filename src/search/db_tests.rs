use crate::testing::{assert_error, count};
use pgrx::prelude::*;

const A: &str = "00000000-0000-4000-8000-0000000c5001";
const B: &str = "00000000-0000-4000-8000-0000000c5002";

fn tenant(t: &str) {
    Spi::run(&format!("SELECT custos.set_tenant('{t}')")).unwrap();
}

fn identities(json: &str) {
    Spi::run(&format!("SELECT custos.upsert_identities('{json}')")).unwrap();
}

/// (embedded, unchanged, removed) of custos.embed_identities().
fn embed_identities() -> (i64, i64, i64) {
    Spi::get_three::<i64, i64, i64>("SELECT * FROM custos.embed_identities()")
        .map(|(a, b, c)| (a.unwrap_or(-1), b.unwrap_or(-1), c.unwrap_or(-1)))
        .unwrap()
}

fn names(sql: &str) -> Vec<String> {
    Spi::connect(|c| {
        c.select(sql, None, &[])
            .unwrap()
            .filter_map(|r| r.get::<String>(1).ok().flatten())
            .collect()
    })
}

#[pg_test]
fn identities_are_embedded_once_and_searched_within_their_tenant() {
    tenant(A);
    identities(
        r#"[{"user_id": "fin1", "department": "finance", "roles": ["approver", "payments"], "is_privileged": true},
            {"user_id": "fin2", "department": "finance", "roles": ["approver", "payments"], "is_privileged": true},
            {"user_id": "eng1", "department": "engineering", "roles": ["developer"], "mfa_enabled": true},
            {"user_id": "svc1", "department": "it", "roles": ["backup"], "is_service_account": true}]"#,
    );
    assert_eq!(embed_identities(), (4, 0, 0));
    assert_eq!(
        embed_identities(),
        (0, 4, 0),
        "nothing changed, nothing re-embedded"
    );
    identities(
        r#"[{"user_id": "eng1", "department": "finance", "roles": ["developer"], "mfa_enabled": true}]"#,
    );
    assert_eq!(embed_identities(), (1, 3, 0));
    // Tenant B has a twin of fin1: never A's neighbour (a superuser bypasses row-level security:
    // the function names the tenant itself).
    tenant(B);
    identities(
        r#"[{"user_id": "twin", "department": "finance", "roles": ["approver", "payments"], "is_privileged": true}]"#,
    );
    embed_identities();
    tenant(A);
    let near = names("SELECT similar_user_id FROM custos.similar_users('fin1', 3)");
    assert_eq!(near.first().map(String::as_str), Some("fin2"), "{near:?}");
    assert!(!near.contains(&"twin".to_string()) && !near.contains(&"fin1".to_string()));
    assert_eq!(
        count("SELECT count(*) FROM custos.similar_users('fin1', 10, 0.99)"),
        1,
        "min_similarity filters"
    );
    for (sql, state, needle) in [
        (
            "SELECT * FROM custos.similar_users('fin1', 0)",
            "22023",
            "between 1 and 1000",
        ),
        (
            "SELECT * FROM custos.similar_users('fin1', 1001)",
            "22023",
            "between 1 and 1000",
        ),
        (
            "SELECT * FROM custos.similar_users('nobody')",
            "P0002",
            "no embedding of identity",
        ),
        (
            "SELECT * FROM custos.similar_users('twin')",
            "P0002",
            "no embedding of identity",
        ),
    ] {
        assert_error(sql, state, needle);
    }
    // A removed identity takes its embeddings along.
    Spi::run("DELETE FROM custos.identities WHERE user_id = 'svc1'").unwrap();
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM custos.identity_embeddings WHERE tenant_id = '{A}'"
        )),
        3
    );
}

#[pg_test]
fn the_hnsw_index_of_the_dimension_is_used() {
    tenant(A);
    identities(r#"[{"user_id": "x1"}, {"user_id": "x2", "department": "sales"}]"#);
    embed_identities();
    Spi::run("SET LOCAL enable_seqscan = off").unwrap();
    // The search's expression and predicate match the partial index (with so few rows the
    // planner would rather read the tenant's rows by primary key: the benchmark shows the index
    // at work; here the tenant is left out to see that it can be used at all).
    let plan = Spi::get_one::<pgrx::Json>(
        "EXPLAIN (FORMAT JSON) SELECT user_id FROM custos.identity_embeddings e
          WHERE e.dims = 384
          ORDER BY e.embedding::vector(384) <=> (SELECT embedding FROM custos.identity_embeddings LIMIT 1)::vector(384)
          LIMIT 5",
    )
    .unwrap()
    .unwrap()
    .0
    .to_string();
    assert!(plan.contains("identity_embeddings_hnsw_384"), "{plan}");
}

#[pg_test]
fn events_are_searched_by_meaning_and_each_search_is_logged() {
    tenant(A);
    Spi::run(
        "SELECT custos.record_events(jsonb_build_array(
            jsonb_build_object('action', 'login_failed', 'entity_type', 'user', 'entity_id', 'u1', 'details', jsonb_build_object('reason', 'bad password from new address')),
            jsonb_build_object('action', 'login_failed', 'entity_type', 'user', 'entity_id', 'u2', 'details', jsonb_build_object('reason', 'bad password')),
            jsonb_build_object('action', 'invoice_paid', 'entity_type', 'invoice', 'entity_id', 'INV-1', 'details', jsonb_build_object('amount', 120)),
            jsonb_build_object('action', 'report_exported', 'entity_type', 'report', 'entity_id', 'R-9', 'details', jsonb_build_object('rows', 5000))))",
    )
    .unwrap();
    tenant(B);
    Spi::run("SELECT custos.record_event('login_failed', 'user', 'b1', '{\"reason\": \"bad password\"}')").unwrap();
    Spi::run("SELECT * FROM custos.embed_events()").unwrap();
    tenant(A);
    assert_eq!(
        Spi::get_two::<i64, i64>("SELECT * FROM custos.embed_events()").unwrap(),
        (Some(4), Some(0))
    );
    assert_eq!(
        Spi::get_two::<i64, i64>("SELECT * FROM custos.embed_events()").unwrap(),
        (Some(0), Some(4)),
        "unchanged events are not embedded again"
    );
    let found =
        names("SELECT action FROM custos.search_events('failed login with a bad password', 2)");
    assert_eq!(found, vec!["login_failed", "login_failed"]);
    assert_eq!(
        count("SELECT count(*) FROM custos.search_events('bad password', 10)"),
        4,
        "only the tenant's own events"
    );
    assert_eq!(
        count("SELECT count(*) FROM custos.search_events('bad password', 10, with_action => 'invoice_paid')"),
        1
    );
    let id = Spi::get_one::<pgrx::Uuid>("SELECT id FROM custos.events WHERE entity_id = 'u1'")
        .unwrap()
        .unwrap();
    let near = names(&format!(
        "SELECT entity_id FROM custos.similar_events('{id}', 1)"
    ));
    assert_eq!(near, vec!["u2"]);
    assert_eq!(
        count("SELECT count(*) FROM custos.access_log WHERE function IN ('custos.search_events', 'custos.similar_events')"),
        4
    );
    for (sql, state, needle) in [
        (
            "SELECT * FROM custos.search_events('  ')",
            "22023",
            "query is empty",
        ),
        (
            "SELECT * FROM custos.search_events(NULL)",
            "22023",
            "query is empty",
        ),
        (
            "SELECT * FROM custos.search_events('x', -1)",
            "22023",
            "between 1 and 1000",
        ),
        (
            "SELECT * FROM custos.similar_events('00000000-0000-8000-8000-000000000000')",
            "P0002",
            "no embedding of event",
        ),
    ] {
        assert_error(sql, state, needle);
    }
}
