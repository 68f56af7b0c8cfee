//! Anomaly models from a client: training and scoring through PostgREST's per-request protocol
//! for two tenants, cancellation and statement_timeout, and a model activated in one session
//! seen by the next statement of another.

use custos_integration_tests::{connect, fresh_db, postgrest_request, postgrest_roles, sqlstate};
use serde_json::json;
use std::time::{Duration, Instant};

const ACME: &str = "a1000000-0000-4000-8000-0000000000a1";
const GLOBEX: &str = "b2000000-0000-4000-8000-0000000000b2";

fn claims(role: &str, tenant: &str) -> serde_json::Value {
    json!({"role": role, "sub": format!("analyst@{tenant}"), "tenant_id": tenant, "exp": 4102444800u64})
}

fn setup(name: &str) -> String {
    let (db, mut su) = fresh_db(name);
    postgrest_roles(
        &mut su,
        &[
            ("it_web_admin", "custos_admin"),
            ("it_web_user", "custos_reader"),
        ],
    );
    su.batch_execute(
        "CREATE TABLE public.logins (id int, tenant_id uuid NOT NULL, hour float8, failures int, bytes bigint);
         INSERT INTO public.logins
              SELECT g, t::uuid, 9 + g % 8, g % 3, 1000 + (g * 7919) % 500
                FROM generate_series(1, 2000) g,
                     unnest(ARRAY['a1000000-0000-4000-8000-0000000000a1', 'b2000000-0000-4000-8000-0000000000b2']) t;
         SELECT custos.enable_tenant_isolation('public.logins');
         GRANT SELECT ON public.logins TO it_web_admin, it_web_user;",
    )
    .unwrap();
    db
}

#[test]
fn tenants_train_and_score_through_postgrest_and_never_see_each_others_models() {
    let db = setup("anomaly_postgrest");
    let mut c = connect(&db, "authenticator");
    let train = "SELECT custos.if_train('logins', 'SELECT hour, failures, bytes FROM public.logins', 100, 256, 3)";
    // Each admin trains on its own rows only: row-level security applies to the training query.
    let v = postgrest_request(
        &mut c,
        "it_web_admin",
        &claims("it_web_admin", ACME),
        "POST",
        "/rpc/if_train",
        train,
    )
    .unwrap();
    assert_eq!(v[0].get::<_, i32>(0), 1);
    let rows = postgrest_request(
        &mut c,
        "it_web_user",
        &claims("it_web_user", ACME),
        "GET",
        "/models",
        "SELECT name, version, training_rows, tenant_id::text FROM custos.models",
    )
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(2), 2000);
    assert_eq!(rows[0].get::<_, Option<String>>(3).as_deref(), Some(ACME));

    // A reader scores one row and a whole query; an outlier scores high.
    let score = |c: &mut postgres::Client, tenant: &str, row: &str| {
        postgrest_request(
            c,
            "it_web_user",
            &claims("it_web_user", tenant),
            "POST",
            "/rpc/if_score",
            &format!("SELECT custos.if_score('logins', ARRAY[{row}]::float8[])"),
        )
        .map(|r| r[0].get::<_, f64>(0))
    };
    let odd = score(&mut c, ACME, "3, 40, 900000").unwrap();
    let usual = score(&mut c, ACME, "12, 1, 1200").unwrap();
    // Beyond the training range a row goes where the most extreme training rows go.
    assert!(odd > 0.6 && usual < 0.55, "odd {odd}, usual {usual}");
    let n = postgrest_request(&mut c, "it_web_user", &claims("it_web_user", ACME), "POST", "/rpc/if_score_query",
        "SELECT count(*) FROM custos.if_score_query('logins', 'SELECT hour, failures, bytes FROM public.logins')")
        .unwrap();
    assert_eq!(n[0].get::<_, i64>(0), 2000);

    // Globex has no model of that name, and cannot train as a reader.
    let err = score(&mut c, GLOBEX, "3, 40, 900000").unwrap_err();
    assert_eq!(sqlstate(&err), "42704");
    let err = postgrest_request(
        &mut c,
        "it_web_user",
        &claims("it_web_user", GLOBEX),
        "POST",
        "/rpc/if_train",
        train,
    )
    .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    // A request cannot switch tenants, not even from inside the query text it passes.
    let err = postgrest_request(
        &mut c,
        "it_web_user",
        &claims("it_web_user", GLOBEX),
        "POST",
        "/rpc/set_tenant",
        &format!("SELECT custos.set_tenant('{ACME}')"),
    )
    .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    let err = postgrest_request(&mut c, "it_web_user", &claims("it_web_user", ACME), "POST", "/rpc/if_score_query",
        &format!("SELECT count(*) FROM custos.if_score_query('logins',
            'SELECT l.hour, l.failures, l.bytes FROM (SELECT custos.set_tenant(''{GLOBEX}'')) s, public.logins l')")).unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    // Without a tenant claim nothing is visible and nothing can be trained (fail closed).
    let anon = json!({"role": "it_web_admin"});
    let err = postgrest_request(
        &mut c,
        "it_web_admin",
        &anon,
        "POST",
        "/rpc/if_train",
        train,
    )
    .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    let none = postgrest_request(
        &mut c,
        "it_web_admin",
        &anon,
        "GET",
        "/models",
        "SELECT count(*) FROM custos.models",
    )
    .unwrap();
    assert_eq!(none[0].get::<_, i64>(0), 0);
}

