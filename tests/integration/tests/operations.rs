//! What DBAs do to a database with PostgreSQL's own tools: dump and restore it, drop what custos
//! depends on, read from a hot standby, replicate the ledger logically. Each test drives the real
//! tools against the test cluster (and clusters of its own, on Unix sockets only).

use custos_integration_tests::cluster::{new_cluster, pg_bin, scratch, Cluster};
use custos_integration_tests::{connect, empty_db, fresh_db, one, sqlstate, within};
use postgres::Client;
use std::path::Path;
use std::process::Command;

const A: &str = "a6000000-0000-4000-8000-000000000001";
const B: &str = "b6000000-0000-4000-8000-000000000002";
const MASTER: &str = "0be7a7100be7a7100be7a7100be7a7100be7a7100be7a7100be7a7100be7a710";
const SIGNER: &str = "7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e";

fn host() -> String {
    std::env::var("CUSTOS_TEST_HOST").expect("CUSTOS_TEST_HOST")
}

fn port() -> String {
    std::env::var("CUSTOS_TEST_PORT").unwrap_or_else(|_| "5432".into())
}

/// Runs one of PostgreSQL's client programs against the test cluster; panics with its output if
/// it fails.
fn tool(program: &str, args: &[&str]) -> String {
    tool_at(&host(), &port(), program, args)
}

