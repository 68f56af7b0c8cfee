-- Anomaly detection (src/anomaly/): Isolation Forest models trained and scored in the backend,
-- audit-event features, detection into custos.anomalies, feedback and bias checks.

-- Functions written in Rust that only custos itself calls: out of the public schema.
ALTER FUNCTION @extschema@.event_value_key(uuid, uuid, text, text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.if_assess(uuid, text, double precision[], double precision, integer) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.invalidate_model_cache() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.train_event_model(text, integer, integer, bigint) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.anomaly_scores_on_insert(uuid) SET SCHEMA custos_internal;

INSERT INTO @extschema@.setting_definitions (key, value_type, default_value, min_value, max_value, description) VALUES
    ('anomaly.threshold', 'number', '0.7', 0.5, 0.99,
     'Score from which custos.detect_anomalies records an event as an anomaly (Isolation Forest scores: about 0.5 is ordinary, near 1 isolated at once).'),
    ('anomaly.utc_offset_minutes', 'integer', '0', -840, 840,
     'The tenant''s offset from UTC in minutes, for the hour-of-day, weekday and off-hours features.'),
    ('anomaly.privileged_actions', 'text', '"grant,revoke,delete,drop,export,role,admin,sudo,password,permission,key"', NULL, NULL,
     'Comma-separated words: an action containing one (or an event of severity high or critical) is privileged for the off-hours feature.'),
    ('anomaly.bias_tolerance', 'number', '0.2', 0.01, 10,
     'A group (database role, department, entity type) whose detection rate differs from the mean of its dimension by more than this share raises a bias alert.'),
    ('anomaly.bias_min_events', 'integer', '30', 1, 1000000000,
     'Groups with fewer scored events than this are reported but never raise a bias alert (their rates are noise).'),
    ('anomaly.score_on_insert', 'boolean', 'false', NULL, NULL,
     'Score each new event of the tenant as it is recorded (with features over the last anomaly.insert_window_hours), recording anomalies and alerts at once; costs each insert a feature query.'),
    ('anomaly.insert_window_hours', 'integer', '24', 1, 720,
     'History that insert-time scoring computes an event''s features over.');

------------------------------------------------------------------------------------------------
-- Models
------------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.models (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    version       integer NOT NULL CHECK (version > 0),
    tenant_id     uuid,
    kind          text NOT NULL CHECK (kind IN ('isolation_forest', 'extended_isolation_forest')),
    parameters    jsonb NOT NULL,
    feature_names text[] NOT NULL,
    normalisation jsonb NOT NULL,
    training_rows bigint NOT NULL,
    metrics       jsonb NOT NULL,
    model         bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    active        boolean NOT NULL DEFAULT false,
    CONSTRAINT models_version UNIQUE NULLS NOT DISTINCT (tenant_id, name, version)
);
CREATE UNIQUE INDEX models_one_active ON @extschema@.models (tenant_id, name) NULLS NOT DISTINCT WHERE active;
COMMENT ON TABLE @extschema@.models IS
'Anomaly models, one row per version: trained by custos.if_train (and custos.train_anomaly_model), the active version of each name is the one scoring uses. tenant_id NULL marks a shared model, visible to every tenant; a tenant''s own model of the same name comes first. model holds the forest in custos'' compact binary encoding (docs in crates/core/src/anomaly/forest.rs).';
COMMENT ON COLUMN @extschema@.models.parameters IS 'n_trees, sample_size, seed (the drawn one when none was given: training again with it gives the same forest) and extended.';
COMMENT ON COLUMN @extschema@.models.normalisation IS 'Per feature: mean, std_dev, min and max over the training rows.';
COMMENT ON COLUMN @extschema@.models.metrics IS 'Score quantiles (p50, p90, p99, max) over the training rows, rows scored for them, read and training milliseconds, model size in bytes.';
ALTER TABLE @extschema@.models ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.models FORCE ROW LEVEL SECURITY;
-- A tenant sees its models and the shared ones, and writes none: custos.if_train stores them.
-- Without a tenant, nothing (fail closed).
CREATE POLICY custos_tenant_access ON @extschema@.models AS PERMISSIVE FOR SELECT
    USING (tenant_id = (SELECT @extschema@.current_tenant())
           OR (tenant_id IS NULL AND (SELECT @extschema@.current_tenant()) IS NOT NULL));
CREATE POLICY custos_tenant_isolation ON @extschema@.models AS RESTRICTIVE FOR ALL
    USING (tenant_id = (SELECT @extschema@.current_tenant())
           OR (tenant_id IS NULL AND (SELECT @extschema@.current_tenant()) IS NOT NULL))
    WITH CHECK (tenant_id = (SELECT @extschema@.current_tenant()));
SELECT pg_catalog.pg_extension_config_dump('@extschema@.models', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.models_id_seq', '');
GRANT SELECT ON @extschema@.models TO custos_reader;

-- Every session caches the models it scores with: any write ages those caches.
CREATE FUNCTION custos_internal.models_invalidate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.models', 'custos.models_invalidate');
    PERFORM custos_internal.invalidate_model_cache();
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION custos_internal.models_invalidate() IS
'Statement trigger of custos.models: ages every session''s cached models, so that a version activated anywhere is used from the next statement on.';
CREATE TRIGGER cache_invalidation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.models
    FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.models_invalidate();

COMMENT ON FUNCTION @extschema@.if_train(text, text, integer, integer, bigint, boolean) IS
'Trains an Isolation Forest (Liu, Ting & Zhou 2008; extended => random hyperplanes, Hariri et al. 2018) on every numeric column of the query''s result, in order, with the caller''s rights; stores it as a new version of model name for the current tenant (without a tenant: a shared model, superusers only), activates it, records it in the tenant''s ledger (custos.model_trained) and returns the version. The name audit_events is reserved (custos.train_anomaly_model). n_trees trees, each grown on sample_size rows drawn without replacement; seed makes training reproducible (NULL: a random one, stored in parameters). NULLs, NaN and infinities are refused.';
COMMENT ON FUNCTION @extschema@.if_score(text, double precision[]) IS
'The anomaly score in (0, 1) of one row of features (in the order of the training query''s numeric columns) under the active model name: the tenant''s, else the shared one. Higher is more anomalous; about 0.5 is ordinary. The model is loaded once per session and cached until another version is activated.';
COMMENT ON FUNCTION @extschema@.if_explain(text, double precision[], integer) IS
'The top features that isolate a row under model name, largest share first: [{feature, value, share}], shares of all features summing to 1.';
COMMENT ON FUNCTION custos_internal.if_assess(uuid, text, double precision[], double precision, integer) IS
'Internal: score, confidence (share of trees agreeing with the verdict at threshold) and top-features explanation of one row, under the tenant''s model name (else the shared one).';
COMMENT ON FUNCTION custos_internal.anomaly_scores_on_insert(uuid) IS
'Internal: whether the tenant''s setting anomaly.score_on_insert is on (cached per session until settings change).';
COMMENT ON FUNCTION custos_internal.train_event_model(text, integer, integer, bigint) IS
'Internal: custos.if_train for the reserved audit_events model, called by custos.train_anomaly_model with custos'' own feature query.';
COMMENT ON FUNCTION custos_internal.invalidate_model_cache() IS
'Internal: ages every session''s cached anomaly models (they are read again on next use).';
COMMENT ON FUNCTION custos_internal.event_value_key(uuid, uuid, text, text) IS
'Internal: a 64-bit hash of an event field as its reader sees it (opened in memory if sealed), keyed per session: equal values compare equal within one query, no plaintext or recomputable hash reaches disk.';

CREATE FUNCTION @extschema@.if_score_query(name text, query text)
RETURNS TABLE (row_number bigint, score double precision)
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'custos_if_score_query';
COMMENT ON FUNCTION @extschema@.if_score_query(text, text) IS
'Scores every row of a query (one SELECT, run with the caller''s rights; its numeric columns in the model''s feature order) with the active model name. Rows are numbered from 1 in the query''s order (add ORDER BY to the query for a stable order). Streams: rows are read in batches and the result spills to disk past work_mem.';

CREATE FUNCTION @extschema@.activate_model(name text, version integer)
RETURNS TABLE (model text, active_version integer, previous_version integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.current_tenant();
    before integer;
BEGIN
    IF tenant IS NULL AND NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = custos_internal.caller_role()) THEN
        PERFORM @extschema@.require_tenant();
    END IF;
    PERFORM 1 FROM @extschema@.models m
      WHERE m.tenant_id IS NOT DISTINCT FROM tenant AND m.name = activate_model.name AND m.version = activate_model.version;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('no version %s of model "%s" in the current tenant', version, name),
            HINT = 'custos.models lists the versions';
    END IF;
    SELECT m.version INTO before FROM @extschema@.models m
     WHERE m.tenant_id IS NOT DISTINCT FROM tenant AND m.name = activate_model.name AND m.active;
    UPDATE @extschema@.models m SET active = false
     WHERE m.tenant_id IS NOT DISTINCT FROM tenant AND m.name = activate_model.name AND m.active;
    UPDATE @extschema@.models m SET active = true
     WHERE m.tenant_id IS NOT DISTINCT FROM tenant AND m.name = activate_model.name AND m.version = activate_model.version;
    IF tenant IS NOT NULL THEN
        INSERT INTO @extschema@.events (tenant_id, action, entity_type, entity_id, severity, details)
        VALUES (tenant, 'custos.model_activated', 'model', activate_model.name, 'info',
                jsonb_build_object('version', activate_model.version, 'previous_version', before));
    END IF;
    RETURN QUERY SELECT activate_model.name, activate_model.version, before;
END
$fn$;
COMMENT ON FUNCTION @extschema@.activate_model(text, integer) IS
'Makes an earlier (or the latest) version of a model of the current tenant the active one (without a tenant: a shared model, superusers only); returns the version it replaced, and records the change in the ledger (custos.model_activated). Every session scores with it from its next statement on.';

------------------------------------------------------------------------------------------------
-- Audit-event features
------------------------------------------------------------------------------------------------
CREATE FUNCTION custos_internal.event_features(tenant uuid, since timestamptz, until timestamptz)
RETURNS TABLE (tenant_id uuid, seq bigint, event_id uuid, occurred_at timestamptz, actor text,
               db_role text, entity_type text,
               hour_sin double precision, hour_cos double precision,
               weekday_sin double precision, weekday_cos double precision,
               actor_rate double precision, action_rarity_actor double precision,
               action_rarity_tenant double precision, new_entity double precision,
               new_ip double precision, failure_share double precision, burst_size double precision,
               offhours_privileged double precision, idle_days double precision)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    -- Two branches rather than "tenant IS NULL OR tenant_id = tenant", which would scan every
    -- tenant's events: one reads the tenant's through the primary key, the other (every tenant)
    -- runs only without one.
    WITH scope AS (
        SELECT e.* FROM @extschema@.events e
         WHERE e.tenant_id = tenant AND e.occurred_at >= since AND e.occurred_at < until
        UNION ALL
        SELECT e.* FROM @extschema@.events e
         WHERE tenant IS NULL AND e.occurred_at >= since AND e.occurred_at < until
    ), conf AS (
        SELECT t.tenant_id,
               (@extschema@.tenant_setting(t.tenant_id, 'anomaly.utc_offset_minutes'))::integer AS offset_minutes,
               ARRAY(SELECT trim(w) FROM unnest(string_to_array(
                   @extschema@.tenant_setting(t.tenant_id, 'anomaly.privileged_actions') #>> '{}', ',')) w
                      WHERE trim(w) <> '') AS privileged
          FROM (SELECT DISTINCT s.tenant_id FROM scope s) t
    ), ev AS (
        SELECT s.tenant_id, s.seq, s.id, s.occurred_at, s.actor, s.db_role, s.entity_type, s.action,
               (s.occurred_at AT TIME ZONE 'UTC') + make_interval(mins => c.offset_minutes) AS local_at,
               (s.severity IN ('high', 'critical')
                OR EXISTS (SELECT 1 FROM unnest(c.privileged) p WHERE strpos(lower(s.action), p) > 0)) AS privileged,
               (strpos(lower(s.action), 'fail') > 0 OR strpos(lower(s.action), 'denied') > 0
                OR lower(s.details ->> 'outcome') IN ('failure', 'failed', 'denied', 'error')) AS failed,
               custos_internal.event_value_key(s.tenant_id, s.id, 'entity_id', s.entity_id) AS entity_key,
               custos_internal.event_value_key(s.tenant_id, s.id, 'ip_address', s.ip_address) AS ip_key
          FROM scope s JOIN conf c USING (tenant_id)
    ), w AS (
        SELECT ev.*,
               extract(hour FROM local_at) + extract(minute FROM local_at) / 60.0 AS hour_of_day,
               extract(isodow FROM local_at) - 1 AS weekday,
               count(*) OVER actor_hour AS last_hour,
               count(*) FILTER (WHERE failed) OVER actor_hour AS failed_last_hour,
               count(*) OVER (PARTITION BY ev.tenant_id, ev.actor ORDER BY ev.occurred_at
                              RANGE BETWEEN interval '5 minutes' PRECEDING AND interval '5 minutes' FOLLOWING) AS burst,
               count(*) OVER (PARTITION BY ev.tenant_id, ev.actor) AS actor_events,
               count(*) OVER (PARTITION BY ev.tenant_id, ev.actor, ev.action) AS actor_action_events,
               count(*) OVER (PARTITION BY ev.tenant_id) AS tenant_events,
               count(*) OVER (PARTITION BY ev.tenant_id, ev.action) AS tenant_action_events,
               row_number() OVER (PARTITION BY ev.tenant_id, ev.actor, ev.entity_type, ev.entity_key
                                  ORDER BY ev.occurred_at, ev.seq) AS entity_nth,
               row_number() OVER (PARTITION BY ev.tenant_id, ev.actor, ev.ip_key ORDER BY ev.occurred_at, ev.seq) AS ip_nth,
               row_number() OVER (PARTITION BY ev.tenant_id, ev.actor ORDER BY ev.occurred_at, ev.seq) AS actor_nth,
               lag(ev.occurred_at) OVER (PARTITION BY ev.tenant_id, ev.actor ORDER BY ev.occurred_at, ev.seq) AS previous_at
          FROM ev
        WINDOW actor_hour AS (PARTITION BY ev.tenant_id, ev.actor ORDER BY ev.occurred_at
                              RANGE BETWEEN interval '1 hour' PRECEDING AND CURRENT ROW)
    ), baseline AS (
        SELECT ev.tenant_id, ev.actor,
               count(*)::double precision / count(DISTINCT date_trunc('hour', ev.occurred_at)) AS per_active_hour
          FROM ev GROUP BY ev.tenant_id, ev.actor
    )
    SELECT w.tenant_id, w.seq, w.id, w.occurred_at, w.actor, w.db_role, w.entity_type,
           sin(2 * pi() * w.hour_of_day / 24), cos(2 * pi() * w.hour_of_day / 24),
           sin(2 * pi() * w.weekday / 7), cos(2 * pi() * w.weekday / 7),
           ln((1 + w.last_hour) / (1 + b.per_active_hour)),
           -ln(w.actor_action_events::double precision / w.actor_events),
           -ln(w.tenant_action_events::double precision / w.tenant_events),
           CASE WHEN w.entity_key IS NOT NULL AND w.entity_nth = 1 AND w.actor_nth > 1 THEN 1 ELSE 0 END,
           CASE WHEN w.ip_key IS NOT NULL AND w.ip_nth = 1 AND w.actor_nth > 1 THEN 1 ELSE 0 END,
           w.failed_last_hour::double precision / w.last_hour,
           ln(w.burst::double precision),
           CASE WHEN w.privileged AND (w.hour_of_day < 7 OR w.hour_of_day >= 20 OR w.weekday >= 5) THEN 1 ELSE 0 END,
           ln(1 + coalesce(extract(epoch FROM w.occurred_at - w.previous_at) / 86400, 0))
      FROM w JOIN baseline b USING (tenant_id, actor)
     ORDER BY w.tenant_id, w.seq
$fn$;
COMMENT ON FUNCTION custos_internal.event_features(uuid, timestamptz, timestamptz) IS
'Internal: the features of each audit event of a tenant (NULL: every tenant) in [since, until), computed over that window. See the README''s "Anomaly detection" for each feature.';

-- The features as the event model takes them, in this order.
CREATE FUNCTION custos_internal.event_feature_query(tenant uuid, since timestamptz, until timestamptz,
                                                    per_actor bigint DEFAULT NULL)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format(
        'SELECT hour_sin, hour_cos, weekday_sin, weekday_cos, actor_rate, action_rarity_actor, '
        'action_rarity_tenant, new_entity, new_ip, failure_share, burst_size, offhours_privileged, idle_days '
        'FROM (SELECT f.*, row_number() OVER (PARTITION BY f.tenant_id, f.actor ORDER BY hashint8(f.seq)) AS nth '
        'FROM custos_internal.event_features(%L::uuid, %L::timestamptz, %L::timestamptz) f) b %s ORDER BY tenant_id, seq',
        -- ISO 8601 with its offset: read back alike whatever DateStyle and TimeZone say.
        tenant, to_json(since) #>> '{}', to_json(until) #>> '{}',
        CASE WHEN per_actor IS NULL THEN '' ELSE format('WHERE nth <= %s', per_actor) END)
$fn$;
COMMENT ON FUNCTION custos_internal.event_feature_query(uuid, timestamptz, timestamptz, bigint) IS
'Internal: the training query of the audit-event model; per_actor caps each actor''s events (balanced sampling).';

CREATE FUNCTION custos_internal.require_window(since timestamptz, until timestamptz) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF since IS NULL OR until IS NULL OR since >= until OR since = '-infinity' OR until = 'infinity' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('invalid time window [%s, %s)', since, until),
            HINT = 'since must be a finite time before until';
    END IF;
END
$fn$;
COMMENT ON FUNCTION custos_internal.require_window(timestamptz, timestamptz) IS 'Internal: raises 22023 unless since < until, both finite.';

CREATE FUNCTION @extschema@.train_anomaly_model(
    since       timestamptz DEFAULT now() - interval '30 days',
    until       timestamptz DEFAULT now(),
    n_trees     integer DEFAULT 100,
    sample_size integer DEFAULT 256,
    seed        bigint DEFAULT NULL,
    balanced    boolean DEFAULT false
) RETURNS TABLE (model text, version integer, scope text, training_rows bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.current_tenant();
    events bigint;
    actors bigint;
    v integer;
BEGIN
    IF tenant IS NULL AND NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = custos_internal.caller_role()) THEN
        PERFORM @extschema@.require_tenant();
    END IF;
    PERFORM custos_internal.require_window(since, until);
    IF tenant IS NULL THEN
        SELECT count(*), count(DISTINCT e.actor) INTO events, actors FROM @extschema@.events e
         WHERE e.occurred_at >= since AND e.occurred_at < until;
    ELSE
        SELECT count(*), count(DISTINCT e.actor) INTO events, actors FROM @extschema@.events e
         WHERE e.tenant_id = tenant AND e.occurred_at >= since AND e.occurred_at < until;
    END IF;
    IF tenant IS NOT NULL AND events < 1000 THEN
        RETURN QUERY SELECT m.name, m.version, 'shared'::text, m.training_rows FROM @extschema@.models m
                      WHERE m.tenant_id IS NULL AND m.name = 'audit_events' AND m.active;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('the tenant has %s events in [%s, %s), fewer than the 1,000 a model of its own needs, and there is no shared baseline', events, since, until),
                HINT = 'a superuser trains the shared baseline with custos.train_anomaly_model() without a tenant';
        END IF;
        RAISE NOTICE 'the tenant has % events in the window, fewer than 1,000: it is scored with the shared baseline', events;
        RETURN;
    END IF;
    IF events < sample_size THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s events in [%s, %s), fewer than sample_size %s', events, since, until, sample_size),
            HINT = 'widen the window or lower sample_size';
    END IF;
    -- The model's new version is recorded in the ledger as it is stored (custos.model_trained).
    v := custos_internal.train_event_model(
            custos_internal.event_feature_query(tenant, since, until,
                CASE WHEN balanced THEN greatest(ceil(events::numeric / greatest(actors, 1))::bigint, 1) END),
            n_trees, sample_size, seed);
    RETURN QUERY SELECT m.name, m.version, CASE WHEN tenant IS NULL THEN 'shared' ELSE 'tenant' END, m.training_rows
                   FROM @extschema@.models m
                  WHERE m.tenant_id IS NOT DISTINCT FROM tenant AND m.name = 'audit_events' AND m.version = v;
END
$fn$;
COMMENT ON FUNCTION @extschema@.train_anomaly_model(timestamptz, timestamptz, integer, integer, bigint, boolean) IS
'Trains the current tenant''s audit-event model (model audit_events, a name custos.if_train refuses) on its events in [since, until) and activates it; the training is recorded in the ledger (custos.model_trained). A tenant with fewer than 1,000 events there keeps using the shared baseline, which a superuser trains without a tenant over every tenant''s events. balanced caps each actor at the mean events per actor, so that a few busy accounts do not define what is normal. Works on tenants with ledger.encrypt on: sealed fields are compared in memory, through keyed hashes.';

------------------------------------------------------------------------------------------------
-- Detection
------------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.anomalies (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    event_id        uuid NOT NULL,
    event_seq       bigint NOT NULL,
    score           double precision NOT NULL,
    severity        text NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    threshold       double precision NOT NULL,
    model_name      text NOT NULL,
    model_version   integer NOT NULL,
    model_shared    boolean NOT NULL,
    confidence      double precision NOT NULL,
    review_required boolean NOT NULL,
    explanation     jsonb NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT now(),
    feedback        text CHECK (feedback IN ('false_positive', 'confirmed')),
    feedback_note   text,
    feedback_by     text,
    feedback_at     timestamptz,
    CONSTRAINT anomalies_once UNIQUE (tenant_id, event_seq, model_name, model_shared, model_version)
);
CREATE INDEX anomalies_tenant_detected ON @extschema@.anomalies (tenant_id, detected_at DESC);
COMMENT ON TABLE @extschema@.anomalies IS
'Audit events that custos.detect_anomalies scored at or above its threshold: score, severity band, model version, confidence, the top contributing features, and reviewers'' feedback. Tenant-isolated.';
COMMENT ON COLUMN @extschema@.anomalies.severity IS 'From the score: critical from 0.85, high from 0.8, medium from 0.75, low below.';
COMMENT ON COLUMN @extschema@.anomalies.confidence IS 'Share of the forest''s trees that agree the event is anomalous at the threshold; review_required when below 0.6.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.anomalies');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.anomalies', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.anomalies_id_seq', '');
GRANT SELECT ON @extschema@.anomalies TO custos_auditor;

CREATE TABLE @extschema@.anomaly_predictions (
    tenant_id       uuid NOT NULL,
    event_seq       bigint NOT NULL,
    model_name      text NOT NULL,
    model_shared    boolean NOT NULL,
    model_version   integer NOT NULL,
    event_id        uuid NOT NULL,
    score           double precision NOT NULL,
    confidence      double precision NOT NULL,
    is_anomaly      boolean NOT NULL,
    review_required boolean NOT NULL,
    threshold       double precision NOT NULL,
    scored_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_seq, model_name, model_shared, model_version)
);
COMMENT ON TABLE @extschema@.anomaly_predictions IS
'Every prediction custos.detect_anomalies made: each scored event with its score, verdict, confidence and whether a person should review it (confidence below 0.6). What the bias check (custos.anomaly_detection_rates) reads. Tenant-isolated.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.anomaly_predictions');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.anomaly_predictions', '');
GRANT SELECT ON @extschema@.anomaly_predictions TO custos_auditor;

