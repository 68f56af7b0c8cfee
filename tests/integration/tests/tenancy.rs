//! Tenant isolation through PostgREST's per-request protocol, on a real server.

use custos_integration_tests::{
    connect, ensure_role, fresh_db, postgrest_request, postgrest_roles, sqlstate,
};
use serde_json::json;

const ACME: &str = "a1000000-0000-4000-8000-000000000001";
const GLOBEX: &str = "b2000000-0000-4000-8000-000000000002";

/// authenticator (LOGIN, NOINHERIT) switches to web_user or web_anon per request, as PostgREST does.
fn postgrest_setup(name: &str) -> String {
    let (db, mut su) = fresh_db(name);
    postgrest_roles(&mut su, &[("it_web_user", "custos_reader")]);
    su.batch_execute(&format!(
        "CREATE TABLE public.projects (id int PRIMARY KEY, tenant_id uuid NOT NULL, name text);
         INSERT INTO public.projects VALUES (1, '{ACME}', 'acme-1'), (2, '{ACME}', 'acme-2'), (3, '{GLOBEX}', 'globex-1');
         SELECT custos.enable_tenant_isolation('public.projects');
         GRANT SELECT ON public.projects TO it_web_user, it_web_anon;
         INSERT INTO custos.tenant_settings (tenant_id, key, value)
              VALUES ('{ACME}', 'dormant.threshold_days', '45'), ('{GLOBEX}', 'dormant.threshold_days', '60');"
    ))
    .unwrap();
    db
}

fn claims(tenant: &str) -> serde_json::Value {
    json!({"role": "it_web_user", "sub": format!("user@{tenant}"), "tenant_id": tenant, "exp": 4102444800u64})
}

#[test]
fn each_tenant_sees_only_its_rows_through_postgrest() {
    let db = postgrest_setup("postgrest_rows");
    let mut c = connect(&db, "authenticator");
    let q = "SELECT name FROM public.projects ORDER BY id";
    let names = |rows: Vec<postgres::Row>| {
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };

    let acme =
        postgrest_request(&mut c, "it_web_user", &claims(ACME), "GET", "/projects", q).unwrap();
    assert_eq!(names(acme), ["acme-1", "acme-2"]);
    let globex = postgrest_request(
        &mut c,
        "it_web_user",
        &claims(GLOBEX),
        "GET",
        "/projects",
        q,
    )
    .unwrap();
    assert_eq!(names(globex), ["globex-1"]);
    // Same pooled connection, next request without a tenant: nothing carries over.
    let anon = postgrest_request(
        &mut c,
        "it_web_anon",
        &json!({"role": "it_web_anon"}),
        "GET",
        "/projects",
        q,
    )
    .unwrap();
    assert!(anon.is_empty());
    let outside = c.query("SELECT count(*) FROM public.projects", &[]);
    assert!(
        outside.is_err(),
        "authenticator itself holds no privileges (NOINHERIT)"
    );
}

#[test]
fn rpc_settings_show_each_tenants_overrides() {
    let db = postgrest_setup("postgrest_rpc");
    let mut c = connect(&db, "authenticator");
    let rpc =
        "SELECT value::text, source FROM custos.settings() WHERE key = 'dormant.threshold_days'";
    for (tenant, expected) in [(ACME, "45"), (GLOBEX, "60")] {
        let rows = postgrest_request(
            &mut c,
            "it_web_user",
            &claims(tenant),
            "POST",
            "/rpc/settings",
            rpc,
        )
        .unwrap();
        assert_eq!(rows[0].get::<_, String>(0), expected);
        assert_eq!(rows[0].get::<_, String>(1), "tenant");
    }
    // The anonymous role holds no custos role: settings are not even callable.
    let anon = postgrest_request(
        &mut c,
        "it_web_anon",
        &json!({}),
        "POST",
        "/rpc/settings",
        rpc,
    )
    .unwrap_err();
    assert_eq!(sqlstate(&anon), "42501");
    // A reader without a tenant gets the defaults, never another tenant's values.
    let rows = postgrest_request(
        &mut c,
        "it_web_user",
        &json!({}),
        "POST",
        "/rpc/settings",
        rpc,
    )
    .unwrap();
    assert_eq!(
        (rows[0].get::<_, String>(0), rows[0].get::<_, String>(1)),
        ("30".into(), "default".into())
    );
    let raw = postgrest_request(
        &mut c,
        "it_web_user",
        &json!({}),
        "GET",
        "/tenant_settings",
        "SELECT count(*) FROM custos.tenant_settings",
    )
    .unwrap();
    assert_eq!(raw[0].get::<_, i64>(0), 0);
}

