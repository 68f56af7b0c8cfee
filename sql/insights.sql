-- Insights (src/insights/): analyses that combine custos' own data with a model's judgement
-- (retrieval-augmented), each answer validated against its task's schema and stored with who
-- gave it: custos.analyze_dormant_user (into custos.user_insights, the latest per user),
-- custos.explain_event (both into custos.rag_analysis_history, every one) and custos.summarize
-- (into custos.summaries). Without a model, each falls back to an answer by rules of the same
-- shape. Texts shown to a model never open a sealed value (custos_internal.masked).

INSERT INTO @extschema@.ai_tasks (tenant_id, name, version, builtin, system_prompt, prompt_template, answer_schema, max_tokens) VALUES
(NULL, 'analyze_dormant_user', 1, true,
 'You are an identity-security analyst. You are given one account of an organisation: its profile, how long it has been inactive, a deterministic risk score with the reasons behind it, and the most similar accounts with their state. Judge how dangerous the account is now and what should be done, most urgent first. Ground every statement in the data given; do not invent facts.',
 E'Account under review (JSON):\n{{input}}',
 '{"type": "object", "additionalProperties": false,
   "required": ["risk_score", "risk_level", "summary", "insights", "recommendations"],
   "properties": {
     "risk_score": {"type": "number", "minimum": 0, "maximum": 1},
     "risk_level": {"enum": ["low", "medium", "high", "critical"], "default": "medium"},
     "summary": {"type": "string", "minLength": 1, "maxLength": 800},
     "insights": {"type": "array", "items": {"type": "string", "maxLength": 300}, "maxItems": 6},
     "recommendations": {"type": "array", "maxItems": 5, "items": {
       "type": "object", "additionalProperties": false, "required": ["action", "priority", "rationale"],
       "properties": {
         "action": {"type": "string", "minLength": 1, "maxLength": 200},
         "priority": {"enum": ["low", "medium", "high", "urgent"], "default": "medium"},
         "rationale": {"type": "string", "minLength": 1, "maxLength": 400}}}}}}',
 1024);

CREATE TABLE @extschema@.user_insights (
    tenant_id       uuid NOT NULL DEFAULT @extschema@.current_tenant(),
    user_id         text NOT NULL,
    risk_score      double precision NOT NULL CHECK (risk_score BETWEEN 0 AND 1),
    risk_level      text NOT NULL CHECK (risk_level IN ('low', 'medium', 'high', 'critical')),
    summary         text NOT NULL,
    insights        jsonb NOT NULL,
    recommendations jsonb NOT NULL,
    similar_users   jsonb NOT NULL,
    provider        text NOT NULL,
    model           text NOT NULL,
    prompt_version  text NOT NULL,
    fallback        boolean NOT NULL,
    analyzed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
COMMENT ON TABLE @extschema@.user_insights IS
'The latest analysis of each identity by custos.analyze_dormant_user: risk, summary, insights and recommendations validated against the task''s schema, the similar accounts it was shown, and who answered (provider, model, prompt version; fallback when the rule-based answer stands). Tenant-isolated; removed with the identity.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.user_insights');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.user_insights', '');
GRANT SELECT ON @extschema@.user_insights TO custos_reader;

CREATE TABLE @extschema@.rag_analysis_history (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid NOT NULL DEFAULT @extschema@.current_tenant(),
    subject_type    text NOT NULL CHECK (subject_type IN ('user', 'event')),
    subject         text NOT NULL,
    analysis        jsonb NOT NULL,
    provider        text NOT NULL,
    model           text NOT NULL,
    prompt_version  text NOT NULL,
    fallback        boolean NOT NULL,
    analyzed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rag_analysis_history_subject ON @extschema@.rag_analysis_history (tenant_id, subject_type, subject, analyzed_at);
COMMENT ON TABLE @extschema@.rag_analysis_history IS
'Every analysis custos made (custos.analyze_dormant_user of a user, custos.explain_event of an event: subject is its id), with the answer as stored and who gave it. Tenant-isolated; removed with the identity, or the event (retention), it is about.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.rag_analysis_history');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rag_analysis_history', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rag_analysis_history_id_seq', '');
GRANT SELECT ON @extschema@.rag_analysis_history TO custos_reader;

