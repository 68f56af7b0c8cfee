use crate::testing::{assert_error, count};
use pgrx::prelude::*;

const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";

/// A tenant-isolated table with two rows per tenant, read as an ordinary role (superusers bypass
/// RLS, so every check below runs after SET ROLE).
fn isolated_table() {
    Spi::run(&format!(
        "CREATE TABLE public.notes (tenant_id uuid, body text);
         INSERT INTO public.notes VALUES ('{A}', 'a1'), ('{A}', 'a2'), ('{B}', 'b1'), ('{B}', 'b2');
         SELECT custos.enable_tenant_isolation('public.notes');
         CREATE ROLE custos_test_app NOLOGIN;
         GRANT custos_writer TO custos_test_app;
         GRANT SELECT, INSERT ON public.notes TO custos_test_app;
         SET LOCAL ROLE custos_test_app;"
    ))
    .unwrap();
}

#[pg_test]
fn no_tenant_sees_nothing() {
    isolated_table();
    assert_eq!(count("SELECT count(*) FROM public.notes"), 0);
    assert!(Spi::get_one::<pgrx::Uuid>("SELECT custos.current_tenant()")
        .unwrap()
        .is_none());
}

#[pg_test]
fn set_tenant_shows_only_that_tenant() {
    isolated_table();
    Spi::run(&format!("SELECT custos.set_tenant('{A}')")).unwrap();
    assert_eq!(count("SELECT count(*) FROM public.notes"), 2);
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM public.notes WHERE tenant_id <> '{A}'"
        )),
        0
    );
    Spi::run(&format!("SELECT custos.set_tenant('{B}')")).unwrap();
    assert_eq!(
        Spi::get_one::<String>("SELECT string_agg(body, ',' ORDER BY body) FROM public.notes")
            .unwrap(),
        Some("b1,b2".into())
    );
    Spi::run("SELECT custos.set_tenant(NULL)").unwrap();
    assert_eq!(count("SELECT count(*) FROM public.notes"), 0);
}

#[pg_test]
fn writes_into_another_tenant_are_refused() {
    isolated_table();
    Spi::run(&format!("SELECT custos.set_tenant('{A}')")).unwrap();
    assert_error(
        &format!("INSERT INTO public.notes VALUES ('{B}', 'x')"),
        "42501",
        "row-level security",
    );
}

#[pg_test]
fn jwt_claim_is_the_fallback() {
    isolated_table();
    Spi::run(&format!(
        r#"SELECT set_config('request.jwt.claims', '{{"role":"web","tenant_id":"{B}"}}', true)"#
    ))
    .unwrap();
    assert_eq!(count("SELECT count(*) FROM public.notes"), 2);
    assert_eq!(
        Spi::get_one::<String>("SELECT custos.current_tenant()::text").unwrap(),
        Some(B.into())
    );
    // set_tenant takes precedence over the claim.
    Spi::run(&format!("SELECT custos.set_tenant('{A}')")).unwrap();
    assert_eq!(
        Spi::get_one::<String>("SELECT custos.current_tenant()::text").unwrap(),
        Some(A.into())
    );
}

#[pg_test]
fn malformed_claims_fail_closed() {
    isolated_table();
    for claims in [
        "not json",
        "{\"tenant_id\":\"nope\"}",
        "{\"tenant_id\":17}",
        "[]",
        "",
    ] {
        Spi::run_with_args(
            "SELECT set_config('request.jwt.claims', $1, true)",
            &[claims.into()],
        )
        .unwrap();
        assert_eq!(
            count("SELECT count(*) FROM public.notes"),
            0,
            "claims {claims:?}"
        );
    }
}

#[pg_test]
fn tenant_setting_cannot_be_set_directly_by_ordinary_roles() {
    isolated_table();
    assert_error(
        &format!("SET custos.tenant_id = '{A}'"),
        "42501",
        "permission denied",
    );
    assert_error(
        &format!("SELECT set_config('custos.tenant_id', '{A}', true)"),
        "42501",
        "permission denied",
    );
    assert_eq!(count("SELECT count(*) FROM public.notes"), 0);
}