#[test]
fn forged_or_malformed_claims_see_nothing() {
    let db = postgrest_setup("postgrest_bad_claims");
    let mut c = connect(&db, "authenticator");
    let q = "SELECT count(*) FROM public.projects";
    for bad in [
        json!({"tenant_id": "acme"}),
        json!({"tenant_id": 1}),
        json!({"tenant_id": null}),
        json!({"tenant": ACME}),
    ] {
        let rows = postgrest_request(&mut c, "it_web_user", &bad, "GET", "/projects", q).unwrap();
        assert_eq!(rows[0].get::<_, i64>(0), 0, "claims {bad}");
    }
    // A request cannot pick its tenant by SET: the setting is superuser-only.
    let err = postgrest_request(
        &mut c,
        "it_web_user",
        &json!({}),
        "POST",
        "/rpc/x",
        &format!("SELECT set_config('custos.tenant_id', '{ACME}', true)"),
    )
    .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
}

#[test]
fn placeholder_set_before_the_library_loads_is_not_honoured() {
    // In a fresh session custos' library may not be loaded yet, so `SET custos.tenant_id` creates a
    // placeholder. When the library loads, PostgreSQL must drop a value set by a role that lacks
    // the privilege, so the session still sees no rows.
    let db = postgrest_setup("placeholder");
    let mut su = connect(&db, "postgres");
    let preloaded: bool = su
        .query_one(
            "SELECT current_setting('shared_preload_libraries') LIKE '%custos%'",
            &[],
        )
        .unwrap()
        .get(0);
    ensure_role(&mut su, "it_plain_app", "LOGIN");
    su.batch_execute("GRANT SELECT ON public.projects TO it_plain_app")
        .unwrap();
    let mut c = connect(&db, "it_plain_app");
    match c.batch_execute(&format!("SET custos.tenant_id = '{ACME}'")) {
        Ok(()) => assert!(!preloaded, "a preloaded custos must refuse the SET"),
        Err(e) => assert_eq!(sqlstate(&e), "42501"),
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM public.projects", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[test]
fn bad_input_gets_clear_errors() {
    let (_db, mut c) = fresh_db("tenancy_bad_input");
    let err = c
        .query("SELECT custos.set_tenant('not-a-uuid')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22P02");
    // set_tenant is transaction-local: each case is one implicit transaction (a simple-query batch).
    let in_tenant = |sql: &str| format!("SELECT custos.set_tenant('{ACME}'); {sql}");
    let err = c
        .batch_execute(&in_tenant("SELECT custos.setting('nope')"))
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22023");
    let db_err = err.as_db_error().unwrap();
    assert!(
        db_err
            .hint()
            .unwrap_or_default()
            .contains("dormant.threshold_days"),
        "{db_err:?}"
    );
    let err = c
        .batch_execute(&in_tenant(
            "SELECT custos.set_setting('dormant.threshold_days', '\"x\"')",
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22023");
    let err = c
        .batch_execute(&in_tenant(
            "SELECT custos.set_setting('dormant.threshold_days', '-1')",
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22003");
    let n: i64 = c
        .query_one("SELECT count(*) FROM custos.tenant_settings", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing half-written");
    c.batch_execute(&in_tenant(
        "SELECT custos.set_setting('dormant.threshold_days', '40')",
    ))
    .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM custos.tenant_settings", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}