-- The analysis by rules, when no model answered: the deterministic score and its reasons, and
-- the recommendations that follow from the account's state.
CREATE FUNCTION custos_internal.dormant_analysis_by_rules(i @extschema@.identities, risk_score real, risk_level text,
                                                          reasons text[], days_inactive integer)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT jsonb_build_object(
        'risk_score', round(least(greatest(risk_score, 0), 1)::numeric, 3),
        'risk_level', risk_level,
        'summary', format('%s account, %s, %s; deterministic risk %s (%s).',
                          CASE WHEN (i).is_service_account THEN 'Service' ELSE 'Person''s' END,
                          CASE WHEN days_inactive IS NULL THEN 'never active' ELSE format('inactive for %s days', days_inactive) END,
                          'status ' || (i).status, round(risk_score::numeric, 2), risk_level),
        'insights', to_jsonb(coalesce(reasons, '{}')),
        'recommendations', coalesce((SELECT jsonb_agg(r ORDER BY o) FROM (VALUES
            (1, CASE WHEN (i).is_privileged AND risk_level IN ('high', 'critical') THEN jsonb_build_object(
                'action', 'Remove the account''s privileged roles', 'priority', 'urgent',
                'rationale', 'Dormant privileged access is the first thing an attacker looks for.') END),
            (2, CASE WHEN (i).has_valid_credentials AND (i).status <> 'active' THEN jsonb_build_object(
                'action', 'Revoke the account''s credentials', 'priority', 'high',
                'rationale', format('The account is %s but its credentials still work.', (i).status)) END),
            (3, CASE WHEN risk_level IN ('high', 'critical') AND (i).has_valid_credentials THEN jsonb_build_object(
                'action', 'Disable the account until its owner confirms it is needed', 'priority', 'high',
                'rationale', 'Unused accounts with working credentials widen the attack surface.') END),
            (4, CASE WHEN NOT (i).mfa_enabled AND NOT (i).is_service_account THEN jsonb_build_object(
                'action', 'Require MFA before the next sign-in', 'priority', 'medium',
                'rationale', 'The account signs in with a password alone.') END),
            (5, CASE WHEN (i).is_service_account THEN jsonb_build_object(
                'action', 'Confirm an owner and rotate the service account''s keys', 'priority', 'medium',
                'rationale', 'Service accounts outlive the people who made them.') END)) v (o, r)
           WHERE r IS NOT NULL), '[]'::jsonb))
$fn$;
COMMENT ON FUNCTION custos_internal.dormant_analysis_by_rules(@extschema@.identities, real, text, text[], integer) IS
'Internal: the analysis of custos.analyze_dormant_user by rules (the deterministic risk, its reasons, recommendations from the account''s state), when no model answered.';

