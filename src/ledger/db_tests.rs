use crate::ledger::chain::{event_hash, genesis_hash};
use crate::ledger::row::scan_chain;
use crate::testing::{assert_error, count, error_of};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Two tenants of this test alone. Tests run concurrently, each in its own backend; sharing a
/// tenant would make them wait on (and, with the tamper tests' DDL, deadlock over) its chain lock.
fn fresh_tenants() -> (&'static str, &'static str) {
    let pick = || -> &'static str {
        Spi::get_one::<String>("SELECT gen_random_uuid()::text")
            .unwrap()
            .unwrap()
            .leak()
    };
    (pick(), pick())
}
const KEY: &str = "0707070707070707070707070707070707070707070707070707070707070707";

fn as_tenant(t: &str) {
    Spi::run(&format!("SELECT custos.set_tenant('{t}')")).unwrap();
}

fn record(n: usize) {
    for i in 0..n {
        Spi::run(&format!(
            "SELECT custos.record_event('login', 'user', 'u{i}', '{{\"n\": {i}, \"b\": [1, 2], \"a\": \"x\"}}')"
        ))
        .unwrap();
    }
}

/// (ok, checked, first_broken_seq, reason) of custos.verify_chain for `t`.
fn verify(t: &str) -> (bool, i64, Option<i64>, Option<String>) {
    Spi::connect(|c| {
        let row = c
            .select(
                &format!("SELECT * FROM custos.verify_chain('{t}')"),
                None,
                &[],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>((
            row.get::<bool>(1)?.unwrap(),
            row.get::<i64>(2)?.unwrap(),
            row.get::<i64>(3)?,
            row.get::<String>(4)?,
        ))
    })
    .unwrap()
}

/// A stored row: seq, prev_hash, hash, and its hash recomputed from its content.
struct Stored {
    seq: i64,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
    recomputed: Vec<u8>,
}

fn tenant_bytes(t: &str) -> [u8; 16] {
    *uuid::Uuid::parse_str(t).unwrap().as_bytes()
}

/// scan_chain reads with the statement's snapshot; a test function's own statement began before the
/// rows it inserted, so scan under a snapshot taken now.
fn scan_now(t: &str, f: impl FnMut(&crate::ledger::row::StoredRow<'_>) -> bool) {
    unsafe {
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    scan_chain(&tenant_bytes(t), 1, None, f);
    unsafe { pg_sys::PopActiveSnapshot() };
}

fn rows(t: &str) -> Vec<Stored> {
    let mut out = Vec::new();
    scan_now(t, |r| {
        let prev: [u8; 32] = r.prev_hash.try_into().unwrap();
        out.push(Stored {
            seq: r.seq,
            prev_hash: r.prev_hash.to_vec(),
            hash: r.hash.to_vec(),
            recomputed: event_hash(&prev, &r.fields()).to_vec(),
        });
        true
    });
    out
}

/// Tamper tests alter the table (a stronger lock than their inserts took): one at a time, or two
/// of them deadlock upgrading their locks.
fn tamper_test_tenants() -> (&'static str, &'static str) {
    Spi::run("SELECT pg_advisory_xact_lock(7357)").unwrap();
    fresh_tenants()
}

/// What a superuser can do behind custos' back: switch off every guard for the rest of the test.
fn tamper(sql: &str) {
    Spi::run(&format!(
        "ALTER EVENT TRIGGER custos_guard_ledger DISABLE;
         ALTER TABLE custos.events DISABLE TRIGGER append_only;
         ALTER TABLE custos.events DISABLE TRIGGER retention_delete_check;
         ALTER TABLE custos.events DISABLE TRIGGER zz_chain;
         {sql}"
    ))
    .unwrap();
}

#[pg_test]
fn events_form_a_gap_free_linked_chain() {
    let (A, B) = fresh_tenants();
    as_tenant(A);
    record(3);
    Spi::run(&format!(
        "INSERT INTO custos.events (tenant_id, action, entity_type) VALUES ('{A}', 'a', 'x'), ('{A}', 'b', 'x')"
    ))
    .unwrap();
    let rows = rows(A);
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(rows[0].prev_hash, genesis_hash(&tenant_bytes(A)).to_vec());
    for w in rows.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    for r in &rows {
        assert_eq!(r.hash, r.recomputed, "seq {}", r.seq);
    }
    assert_eq!(verify(A), (true, 5, None, None));
}

#[pg_test]
fn tenants_have_separate_chains() {
    let (A, B) = fresh_tenants();
    as_tenant(A);
    record(2);
    as_tenant(B);
    record(3);
    assert_eq!(
        count(&format!(
            "SELECT max(seq) FROM custos.events WHERE tenant_id = '{B}'"
        )),
        3
    );
    assert_eq!(
        count(&format!(
            "SELECT max(seq) FROM custos.events WHERE tenant_id = '{A}'"
        )),
        2
    );
    assert!(verify(B).0);
    as_tenant(A);
    assert!(verify(A).0);
}

#[pg_test]
fn rolled_back_savepoints_leave_no_gap() {
    let (A, B) = fresh_tenants();
    as_tenant(A);
    record(2);
    // A plpgsql exception block is a subtransaction: its events are rolled back, seq too.
    Spi::run(
        "DO $$ BEGIN
           PERFORM custos.record_event('inner', 'x');
           PERFORM custos.record_event('inner', 'x');
           RAISE EXCEPTION 'roll back';
         EXCEPTION WHEN OTHERS THEN NULL; END $$",
    )
    .unwrap();
    // Nested: the outer block keeps its event, the inner one is rolled back.
    Spi::run(
        "DO $$ BEGIN
           BEGIN
             PERFORM custos.record_event('kept', 'x');
             BEGIN
               PERFORM custos.record_event('lost', 'x');
               RAISE EXCEPTION 'inner';
             EXCEPTION WHEN OTHERS THEN NULL; END;
           END;
         END $$",
    )
    .unwrap();
    record(1);
    let actions = Spi::get_one::<String>(&format!(
        "SELECT string_agg(seq || ':' || action, ',' ORDER BY seq) FROM custos.events WHERE tenant_id = '{A}'"
    ))
    .unwrap()
    .unwrap();
    assert_eq!(actions, "1:login,2:login,3:kept,4:login");
    assert_eq!(verify(A), (true, 4, None, None));
}

#[pg_test]
fn first_event_of_a_tenant_in_a_rolled_back_subtransaction() {
    let (A, B) = fresh_tenants();
    as_tenant(A);
    Spi::run(
        "DO $$ BEGIN PERFORM custos.record_event('x', 'y'); RAISE EXCEPTION 'no';
         EXCEPTION WHEN OTHERS THEN NULL; END $$",
    )
    .unwrap();
    record(1);
    assert_eq!(
        count(&format!(
            "SELECT max(seq) FROM custos.events WHERE tenant_id = '{A}'"
        )),
        1
    );
    assert!(verify(A).0);
}

#[pg_test]
fn custos_assigns_its_own_columns() {
    let (A, B) = fresh_tenants();
    as_tenant(A);
    for (col, val) in [
        ("seq", "7"),
        ("id", "gen_random_uuid()"),
        ("hash", "'\\x00'"),
        ("prev_hash", "'\\x00'"),
        ("txid", "1"),
        ("db_role", "'x'"),
        ("recorded_at", "now()"),
    ] {
        assert_error(
            &format!(
                "INSERT INTO custos.events (action, entity_type, {col}) VALUES ('a', 'b', {val})"
            ),
            "428C9",
            &format!("column \"{col}\" of custos.events is assigned by custos"),
        );
    }
    assert_error(
        "INSERT INTO custos.events (entity_type) VALUES ('b')",
        "23502",
        "\"action\"",
    );
    assert_error(
        "INSERT INTO custos.events (action, entity_type, severity) VALUES ('a', 'b', 'meh')",
        "23514",
        "severity cannot be \"meh\"",
    );
    assert_error(
        "INSERT INTO custos.events (action, entity_type, details) VALUES ('a', 'b', '[1]')",
        "23514",
        "details must be a JSON object",
    );
    assert_error(
        "INSERT INTO custos.events (action, entity_type) VALUES ('', 'b')",
        "23514",
        "action must be 1 to 200 characters",
    );
    assert_error(
        "INSERT INTO custos.events (action, entity_type) VALUES ('a', repeat('é', 201))",
        "23514",
        "entity_type must be 1 to 200",
    );
    Spi::run("INSERT INTO custos.events (action, entity_type) VALUES ('a', repeat('é', 200))")
        .unwrap();
    assert_error("INSERT INTO custos.events (action, entity_type, user_agent) VALUES ('a', 'b', repeat('x', 2001))", "23514", "user_agent");
    // Only the valid row went in.
    assert_eq!(count("SELECT count(*) FROM custos.events"), 1);
}

#[pg_test]
fn no_tenant_no_event() {
    let (A, B) = fresh_tenants();
    assert_error(
        "SELECT custos.record_event('a', 'b')",
        "42501",
        "no tenant is set",
    );
    assert_error(
        "INSERT INTO custos.events (action, entity_type) VALUES ('a', 'b')",
        "23502",
        "tenant_id",
    );
}

#[pg_test]
fn actor_comes_from_set_actor_then_jwt_sub_then_role() {
    let (A, B) = fresh_tenants();
    as_tenant(A);
    Spi::run("SELECT custos.record_event('a', 'x')").unwrap();
    Spi::run(r#"SELECT set_config('request.jwt.claims', '{"sub":"ana@example.com"}', true)"#)
        .unwrap();
    Spi::run("SELECT custos.record_event('b', 'x')").unwrap();
    Spi::run("SELECT custos.set_actor('bob')").unwrap();
    Spi::run("SELECT custos.record_event('c', 'x')").unwrap();
    Spi::run("SELECT custos.record_event('d', 'x', actor => 'carol')").unwrap();
    let actors =
        Spi::get_one::<String>("SELECT string_agg(actor, ',' ORDER BY seq) FROM custos.events")
            .unwrap()
            .unwrap();
    let role = Spi::get_one::<String>("SELECT current_user::text")
        .unwrap()
        .unwrap();
    assert_eq!(actors, format!("{role},ana@example.com,bob,carol"));
}

#[pg_test]
fn update_delete_truncate_are_refused_for_everyone() {
    let (A, B) = fresh_tenants();
    as_tenant(A);
    record(2);
    assert_error(
        "UPDATE custos.events SET action = 'x'",
        "42501",
        "append-only: UPDATE is not allowed",
    );
    assert_error(
        "DELETE FROM custos.events",
        "42501",
        "append-only: DELETE is not allowed",
    );
    assert_error(
        "TRUNCATE custos.events",
        "42501",
        "append-only: TRUNCATE is not allowed",
    );
    assert_error("TRUNCATE custos.checkpoints", "42501", "append-only");
    Spi::run("SET LOCAL session_replication_role = replica").unwrap();
    assert_error("DELETE FROM custos.events", "42501", "append-only");
    Spi::run("SET LOCAL session_replication_role = origin").unwrap();
    assert_eq!(count("SELECT count(*) FROM custos.events"), 2);
}

#[pg_test]
fn switching_off_the_protection_is_refused() {
    let (A, B) = fresh_tenants();
    for sql in [
        "ALTER TABLE custos.events DISABLE TRIGGER append_only",
        "ALTER TABLE custos.events DISABLE TRIGGER ALL",
        "ALTER TABLE custos.events ENABLE TRIGGER zz_chain",
        "DROP TRIGGER append_only ON custos.events",
        "ALTER TABLE custos.events NO FORCE ROW LEVEL SECURITY",
        "ALTER TABLE custos.events DISABLE ROW LEVEL SECURITY",
        "DROP TRIGGER append_only_truncate ON custos.checkpoints",
    ] {
        assert_error(
            sql,
            "42501",
            "custos ledger protection cannot be removed or disabled",
        );
    }
}

#[pg_test]
fn tamper_changed_field() {
    let (A, B) = tamper_test_tenants();
    as_tenant(A);
    record(5);
    tamper(&format!("UPDATE custos.events SET details = details || '{{\"n\": 99}}' WHERE tenant_id = '{A}' AND seq = 3"));
    let (ok, _, seq, reason) = verify(A);
    assert!(!ok);
    assert_eq!(seq, Some(3));
    assert!(reason.unwrap().starts_with("content changed"));
    assert_eq!(count("SELECT count(*) FROM custos.alerts WHERE source = 'ledger.verify' AND severity = 'critical'"), 1);
}

#[pg_test]
fn tamper_changed_hash() {
    let (A, B) = tamper_test_tenants();
    as_tenant(A);
    record(5);
    tamper(&format!(
        "UPDATE custos.events SET hash = sha256('x') WHERE tenant_id = '{A}' AND seq = 2"
    ));
    let (ok, _, seq, reason) = verify(A);
    assert_eq!((ok, seq), (false, Some(2)));
    assert!(reason.unwrap().starts_with("hash altered"));
}

#[pg_test]
fn tamper_deleted_middle_row() {
    let (A, B) = tamper_test_tenants();
    as_tenant(A);
    record(5);
    tamper(&format!(
        "DELETE FROM custos.events WHERE tenant_id = '{A}' AND seq = 3"
    ));
    let (ok, checked, seq, reason) = verify(A);
    assert_eq!((ok, checked, seq), (false, 2, Some(3)));
    assert!(reason.unwrap().starts_with("gap"));
}

/// Rows the reading snapshot does not see, below rows it does (writers that became visible before
/// their predecessors, see `head`), are read from the table when their writer has committed or
/// written its commit record; here the writer is the reader itself, in a later command than its
/// snapshot. The chain then verifies, in whole or in part, and `settled_seq` stops below the
/// first hole.
#[pg_test]
fn readers_fill_holes_below_visible_rows_with_the_settled_rows() {
    let (A, _) = tamper_test_tenants();
    as_tenant(A);
    record(6);
    tamper(&format!(
        "CREATE TEMP TABLE moved AS SELECT * FROM custos.events WHERE tenant_id = '{A}' AND seq IN (2, 4);
         DELETE FROM custos.events WHERE tenant_id = '{A}' AND seq IN (2, 4);"
    ));
    // This snapshot sees seqs 2 and 4 deleted, and not the copies written back after it.
    unsafe {
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    Spi::run("INSERT INTO custos.events SELECT * FROM moved").unwrap();
    let visible = Spi::get_one::<i64>(&format!(
        "SELECT count(*) FROM custos.events WHERE tenant_id = '{A}'"
    ));
    let tenant = pgrx::Uuid::from_bytes(tenant_bytes(A));
    let mut seen = Vec::new();
    scan_chain(&tenant_bytes(A), 1, None, |r| {
        seen.push((r.seq, r.settling));
        true
    });
    let mut ranged = Vec::new();
    scan_chain(&tenant_bytes(A), 2, Some(4), |r| {
        ranged.push(r.seq);
        true
    });
    let whole = crate::ledger::api::walk_chain(tenant, 1, None);
    let part = crate::ledger::api::walk_chain(tenant, 3, Some(4));
    let settled = [0, 2, 5].map(|after| crate::ledger::api::settled_seq(tenant, after));
    unsafe { pg_sys::PopActiveSnapshot() };
    assert_eq!(
        visible,
        Ok(Some(6)),
        "SPI reads with a snapshot of its own, which sees the copies"
    );
    assert_eq!(
        seen,
        [
            (1, false),
            (2, true),
            (3, false),
            (4, true),
            (5, false),
            (6, false)
        ]
    );
    assert_eq!(ranged, [2, 3, 4]);
    assert_eq!((whole.checked, whole.last_seq, whole.broken), (6, 6, None));
    assert_eq!((part.checked, part.last_seq, part.broken), (2, 4, None));
    assert_eq!(settled, [1, 3, 6]);
    assert_eq!(
        Spi::get_one::<i64>(&format!("SELECT custos.settled_seq('{A}')")),
        Ok(Some(6))
    );
}

#[pg_test]
fn tamper_swapped_rows() {
    let (A, B) = tamper_test_tenants();
    as_tenant(A);
    record(5);
    tamper(&format!(
        "UPDATE custos.events SET seq = -3 WHERE tenant_id = '{A}' AND seq = 3;
         UPDATE custos.events SET seq = 3 WHERE tenant_id = '{A}' AND seq = 4;
         UPDATE custos.events SET seq = 4 WHERE tenant_id = '{A}' AND seq = -3;"
    ));
    let (ok, _, seq, reason) = verify(A);
    assert_eq!((ok, seq), (false, Some(3)));
    assert!(
        reason
            .as_deref()
            .unwrap()
            .starts_with("reordered: seq 3 links to seq 4"),
        "{reason:?}"
    );
}

#[pg_test]
fn tamper_cut_tail_is_caught_by_checkpoint() {
    let (A, B) = tamper_test_tenants();
    Spi::run(&format!(
        "SET LOCAL custos.checkpoint_signing_key = '{KEY}'"
    ))
    .unwrap();
    as_tenant(A);
    record(5);
    let text = Spi::get_one::<String>(&format!("SELECT custos.checkpoint('{A}')"))
        .unwrap()
        .unwrap();
    tamper(&format!(
        "DELETE FROM custos.events WHERE tenant_id = '{A}' AND seq >= 4"
    ));
    let (ok, _, seq, reason) = verify(A);
    assert_eq!((ok, seq), (false, Some(4)));
    assert!(reason.unwrap().starts_with("truncated"));
    let (ok, reason) = verify_checkpoint(&text);
    assert!(!ok);
    assert!(reason.unwrap().starts_with("truncated"));
    // Without a checkpoint, asking for the range shows it too.
    let to = Spi::get_one::<String>(&format!(
        "SELECT reason FROM custos.verify_chain('{A}', 1, 5)"
    ))
    .unwrap()
    .unwrap();
    assert!(to.starts_with("truncated"));
}

fn verify_checkpoint(text: &str) -> (bool, Option<String>) {
    Spi::connect(|c| {
        let row = c
            .select(
                "SELECT ok, reason FROM custos.verify_checkpoint($1)",
                None,
                &[text.into()],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>((row.get::<bool>(1)?.unwrap(), row.get::<String>(2)?))
    })
    .unwrap()
}

#[pg_test]
fn tamper_recomputed_whole_chain_is_caught_by_checkpoint() {
    let (A, B) = tamper_test_tenants();
    Spi::run(&format!(
        "SET LOCAL custos.checkpoint_signing_key = '{KEY}'"
    ))
    .unwrap();
    as_tenant(A);
    record(4);
    let text = Spi::get_one::<String>(&format!("SELECT custos.checkpoint('{A}')"))
        .unwrap()
        .unwrap();
    assert_eq!(verify_checkpoint(&text), (true, None));
    // The attacker knows the format: rewrites row 2 and recomputes every hash after it.
    tamper(&format!(
        "UPDATE custos.events SET actor = 'someone else' WHERE tenant_id = '{A}' AND seq = 2"
    ));
    let mut rewritten = Vec::new();
    let mut prev = genesis_hash(&tenant_bytes(A));
    scan_now(A, |r| {
        let h = event_hash(&prev, &r.fields());
        rewritten.push((r.seq, prev, h));
        prev = h;
        true
    });
    for (seq, prev, hash) in rewritten {
        Spi::run_with_args(
            "UPDATE custos.events SET prev_hash = $1, hash = $2 WHERE tenant_id = $3::uuid AND seq = $4",
            &[prev.to_vec().into(), hash.to_vec().into(), A.into(), seq.into()],
        )
        .unwrap();
    }
    // The chain itself is consistent again...
    assert!(rows(A).iter().all(|r| r.hash == r.recomputed));
    // ...but it no longer has the head the checkpoint signed.
    let (ok, _, seq, reason) = verify(A);
    assert_eq!((ok, seq), (false, Some(4)));
    assert!(reason.unwrap().starts_with("rewritten"));
    let (ok, reason) = verify_checkpoint(&text);
    assert!(!ok);
    assert!(reason.unwrap().starts_with("rewritten"));
}

#[pg_test]
fn checkpoints_are_signed_and_checked() {
    let (A, B) = fresh_tenants();
    as_tenant(A);
    record(2);
    assert_error(
        &format!("SELECT custos.checkpoint('{A}')"),
        "55000",
        "no checkpoint signing key is configured",
    );
    Spi::run(&format!(
        "SET LOCAL custos.checkpoint_signing_key = '{KEY}'"
    ))
    .unwrap();
    let text = Spi::get_one::<String>(&format!("SELECT custos.checkpoint('{A}')"))
        .unwrap()
        .unwrap();
    assert!(
        text.starts_with(&format!("custos-checkpoint v1 tenant={A} seq=2 head=")),
        "{text}"
    );
    let public = Spi::get_one::<String>("SELECT custos.checkpoint_public_key()")
        .unwrap()
        .unwrap();
    assert_eq!(verify_checkpoint(&text), (true, None));
    // Verifiable with the public key alone.
    Spi::run("SET LOCAL custos.checkpoint_signing_key = ''").unwrap();
    let ok = Spi::get_one_with_args::<bool>(
        "SELECT ok FROM custos.verify_checkpoint($1, $2)",
        &[text.clone().into(), public.clone().into()],
    )
    .unwrap();
    assert_eq!(ok, Some(true));
    let forged = text.replace("seq=2", "seq=1");
    let reason = Spi::get_one_with_args::<String>(
        "SELECT reason FROM custos.verify_checkpoint($1, $2)",
        &[forged.into(), public.clone().into()],
    )
    .unwrap()
    .unwrap();
    assert!(reason.contains("signature does not verify"), "{reason}");
    assert_error(
        "SELECT custos.verify_checkpoint('hello', repeat('00', 32))",
        "22",
        "",
    );
    let e = error_of(&format!(
        "SELECT custos.verify_checkpoint('custos-checkpoint v1 tenant=x sig=y', '{public}')"
    ))
    .unwrap();
    assert!(e.starts_with("22P02: malformed checkpoint"), "{e}");
    assert_error(
        "SELECT custos.verify_checkpoint('x', 'not a key')",
        "22023",
        "public_key",
    );
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM custos.checkpoints WHERE tenant_id = '{A}'"
        )),
        1
    );
}

#[pg_test]
fn verify_chain_arguments_are_checked() {
    let (A, B) = fresh_tenants();
    as_tenant(A);
    record(3);
    assert_error(
        &format!("SELECT * FROM custos.verify_chain('{A}', 0)"),
        "22023",
        "from_seq must be 1 or more",
    );
    assert_error(
        &format!("SELECT custos.settled_seq('{A}', -1)"),
        "22023",
        "after_seq must be 0 or more",
    );
    assert_error(
        &format!("SELECT * FROM custos.verify_chain('{A}', 3, 2)"),
        "22023",
        "to_seq (2) is before from_seq (3)",
    );
    let checked = count(&format!(
        "SELECT checked FROM custos.verify_chain('{A}', 2, 3)"
    ));
    assert_eq!(checked, 2);
}

#[pg_test]
fn verification_is_for_the_current_tenant_only() {
    let (A, B) = fresh_tenants();
    as_tenant(B);
    record(1);
    as_tenant(A);
    record(1);
    Spi::run("CREATE ROLE custos_test_auditor NOLOGIN; GRANT custos_auditor TO custos_test_auditor; SET LOCAL ROLE custos_test_auditor").unwrap();
    assert!(verify(A).0);
    assert_error(
        &format!("SELECT * FROM custos.verify_chain('{B}')"),
        "42501",
        "permission denied for the ledger of tenant",
    );
    Spi::run("RESET ROLE; CREATE ROLE custos_test_writer NOLOGIN; GRANT custos_writer TO custos_test_writer; SET LOCAL ROLE custos_test_writer").unwrap();
    assert_error(
        &format!("SELECT * FROM custos.verify_chain('{A}')"),
        "42501",
        "permission denied for function verify_chain",
    );
    // A writer writes but cannot read the ledger back.
    Spi::run("SELECT custos.record_event('w', 'x')").unwrap();
    assert_error(
        "SELECT count(*) FROM custos.events",
        "42501",
        "permission denied for table events",
    );
}

#[pg_test]
fn batches_are_all_or_nothing() {
    let (A, B) = fresh_tenants();
    as_tenant(A);
    let n = Spi::get_one::<i64>(
        r#"SELECT custos.record_events('[{"action":"a","entity_type":"x"},{"action":"b","entity_type":"x","details":{"k":1}},{"action":"c","entity_type":"x","severity":"high"}]')"#,
    )
    .unwrap();
    assert_eq!(n, Some(3));
    for (batch, needle) in [
        (r#"{"action":"a"}"#, "must be a JSON array"),
        (
            r#"[{"action":"a","entity_type":"x"}, 7]"#,
            "element 1 is number",
        ),
        (
            r#"[{"action":"a","entity_type":"x","colour":"red"}]"#,
            "unknown key \"colour\"",
        ),
        (
            &format!(r#"[{{"action":"a","entity_type":"x","tenant_id":"{B}"}}]"#) as &str,
            "belongs to tenant",
        ),
    ] {
        assert_error(
            &format!("SELECT custos.record_events('{batch}')"),
            "22023",
            needle,
        );
    }
    assert_error(
        r#"SELECT custos.record_events('[{"action":"a","entity_type":"x"},{"action":"b"}]')"#,
        "23502",
        "entity_type",
    );
    assert_error(
        r#"SELECT custos.record_events('[{"action":"a","entity_type":"x","severity":"loud"}]')"#,
        "23514",
        "severity",
    );
    assert_eq!(count("SELECT count(*) FROM custos.events"), 3);
    assert!(verify(A).0);
}

/// After the pre-commit hand-off (called here as the commit would call it), the transaction may
/// chain no more events: its successor may already have chained onto its last one.
#[pg_test]
fn an_event_after_the_hand_off_is_refused() {
    let (A, _) = fresh_tenants();
    as_tenant(A);
    Spi::run("SELECT custos.record_event('before', 'x')").unwrap();
    crate::ledger::head::hand_off();
    assert_error(
        "SELECT custos.record_event('after', 'x')",
        "25000",
        "written after its transaction began to commit",
    );
    assert_eq!(count("SELECT count(*) FROM custos.events"), 1);
}

#[pg_test]
fn oversized_details_are_refused() {
    let (A, B) = fresh_tenants();
    as_tenant(A);
    assert_error(
        "SELECT custos.record_event('a', 'x', details => jsonb_build_object('blob', repeat('x', 2000000)))",
        "54000",
        "more than custos.max_details_bytes",
    );
    assert_error(
        "SELECT custos.record_event('a', 'x', details => '{\"a\": \"\\u0000\"}')",
        "22P05",
        "",
    );
    assert_eq!(count("SELECT count(*) FROM custos.events"), 0);
}

/// A plaintext in the sealed form would make every read of the event fail as tampered (a writer
/// could hide a tenant's timeline that way): refused where readers would try to open it.
#[pg_test]
fn plaintext_in_the_sealed_form_or_a_pseudonym_is_refused() {
    let (A, B) = fresh_tenants();
    as_tenant(A);
    assert_error(
        "INSERT INTO custos.events (action, entity_type, user_agent) VALUES ('login', 'user', 'enc3.hello')",
        "23514",
        "custos.events.user_agent cannot start with \"enc2.\" or \"enc3.\"",
    );
    assert_error(
        r#"SELECT custos.record_event('login', 'user', details => '{"n": 1, "note": "enc2.x.y"}')"#,
        "23514",
        "custos.events.details.note cannot start with",
    );
    // Nor may an actor be a pseudonym: readers would name another subject, or call it erased.
    assert_error(
        "INSERT INTO custos.events (action, entity_type, actor) VALUES ('login', 'user', 'subject:WlpaWlpaWlpaWlpaWlpaWg')",
        "23514",
        "custos.events.actor cannot be a pseudonym",
    );
    assert_error(
        "SELECT custos.record_event('login', 'user', actor => 'subject:5a5a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5a5a')",
        "23514",
        "custos.events.actor cannot be a pseudonym",
    );
    assert_eq!(count("SELECT count(*) FROM custos.events"), 0);
    // Only top-level strings are opened, so only they are checked; the prefix elsewhere is fine.
    Spi::run(
        r#"INSERT INTO custos.events (action, entity_type, actor, user_agent, details)
           VALUES ('login', 'user', 'subject:alice', 'Mozilla enc3.', '{"nested": {"v": "enc3.x"}, "list": ["enc2.y"], "enc3.key": 1}')"#,
    )
    .unwrap();
    assert_eq!(count("SELECT count(*) FROM custos.timeline()"), 1);
}

#[pg_test]
fn jsonb_key_order_and_spacing_do_not_matter() {
    let (A, B) = fresh_tenants();
    as_tenant(A);
    Spi::run(r#"SELECT custos.record_event('a', 'x', details => '{"b": 1, "a": {"d": 2.50, "c": [true, null]}}')"#).unwrap();
    Spi::run(r#"SELECT custos.record_event('a', 'x', details => '{"a":{"c":[true,null],"d":2.50},"b":1}')"#).unwrap();
    assert!(verify(A).0);
}

#[pg_test]
fn canonical_json_matches_jsonb_text_output() {
    // An export carries jsonb's text; the pure encoder must rebuild exactly those bytes from it.
    let mut docs: Vec<String> = vec![
        r#"{"b": 1, "a": 2, "aa": {"z": [], "y": {}}, "": null}"#.into(),
        r#"{"num": [1.50, -0, 1e3, 12345678901234567890.123, 0.000001, -2.5E-3]}"#.into(),
        r#"{"s": "quote\" backslash\\ nl\n tab\t cr\r bs\b ff\f ctl\u0001 del\u007f é 日本 😀 \/"}"#.into(),
        r#"{"nested": {"deeper": {"deepest": [true, false, null, "x", {"k": "v"}]}}}"#.into(),
        r#"{"k\u00e9y": 1, "kéy2": 2, "KEY": 3, "key": 4}"#.into(),
    ];
    let mut seed = 7u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let atoms = [
        "1",
        "-7.25",
        "true",
        "null",
        "\"a b\"",
        "\"\\u0002\\\"\"",
        "[]",
        "{}",
        "3.000",
        "\"ü\"",
    ];
    for _ in 0..200 {
        let n = next() % 6;
        let members: Vec<String> = (0..n)
            .map(|i| {
                let key: String = (0..(next() % 4))
                    .map(|k| (b'a' + ((next() + k) % 5) as u8) as char)
                    .collect();
                let v = if next() % 4 == 0 {
                    format!(
                        "[{}, {}]",
                        atoms[(next() % 10) as usize],
                        atoms[(next() % 10) as usize]
                    )
                } else {
                    atoms[(next() % 10) as usize].to_string()
                };
                format!("\"{key}{i}\": {v}")
            })
            .collect();
        docs.push(format!("{{{}}}", members.join(", ")));
    }
    for doc in docs {
        let text =
            Spi::get_one_with_args::<String>("SELECT $1::jsonb::text", &[doc.as_str().into()])
                .unwrap()
                .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            crate::ledger::chain::canonical_json_string(&parsed),
            text,
            "from {doc}"
        );
    }
}

/// A tenant-isolated business table owned by an ordinary role, tracked by custos.
fn tracked_orders() {
    Spi::run(
        "CREATE ROLE custos_test_owner NOLOGIN;
         GRANT custos_admin TO custos_test_owner;
         GRANT CREATE ON SCHEMA public TO custos_test_owner;
         SET LOCAL ROLE custos_test_owner;
         CREATE TABLE public.orders (id int PRIMARY KEY, tenant_id uuid NOT NULL, item text, qty int);
         SELECT custos.track_table('public.orders');
         RESET ROLE;",
    )
    .unwrap();
}

fn events_of(t: &str) -> Vec<(String, Option<String>, serde_json::Value)> {
    Spi::connect(|c| {
        c.select(
            &format!("SELECT action, entity_id, details FROM custos.events WHERE tenant_id = '{t}' ORDER BY seq"),
            None,
            &[],
        )?
        .map(|r| Ok((r.get::<String>(1)?.unwrap(), r.get::<String>(2)?, r.get::<pgrx::JsonB>(3)?.unwrap().0)))
        .collect::<pgrx::spi::Result<Vec<_>>>()
    })
    .unwrap()
}

#[pg_test]
fn track_table_records_every_change_in_the_rows_tenant() {
    let (A, B) = fresh_tenants();
    tracked_orders();
    Spi::run(&format!(
        "INSERT INTO public.orders VALUES (1, '{A}', 'apple', 3), (2, '{A}', 'pear', 1), (3, '{B}', 'plum', 9);
         UPDATE public.orders SET qty = qty + 1 WHERE id IN (1, 3);
         UPDATE public.orders SET id = 20 WHERE id = 2;
         DELETE FROM public.orders WHERE id = 1;"
    ))
    .unwrap();
    let a = events_of(A);
    let summary: Vec<String> = a
        .iter()
        .map(|(act, id, _)| format!("{act}:{}", id.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        summary,
        [
            "insert:1",
            "insert:2",
            "update:1",
            "update:2",
            "update:20",
            "delete:1"
        ]
    );
    let update = &a[2].2;
    assert_eq!(update["table"], "public.orders");
    assert_eq!(update["old"]["qty"], 3);
    assert_eq!(update["new"]["qty"], 4);
    assert_eq!(update["changed"], serde_json::json!(["qty"]));
    assert_eq!(a[3].2["key_changed"], true);
    assert_eq!(a[5].2["old"]["item"], "apple");
    // Plum belongs to B, whoever wrote it.
    let b: Vec<String> = events_of(B).iter().map(|e| e.0.clone()).collect();
    assert_eq!(b, ["insert", "update"]);
    assert!(verify(A).0);
    assert!(verify(B).0);
    let entity = Spi::get_one::<String>(&format!(
        "SELECT DISTINCT entity_type FROM custos.events WHERE tenant_id = '{A}'"
    ))
    .unwrap();
    assert_eq!(entity.as_deref(), Some("public.orders"));
}

/// Two new tenants, and one statement of 200 tracked orders (item 'item <id>', qty id) that
/// alternate between them.
fn two_tenants_of_200_tracked_orders() -> (&'static str, &'static str) {
    let (A, B) = fresh_tenants();
    tracked_orders();
    Spi::run(&format!(
        "INSERT INTO public.orders SELECT g, (ARRAY['{A}', '{B}']::uuid[])[1 + g % 2], 'item ' || g, g FROM generate_series(1, 200) g"
    ))
    .unwrap();
    (A, B)
}

/// A statement's captured events are written one tenant after another, so that a chain's
/// consecutive events share heap pages (which pages a batch lands on is the heap's choice).
#[pg_test]
fn captured_events_of_a_statement_are_written_one_tenant_after_another() {
    let (A, B) = two_tenants_of_200_tracked_orders();
    // Written in row order, both tenants' events would share every one of these pages.
    let (pages, shared) = Spi::get_two::<i64, i64>(&format!(
        "SELECT count(*), count(*) FILTER (WHERE tenants = 2)
           FROM (SELECT (ctid::text::point)[0] AS page, count(DISTINCT tenant_id) AS tenants
                   FROM custos.events WHERE tenant_id IN ('{A}', '{B}') GROUP BY 1) p"
    ))
    .unwrap();
    let (pages, shared) = (pages.unwrap_or(0), shared.unwrap_or(0));
    assert!(
        pages >= 8 && shared <= 3,
        "{shared} of {pages} pages hold events of both tenants"
    );
    assert!(verify(A).0 && verify(B).0);
}

/// The appender writes a flush's events 64 at a time and reuses the memory of each write for the
/// next: the values every event shares (action, entity type, role, actor, severity) are kept
/// apart from it, so the 200th event of a statement carries them as the first does.
#[pg_test]
fn every_event_of_a_long_flush_carries_its_own_fields() {
    let (A, B) = two_tenants_of_200_tracked_orders();
    let odd = count(&format!(
        "SELECT count(*) FROM custos.events
          WHERE tenant_id IN ('{A}', '{B}') AND action = 'insert' AND entity_type = 'public.orders'
            AND severity = 'info' AND db_role = current_user AND actor = current_user
            AND details->'new'->>'item' = 'item ' || entity_id AND (details->'new'->>'qty')::int = entity_id::int"
    ));
    assert_eq!(
        odd, 200,
        "every event names its own row and shares the statement's fields"
    );
    let ids = Spi::get_one::<String>(&format!(
        "SELECT string_agg(DISTINCT (seq = (SELECT count(*) FROM custos.events e2 WHERE e2.tenant_id = e.tenant_id AND e2.seq <= e.seq))::text, ',')
           FROM custos.events e WHERE tenant_id IN ('{A}', '{B}')"
    ))
    .unwrap();
    assert_eq!(
        ids.as_deref(),
        Some("true"),
        "seqs run from 1 without a gap in each tenant"
    );
    assert!(verify(A).0 && verify(B).0);
}

/// Capture writes the primary key's entries itself when it is custos.events' only index; an index
/// added to the table is written as well (through the executor's path), and both answer.
#[pg_test]
fn captured_events_enter_every_index_of_the_ledger() {
    let (A, B) = fresh_tenants();
    tracked_orders();
    let insert = |from: i64| {
        Spi::run(&format!(
            "INSERT INTO public.orders SELECT g, (ARRAY['{A}', '{B}']::uuid[])[1 + g % 2], 'item', g
               FROM generate_series({from}, {from} + 99) g"
        ))
        .unwrap()
    };
    insert(1);
    Spi::run("CREATE INDEX events_by_entity ON custos.events (tenant_id, entity_id)").unwrap();
    insert(101);
    Spi::run("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off").unwrap();
    let by_key = count(&format!(
        "SELECT count(*) FROM custos.events WHERE tenant_id = '{A}' AND seq > 0"
    ));
    let by_entity = count(&format!(
        "SELECT count(*) FROM custos.events WHERE tenant_id = '{A}' AND entity_id > ''"
    ));
    // The index was built from the first 50 events of A; the next 50 entered it as written.
    assert_eq!((by_key, by_entity), (100, 100));
    let plan: Vec<String> = Spi::connect(|client| {
        let query = format!(
            "EXPLAIN SELECT count(*) FROM custos.events WHERE tenant_id = '{A}' AND entity_id > ''"
        );
        client
            .select(&query, None, &[])
            .unwrap()
            .filter_map(|row| row.get::<String>(1).ok().flatten())
            .collect()
    });
    assert!(
        plan.iter().any(|line| line.contains("events_by_entity")),
        "{plan:?}"
    );
    assert!(verify(A).0 && verify(B).0);
}

#[pg_test]
fn track_table_records_truncate_per_tenant() {
    let (A, B) = fresh_tenants();
    tracked_orders();
    Spi::run(&format!("INSERT INTO public.orders VALUES (1, '{A}', 'x', 1), (2, '{B}', 'y', 1); TRUNCATE public.orders;")).unwrap();
    assert_eq!(events_of(A).last().unwrap().0, "truncate");
    assert_eq!(events_of(B).last().unwrap().0, "truncate");
}

#[pg_test]
fn tracked_writes_by_an_ordinary_role_record_its_role_and_actor() {
    let (A, B) = fresh_tenants();
    tracked_orders();
    Spi::run(&format!(
        "CREATE ROLE custos_test_clerk NOLOGIN;
         GRANT INSERT, UPDATE ON public.orders TO custos_test_clerk;
         SET LOCAL ROLE custos_test_clerk;
         SELECT custos.set_actor('clerk@shop');
         INSERT INTO public.orders VALUES (7, '{A}', 'fig', 2);
         RESET ROLE;"
    ))
    .unwrap();
    let who = Spi::get_one::<String>(&format!(
        "SELECT actor || '/' || db_role FROM custos.events WHERE tenant_id = '{A}'"
    ))
    .unwrap();
    assert_eq!(who.as_deref(), Some("clerk@shop/custos_test_clerk"));
}

#[pg_test]
fn composite_keys_and_custom_tenant_columns() {
    let (A, B) = fresh_tenants();
    Spi::run(&format!(
        "CREATE TABLE public.lines (org uuid NOT NULL, order_id int, line int, sku text, PRIMARY KEY (order_id, line));
         SELECT custos.track_table('public.lines', 'org', 'order_line');
         INSERT INTO public.lines VALUES ('{A}', 10, 1, 'a'), ('{A}', 10, 2, 'b');"
    ))
    .unwrap();
    let ids = Spi::get_one::<String>(&format!(
        "SELECT string_agg(entity_type || ' ' || entity_id, '; ' ORDER BY seq) FROM custos.events WHERE tenant_id = '{A}'"
    ))
    .unwrap();
    assert_eq!(
        ids.as_deref(),
        Some("order_line [10, 1]; order_line [10, 2]")
    );
    // A composite key is written in key order, whatever the column order.
    Spi::run(&format!(
        "CREATE TABLE public.lines_by_line (org uuid NOT NULL, order_id int, line int, PRIMARY KEY (line, order_id));
         SELECT custos.track_table('public.lines_by_line', 'org', 'line_first');
         INSERT INTO public.lines_by_line VALUES ('{B}', 10, 3);"
    ))
    .unwrap();
    let id = Spi::get_one::<String>(&format!(
        "SELECT entity_id FROM custos.events WHERE tenant_id = '{B}'"
    ))
    .unwrap();
    assert_eq!(id.as_deref(), Some("[3, 10]"));
}

#[pg_test]
fn track_table_refuses_what_it_cannot_do() {
    Spi::run(
        "CREATE TABLE public.no_pk (tenant_id uuid, v int);
         CREATE TABLE public.no_tenant (id int PRIMARY KEY, v int);
         CREATE TABLE public.text_tenant (id int PRIMARY KEY, tenant_id text);",
    )
    .unwrap();
    assert_error(
        "SELECT custos.track_table('public.no_pk')",
        "55000",
        "has no primary key",
    );
    assert_error(
        "SELECT custos.track_table('public.no_tenant')",
        "42703",
        "no uuid column tenant_id",
    );
    assert_error(
        "SELECT custos.track_table('public.text_tenant')",
        "42703",
        "no uuid column tenant_id",
    );
    assert_error(
        "SELECT custos.track_table('custos.alerts')",
        "42809",
        "belongs to custos",
    );
    assert_error(
        "SELECT custos.untrack_table('public.no_pk')",
        "55000",
        "is not tracked",
    );
    // Tracking is for the table's owner (or a superuser).
    Spi::run(
        "CREATE TABLE public.theirs (id int PRIMARY KEY, tenant_id uuid);
         CREATE ROLE custos_test_stranger NOLOGIN; GRANT custos_admin TO custos_test_stranger;
         SET LOCAL ROLE custos_test_stranger;",
    )
    .unwrap();
    assert_error(
        "SELECT custos.track_table('public.theirs')",
        "42501",
        "must be owner of table",
    );
}

#[pg_test]
fn untrack_table_stops_recording_and_says_so() {
    let (A, B) = fresh_tenants();
    tracked_orders();
    as_tenant(A);
    assert_eq!(count("SELECT count(*) FROM custos.tracked_tables WHERE table_name = 'public.orders'::regclass"), 1);
    Spi::run("SELECT custos.untrack_table('public.orders')").unwrap();
    Spi::run(&format!(
        "INSERT INTO public.orders VALUES (1, '{A}', 'x', 1)"
    ))
    .unwrap();
    let actions: Vec<String> = events_of(A).iter().map(|e| e.0.clone()).collect();
    assert_eq!(actions, ["custos.untrack_table"]);
    assert_eq!(count("SELECT count(*) FROM custos.tracked_tables"), 0);
}

#[pg_test]
fn dropping_the_ledger_is_refused() {
    for sql in [
        "DROP EXTENSION custos",
        "DROP EXTENSION IF EXISTS pg_trgm, custos CASCADE",
        "DROP SCHEMA custos CASCADE",
        "ALTER EXTENSION custos DROP TABLE custos.events",
    ] {
        assert_error(sql, "42501", "custos holds the audit ledger");
    }
    // Other extensions and schemas are none of custos' business. (Dropping custos after setting
    // custos.allow_ledger_drop is tested from a client: here it would drop this test function.)
    Spi::run("CREATE SCHEMA custos_test_other; DROP SCHEMA custos_test_other").unwrap();
}

#[pg_test]
fn track_table_can_group_rows_into_events() {
    let (A, B) = fresh_tenants();
    Spi::run(&format!(
        "CREATE TABLE public.bulk (id int PRIMARY KEY, tenant_id uuid NOT NULL, v int);
         SELECT custos.track_table('public.bulk', rows_per_event => 100);
         INSERT INTO public.bulk SELECT g, CASE WHEN g % 4 = 0 THEN '{B}'::uuid ELSE '{A}'::uuid END, g FROM generate_series(1, 250) g;
         UPDATE public.bulk SET v = v + 1 WHERE id <= 10;
         DELETE FROM public.bulk WHERE id > 240;"
    ))
    .unwrap();
    let rows_in = |t: &str, action: &str| {
        count(&format!(
            "SELECT coalesce(sum(jsonb_array_length(details->'rows')), 0) FROM custos.events WHERE tenant_id = '{t}' AND action = '{action}'"
        ))
    };
    assert_eq!(
        (rows_in(A, "insert"), rows_in(B, "insert")),
        (188, 62),
        "every row is recorded once, in its tenant"
    );
    assert_eq!(rows_in(A, "update") + rows_in(B, "update"), 10);
    assert_eq!(rows_in(A, "delete") + rows_in(B, "delete"), 10);
    assert!(count(&format!("SELECT max(jsonb_array_length(details->'rows')) FROM custos.events WHERE tenant_id = '{A}'")) <= 100);
    let update = Spi::get_one::<pgrx::JsonB>(&format!(
        "SELECT details->'rows'->0 FROM custos.events WHERE tenant_id = '{A}' AND action = 'update'"
    ))
    .unwrap()
    .unwrap()
    .0;
    assert_eq!(update["key"], "1");
    assert_eq!(update["new"]["v"], 2);
    assert_eq!(update["old"]["v"], 1);
    assert!(verify(A).0 && verify(B).0);
    assert_error(
        "SELECT custos.track_table('public.bulk', rows_per_event => 0)",
        "22023",
        "rows_per_event must be between 1 and 1000",
    );
}

#[pg_test]
fn capture_keeps_tenants_apart_and_survives_spilled_transition_tables() {
    let (A, B) = fresh_tenants();
    Spi::run(&format!(
        "CREATE TABLE public.docs (id int PRIMARY KEY, tenant_id uuid, price numeric, ok bool, meta jsonb, at date);
         SELECT custos.track_table('public.docs');
         INSERT INTO public.docs VALUES (1, '{A}', 'NaN', true, '{{\"k\": [1, 2]}}', '2026-01-02');
         UPDATE public.docs SET tenant_id = '{B}', price = 5 WHERE id = 1;"
    ))
    .unwrap();
    let a = events_of(A);
    let b = events_of(B);
    assert_eq!(a.len(), 2, "insert, then the row leaving A");
    assert_eq!(a[0].2["new"]["price"], "NaN", "NaN is not a JSON number");
    assert_eq!(a[0].2["new"]["ok"], true);
    assert_eq!(a[0].2["new"]["meta"]["k"][1], 2);
    assert_eq!(a[0].2["new"]["at"], "2026-01-02");
    assert_eq!(a[1].2["tenant_changed"], true);
    assert!(
        a[1].2.get("new").is_none(),
        "A never sees B's version of the row"
    );
    assert_eq!(b.len(), 1);
    assert!(
        b[0].2.get("old").is_none(),
        "B never sees A's version of the row"
    );
    assert_eq!(b[0].2["new"]["price"], 5);
    // A row without a tenant is refused, and the statement with it, rows before it included:
    // none of them reaches the events of the next statement (whose sink reuses the buffers).
    assert_error(
        &format!("INSERT INTO public.docs (id, tenant_id) VALUES (2, '{A}'), (3, NULL)"),
        "23502",
        "has no tenant in column tenant_id",
    );
    assert_eq!(count("SELECT count(*) FROM public.docs"), 1);
    Spi::run(&format!(
        "INSERT INTO public.docs (id, tenant_id) VALUES (4, '{A}')"
    ))
    .unwrap();
    let a = events_of(A);
    assert_eq!(a.len(), 3, "only the row of the statement that succeeded");
    assert_eq!(a[2].2["new"]["id"], 4);

    // Transition tables larger than work_mem are read back from disk.
    Spi::run(&format!(
        "SET LOCAL work_mem = '64kB';
         SELECT custos.track_table('public.docs', rows_per_event => 50);
         INSERT INTO public.docs SELECT g, '{A}', g, g % 2 = 0, NULL, NULL FROM generate_series(10, 20009) g;
         UPDATE public.docs SET price = price + 1 WHERE id >= 10;"
    ))
    .unwrap();
    let rows = count(&format!(
        "SELECT sum(jsonb_array_length(details->'rows')) FROM custos.events WHERE tenant_id = '{A}' AND details ? 'rows'"
    ));
    assert_eq!(rows, 40_000);
    let tracked = Spi::get_one::<String>(
        "SELECT format('%s %s %s %s', tenant_column, entity_type, rows_per_event, key_columns) FROM custos.tracked_tables WHERE table_name = 'public.docs'::regclass",
    )
    .unwrap();
    assert_eq!(tracked.as_deref(), Some("tenant_id public.docs 50 {id}"));
    assert!(verify(A).0 && verify(B).0);
}

/// Capture assembles the jsonb of one-row events from the columns' values (numerics, integers,
/// booleans, strings, nulls) rather than parsing their text: what it stores must be byte for byte
/// what jsonb_in makes of the same text, and the chain must verify. Floats and json columns take
/// the parsing path, checked the same way.
#[pg_test]
fn captured_documents_are_stored_exactly_as_jsonb_in_stores_them() {
    let (A, B) = fresh_tenants();
    Spi::run(&format!(
        "CREATE DOMAIN public.moment AS timestamptz;
         CREATE TABLE public.typed (id int8 PRIMARY KEY, tenant_id uuid, small int2, mid int4, num numeric(20, 4),
                                    big numeric, flag bool, note text, code varchar(10), day date, at timestamptz,
                                    ref uuid, tags text[], \"Odd \"\"name\"\"\" text, stamp public.moment, huge int8);
         CREATE TABLE public.loose (id int PRIMARY KEY, tenant_id uuid, ratio float8, meta jsonb, doc json);
         SELECT custos.track_table('public.typed');
         SELECT custos.track_table('public.loose');
         INSERT INTO public.typed
         SELECT g, CASE WHEN g % 4 = 0 THEN '{B}'::uuid ELSE '{A}' END, (g - 20)::int2, g * -1000003, (g - 20) * 1.2345,
                CASE g % 5 WHEN 0 THEN 'NaN' WHEN 1 THEN -0.0 WHEN 2 THEN 12345678901234567890.123456789
                           WHEN 3 THEN 1e-30 ELSE power(10::numeric, g) END,
                g % 3 = 0, CASE WHEN g % 2 = 0 THEN E'q\"b\\\\t\\tn\\nc\\x01 é ☃ 😀 ' || g END,
                'c' || g, date '2026-01-01' + g, timestamptz '2026-01-01 00:00:00.123456+00' + g * interval '1 hour',
                gen_random_uuid(), ARRAY['a', 'b \"' || g], g::text,
                CASE WHEN g % 3 = 0 THEN timestamptz '2026-03-01 10:00+00' ELSE timestamptz '2026-03-02 11:30:00.5+00' END,
                CASE g % 4 WHEN 0 THEN -9223372036854775808 WHEN 1 THEN 9223372036854775807 WHEN 2 THEN 0
                           ELSE (g - 20) * 100000000 END
           FROM generate_series(1, 40) g;
         UPDATE public.typed SET note = 'changed', num = num + 1 WHERE id % 3 = 0;
         UPDATE public.typed SET id = id + 100 WHERE id IN (1, 2);
         UPDATE public.typed SET tenant_id = '{B}' WHERE id = 5;
         DELETE FROM public.typed WHERE id % 7 = 0;
         INSERT INTO public.loose VALUES (1, '{A}', 1e20, '{{\"b\": [1, 2.50], \"a\": null}}', '{{ \"z\" : 1 }}'),
                                        (2, '{A}', -0.0, '5', '[]'), (3, '{A}', 0.1, NULL, NULL);"
    ))
    .unwrap();
    let differ = count(&format!(
        "SELECT count(*) FROM custos.events WHERE tenant_id IN ('{A}', '{B}') AND action <> 'custos.track_table'
            AND tests.jsonb_test_bytes(details) IS DISTINCT FROM tests.jsonb_test_bytes(details::text::jsonb)"
    ));
    assert_eq!(differ, 0);
    // Rows sharing a timestamp print it once (remembered from row to row): each row still gets
    // its own, a domain over timestamptz included.
    let misdated = count(&format!(
        "SELECT count(*) FROM custos.events WHERE tenant_id IN ('{A}', '{B}') AND entity_type = 'public.typed'
            AND action = 'insert' AND (details->'new'->>'stamp')::timestamptz
                <> CASE WHEN (details->'new'->>'id')::int % 3 = 0 THEN timestamptz '2026-03-01 10:00+00'
                        ELSE timestamptz '2026-03-02 11:30:00.5+00' END"
    ));
    assert_eq!(misdated, 0);
    let recorded = count(&format!("SELECT count(*) FROM custos.events WHERE tenant_id IN ('{A}', '{B}') AND entity_type IN ('public.typed', 'public.loose')"));
    // 40 inserts, 13 updates, 2 key changes and 1 tenant change (two events each), 5 deletes, 3 inserts.
    assert_eq!(recorded, 40 + 13 + 4 + 2 + 5 + 3);
    let one = Spi::get_one::<pgrx::JsonB>(&format!(
        "SELECT details FROM custos.events WHERE tenant_id = '{A}' AND entity_type = 'public.typed' AND entity_id = '14' AND action = 'insert'"
    ))
    .unwrap()
    .unwrap()
    .0;
    assert_eq!(one["new"]["note"], "q\"b\\t\tn\nc\u{1} é ☃ 😀 14");
    assert_eq!(one["new"]["flag"], false);
    assert_eq!(one["new"]["mid"], -14_000_042);
    assert_eq!(one["new"]["small"], -6);
    assert_eq!(one["new"]["Odd \"name\""], "14");
    assert_eq!(one["new"]["tags"], "{a,\"b \\\"14\"}");
    let misprinted = Spi::get_two::<i64, i64>(&format!(
        "SELECT count(*) FILTER (WHERE e.details->'new'->>'ref' <> t.ref::text
                                    OR e.details->'new'->>'tenant_id' <> t.tenant_id::text
                                    OR e.details->'new'->>'code' <> t.code OR (e.details->'new'->>'mid')::int <> t.mid),
                count(*)
           FROM custos.events e JOIN public.typed t ON e.entity_id = t.id::text
          WHERE e.tenant_id = '{A}' AND e.action = 'insert' AND t.id <> 5 -- moved to B since"
    ))
    .unwrap();
    assert_eq!(
        misprinted,
        (Some(0), Some(24)),
        "uuids, varchar and integers print as their output functions print them"
    );
    assert!(verify(A).0 && verify(B).0);
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Up to `max` characters drawn from what JSON escapes and what it does not.
fn generated_word(state: &mut u64, min: u64, max: u64) -> String {
    const ALPHABET: &[char] = &[
        'a', 'b', '_', ' ', '"', '\\', 'é', '☃', '\u{1}', '\n', '\t', '/', '\u{7f}',
    ];
    let len = min + xorshift(state) % (max - min + 1);
    (0..len)
        .map(|_| ALPHABET[(xorshift(state) % ALPHABET.len() as u64) as usize])
        .collect()
}

/// Capture hashes a document's text and stores the jsonb it assembled beside it: printed as jsonb
/// prints, that jsonb must give back exactly the text, whatever the names and values (quotes,
/// backslashes, control characters, non-ASCII, booleans, nulls; numerics are covered by
/// captured_documents_are_stored_exactly_as_jsonb_in_stores_them). 500 generated documents.
#[pg_test]
fn assembled_capture_documents_print_as_their_text() {
    use crate::capture::changes::{row_details, row_details_stored_into, JsonValue, RowJson};
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for case in 0..500u32 {
        let mut names: Vec<String> = (0..1 + xorshift(&mut state) % 40)
            .map(|_| generated_word(&mut state, 1, 8))
            .collect();
        names.sort_by(|a, b| crate::pg::jsonb::key_order(a.as_bytes(), b.as_bytes()));
        names.dedup();
        let mut row = || {
            let mut r = RowJson::default();
            r.begin();
            for name in &names {
                match xorshift(&mut state) % 4 {
                    0 => {
                        r.push(name, JsonValue::Null);
                        r.push_stored(pg_sys::JENTRY_ISNULL, &[]);
                    }
                    1 => {
                        let b = xorshift(&mut state).is_multiple_of(2);
                        r.push(name, JsonValue::Raw(if b { "true" } else { "false" }));
                        let kind = if b {
                            pg_sys::JENTRY_ISBOOL_TRUE
                        } else {
                            pg_sys::JENTRY_ISBOOL_FALSE
                        };
                        r.push_stored(kind, &[]);
                    }
                    _ => {
                        let text = generated_word(&mut state, 0, 24);
                        r.push(name, JsonValue::Text(&text));
                        r.push_stored(pg_sys::JENTRY_ISSTRING, text.as_bytes());
                    }
                }
            }
            r.finish();
            r
        };
        let (old, new) = (row(), row());
        let table = generated_word(&mut state, 1, 20);
        let changed: Vec<&str> = names.iter().step_by(3).map(String::as_str).collect();
        let (old, new, changed, flag) = match case % 4 {
            0 => (None, Some(&new), None, None),
            1 => (Some(&old), None, None, None),
            2 => (Some(&old), Some(&new), Some(&changed[..]), None),
            _ => (Some(&old), None, None, Some(("tenant_changed", true))),
        };
        let text = row_details(&table, old, new, changed, flag);
        let layout =
            crate::pg::jsonb::ObjectLayout::new(names.iter().map(String::as_bytes)).unwrap();
        let mut stored = Vec::new();
        row_details_stored_into(&mut stored, &layout, &table, old, new, changed, flag).unwrap();
        let mut printed = Vec::new();
        crate::pg::jsonb::print_container(&stored[pg_sys::VARHDRSZ..], &mut printed).unwrap();
        assert_eq!(String::from_utf8(printed).unwrap(), text, "case {case}");
        // And jsonb itself agrees: the stored bytes are what jsonb_in makes of the text.
        let same = Spi::get_one_with_args::<bool>(
            "SELECT tests.jsonb_test_bytes($1::jsonb) = $2",
            &[
                text.as_str().into(),
                stored[pg_sys::VARHDRSZ..].to_vec().into(),
            ],
        );
        assert_eq!(same, Ok(Some(true)), "case {case}: {text}");
    }
}

/// An event refused while capture writes a batch (here the 1,500th row's key, too long for
/// entity_id) takes the whole statement with it, including the 1,000 events already written,
/// and the session goes on with an intact chain.
#[pg_test]
fn capture_refused_mid_batch_writes_nothing_and_the_chain_goes_on() {
    let (A, _) = fresh_tenants();
    Spi::run("CREATE TABLE public.keyed (k text PRIMARY KEY, tenant_id uuid); SELECT custos.track_table('public.keyed');").unwrap();
    Spi::run(&format!(
        "DO $$ BEGIN
            INSERT INTO public.keyed SELECT CASE WHEN g = 1500 THEN repeat('k', 1001) ELSE g::text END, '{A}'
              FROM generate_series(1, 2000) g;
            RAISE EXCEPTION 'not refused';
         EXCEPTION WHEN check_violation THEN NULL;
         END $$"
    ))
    .unwrap();
    let events = format!("SELECT count(*) FROM custos.events WHERE tenant_id = '{A}'");
    assert_eq!(count(&events), 0);
    assert_eq!(count("SELECT count(*) FROM public.keyed"), 0);
    Spi::run(&format!(
        "INSERT INTO public.keyed SELECT g::text, '{A}' FROM generate_series(1, 3) g"
    ))
    .unwrap();
    assert_eq!(count(&events), 3);
    assert_eq!(
        count(&format!(
            "SELECT min(seq) FROM custos.events WHERE tenant_id = '{A}'"
        )),
        1
    );
    assert!(verify(A).0);
    assert_error(
        &format!("INSERT INTO public.keyed VALUES (repeat('x', 1001), '{A}')"),
        "23514",
        "entity_id must be at most 1000 characters",
    );
}

/// Capture writes events to the heap and indexes itself; once custos.events has another INSERT
/// trigger it goes through INSERT, so that trigger sees every captured event.
#[pg_test]
fn capture_inserts_through_the_executor_when_the_ledger_has_other_insert_triggers() {
    // CREATE TRIGGER needs this lock; taken first, before the test writes, so that tests running
    // beside this one wait instead of deadlocking with it.
    Spi::run("LOCK TABLE custos.events IN SHARE ROW EXCLUSIVE MODE").unwrap();
    let (A, B) = fresh_tenants();
    Spi::run(&format!(
        "CREATE TABLE public.events_seen (n bigserial, tenant_id uuid, seq bigint);
         CREATE FUNCTION public.note_event() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO public.events_seen (tenant_id, seq) VALUES (NEW.tenant_id, NEW.seq); RETURN NULL; END $$;
         CREATE TABLE public.captured_docs (id int PRIMARY KEY, tenant_id uuid, v int);
         SELECT custos.track_table('public.captured_docs');
         INSERT INTO public.captured_docs (id, tenant_id) SELECT g, CASE WHEN g % 3 = 0 THEN '{B}'::uuid ELSE '{A}' END
           FROM generate_series(1, 2500) g;
         CREATE TRIGGER note AFTER INSERT ON custos.events FOR EACH ROW EXECUTE FUNCTION public.note_event();
         CREATE ROLE custos_test_updater NOLOGIN;
         GRANT SELECT, UPDATE ON public.captured_docs TO custos_test_updater;
         SET LOCAL ROLE custos_test_updater;
         UPDATE public.captured_docs SET v = 1 WHERE id <= 20;
         RESET ROLE;"
    ))
    .unwrap();
    // The executor's INSERT runs with custos' rights (a writer of captured_docs has none on the
    // ledger, and row-level security would keep it to one tenant); the event names the writer.
    assert_eq!(
        count("SELECT count(*) FROM custos.events WHERE action = 'update' AND db_role = 'custos_test_updater'"),
        20
    );
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM custos.events WHERE tenant_id = '{A}'"
        )),
        1667 + 14
    );
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM custos.events WHERE tenant_id = '{B}'"
        )),
        833 + 6
    );
    assert_eq!(
        count("SELECT count(*) FROM public.events_seen"),
        20,
        "only the events written after the trigger existed"
    );
    // Rows of A and B alternate in the statement; the INSERT writes them one tenant after another.
    assert_eq!(
        count("SELECT count(*) FILTER (WHERE switched) FROM
                 (SELECT tenant_id <> lag(tenant_id) OVER (ORDER BY n) AS switched FROM public.events_seen) s"),
        1
    );
    assert_eq!(
        count(&format!(
            "SELECT min(seq) FROM public.events_seen WHERE tenant_id = '{A}'"
        )),
        1668,
        "the executor's events continue the chain the direct writes left"
    );
    // The primary key finds every directly written row (verify scans it), and refuses duplicates.
    assert!(verify(A).0 && verify(B).0);
    assert_eq!(
        count(&format!(
            "SELECT max(seq) FROM custos.events WHERE tenant_id = '{A}'"
        )),
        1681
    );
}

const MASTER: &str = "1111111111111111111111111111111111111111111111111111111111111111";

/// Tenant `t` with sealing on, the master key set for this transaction.
fn encrypted_tenant(t: &str) {
    Spi::run(&format!(
        "SET LOCAL custos.master_key = '{MASTER}';
         SELECT custos.set_tenant('{t}');
         SELECT custos.set_setting('ledger.encrypt', 'true');
         SELECT custos.set_setting('ledger.encrypted_detail_keys', '\"email\"');"
    ))
    .unwrap();
}

/// Capture into a tenant that seals: the actor is pseudonymised and a sealed details key changes
/// the document after capture wrote its text, so the chain must hash the sealed document (as
/// printed), not the text capture wrote. Read back through custos.event, it is opened.
#[pg_test]
fn capture_into_a_sealing_tenant_hashes_what_is_stored() {
    let (A, _) = fresh_tenants();
    encrypted_tenant(A);
    Spi::run(&format!(
        "SELECT custos.set_setting('ledger.encrypted_detail_keys', '\"table,email\"');
         SET LOCAL custos.actor = 'carol';
         CREATE TABLE public.sealed_docs (id int PRIMARY KEY, tenant_id uuid, note text);
         SELECT custos.track_table('public.sealed_docs');
         INSERT INTO public.sealed_docs SELECT g, '{A}', 'n' || g FROM generate_series(1, 5) g;
         UPDATE public.sealed_docs SET note = 'changed' WHERE id = 2;"
    ))
    .unwrap();
    let stored = Spi::get_one::<String>(&format!(
        "SELECT string_agg(actor || ' ' || (details->>'table'), '; ') FROM custos.events
          WHERE tenant_id = '{A}' AND entity_type = 'public.sealed_docs'"
    ))
    .unwrap()
    .unwrap();
    assert_eq!(stored.matches("enc3.").count(), 6, "{stored}");
    assert_eq!(stored.matches("subject:").count(), 6, "{stored}");
    assert!(
        !stored.contains("carol") && !stored.contains("public.sealed_docs"),
        "{stored}"
    );
    assert!(verify(A).0);
    let opened = Spi::get_one::<String>(&format!(
        "SELECT e.actor || ' ' || (e.details->>'table') || ' ' || (e.details->'new'->>'note')
           FROM custos.events s, custos.event(s.id) e
          WHERE s.tenant_id = '{A}' AND s.action = 'update'"
    ))
    .unwrap();
    assert_eq!(opened.as_deref(), Some("carol public.sealed_docs changed"));
}

/// Key lookups run as the superuser: a writer's search_path must not choose the operators they
/// use. A schema of the writer's placed before pg_catalog offers an `=` on uuids that would report
/// who runs it; sealing a new subject's values (a key lookup and insert) must not call it.
#[pg_test]
fn a_writers_search_path_cannot_supply_operators_to_key_lookups() {
    let (A, _) = fresh_tenants();
    encrypted_tenant(A);
    // error_of makes its helper function on first use: here, before the role switch.
    assert_eq!(error_of("SELECT 1"), None);
    Spi::run(
        "CREATE ROLE custos_test_hijacker NOLOGIN;
         GRANT custos_writer TO custos_test_hijacker;
         CREATE SCHEMA hijack AUTHORIZATION custos_test_hijacker;
         SET LOCAL ROLE custos_test_hijacker;
         CREATE FUNCTION hijack.eq(uuid, uuid) RETURNS boolean LANGUAGE plpgsql
             AS $$ BEGIN RAISE EXCEPTION 'hijacked: ran as %', current_user; END $$;
         CREATE OPERATOR hijack.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = hijack.eq);
         SET LOCAL search_path = hijack, pg_catalog;",
    )
    .unwrap();
    // The operator is live for the writer's own queries.
    assert_error(
        "SELECT gen_random_uuid() = gen_random_uuid()",
        "P0001",
        "hijacked: ran as custos_test_hijacker",
    );
    // A new subject: its key is looked up, made and stored by SPI as the superuser.
    Spi::run(
        "INSERT INTO custos.events (action, entity_type, entity_id, actor, ip_address)
         VALUES ('login', 'user', 'mallory', 'mallory', '10.1.2.3')",
    )
    .unwrap();
    Spi::run("RESET search_path; RESET ROLE").unwrap();
    let stored = Spi::get_one::<String>(&format!(
        "SELECT ip_address FROM custos.events WHERE tenant_id = '{A}' AND action = 'login' ORDER BY seq DESC LIMIT 1"
    ))
    .unwrap()
    .unwrap();
    assert!(stored.starts_with("enc3."), "{stored}");
}

fn sealed_event(actor: &str, email: &str) -> String {
    Spi::get_one::<String>(&format!(
        "INSERT INTO custos.events (action, entity_type, entity_id, actor, details, ip_address, user_agent)
         VALUES ('login', 'user', '{actor}', '{actor}', '{{\"email\": \"{email}\", \"n\": 1}}', '10.1.2.3/32', 'Firefox')
         RETURNING id::text"
    ))
    .unwrap()
    .unwrap()
}

#[pg_test]
fn sealed_fields_are_ciphertext_at_rest_and_plaintext_through_timeline() {
    let (A, B) = fresh_tenants();
    encrypted_tenant(A);
    let id = sealed_event("alice", "alice@example.com");
    let stored = Spi::get_one::<String>(&format!(
        "SELECT ip_address || ' ' || user_agent || ' ' || (details->>'email') FROM custos.events WHERE id = '{id}'"
    ))
    .unwrap()
    .unwrap();
    assert_eq!(stored.matches("enc3.").count(), 3, "{stored}");
    assert!(!stored.contains("alice@") && !stored.contains("10.1.2.3"));
    // Values and pseudonyms in the previous forms (the key named by its full id, the subject
    // reference as uuid text) still open.
    let previous = Spi::get_one::<String>(&format!(
        "SELECT custos_internal.reveal(e.tenant_id, e.id, 'ip_address',
                  'enc2.' || translate(rtrim(encode(uuid_send(k.id), 'base64'), '='), '+/', '-_')
                          || '.' || split_part(e.ip_address, '.', 3))
                || ' ' || custos_internal.reveal_actor(e.tenant_id, 'subject:' || k.subject_ref)
           FROM custos.events e JOIN custos.subject_keys k ON k.tenant_id = e.tenant_id AND k.subject = 'alice'
          WHERE e.id = '{id}'"
    ))
    .unwrap();
    assert_eq!(previous.as_deref(), Some("10.1.2.3 alice"));
    let seen = Spi::get_one::<String>(&format!(
        "SELECT ip_address || ' ' || user_agent || ' ' || (details->>'email') || ' ' || (details->>'n') FROM custos.event('{id}')"
    ))
    .unwrap()
    .unwrap();
    assert_eq!(seen, "10.1.2.3 Firefox alice@example.com 1");
    assert!(
        verify(A).0,
        "the chain covers the ciphertext and needs no key"
    );
    // Every read left a chained access-log row.
    Spi::run("SELECT count(*) FROM custos.timeline(by_actor => 'alice')").unwrap();
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM custos.access_log WHERE tenant_id = '{A}'"
        )),
        2
    );
    let functions = Spi::get_one::<String>(&format!(
        "SELECT string_agg(function || ':' || rows_returned, ' ' ORDER BY seq) FROM custos.access_log WHERE tenant_id = '{A}'"
    ))
    .unwrap();
    assert_eq!(
        functions.as_deref(),
        Some("custos.event:1 custos.timeline:1")
    );
    assert_eq!(
        Spi::get_one::<bool>(&format!("SELECT ok FROM custos.verify_access_log('{A}')")).unwrap(),
        Some(true)
    );
    // Another tenant cannot open it, even through the internal function.
    let sealed_ip = Spi::get_one::<String>(&format!(
        "SELECT ip_address FROM custos.events WHERE id = '{id}'"
    ))
    .unwrap()
    .unwrap();
    Spi::run("CREATE ROLE custos_test_peer NOLOGIN; GRANT custos_auditor TO custos_test_peer")
        .unwrap();
    Spi::run(&format!(
        "SELECT custos.set_tenant('{B}'); SET LOCAL ROLE custos_test_peer"
    ))
    .unwrap();
    assert_eq!(count("SELECT count(*) FROM custos.timeline()"), 0);
    assert_error(
        &format!("SELECT custos_internal.reveal('{A}', '{id}', 'ip_address', '{sealed_ip}')"),
        "42501",
        "permission denied for function reveal",
    );
    Spi::run("RESET ROLE").unwrap();
}