/// Like [`tool`], against the server at `host` (a socket directory) and `port`.
fn tool_at(host: &str, port: &str, program: &str, args: &[&str]) -> String {
    let out = Command::new(format!("{}/{program}", pg_bin()))
        .args(["-h", host, "-p", port, "-U", "postgres"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// psql running a file (in restore mode, given PGOPTIONS), stopping at the first error.
fn run_psql_file(db: &str, file: &Path, pgoptions: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(format!("{}/psql", pg_bin()));
    cmd.args([
        "-h",
        &host(),
        "-p",
        &port(),
        "-U",
        "postgres",
        "-X",
        "-q",
        "-d",
        db,
    ])
    .args(["-v", "ON_ERROR_STOP=1", "-f"])
    .arg(file);
    if let Some(o) = pgoptions {
        cmd.env("PGOPTIONS", o);
    }
    cmd.output().unwrap()
}

/// Like [`run_psql_file`], which must succeed; returns its stderr.
fn psql_file(db: &str, file: &Path, pgoptions: Option<&str>) -> String {
    let out = run_psql_file(db, file, pgoptions);
    assert!(
        out.status.success(),
        "psql -f {file:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Ends sessions of earlier tests that still wait for the test cluster's absent synchronous
/// standby (a backend whose client left waits there while it drops its temporary tables): a
/// base backup's standby and a logical slot both wait for every transaction running when they
/// start.
fn release_sync_waiters() {
    let mut c = connect("postgres", "postgres");
    c.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
    )
    .unwrap();
}

fn key_file(dir: &Path, name: &str, key: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, key).unwrap();
    Command::new("chmod")
        .args(["644"])
        .arg(&path)
        .status()
        .unwrap();
    path.to_str().unwrap().to_owned()
}

fn in_tenant<T: for<'a> postgres::types::FromSql<'a>>(c: &mut Client, t: &str, sql: &str) -> T {
    let mut tx = c.transaction().unwrap();
    tx.batch_execute(&format!("SELECT custos.set_tenant('{t}')"))
        .unwrap();
    let v = tx
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0);
    tx.commit().unwrap();
    v
}

/// A database with something in every custos table: two tenants' chains (one sealing its
/// events), a checkpoint, an access log, an alert, identities, a watermark, settings, and a
/// tracked business table. Returns the checkpoint text. Works on every release's schema.
fn fill(su: &mut Client, db: &str, keys: &Path) -> String {
    fill_at(su, db, keys, &|db| connect(db, "postgres"))
}

/// Like [`fill`], on the server that `superuser` connects to.
fn fill_at(su: &mut Client, db: &str, keys: &Path, superuser: &dyn Fn(&str) -> Client) -> String {
    su.batch_execute(&format!(
        "ALTER DATABASE {db} SET custos.master_key_file = '{}';
         ALTER DATABASE {db} SET custos.checkpoint_key_file = '{}';",
        key_file(keys, "master.key", MASTER),
        key_file(keys, "signer.key", SIGNER)
    ))
    .unwrap();
    let mut c = superuser(db);
    c.batch_execute(&format!(
        "CREATE TABLE public.orders (tenant_id uuid NOT NULL, id int PRIMARY KEY, total numeric);
         SELECT custos.enable_tenant_isolation('public.orders');
         SELECT custos.track_table('public.orders');
         BEGIN; SELECT custos.set_tenant('{A}');
           SELECT custos.set_setting('ledger.encrypt', 'true');
           SELECT custos.set_actor('ana');
           SELECT custos.record_event('login', 'user', 'ana', '{{\"email\": \"ana@a.example\"}}', ip_address => '198.51.100.1');
           INSERT INTO public.orders VALUES ('{A}', 1, 10), ('{A}', 2, 20);
           SELECT custos.upsert_identities('[{{\"user_id\": \"ana\", \"email\": \"ana@a.example\"}}]');
         COMMIT;
         BEGIN; SELECT custos.set_tenant('{B}');
           SELECT custos.record_event('x', 'y') FROM generate_series(1, 5);
           INSERT INTO public.orders VALUES ('{B}', 3, 30);
         COMMIT;
         BEGIN; SELECT custos.set_tenant('{A}'); SELECT count(*) FROM custos.dormant_users(); COMMIT;
         BEGIN; SELECT custos.set_tenant('{A}'); SELECT count(*) FROM custos.timeline(); COMMIT;
         INSERT INTO custos.alerts (tenant_id, source, severity, title) VALUES ('{A}', 'test', 'low', 'kept');"
    ))
    .unwrap();
    one(&mut c, &format!("SELECT custos.checkpoint('{B}')"))
}

/// What a restored database must show: every chain verifies to its length, the checkpoint still
/// holds, sealed values open, nothing was captured twice, and new events continue the chains.
fn check_restored(db: &str, checkpoint: &str, events_before: i64) {
    check_restored_at(db, checkpoint, events_before, &|db| connect(db, "postgres"))
}

/// Like [`check_restored`], on the server that `superuser` connects to.
fn check_restored_at(
    db: &str,
    checkpoint: &str,
    events_before: i64,
    superuser: &dyn Fn(&str) -> Client,
) {
    let mut c = superuser(db);
    let events: i64 = one(&mut c, "SELECT count(*) FROM custos.events");
    assert_eq!(events, events_before, "{db}: phantom or lost events");
    for (t, n) in [(A, events_before - 6), (B, 6)] {
        let r = c
            .query_one(
                &format!("SELECT ok, checked FROM custos.verify_chain('{t}')"),
                &[],
            )
            .unwrap();
        assert_eq!(
            (r.get::<_, bool>(0), r.get::<_, i64>(1)),
            (true, n),
            "{db} {t}"
        );
    }
    let ok: bool = one(
        &mut c,
        &format!("SELECT ok FROM custos.verify_checkpoint('{checkpoint}')"),
    );
    assert!(ok, "{db}: checkpoint");
    let ok: bool = one(
        &mut c,
        &format!("SELECT ok FROM custos.verify_access_log('{A}')"),
    );
    assert!(ok, "{db}: access log");
    let ip: String = in_tenant(
        &mut c,
        A,
        "SELECT ip_address FROM custos.timeline() WHERE action = 'login'",
    );
    assert_eq!(ip, "198.51.100.1", "{db}: sealed values open");
    for table in [
        "identities",
        "alerts",
        "activity_watermarks",
        "tenant_settings",
        "checkpoints",
        "data_keys",
        "subject_keys",
    ] {
        let n: i64 = one(&mut c, &format!("SELECT count(*) FROM custos.{table}"));
        assert!(n > 0, "{db}: custos.{table} is empty");
    }
    let orders: i64 = one(&mut c, "SELECT count(*) FROM public.orders");
    assert_eq!(orders, 3);
    let seq: i64 = in_tenant(
        &mut c,
        B,
        "SELECT seq FROM custos.record_event('after', 'restore')",
    );
    assert_eq!(seq, 7, "{db}: the chain continues");
    let ok: bool = one(
        &mut c,
        &format!("SELECT ok FROM custos.verify_chain('{B}')"),
    );
    assert!(ok);
}

#[test]
fn dumps_and_restores_keep_the_whole_ledger_verifiable() {
    let keys = scratch("dump-keys");
    let (db, mut su) = fresh_db("ops_dump");
    let checkpoint = fill(&mut su, &db, &keys);
    let events: i64 = one(&mut su, "SELECT count(*) FROM custos.events");
    let dir = scratch("dump");

    // Custom format, restored by pg_restore into a new database.
    let custom = dir.join("custom.dump");
    tool(
        "pg_dump",
        &["-Fc", "-d", &db, "-f", custom.to_str().unwrap()],
    );
    let (restored, _) = fresh_target("ops_dump_custom", &keys);
    tool("pg_restore", &["-d", &restored, custom.to_str().unwrap()]);
    check_restored(&restored, &checkpoint, events);

    // Plain SQL, loaded with psql in restore mode.
    let plain = dir.join("plain.sql");
    tool(
        "pg_dump",
        &["-Fp", "-d", &db, "-f", plain.to_str().unwrap()],
    );
    let (restored, _) = fresh_target("ops_dump_plain", &keys);
    psql_file(&restored, &plain, Some("-c custos.restore_mode=on"));
    check_restored(&restored, &checkpoint, events);

    // Data only, into a database that already has the schema (and the capture triggers).
    let schema = dir.join("schema.sql");
    tool(
        "pg_dump",
        &[
            "-Fp",
            "--schema-only",
            "-d",
            &db,
            "-f",
            schema.to_str().unwrap(),
        ],
    );
    let data = dir.join("data.dump");
    tool(
        "pg_dump",
        &[
            "-Fc",
            "--data-only",
            "-d",
            &db,
            "-f",
            data.to_str().unwrap(),
        ],
    );
    let (restored, _) = fresh_target("ops_dump_data_only", &keys);
    psql_file(&restored, &schema, None);
    tool(
        "pg_restore",
        &["--data-only", "-d", &restored, data.to_str().unwrap()],
    );
    check_restored(&restored, &checkpoint, events);

    // Without restore mode, loading chain fields is refused, and an ordinary role never can.
    let (target, t) = fresh_target("ops_dump_refused", &keys);
    let out = run_psql_file(&target, &plain, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("assigned by custos"));
    drop(t);
    let mut writer = connect(&db, "postgres");
    writer
        .batch_execute("CREATE ROLE ops_forger LOGIN; GRANT custos_writer TO ops_forger")
        .ok();
    let mut f = connect(&db, "ops_forger");
    let e = f
        .batch_execute(&format!(
            "SET application_name = 'pg_restore'; BEGIN; SELECT custos.set_tenant('{B}');
             INSERT INTO custos.events (tenant_id, seq, id, occurred_at, recorded_at, actor, db_role, txid,
                                        action, entity_type, prev_hash, hash)
             VALUES ('{B}', 99, gen_random_uuid(), now(), now(), 'x', 'x', 1, 'x', 'x', '\\x00', '\\x00')"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "428C9");

    // A tampered dump restores, and verifies as tampered.
    let text = std::fs::read_to_string(&plain).unwrap();
    let tampered_text = text.replacen("\tx\ty\t", "\tx\tz\t", 1);
    assert_ne!(
        text, tampered_text,
        "the dump holds B's events as COPY rows"
    );
    let tampered = dir.join("tampered.sql");
    std::fs::write(&tampered, tampered_text).unwrap();
    let (restored, _) = fresh_target("ops_dump_tampered", &keys);
    psql_file(&restored, &tampered, Some("-c custos.restore_mode=on"));
    let mut c = connect(&restored, "postgres");
    let reason: String = one(
        &mut c,
        &format!("SELECT reason FROM custos.verify_chain('{B}')"),
    );
    assert!(reason.starts_with("content changed"), "{reason}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&keys);
}

/// An empty database to restore into (no extension: the dump creates it), using the same key
/// files as the source (database-level settings are not part of a database's dump).
fn fresh_target(name: &str, keys: &Path) -> (String, Client) {
    let db = empty_db(name);
    let mut admin = connect("postgres", "postgres");
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET custos.master_key_file = '{}';
             ALTER DATABASE {db} SET custos.checkpoint_key_file = '{}';",
            keys.join("master.key").display(),
            keys.join("signer.key").display()
        ))
        .unwrap();
    let c = connect(&db, "postgres");
    (db, c)
}

#[test]
fn an_emptied_ledger_reads_as_truncated_not_fine() {
    let (_db, mut c) = fresh_db("ops_emptied");
    c.batch_execute(&format!(
        "BEGIN; SELECT custos.set_tenant('{A}');
           SELECT custos.set_setting('dormant.activity_actions', '\"*\"');
           SELECT custos.record_event('login', 'user') FROM generate_series(1, 3);
           SELECT count(*) FROM custos.dormant_users();
         COMMIT;
         SET custos.allow_ledger_drop = on;
         ALTER EVENT TRIGGER custos_guard_ledger DISABLE;
         ALTER TABLE custos.events DISABLE TRIGGER append_only_truncate;
         TRUNCATE custos.events;"
    ))
    .unwrap();
    let r = c
        .query_one(
            &format!("SELECT ok, reason FROM custos.verify_chain('{A}')"),
            &[],
        )
        .unwrap();
    assert!(!r.get::<_, bool>(0));
    assert!(r.get::<_, String>(1).starts_with("truncated"));
}

#[test]
fn drops_that_would_cascade_into_the_ledger_are_refused() {
    let (db, mut su) = fresh_db("ops_drops");
    su.batch_execute(&format!(
        "BEGIN; SELECT custos.set_tenant('{A}'); SELECT custos.record_event('a', 'b'); COMMIT"
    ))
    .unwrap();
    for sql in [
        "DROP EXTENSION vector CASCADE",
        "DROP SCHEMA public CASCADE",
        "DROP EXTENSION custos",
        "DROP SCHEMA custos CASCADE",
    ] {
        // A new session each time: custos' library need not be loaded for the guard to hold.
        let mut c = connect(&db, "postgres");
        let e = c.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}");
    }
    // Maintenance that drops transient relations of its own in schema custos still works.
    let mut c = connect(&db, "postgres");
    for sql in [
        "VACUUM FULL custos.events",
        "CLUSTER custos.events USING events_pkey",
        "REINDEX TABLE CONCURRENTLY custos.events",
    ] {
        c.batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let ok: bool = one(
        &mut c,
        &format!("SELECT ok FROM custos.verify_chain('{A}')"),
    );
    assert!(ok);
    // DROP OWNED BY the (non-bootstrap) superuser who installed custos.
    let mut admin = connect("postgres", "postgres");
    admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE ops_dba SUPERUSER LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        )
        .unwrap();
    admin
        .batch_execute("DROP DATABASE IF EXISTS it_ops_drop_owned WITH (FORCE)")
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE it_ops_drop_owned")
        .unwrap();
    let mut dba = connect("it_ops_drop_owned", "ops_dba");
    dba.batch_execute("CREATE EXTENSION custos CASCADE")
        .unwrap();
    let mut dba = connect("it_ops_drop_owned", "ops_dba");
    let e = dba.batch_execute("DROP OWNED BY ops_dba").unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let n: i64 = one(
        &mut dba,
        "SELECT count(*) FROM pg_extension WHERE extname = 'custos'",
    );
    assert_eq!(n, 1);
    // A superuser who means it.
    let mut c = connect(&db, "postgres");
    c.batch_execute("SET custos.allow_ledger_drop = on; DROP EXTENSION vector CASCADE")
        .unwrap();
    let n: i64 = one(
        &mut c,
        "SELECT count(*) FROM pg_extension WHERE extname = 'custos'",
    );
    assert_eq!(n, 0);
}

#[test]
fn a_hot_standby_audits() {
    let keys = scratch("standby-keys");
    let (db, mut su) = fresh_db("ops_standby");
    let checkpoint = fill(&mut su, &db, &keys);
    // A broken chain on the primary, for the standby to report.
    su.batch_execute(&format!(
        "ALTER EVENT TRIGGER custos_guard_ledger DISABLE;
         ALTER TABLE custos.events DISABLE TRIGGER append_only;
         UPDATE custos.events SET action = 'y' WHERE tenant_id = '{B}' AND seq = 2;
         ALTER TABLE custos.events ENABLE ALWAYS TRIGGER append_only;
         ALTER EVENT TRIGGER custos_guard_ledger ENABLE;"
    ))
    .unwrap();
    release_sync_waiters();
    let standby = Cluster {
        dir: scratch("standby"),
    };
    let data = standby.dir.join("data");
    let ok = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            &format!("{}/pg_basebackup", pg_bin()),
        ])
        .args([
            "-h",
            &host(),
            "-p",
            &port(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            // A spread checkpoint would take minutes on a cluster that has been written to.
            "--checkpoint=fast",
            "-D",
        ])
        .arg(&data)
        .status()
        .unwrap()
        .success();
    assert!(ok, "pg_basebackup");
    standby.configure(&format!(
        "\nunix_socket_directories = '{}'\nport = 5432\nsynchronous_standby_names = ''\n",
        standby.dir.display()
    ));
    assert!(standby.pg_ctl(&["-w", "start"]), "{}", standby.log());
    let mut s = standby.connect(&db);
    let mut ready = false;
    for _ in 0..100 {
        let n: i64 = one(&mut s, "SELECT count(*) FROM custos.events");
        if n > 0 && one::<bool>(&mut s, "SELECT pg_is_in_recovery()") {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ready, "the standby never caught up");
    // Verification reports the break and writes nothing.
    let r = s
        .query_one(
            &format!("SELECT ok, reason FROM custos.verify_chain('{B}')"),
            &[],
        )
        .unwrap();
    assert!(!r.get::<_, bool>(0));
    assert!(r.get::<_, String>(1).starts_with("content changed"));
    let ok: bool = one(
        &mut s,
        &format!("SELECT ok FROM custos.verify_chain('{A}')"),
    );
    assert!(ok);
    let settled: i64 = one(&mut s, &format!("SELECT custos.settled_seq('{A}')"));
    assert!(settled > 0);
    let ok: bool = one(
        &mut s,
        &format!("SELECT ok FROM custos.verify_access_log('{A}')"),
    );
    assert!(ok);
    let n: i64 = in_tenant(&mut s, A, "SELECT count(*) FROM custos.dormant_users()");
    assert!(n >= 0);
    let opened: String = one(
        &mut s,
        &format!("SELECT ip_address FROM custos_internal.opened_events WHERE tenant_id = '{A}' AND action = 'login'"),
    );
    assert_eq!(opened, "198.51.100.1", "sealed values open on the standby");
    let _ = checkpoint;
    // Logged reads: refused by default, with a hint ...
    let mut tx = s.transaction().unwrap();
    tx.batch_execute(&format!("SELECT custos.set_tenant('{A}')"))
        .unwrap();
    let e = tx
        .query("SELECT * FROM custos.timeline()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "25006");
    tx.rollback().unwrap();
    // ... or written to the standby's server log when the DBA says so.
    standby.configure("\ncustos.standby_access_log = 'server_log'\n");
    assert!(standby.pg_ctl(&["reload"]));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut s = standby.connect(&db);
    for sql in [
        "SELECT count(*) FROM custos.timeline()",
        "SELECT count(*) FROM custos.export_events('jsonl')",
    ] {
        let n: i64 = in_tenant(&mut s, A, sql);
        assert!(n > 0, "{sql}");
    }
    assert!(standby.log().contains("custos access (standby): tenant="));
    let _ = std::fs::remove_dir_all(&keys);
}

fn fingerprint(c: &mut Client) -> Vec<String> {
    let query = include_str!("../sql/schema_fingerprint.sql");
    c.query(query, &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[test]
fn an_upgrade_from_0_1_0_gives_the_schema_of_a_fresh_install_and_keeps_the_ledger() {
    let keys = scratch("upgrade-keys");
    let db = &empty_db("ops_upgrade");
    let mut su = connect(db, "postgres");
    su.batch_execute("CREATE EXTENSION custos VERSION '0.1.0' CASCADE")
        .unwrap();
    let checkpoint = fill(&mut su, db, &keys);
    let events: i64 = one(&mut su, "SELECT count(*) FROM custos.events");
    let mut su = connect(db, "postgres");
    su.batch_execute("ALTER EXTENSION custos UPDATE").unwrap();
    let version: String = one(
        &mut su,
        "SELECT extversion FROM pg_extension WHERE extname = 'custos'",
    );
    assert_eq!(version, "0.2.0");
    let (_fresh_db, mut fresh) = fresh_db("ops_upgrade_fresh");
    let (upgraded, installed) = (fingerprint(&mut su), fingerprint(&mut fresh));
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|l| !b.contains(l)).cloned().collect()
    };
    assert!(
        upgraded == installed,
        "upgraded schema differs from a fresh install\nonly after the upgrade:\n{}\nonly in a fresh install:\n{}",
        only(&upgraded, &installed).join("\n"),
        only(&installed, &upgraded).join("\n")
    );
    check_restored(db, &checkpoint, events);
    let _ = std::fs::remove_dir_all(&keys);
}

/// A second cluster of the test's own, preloading custos, on a Unix socket in a scratch dir.
#[test]
fn the_ledger_replicates_logically_and_verifies_on_the_subscriber() {
    let keys = scratch("logical-keys");
    let (db, mut su) = fresh_db("ops_logical");
    let checkpoint = fill(&mut su, &db, &keys);
    su.batch_execute(
        "CREATE PUBLICATION custos_ledger FOR TABLE custos.events, custos.checkpoints, custos.chain_anchors,
                                                   custos.data_keys, custos.subject_keys;
         CREATE PUBLICATION custos_events_only FOR TABLE custos.events",
    )
    .unwrap();
    release_sync_waiters();
    let subscriber = new_cluster("subscriber");
    let mut admin = subscriber.connect("postgres");
    let conninfo = format!("host={} port={} dbname={db} user=postgres", host(), port());
    for (sub_db, publication) in [
        ("replica", "custos_ledger"),
        ("keyless", "custos_events_only"),
    ] {
        admin
            .batch_execute(&format!("CREATE DATABASE {sub_db}"))
            .unwrap();
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {sub_db} SET custos.master_key_file = '{}';
                 ALTER DATABASE {sub_db} SET custos.checkpoint_key_file = '{}'",
                keys.join("master.key").display(),
                keys.join("signer.key").display()
            ))
            .unwrap();
        let mut s = subscriber.connect(sub_db);
        s.batch_execute("CREATE EXTENSION custos CASCADE").unwrap();
        s.batch_execute(&format!(
            "CREATE SUBSCRIPTION sub_{sub_db} CONNECTION '{conninfo}' PUBLICATION {publication}"
        ))
        .unwrap();
    }
    // Each table is copied by its own sync worker: wait for every published table.
    let published = "SELECT array[(SELECT count(*) FROM custos.events),
                                  (SELECT count(*) FROM custos.checkpoints),
                                  (SELECT count(*) FROM custos.chain_anchors),
                                  (SELECT count(*) FROM custos.data_keys),
                                  (SELECT count(*) FROM custos.subject_keys)]";
    let sent: Vec<i64> = one(&mut su, published);
    let mut r = subscriber.connect("replica");
    assert!(
        within(std::time::Duration::from_secs(30), || one::<Vec<i64>>(
            &mut r, published
        ) == sent),
        "the initial copy never arrived: {}",
        subscriber.log()
    );
    for t in [A, B] {
        let ok: bool = one(
            &mut r,
            &format!("SELECT ok FROM custos.verify_chain('{t}')"),
        );
        assert!(ok, "{t} on the subscriber");
    }
    let ok: bool = one(
        &mut r,
        &format!("SELECT ok FROM custos.verify_checkpoint('{checkpoint}')"),
    );
    assert!(ok);
    let ip: String = one(
        &mut r,
        &format!("SELECT ip_address FROM custos_internal.opened_events WHERE tenant_id = '{A}' AND action = 'login'"),
    );
    assert_eq!(
        ip, "198.51.100.1",
        "sealed values open with the replicated keys"
    );
    // New events stream on and keep the chain.
    let seq: i64 = in_tenant(
        &mut su,
        B,
        "SELECT seq FROM custos.record_event('streamed', 'x')",
    );
    assert!(
        within(std::time::Duration::from_secs(30), || one::<i64>(
            &mut r,
            &format!("SELECT count(*) FROM custos.events WHERE tenant_id = '{B}' AND seq = {seq}")
        ) == 1),
        "the new event never arrived"
    );
    let r2 = r
        .query_one(
            &format!("SELECT ok, checked FROM custos.verify_chain('{B}')"),
            &[],
        )
        .unwrap();
    assert_eq!((r2.get::<_, bool>(0), r2.get::<_, i64>(1)), (true, seq));
    // Without the key tables, a sealed value reports its missing key, not tampering.
    let mut k = subscriber.connect("keyless");
    assert!(within(std::time::Duration::from_secs(30), || one::<i64>(
        &mut k,
        "SELECT count(*) FROM custos.events"
    ) >= sent[0]));
    let e = k
        .query_one(
            &format!("SELECT ip_address FROM custos_internal.opened_events WHERE tenant_id = '{A}' AND action = 'login'"),
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("holds no subject keys"), "{message}");
    for sub_db in ["replica", "keyless"] {
        let mut s = subscriber.connect(sub_db);
        s.batch_execute(&format!("DROP SUBSCRIPTION sub_{sub_db}"))
            .unwrap();
    }
    let _ = std::fs::remove_dir_all(&keys);
}