-- What the model is told about an identity (custos.analyze_dormant_user, the dormant_insights
-- job): its profile, inactivity, deterministic risk with reasons, and its most similar accounts
-- with their state (when its profile is embedded).
CREATE FUNCTION custos_internal.dormant_context(tenant uuid, who text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    i @extschema@.identities;
    d record;
    neighbours jsonb := '[]';
BEGIN
    SELECT * INTO i FROM @extschema@.identities x WHERE x.tenant_id = tenant AND x.user_id = who;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the current tenant has no identity "%"', who
            USING ERRCODE = 'P0002', HINT = 'custos.dormant_users lists the tenant''s identities';
    END IF;
    SELECT * INTO d FROM custos_internal.dormant_row(i, NULL);
    IF EXISTS (SELECT 1 FROM @extschema@.identity_embeddings e
                WHERE e.tenant_id = tenant AND e.user_id = who AND e.model = custos_internal.embedding_model(NULL)) THEN
        SELECT coalesce(jsonb_agg(jsonb_build_object('user_id', s.similar_user_id, 'similarity', round(s.similarity::numeric, 3),
                                                     'status', s.status, 'department', s.department,
                                                     'privileged', s.is_privileged, 'last_active_at', s.last_active_at)
                                  ORDER BY s.similarity DESC), '[]')
          INTO neighbours FROM @extschema@.similar_users(who, 5) s;
    END IF;
    RETURN jsonb_build_object(
        'account', jsonb_strip_nulls(jsonb_build_object(
            'user_id', who, 'status', (i).status, 'service_account', (i).is_service_account,
            'privileged', (i).is_privileged, 'roles', to_jsonb((i).roles), 'department', (i).department,
            'source', (i).source, 'mfa_enabled', (i).mfa_enabled, 'credentials_valid', (i).has_valid_credentials,
            'days_inactive', d.days_inactive, 'never_active', d.never_active,
            'review_decision', (i).review_decision)),
        'deterministic_risk', jsonb_build_object('score', round(d.risk_score::numeric, 3), 'level', d.risk_level,
                                                 'reasons', to_jsonb(d.reasons)),
        'similar_accounts', neighbours);
END
$fn$;
COMMENT ON FUNCTION custos_internal.dormant_context(uuid, text) IS
'Internal: what the analyze_dormant_user task is told about an identity (profile, inactivity, deterministic risk and reasons, similar accounts); P0002 for an unknown one.';

-- Stores an analysis (the model's answer, or the rules' when fallback) as the latest of the
-- identity and in the history.
CREATE FUNCTION custos_internal.store_dormant_analysis(tenant uuid, who text, context jsonb, answer jsonb, provider text,
                                                       model text, prompt_version integer, fallback boolean)
RETURNS @extschema@.user_insights
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    i @extschema@.identities;
    d record;
    version text := 'analyze_dormant_user@' || prompt_version;
    neighbours jsonb := coalesce(context->'similar_accounts', '[]');
    stored @extschema@.user_insights;
BEGIN
    IF fallback THEN
        SELECT * INTO i FROM @extschema@.identities x WHERE x.tenant_id = tenant AND x.user_id = who;
        SELECT * INTO d FROM custos_internal.dormant_row(i, NULL);
        answer := custos_internal.dormant_analysis_by_rules(i, d.risk_score, d.risk_level, d.reasons, d.days_inactive);
    END IF;
    INSERT INTO @extschema@.rag_analysis_history (tenant_id, subject_type, subject, analysis, provider, model, prompt_version, fallback)
    VALUES (tenant, 'user', who, answer || jsonb_build_object('similar_users', neighbours), provider, model, version, fallback);
    INSERT INTO @extschema@.user_insights AS u (tenant_id, user_id, risk_score, risk_level, summary, insights, recommendations,
                                                similar_users, provider, model, prompt_version, fallback, analyzed_at)
    VALUES (tenant, who, (answer->>'risk_score')::float8, answer->>'risk_level', answer->>'summary', answer->'insights',
            answer->'recommendations', neighbours, provider, model, version, fallback, now())
    ON CONFLICT (tenant_id, user_id) DO UPDATE
       SET risk_score = excluded.risk_score, risk_level = excluded.risk_level, summary = excluded.summary,
           insights = excluded.insights, recommendations = excluded.recommendations,
           similar_users = excluded.similar_users, provider = excluded.provider, model = excluded.model,
           prompt_version = excluded.prompt_version, fallback = excluded.fallback, analyzed_at = excluded.analyzed_at
    RETURNING * INTO stored;
    RETURN stored;
END
$fn$;
COMMENT ON FUNCTION custos_internal.store_dormant_analysis(uuid, text, jsonb, jsonb, text, text, integer, boolean) IS
'Internal: stores an analysis of an identity (the rules'' when fallback) in custos.user_insights and custos.rag_analysis_history.';

CREATE FUNCTION @extschema@.analyze_dormant_user(user_id text)
RETURNS TABLE (analyzed_user_id text, risk_score double precision, risk_level text, summary text, insights jsonb,
               recommendations jsonb, similar_users jsonb, provider text, model text, prompt_version text,
               fallback boolean, analyzed_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    tenant uuid := @extschema@.require_tenant();
    who text := analyze_dormant_user.user_id;
    context jsonb := custos_internal.dormant_context(tenant, who);
    r record;
    u @extschema@.user_insights;
BEGIN
    SELECT * INTO r FROM custos_internal.run_ai_task('analyze_dormant_user', context);
    u := custos_internal.store_dormant_analysis(tenant, who, context, r.answer, r.provider, r.model, r.prompt_version, r.fallback);
    RETURN QUERY SELECT u.user_id, u.risk_score, u.risk_level, u.summary, u.insights, u.recommendations,
                        u.similar_users, u.provider, u.model, u.prompt_version, u.fallback, u.analyzed_at;
END
$fn$;
COMMENT ON FUNCTION @extschema@.analyze_dormant_user(text) IS
'Analyses one identity of the current tenant: its profile, inactivity, deterministic risk score with reasons and its most similar accounts (custos.similar_users, when embedded) go, redacted, to the analyze_dormant_user task; the answer, validated against the task''s schema, is stored in custos.user_insights (latest) and custos.rag_analysis_history (all) and returned with who answered (the user id as analyzed_user_id: a parameter cannot share its name with a result column). With the local provider, or when the model fails twice, the analysis by rules stands (fallback = true): the deterministic risk, its reasons and recommendations from the account''s state.';

CREATE VIEW @extschema@.dormant_insights WITH (security_invoker = true) AS
    SELECT u.user_id, i.status, i.last_active_at, u.risk_score, u.risk_level, u.summary, u.insights,
           u.recommendations, u.fallback, u.model, u.prompt_version, u.analyzed_at
      FROM @extschema@.user_insights u
      JOIN @extschema@.identities i ON i.tenant_id = u.tenant_id AND i.user_id = u.user_id;
COMMENT ON VIEW @extschema@.dormant_insights IS
'The latest analysis of each identity of the current tenant (custos.analyze_dormant_user) beside its status and last activity: join it to custos.dormant_users() on user_id for the report with insights.';
GRANT SELECT ON @extschema@.dormant_insights TO custos_reader;

CREATE FUNCTION custos_internal.user_insights_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.identities', 'custos.user_insights_removed');
    DELETE FROM @extschema@.user_insights u USING custos_removed r WHERE u.tenant_id = r.tenant_id AND u.user_id = r.user_id;
    DELETE FROM @extschema@.rag_analysis_history h USING custos_removed r
     WHERE h.tenant_id = r.tenant_id AND h.subject_type = 'user' AND h.subject = r.user_id;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION custos_internal.user_insights_removed() IS
'Trigger of custos.identities: a removed identity (custos.forget_subject among others) takes its insights and their history along.';
CREATE TRIGGER zz_user_insights_removed AFTER DELETE ON @extschema@.identities
    REFERENCING OLD TABLE AS custos_removed FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.user_insights_removed();

------------------------------------------------------------------------------------------------
-- Events explained
------------------------------------------------------------------------------------------------
INSERT INTO @extschema@.ai_tasks (tenant_id, name, version, builtin, system_prompt, prompt_template, answer_schema, max_tokens) VALUES
(NULL, 'explain_event', 1, true,
 'You explain one audit event to an auditor: what happened, in plain words, and why it may matter given how often such events occur, who usually does them and what happened around it. Ground every statement in the data given; values shown as <sealed> are encrypted and unknown to you.',
 E'Event and its context (JSON):\n{{input}}',
 '{"type": "object", "additionalProperties": false,
   "required": ["what_happened", "why_it_matters", "significance", "follow_up"],
   "properties": {
     "what_happened": {"type": "string", "minLength": 1, "maxLength": 600},
     "why_it_matters": {"type": "string", "minLength": 1, "maxLength": 800},
     "significance": {"enum": ["low", "medium", "high", "critical"], "default": "low"},
     "follow_up": {"type": "array", "items": {"type": "string", "maxLength": 300}, "maxItems": 3}}}',
 700);

-- What a model is told about an event: the event with sealed values masked, how common it is,
-- and the events around it. Counts cover the 30 days before the event.
CREATE FUNCTION custos_internal.event_context(tenant uuid, ev @extschema@.events) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    stats record;
    utc_hour integer := extract(hour FROM ev.occurred_at AT TIME ZONE 'UTC');
    m text;
    q @extschema@.event_embeddings.embedding%TYPE;
    related jsonb;
BEGIN
    SELECT count(*) AS tenant_events,
           count(*) FILTER (WHERE e.action = ev.action) AS action_events,
           count(*) FILTER (WHERE e.action = ev.action AND e.actor = ev.actor) AS actor_action_events,
           count(*) FILTER (WHERE e.actor = ev.actor) AS actor_events
      INTO stats
      FROM @extschema@.events e
     WHERE e.tenant_id = tenant AND e.occurred_at > ev.occurred_at - interval '30 days' AND e.occurred_at <= ev.occurred_at;
    -- Around it: the same actor or entity within a day (among the 10,000 events either side),
    -- and, when the events are embedded, the nearest in meaning.
    SELECT coalesce(jsonb_agg(x ORDER BY x.occurred_at, x.seq), '[]') INTO related FROM (
        SELECT e.seq, e.id, e.occurred_at, e.action, e.severity,
               CASE WHEN ev.entity_id IS NOT NULL AND e.entity_type = ev.entity_type AND e.entity_id = ev.entity_id
                    THEN 'same entity' ELSE 'same actor' END AS relation
          FROM @extschema@.events e
         WHERE e.tenant_id = tenant AND e.seq BETWEEN ev.seq - 10000 AND ev.seq + 10000 AND e.seq <> ev.seq
           AND e.occurred_at BETWEEN ev.occurred_at - interval '1 day' AND ev.occurred_at + interval '1 day'
           AND (e.actor = ev.actor OR (ev.entity_id IS NOT NULL AND e.entity_type = ev.entity_type AND e.entity_id = ev.entity_id))
         ORDER BY abs(extract(epoch FROM e.occurred_at - ev.occurred_at)), e.seq
         LIMIT 5) x;
    m := custos_internal.embedding_model(NULL);
    SELECT e.embedding INTO q FROM @extschema@.event_embeddings e WHERE e.tenant_id = tenant AND e.seq = ev.seq AND e.model = m;
    IF q IS NOT NULL THEN
        related := related || coalesce((
            SELECT jsonb_agg(jsonb_build_object('seq', n.seq, 'id', n.id, 'occurred_at', n.occurred_at, 'action', n.action,
                                                'severity', n.severity, 'relation', 'similar',
                                                'similarity', round(n.similarity::numeric, 3)) ORDER BY n.similarity DESC)
              FROM custos_internal.nearest_events(tenant, q, m, 3, NULL, NULL, NULL, NULL, ev.seq) n
             WHERE NOT related @> jsonb_build_array(jsonb_build_object('seq', n.seq))), '[]');
    END IF;
    RETURN jsonb_build_object(
        'event', jsonb_strip_nulls(jsonb_build_object(
            'action', ev.action, 'entity_type', ev.entity_type, 'entity_id', custos_internal.masked(ev.entity_id),
            'actor', custos_internal.masked(ev.actor), 'db_role', ev.db_role, 'severity', ev.severity,
            'occurred_at', ev.occurred_at, 'ip_address', custos_internal.masked(ev.ip_address),
            'details', custos_internal.masked_details(ev.details))),
        'statistics', jsonb_build_object(
            'tenant_events_30d', stats.tenant_events, 'action_events_30d', stats.action_events,
            'actor_events_30d', stats.actor_events, 'actor_action_events_30d', stats.actor_action_events,
            'first_of_its_kind_for_actor', stats.actor_action_events <= 1,
            'outside_working_hours_utc', utc_hour < 7 OR utc_hour >= 20,
            'weekend_utc', extract(isodow FROM ev.occurred_at AT TIME ZONE 'UTC') >= 6),
        'related_events', related);
END
$fn$;
COMMENT ON FUNCTION custos_internal.event_context(uuid, @extschema@.events) IS
'Internal: what custos.explain_event tells a model about an event: the event (sealed values masked), how common such events are in the 30 days before it, and related events (same actor or entity within a day; the nearest in meaning when embedded).';

-- The explanation by rules, when no model answered: the event in words and the signals its
-- context raises.
CREATE FUNCTION custos_internal.event_explanation_by_rules(ev @extschema@.events, context jsonb) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH s AS (SELECT context->'statistics' AS st, jsonb_array_length(context->'related_events') AS n_related),
    signals AS (
        SELECT array_remove(ARRAY[
                   CASE WHEN (st->>'first_of_its_kind_for_actor')::boolean
                        THEN format('It is the first "%s" by this actor in 30 days.', (ev).action) END,
                   CASE WHEN (st->>'action_events_30d')::bigint <= 3
                        THEN format('The tenant recorded only %s such event%s in 30 days.', st->>'action_events_30d',
                                    CASE WHEN st->>'action_events_30d' = '1' THEN '' ELSE 's' END) END,
                   CASE WHEN (st->>'outside_working_hours_utc')::boolean OR (st->>'weekend_utc')::boolean
                        THEN 'It happened outside working hours (UTC).' END], NULL) AS found,
               st, n_related
          FROM s)
    SELECT jsonb_build_object(
        'what_happened', format('%s on %s%s by %s at %s UTC, severity %s.', (ev).action, (ev).entity_type,
                                coalesce(' ' || custos_internal.masked((ev).entity_id), ''),
                                coalesce(nullif(custos_internal.masked((ev).actor), ''), 'an unknown actor'),
                                to_char((ev).occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), (ev).severity),
        'why_it_matters', CASE WHEN cardinality(found) = 0 AND (ev).severity IN ('info', 'low')
                               THEN format('A routine event: %s such events in 30 days, %s by this actor.',
                                           st->>'action_events_30d', st->>'actor_action_events_30d')
                               ELSE concat_ws(' ', CASE WHEN (ev).severity IN ('high', 'critical')
                                                        THEN format('It was recorded with severity %s.', (ev).severity) END,
                                              array_to_string(found, ' ')) END
                          || CASE WHEN n_related = 1 THEN ' 1 related event is listed.'
                                  WHEN n_related > 1 THEN format(' %s related events are listed.', n_related) ELSE '' END,
        'significance', CASE WHEN (ev).severity = 'critical' THEN 'critical'
                             WHEN (ev).severity = 'high' OR cardinality(found) >= 2 THEN 'high'
                             WHEN (ev).severity = 'medium' OR cardinality(found) = 1 THEN 'medium'
                             ELSE 'low' END,
        'follow_up', to_jsonb(array_remove(ARRAY[
            CASE WHEN (st->>'first_of_its_kind_for_actor')::boolean AND (ev).severity <> 'info'
                 THEN 'Confirm with the actor that the action was intended.' END,
            CASE WHEN (ev).severity IN ('high', 'critical') OR cardinality(found) >= 2
                 THEN 'Review the related events around it in custos.timeline().' END], NULL)))
      FROM signals
$fn$;
COMMENT ON FUNCTION custos_internal.event_explanation_by_rules(@extschema@.events, jsonb) IS
'Internal: the explanation of custos.explain_event by rules (the event in words; rarity, first time for the actor, hours and severity as reasons), when no model answered.';

CREATE FUNCTION @extschema@.explain_event(event_id uuid)
RETURNS TABLE (explained_event_id uuid, seq bigint, occurred_at timestamptz, action text, what_happened text,
               why_it_matters text, significance text, follow_up jsonb, related_events jsonb, provider text,
               model text, prompt_version text, fallback boolean, explained_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    tenant uuid := @extschema@.require_tenant();
    ev @extschema@.events;
    context jsonb;
    r record;
    answer jsonb;
    version text;
BEGIN
    SELECT * INTO ev FROM @extschema@.events e
     WHERE e.tenant_id = tenant AND e.seq = @extschema@.event_seq(explain_event.event_id) AND e.id = explain_event.event_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the current tenant has no event %', explain_event.event_id
            USING ERRCODE = 'P0002', HINT = 'custos.timeline() lists the tenant''s events with their ids';
    END IF;
    context := custos_internal.event_context(tenant, ev);
    SELECT * INTO r FROM custos_internal.run_ai_task('explain_event', context);
    answer := CASE WHEN r.fallback THEN custos_internal.event_explanation_by_rules(ev, context) ELSE r.answer END;
    version := 'explain_event@' || r.prompt_version;
    INSERT INTO @extschema@.rag_analysis_history (tenant_id, subject_type, subject, analysis, provider, model, prompt_version, fallback)
    VALUES (tenant, 'event', ev.id::text, answer || jsonb_build_object('related_events', context->'related_events',
                                                                        'statistics', context->'statistics'),
            r.provider, r.model, version, r.fallback);
    PERFORM custos_internal.log_access(tenant, 'custos.explain_event', jsonb_build_object('id', ev.id), 1);
    RETURN QUERY SELECT ev.id, ev.seq, ev.occurred_at, ev.action, answer->>'what_happened', answer->>'why_it_matters',
                        answer->>'significance', coalesce(answer->'follow_up', '[]'), context->'related_events',
                        r.provider, r.model, version, r.fallback, now();
END
$fn$;
COMMENT ON FUNCTION @extschema@.explain_event(uuid) IS
'Explains one event of the current tenant: the event (sealed values masked, never opened), how common such events are in the 30 days before it and the related events around it (same actor or entity within a day; the nearest in meaning when embedded) go, redacted, to the explain_event task; the answer (what happened, why it may matter, significance, follow-up), validated against the task''s schema, is stored in custos.rag_analysis_history and returned with the related events and who answered. With the local provider, or when the model fails twice, the explanation by rules stands (fallback = true). Recorded in custos.access_log.';

CREATE FUNCTION custos_internal.event_explanations_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.events', 'custos.event_explanations_removed');
    IF EXISTS (SELECT 1 FROM @extschema@.rag_analysis_history h WHERE h.subject_type = 'event') THEN
        DELETE FROM @extschema@.rag_analysis_history h USING custos_removed r
         WHERE h.tenant_id = r.tenant_id AND h.subject_type = 'event' AND h.subject = r.id::text;
    END IF;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION custos_internal.event_explanations_removed() IS
'Trigger of custos.events: the explanations of the events retention removes go with them.';
CREATE TRIGGER zz_event_explanations_removed AFTER DELETE ON @extschema@.events
    REFERENCING OLD TABLE AS custos_removed FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.event_explanations_removed();

------------------------------------------------------------------------------------------------
-- Periods summarised
------------------------------------------------------------------------------------------------
INSERT INTO @extschema@.ai_tasks (tenant_id, name, version, builtin, system_prompt, prompt_template, answer_schema, max_tokens) VALUES
(NULL, 'summarize_period', 1, true,
 'You write the security summary of one period of an organisation''s audit ledger for its security team and auditors. You are given statistics computed from the ledger for the period and the one before it. Say what happened, what changed and what deserves attention, most important first. Use only the numbers given; values shown as <sealed> are encrypted and unknown to you.',
 E'Period statistics (JSON):\n{{input}}',
 '{"type": "object", "additionalProperties": false,
   "required": ["summary", "risk", "highlights", "follow_up"],
   "properties": {
     "summary": {"type": "string", "minLength": 1, "maxLength": 1200},
     "risk": {"enum": ["none", "low", "medium", "high", "critical"], "default": "low"},
     "highlights": {"type": "array", "items": {"type": "string", "maxLength": 300}, "maxItems": 5},
     "follow_up": {"type": "array", "items": {"type": "string", "maxLength": 300}, "maxItems": 3}}}',
 900);

CREATE TABLE @extschema@.summaries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid NOT NULL DEFAULT @extschema@.current_tenant(),
    period         text NOT NULL CHECK (period IN ('daily', 'weekly', 'monthly')),
    window_start   timestamptz NOT NULL,
    window_end     timestamptz NOT NULL CHECK (window_end > window_start),
    statistics     jsonb NOT NULL,
    summary        text NOT NULL,
    risk           text NOT NULL CHECK (risk IN ('none', 'low', 'medium', 'high', 'critical')),
    highlights     jsonb NOT NULL,
    follow_up      jsonb NOT NULL,
    provider       text NOT NULL,
    model          text NOT NULL,
    prompt_version text NOT NULL,
    fallback       boolean NOT NULL,
    summarized_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX summaries_tenant_period ON @extschema@.summaries (tenant_id, period, window_end DESC);
COMMENT ON TABLE @extschema@.summaries IS
'Every summary custos.summarize made: the period''s statistics (computed in SQL) and the narrative, validated against the summarize_period task''s schema, with who wrote it (fallback when the rules did). Tenant-isolated.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.summaries');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.summaries', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.summaries_id_seq', '');
GRANT SELECT ON @extschema@.summaries TO custos_reader;