#[pg_test]
fn ciphertext_moved_to_another_row_or_tenant_does_not_open() {
    let (A, B) = tamper_test_tenants();
    encrypted_tenant(A);
    let first = sealed_event("alice", "a@x");
    let second = sealed_event("bob", "b@x");
    tamper(&format!(
        "UPDATE custos.events SET ip_address = (SELECT ip_address FROM custos.events WHERE id = '{first}') WHERE id = '{second}'"
    ));
    assert_error(
        &format!("SELECT * FROM custos.event('{second}')"),
        "XX001",
        "cannot be opened",
    );
    // The same ciphertext presented as another tenant's does not open either.
    assert_error(
        &format!("SELECT custos_internal.reveal('{B}', '{first}', 'ip_address', (SELECT ip_address FROM custos.events WHERE id = '{first}'))"),
        "XX001",
        "cannot be opened",
    );
    // Flipped ciphertext: refused by name, and the chain says where.
    tamper(&format!("UPDATE custos.events SET user_agent = overlay(user_agent placing 'A' from 60 for 1) WHERE id = '{first}'"));
    assert_error(
        &format!("SELECT * FROM custos.event('{first}')"),
        "XX001",
        "user_agent",
    );
    assert!(verify(A).3.unwrap().starts_with("content changed"));
}