#[test]
fn a_version_activated_in_one_session_is_used_by_the_next_statement_of_another() {
    let (_db, mut su) = fresh_db("anomaly_cache");
    let mut other = connect(&_db, "postgres");
    su.batch_execute("CREATE TABLE pts AS SELECT g AS id, (g % 37)::float8 AS x, (g % 11)::float8 AS y FROM generate_series(1, 1000) g")
        .unwrap();
    su.execute(
        "SELECT custos.if_train('m', 'SELECT x, y FROM pts', 50, 64, 1)",
        &[],
    )
    .unwrap();
    let q = "SELECT custos.if_score('m', ARRAY[5.0, 5.0])";
    let first: f64 = other.query_one(q, &[]).unwrap().get(0);
    assert_eq!(other.query_one(q, &[]).unwrap().get::<_, f64>(0), first); // cached, same answer
    su.execute(
        "SELECT custos.if_train('m', 'SELECT x, y FROM pts WHERE id < 300', 50, 64, 2)",
        &[],
    )
    .unwrap();
    let second: f64 = other.query_one(q, &[]).unwrap().get(0);
    assert_ne!(second, first);
    su.execute("SELECT * FROM custos.activate_model('m', 1)", &[])
        .unwrap();
    assert_eq!(other.query_one(q, &[]).unwrap().get::<_, f64>(0), first);
}

#[test]
fn training_and_scoring_stop_at_statement_timeout_and_cancel() {
    let (db, mut su) = fresh_db("anomaly_cancel");
    su.batch_execute("SELECT custos.if_train('small', 'SELECT g::float8, (g % 7)::float8 FROM generate_series(1, 1000) g', 10, 16, 1)")
        .unwrap();
    let long_train =
        "SELECT custos.if_train('big', 'SELECT g::float8 FROM generate_series(1, 200000000) g')";
    let long_score = "SELECT count(*) FROM custos.if_score_query('small', 'SELECT g::float8, 1.0::float8 FROM generate_series(1, 200000000) g')";
    for q in [long_train, long_score] {
        su.batch_execute("SET statement_timeout = '300ms'").unwrap();
        let started = Instant::now();
        let err = su.batch_execute(q).unwrap_err();
        assert_eq!(sqlstate(&err), "57014", "{q}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{q} took {:?}",
            started.elapsed()
        );
        su.batch_execute("RESET statement_timeout").unwrap();
        // Cancel from another connection.
        let pid: i32 = su.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let db2 = db.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            connect(&db2, "postgres")
                .execute("SELECT pg_cancel_backend($1)", &[&pid])
                .unwrap();
        });
        let err = su.batch_execute(q).unwrap_err();
        canceller.join().unwrap();
        assert_eq!(sqlstate(&err), "57014", "{q}: {err}");
    }
    // Nothing was stored by the stopped training.
    let mut check = connect(&db, "postgres");
    let n: i64 = check
        .query_one("SELECT count(*) FROM custos.models WHERE name = 'big'", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}