#[pg_test]
fn set_tenant_is_not_for_public() {
    Spi::run("CREATE ROLE custos_test_nobody NOLOGIN; SET LOCAL ROLE custos_test_nobody").unwrap();
    assert_error(
        &format!("SELECT custos.set_tenant('{A}')"),
        "42501",
        "permission denied for function set_tenant",
    );
}

#[pg_test]
fn set_tenant_rejects_a_non_uuid() {
    assert_error(
        "SELECT custos.set_tenant('acme')",
        "22P02",
        "invalid input syntax for type uuid",
    );
}

#[pg_test]
fn tenant_is_transaction_local() {
    // The test runs inside one transaction, so check the mechanism: GUC_ACTION_LOCAL means the
    // value sits at the transaction's nesting level, visible via current_setting until commit.
    Spi::run(&format!("SELECT custos.set_tenant('{A}')")).unwrap();
    assert_eq!(
        Spi::get_one::<String>("SELECT current_setting('custos.tenant_id')").unwrap(),
        Some(A.into())
    );
}

#[pg_test]
fn enable_tenant_isolation_is_idempotent_and_validates() {
    Spi::run("CREATE TABLE public.t1 (tenant_id uuid, org uuid, name text, n int)").unwrap();
    for _ in 0..2 {
        Spi::run("SELECT custos.enable_tenant_isolation('public.t1')").unwrap();
    }
    assert_eq!(
        count("SELECT count(*) FROM pg_policy WHERE polrelid = 'public.t1'::regclass"),
        2
    );
    assert_eq!(
        Spi::get_one::<bool>(
            "SELECT relforcerowsecurity FROM pg_class WHERE oid = 'public.t1'::regclass"
        )
        .unwrap(),
        Some(true)
    );
    Spi::run("SELECT custos.enable_tenant_isolation('public.t1', 'org')").unwrap();
    assert_error(
        "SELECT custos.enable_tenant_isolation('public.t1', 'nope')",
        "42703",
        "column nope does not exist",
    );
    assert_error(
        "SELECT custos.enable_tenant_isolation('public.t1', 'name')",
        "42804",
        "has type text, not uuid",
    );
    Spi::run("CREATE VIEW public.v1 AS SELECT * FROM public.t1").unwrap();
    assert_error(
        "SELECT custos.enable_tenant_isolation('public.v1')",
        "42809",
        "is not a table",
    );
    assert_error(
        "SELECT custos.enable_tenant_isolation('public.missing')",
        "42P01",
        "does not exist",
    );
}

#[pg_test]
fn other_permissive_policies_cannot_widen_access() {
    isolated_table();
    Spi::run("RESET ROLE; CREATE POLICY everything ON public.notes USING (true); SET LOCAL ROLE custos_test_app").unwrap();
    assert_eq!(count("SELECT count(*) FROM public.notes"), 0);
}

#[pg_test]
fn rls_coverage_lists_uncovered_tables() {
    Spi::run(
        "CREATE TABLE public.covered (tenant_id uuid);
         CREATE TABLE public.open_table (tenant_id uuid);
         CREATE TABLE public.not_forced (tenant_id uuid);
         CREATE TABLE public.no_tenant (id int);
         SELECT custos.enable_tenant_isolation('public.covered');
         ALTER TABLE public.not_forced ENABLE ROW LEVEL SECURITY;",
    )
    .unwrap();
    let listed = Spi::get_one::<String>(
        "SELECT string_agg(table_name::text || ':' || problem, '|' ORDER BY table_name::text) FROM custos.rls_coverage()",
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        listed,
        "not_forced:row-level security is not forced: the owner sees every tenant|open_table:row-level security is disabled"
    );
    // custos' own tenant tables are covered.
    assert_eq!(
        count("SELECT count(*) FROM custos.rls_coverage() WHERE table_name::text LIKE 'custos.%'"),
        0
    );
}

