-- Who may execute each of custos' functions, in one place. The README's privilege table says the
-- same, and a test (tests/integration/tests/security.rs) holds the catalog to that table.
--
-- PUBLIC keeps current_tenant(), which every tenant-isolated table's policy calls as whoever
-- queries it, and the actor of its own transaction (set_actor, current_actor): writers of tracked
-- tables need not hold a custos role, and custos.actor is theirs to SET LOCAL anyway. Roles form a ladder: custos_writer, custos_auditor and
-- custos_exporter are members of custos_reader; custos_admin of all of them. Functions not named
-- here are internal: they run inside custos' own SECURITY DEFINER functions (as their owner) or
-- as triggers, which PostgreSQL fires without checking EXECUTE.

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA custos_internal FROM PUBLIC;

-- Everyone. (anomaly_scores_on_insert: the WHEN of custos.events' insert-time scoring trigger,
-- which runs as whoever inserts; it answers only for the caller's own tenant.)
GRANT EXECUTE ON FUNCTION
    custos_internal.anomaly_scores_on_insert(uuid),
    @extschema@.current_tenant(),
    @extschema@.set_actor(text),
    @extschema@.current_actor()
TO PUBLIC;

-- Every custos role: choosing the tenant and actor, reading settings, the dormant report,
-- scoring with anomaly models.
GRANT EXECUTE ON FUNCTION
    @extschema@.set_tenant(uuid),
    @extschema@.require_tenant(),
    @extschema@.setting(text),
    @extschema@.settings(),
    @extschema@.tenant_setting(uuid, text),
    @extschema@.validate_setting(text, jsonb),
    custos_internal.check_json_batch(jsonb, text, text[], text),
    @extschema@.dormant_users(integer, integer, integer, text, boolean, text, text),
    custos_internal.dormant_users_page(integer, integer, integer, text, boolean, text, text),
    custos_internal.dormant_row(@extschema@.identities, text),
    @extschema@.dormant_summary(),
    @extschema@.sync_activity_from_ledger(uuid),
    @extschema@.explain_risk(boolean, boolean, boolean, boolean, boolean, text, real, double precision, integer),
    @extschema@.risk_level_of(double precision),
    @extschema@.risk_level_bounds(),
    @extschema@.peer_score(double precision, bigint),
    @extschema@.if_score(text, double precision[]),
    @extschema@.if_score_query(text, text),
    @extschema@.if_explain(text, double precision[], integer),
    @extschema@.redact(text),
    @extschema@.embed(text, text),
    @extschema@.embed_batch(text[], text),
    custos_internal.embed_texts(text[], text),
    @extschema@.complete_json(text, jsonb),
    @extschema@.similar_users(text, integer, double precision),
    custos_internal.embedding_model(text),
    custos_internal.check_k(integer),
    custos_internal.schema_of_type(regtype),
    custos_internal.large_enough_for_hnsw(bigint),
    custos_internal.prefer_hnsw(boolean),
    custos_internal.restore_planner(text),
    @extschema@.health(),
    custos_internal.worker_states(),
    custos_internal.breaker_states(boolean),
    custos_internal.worker_progress(),
    custos_internal.job_names(),
    custos_internal.shown_url(text)
TO custos_reader;

-- Monitoring: the metrics of every tenant (counts and ages), and the workers' progress.
GRANT EXECUTE ON FUNCTION
    custos_internal.metric_rows(),
    custos_internal.worker_states(),
    custos_internal.breaker_states(boolean),
    custos_internal.worker_progress(),
    custos_internal.job_names()
TO pg_monitor;

-- Writers: recording events.
GRANT EXECUTE ON FUNCTION
    @extschema@.record_event(text, text, text, jsonb, text, timestamptz, text, inet, text),
    @extschema@.record_events(jsonb)
TO custos_writer;

-- Auditors: verification, checkpoints, logged reads of the ledger, anomaly detection.
GRANT EXECUTE ON FUNCTION
    @extschema@.verify_chain(uuid, bigint, bigint),
    @extschema@.settled_seq(uuid, bigint),
    @extschema@.checkpoint(uuid),
    @extschema@.verify_checkpoint(text, text),
    @extschema@.checkpoint_public_key(),
    @extschema@.verify_access_log(uuid),
    @extschema@.timeline(timestamptz, timestamptz, text, text, text, text, text, bigint, integer),
    @extschema@.event(uuid),
    @extschema@.event_seq(uuid),
    @extschema@.score_events(timestamptz, timestamptz),
    @extschema@.detect_anomalies(timestamptz, timestamptz, double precision),
    @extschema@.anomaly_detection_rates(timestamptz, timestamptz),
    @extschema@.search_events(text, integer, timestamptz, timestamptz, text, text),
    @extschema@.similar_events(uuid, integer),
    @extschema@.analyze_dormant_user(text),
    @extschema@.explain_event(uuid),
    @extschema@.summarize(text, timestamptz)
TO custos_auditor;

-- Exporters: bulk and per-subject exports.
GRANT EXECUTE ON FUNCTION
    @extschema@.export_events(text, timestamptz, timestamptz, text, text, text),
    @extschema@.export_subject(uuid, text)
TO custos_exporter;

-- Admins: settings, isolation, capture, identities, erasure, retention, keys, alert triage,
-- training anomaly models and feedback on anomalies.
-- (require_trigger_on: the checks of the settings triggers, which fire as the admin who writes.)
GRANT EXECUTE ON FUNCTION
    custos_internal.require_trigger_on(oid, regclass, text),
    @extschema@.set_setting(text, jsonb),
    @extschema@.reset_setting(text),
    custos_internal.require_master_key(),
    @extschema@.enable_tenant_isolation(regclass, name),
    @extschema@.rls_coverage(),
    @extschema@.track_table(regclass, name, text, integer),
    @extschema@.untrack_table(regclass),
    @extschema@.upsert_identities(jsonb),
    @extschema@.touch_activity(uuid, text, timestamptz, text),
    @extschema@.mark_reviewed(text, text, text),
    @extschema@.refresh_peer_scores(uuid),
    @extschema@.forget_subject(uuid, text),
    @extschema@.apply_retention(uuid),
    @extschema@.rotate_data_key(uuid),
    @extschema@.set_alert_status(bigint, text, text),
    @extschema@.if_train(text, text, integer, integer, bigint, boolean),
    @extschema@.activate_model(text, integer),
    @extschema@.train_anomaly_model(timestamptz, timestamptz, integer, integer, bigint, boolean),
    @extschema@.anomaly_feedback(bigint, boolean, text),
    @extschema@.register_ai_task(text, text, text, jsonb, text, integer, double precision),
    custos_internal.check_ai_task(text, jsonb),
    custos_internal.check_redaction_pattern(text),
    @extschema@.embed_identities(text),
    @extschema@.embed_events(timestamptz, timestamptz, text),
    @extschema@.run_job(text, uuid),
    @extschema@.retry_failed(),
    @extschema@.set_integration(text, text, text, text, text[], boolean),
    @extschema@.remove_integration(text),
    @extschema@.retry_dead_notifications()
TO custos_admin;
