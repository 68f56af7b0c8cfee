-- Insights (src/insights/): analyses that combine custos' own data with a model's judgement
-- (retrieval-augmented), each answer validated against its task's schema and stored with who
-- gave it: custos.analyze_dormant_user, into custos.user_insights (the latest per user) and
-- custos.rag_analysis_history (every one).

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
    subject_type    text NOT NULL CHECK (subject_type IN ('user')),
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
'Every analysis custos made (custos.analyze_dormant_user), with the answer as stored and who gave it. Tenant-isolated; removed with the identity it is about.';
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
    i @extschema@.identities;
    d record;
    neighbours jsonb := '[]';
    context jsonb;
    r record;
    answer jsonb;
    version text;
BEGIN
    SELECT * INTO i FROM @extschema@.identities x WHERE x.tenant_id = tenant AND x.user_id = who;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the current tenant has no identity "%"', who
            USING ERRCODE = 'P0002', HINT = 'custos.dormant_users lists the tenant''s identities';
    END IF;
    SELECT * INTO d FROM custos_internal.dormant_row(i, NULL);
    -- Who else looks like this account, and what became of them (when its profile is embedded).
    IF EXISTS (SELECT 1 FROM @extschema@.identity_embeddings e
                WHERE e.tenant_id = tenant AND e.user_id = who AND e.model = custos_internal.embedding_model(NULL)) THEN
        SELECT coalesce(jsonb_agg(jsonb_build_object('user_id', s.similar_user_id, 'similarity', round(s.similarity::numeric, 3),
                                                     'status', s.status, 'department', s.department,
                                                     'privileged', s.is_privileged, 'last_active_at', s.last_active_at)
                                  ORDER BY s.similarity DESC), '[]')
          INTO neighbours FROM @extschema@.similar_users(who, 5) s;
    END IF;
    context := jsonb_build_object(
        'account', jsonb_strip_nulls(jsonb_build_object(
            'user_id', who, 'status', (i).status, 'service_account', (i).is_service_account,
            'privileged', (i).is_privileged, 'roles', to_jsonb((i).roles), 'department', (i).department,
            'source', (i).source, 'mfa_enabled', (i).mfa_enabled, 'credentials_valid', (i).has_valid_credentials,
            'days_inactive', d.days_inactive, 'never_active', d.never_active,
            'review_decision', (i).review_decision)),
        'deterministic_risk', jsonb_build_object('score', round(d.risk_score::numeric, 3), 'level', d.risk_level,
                                                 'reasons', to_jsonb(d.reasons)),
        'similar_accounts', neighbours);
    SELECT * INTO r FROM custos_internal.run_ai_task('analyze_dormant_user', context);
    answer := CASE WHEN r.fallback
                   THEN custos_internal.dormant_analysis_by_rules(i, d.risk_score, d.risk_level, d.reasons, d.days_inactive)
                   ELSE r.answer END;
    version := 'analyze_dormant_user@' || r.prompt_version;
    INSERT INTO @extschema@.rag_analysis_history (tenant_id, subject_type, subject, analysis, provider, model, prompt_version, fallback)
    VALUES (tenant, 'user', who, answer || jsonb_build_object('similar_users', neighbours), r.provider, r.model, version, r.fallback);
    INSERT INTO @extschema@.user_insights AS u (tenant_id, user_id, risk_score, risk_level, summary, insights, recommendations,
                                                similar_users, provider, model, prompt_version, fallback, analyzed_at)
    VALUES (tenant, who, (answer->>'risk_score')::float8, answer->>'risk_level', answer->>'summary', answer->'insights',
            answer->'recommendations', neighbours, r.provider, r.model, version, r.fallback, now())
    ON CONFLICT (tenant_id, user_id) DO UPDATE
       SET risk_score = excluded.risk_score, risk_level = excluded.risk_level, summary = excluded.summary,
           insights = excluded.insights, recommendations = excluded.recommendations,
           similar_users = excluded.similar_users, provider = excluded.provider, model = excluded.model,
           prompt_version = excluded.prompt_version, fallback = excluded.fallback, analyzed_at = excluded.analyzed_at;
    RETURN QUERY SELECT u.user_id, u.risk_score, u.risk_level, u.summary, u.insights, u.recommendations,
                        u.similar_users, u.provider, u.model, u.prompt_version, u.fallback, u.analyzed_at
                   FROM @extschema@.user_insights u WHERE u.tenant_id = tenant AND u.user_id = who;
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