#[pg_test]
fn rotation_keeps_old_values_readable_and_forgetting_shreds_them() {
    let (A, B) = fresh_tenants();
    encrypted_tenant(A);
    let before = sealed_event("carol", "c@x");
    let version = Spi::get_one::<i32>(&format!("SELECT custos.rotate_data_key('{A}')")).unwrap();
    assert_eq!(version, Some(2));
    let after = sealed_event("carol", "c2@x");
    let kid = |id: &str| {
        Spi::get_one::<String>(&format!(
            "SELECT split_part(ip_address, '.', 2) FROM custos.events WHERE id = '{id}'"
        ))
        .unwrap()
        .unwrap()
    };
    assert_ne!(
        kid(&before),
        kid(&after),
        "rotation gives the subject a fresh key"
    );
    let emails = Spi::get_one::<String>("SELECT string_agg(details->>'email', ' ' ORDER BY seq) FROM custos.timeline(by_actor => 'carol')")
        .unwrap();
    assert_eq!(emails.as_deref(), Some("c@x c2@x"));
    let export =
        Spi::get_one::<pgrx::JsonB>(&format!("SELECT custos.export_subject('{A}', 'carol')"))
            .unwrap()
            .unwrap()
            .0;
    assert_eq!(export["events"].as_array().unwrap().len(), 2);
    assert_eq!(export["events"][0]["details"]["email"], "c@x");

    let forgotten =
        Spi::get_one::<pgrx::JsonB>(&format!("SELECT custos.forget_subject('{A}', 'carol')"))
            .unwrap()
            .unwrap()
            .0;
    assert_eq!(forgotten["keys_destroyed"], 2);
    // The name is gone too: events keep the pseudonym, which now names nobody.
    let after_forget = Spi::get_one::<String>(
        "SELECT string_agg(coalesce(actor, 'nobody') || '/' || coalesce(details->>'email', 'gone') || '/' || coalesce(ip_address, 'gone') || '/' || erased, ' ' ORDER BY seq)
           FROM custos.timeline(with_action => 'login')",
    )
    .unwrap();
    assert_eq!(
        after_forget.as_deref(),
        Some("nobody/gone/gone/true nobody/gone/gone/true")
    );
    assert_eq!(
        count("SELECT count(*) FROM custos.timeline(by_actor => 'carol')"),
        0
    );
    assert!(verify(A).0, "erasure leaves the chain verifiable");
    assert_eq!(
        Spi::get_one::<String>(&format!(
            "SELECT action FROM custos.events WHERE tenant_id = '{A}' ORDER BY seq DESC LIMIT 1"
        ))
        .unwrap()
        .as_deref(),
        Some("custos.forget_subject")
    );
    assert_error(
        &format!("SELECT custos.forget_subject('{A}', 'nobody')"),
        "P0002",
        "no keys or records",
    );
    assert_error(
        &format!("SELECT custos.export_subject('{A}', 'nobody')"),
        "P0002",
        "holds nothing about",
    );
}

