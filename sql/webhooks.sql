-- Webhooks (src/webhooks/): notifications to Slack (blocks), Microsoft Teams (adaptive cards)
-- and generic JSON webhooks (HMAC-signed), per tenant integration. An outbox,
-- custos.notifications, is filled in the transaction that raises the alert (or writes the
-- summary, or signs the checkpoint), so nothing is announced that did not commit; the workers
-- deliver it outside any transaction, retry with backoff, and dead-letter what keeps failing.

ALTER FUNCTION @extschema@.check_webhook_url(text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.shown_url(text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.wake_worker_at_commit() SET SCHEMA custos_internal;
COMMENT ON FUNCTION custos_internal.check_webhook_url(text) IS
'Internal: raises 22023 unless a URL may receive notifications (https unless custos.webhook_allow_http; never link-local or metadata addresses; private networks only with custos.webhook_allow_private).';
COMMENT ON FUNCTION custos_internal.shown_url(text) IS
'Internal: a URL as custos shows it: scheme, host and port (the path of a Slack or Teams URL is its credential).';

CREATE TABLE @extschema@.integrations (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid NOT NULL DEFAULT @extschema@.current_tenant(),
    name         text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    kind         text NOT NULL CHECK (kind IN ('slack', 'teams', 'generic')),
    -- Slack's and Teams' URLs are credentials: readable by custos only (custos.integration_list
    -- shows scheme and host).
    url          text NOT NULL,
    -- Generic webhooks: the HMAC-SHA256 key of X-Custos-Signature.
    secret       bytea,
    min_severity text NOT NULL DEFAULT 'high' CHECK (min_severity IN ('info', 'low', 'medium', 'high', 'critical')),
    topics       text[] NOT NULL DEFAULT '{alert,summary}' CHECK (topics <@ '{alert,summary}'),
    enabled      boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);
COMMENT ON TABLE @extschema@.integrations IS
'Where a tenant''s notifications go: Slack, Microsoft Teams or generic (signed JSON) webhooks, each with a minimum alert severity and its topics (alert, summary). Written by custos.set_integration; its URLs and secrets are read by custos alone (custos.integration_list shows the rest). Tenant-isolated.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.integrations');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.integrations', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.integrations_id_seq', '');

-- No security_invoker: readers may not read url or secret, and the view names the current
-- tenant itself (a view runs as its owner, which row-level security would let through).
-- security_barrier: no function of a caller's query runs before the tenant filter.
CREATE VIEW @extschema@.integration_list WITH (security_barrier) AS
    SELECT i.name, i.kind, custos_internal.shown_url(i.url) AS url, i.secret IS NOT NULL AS signed, i.min_severity,
           i.topics, i.enabled, i.created_at
      FROM @extschema@.integrations i
     WHERE i.tenant_id = @extschema@.current_tenant();
COMMENT ON VIEW @extschema@.integration_list IS
'The current tenant''s integrations, their URLs shown as scheme and host only (the path of a Slack or Teams URL is its credential).';
GRANT SELECT ON @extschema@.integration_list TO custos_reader;

CREATE TABLE @extschema@.notifications (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    -- NULL for a checkpoint, which goes to custos.checkpoint_url.
    integration_id  bigint REFERENCES @extschema@.integrations (id) ON DELETE CASCADE,
    topic           text NOT NULL CHECK (topic IN ('alert', 'summary', 'checkpoint')),
    subject         jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_until     timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_at    timestamptz
);
CREATE INDEX notifications_due ON @extschema@.notifications (next_attempt_at) WHERE state = 'pending';
CREATE INDEX notifications_tenant ON @extschema@.notifications (tenant_id, created_at);
COMMENT ON TABLE @extschema@.notifications IS
'The outbox: each alert, summary or checkpoint to deliver, filled in the transaction that made it; delivered by the workers (pending, then delivered, or dead after custos.webhook_max_attempts failures or a refusal; last_error never holds a URL''s path or a secret). Tenant-isolated.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.notifications');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.notifications', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.notifications_id_seq', '');
GRANT SELECT ON @extschema@.notifications TO custos_reader;