-- A period's statistics, beside the period before it. Sealed actors read <sealed>.
CREATE FUNCTION custos_internal.period_statistics(tenant uuid, window_start timestamptz, window_end timestamptz)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH w AS MATERIALIZED (
        SELECT e.action, e.severity, e.actor FROM @extschema@.events e
         WHERE e.tenant_id = tenant AND e.occurred_at >= window_start AND e.occurred_at < window_end)
    SELECT jsonb_build_object(
        'window_start', window_start, 'window_end', window_end,
        'events', (SELECT count(*) FROM w),
        'previous_period_events', (SELECT count(*) FROM @extschema@.events e
                                    WHERE e.tenant_id = tenant AND e.occurred_at >= window_start - (window_end - window_start)
                                      AND e.occurred_at < window_start),
        'actors', (SELECT count(DISTINCT w.actor) FROM w),
        'by_severity', (SELECT coalesce(jsonb_object_agg(x.severity, x.n), '{}')
                          FROM (SELECT w.severity, count(*) AS n FROM w GROUP BY 1) x),
        'top_actions', (SELECT coalesce(jsonb_agg(jsonb_build_object('action', x.action, 'events', x.n) ORDER BY x.n DESC, x.action), '[]')
                          FROM (SELECT w.action, count(*) AS n FROM w GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10) x),
        'top_actors', (SELECT coalesce(jsonb_agg(jsonb_build_object('actor', x.actor, 'events', x.n) ORDER BY x.n DESC, x.actor), '[]')
                         FROM (SELECT custos_internal.masked(w.actor) AS actor, count(*) AS n FROM w GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5) x),
        'erasures', (SELECT count(*) FROM w WHERE w.action = 'custos.forget_subject'),
        'alerts', (SELECT coalesce(jsonb_object_agg(x.severity, x.n), '{}')
                     FROM (SELECT a.severity, count(*) AS n FROM @extschema@.alerts a
                            WHERE a.tenant_id = tenant AND a.created_at >= window_start AND a.created_at < window_end
                            GROUP BY 1) x))