#[pg_test]
fn encryption_without_a_master_key_or_with_the_wrong_one_is_refused() {
    let (A, B) = fresh_tenants();
    encrypted_tenant(A);
    let id = sealed_event("dan", "d@x");
    Spi::run("SELECT custos_internal.invalidate_caches(); SET LOCAL custos.master_key = ''")
        .unwrap();
    assert_error(
        "INSERT INTO custos.events (action, entity_type, actor, user_agent) VALUES ('x', 'y', 'erin', 'ua')",
        "55000",
        "no master key is configured",
    );
    Spi::run("SELECT custos_internal.invalidate_caches(); SET LOCAL custos.master_key = '2222222222222222222222222222222222222222222222222222222222222222'").unwrap();
    assert_error(
        &format!("SELECT * FROM custos.event('{id}')"),
        "22023",
        "does not open data key version 1",
    );
    Spi::run(
        "SELECT custos_internal.invalidate_caches(); SET LOCAL custos.master_key = 'not a key'",
    )
    .unwrap();
    assert_error(
        &format!("SELECT * FROM custos.event('{id}')"),
        "22023",
        "master key must be 32 bytes",
    );
    Spi::run("SELECT custos_internal.invalidate_caches(); SET LOCAL custos.master_key = ''; SET LOCAL custos.master_key_file = '/nonexistent/custos.key'").unwrap();
    assert_error(
        &format!("SELECT * FROM custos.event('{id}')"),
        "F0000",
        "could not read master key file",
    );
}