CREATE FUNCTION @extschema@.set_integration(name text, kind text, url text, min_severity text DEFAULT 'high',
                                            topics text[] DEFAULT '{alert,summary}', enabled boolean DEFAULT true)
RETURNS TABLE (integration text, signing_secret text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_variable
DECLARE
    tenant uuid := @extschema@.require_tenant();
    key bytea;
    fresh boolean;
BEGIN
    IF kind IS NULL OR kind NOT IN ('slack', 'teams', 'generic') THEN
        RAISE EXCEPTION 'unknown integration kind "%"', kind USING ERRCODE = '22023', HINT = 'one of slack, teams, generic';
    END IF;
    IF name IS NULL OR name !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid integration name "%"', name
            USING ERRCODE = '22023', HINT = 'lower-case letters, digits, _ . -; at most 63 characters';
    END IF;
    IF min_severity IS NULL OR custos_internal.severity_rank(min_severity) IS NULL THEN
        RAISE EXCEPTION 'unknown severity "%"', min_severity USING ERRCODE = '22023', HINT = 'one of info, low, medium, high, critical';
    END IF;
    IF topics IS NULL OR cardinality(topics) = 0 OR NOT topics <@ '{alert,summary}' THEN
        RAISE EXCEPTION 'topics must be a non-empty subset of {alert,summary}' USING ERRCODE = '22023';
    END IF;
    PERFORM custos_internal.check_webhook_url(url);
    -- A generic webhook's signing key is made once and shown once; Slack and Teams sign nothing.
    SELECT i.secret INTO key FROM @extschema@.integrations i WHERE i.tenant_id = tenant AND i.name = set_integration.name;
    fresh := NOT FOUND OR (kind = 'generic' AND key IS NULL);
    IF kind = 'generic' AND key IS NULL THEN
        key := decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex');
    ELSIF kind <> 'generic' THEN
        key := NULL;
    END IF;
    INSERT INTO @extschema@.integrations AS i (tenant_id, name, kind, url, secret, min_severity, topics, enabled)
    VALUES (tenant, name, kind, url, key, min_severity, topics, enabled)
    ON CONFLICT ON CONSTRAINT integrations_tenant_id_name_key DO UPDATE
       SET kind = excluded.kind, url = excluded.url, secret = excluded.secret, min_severity = excluded.min_severity,
           topics = excluded.topics, enabled = excluded.enabled;
    RETURN QUERY SELECT name, CASE WHEN fresh AND key IS NOT NULL THEN encode(key, 'hex') END;
END
$fn$;
COMMENT ON FUNCTION @extschema@.set_integration(text, text, text, text, text[], boolean) IS
'Adds or changes an integration of the current tenant: kind slack, teams or generic; url checked (https unless custos.webhook_allow_http; never a link-local or cloud metadata address; loopback and private networks only with custos.webhook_allow_private); alerts from min_severity up; topics alert and/or summary. For a new generic webhook, returns its signing secret (hex) once: receivers check X-Custos-Signature = sha256=HMAC-SHA256(secret, X-Custos-Timestamp || ''.'' || body).';

CREATE FUNCTION @extschema@.remove_integration(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
BEGIN
    DELETE FROM @extschema@.integrations i WHERE i.tenant_id = tenant AND i.name = remove_integration.name;
    RETURN FOUND;
END
$fn$;
COMMENT ON FUNCTION @extschema@.remove_integration(text) IS
'Removes an integration of the current tenant, with its undelivered notifications; false when there was none.';

CREATE FUNCTION @extschema@.retry_dead_notifications() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
    n bigint;
BEGIN
    UPDATE @extschema@.notifications x SET state = 'pending', attempts = 0, next_attempt_at = clock_timestamp(), lease_until = NULL
     WHERE x.tenant_id = tenant AND x.state = 'dead';
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM custos_internal.wake_worker_at_commit();
    END IF;
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION @extschema@.retry_dead_notifications() IS
'Sends the current tenant''s dead notifications again (after fixing the integration); returns how many.';

-- Each alert goes to the tenant's integrations that take alerts of its severity.
CREATE FUNCTION custos_internal.alerts_to_outbox() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.alerts', 'custos.alerts_to_outbox');
    INSERT INTO @extschema@.notifications (tenant_id, integration_id, topic, subject)
    SELECT a.tenant_id, i.id, 'alert',
           jsonb_build_object('id', a.id, 'source', a.source, 'severity', a.severity, 'title', a.title,
                              'created_at', a.created_at, 'details', a.details)
      FROM custos_added a
      JOIN @extschema@.integrations i
        ON i.tenant_id = a.tenant_id AND i.enabled AND 'alert' = ANY (i.topics)
       AND custos_internal.severity_rank(a.severity) >= custos_internal.severity_rank(i.min_severity);
    IF FOUND THEN
        PERFORM custos_internal.wake_worker_at_commit();
    END IF;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION custos_internal.alerts_to_outbox() IS
'Trigger of custos.alerts: queues a notification of each new alert for each of its tenant''s integrations that takes it, in the same transaction.';
CREATE TRIGGER zz_alerts_to_outbox AFTER INSERT ON @extschema@.alerts
    REFERENCING NEW TABLE AS custos_added FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.alerts_to_outbox();

-- The summary report job: this week's summary, stored, and sent to the integrations that take
-- summaries. (A worker asks the model between transactions, then calls notify_summary.)
CREATE FUNCTION custos_internal.notify_summary(tenant uuid, of_summary bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    n bigint;
BEGIN
    INSERT INTO @extschema@.notifications (tenant_id, integration_id, topic, subject)
    SELECT tenant, i.id, 'summary',
           jsonb_build_object('id', s.id, 'source', 'custos.summarize', 'severity',
                              CASE s.risk WHEN 'none' THEN 'info' ELSE s.risk END,
                              'title', initcap(s.period) || ' summary: ' || left(s.summary, 200), 'created_at', s.summarized_at,
                              'details', jsonb_build_object('window_start', s.window_start, 'window_end', s.window_end,
                                                            'risk', s.risk, 'highlights', s.highlights))
      FROM @extschema@.summaries s
      JOIN @extschema@.integrations i ON i.tenant_id = tenant AND i.enabled AND 'summary' = ANY (i.topics)
     WHERE s.tenant_id = tenant AND s.id = of_summary;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM custos_internal.wake_worker_at_commit();
    END IF;
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION custos_internal.notify_summary(uuid, bigint) IS
'Internal: queues a stored summary for each integration of the tenant that takes summaries; returns how many.';

CREATE FUNCTION custos_internal.queue_summary_report(tenant uuid) RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT custos_internal.notify_summary(tenant, (SELECT s.summary_id FROM @extschema@.summarize('weekly') s))
$fn$;
COMMENT ON FUNCTION custos_internal.queue_summary_report(uuid) IS
'Internal: the summary_report job run by hand: custos.summarize(''weekly'') for the tenant, queued for each integration that takes summaries; returns how many.';

-- The checkpoint publication job: a signed checkpoint of the tenant's chain, to custos.checkpoint_url.
CREATE FUNCTION custos_internal.queue_checkpoint(tenant uuid) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    INSERT INTO @extschema@.notifications (tenant_id, integration_id, topic, subject)
    VALUES (tenant, NULL, 'checkpoint',
            jsonb_build_object('tenant_id', tenant, 'checkpoint', @extschema@.checkpoint(tenant),
                               'public_key', @extschema@.checkpoint_public_key(), 'signed_at', now()));
    RETURN 1;
END
$fn$;
COMMENT ON FUNCTION custos_internal.queue_checkpoint(uuid) IS
'Internal: the checkpoint_publication job: signs a checkpoint of the tenant''s ledger (custos.checkpoint) and queues it for custos.checkpoint_url.';

-- The budget alert job: once a month, an alert when a monthly AI budget is spent.
CREATE FUNCTION custos_internal.raise_budget_alerts(tenant uuid) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    token_budget numeric := (@extschema@.tenant_setting(tenant, 'ai.monthly_token_budget'))::numeric;
    usd_budget numeric := (@extschema@.tenant_setting(tenant, 'ai.monthly_budget_usd'))::numeric;
    used record;
BEGIN
    SELECT coalesce(sum(c.tokens_in + c.tokens_out), 0) AS tokens, coalesce(sum(c.cost_micros), 0) / 1e6 AS usd
      INTO used FROM @extschema@.ai_calls c
     WHERE c.tenant_id = tenant AND c.at >= date_trunc('month', now());
    IF NOT ((token_budget > 0 AND used.tokens >= token_budget) OR (usd_budget > 0 AND used.usd >= usd_budget)) THEN
        RETURN 0;
    END IF;
    IF EXISTS (SELECT 1 FROM @extschema@.alerts a WHERE a.tenant_id = tenant AND a.source = 'ai.budget'
                  AND a.created_at >= date_trunc('month', now())) THEN
        RETURN 0;
    END IF;
    INSERT INTO @extschema@.alerts (tenant_id, source, severity, title, details)
    VALUES (tenant, 'ai.budget', 'high', 'the monthly AI budget is spent: calls to providers are refused until next month',
            jsonb_build_object('tokens_used', used.tokens, 'token_budget', token_budget,
                               'usd_used', round(used.usd, 4), 'usd_budget', usd_budget));
    RETURN 1;
END
$fn$;
COMMENT ON FUNCTION custos_internal.raise_budget_alerts(uuid) IS
'Internal: the budget_alert job: raises an ai.budget alert (once a month) when the tenant''s monthly token or USD budget is spent.';

-- The dormant insights job: privileged accounts that became dormant since their last analysis,
-- analysed (at most 20 a run) and alerted on. (A worker asks the model between transactions.)
CREATE FUNCTION custos_internal.newly_dormant(tenant uuid)
RETURNS TABLE (user_id text, days_inactive integer)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT du.user_id, du.days_inactive FROM @extschema@.dormant_users(lim => 1000, only_privileged => true) du
      LEFT JOIN @extschema@.user_insights u ON u.tenant_id = tenant AND u.user_id = du.user_id
     WHERE u.user_id IS NULL OR u.analyzed_at < coalesce(du.last_active_at, '-infinity'::timestamptz)
     ORDER BY du.risk_score DESC, du.user_id
     LIMIT 20
$fn$;
COMMENT ON FUNCTION custos_internal.newly_dormant(uuid) IS
'Internal: the tenant''s privileged dormant accounts with no analysis since they were last active, riskiest first, 20 at most.';

CREATE FUNCTION custos_internal.alert_dormant(tenant uuid, who text, days_inactive integer, analysis @extschema@.user_insights)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
    INSERT INTO @extschema@.alerts (tenant_id, source, severity, title, details)
    VALUES (tenant, 'dormant.privileged',
            CASE WHEN (analysis).risk_level IN ('high', 'critical') THEN (analysis).risk_level ELSE 'medium' END,
            format('privileged account %s is dormant (%s)', who, coalesce(days_inactive || ' days inactive', 'never active')),
            jsonb_build_object('user_id', who, 'risk_score', (analysis).risk_score, 'summary', (analysis).summary,
                               'recommendations', (analysis).recommendations))
$fn$;
COMMENT ON FUNCTION custos_internal.alert_dormant(uuid, text, integer, @extschema@.user_insights) IS
'Internal: raises the dormant.privileged alert of an analysed account (its severity the analysis'' risk level, at least medium).';

CREATE FUNCTION custos_internal.refresh_dormant_insights(tenant uuid) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    d record;
    u @extschema@.user_insights;
    n bigint := 0;
BEGIN
    FOR d IN SELECT * FROM custos_internal.newly_dormant(tenant) LOOP
        PERFORM * FROM @extschema@.analyze_dormant_user(d.user_id);
        SELECT * INTO u FROM @extschema@.user_insights a WHERE a.tenant_id = tenant AND a.user_id = d.user_id;
        PERFORM custos_internal.alert_dormant(tenant, d.user_id, d.days_inactive, u);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION custos_internal.refresh_dormant_insights(uuid) IS
'Internal: the dormant_insights job run by hand: analyses the tenant''s privileged dormant accounts with no analysis since they were last active (custos.analyze_dormant_user, 20 a run at most) and raises a dormant.privileged alert for each.';

-- Claims due notifications for delivery under a lease, with where they go.
CREATE FUNCTION custos_internal.claim_notifications(batch_size integer, lease_seconds integer)
RETURNS TABLE (id bigint, tenant_id uuid, topic text, kind text, url text, secret bytea, subject jsonb, attempts integer)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH due AS (
        SELECT x.id FROM @extschema@.notifications x
         WHERE x.state = 'pending' AND x.next_attempt_at <= clock_timestamp()
           AND (x.lease_until IS NULL OR x.lease_until < clock_timestamp())
         ORDER BY x.next_attempt_at
         LIMIT batch_size FOR UPDATE SKIP LOCKED),
    leased AS (
        UPDATE @extschema@.notifications x
           SET lease_until = clock_timestamp() + make_interval(secs => lease_seconds), attempts = x.attempts + 1
          FROM due WHERE x.id = due.id
        RETURNING x.*)
    SELECT l.id, l.tenant_id, l.topic, coalesce(i.kind, 'generic'),
           CASE WHEN l.topic = 'checkpoint' THEN current_setting('custos.checkpoint_url', true) ELSE i.url END,
           i.secret, l.subject, l.attempts
      FROM leased l LEFT JOIN @extschema@.integrations i ON i.id = l.integration_id
$fn$;
COMMENT ON FUNCTION custos_internal.claim_notifications(integer, integer) IS
'Internal: claims due notifications under a lease (FOR UPDATE SKIP LOCKED) with their integration''s kind, URL and secret, for a worker to deliver outside any transaction.';

-- What a delivery came to: delivered, retried later (doubling from custos.webhook_retry_base_ms),
-- or dead (a refusal, or attempts spent).
CREATE FUNCTION custos_internal.notification_done(notification bigint, delivered boolean, permanent boolean, error text)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
    UPDATE @extschema@.notifications x
       SET state = CASE WHEN delivered THEN 'delivered'
                        WHEN permanent OR x.attempts >= current_setting('custos.webhook_max_attempts')::integer THEN 'dead'
                        ELSE 'pending' END,
           delivered_at = CASE WHEN delivered THEN clock_timestamp() END,
           last_error = CASE WHEN delivered THEN NULL ELSE left(error, 500) END,
           lease_until = NULL,
           next_attempt_at = clock_timestamp() + make_interval(secs => least(3600,
               current_setting('custos.webhook_retry_base_ms')::integer / 1000.0 * 2 ^ least(x.attempts - 1, 20)))
     WHERE x.id = notification
$fn$;
COMMENT ON FUNCTION custos_internal.notification_done(bigint, boolean, boolean, text) IS
'Internal: records a delivery''s outcome: delivered; pending again after a backoff that doubles from custos.webhook_retry_base_ms (an hour at most); or dead after a refusal or custos.webhook_max_attempts attempts.';
