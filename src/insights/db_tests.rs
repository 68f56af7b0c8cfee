use crate::testing::{assert_error, count};
use pgrx::prelude::*;

#[pg_test]
fn a_dormant_account_is_analysed_by_rules_without_a_provider_and_stored() {
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000d1001')").unwrap();
    Spi::run(
        "SELECT custos.upsert_identities(jsonb_build_array(
            jsonb_build_object('user_id', 'old_admin', 'department', 'it', 'roles', jsonb_build_array('admin'),
                               'is_privileged', true, 'last_active_at', now() - interval '400 days'),
            jsonb_build_object('user_id', 'old_admin2', 'department', 'it', 'roles', jsonb_build_array('admin'),
                               'is_privileged', true, 'last_active_at', now() - interval '300 days')))",
    )
    .unwrap();
    Spi::run("SELECT * FROM custos.embed_identities()").unwrap();
    let (level, fallback, version) = Spi::get_three::<String, bool, String>(
        "SELECT risk_level, fallback, prompt_version FROM custos.analyze_dormant_user('old_admin')",
    )
    .unwrap();
    let deterministic = Spi::get_one::<String>(
        "SELECT risk_level FROM custos.dormant_users() WHERE user_id = 'old_admin'",
    )
    .unwrap();
    assert_eq!(level, deterministic);
    assert_eq!(fallback, Some(true), "no provider: the rules answer");
    assert_eq!(version.as_deref(), Some("analyze_dormant_user@1"));
    assert_eq!(
        count("SELECT count(*) FROM custos.user_insights WHERE user_id = 'old_admin' AND provider = 'local'
                 AND jsonb_array_length(similar_users) = 1 AND similar_users->0->>'user_id' = 'old_admin2'
                 AND recommendations @> '[{\"priority\": \"urgent\"}]' AND jsonb_array_length(insights) > 0"),
        1
    );
    Spi::run("SELECT * FROM custos.analyze_dormant_user('old_admin')").unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.user_insights"),
        1,
        "the latest only"
    );
    assert_eq!(
        count("SELECT count(*) FROM custos.rag_analysis_history WHERE subject = 'old_admin'"),
        2
    );
    assert_eq!(
        count("SELECT count(*) FROM custos.dormant_insights WHERE user_id = 'old_admin'"),
        1
    );
    assert_error(
        "SELECT * FROM custos.analyze_dormant_user('nobody')",
        "P0002",
        "has no identity",
    );
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000d1002')").unwrap();
    assert_error(
        "SELECT * FROM custos.analyze_dormant_user('old_admin')",
        "P0002",
        "has no identity",
    );
    // Removing the identity removes what was said about it.
    Spi::run("SELECT custos.set_tenant('00000000-0000-4000-8000-0000000d1001')").unwrap();
    Spi::run("DELETE FROM custos.identities WHERE user_id = 'old_admin'").unwrap();
    assert_eq!(
        count("SELECT count(*) FROM custos.rag_analysis_history WHERE subject = 'old_admin'"),
        0
    );
    assert_eq!(count("SELECT count(*) FROM custos.user_insights"), 0);
}
