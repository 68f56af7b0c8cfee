//! The ledger on a live server: concurrent writers at every isolation level, PostgREST's protocol,
//! and bad input from a real client.

use custos_integration_tests::{
    connect, fresh_db, postgrest_request, postgrest_roles, sqlstate, Beside,
};
use postgres::IsolationLevel;
use serde_json::json;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

const T1: &str = "c1000000-0000-4000-8000-000000000001";
const T2: &str = "c2000000-0000-4000-8000-000000000002";

fn verify(c: &mut impl postgres::GenericClient, tenant: &str) -> (bool, i64, Option<String>) {
    let row = c
        .query_one(
            &format!("SELECT ok, checked, reason FROM custos.verify_chain('{tenant}')"),
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// One column of a tenant's events as the client's snapshot shows them, in seq order.
fn in_seq_order<T: postgres::types::FromSqlOwned>(
    c: &mut postgres::Client,
    column: &str,
    tenant: &str,
) -> Vec<T> {
    c.query(
        &format!("SELECT {column} FROM custos.events WHERE tenant_id = '{tenant}' ORDER BY seq"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Runs `sql` in a session of its own on a thread: the session's backend pid, and how it ended
/// (the SQLSTATE of its error).
fn run_aside(db: &str, sql: String) -> (i32, JoinHandle<Result<(), String>>) {
    let mut c = connect(db, "postgres");
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let run = std::thread::spawn(move || c.batch_execute(&sql).map_err(|e| sqlstate(&e)));
    (pid, run)
}

/// Whether `pass` holds within 10 s, checked every 50 ms.
fn within_10s(mut pass: impl FnMut() -> bool) -> bool {
    (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        pass()
    })
}

/// Whether backend `pid` comes to wait on `event` (pg_stat_activity.wait_event) within 10 s.
fn comes_to_wait(c: &mut postgres::Client, pid: i32, event: &str) -> bool {
    within_10s(|| {
        c.query_one(
            "SELECT coalesce(wait_event = $2, false) FROM pg_stat_activity WHERE pid = $1",
            &[&pid, &event],
        )
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
    })
}

fn alert_count(c: &mut postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM custos.alerts", &[])
        .unwrap()
        .get(0)
}

/// Eight writers hammer two tenants, each transaction recording 1-3 events, some rolled back
/// whole, some losing a savepoint. Events come from `record_event` and from rows of a table
/// tracked by `track_table` (whose capture writes events straight to the heap). Every committed
/// event must be in a gap-free verified chain. Meanwhile an auditor verifies both chains again and
/// again: a writer may never become visible before the writer it chained onto, so what a reader
/// sees while tenants commit is always a whole chain.
fn hammer(isolation: IsolationLevel, name: &str) {
    let (db, mut setup) = fresh_db(name);
    setup
        .batch_execute(
            "CREATE TABLE public.orders (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL, item text);
             SELECT custos.track_table('public.orders');",
        )
        .unwrap();
    let committed = Arc::new([AtomicI64::new(0), AtomicI64::new(0)]);
    let threads: Vec<_> = (0..8)
        .map(|w| {
            let db = db.clone();
            let committed = committed.clone();
            std::thread::spawn(move || {
                let mut c = connect(&db, "postgres");
                let mut seed = 0x9E37_79B9u64.wrapping_mul(w + 1);
                let mut next = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                for i in 0..60 {
                    let t = (next() % 2) as usize;
                    let tenant = [T1, T2][t];
                    let mut tx = c
                        .build_transaction()
                        .isolation_level(isolation)
                        .start()
                        .unwrap();
                    tx.execute(&format!("SELECT custos.set_tenant('{tenant}')"), &[])
                        .unwrap();
                    let n = 1 + next() % 3;
                    let mut kept = 0i64;
                    for k in 0..n {
                        if next() % 2 == 0 {
                            tx.execute(
                                "SELECT custos.record_event('write', 'doc', $1)",
                                &[&format!("w{w}-{i}-{k}")],
                            )
                            .unwrap();
                            kept += 1;
                        } else {
                            let rows = 1 + next() % 3;
                            tx.execute(
                                &format!("INSERT INTO public.orders (tenant_id, item) SELECT '{tenant}', 'w{w}-{i}-{k}-' || g FROM generate_series(1, {rows}) g"),
                                &[],
                            )
                            .unwrap();
                            kept += rows as i64;
                        }
                    }
                    if next() % 4 == 0 {
                        let mut sp = tx.transaction().unwrap();
                        sp.execute("SELECT custos.record_event('undone', 'doc')", &[])
                            .unwrap();
                        sp.execute(
                            &format!("INSERT INTO public.orders (tenant_id, item) VALUES ('{tenant}', 'undone')"),
                            &[],
                        )
                        .unwrap();
                        sp.rollback().unwrap();
                    }
                    if next() % 5 == 0 {
                        tx.execute("SELECT custos.record_event('last', 'doc')", &[])
                            .unwrap();
                        kept += 1;
                    }
                    if next() % 6 == 0 {
                        tx.rollback().unwrap();
                    } else {
                        match tx.commit() {
                            Ok(()) => {
                                committed[t].fetch_add(kept, Ordering::SeqCst);
                            }
                            // Only SERIALIZABLE may fail at commit: below it, a writer
                            // fails there only if the transaction it chained onto did not
                            // commit, and every commit that reaches its end here succeeds.
                            Err(e) => assert!(
                                matches!(isolation, IsolationLevel::Serializable)
                                    && sqlstate(&e) == "40001",
                                "only serialization failures at SERIALIZABLE may abort: {e}"
                            ),
                        }
                    }
                }
            })
        })
        .collect();
    let auditor = Beside::start(&db, |c, _| {
        for tenant in [T1, T2] {
            let (ok, checked, reason) = verify(c, tenant);
            assert!(ok, "{checked} events verified, then: {reason:?}");
        }
    });
    for t in threads {
        t.join().unwrap();
    }
    let rounds = auditor.stop();
    assert!(
        rounds > 1,
        "the auditor verified while the writers wrote ({rounds} rounds)"
    );
    let mut c = connect(&db, "postgres");
    assert_eq!(alert_count(&mut c), 0, "no verification raised an alert");
    for (t, tenant) in [T1, T2].iter().enumerate() {
        let row = c
            .query_one(
                &format!("SELECT count(*), coalesce(max(seq), 0), count(DISTINCT seq) FROM custos.events WHERE tenant_id = '{tenant}'"),
                &[],
            )
            .unwrap();
        let (n, max, distinct): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            n,
            committed[t].load(Ordering::SeqCst),
            "every committed event is there, nothing else"
        );
        assert_eq!(
            (max, distinct),
            (n, n),
            "seq is 1..n with no gap or duplicate"
        );
        assert_eq!(verify(&mut c, tenant), (true, n, None));
        let undone: i64 = c
            .query_one(
                "SELECT count(*) FROM custos.events WHERE action = 'undone' OR details->'new'->>'item' = 'undone'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(undone, 0);
    }
}

#[test]
fn concurrent_writers_read_committed() {
    hammer(IsolationLevel::ReadCommitted, "ledger_rc");
}

#[test]
fn concurrent_writers_repeatable_read() {
    hammer(IsolationLevel::RepeatableRead, "ledger_rr");
}

#[test]
fn concurrent_writers_serializable() {
    hammer(IsolationLevel::Serializable, "ledger_ser");
}

#[test]
fn one_transaction_across_tenants_and_statements() {
    let (_db, mut c) = fresh_db("ledger_multi");
    let mut tx = c.transaction().unwrap();
    tx.batch_execute(&format!(
        "INSERT INTO custos.events (tenant_id, action, entity_type)
         SELECT (ARRAY['{T1}', '{T2}']::uuid[])[1 + g % 2], 'bulk', 'row' FROM generate_series(1, 5000) g;
         INSERT INTO custos.events (tenant_id, action, entity_type) VALUES ('{T1}', 'after', 'row');"
    ))
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(verify(&mut c, T1), (true, 2501, None));
    assert_eq!(verify(&mut c, T2), (true, 2500, None));
}

/// The head lookup of a new transaction starts at the seq this backend found last time; if the
/// chain no longer reaches that far (here a superuser cut its tail behind the guards), it reads
/// the whole range instead, and the next event still follows the last row that exists.
#[test]
fn head_lookup_falls_back_when_the_chain_no_longer_reaches_its_hint() {
    let (db, mut c) = fresh_db("ledger_head_hint");
    let insert = format!(
        "INSERT INTO custos.events (tenant_id, action, entity_type) VALUES ('{T1}', 'step', 'row')"
    );
    for _ in 0..4 {
        c.batch_execute(&insert).unwrap();
    }
    let mut admin = connect(&db, "postgres");
    admin
        .batch_execute(&format!(
            "ALTER EVENT TRIGGER custos_guard_ledger DISABLE;
             ALTER TABLE custos.events DISABLE TRIGGER append_only;
             ALTER TABLE custos.events DISABLE TRIGGER retention_delete_check;
             DELETE FROM custos.events WHERE tenant_id = '{T1}' AND seq >= 3;
             ALTER TABLE custos.events ENABLE ALWAYS TRIGGER retention_delete_check;
             ALTER TABLE custos.events ENABLE ALWAYS TRIGGER append_only;
             ALTER EVENT TRIGGER custos_guard_ledger ENABLE ALWAYS;"
        ))
        .unwrap();
    c.batch_execute(&insert).unwrap();
    let row = c
        .query_one(
            &format!(
                "SELECT max(e.seq), bool_and(e.prev_hash = p.hash) FROM custos.events e
                   JOIN custos.events p ON p.tenant_id = e.tenant_id AND p.seq = e.seq - 1
                  WHERE e.tenant_id = '{T1}'"
            ),
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, bool>(1)), (3, true));
    assert_eq!(verify(&mut c, T1), (true, 3, None));
}

/// A writer chains onto the rows of a transaction that is committing (the chain lock is handed
/// over at pre-commit), so before it commits it waits for that transaction, and fails with 40001
/// if it did not commit. Here the predecessor is a superuser's row written straight into the
/// access log (which shares the ledger's head logic) in a transaction left open, then rolled back.
#[test]
fn a_writer_whose_predecessor_rolls_back_fails_instead_of_committing_a_broken_link() {
    let (db, mut a) = fresh_db("ledger_hand_off");
    let mut b = connect(&db, "postgres");
    a.batch_execute(&format!(
        "BEGIN;
         INSERT INTO custos.access_log (tenant_id, seq, id, accessed_at, reader, actor, function, filters,
                                        rows_returned, prev_hash, hash)
         VALUES ('{T1}', 1, gen_random_uuid(), now(), 'x', 'x', 'forged', '{{}}', 0, '\\x00', '\\x01');"
    ))
    .unwrap();
    b.batch_execute("BEGIN").unwrap();
    let seq: i64 = b
        .query_one(
            &format!("SELECT custos_internal.log_access('{T1}', 'test', '{{}}', 0)"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        seq, 2,
        "the writer chains onto the row of the transaction in progress"
    );
    let committing =
        std::thread::spawn(move || b.batch_execute("COMMIT").map_err(|e| sqlstate(&e)));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !committing.is_finished(),
        "the commit waits for its predecessor"
    );
    a.batch_execute("ROLLBACK").unwrap();
    assert_eq!(committing.join().unwrap(), Err("40001".to_string()));
    let next: i64 = a
        .query_one(
            &format!("SELECT custos_internal.log_access('{T1}', 'test', '{{}}', 0)"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(next, 1);
    let ok: bool = a
        .query_one(
            &format!("SELECT ok FROM custos.verify_access_log('{T1}')"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ok);
}

/// With track_commit_timestamp on, a writer waits for its predecessor's commit record, not for its
/// end; so it may become visible first. Here the predecessor is held between the two for as long as
/// the test likes: it commits waiting for a synchronous standby that never answers (the test
/// cluster names one), while its successor commits with synchronous_commit = local. The successor
/// must commit at once, and every reader must treat the held row as the chain's: verification,
/// checkpoints, and the watermark that `settled_seq` gives.
#[test]
fn a_writer_commits_while_its_predecessor_waits_for_a_standby_and_readers_fill_the_hole() {
    let (db, mut reader) = fresh_db("ledger_hole");
    let settings: (String, String) = {
        let r = reader
            .query_one(
                "SELECT current_setting('track_commit_timestamp'), current_setting('synchronous_standby_names')",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        settings.0 == "on" && !settings.1.is_empty(),
        "run against the cluster of scripts/test.sh (track_commit_timestamp on, a synchronous standby named): {settings:?}"
    );
    let (held_pid, holding) = run_aside(
        &db,
        format!(
            "SET synchronous_commit = on;
             INSERT INTO custos.events (tenant_id, action, entity_type, actor) VALUES ('{T1}', 'held', 'x', 'ann')"
        ),
    );
    assert!(
        comes_to_wait(&mut reader, held_pid, "SyncRep"),
        "the held commit waits for the standby"
    );

    let (_, successor) = run_aside(
        &db,
        format!(
            "BEGIN;
             INSERT INTO custos.events (tenant_id, action, entity_type, actor) VALUES ('{T1}', 'after', 'x', 'bob'), ('{T1}', 'after', 'x', 'bob');
             COMMIT;"
        ),
    );
    let committed_at_once = within_10s(|| successor.is_finished());
    let release = |reader: &mut postgres::Client| {
        reader
            .execute("SELECT pg_cancel_backend($1)", &[&held_pid])
            .unwrap();
    };
    if !committed_at_once {
        release(&mut reader);
    }
    assert!(
        committed_at_once,
        "the successor commits without waiting for its predecessor to become visible"
    );
    successor.join().unwrap().unwrap();

    let visible: Vec<i64> = in_seq_order(&mut reader, "seq", T1);
    assert_eq!(visible, [2, 3], "seq 1 is committed but not visible yet");
    assert_eq!(verify(&mut reader, T1), (true, 3, None));
    let settled = |c: &mut postgres::Client| -> i64 {
        c.query_one(&format!("SELECT custos.settled_seq('{T1}')"), &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(settled(&mut reader), 0, "a watermark stops below the hole");
    let folded = |c: &mut postgres::Client| -> Option<i64> {
        c.execute(
            &format!("SELECT custos.sync_activity_from_ledger('{T1}')"),
            &[],
        )
        .unwrap();
        c.query_opt(
            &format!("SELECT folded_seq FROM custos.activity_watermarks WHERE tenant_id = '{T1}'"),
            &[],
        )
        .unwrap()
        .map(|r| r.get(0))
    };
    assert_eq!(
        folded(&mut reader),
        None,
        "activity is not folded past the hole"
    );
    reader
        .batch_execute(&format!(
            "SET custos.checkpoint_signing_key = '{}'",
            "11".repeat(32)
        ))
        .unwrap();
    let checkpoint: String = reader
        .query_one(&format!("SELECT custos.checkpoint('{T1}')"), &[])
        .unwrap()
        .get(0);
    let (ok, seq): (bool, Option<i64>) = {
        let r = reader
            .query_one(
                "SELECT ok, seq FROM custos.verify_checkpoint($1)",
                &[&checkpoint],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((ok, seq), (true, Some(3)));
    let mut repeatable = reader
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    assert_eq!(verify(&mut repeatable, T1), (true, 3, None));
    repeatable.commit().unwrap();

    release(&mut reader);
    holding.join().unwrap().unwrap();
    assert_eq!(settled(&mut reader), 3);
    assert_eq!(folded(&mut reader), Some(3));
    assert_eq!(verify(&mut reader, T1), (true, 3, None));
    assert_eq!(alert_count(&mut reader), 0);
}

/// The other side of the test above: a writer still before its commit record can yet roll back, so
/// its successor waits for it, and fails when it does. The predecessor is held after custos hands
/// its chain over and before its commit record: its NOTIFY needs the lock that a commit waiting for
/// the absent standby holds. Cancelling it there rolls it back.
#[test]
fn a_writer_waits_for_a_predecessor_held_before_its_commit_record_and_fails_if_it_rolls_back() {
    let (db, mut admin) = fresh_db("ledger_held_before_commit");
    let (notify_holder, holding) = run_aside(
        &db,
        // Transaction-local, and the table dropped at commit: once cancelled, the session leaves
        // nothing that would wait for the absent standby again when it exits.
        "BEGIN; SET LOCAL synchronous_commit = on; CREATE TEMP TABLE hold (x int) ON COMMIT DROP; NOTIFY custos_it; COMMIT;"
            .to_string(),
    );
    assert!(comes_to_wait(&mut admin, notify_holder, "SyncRep"));
    let (predecessor, predecessor_done) = run_aside(
        &db,
        format!(
            "BEGIN;
         INSERT INTO custos.events (tenant_id, action, entity_type) VALUES ('{T1}', 'first', 'x');
         NOTIFY custos_it;
         COMMIT;"
        ),
    );
    assert!(
        comes_to_wait(&mut admin, predecessor, "object"),
        "the predecessor waits for the NOTIFY lock, after handing its chain over"
    );
    let (successor, successor_done) = run_aside(
        &db,
        format!(
        "INSERT INTO custos.events (tenant_id, action, entity_type) VALUES ('{T1}', 'second', 'x')"
    ),
    );
    assert!(
        comes_to_wait(&mut admin, successor, "transactionid"),
        "the successor chained onto the predecessor's rows and waits for it to commit"
    );
    admin
        .execute("SELECT pg_cancel_backend($1)", &[&predecessor])
        .unwrap();
    assert_eq!(predecessor_done.join().unwrap(), Err("57014".to_string()));
    assert_eq!(successor_done.join().unwrap(), Err("40001".to_string()));
    admin
        .execute("SELECT pg_cancel_backend($1)", &[&notify_holder])
        .unwrap();
    holding.join().unwrap().unwrap();
    assert_eq!(verify(&mut admin, T1), (true, 0, None));
    admin
        .batch_execute(&format!(
            "INSERT INTO custos.events (tenant_id, action, entity_type) VALUES ('{T1}', 'third', 'x')"
        ))
        .unwrap();
    assert_eq!(in_seq_order::<i64>(&mut admin, "seq", T1), [1]);
    assert_eq!(verify(&mut admin, T1), (true, 1, None));
}

/// A prepared transaction keeps its tenant's chain lock (it is not handed over at PREPARE): the
/// next writer waits until COMMIT PREPARED or ROLLBACK PREPARED, then chains onto what committed.
#[test]
fn a_prepared_transaction_holds_the_chain_until_it_is_resolved() {
    let (db, mut a) = fresh_db("ledger_prepared");
    for (gid, finish) in [
        ("custos_it_commit", "COMMIT"),
        ("custos_it_rollback", "ROLLBACK"),
    ] {
        a.batch_execute(&format!(
            "BEGIN;
             INSERT INTO custos.events (tenant_id, action, entity_type) VALUES ('{T1}', '{gid}', 'x');
             PREPARE TRANSACTION '{gid}';"
        ))
        .unwrap();
        let db_name = db.clone();
        let writer = std::thread::spawn(move || {
            connect(&db_name, "postgres").batch_execute(&format!(
                "INSERT INTO custos.events (tenant_id, action, entity_type) VALUES ('{T1}', 'after_{gid}', 'x')"
            ))
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!writer.is_finished(), "the next writer waits for {gid}");
        a.batch_execute(&format!("{finish} PREPARED '{gid}'"))
            .unwrap();
        writer.join().unwrap().unwrap();
    }
    let actions: Vec<String> = in_seq_order(&mut a, "action", T1);
    assert_eq!(
        actions,
        [
            "custos_it_commit",
            "after_custos_it_commit",
            "after_custos_it_rollback"
        ]
    );
    assert_eq!(verify(&mut a, T1), (true, 3, None));
}

#[test]
fn copy_is_chained_too() {
    let (_db, mut c) = fresh_db("ledger_copy");
    let mut w = c
        .copy_in(
            "COPY custos.events (tenant_id, action, entity_type, entity_id, details) FROM STDIN",
        )
        .unwrap();
    use std::io::Write;
    for i in 0..1000 {
        writeln!(w, "{T1}\tcopy\tdoc\td{i}\t{{\"i\": {i}}}").unwrap();
    }
    w.finish().unwrap();
    assert_eq!(verify(&mut c, T1), (true, 1000, None));
}

#[test]
fn postgrest_writers_and_auditors_stay_in_their_tenant() {
    let (db, mut su) = fresh_db("ledger_postgrest");
    postgrest_roles(
        &mut su,
        &[
            ("it_web_writer", "custos_writer"),
            ("it_web_auditor", "custos_auditor"),
        ],
    );
    let mut c = connect(&db, "authenticator");
    let claims =
        |t: &str, role: &str| json!({"role": role, "sub": format!("ana@{t}"), "tenant_id": t});
    for t in [T1, T1, T2] {
        postgrest_request(&mut c, "it_web_writer", &claims(t, "it_web_writer"), "POST", "/rpc/record_event",
            "SELECT * FROM custos.record_event('invoice.paid', 'invoice', 'inv-1', '{\"amount\": 12}')").unwrap();
    }
    let read = "SELECT actor, db_role FROM custos.events ORDER BY seq";
    let rows = postgrest_request(
        &mut c,
        "it_web_auditor",
        &claims(T1, "it_web_auditor"),
        "GET",
        "/events",
        read,
    )
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, String>(0), format!("ana@{T1}"));
    assert_eq!(rows[0].get::<_, String>(1), "it_web_writer");
    let rows = postgrest_request(
        &mut c,
        "it_web_auditor",
        &claims(T2, "it_web_auditor"),
        "GET",
        "/events",
        read,
    )
    .unwrap();
    assert_eq!(rows.len(), 1);
    let v = postgrest_request(
        &mut c,
        "it_web_auditor",
        &claims(T1, "it_web_auditor"),
        "POST",
        "/rpc/verify_chain",
        &format!("SELECT ok, checked FROM custos.verify_chain('{T1}')"),
    )
    .unwrap();
    assert!(v[0].get::<_, bool>(0));
    assert_eq!(v[0].get::<_, i64>(1), 2);
    // Across tenants: refused. Writers cannot read; anon can do nothing.
    let e = postgrest_request(
        &mut c,
        "it_web_auditor",
        &claims(T2, "it_web_auditor"),
        "POST",
        "/rpc/verify_chain",
        &format!("SELECT * FROM custos.verify_chain('{T1}')"),
    )
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let e = postgrest_request(
        &mut c,
        "it_web_writer",
        &claims(T1, "it_web_writer"),
        "GET",
        "/events",
        read,
    )
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let e = postgrest_request(
        &mut c,
        "it_web_anon",
        &json!({}),
        "POST",
        "/rpc/record_event",
        "SELECT * FROM custos.record_event('x', 'y')",
    )
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let e =
        postgrest_request(&mut c, "it_web_anon", &json!({}), "GET", "/events", read).unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
}

#[test]
fn bad_input_is_refused_with_nothing_written() {
    let (_db, mut c) = fresh_db("ledger_bad_input");
    let batch = |c: &mut postgres::Client, body: &str| {
        c.batch_execute(&format!(
            "SELECT custos.set_tenant('{T1}'); SELECT custos.record_events($j${body}$j$::jsonb)"
        ))
    };
    for (body, code) in [
        ("{not json", "22P02"),
        (
            "[{\"action\": \"a\", \"entity_type\": \"x\", \"details\": \"text\"}]",
            "23514",
        ),
        (
            "[{\"action\": \"a\", \"entity_type\": \"x\", \"ip_address\": \"999.1.1.1\"}]",
            "22P02",
        ),
        (
            "[{\"action\": \"a\", \"entity_type\": \"x\", \"occurred_at\": \"yesterday-ish\"}]",
            "22007",
        ),
        ("[{\"action\": \"\", \"entity_type\": \"x\"}]", "23514"),
        (
            "[{\"action\": \"a\", \"entity_type\": \"x\", \"details\": {\"k\": \"\\u0000\"}}]",
            "22P05",
        ),
    ] {
        let e = batch(&mut c, body).unwrap_err();
        assert_eq!(sqlstate(&e), code, "{body}: {e:?}");
    }
    // A NUL byte in a bound text parameter never reaches the table.
    let e = c
        .execute("SELECT custos.record_event($1, 'x')", &[&"a\0b"])
        .unwrap_err();
    assert!(
        e.as_db_error().is_some() || e.to_string().contains("nul"),
        "{e}"
    );
    // A valid batch of 10,000 goes in whole; one bad row at the end spoils all of them.
    let ok: Vec<_> = (0..10_000)
        .map(|i| json!({"action": "bulk", "entity_type": "row", "entity_id": i.to_string()}))
        .collect();
    let mut spoiled = ok.clone();
    spoiled.push(json!({"action": "bulk"}));
    let e = batch(&mut c, &serde_json::Value::Array(spoiled).to_string()).unwrap_err();
    assert_eq!(sqlstate(&e), "23502");
    let n: i64 = c
        .query_one("SELECT count(*) FROM custos.events", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    batch(&mut c, &serde_json::Value::Array(ok).to_string()).unwrap();
    assert_eq!(verify(&mut c, T1), (true, 10_000, None));
}

#[test]
fn fuzzed_batches_are_all_or_nothing() {
    let (_db, mut c) = fresh_db("ledger_fuzz");
    let mut seed = 42u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces = [
        json!("login"),
        json!(""),
        json!(null),
        json!(17),
        json!([1, 2]),
        json!({"k": "v"}),
        json!("é\"\\\n"),
        json!("10.0.0.1"),
        json!("2026-01-01T00:00:00Z"),
        json!("high"),
        json!("x".repeat(300)),
    ];
    let keys = [
        "action",
        "entity_type",
        "entity_id",
        "details",
        "severity",
        "ip_address",
        "occurred_at",
        "actor",
        "user_agent",
        "bogus",
    ];
    let mut expected = 0i64;
    for _ in 0..150 {
        let events: Vec<serde_json::Value> = (0..1 + next() % 4)
            .map(|_| {
                let mut o = serde_json::Map::new();
                o.insert("action".into(), json!("a"));
                o.insert("entity_type".into(), json!("t"));
                for _ in 0..next() % 3 {
                    let k = keys[(next() % keys.len() as u64) as usize];
                    o.insert(
                        k.into(),
                        pieces[(next() % pieces.len() as u64) as usize].clone(),
                    );
                }
                serde_json::Value::Object(o)
            })
            .collect();
        let n = events.len() as i64;
        let body = serde_json::Value::Array(events).to_string();
        let r = c.batch_execute(&format!(
            "SELECT custos.set_tenant('{T1}'); SELECT custos.record_events($j${body}$j$::jsonb)"
        ));
        match r {
            Ok(()) => expected += n,
            Err(e) => assert!(
                e.as_db_error().is_some(),
                "a clean SQL error, not a crash: {e}"
            ),
        }
        let have: i64 = c
            .query_one("SELECT count(*) FROM custos.events", &[])
            .unwrap()
            .get(0);
        assert_eq!(have, expected, "after {body}");
    }
    assert!(expected > 0);
    assert_eq!(verify(&mut c, T1), (true, expected, None));
}

#[test]
fn dropping_the_extension_needs_an_explicit_superuser_decision() {
    let (_db, mut c) = fresh_db("ledger_drop");
    c.batch_execute(&format!(
        "SELECT custos.set_tenant('{T1}'); SELECT custos.record_event('a', 'b')"
    ))
    .unwrap();
    let e = c
        .batch_execute("DROP EXTENSION custos CASCADE")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let e = c.batch_execute("DROP SCHEMA custos CASCADE").unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let n: i64 = c
        .query_one("SELECT count(*) FROM custos.events", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    c.batch_execute("SET custos.allow_ledger_drop = on; DROP EXTENSION custos CASCADE")
        .unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_extension WHERE extname = 'custos'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}