#[pg_test]
fn retention_removes_a_prefix_and_the_rest_verifies_from_the_anchor() {
    let (A, B) = tamper_test_tenants();
    as_tenant(A);
    record(5);
    Spi::run(&format!(
        "SET LOCAL custos.checkpoint_signing_key = '{KEY}'"
    ))
    .unwrap();
    let cp = Spi::get_one::<String>(&format!("SELECT custos.checkpoint('{A}')"))
        .unwrap()
        .unwrap();
    // Age the first three events past the 7-year horizon (behind the guards, as a test may).
    tamper(&format!("UPDATE custos.events SET recorded_at = recorded_at - interval '8 years' WHERE tenant_id = '{A}' AND seq <= 3"));
    Spi::run("ALTER TABLE custos.events ENABLE ALWAYS TRIGGER append_only; ALTER TABLE custos.events ENABLE ALWAYS TRIGGER zz_chain; ALTER TABLE custos.events ENABLE ALWAYS TRIGGER retention_delete_check").unwrap();
    // The hashes no longer match the aged rows, which is fine: they are about to go.
    Spi::run("SELECT custos.set_setting('ledger.legal_hold', 'true')").unwrap();
    assert_error(
        &format!("SELECT * FROM custos.apply_retention('{A}')"),
        "55000",
        "legal hold",
    );
    Spi::run("SELECT custos.set_setting('ledger.legal_hold', 'false')").unwrap();
    let removed = Spi::get_one::<String>(&format!(
        "SELECT removed || ':' || through_seq FROM custos.apply_retention('{A}')"
    ))
    .unwrap();
    assert_eq!(removed.as_deref(), Some("3:3"));
    let seqs = Spi::get_one::<String>(&format!(
        "SELECT string_agg(seq::text, ',' ORDER BY seq) FROM custos.events WHERE tenant_id = '{A}'"
    ))
    .unwrap();
    assert_eq!(
        seqs.as_deref(),
        Some("4,5,6"),
        "events 4 and 5 remain, with the retention event"
    );
    let (ok, checked, _, reason) = verify(A);
    assert!(ok, "{reason:?}");
    assert_eq!(checked, 3);
    let cp_ok =
        Spi::get_one::<bool>(&format!("SELECT ok FROM custos.verify_checkpoint('{cp}')")).unwrap();
    assert_eq!(
        cp_ok,
        Some(true),
        "a checkpoint past the anchor still verifies"
    );
    // Nothing more to remove; and no other DELETE gets through.
    assert_eq!(
        count(&format!(
            "SELECT removed FROM custos.apply_retention('{A}')"
        )),
        0
    );
    assert_error(
        &format!("DELETE FROM custos.events WHERE tenant_id = '{A}'"),
        "42501",
        "append-only",
    );
    assert_error(
        &format!("SELECT set_config('custos.retention_through', '{A}:4', true); DELETE FROM custos.events WHERE tenant_id = '{A}' AND seq = 5"),
        "42501",
        "append-only",
    );
}

