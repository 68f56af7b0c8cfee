//! Helpers shared by the `#[pg_test]`s of every module.
#![cfg(any(test, feature = "pg_test"))]

use pgrx::prelude::*;

/// Runs `sql`; returns "SQLSTATE: message" if it raised, None if it succeeded. The statement runs in
/// a subtransaction (a plpgsql exception block), so a failure leaves the test transaction usable.
pub fn error_of(sql: &str) -> Option<String> {
    // Created once per session: a test may have switched to a role that could not replace it.
    Spi::run(
        "DO $d$ BEGIN
           IF to_regprocedure('pg_temp.error_of(text)') IS NULL THEN
             CREATE FUNCTION pg_temp.error_of(q text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN EXECUTE q; RETURN NULL;
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
           END IF;
         END $d$",
    )
    .expect("create helper");
    Spi::get_one_with_args::<String>("SELECT pg_temp.error_of($1)", &[sql.into()])
        .expect("run helper")
}

/// Asserts that `sql` fails with `sqlstate` and a message containing `needle`.
#[track_caller]
pub fn assert_error(sql: &str, sqlstate: &str, needle: &str) {
    match error_of(sql) {
        Some(e) => assert!(
            e.starts_with(sqlstate) && e.contains(needle),
            "`{sql}` failed with `{e}`, expected {sqlstate} containing `{needle}`"
        ),
        None => panic!("`{sql}` succeeded, expected {sqlstate}"),
    }
}

pub fn count(sql: &str) -> i64 {
    Spi::get_one::<i64>(sql).expect("query").unwrap_or(0)
}