CREATE FUNCTION @extschema@.score_events(
    since timestamptz DEFAULT now() - interval '1 day',
    until timestamptz DEFAULT now()
) RETURNS TABLE (event_id uuid, seq bigint, occurred_at timestamptz, score double precision,
                 confidence double precision, explanation jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
    t double precision := (@extschema@.setting('anomaly.threshold'))::double precision;
BEGIN
    PERFORM custos_internal.require_window(since, until);
    RETURN QUERY
    SELECT f.event_id, f.seq, f.occurred_at, a.score, a.confidence, a.explanation
      FROM custos_internal.event_features(tenant, since, until) f
     CROSS JOIN LATERAL custos_internal.if_assess(tenant, 'audit_events',
             ARRAY[f.hour_sin, f.hour_cos, f.weekday_sin, f.weekday_cos, f.actor_rate, f.action_rarity_actor,
                   f.action_rarity_tenant, f.new_entity, f.new_ip, f.failure_share, f.burst_size,
                   f.offhours_privileged, f.idle_days], t, 3) a
     ORDER BY f.seq;
END
$fn$;
COMMENT ON FUNCTION @extschema@.score_events(timestamptz, timestamptz) IS
'Scores every audit event of the current tenant in [since, until) with its audit_events model (else the shared baseline), without recording anything: score, confidence at anomaly.threshold, and the top three features. Read-only: works on a hot standby.';

CREATE FUNCTION @extschema@.anomaly_detection_rates(
    since timestamptz DEFAULT now() - interval '30 days',
    until timestamptz DEFAULT now()
) RETURNS TABLE (dimension text, group_name text, events bigint, flagged bigint, rate double precision,
                 mean_rate double precision, relative_difference double precision, biased boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
    tolerance double precision := (@extschema@.setting('anomaly.bias_tolerance'))::double precision;
    min_events bigint := (@extschema@.setting('anomaly.bias_min_events'))::bigint;
BEGIN
    PERFORM custos_internal.require_window(since, until);
    RETURN QUERY
    WITH latest AS (
        SELECT DISTINCT ON (p.event_seq) p.event_seq, p.is_anomaly
          FROM @extschema@.anomaly_predictions p
         WHERE p.tenant_id = tenant AND p.model_name = 'audit_events'
         ORDER BY p.event_seq, p.scored_at DESC
    ), labelled AS (
        SELECT l.is_anomaly, e.db_role, e.entity_type,
               coalesce((SELECT i.department FROM @extschema@.identities i
                          WHERE i.tenant_id = tenant AND i.user_id = e.actor),
                        (SELECT i.department FROM @extschema@.identities i
                          WHERE i.tenant_id = tenant AND lower(i.email) = lower(e.actor) LIMIT 1),
                        '(unknown)') AS department
          FROM latest l
          JOIN @extschema@.events e ON e.tenant_id = tenant AND e.seq = l.event_seq
         WHERE e.occurred_at >= since AND e.occurred_at < until
    ), groups AS (
        SELECT g.dimension, g.group_name, count(*) AS events, count(*) FILTER (WHERE g.is_anomaly) AS flagged
          FROM labelled x
         CROSS JOIN LATERAL (VALUES ('db_role', x.db_role, x.is_anomaly),
                                    ('department', x.department, x.is_anomaly),
                                    ('entity_type', x.entity_type, x.is_anomaly)) AS g(dimension, group_name, is_anomaly)
         GROUP BY g.dimension, g.group_name
    ), rated AS (
        SELECT g.*, g.flagged::double precision / g.events AS rate,
               avg(g.flagged::double precision / g.events) OVER (PARTITION BY g.dimension) AS mean_rate
          FROM groups g
    )
    SELECT r.dimension, r.group_name, r.events, r.flagged, r.rate, r.mean_rate,
           CASE WHEN r.mean_rate > 0 THEN (r.rate - r.mean_rate) / r.mean_rate END,
           r.events >= min_events AND r.mean_rate > 0 AND abs(r.rate - r.mean_rate) / r.mean_rate > tolerance
      FROM rated r
     ORDER BY r.dimension, r.rate DESC, r.group_name;
END
$fn$;
COMMENT ON FUNCTION @extschema@.anomaly_detection_rates(timestamptz, timestamptz) IS
'Detection rates of the current tenant''s events in [since, until) (their latest prediction) by database role, actor department (from custos.identities) and entity type, each against the mean rate of its dimension. biased: the group has at least anomaly.bias_min_events events and its rate differs from the mean by more than anomaly.bias_tolerance (default 20 %).';

CREATE FUNCTION custos_internal.detect_events(tenant uuid, since timestamptz, until timestamptz,
                                              t double precision, only_seq bigint DEFAULT NULL)
RETURNS SETOF @extschema@.anomalies
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v integer;
    shared boolean;
BEGIN
    SELECT m.version, m.tenant_id IS NULL INTO v, shared FROM @extschema@.models m
     WHERE m.name = 'audit_events' AND m.active AND (m.tenant_id = tenant OR m.tenant_id IS NULL)
     ORDER BY m.tenant_id NULLS LAST LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42704', MESSAGE = 'no audit_events model for the current tenant and no shared baseline',
            HINT = 'train one with custos.train_anomaly_model()';
    END IF;
    RETURN QUERY
    WITH scored AS (
        SELECT f.seq, f.event_id, a.score, a.confidence, a.explanation
          FROM custos_internal.event_features(tenant, since, until) f
         CROSS JOIN LATERAL custos_internal.if_assess(tenant, 'audit_events',
                 ARRAY[f.hour_sin, f.hour_cos, f.weekday_sin, f.weekday_cos, f.actor_rate, f.action_rarity_actor,
                       f.action_rarity_tenant, f.new_entity, f.new_ip, f.failure_share, f.burst_size,
                       f.offhours_privileged, f.idle_days], t, 3) a
         WHERE only_seq IS NULL OR f.seq = only_seq
    ), logged AS (
        INSERT INTO @extschema@.anomaly_predictions AS p
               (tenant_id, event_seq, model_name, model_shared, model_version, event_id, score, confidence,
                is_anomaly, review_required, threshold)
        SELECT tenant, s.seq, 'audit_events', shared, v, s.event_id, s.score, s.confidence,
               s.score >= t, s.confidence < 0.6, t
          FROM scored s
        ON CONFLICT ON CONSTRAINT anomaly_predictions_pkey DO UPDATE
           SET score = excluded.score, confidence = excluded.confidence, is_anomaly = excluded.is_anomaly,
               review_required = excluded.review_required, threshold = excluded.threshold, scored_at = excluded.scored_at
    ), flagged AS (
        INSERT INTO @extschema@.anomalies AS x
               (tenant_id, event_id, event_seq, score, severity, threshold, model_name, model_version, model_shared,
                confidence, review_required, explanation)
        SELECT tenant, s.event_id, s.seq, s.score,
               CASE WHEN s.score >= 0.85 THEN 'critical' WHEN s.score >= 0.8 THEN 'high'
                    WHEN s.score >= 0.75 THEN 'medium' ELSE 'low' END,
               t, 'audit_events', v, shared, s.confidence, s.confidence < 0.6, s.explanation
          FROM scored s
         WHERE s.score >= t
        ON CONFLICT ON CONSTRAINT anomalies_once DO NOTHING
        RETURNING x.*
    ), alerted AS (
        INSERT INTO @extschema@.alerts (tenant_id, source, severity, title, details)
        SELECT tenant, 'anomaly.detect', f.severity,
               format('anomalous audit event seq %s (score %s)', f.event_seq, round(f.score::numeric, 3)),
               jsonb_build_object('anomaly_id', f.id, 'event_id', f.event_id, 'seq', f.event_seq, 'score', f.score,
                                  'confidence', f.confidence, 'model_version', f.model_version,
                                  'model_shared', f.model_shared, 'explanation', f.explanation)
          FROM flagged f
         WHERE f.severity IN ('high', 'critical')
    )
    SELECT * FROM flagged;
END
$fn$;
COMMENT ON FUNCTION custos_internal.detect_events(uuid, timestamptz, timestamptz, double precision, bigint) IS
'Internal: scores a tenant''s events in [since, until) (only only_seq, if given, with features over the whole window), logs the predictions, records anomalies and raises alerts for the high and critical ones; returns the new anomalies.';

CREATE FUNCTION @extschema@.detect_anomalies(
    since     timestamptz DEFAULT now() - interval '1 day',
    until     timestamptz DEFAULT now(),
    threshold double precision DEFAULT NULL
) RETURNS TABLE (anomaly_id bigint, event_id uuid, seq bigint, score double precision, severity text,
                 confidence double precision, review_required boolean, explanation jsonb)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
    t double precision := coalesce(threshold, (@extschema@.setting('anomaly.threshold'))::double precision);
BEGIN
    PERFORM custos_internal.require_window(since, until);
    IF t IS NULL OR t <= 0 OR t >= 1 OR t = 'NaN' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('threshold must be between 0 and 1, not %s', t);
    END IF;
    RETURN QUERY
    SELECT a.id, a.event_id, a.event_seq, a.score, a.severity, a.confidence, a.review_required, a.explanation
      FROM custos_internal.detect_events(tenant, since, until, t) a
     ORDER BY a.score DESC;
    -- Bias: a group whose detection rate strays from its dimension's mean is an alert too (once
    -- while it stays open).
    INSERT INTO @extschema@.alerts (tenant_id, source, severity, title, details)
    SELECT tenant, 'anomaly.bias', 'medium',
           format('anomaly detection rate of %s %s is %s%%, against a mean of %s%%', r.dimension, r.group_name,
                  round((100 * r.rate)::numeric, 1), round((100 * r.mean_rate)::numeric, 1)),
           to_jsonb(r)
      FROM @extschema@.anomaly_detection_rates(since, until) r
     WHERE r.biased
       AND NOT EXISTS (SELECT 1 FROM @extschema@.alerts al
                        WHERE al.tenant_id = tenant AND al.source = 'anomaly.bias' AND al.status = 'open'
                          AND al.details ->> 'dimension' = r.dimension AND al.details ->> 'group_name' = r.group_name);
END
$fn$;
COMMENT ON FUNCTION @extschema@.detect_anomalies(timestamptz, timestamptz, double precision) IS
'Scores the current tenant''s audit events in [since, until) with its audit_events model (else the shared baseline), logs every prediction in custos.anomaly_predictions, records those at or above threshold (default: setting anomaly.threshold) in custos.anomalies with severity, confidence and the top contributing features, raises an alert for each high or critical one, and a bias alert for each group whose detection rate strays from the mean (custos.anomaly_detection_rates). Returns the new anomalies, highest score first; an event already recorded under the same model version is not recorded again.';

-- Insert-time scoring, for tenants that turn anomaly.score_on_insert on. The WHEN clause costs
-- every other tenant's insert one cached lookup.
CREATE FUNCTION custos_internal.anomaly_score_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.events', 'custos.anomaly_score_inserted');
    -- Without a model the event is recorded as ever: scoring never stops the ledger.
    PERFORM 1 FROM @extschema@.models m
      WHERE m.name = 'audit_events' AND m.active AND (m.tenant_id = NEW.tenant_id OR m.tenant_id IS NULL);
    IF FOUND THEN
        BEGIN
            PERFORM custos_internal.detect_events(NEW.tenant_id,
                NEW.occurred_at - make_interval(hours => (@extschema@.tenant_setting(NEW.tenant_id, 'anomaly.insert_window_hours'))::integer),
                NEW.occurred_at + interval '1 microsecond',
                (@extschema@.tenant_setting(NEW.tenant_id, 'anomaly.threshold'))::double precision,
                NEW.seq);
        EXCEPTION WHEN query_canceled THEN
            RAISE;
        WHEN OTHERS THEN
            -- A model that cannot score (damaged, another width) must not stop the ledger.
            RAISE WARNING 'custos: event seq % of tenant % was recorded but not scored: %', NEW.seq, NEW.tenant_id, SQLERRM;
        END;
    END IF;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION custos_internal.anomaly_score_inserted() IS
'AFTER INSERT trigger of custos.events for tenants with anomaly.score_on_insert on: scores the new event (features over the last anomaly.insert_window_hours) and records it if anomalous.';
CREATE TRIGGER zz_anomaly_on_insert AFTER INSERT ON @extschema@.events FOR EACH ROW
    WHEN (custos_internal.anomaly_scores_on_insert(NEW.tenant_id))
    EXECUTE FUNCTION custos_internal.anomaly_score_inserted();

CREATE FUNCTION @extschema@.anomaly_feedback(anomaly_id bigint, is_false_positive boolean, note text DEFAULT NULL)
RETURNS TABLE (id bigint, feedback text, alerts_closed bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
    verdict text;
    closed bigint := 0;
BEGIN
    IF is_false_positive IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'is_false_positive cannot be NULL',
            HINT = 'true: not an anomaly; false: a confirmed one';
    END IF;
    verdict := CASE WHEN is_false_positive THEN 'false_positive' ELSE 'confirmed' END;
    UPDATE @extschema@.anomalies a
       SET feedback = verdict, feedback_note = note, feedback_by = custos_internal.caller_role(), feedback_at = now()
     WHERE a.id = anomaly_id AND a.tenant_id = tenant;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('no anomaly %s in the current tenant', anomaly_id);
    END IF;
    IF is_false_positive THEN
        UPDATE @extschema@.alerts al SET status = 'false_positive'
         WHERE al.tenant_id = tenant AND al.source = 'anomaly.detect' AND al.status = 'open'
           AND (al.details ->> 'anomaly_id')::bigint = anomaly_id;
        GET DIAGNOSTICS closed = ROW_COUNT;
    END IF;
    -- On the record, without the note: it may name a person, and the ledger cannot forget (an
    -- unsalted hash of a short note could be guessed back).
    INSERT INTO @extschema@.events (tenant_id, action, entity_type, entity_id, severity, details)
    VALUES (tenant, 'custos.anomaly_feedback', 'anomaly', anomaly_id::text, 'info',
            jsonb_build_object('feedback', verdict, 'alerts_closed', closed, 'with_note', note IS NOT NULL));
    RETURN QUERY SELECT anomaly_id, verdict, closed;
END
$fn$;
COMMENT ON FUNCTION @extschema@.anomaly_feedback(bigint, boolean, text) IS
'Records a reviewer''s verdict on an anomaly of the current tenant: a false positive (which also closes its open alert) or a confirmed one, with a note. The verdict is recorded in the ledger, the note is not (custos.forget_subject clears notes that name the person it forgets).';