#[pg_test]
fn a_key_made_in_a_rolled_back_subtransaction_is_not_reused() {
    let (A, B) = fresh_tenants();
    encrypted_tenant(A);
    // The first event of this subject makes its key, then the subtransaction rolls back.
    assert_error(
        "WITH e AS (INSERT INTO custos.events (action, entity_type, actor, user_agent) VALUES ('x', 'y', 'gina', 'ua') RETURNING 1)
         SELECT 1 / 0 FROM e",
        "22012",
        "division by zero",
    );
    let id = sealed_event("gina", "g@x");
    let seen = Spi::get_one::<String>(&format!(
        "SELECT user_agent || ' ' || (details->>'email') FROM custos.event('{id}')"
    ))
    .unwrap();
    assert_eq!(seen.as_deref(), Some("Firefox g@x"));
}

#[pg_test]
fn master_key_rotation_rewraps_data_keys_and_keeps_every_value_readable() {
    const NEW: &str = "0909090909090909090909090909090909090909090909090909090909090909";
    let (A, B) = fresh_tenants();
    encrypted_tenant(A);
    let id = sealed_event("frank", "f@x");
    let email = |id: &str| {
        Spi::get_one::<String>(&format!(
            "SELECT details->>'email' FROM custos.event('{id}')"
        ))
    };
    // The new key alone does not open the tenant's data key, and the error names both keys.
    Spi::run(&format!(
        "SELECT custos_internal.invalidate_caches(); SET LOCAL custos.master_key = '{NEW}'"
    ))
    .unwrap();
    assert_error(
        &format!("SELECT * FROM custos.event('{id}')"),
        "22023",
        "(wrapped by master key ",
    );
    // During the rotation the previous key still opens it.
    Spi::run(&format!(
        "SELECT custos_internal.invalidate_caches(); SET LOCAL custos.master_key_previous = '{MASTER}'"
    ))
    .unwrap();
    assert_eq!(email(&id), Ok(Some("f@x".into())));
    let rewrapped = Spi::get_two::<i64, i64>(&format!(
        "SELECT rewrapped, already_current FROM custos.rewrap_data_keys('{A}')"
    ));
    assert_eq!(rewrapped, Ok((Some(1), Some(0))));
    // Afterwards the new key alone opens old values and seals new ones; a second run has nothing to do.
    Spi::run(
        "SELECT custos_internal.invalidate_caches(); SET LOCAL custos.master_key_previous = ''",
    )
    .unwrap();
    assert_eq!(email(&id), Ok(Some("f@x".into())));
    let later = sealed_event("frank", "f2@x");
    assert_eq!(email(&later), Ok(Some("f2@x".into())));
    let again = Spi::get_two::<i64, i64>(&format!(
        "SELECT rewrapped, already_current FROM custos.rewrap_data_keys('{A}')"
    ));
    assert_eq!(again, Ok((Some(0), Some(1))));
    // The old key no longer opens anything, and nobody but a superuser may rewrap.
    Spi::run(&format!(
        "SELECT custos_internal.invalidate_caches(); SET LOCAL custos.master_key = '{MASTER}'"
    ))
    .unwrap();
    assert_error(
        &format!("SELECT * FROM custos.event('{id}')"),
        "22023",
        "does not open data key version 1",
    );
    Spi::run(&format!(
        "SET LOCAL custos.master_key = '{NEW}'; SELECT custos.set_tenant('{B}')"
    ))
    .unwrap();
    Spi::run("GRANT EXECUTE ON FUNCTION custos.rewrap_data_keys(uuid) TO custos_admin; SET LOCAL ROLE custos_admin").unwrap();
    assert_error(
        "SELECT * FROM custos.rewrap_data_keys()",
        "42501",
        "only a superuser",
    );
    Spi::run("RESET ROLE").unwrap();
}