$fn$;
COMMENT ON FUNCTION custos_internal.period_statistics(uuid, timestamptz, timestamptz) IS
'Internal: the statistics custos.summarize reports for [window_start, window_end): events by severity, the top actions and actors, erasures, alerts by severity, and the previous period''s event count.';

-- The summary by rules, when no model answered: the statistics in words.
CREATE FUNCTION custos_internal.period_summary_by_rules(period text, st jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH n AS (
        SELECT (st->>'events')::bigint AS events, (st->>'previous_period_events')::bigint AS previous,
               coalesce((st->'by_severity'->>'critical')::bigint, 0) AS critical,
               coalesce((st->'by_severity'->>'high')::bigint, 0) AS high,
               coalesce((st->'by_severity'->>'medium')::bigint, 0) AS medium,
               (st->>'erasures')::bigint AS erasures,
               (SELECT coalesce(sum(v::bigint), 0) FROM jsonb_each_text(st->'alerts') a(k, v)) AS alerts,
               coalesce((st->'alerts'->>'critical')::bigint, 0) + coalesce((st->'alerts'->>'high')::bigint, 0) AS serious_alerts,
               CASE period WHEN 'daily' THEN 'day' WHEN 'weekly' THEN 'week' ELSE 'month' END AS span)
    SELECT jsonb_build_object(
        'summary', CASE WHEN events = 0 THEN format('No events were recorded in the last %s.', span)
                        ELSE format('%s by %s in the last %s (%s in the %s before). Most frequent: %s.',
                                    CASE WHEN events = 1 THEN '1 event' ELSE events || ' events' END, CASE WHEN st->>'actors' = '1' THEN '1 actor' ELSE (st->>'actors') || ' actors' END,
                                    span, previous, span,
                                    (SELECT string_agg(format('%s (%s)', a->>'action', a->>'events'), ', ')
                                       FROM jsonb_array_elements(st->'top_actions') WITH ORDINALITY t(a, o) WHERE o <= 3))
                   END,
        'risk', CASE WHEN critical > 0 OR coalesce((st->'alerts'->>'critical')::bigint, 0) > 0 THEN 'critical'
                     WHEN high > 0 OR serious_alerts > 0 THEN 'high'
                     WHEN medium > 0 OR alerts > 0 OR erasures > 0 THEN 'medium'
                     WHEN events > 0 THEN 'low' ELSE 'none' END,
        'highlights', to_jsonb(array_remove(ARRAY[
            CASE WHEN critical + high > 0
                 THEN format('%s event%s of severity high or critical.', critical + high, CASE WHEN critical + high = 1 THEN '' ELSE 's' END) END,
            CASE WHEN alerts > 0 THEN format('%s alert%s raised (%s high or critical).', alerts,
                                             CASE WHEN alerts = 1 THEN '' ELSE 's' END, serious_alerts) END,
            CASE WHEN erasures > 0 THEN format('%s subject%s erased (custos.forget_subject).', erasures,
                                               CASE WHEN erasures = 1 THEN '' ELSE 's' END) END,
            CASE WHEN previous > 0 AND (events >= 2 * previous OR 2 * events <= previous)
                 THEN format('Activity changed from %s to %s events against the period before.', previous, events) END], NULL)),
        'follow_up', to_jsonb(array_remove(ARRAY[
            CASE WHEN serious_alerts > 0 THEN 'Triage the open high and critical alerts (custos.alerts).' END,
            CASE WHEN critical + high > 0 THEN 'Review the high and critical events in custos.timeline(min_severity => ''high'').' END], NULL)))
      FROM n
$fn$;
COMMENT ON FUNCTION custos_internal.period_summary_by_rules(text, jsonb) IS
'Internal: the summary of custos.summarize by rules (the statistics in words, a risk from severities, alerts and erasures), when no model answered.';

-- The window of a period ending at until: [until - period, until); 22023 for an unknown period.
CREATE FUNCTION custos_internal.period_window(period text, until timestamptz)
RETURNS TABLE (window_start timestamptz, window_end timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    w_end timestamptz := coalesce(period_window.until, now());
    w_start timestamptz := w_end - CASE period_window.period WHEN 'daily' THEN interval '1 day'
                                   WHEN 'weekly' THEN interval '7 days' WHEN 'monthly' THEN interval '1 month' END;
BEGIN
    IF w_start IS NULL THEN
        RAISE EXCEPTION 'unknown period "%"', period_window.period
            USING ERRCODE = '22023', HINT = 'one of daily, weekly, monthly: the period that ends at until (default now)';
    END IF;
    RETURN QUERY SELECT w_start, w_end;
END
$fn$;
COMMENT ON FUNCTION custos_internal.period_window(text, timestamptz) IS
'Internal: the window [start, end) of a daily, weekly or monthly period ending at until (default now).';

-- Stores a summary (the model's narrative, or the rules' when fallback) and logs the read.
CREATE FUNCTION custos_internal.store_summary(tenant uuid, period text, w_start timestamptz, w_end timestamptz,
                                              statistics jsonb, answer jsonb, provider text, model text,
                                              prompt_version integer, fallback boolean)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    new_id bigint;
BEGIN
    IF fallback THEN
        answer := custos_internal.period_summary_by_rules(period, statistics);
    END IF;
    INSERT INTO @extschema@.summaries (tenant_id, period, window_start, window_end, statistics, summary, risk, highlights,
                                       follow_up, provider, model, prompt_version, fallback)
    VALUES (tenant, period, w_start, w_end, statistics, answer->>'summary', answer->>'risk',
            coalesce(answer->'highlights', '[]'), coalesce(answer->'follow_up', '[]'), provider, model,
            'summarize_period@' || prompt_version, fallback)
    RETURNING id INTO new_id;
    PERFORM custos_internal.log_access(tenant, 'custos.summarize',
                                       jsonb_build_object('period', period, 'since', w_start, 'until', w_end),
                                       (statistics->>'events')::bigint);
    RETURN new_id;
END
$fn$;
COMMENT ON FUNCTION custos_internal.store_summary(uuid, text, timestamptz, timestamptz, jsonb, jsonb, text, text, integer, boolean) IS
'Internal: stores a summary (the rules'' narrative when fallback) in custos.summaries and records the read in the access log.';

CREATE FUNCTION @extschema@.summarize(period text DEFAULT 'daily', until timestamptz DEFAULT NULL)
RETURNS TABLE (summary_id bigint, window_start timestamptz, window_end timestamptz, statistics jsonb, summary text,
               risk text, highlights jsonb, follow_up jsonb, provider text, model text, prompt_version text,
               fallback boolean, summarized_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    tenant uuid := @extschema@.require_tenant();
    w record;
    st jsonb;
    r record;
    new_id bigint;
BEGIN
    SELECT * INTO w FROM custos_internal.period_window(summarize.period, summarize.until);
    st := custos_internal.period_statistics(tenant, w.window_start, w.window_end);
    SELECT * INTO r FROM custos_internal.run_ai_task('summarize_period', st || jsonb_build_object('period', summarize.period));
    new_id := custos_internal.store_summary(tenant, summarize.period, w.window_start, w.window_end, st, r.answer,
                                            r.provider, r.model, r.prompt_version, r.fallback);
    RETURN QUERY SELECT s.id, s.window_start, s.window_end, s.statistics, s.summary, s.risk, s.highlights, s.follow_up,
                        s.provider, s.model, s.prompt_version, s.fallback, s.summarized_at
                   FROM @extschema@.summaries s WHERE s.id = new_id;
END
$fn$;
COMMENT ON FUNCTION @extschema@.summarize(text, timestamptz) IS
'Summarises the current tenant''s ledger over the daily, weekly or monthly period that ends at until (default now): statistics computed in SQL (events by severity, top actions and actors with sealed actors masked, erasures, alerts, the period before) and a narrative from the summarize_period task, validated against its schema; both stored in custos.summaries and returned. With the local provider, or when the model fails twice, the summary by rules stands (fallback = true). Recorded in custos.access_log.';

-- What custos.export_subject adds about a person from this module: their latest analysis and
-- every earlier one.
CREATE FUNCTION custos_internal.subject_insights(tenant uuid, subject text) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT jsonb_build_object(
        'latest', (SELECT to_jsonb(u) - 'tenant_id' FROM @extschema@.user_insights u
                    WHERE u.tenant_id = tenant AND u.user_id = subject),
        'history', coalesce((SELECT jsonb_agg(to_jsonb(h) - 'tenant_id' ORDER BY h.analyzed_at)
                               FROM @extschema@.rag_analysis_history h
                              WHERE h.tenant_id = tenant AND h.subject_type = 'user' AND h.subject = subject_insights.subject), '[]'),
        'embeddings', coalesce((SELECT jsonb_agg(jsonb_build_object('model', e.model, 'dimensions', e.dims,
                                                                    'embedded_at', e.embedded_at) ORDER BY e.model)
                                  FROM @extschema@.identity_embeddings e
                                 WHERE e.tenant_id = tenant AND e.user_id = subject), '[]'))
$fn$;
COMMENT ON FUNCTION custos_internal.subject_insights(uuid, text) IS
'Internal: what custos.export_subject reports of a person''s analyses (latest and history) and of their profile''s embeddings (model, dimensions, when; not the vectors).';
