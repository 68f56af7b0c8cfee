//! Crash recovery: kill -9 the server while writers ingest, restart it, and check that every
//! acknowledged event survived and every chain still verifies. Its own test binary, so cargo runs
//! it after the others (binaries run one at a time) and nothing else is using the server.

use custos_integration_tests::{connect, fresh_db};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn kill_9_during_ingest_then_restart_and_verify() {
    let Ok(pgdata) = std::env::var("CUSTOS_TEST_PGDATA") else {
        panic!("CUSTOS_TEST_PGDATA must name the test cluster's data directory (scripts/test.sh sets it)");
    };
    let (db, mut setup) = fresh_db("crash");
    // Half the writers record events through a tracked table: capture writes them to the heap
    // itself, and they must survive (or vanish) with their transaction like any other write.
    setup
        .batch_execute(
            "CREATE TABLE public.docs (key text PRIMARY KEY, tenant_id uuid NOT NULL);
             SELECT custos.track_table('public.docs');",
        )
        .unwrap();
    let tenants = [
        "d1000000-0000-4000-8000-000000000001",
        "d2000000-0000-4000-8000-000000000002",
    ];
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (db, acknowledged, stop) = (db.clone(), acknowledged.clone(), stop.clone());
            let tenant = tenants[w % 2];
            std::thread::spawn(move || {
                let mut c = connect(&db, "postgres");
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let batch = if w < 2 {
                        format!(
                            "SELECT custos.set_tenant('{tenant}'); SELECT custos.record_events((SELECT jsonb_agg(jsonb_build_object('action', 'ingest', 'entity_type', 'doc', 'entity_id', '{w}-{i}-' || g)) FROM generate_series(1, 50) g))"
                        )
                    } else {
                        format!(
                            "INSERT INTO public.docs SELECT '{w}-{i}-' || g, '{tenant}' FROM generate_series(1, 50) g"
                        )
                    };
                    match c.batch_execute(&batch) {
                        Ok(()) => acknowledged.lock().unwrap().push(format!("{w}-{i}-")),
                        Err(_) => return, // the server went away
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = std::fs::read_to_string(format!("{pgdata}/postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_owned();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    // Children of the killed postmaster exit once they notice; until then the old shared memory
    // is in use and a new server refuses to start. Retry for up to 10 s, as an operator would.
    let log = format!("{pgdata}/../server.log");
    let started = (0..20).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        std::process::Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!(
                    "{}/pg_ctl",
                    std::env::var("CUSTOS_TEST_PG_BIN")
                        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into())
                ),
                "-D",
                &pgdata,
                "-w",
                "-l",
                &log,
                "start",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    let tail = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        started,
        "server restarts after kill -9; log:\n{}",
        &tail[tail.len().saturating_sub(3000)..]
    );
    let mut c = connect(&db, "postgres");
    let acked = acknowledged.lock().unwrap().clone();
    assert!(
        acked.len() > 4,
        "writers got some batches in before the crash ({})",
        acked.len()
    );
    for prefix in &acked {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM custos.events WHERE entity_id LIKE $1 || '%'",
                &[prefix],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 50, "acknowledged batch {prefix} survived whole");
    }
    for t in tenants {
        let row = c
            .query_one(
                &format!("SELECT ok, checked FROM custos.verify_chain('{t}')"),
                &[],
            )
            .unwrap();
        let n: i64 = c
            .query_one(
                &format!("SELECT count(*) FROM custos.events WHERE tenant_id = '{t}'"),
                &[],
            )
            .unwrap()
            .get(0);
        assert!(
            row.get::<_, bool>(0),
            "chain of {t} verifies after recovery"
        );
        assert_eq!(row.get::<_, i64>(1), n);
        assert_eq!(n % 50, 0, "only whole batches");
    }
    // And the chains go on from where recovery left them.
    c.batch_execute(&format!(
        "SELECT custos.set_tenant('{}'); SELECT custos.record_event('after', 'crash')",
        tenants[0]
    ))
    .unwrap();
    let ok: bool = c
        .query_one(
            &format!("SELECT ok FROM custos.verify_chain('{}')", tenants[0]),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ok);
}