#[pg_test]
fn roles_exist_without_bypassrls() {
    assert_eq!(
        count("SELECT count(*) FROM pg_roles WHERE rolname IN ('custos_reader','custos_writer','custos_auditor','custos_exporter','custos_admin') AND NOT rolbypassrls AND NOT rolsuper AND NOT rolcanlogin"),
        5
    );
}

#[pg_test]
fn settings_resolve_tenant_override_then_default() {
    Spi::run("CREATE ROLE custos_test_admin NOLOGIN; GRANT custos_admin TO custos_test_admin; SET LOCAL ROLE custos_test_admin").unwrap();
    Spi::run(&format!("SELECT custos.set_tenant('{A}')")).unwrap();
    assert_eq!(
        Spi::get_one::<i64>("SELECT custos.setting('dormant.threshold_days')::bigint").unwrap(),
        Some(30)
    );
    Spi::run("SELECT custos.set_setting('dormant.threshold_days', '45')").unwrap();
    assert_eq!(
        Spi::get_one::<i64>("SELECT custos.setting('dormant.threshold_days')::bigint").unwrap(),
        Some(45)
    );
    assert_eq!(
        Spi::get_one::<String>(
            "SELECT source FROM custos.settings() WHERE key = 'dormant.threshold_days'"
        )
        .unwrap(),
        Some("tenant".into())
    );
    // Another tenant still sees the default.
    Spi::run(&format!("SELECT custos.set_tenant('{B}')")).unwrap();
    assert_eq!(
        Spi::get_one::<i64>("SELECT custos.setting('dormant.threshold_days')::bigint").unwrap(),
        Some(30)
    );
    Spi::run(&format!("SELECT custos.set_tenant('{A}')")).unwrap();
    assert_eq!(
        Spi::get_one::<i64>("SELECT custos.reset_setting('dormant.threshold_days')::bigint")
            .unwrap(),
        Some(30)
    );
}

#[pg_test]
fn settings_reject_bad_values() {
    Spi::run(&format!("SELECT custos.set_tenant('{A}')")).unwrap();
    assert_error(
        "SELECT custos.setting('no.such.key')",
        "22023",
        "unknown setting \"no.such.key\"",
    );
    assert_error(
        "SELECT custos.set_setting('no.such.key', '1')",
        "22023",
        "unknown setting",
    );
    assert_error(
        "SELECT custos.set_setting('dormant.threshold_days', '-5')",
        "22003",
        "must be between 1 and 3650, not -5",
    );
    assert_error(
        "SELECT custos.set_setting('dormant.threshold_days', '\"thirty\"')",
        "22023",
        "takes an integer, not string",
    );
    assert_error(
        "SELECT custos.set_setting('dormant.threshold_days', '2.5')",
        "22023",
        "whole number",
    );
    assert_error(
        "SELECT custos.set_setting('dormant.threshold_days', 'null')",
        "22004",
        "cannot be null",
    );
    // Direct writes go through the same validation.
    assert_error(
        &format!("INSERT INTO custos.tenant_settings (tenant_id, key, value) VALUES ('{A}', 'dormant.threshold_days', '0')"),
        "22003",
        "must be between",
    );
    assert_eq!(count("SELECT count(*) FROM custos.tenant_settings"), 0);
}

#[pg_test]
fn set_setting_needs_a_tenant() {
    assert_error(
        "SELECT custos.set_setting('dormant.threshold_days', '40')",
        "42501",
        "no tenant is set",
    );
}

/// Every SECURITY DEFINER function of custos pins its search_path, so that a caller's schemas
/// cannot supply the functions and operators it runs with the owner's rights.
#[pg_test]
fn security_definer_functions_pin_their_search_path() {
    let unpinned = Spi::get_one::<String>(
        "SELECT string_agg(p.oid::regprocedure::text, ', ')
           FROM pg_proc p
          WHERE p.pronamespace = 'custos'::regnamespace AND p.prosecdef
            AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)",
    )
    .unwrap();
    assert_eq!(unpinned, None);
    assert!(count("SELECT count(*) FROM pg_proc WHERE pronamespace = 'custos'::regnamespace AND prosecdef") > 10);
}
