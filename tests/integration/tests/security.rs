//! What an attacker with an ordinary login, a custos role or a PostgREST client tried against
//! custos, each as a client of a real server, and the privilege model held to the README.

use custos_integration_tests::{
    connect, ensure_grant, ensure_role, fresh_db, postgrest_request, postgrest_roles, sqlstate,
};
use postgres::{Client, IsolationLevel};
use serde_json::json;
use std::collections::BTreeMap;

const A: &str = "a5000000-0000-4000-8000-000000000001";
const B: &str = "b5000000-0000-4000-8000-000000000002";
const MASTER: &str = "5ec0de5ec0de5ec0de5ec0de5ec0de5ec0de5ec0de5ec0de5ec0de5ec0de5ec0";

/// A login role of the test's own (roles are cluster-wide, tests run in parallel), member of
/// `custos_role` if one is given.
fn login(su: &mut Client, name: &str, custos_role: Option<&str>) -> String {
    let role = format!("sec_{name}");
    ensure_role(su, &role, "LOGIN");
    if let Some(r) = custos_role {
        ensure_grant(su, r, &role);
    }
    role
}

fn err(c: &mut Client, sql: &str) -> String {
    match c.batch_execute(sql) {
        Ok(()) => panic!("`{sql}` succeeded"),
        Err(e) => sqlstate(&e),
    }
}

