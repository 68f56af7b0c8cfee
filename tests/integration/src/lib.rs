//! Helpers for the integration tests: fresh databases with custos, connections as any role, and
//! the exact per-request protocol PostgREST speaks.

pub mod cluster;
pub mod mock_bedrock;
pub mod receiver;

use postgres::{Client, IsolationLevel, NoTls, Row};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

fn host() -> String {
    std::env::var("CUSTOS_TEST_HOST").expect(
        "CUSTOS_TEST_HOST must name the server's socket directory (scripts/test.sh sets it)",
    )
}

/// Connects to `db` as `user` (trust authentication on the throwaway cluster).
pub fn connect(db: &str, user: &str) -> Client {
    let port = std::env::var("CUSTOS_TEST_PORT").unwrap_or_else(|_| "5432".into());
    Client::connect(
        &format!("host={} port={port} dbname={db} user={user}", host()),
        NoTls,
    )
    .unwrap_or_else(|e| panic!("connect to {db} as {user}: {e}"))
}

/// A client of its own that runs rounds of work beside a test until stopped: a writer under a
/// reader, an auditor beside writers.
pub struct Beside {
    stop: Arc<AtomicBool>,
    rounds: JoinHandle<u64>,
}

impl Beside {
    /// Starts running `round` (given the round's number) on a new superuser connection to `db`.
    pub fn start(db: &str, mut round: impl FnMut(&mut Client, u64) + Send + 'static) -> Beside {
        let stop = Arc::new(AtomicBool::new(false));
        let (db, stopping) = (db.to_owned(), stop.clone());
        let rounds = std::thread::spawn(move || {
            let mut c = connect(&db, "postgres");
            let mut n = 0;
            while !stopping.load(Ordering::SeqCst) {
                round(&mut c, n);
                n += 1;
            }
            n
        });
        Beside { stop, rounds }
    }

    /// Stops after the round under way; how many rounds ran. A round's panic fails the caller.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.rounds
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// Creates a new, empty database named `it_<name>` (dropping one left by an earlier run).
pub fn empty_db(name: &str) -> String {
    let db = format!("it_{name}");
    let mut admin = connect("postgres", "postgres");
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    db
}

/// Creates a new database named `it_<name>` with custos installed and returns a superuser client.
pub fn fresh_db(name: &str) -> (String, Client) {
    let db = empty_db(name);
    let mut client = connect(&db, "postgres");
    client
        .batch_execute("CREATE EXTENSION custos CASCADE")
        .unwrap();
    (db, client)
}

/// Creates a role unless it exists (roles are cluster-wide and tests run in parallel).
pub fn ensure_role(client: &mut Client, role: &str, options: &str) {
    client
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {role} {options}; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ))
        .unwrap();
}

/// Grants `role` to `member` unless it is granted already; tests running in parallel may race to
/// grant the same membership, which PostgreSQL reports as a duplicate key.
pub fn ensure_grant(client: &mut Client, role: &str, member: &str) {
    let granted = |c: &mut Client| -> bool {
        c.query_one("SELECT pg_has_role($1, $2, 'MEMBER')", &[&member, &role])
            .map(|r| r.get(0))
            .unwrap_or(false)
    };
    if granted(client) {
        return;
    }
    if let Err(e) = client.batch_execute(&format!("GRANT {role} TO {member}")) {
        assert!(granted(client), "GRANT {role} TO {member}: {e}");
    }
}

/// PostgREST's roles: `authenticator` (LOGIN, NOINHERIT) may switch to `it_web_anon` and to
/// each web role, and each web role is granted the custos role given with it.
pub fn postgrest_roles(client: &mut Client, web_roles: &[(&str, &str)]) {
    ensure_role(client, "authenticator", "LOGIN NOINHERIT");
    ensure_role(client, "it_web_anon", "NOLOGIN");
    ensure_grant(client, "it_web_anon", "authenticator");
    for (web_role, custos_role) in web_roles {
        ensure_role(client, web_role, "NOLOGIN");
        ensure_grant(client, web_role, "authenticator");
        ensure_grant(client, custos_role, web_role);
    }
}

/// One PostgREST request: a transaction that sets the role and the JWT claims with
/// `set_config(..., true)`, then runs the request's query, as PostgREST does per HTTP request.
pub fn postgrest_request(
    client: &mut Client,
    role: &str,
    claims: &serde_json::Value,
    method: &str,
    path: &str,
    sql: &str,
) -> Result<Vec<Row>, postgres::Error> {
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .read_only(method == "GET")
        .start()?;
    tx.query(
        "SELECT set_config('search_path', $1, true), set_config('role', $2, true), \
                set_config('request.jwt.claims', $3, true), set_config('request.method', $4, true), \
                set_config('request.path', $5, true), set_config('request.headers', '{}', true)",
        &[&"custos, public", &role, &claims.to_string(), &method, &path],
    )?;
    let rows = tx.query(sql, &[])?;
    tx.commit()?;
    Ok(rows)
}

/// The one value `sql` returns; panics with the server's whole message if it fails.
pub fn one<T: for<'a> postgres::types::FromSql<'a>>(c: &mut Client, sql: &str) -> T {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| {
            panic!(
                "{sql}: {}",
                e.as_db_error().map_or(e.to_string(), |d| d.to_string())
            )
        })
        .get(0)
}

/// Whether `done` comes true within `limit`, asked every 100 ms.
pub fn within(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    done()
}

/// The SQLSTATE of a failed statement, for asserting on error codes.
pub fn sqlstate(err: &postgres::Error) -> String {
    err.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no sqlstate: {err}"))
}