#[pg_test]
fn encrypted_events_store_the_actor_as_a_pseudonym_kept_across_rotations() {
    let (A, _) = fresh_tenants();
    encrypted_tenant(A);
    let first = sealed_event("grace@example.com", "g@x");
    Spi::run(&format!("SELECT custos.rotate_data_key('{A}')")).unwrap();
    let second = sealed_event("grace@example.com", "g2@x");
    let stored = |id: &str| {
        Spi::get_one::<String>(&format!(
            "SELECT actor FROM custos.events WHERE id = '{id}'"
        ))
        .unwrap()
        .unwrap()
    };
    assert!(stored(&first).starts_with("subject:"), "{}", stored(&first));
    assert_eq!(
        stored(&first),
        stored(&second),
        "one pseudonym per subject, whatever its key"
    );
    assert_eq!(
        Spi::get_one::<String>(&format!("SELECT actor FROM custos.event('{second}')"))
            .unwrap()
            .as_deref(),
        Some("grace@example.com")
    );
    assert_eq!(
        count("SELECT count(*) FROM custos.timeline(by_actor => 'grace@example.com')"),
        2
    );
    // Activity still reaches the identity through the pseudonym.
    Spi::run(
        "SELECT custos.upsert_identities('[{\"user_id\": \"grace@example.com\", \"last_active_at\": \"2020-01-01T00:00:00Z\"}]')",
    )
    .unwrap();
    Spi::run(&format!("SELECT custos.sync_activity_from_ledger('{A}')")).unwrap();
    assert!(
        Spi::get_one::<bool>(&format!(
            "SELECT last_active_at > now() - interval '1 hour' FROM custos.identities WHERE tenant_id = '{A}' AND user_id = 'grace@example.com'"
        ))
        .unwrap()
        .unwrap_or(false)
    );
    // Unencrypted tenants keep names; a stored value that only looks like a pseudonym is shown as is.
    assert_eq!(
        Spi::get_one::<String>(&format!(
            "SELECT custos_internal.reveal_actor('{A}', 'subject:nonsense')"
        ))
        .unwrap()
        .as_deref(),
        Some("subject:nonsense")
    );
    assert!(verify(A).0);
}