#[test]
fn pg_dumpall_moves_a_whole_cluster_with_its_ledger() {
    let keys = scratch("dumpall-keys");
    let source = new_cluster("dumpall-source");
    source
        .connect("postgres")
        .batch_execute("CREATE DATABASE ledgerdb")
        .unwrap();
    let mut su = source.connect("ledgerdb");
    su.batch_execute("CREATE EXTENSION custos CASCADE").unwrap();
    let checkpoint = fill_at(&mut su, "ledgerdb", &keys, &|db| source.connect(db));
    let events: i64 = one(&mut su, "SELECT count(*) FROM custos.events");
    let dump = keys.join("cluster.sql");
    let at = |c: &Cluster| c.dir.display().to_string();
    tool_at(
        &at(&source),
        "5432",
        "pg_dumpall",
        &["-f", dump.to_str().unwrap()],
    );
    // The new cluster gets roles, databases with their settings (the key files) and every row.
    let target = new_cluster("dumpall-target");
    let out = Command::new(format!("{}/psql", pg_bin()))
        .args([
            "-h",
            &at(&target),
            "-p",
            "5432",
            "-U",
            "postgres",
            "-X",
            "-q",
            "-d",
            "postgres",
            "-f",
        ])
        .arg(&dump)
        .env("PGOPTIONS", "-c custos.restore_mode=on")
        .output()
        .unwrap();
    let errors: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("ERROR"))
        .filter(|l| !l.contains("role \"postgres\" already exists"))
        .map(str::to_owned)
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    check_restored_at("ledgerdb", &checkpoint, events, &|db| target.connect(db));
    let _ = std::fs::remove_dir_all(&keys);
}