fn one<T: for<'a> postgres::types::FromSql<'a>>(c: &mut Client, sql: &str) -> T {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

fn server_log() -> String {
    let data = std::env::var("CUSTOS_TEST_PGDATA").expect("CUSTOS_TEST_PGDATA");
    let log = std::path::Path::new(&data)
        .parent()
        .unwrap()
        .join("server.log");
    std::fs::read_to_string(log).unwrap_or_default()
}

/// A master key file the server can read; the database uses it (the key is never a setting).
fn use_master_key_file(su: &mut Client, db: &str) {
    let path = "/tmp/custos-it-security-master.key";
    std::fs::write(path, MASTER).unwrap();
    su.batch_execute(&format!(
        "ALTER DATABASE {db} SET custos.master_key_file = '{path}'"
    ))
    .unwrap();
}

#[test]
fn a_login_cannot_attach_custos_triggers_and_a_superuser_cannot_misuse_them() {
    let (db, mut su) = fresh_db("sec_triggers");
    let mallory = login(&mut su, "mallory", None);
    let mut m = connect(&db, &mallory);
    let look_alike = "CREATE TEMP TABLE ev (tenant_id int8, seq bigint, id uuid, occurred_at timestamptz,
        recorded_at timestamptz, actor text, db_role text, txid bigint, action text, entity_type text,
        entity_id text, severity text, details jsonb, ip_address text, user_agent text, prev_hash bytea,
        hash bytea, PRIMARY KEY (tenant_id, seq))";
    m.batch_execute(look_alike).unwrap();
    // The crash of the report: an int8 tenant_id read as a pointer. EXECUTE is not PUBLIC's.
    for f in [
        "events_chain",
        "identities_derive",
        "capture_changes",
        "capture_truncate",
    ] {
        let e = err(
            &mut m,
            &format!(
                "CREATE TRIGGER z BEFORE INSERT ON ev FOR EACH ROW EXECUTE FUNCTION custos_internal.{f}()"
            ),
        );
        assert_eq!(e, "42501", "{f}");
    }
    // Even a superuser's trigger on another table is refused before any datum is read.
    su.batch_execute(look_alike).unwrap();
    su.batch_execute(
        "CREATE TRIGGER z BEFORE INSERT ON ev FOR EACH ROW EXECUTE FUNCTION custos_internal.events_chain()",
    )
    .unwrap();
    let e = err(
        &mut su,
        "INSERT INTO ev (tenant_id, action, entity_type) VALUES (1234567, 'x', 'x')",
    );
    assert_eq!(e, "39P01");
    // Right types, wrong table: no head taken from it, the real chain stays intact.
    su.batch_execute(&format!(
        "CREATE TEMP TABLE ev2 (LIKE custos.events INCLUDING DEFAULTS);
         CREATE TRIGGER z BEFORE INSERT ON ev2 FOR EACH ROW EXECUTE FUNCTION custos_internal.events_chain();
         CREATE TEMP TABLE ids (LIKE custos.identities INCLUDING DEFAULTS);
         CREATE TRIGGER z BEFORE INSERT ON ids FOR EACH ROW EXECUTE FUNCTION custos_internal.identities_derive();
         SELECT custos.set_tenant('{A}'); SELECT custos.record_event('a', 'b');"
    ))
    .unwrap();
    let e = err(
        &mut su,
        &format!(
            "BEGIN; SELECT custos.set_tenant('{A}');
             INSERT INTO ev2 (tenant_id, action, entity_type) VALUES ('{A}', 'fake', 'x')"
        ),
    );
    assert_eq!(e, "39P01");
    su.batch_execute("ROLLBACK").unwrap();
    let e = err(
        &mut su,
        &format!("INSERT INTO ids (tenant_id, user_id) VALUES ('{A}', 'x')"),
    );
    assert_eq!(e, "39P01");
    su.batch_execute(&format!(
        "BEGIN; SELECT custos.set_tenant('{A}'); SELECT custos.record_event('c', 'd'); COMMIT"
    ))
    .unwrap();
    let (ok, checked): (bool, i64) = {
        let r = su
            .query_one(
                &format!("SELECT ok, checked FROM custos.verify_chain('{A}')"),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((ok, checked), (true, 2));
    // Calling a trigger function directly is refused too.
    err(&mut su, "SELECT custos_internal.events_chain()");
    assert!(
        !server_log().contains("terminated by signal"),
        "a backend crashed"
    );
}

#[test]
fn owning_a_tracked_table_does_not_lead_to_superuser() {
    let (db, mut su) = fresh_db("sec_cast");
    let owner = login(&mut su, "table_owner", Some("custos_admin"));
    su.batch_execute(&format!("CREATE SCHEMA app AUTHORIZATION {owner}"))
        .unwrap();
    let mut o = connect(&db, &owner);
    o.batch_execute(&format!(
        "CREATE TABLE app.pay (tenant_id uuid, id int PRIMARY KEY);
         SELECT custos.track_table('app.pay');
         BEGIN; SELECT custos.set_tenant('{A}'); INSERT INTO app.pay VALUES ('{A}', 1); COMMIT;
         CREATE TYPE app.evil AS (x int);
         CREATE FUNCTION app.e2u(app.evil) RETURNS uuid LANGUAGE plpgsql
             AS $$BEGIN EXECUTE 'ALTER ROLE {owner} SUPERUSER'; RETURN '{A}'; END$$;
         CREATE CAST (app.evil AS uuid) WITH FUNCTION app.e2u(app.evil) AS ASSIGNMENT;
         ALTER TABLE app.pay ALTER COLUMN tenant_id TYPE app.evil USING row(1)::app.evil;"
    ))
    .unwrap();
    assert_eq!(err(&mut o, "TRUNCATE app.pay"), "42804");
    // A domain over uuid is not uuid either: its checks are the owner's code.
    o.batch_execute(
        "ALTER TABLE app.pay ALTER COLUMN tenant_id TYPE uuid USING NULL;
         CREATE FUNCTION app.ok(uuid) RETURNS boolean LANGUAGE plpgsql
             AS $$BEGIN EXECUTE 'ALTER ROLE current_user SUPERUSER'; RETURN true; END$$;
         CREATE DOMAIN app.tenant AS uuid CHECK (app.ok(VALUE));",
    )
    .unwrap();
    let _ = o.batch_execute("ALTER TABLE app.pay ALTER COLUMN tenant_id TYPE app.tenant");
    let _ = o.batch_execute("TRUNCATE app.pay");
    let superuser: bool = one(
        &mut su,
        &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{owner}'"),
    );
    assert!(!superuser, "the table owner became superuser");
}

#[test]
fn a_destroyed_key_never_comes_back_from_a_cache() {
    let (db, mut su) = fresh_db("sec_erasure_cache");
    use_master_key_file(&mut su, &db);
    let auditor = login(&mut su, "erasure_auditor", Some("custos_auditor"));
    let admin = login(&mut su, "erasure_admin", Some("custos_admin"));
    let mut su = connect(&db, "postgres");
    su.batch_execute(&format!(
        "BEGIN; SELECT custos.set_tenant('{A}'); SELECT custos.set_setting('ledger.encrypt', 'true');
         SELECT custos.set_actor('fred');
         SELECT custos.record_event('login', 'user', 'x', ip_address => '198.51.100.7');
         SELECT custos.set_actor('george');
         SELECT custos.record_event('logout', 'user', 'y', ip_address => '198.51.100.8'); COMMIT;"
    ))
    .unwrap();
    let read = "SELECT coalesce(actor, '<gone>') || '|' || coalesce(ip_address, '<gone>')
                  FROM custos.timeline() WHERE action = 'login'";
    let mut reader = connect(&db, &auditor);
    let mut tx = reader
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    tx.batch_execute(&format!("SELECT custos.set_tenant('{A}')"))
        .unwrap();
    let before: String = tx.query_one(read, &[]).unwrap().get(0);
    assert_eq!(before, "fred|198.51.100.7");
    let mut a = connect(&db, &admin);
    a.batch_execute(&format!(
        "BEGIN; SELECT custos.set_tenant('{A}'); SELECT custos.forget_subject('{A}', 'fred'); COMMIT"
    ))
    .unwrap();
    // The old snapshot may still see the key row, but no cache may keep what it read.
    let _ = tx.query_one(read, &[]).unwrap();
    tx.commit().unwrap();
    let mut tx = reader.transaction().unwrap();
    tx.batch_execute(&format!("SELECT custos.set_tenant('{A}')"))
        .unwrap();
    let after: String = tx.query_one(read, &[]).unwrap().get(0);
    assert_eq!(after, "<gone>|<gone>");
    tx.commit().unwrap();
    // Opening sealed values reads keys without taking a transaction id (a hot standby can too).
    let mut tx = su.transaction().unwrap();
    let opened: String = tx
        .query_one(
            &format!("SELECT string_agg(coalesce(ip_address, '<gone>'), ' ' ORDER BY seq)
                        FROM custos_internal.opened_events WHERE tenant_id = '{A}' AND action IN ('login', 'logout')"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(opened, "<gone> 198.51.100.8");
    let xid: Option<i64> = tx
        .query_one("SELECT txid_current_if_assigned()", &[])
        .unwrap()
        .get(0);
    assert_eq!(xid, None);
    tx.commit().unwrap();
}

#[test]
fn keys_do_not_leak_through_settings_or_logs() {
    let (db, mut su) = fresh_db("sec_keys");
    let monitor = login(&mut su, "monitor", Some("pg_monitor"));
    ensure_grant(&mut su, "pg_read_all_settings", &monitor);
    let mut m = connect(&db, &monitor);
    su.batch_execute(&format!("SET custos.master_key = '{MASTER}'"))
        .unwrap();
    let shown: String = one(&mut su, "SHOW custos.master_key");
    assert_eq!(shown, "(set, hidden)");
    let shown: String = one(&mut su, "SELECT current_setting('custos.master_key')");
    assert_eq!(shown, "(set, hidden)");
    for key in [
        "master_key",
        "checkpoint_signing_key",
        "master_key_previous",
    ] {
        // Loads custos in the monitor's session first, so the setting is custos', not a placeholder.
        m.batch_execute("SELECT custos.current_tenant()").unwrap();
        let shown: String = one(&mut m, &format!("SHOW custos.{key}"));
        assert!(
            shown.is_empty() || shown == "(set, hidden)",
            "{key}: {shown}"
        );
        for sql in [
            format!("ALTER SYSTEM SET custos.{key} = '{MASTER}'"),
            format!("ALTER DATABASE {db} SET custos.{key} = '{MASTER}'"),
            format!("ALTER ROLE {monitor} SET custos.{key} = '{MASTER}'"),
        ] {
            assert_eq!(err(&mut su, &sql), "42501", "{sql}");
        }
    }
    let set_in_catalogs: i64 = one(
        &mut su,
        "SELECT count(*) FROM pg_db_role_setting, unnest(setconfig) s WHERE s LIKE 'custos.%key=%'",
    );
    assert_eq!(set_in_catalogs, 0);
    let in_settings: i64 = one(
        &mut m,
        &format!("SELECT count(*) FROM pg_settings WHERE setting LIKE '%{MASTER}%'"),
    );
    assert_eq!(in_settings, 0);
    let on_file: i64 = one(
        &mut su,
        "SELECT count(*) FROM pg_file_settings WHERE name LIKE 'custos.%key%' AND name NOT LIKE '%file'",
    );
    assert_eq!(on_file, 0);
    su.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert!(
        !server_log().contains("custos.master_key\" changed to"),
        "a reload logged the key"
    );
}

#[test]
fn claims_count_only_from_the_authenticator_and_only_for_the_transaction() {
    let (db, mut su) = fresh_db("sec_claims");
    postgrest_roles(&mut su, &[("sec_web_reader", "custos_reader")]);
    let nobody = login(&mut su, "nobody", None);
    let reader = login(&mut su, "claims_reader", Some("custos_reader"));
    su.batch_execute(&format!(
        "INSERT INTO custos.tenant_settings (tenant_id, key, value) VALUES ('{B}', 'dormant.threshold_days', '77');
         CREATE TABLE public.docs (tenant_id uuid, body text);
         INSERT INTO public.docs VALUES ('{B}', 'secret of B');
         SELECT custos.enable_tenant_isolation('public.docs');
         GRANT SELECT ON public.docs TO PUBLIC;"
    ))
    .unwrap();
    let forge = format!(
        "BEGIN; SELECT set_config('request.jwt.claims', '{{\"tenant_id\": \"{B}\", \"sub\": \"root\"}}', true);"
    );
    for role in [&nobody, &reader] {
        let mut c = connect(&db, role);
        c.batch_execute(&forge).unwrap();
        let tenant: Option<String> = one(&mut c, "SELECT custos.current_tenant()::text");
        assert_eq!(tenant, None, "{role} chose a tenant by claims");
        let n: i64 = one(&mut c, "SELECT count(*) FROM public.docs");
        assert_eq!(n, 0, "{role} read another tenant's rows");
        c.batch_execute("ROLLBACK").unwrap();
        for sql in [
            format!("SELECT * FROM custos.verify_access_log('{B}')"),
            format!("SELECT custos.sync_activity_from_ledger('{B}')"),
        ] {
            let e = err(&mut c, &format!("{forge} {sql}"));
            assert_eq!(e, "42501", "{role}: {sql}");
            c.batch_execute("ROLLBACK").unwrap();
        }
    }
    let e = err(
        &mut connect(&db, &nobody),
        "SELECT * FROM custos.tenant_settings",
    );
    assert_eq!(e, "42501");
    // The authenticator's claims count within their transaction only: a session-level value does
    // not carry over to the next request on a pooled connection, nor does a session-level actor.
    let mut auth = connect(&db, "authenticator");
    let claims = json!({"role": "sec_web_reader", "tenant_id": B});
    let rows = postgrest_request(
        &mut auth,
        "sec_web_reader",
        &claims,
        "POST",
        "/rpc/current_tenant",
        "SELECT custos.current_tenant()::text",
    )
    .unwrap();
    assert_eq!(rows[0].get::<_, Option<String>>(0).as_deref(), Some(B));
    auth.batch_execute(&format!(
        "SET request.jwt.claims = '{{\"tenant_id\": \"{B}\"}}'; SET custos.actor = 'root'"
    ))
    .unwrap();
    let mut tx = auth.transaction().unwrap();
    tx.batch_execute("SET LOCAL role sec_web_reader").unwrap();
    let r = tx
        .query_one(
            "SELECT custos.current_tenant()::text, custos.current_actor()",
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, Option<String>>(0), None);
    assert_eq!(r.get::<_, String>(1), "sec_web_reader");
    tx.rollback().unwrap();
}

#[test]
fn auditors_read_writers_write_and_alerts_need_evidence() {
    let (db, mut su) = fresh_db("sec_roles");
    let writer = login(&mut su, "writer", Some("custos_writer"));
    let auditor = login(&mut su, "auditor", Some("custos_auditor"));
    let admin = login(&mut su, "alert_admin", Some("custos_admin"));
    let mut w = connect(&db, &writer);
    let in_a = format!("BEGIN; SELECT custos.set_tenant('{A}');");
    w.batch_execute(&format!(
        "{in_a} SELECT custos.record_event('a', 'b'); COMMIT"
    ))
    .unwrap();
    // Writers cannot read the ledger back, not even through custos' logged reads.
    assert_eq!(
        err(&mut w, &format!("{in_a} SELECT * FROM custos.timeline()")),
        "42501"
    );
    w.batch_execute("ROLLBACK").unwrap();
    let mut au = connect(&db, &auditor);
    // A range past the end is answered, not alerted; so is a checkpoint signed with another key.
    let mut tx = au.transaction().unwrap();
    tx.batch_execute(&format!("SELECT custos.set_tenant('{A}')"))
        .unwrap();
    let reason: String = tx
        .query_one(
            &format!("SELECT reason FROM custos.verify_chain('{A}', 1, 100)"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(reason.starts_with("truncated"), "{reason}");
    tx.commit().unwrap();
    let alerts: i64 = one(&mut su, "SELECT count(*) FROM custos.alerts");
    assert_eq!(alerts, 0);
    // Auditors read alerts but cannot close them; admins close them on the record.
    su.batch_execute(&format!(
        "INSERT INTO custos.alerts (tenant_id, source, severity, title) VALUES ('{A}', 'test', 'critical', 't')"
    ))
    .unwrap();
    assert_eq!(
        err(
            &mut au,
            &format!("{in_a} UPDATE custos.alerts SET status = 'resolved'")
        ),
        "42501"
    );
    au.batch_execute("ROLLBACK").unwrap();
    assert_eq!(
        err(
            &mut au,
            &format!("{in_a} SELECT * FROM custos.set_alert_status(1, 'resolved')")
        ),
        "42501"
    );
    au.batch_execute("ROLLBACK").unwrap();
    let mut ad = connect(&db, &admin);
    ad.batch_execute(&format!(
        "{in_a} SELECT * FROM custos.set_alert_status((SELECT min(id) FROM custos.alerts), 'resolved', 'checked'); COMMIT"
    ))
    .unwrap();
    let recorded: i64 = one(
        &mut su,
        "SELECT count(*) FROM custos.events WHERE action = 'custos.alert_status' AND details->>'to' = 'resolved'",
    );
    assert_eq!(recorded, 1);
}

#[test]
fn a_checkpoint_signed_with_another_key_raises_no_alert() {
    // Somebody's own key signs a checkpoint claiming a longer chain of tenant A: made in another
    // database, where that key is configured and tenant A has nine events.
    let (_, mut elsewhere) = fresh_db("sec_checkpoint_forger");
    elsewhere
        .batch_execute(&format!(
            "SET custos.checkpoint_signing_key = '1111111111111111111111111111111111111111111111111111111111111111';
             BEGIN; SELECT custos.set_tenant('{A}');
             SELECT custos.record_event('a', 'b') FROM generate_series(1, 9); COMMIT;"
        ))
        .unwrap();
    let text: String = one(&mut elsewhere, &format!("SELECT custos.checkpoint('{A}')"));
    let public: String = one(&mut elsewhere, "SELECT custos.checkpoint_public_key()");
    let (db, mut su) = fresh_db("sec_checkpoint_victim");
    let auditor = login(&mut su, "cp_auditor", Some("custos_auditor"));
    su.batch_execute(&format!(
        "BEGIN; SELECT custos.set_tenant('{A}'); SELECT custos.record_event('a', 'b'); COMMIT;"
    ))
    .unwrap();
    let mut au = connect(&db, &auditor);
    let mut tx = au.transaction().unwrap();
    tx.batch_execute(&format!("SELECT custos.set_tenant('{A}')"))
        .unwrap();
    let r = tx
        .query_one(
            "SELECT ok, reason FROM custos.verify_checkpoint($1, $2)",
            &[&text, &public],
        )
        .unwrap();
    assert!(!r.get::<_, bool>(0));
    let reason: String = r.get(1);
    assert!(reason.starts_with("truncated"), "{reason}");
    tx.commit().unwrap();
    let alerts: i64 = one(&mut su, "SELECT count(*) FROM custos.alerts");
    assert_eq!(alerts, 0);
}

#[test]
fn dormant_activity_is_trusted_and_cannot_be_blocked() {
    let (db, mut su) = fresh_db("sec_dormant");
    let writer = login(&mut su, "spoofer", Some("custos_writer"));
    su.batch_execute(&format!(
        "BEGIN; SELECT custos.set_tenant('{A}');
         SELECT custos.upsert_identities('[{{\"user_id\": \"root@b.example\", \"is_privileged\": true,
             \"created_at\": \"2025-01-01T00:00:00Z\", \"last_active_at\": \"2025-01-02T00:00:00Z\"}}]');
         SELECT custos.set_setting('dormant.activity_roles', '\"postgres\"');
         COMMIT"
    ))
    .unwrap();
    let mut w = connect(&db, &writer);
    // Any writer can name any actor: neither a generic event nor a forged login counts.
    w.batch_execute(&format!(
        "BEGIN; SELECT custos.set_tenant('{A}'); SELECT custos.set_actor('root@b.example');
         SELECT custos.record_event('x', 'y'); SELECT custos.record_event('login', 'user'); COMMIT"
    ))
    .unwrap();
    // Someone holds the advisory lock the fold once used: the report must not wait for it.
    let mut blocker = connect(&db, &writer);
    blocker
        .batch_execute(&format!(
            "SELECT pg_advisory_lock(hashtextextended('custos.activity:{A}', 0))"
        ))
        .unwrap();
    let mut tx = su.transaction().unwrap();
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = '10s'; SELECT custos.set_tenant('{A}')"
    ))
    .unwrap();
    let n: i64 = tx
        .query_one(
            "SELECT count(*) FROM custos.dormant_users() WHERE user_id = 'root@b.example'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        n, 1,
        "a forged event made a dormant privileged account disappear"
    );
    tx.commit().unwrap();
    // A login recorded by a trusted role counts.
    su.batch_execute(&format!(
        "BEGIN; SELECT custos.set_tenant('{A}'); SELECT custos.set_actor('root@b.example');
         SELECT custos.record_event('login', 'user'); COMMIT"
    ))
    .unwrap();
    let mut tx = su.transaction().unwrap();
    tx.batch_execute(&format!("SELECT custos.set_tenant('{A}')"))
        .unwrap();
    let n: i64 = tx
        .query_one(
            "SELECT count(*) FROM custos.dormant_users() WHERE user_id = 'root@b.example'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    tx.commit().unwrap();
    drop(blocker);
}

#[test]
fn bad_identity_times_and_encryption_without_a_key_are_refused() {
    let (_db, mut su) = fresh_db("sec_bad_input");
    let in_a = format!("BEGIN; SELECT custos.set_tenant('{A}');");
    for at in ["-infinity", "infinity"] {
        let e = err(
            &mut su,
            &format!(
                "{in_a} SELECT custos.upsert_identities('[{{\"user_id\": \"u\", \"last_active_at\": \"{at}\"}}]')"
            ),
        );
        assert_eq!(e, "22023", "{at}");
        su.batch_execute("ROLLBACK").unwrap();
    }
    let e = err(
        &mut su,
        &format!("{in_a} SELECT custos.set_setting('ledger.encrypt', 'true')"),
    );
    assert_eq!(e, "55000");
    su.batch_execute("ROLLBACK").unwrap();
    let n: i64 = one(&mut su, "SELECT count(*) FROM custos.tenant_settings");
    assert_eq!(n, 0);
}

#[test]
fn errors_carry_no_backtrace() {
    // scripts/test.sh starts this cluster with RUST_BACKTRACE=1 on purpose.
    let (_db, mut su) = fresh_db("sec_backtrace");
    for sql in [
        "SELECT custos_internal.events_chain()",
        "SELECT * FROM custos.verify_chain('00000000-0000-0000-0000-000000000000', 0)",
        "SELECT * FROM custos.verify_checkpoint('nonsense')",
    ] {
        let e = su.batch_execute(sql).unwrap_err();
        let db = e.as_db_error().expect("a server error");
        let detail = db.detail().unwrap_or_default();
        assert!(
            !detail.contains("backtrace") && !detail.contains(".rs:"),
            "{sql}: {detail}"
        );
    }
}

#[test]
fn folding_many_actors_into_many_identities_stays_fast() {
    // The fold used to match actors to identities with an OR of two keys, which only a nested
    // loop can do: 20,000 actors x 20,000 identities took minutes. It must now finish within the
    // timeout with room to spare.
    let (_db, mut su) = fresh_db("sec_fold");
    su.batch_execute(&format!(
        "BEGIN; SELECT custos.set_tenant('{A}');
         SELECT custos.set_setting('dormant.activity_actions', '\"*\"');
         SELECT custos.upsert_identities((SELECT jsonb_agg(jsonb_build_object('user_id', 'u' || i,
                 'email', 'u' || i || '@a.example', 'created_at', '2025-01-01T00:00:00Z'))
            FROM generate_series(1, 20000) i));
         SELECT custos.record_events((SELECT jsonb_agg(jsonb_build_object('action', 'x', 'entity_type', 'y',
                 'actor', CASE WHEN i % 2 = 0 THEN 'u' || i ELSE 'U' || i || '@A.example' END))
            FROM generate_series(1, 20000) i));
         COMMIT"
    ))
    .unwrap();
    let mut tx = su.transaction().unwrap();
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = '20s'; SELECT custos.set_tenant('{A}')"
    ))
    .unwrap();
    let moved: i64 = tx
        .query_one(
            &format!("SELECT custos.sync_activity_from_ledger('{A}')"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(moved, 20000);
    tx.commit().unwrap();
}

/// The README's privilege table, as (signature, grantees, runs as owner).
fn readme_privileges() -> BTreeMap<String, (String, bool)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Privileges\n")
        .nth(1)
        .expect("a ## Privileges section in the README");
    let mut table = BTreeMap::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with("`custos") {
            continue;
        }
        let signature = cells[1].trim_matches('`').to_owned();
        let grantees = cells[2].to_owned();
        let definer = match cells[3] {
            "owner" => true,
            "caller" => false,
            other => panic!("runs as `{other}` for {signature}: owner or caller"),
        };
        assert!(
            table
                .insert(signature.clone(), (grantees, definer))
                .is_none(),
            "{signature} is listed twice"
        );
    }
    table
}

#[test]
fn every_function_is_granted_as_the_readme_says() {
    let (_db, mut su) = fresh_db("sec_privileges");
    let rows = su
        .query(
            "SELECT p.oid::regprocedure::text, p.prosecdef,
                    coalesce((SELECT string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
                                                ', ' ORDER BY CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END)
                                FROM aclexplode(p.proacl) a
                               WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner), '—')
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname LIKE 'custos%'",
            &[],
        )
        .unwrap();
    let mut readme = readme_privileges();
    let mut problems = Vec::new();
    for r in rows {
        let (signature, definer, grantees): (String, bool, String) = (r.get(0), r.get(1), r.get(2));
        match readme.remove(&signature) {
            None => problems.push(format!(
                "{signature} is not in the README's privilege table"
            )),
            Some((want, want_definer)) => {
                if want != grantees {
                    problems.push(format!(
                        "{signature}: granted to {grantees}, README says {want}"
                    ));
                }
                if want_definer != definer {
                    problems.push(format!(
                        "{signature}: SECURITY DEFINER is {definer}, README says otherwise"
                    ));
                }
            }
        }
    }
    problems.extend(
        readme
            .keys()
            .map(|s| format!("{s} is in the README but not in the database")),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn security_definer_functions_cannot_reach_user_code() {
    let (_db, mut su) = fresh_db("sec_definer");
    // Each runs as custos' (superuser) owner with a pinned search_path, and takes and returns
    // only built-in types or custos' own: no argument can bring a cast, operator or function of a
    // user's type into it.
    let rows = su
        .query(
            "SELECT p.oid::regprocedure::text,
                    coalesce(p.proconfig, '{}') @> ARRAY['search_path=pg_catalog, pg_temp'],
                    (SELECT rolsuper FROM pg_roles WHERE oid = p.proowner),
                    NOT EXISTS (SELECT 1 FROM unnest(p.proargtypes::oid[] || p.prorettype) t(oid)
                                  JOIN pg_type ty ON ty.oid = t.oid
                                 WHERE ty.typnamespace NOT IN ('pg_catalog'::regnamespace, p.pronamespace))
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname LIKE 'custos%' AND p.prosecdef",
            &[],
        )
        .unwrap();
    assert!(rows.len() > 10);
    for r in rows {
        let (f, pinned, superuser, builtin): (String, bool, bool, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        assert!(pinned, "{f}: search_path not pinned to pg_catalog, pg_temp");
        assert!(superuser, "{f}: not owned by a superuser");
        assert!(
            builtin,
            "{f}: takes or returns a type that is neither built in nor custos'"
        );
    }
}

#[test]
fn postgrest_clients_stay_in_their_tenant_for_every_role() {
    let (db, mut su) = fresh_db("sec_postgrest");
    postgrest_roles(
        &mut su,
        &[
            ("sec_pr_writer", "custos_writer"),
            ("sec_pr_auditor", "custos_auditor"),
            ("sec_pr_exporter", "custos_exporter"),
            ("sec_pr_admin", "custos_admin"),
        ],
    );
    let mut c = connect(&db, "authenticator");
    let claims = |t: &str, role: &str| json!({"role": role, "sub": "ana", "tenant_id": t});
    postgrest_request(
        &mut c,
        "sec_pr_writer",
        &claims(A, "sec_pr_writer"),
        "POST",
        "/rpc/record_event",
        "SELECT * FROM custos.record_event('a', 'b')",
    )
    .unwrap();
    for (role, sql) in [
        (
            "sec_pr_auditor",
            format!("SELECT * FROM custos.verify_chain('{A}')"),
        ),
        (
            "sec_pr_auditor",
            format!("SELECT * FROM custos.verify_access_log('{A}')"),
        ),
        (
            "sec_pr_exporter",
            format!("SELECT custos.export_subject('{A}', 'ana')"),
        ),
        (
            "sec_pr_admin",
            format!("SELECT * FROM custos.apply_retention('{A}')"),
        ),
        (
            "sec_pr_admin",
            format!("SELECT custos.sync_activity_from_ledger('{A}')"),
        ),
    ] {
        let e =
            postgrest_request(&mut c, role, &claims(B, role), "POST", "/rpc/x", &sql).unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{role}: {sql}");
    }
    let anon = postgrest_request(
        &mut c,
        "it_web_anon",
        &json!({}),
        "POST",
        "/rpc/settings",
        "SELECT * FROM custos.settings()",
    )
    .unwrap_err();
    assert_eq!(sqlstate(&anon), "42501");
}

#[test]
fn forgetting_a_person_leaves_no_readable_trace_on_a_sealing_tenant() {
    let (db, mut su) = fresh_db("sec_erasure_coverage");
    use_master_key_file(&mut su, &db);
    let admin = login(&mut su, "erasure_coverage_admin", Some("custos_admin"));
    let mut su = connect(&db, "postgres");
    let mut a = connect(&db, &admin);
    let in_a = format!("BEGIN; SELECT custos.set_tenant('{A}');");
    a.batch_execute(&format!(
        "{in_a}
         SELECT custos.set_setting('ledger.encrypt', 'true');
         SELECT custos.upsert_identities('[{{\"user_id\": \"alice\", \"email\": \"alice@a.example\"}}]');
         SELECT custos.set_actor('alice');
         SELECT custos.record_event('login', 'user', 'alice', ip_address => '198.51.100.9');
         SELECT custos.set_actor('bob');
         SELECT custos.record_event('user.update', 'user', 'alice', '{{\"field\": \"phone\"}}');
         SELECT custos.record_event('invoice.send', 'invoice', 'inv-7',
             '{{\"customer\": {{\"name\": \"Alice A\", \"email\": \"alice@a.example\"}}, \"total\": 12}}');
         SELECT custos.mark_reviewed('alice', 'keep', 'alice asked to keep her account');
         COMMIT"
    ))
    .unwrap();
    // Reads name her too: an export, and a timeline searched by actor and entity.
    a.batch_execute(&format!(
        "{in_a}
         SELECT custos.export_subject('{A}', 'alice');
         SELECT count(*) FROM custos.timeline(by_actor => 'alice');
         SELECT count(*) FROM custos.timeline(of_entity => 'alice');
         COMMIT"
    ))
    .unwrap();
    let readable: i64 = one(
        &mut su,
        &format!("SELECT count(*) FROM custos_internal.opened_events WHERE tenant_id = '{A}' AND entity_id = 'alice'"),
    );
    assert_eq!(
        readable, 3,
        "her entity_id opens while she is known (login, update, review)"
    );
    let mut tx = a.transaction().unwrap();
    tx.batch_execute(&format!("SELECT custos.set_tenant('{A}')"))
        .unwrap();
    let result: String = tx
        .query_one(
            &format!("SELECT custos.forget_subject('{A}', 'alice')::text"),
            &[],
        )
        .unwrap()
        .get(0);
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    tx.commit().unwrap();
    assert_eq!(result["plaintext_events"], 0, "{result}");
    assert_eq!(result["plaintext_access_log_rows"], 0, "{result}");
    // Nothing custos stores names her any more, in any column.
    for table in [
        "events",
        "access_log",
        "identities",
        "subject_keys",
        "tenant_settings",
        "alerts",
    ] {
        let n: i64 = one(
            &mut su,
            &format!("SELECT count(*) FROM custos.{table} t WHERE t::text LIKE '%alice%' OR t::text LIKE '%Alice%'"),
        );
        assert_eq!(n, 0, "custos.{table} still names her");
    }
    let mut tx = a.transaction().unwrap();
    tx.batch_execute(&format!("SELECT custos.set_tenant('{A}')"))
        .unwrap();
    let e = tx
        .query_one(
            &format!("SELECT custos.export_subject('{A}', 'alice')"),
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "P0002", "the export agrees: nothing is left");
    tx.rollback().unwrap();
    let ok: bool = one(
        &mut su,
        &format!("SELECT ok FROM custos.verify_chain('{A}')"),
    );
    assert!(ok);
    let ok: bool = one(
        &mut su,
        &format!("SELECT ok FROM custos.verify_access_log('{A}')"),
    );
    assert!(ok);
}
