-- Jobs (src/jobs/): what custos' background workers do, each also runnable by hand.
--
-- * The embedding queue: identities whose profile changed (queued by triggers), each tenant's
--   new events (a watermark: the ledger is append-only, so its queue is "everything after seq
--   N", with no trigger on the ingest path), single events whose batch failed. Workers claim
--   items with FOR UPDATE SKIP LOCKED and a lease, call the provider outside any transaction,
--   and write the vectors in a second one, skipping items whose content changed meanwhile.
-- * Scheduled jobs per tenant, each with its interval setting (jobs.*_minutes), recorded in
--   custos.job_runs: anomaly detection, model retraining, dormant insights, retention,
--   checkpoint publication, the summary report, budget alerts.
-- * custos.run_job(name) runs one now (pg_cron can schedule it when custos is not preloaded);
--   custos.health() and custos.metrics show the state of it all.

ALTER FUNCTION @extschema@.worker_states() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.worker_progress() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.breaker_states(boolean) SET SCHEMA custos_internal;

INSERT INTO @extschema@.setting_definitions (key, value_type, default_value, min_value, max_value, description) VALUES
    ('jobs.anomaly_detection_minutes', 'integer', '60', 0, 525600,
     'How often the workers run custos.detect_anomalies over the last 24 hours for the tenant (0: never).'),
    ('jobs.model_retraining_minutes', 'integer', '10080', 0, 525600,
     'How often the workers retrain the tenant''s anomaly model on its last 30 days (custos.train_anomaly_model; 0: never).'),
    ('jobs.dormant_insights_minutes', 'integer', '1440', 0, 525600,
     'How often the workers look for privileged accounts that became dormant, analyse each (custos.analyze_dormant_user) and raise an alert (0: never).'),
    ('jobs.retention_minutes', 'integer', '1440', 0, 525600,
     'How often the workers apply the tenant''s retention (custos.apply_retention; 0: never).'),
    ('jobs.checkpoint_publication_minutes', 'integer', '60', 0, 525600,
     'How often the workers sign a checkpoint of the tenant''s ledger and POST it to custos.checkpoint_url, when that is set (0: never).'),
    ('jobs.summary_report_minutes', 'integer', '10080', 0, 525600,
     'How often the workers write custos.summarize(''weekly'') and send it to the tenant''s integrations (0: never).'),
    ('jobs.budget_alert_minutes', 'integer', '60', 0, 525600,
     'How often the workers check the tenant''s monthly AI budgets and raise an alert, once a month, when one is spent (0: never).'),
    ('jobs.embed_identities', 'boolean', 'true', NULL, NULL,
     'Identities whose profile changed are queued and embedded by the workers (custos.similar_users stays current).'),
    ('jobs.embed_events', 'boolean', 'false', NULL, NULL,
     'The workers embed the tenant''s new events (custos.search_events stays current).'),
    ('jobs.embedding_max_attempts', 'integer', '5', 1, 100,
     'Attempts before a queued embedding is marked failed (custos.retry_failed queues it again).');

------------------------------------------------------------------------------------------------
-- The embedding queue
------------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.embedding_queue (
    tenant_id       uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('identity', 'events', 'event')),
    -- identity: the user id; events: '' (one row a tenant); event: the seq of a single event.
    item            text NOT NULL,
    -- events: embedded through this seq (the watermark).
    done_seq        bigint,
    -- Bumped by every change of the item: a result claimed under an older generation is not written.
    generation      bigint NOT NULL DEFAULT 1,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
    -- Claimed alone: its batch was refused, or kept failing, with it.
    solo            boolean NOT NULL DEFAULT false,
    attempts        integer NOT NULL DEFAULT 0,
    enqueued_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_until     timestamptz,
    last_error      text,
    PRIMARY KEY (tenant_id, kind, item)
);
CREATE INDEX embedding_queue_due ON @extschema@.embedding_queue (next_attempt_at) WHERE state = 'pending';
COMMENT ON TABLE @extschema@.embedding_queue IS
'What the workers are to embed: identities whose profile changed, each tenant''s events after its watermark (kind events, done_seq), single events whose batch failed. A batch the provider refuses, or that fails jobs.embedding_max_attempts times, is split: its items are tried alone (solo), and one the provider refuses alone is failed (last_error says why) until custos.retry_failed; an unavailable provider only delays items. Tenant-isolated.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.embedding_queue');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.embedding_queue', '');
GRANT SELECT ON @extschema@.embedding_queue TO custos_reader;

CREATE FUNCTION custos_internal.identity_profiles_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Transition tables have no statistics: a nested loop over two of 20,000 rows each would take
-- minutes (the activity fold updates that many at once).
SET enable_nestloop = off
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.identities', 'custos.identity_profiles_changed');
    IF TG_OP = 'INSERT' THEN
        INSERT INTO @extschema@.embedding_queue AS q (tenant_id, kind, item)
        SELECT n.tenant_id, 'identity', n.user_id FROM custos_added n
         WHERE n.tenant_id IN (SELECT t.tenant_id FROM (SELECT DISTINCT a.tenant_id FROM custos_added a) t
                                WHERE @extschema@.tenant_setting(t.tenant_id, 'jobs.embed_identities') = 'true')
        ON CONFLICT (tenant_id, kind, item) DO UPDATE
           SET generation = q.generation + 1, state = 'pending', solo = false, attempts = 0, lease_until = NULL,
               next_attempt_at = clock_timestamp(), enqueued_at = clock_timestamp(), last_error = NULL;
    ELSE
        -- Only what changes the embedded text: a login that moves last_active_at within the same
        -- activity bucket queues nothing.
        INSERT INTO @extschema@.embedding_queue AS q (tenant_id, kind, item)
        SELECT n.tenant_id, 'identity', n.user_id
          FROM custos_added n JOIN custos_removed o ON o.tenant_id = n.tenant_id AND o.user_id = n.user_id
         WHERE n.tenant_id IN (SELECT t.tenant_id FROM (SELECT DISTINCT a.tenant_id FROM custos_added a) t
                                WHERE @extschema@.tenant_setting(t.tenant_id, 'jobs.embed_identities') = 'true')
           AND (n.status, n.is_service_account, n.is_privileged, n.roles, n.department, n.source, n.mfa_enabled,
                n.has_valid_credentials, n.last_active_at)
               IS DISTINCT FROM (o.status, o.is_service_account, o.is_privileged, o.roles, o.department, o.source,
                                 o.mfa_enabled, o.has_valid_credentials, o.last_active_at)
           AND custos_internal.identity_profile(n) IS DISTINCT FROM custos_internal.identity_profile(o)
        ON CONFLICT (tenant_id, kind, item) DO UPDATE
           SET generation = q.generation + 1, state = 'pending', solo = false, attempts = 0, lease_until = NULL,
               next_attempt_at = clock_timestamp(), enqueued_at = clock_timestamp(), last_error = NULL;
    END IF;
    IF FOUND THEN
        PERFORM custos_internal.wake_worker_at_commit();
    END IF;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION custos_internal.identity_profiles_changed() IS
'Trigger of custos.identities: queues the identities whose embedded profile text changed (not every UPDATE) for the workers, and wakes the database''s worker at commit.';
CREATE TRIGGER zz_identity_profiles_inserted AFTER INSERT ON @extschema@.identities
    REFERENCING NEW TABLE AS custos_added FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.identity_profiles_changed();
CREATE TRIGGER zz_identity_profiles_updated AFTER UPDATE ON @extschema@.identities
    REFERENCING NEW TABLE AS custos_added OLD TABLE AS custos_removed
    FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.identity_profiles_changed();

-- A removed identity leaves the queue too.
CREATE FUNCTION custos_internal.identity_queue_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.identities', 'custos.identity_queue_removed');
    DELETE FROM @extschema@.embedding_queue q USING custos_removed r
     WHERE q.tenant_id = r.tenant_id AND q.kind = 'identity' AND q.item = r.user_id;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION custos_internal.identity_queue_removed() IS
'Trigger of custos.identities: a removed identity leaves the embedding queue.';
CREATE TRIGGER zz_identity_queue_removed AFTER DELETE ON @extschema@.identities
    REFERENCING OLD TABLE AS custos_removed FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.identity_queue_removed();

-- Each tenant with jobs.embed_events on gets its events row; its watermark starts at the tenant's
-- first event. Returns how many rows were added.
CREATE FUNCTION custos_internal.watch_event_embeddings() RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    n bigint;
BEGIN
    INSERT INTO @extschema@.embedding_queue (tenant_id, kind, item, done_seq)
    SELECT s.tenant_id, 'events', '', 0
      FROM @extschema@.tenant_settings s
     WHERE s.key = 'jobs.embed_events' AND s.value = 'true'
    ON CONFLICT (tenant_id, kind, item) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    -- A tenant that turned it off is not embedded further (its events and single events leave).
    DELETE FROM @extschema@.embedding_queue q
     WHERE q.kind IN ('events', 'event')
       AND @extschema@.tenant_setting(q.tenant_id, 'jobs.embed_events') <> 'true';
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION custos_internal.watch_event_embeddings() IS
'Internal: adds the events row of the embedding queue for each tenant that turned jobs.embed_events on, and removes the events of tenants that turned it off.';

-- The next batch to embed, claimed under a lease: the due item kinds of the tenant whose oldest
-- due item is oldest (one tenant a batch: one provider call with the tenant's model). Returns
-- the texts to embed, never stored, and what the write needs to check.
CREATE FUNCTION custos_internal.claim_embeddings(batch_size integer, lease_seconds integer, only_tenant uuid)
RETURNS TABLE (tenant_id uuid, kind text, item text, generation bigint, seq bigint, text text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    t uuid;
    from_seq bigint;
    alone boolean;
    b_seqs bigint[];
    b_actions text[];
    b_texts text[];
    settled bigint;
    start_seq bigint;
BEGIN
    SELECT q.tenant_id INTO t FROM @extschema@.embedding_queue q
     WHERE q.state = 'pending' AND q.next_attempt_at <= clock_timestamp()
       AND (only_tenant IS NULL OR q.tenant_id = only_tenant)
       AND (q.lease_until IS NULL OR q.lease_until < clock_timestamp())
       AND (q.kind <> 'events' OR EXISTS (SELECT 1 FROM @extschema@.events e WHERE e.tenant_id = q.tenant_id AND e.seq > q.done_seq))
     ORDER BY q.next_attempt_at
     LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF t IS NULL THEN
        RETURN;
    END IF;
    -- Identities and single events of the tenant, oldest first.
    -- A solo item due first goes alone; else a batch of the others.
    SELECT q.solo INTO alone FROM @extschema@.embedding_queue q
     WHERE q.tenant_id = t AND q.kind IN ('identity', 'event') AND q.state = 'pending'
       AND q.next_attempt_at <= clock_timestamp() AND (q.lease_until IS NULL OR q.lease_until < clock_timestamp())
     ORDER BY q.next_attempt_at LIMIT 1;
    RETURN QUERY
    WITH claimed AS (
        SELECT q.tenant_id, q.kind, q.item FROM @extschema@.embedding_queue q
         WHERE q.tenant_id = t AND q.kind IN ('identity', 'event') AND q.state = 'pending' AND q.solo = coalesce(alone, false)
           AND q.next_attempt_at <= clock_timestamp() AND (q.lease_until IS NULL OR q.lease_until < clock_timestamp())
         ORDER BY q.next_attempt_at
         LIMIT CASE WHEN alone THEN 1 ELSE batch_size END FOR UPDATE SKIP LOCKED),
    leased AS (
        UPDATE @extschema@.embedding_queue q
           SET lease_until = clock_timestamp() + make_interval(secs => lease_seconds), attempts = q.attempts + 1
          FROM claimed c WHERE q.tenant_id = c.tenant_id AND q.kind = c.kind AND q.item = c.item
        RETURNING q.tenant_id, q.kind, q.item, q.generation)
    SELECT l.tenant_id, l.kind, l.item, l.generation,
           CASE WHEN l.kind = 'event' THEN l.item::bigint END,
           CASE WHEN l.kind = 'identity' THEN custos_internal.identity_profile(i)
                ELSE custos_internal.event_text(ev.action, ev.entity_type, ev.entity_id, ev.severity, ev.details) END
      FROM leased l
      LEFT JOIN @extschema@.identities i ON l.kind = 'identity' AND i.tenant_id = l.tenant_id AND i.user_id = l.item
      LEFT JOIN @extschema@.events ev
        ON l.kind = 'event' AND ev.tenant_id = l.tenant_id AND ev.seq = CASE WHEN l.kind = 'event' THEN l.item::bigint END;
    IF FOUND THEN
        RETURN;
    END IF;
    -- Else the tenant's new events after its watermark.
    SELECT q.done_seq INTO from_seq FROM @extschema@.embedding_queue q
     WHERE q.tenant_id = t AND q.kind = 'events' AND q.item = '' AND q.state = 'pending'
       AND q.next_attempt_at <= clock_timestamp() AND (q.lease_until IS NULL OR q.lease_until < clock_timestamp())
       FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- The next events after the watermark, but custos' own ai.call events: embedding them would
    -- make more of them. A batch of those alone just moves the watermark.
    SELECT array_agg(x.seq ORDER BY x.seq), array_agg(x.action ORDER BY x.seq), array_agg(x.txt ORDER BY x.seq)
      INTO b_seqs, b_actions, b_texts
      FROM (SELECT ev.seq, ev.action,
                   custos_internal.event_text(ev.action, ev.entity_type, ev.entity_id, ev.severity, ev.details) AS txt
              FROM @extschema@.events ev
             WHERE ev.tenant_id = t AND ev.seq > from_seq
             ORDER BY ev.seq
             LIMIT batch_size) x;
    IF b_seqs IS NULL THEN
        RETURN;
    END IF;
    -- Never past an event not visible yet (a later one may commit first): the chain's seqs have no
    -- gaps, so the batch stops at the first one missing. Retention may have removed the events
    -- below the tenant's oldest.
    start_seq := greatest(from_seq + 1, (SELECT min(ev.seq) FROM @extschema@.events ev WHERE ev.tenant_id = t));
    SELECT count(*) INTO settled FROM unnest(b_seqs) WITH ORDINALITY u(seq, o) WHERE u.seq = start_seq + u.o - 1;
    IF settled = 0 THEN
        RETURN;
    END IF;
    b_seqs := b_seqs[1:settled]; b_actions := b_actions[1:settled]; b_texts := b_texts[1:settled];
    IF NOT EXISTS (SELECT 1 FROM unnest(b_actions) a WHERE a <> 'ai.call') THEN
        UPDATE @extschema@.embedding_queue q SET done_seq = greatest(q.done_seq, b_seqs[cardinality(b_seqs)])
         WHERE q.tenant_id = t AND q.kind = 'events' AND q.item = '';
        RETURN;
    END IF;
    UPDATE @extschema@.embedding_queue q
       SET lease_until = clock_timestamp() + make_interval(secs => lease_seconds), attempts = q.attempts + 1
     WHERE q.tenant_id = t AND q.kind = 'events' AND q.item = '';
    RETURN QUERY
    SELECT t, 'events'::text, ''::text, q.generation, c.seq, c.txt
      FROM unnest(b_seqs, b_actions, b_texts) c(seq, action, txt), @extschema@.embedding_queue q
     WHERE c.action <> 'ai.call' AND q.tenant_id = t AND q.kind = 'events' AND q.item = ''
     ORDER BY c.seq;
END
$fn$;
COMMENT ON FUNCTION custos_internal.claim_embeddings(integer, integer, uuid) IS
'Internal: claims the next batch of one tenant''s embedding queue (of only_tenant, when given) under a lease (FOR UPDATE SKIP LOCKED, so that workers never take the same items) and returns the texts to embed.';

-- Writes what the provider returned for a claimed batch: each vector whose item is still of the
-- claimed generation (an identity changed meanwhile is left for its next turn), then takes the
-- done items off the queue, or moves the events watermark. Exactly once: a second write of the
-- same claim finds nothing left to do.
CREATE FUNCTION custos_internal.store_embeddings(tenant uuid, model text, dims integer, kinds text[], items text[],
                                                 generations bigint[], seqs bigint[], texts text[], vectors real[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    n bigint := 0;
    m bigint;
    top bigint;
BEGIN
    -- Identities: only those still of the claimed generation.
    WITH fresh AS (
        SELECT x.item, x.txt, x.o
          FROM unnest(kinds, items, generations, texts) WITH ORDINALITY x(kind, item, gen, txt, o)
          JOIN @extschema@.embedding_queue q
            ON q.tenant_id = tenant AND q.kind = 'identity' AND q.item = x.item AND q.generation = x.gen
          -- The profile as it stands now is the one embedded (a claim can see a newer generation
          -- than the text it read).
          JOIN @extschema@.identities i
            ON i.tenant_id = tenant AND i.user_id = x.item AND custos_internal.identity_profile(i) = x.txt
         WHERE x.kind = 'identity'),
    written AS (
        INSERT INTO @extschema@.identity_embeddings AS ie (tenant_id, user_id, model, dims, content_hash, embedded_at, embedding)
        SELECT tenant, f.item, store_embeddings.model, store_embeddings.dims, sha256(convert_to(store_embeddings.model || E'\n' || f.txt, 'UTF8')), now(),
               vectors[(f.o - 1) * store_embeddings.dims + 1 : f.o * store_embeddings.dims]
          FROM fresh f
        ON CONFLICT (tenant_id, user_id, model) DO UPDATE
           SET dims = excluded.dims, content_hash = excluded.content_hash, embedded_at = excluded.embedded_at,
               embedding = excluded.embedding
        RETURNING ie.user_id)
    DELETE FROM @extschema@.embedding_queue q USING unnest(kinds, items, generations) x(kind, item, gen)
     WHERE q.tenant_id = tenant AND q.kind = 'identity' AND x.kind = 'identity' AND q.item = x.item AND q.generation = x.gen
       AND EXISTS (SELECT 1 FROM written w WHERE w.user_id = x.item);
    GET DIAGNOSTICS m = ROW_COUNT;
    n := n + m;
    -- Events, single or from the watermark: immutable, so written if not written yet.
    INSERT INTO @extschema@.event_embeddings AS ee (tenant_id, seq, occurred_at, action, model, dims, content_hash, embedded_at, embedding)
    SELECT tenant, ev.seq, ev.occurred_at, ev.action, store_embeddings.model, store_embeddings.dims,
           sha256(convert_to(store_embeddings.model || E'\n' || x.txt, 'UTF8')), now(),
           vectors[(x.o - 1) * store_embeddings.dims + 1 : x.o * store_embeddings.dims]
      FROM unnest(kinds, seqs, texts) WITH ORDINALITY x(kind, seq, txt, o)
      JOIN @extschema@.events ev ON ev.tenant_id = tenant AND ev.seq = x.seq
     WHERE x.kind IN ('events', 'event')
    ON CONFLICT (tenant_id, seq, model) DO NOTHING;
    GET DIAGNOSTICS m = ROW_COUNT;
    n := n + m;
    DELETE FROM @extschema@.embedding_queue q USING unnest(kinds, items, generations) x(kind, item, gen)
     WHERE q.tenant_id = tenant AND q.kind = 'event' AND x.kind = 'event' AND q.item = x.item;
    SELECT max(x.seq) INTO top FROM unnest(kinds, seqs) x(kind, seq) WHERE x.kind = 'events';
    IF top IS NOT NULL THEN
        UPDATE @extschema@.embedding_queue q
           SET done_seq = greatest(q.done_seq, top), attempts = 0, lease_until = NULL, last_error = NULL,
               next_attempt_at = clock_timestamp()
         WHERE q.tenant_id = tenant AND q.kind = 'events' AND q.item = '';
    END IF;
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION custos_internal.store_embeddings(uuid, text, integer, text[], text[], bigint[], bigint[], text[], real[]) IS
'Internal: writes a claimed batch''s vectors (flattened, dims each) where the item is still of the claimed generation, and takes the done items off the queue (or moves the events watermark). Returns the vectors written.';

-- A failed batch. Refused by the provider (or failed jobs.embedding_max_attempts times): split,
-- each item tried alone next (an events batch becomes single events, and the watermark moves
-- past them: one bad event never stalls the others); an item refused alone is failed. Otherwise
-- (the provider unavailable) the items wait, doubling from 1 s to 5 minutes, and are never failed
-- for it; counted is false when no call was made (a breaker open, a rate limit): no attempt spent.
CREATE FUNCTION custos_internal.embeddings_failed(tenant uuid, kinds text[], items text[], seqs bigint[], error text,
                                                  refused boolean, counted boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    max_attempts integer := (@extschema@.tenant_setting(tenant, 'jobs.embedding_max_attempts'))::integer;
    batch integer := cardinality(kinds);
    top bigint;
    spent boolean;
BEGIN
    IF NOT counted THEN
        UPDATE @extschema@.embedding_queue q SET attempts = greatest(q.attempts - 1, 0)
          FROM unnest(kinds, items) x(kind, item)
         WHERE q.tenant_id = tenant AND q.kind = x.kind AND q.item = x.item;
    END IF;
    -- Identities and single events.
    UPDATE @extschema@.embedding_queue q
       SET state = CASE WHEN refused AND (batch = 1 OR q.solo) THEN 'failed' ELSE 'pending' END,
           solo = q.solo OR (batch > 1 AND (refused OR q.attempts >= max_attempts)),
           attempts = CASE WHEN batch > 1 AND (refused OR q.attempts >= max_attempts) THEN 0 ELSE q.attempts END,
           lease_until = NULL, last_error = left(error, 500),
           next_attempt_at = CASE WHEN batch > 1 AND (refused OR q.attempts >= max_attempts) THEN clock_timestamp()
                                  ELSE clock_timestamp() + make_interval(secs => least(300, 2 ^ least(greatest(q.attempts - 1, 0), 20))) END
      FROM unnest(kinds, items) x(kind, item)
     WHERE q.tenant_id = tenant AND q.kind = x.kind AND q.item = x.item AND x.kind IN ('identity', 'event');
    -- The events watermark.
    SELECT max(x.seq) INTO top FROM unnest(kinds, seqs) x(kind, seq) WHERE x.kind = 'events';
    IF top IS NULL THEN
        RETURN;
    END IF;
    SELECT q.attempts >= max_attempts INTO spent FROM @extschema@.embedding_queue q
     WHERE q.tenant_id = tenant AND q.kind = 'events' AND q.item = '';
    IF refused OR spent THEN
        INSERT INTO @extschema@.embedding_queue AS q (tenant_id, kind, item, solo, last_error)
        SELECT tenant, 'event', x.seq::text, true, left(error, 500)
          FROM unnest(kinds, seqs) x(kind, seq) WHERE x.kind = 'events'
        ON CONFLICT (tenant_id, kind, item) DO NOTHING;
        UPDATE @extschema@.embedding_queue q
           SET done_seq = greatest(q.done_seq, top), attempts = 0, lease_until = NULL, last_error = NULL,
               next_attempt_at = clock_timestamp()
         WHERE q.tenant_id = tenant AND q.kind = 'events' AND q.item = '';
    ELSE
        UPDATE @extschema@.embedding_queue q
           SET lease_until = NULL, last_error = left(error, 500),
               next_attempt_at = clock_timestamp() + make_interval(secs => least(300, 2 ^ least(greatest(q.attempts - 1, 0), 20)))
         WHERE q.tenant_id = tenant AND q.kind = 'events' AND q.item = '';
    END IF;
END
$fn$;
COMMENT ON FUNCTION custos_internal.embeddings_failed(uuid, text[], text[], bigint[], text, boolean, boolean) IS
'Internal: records a failed batch: refused (or failing jobs.embedding_max_attempts times), its items are tried alone next, and one refused alone is failed; an unavailable provider only delays them (1 s doubling to 5 minutes). counted: whether a call was made.';

CREATE FUNCTION @extschema@.retry_failed() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
    n bigint;
BEGIN
    UPDATE @extschema@.embedding_queue q
       SET state = 'pending', attempts = 0, next_attempt_at = clock_timestamp(), lease_until = NULL
     WHERE q.tenant_id = tenant AND q.state = 'failed';
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM custos_internal.wake_worker_at_commit();
    END IF;
    RETURN n;
END
$fn$;
-- A database has one worker: when it starts, every lease is one its predecessor left (killed
-- mid-batch), and is given back at once rather than when it expires.
CREATE FUNCTION custos_internal.release_leases() RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
    UPDATE @extschema@.embedding_queue q SET lease_until = NULL WHERE q.lease_until IS NOT NULL;
    UPDATE @extschema@.notifications n SET lease_until = NULL WHERE n.lease_until IS NOT NULL AND n.state = 'pending';
$fn$;
COMMENT ON FUNCTION custos_internal.release_leases() IS
'Internal: gives back the leases a killed worker left (called by the database''s worker when it starts).';

-- The queue of one tenant embedded now, in this transaction (custos.run_job('embedding_refresh'),
-- for databases without workers): the same claims and writes as a worker's.
CREATE FUNCTION custos_internal.refresh_embeddings_now(tenant uuid)
RETURNS TABLE (tenant_id uuid, items bigint, outcome text, error text, started_at timestamptz, ended_at timestamptz)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    started timestamptz := clock_timestamp();
    previous_tenant uuid := @extschema@.current_tenant();
    m text;
    total bigint := 0;
    result text := 'ok';
    why text;
    kinds text[]; item_ids text[]; gens bigint[]; seqs bigint[]; texts text[];
    flat real[];
    d integer;
BEGIN
    PERFORM @extschema@.set_tenant(tenant);
    PERFORM custos_internal.watch_event_embeddings();
    m := custos_internal.embedding_model(NULL);
    LOOP
        SELECT array_agg(c.kind), array_agg(c.item), array_agg(c.generation), array_agg(c.seq), array_agg(c.text)
          INTO kinds, item_ids, gens, seqs, texts
          FROM custos_internal.claim_embeddings(256, 300, tenant) c;
        EXIT WHEN kinds IS NULL;
        BEGIN
            SELECT array_agg(u.v ORDER BY e.o, u.o2), max(cardinality(e.vec)) INTO flat, d
              FROM custos_internal.embed_texts(texts, m) WITH ORDINALITY e(vec, o),
                   unnest(e.vec) WITH ORDINALITY u(v, o2);
            total := total + custos_internal.store_embeddings(tenant, m, d, kinds, item_ids, gens, seqs, texts, flat);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS why = MESSAGE_TEXT;
            PERFORM custos_internal.embeddings_failed(tenant, kinds, item_ids, seqs, why, SQLSTATE <> '08006', true);
            result := 'failed';
            EXIT;
        END;
    END LOOP;
    PERFORM @extschema@.set_tenant(previous_tenant);
    RETURN QUERY SELECT tenant, total, result, why, started, clock_timestamp();
END
$fn$;
COMMENT ON FUNCTION custos_internal.refresh_embeddings_now(uuid) IS
'Internal: embeds a tenant''s queue now, in the calling transaction, batch by batch; a failed batch is recorded on its items and ends the run.';

COMMENT ON FUNCTION @extschema@.retry_failed() IS
'Queues the current tenant''s failed embeddings again (their last_error stays until the next attempt); returns how many.';

------------------------------------------------------------------------------------------------
-- Scheduled jobs
------------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.job_runs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    job        text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz NOT NULL,
    items      bigint NOT NULL DEFAULT 0,
    outcome    text NOT NULL CHECK (outcome IN ('ok', 'skipped', 'failed')),
    error      text,
    run_by     text NOT NULL CHECK (run_by IN ('worker', 'hand'))
);
CREATE INDEX job_runs_last ON @extschema@.job_runs (tenant_id, job, started_at DESC);
COMMENT ON TABLE @extschema@.job_runs IS
'Every run of a scheduled job (by a worker, or by hand through custos.run_job): its tenant, start and end, how many items it handled, and its outcome (ok, skipped with the reason in error, failed with the error). Tenant-isolated; the retention job keeps 90 days.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.job_runs');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.job_runs', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.job_runs_id_seq', '');
GRANT SELECT ON @extschema@.job_runs TO custos_reader;

CREATE FUNCTION custos_internal.job_names() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$ SELECT ARRAY['anomaly_detection', 'model_retraining', 'dormant_insights', 'retention',
                     'checkpoint_publication', 'summary_report', 'budget_alert'] $fn$;
COMMENT ON FUNCTION custos_internal.job_names() IS 'Internal: the scheduled jobs, in the order a worker runs the due ones.';

-- Every tenant custos knows of: a chain in the ledger, identities or settings. The ledger's
-- tenants are found by skipping through its primary key, one probe a tenant.
CREATE FUNCTION custos_internal.known_tenants() RETURNS SETOF uuid
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH RECURSIVE chains AS (
        (SELECT e.tenant_id FROM @extschema@.events e ORDER BY e.tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT e.tenant_id FROM @extschema@.events e WHERE e.tenant_id > c.tenant_id ORDER BY e.tenant_id LIMIT 1)
          FROM chains c WHERE c.tenant_id IS NOT NULL)
    SELECT tenant_id FROM chains WHERE tenant_id IS NOT NULL
    UNION SELECT DISTINCT s.tenant_id FROM @extschema@.tenant_settings s
    UNION SELECT DISTINCT i.tenant_id FROM @extschema@.identities i
$fn$;
COMMENT ON FUNCTION custos_internal.known_tenants() IS
'Internal: every tenant with events, settings or identities.';

-- The (tenant, job) pairs whose interval has passed since their last run.
CREATE FUNCTION custos_internal.due_jobs() RETURNS TABLE (tenant_id uuid, job text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT t.tenant_id, j.job
      FROM custos_internal.known_tenants() t(tenant_id)
     CROSS JOIN unnest(custos_internal.job_names()) WITH ORDINALITY j(job, o)
     CROSS JOIN LATERAL (SELECT (@extschema@.tenant_setting(t.tenant_id, 'jobs.' || j.job || '_minutes'))::integer AS minutes) s
     WHERE s.minutes > 0
       AND NOT EXISTS (SELECT 1 FROM @extschema@.job_runs r
                        WHERE r.tenant_id = t.tenant_id AND r.job = j.job
                          AND r.started_at > now() - make_interval(mins => s.minutes))
     ORDER BY t.tenant_id, j.o
$fn$;
COMMENT ON FUNCTION custos_internal.due_jobs() IS
'Internal: the scheduled jobs due, per tenant: those whose jobs.<job>_minutes have passed since their last run (0: never).';

CREATE FUNCTION custos_internal.record_job_run(tenant uuid, job text, started timestamptz, items bigint, outcome text,
                                               error text, run_by text)
RETURNS @extschema@.job_runs
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
    INSERT INTO @extschema@.job_runs (tenant_id, job, started_at, ended_at, items, outcome, error, run_by)
    VALUES (tenant, job, started, clock_timestamp(), items, outcome, left(error, 1000), run_by)
    RETURNING *
$fn$;
COMMENT ON FUNCTION custos_internal.record_job_run(uuid, text, timestamptz, bigint, text, text, text) IS
'Internal: records one run of a job in custos.job_runs.';

-- One job for one tenant, as custos itself (the tenant set for the job's functions), its errors
-- caught and recorded: a failing job or tenant never stops the others.
CREATE FUNCTION custos_internal.run_job_for(tenant uuid, job text, run_by text)
RETURNS @extschema@.job_runs
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    started timestamptz := clock_timestamp();
    n bigint := 0;
    result text := 'ok';
    why text;
    previous_tenant uuid := @extschema@.current_tenant();
BEGIN
    PERFORM @extschema@.set_tenant(tenant);
    BEGIN
        CASE job
        WHEN 'anomaly_detection' THEN
            IF NOT EXISTS (SELECT 1 FROM @extschema@.models m
                            WHERE m.name = 'audit_events' AND m.active AND (m.tenant_id = tenant OR m.tenant_id IS NULL)) THEN
                result := 'skipped'; why := 'no audit_events model for the tenant and no shared baseline (custos.train_anomaly_model makes one)';
            ELSE
                SELECT count(*) INTO n FROM @extschema@.detect_anomalies(now() - interval '24 hours', now());
            END IF;
        WHEN 'model_retraining' THEN
            IF (SELECT count(*) FROM (SELECT 1 FROM @extschema@.events e WHERE e.tenant_id = tenant
                                        AND e.occurred_at > now() - interval '30 days' LIMIT 1000) x) < 1000 THEN
                result := 'skipped'; why := 'fewer than 1,000 events in the last 30 days';
            ELSE
                PERFORM @extschema@.train_anomaly_model();
                n := 1;
            END IF;
        WHEN 'dormant_insights' THEN
            n := custos_internal.refresh_dormant_insights(tenant);
        WHEN 'retention' THEN
            SELECT coalesce(sum(r.removed), 0) INTO n FROM @extschema@.apply_retention(tenant) r;
            DELETE FROM @extschema@.job_runs r WHERE r.tenant_id = tenant AND r.started_at < now() - interval '90 days';
        WHEN 'checkpoint_publication' THEN
            IF coalesce(current_setting('custos.checkpoint_url', true), '') = '' THEN
                result := 'skipped'; why := 'custos.checkpoint_url is not set';
            ELSE
                n := custos_internal.queue_checkpoint(tenant);
            END IF;
        WHEN 'summary_report' THEN
            n := custos_internal.queue_summary_report(tenant);
        WHEN 'budget_alert' THEN
            n := custos_internal.raise_budget_alerts(tenant);
        END CASE;
    EXCEPTION WHEN OTHERS THEN
        result := 'failed';
        GET STACKED DIAGNOSTICS why = MESSAGE_TEXT;
    END;
    PERFORM @extschema@.set_tenant(previous_tenant);
    RETURN custos_internal.record_job_run(tenant, job, started, n, result, why, run_by);
END
$fn$;
COMMENT ON FUNCTION custos_internal.run_job_for(uuid, text, text) IS
'Internal: runs one scheduled job for one tenant and records the run in custos.job_runs (a failure is recorded, not raised).';

CREATE FUNCTION @extschema@.run_job(job text, tenant uuid DEFAULT NULL)
RETURNS TABLE (tenant_id uuid, items bigint, outcome text, error text, started_at timestamptz, ended_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    t uuid;
    targets uuid[];
    r @extschema@.job_runs;
BEGIN
    IF job IS NULL OR NOT job = ANY (custos_internal.job_names() || ARRAY['embedding_refresh']) THEN
        RAISE EXCEPTION 'unknown job "%"', job
            USING ERRCODE = '22023', HINT = 'one of ' || array_to_string(custos_internal.job_names() || ARRAY['embedding_refresh'], ', ');
    END IF;
    -- The given tenant, else the current one; a superuser with neither runs it for every tenant
    -- (as pg_cron does).
    t := coalesce(run_job.tenant, @extschema@.current_tenant());
    IF t IS NOT NULL THEN
        PERFORM custos_internal.require_tenant_access(t);
        targets := ARRAY[t];
    ELSIF (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = custos_internal.caller_role()) THEN
        targets := ARRAY(SELECT custos_internal.known_tenants());
    ELSE
        PERFORM @extschema@.require_tenant();
    END IF;
    IF job = 'embedding_refresh' THEN
        FOREACH t IN ARRAY targets LOOP
            RAISE NOTICE 'custos: embedding the queue of tenant %', t;
            RETURN QUERY SELECT * FROM custos_internal.refresh_embeddings_now(t);
        END LOOP;
        RETURN;
    END IF;
    FOREACH t IN ARRAY targets LOOP
        RAISE NOTICE 'custos: running % for tenant %', job, t;
        r := custos_internal.run_job_for(t, job, 'hand');
        RETURN QUERY SELECT r.tenant_id, r.items, r.outcome, r.error, r.started_at, r.ended_at;
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION @extschema@.run_job(text, uuid) IS
'Runs a job now: anomaly_detection, model_retraining, dormant_insights, retention, checkpoint_publication, summary_report, budget_alert or embedding_refresh; for tenant, else the current tenant, else (a superuser, as pg_cron runs it) every tenant. Each run is recorded in custos.job_runs (embedding_refresh excepted: the queue shows it) and returned; a failed run is returned with its error, not raised. Without preloaded workers, schedule it with pg_cron.';

------------------------------------------------------------------------------------------------
-- Health, metrics, progress
------------------------------------------------------------------------------------------------
COMMENT ON FUNCTION custos_internal.worker_states() IS
'Internal: the launcher and this database''s workers as shared memory shows them (pid, activity, heartbeat, counters).';
COMMENT ON FUNCTION custos_internal.worker_progress() IS
'Internal: what each worker of this database is doing now (behind custos.job_progress).';
COMMENT ON FUNCTION custos_internal.breaker_states(boolean) IS
'Internal: the circuit breakers of this database that are not plainly closed: the current tenant''s, or every tenant''s for a superuser asking for them (custos.metrics).';
COMMENT ON FUNCTION custos_internal.wake_worker_at_commit() IS
'Internal: wakes the database''s worker when the transaction commits (what was queued is visible to it then).';

-- Read-only (it works on a hot standby), with the caller's rights: a tenant sees its own queue,
-- notifications and runs; a superuser sees every tenant's.
CREATE FUNCTION @extschema@.health() RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT custos_internal.worker_states() || jsonb_build_object(
        'database', current_database(),
        'checked_at', now(),
        'embedding_queue', (
            SELECT jsonb_build_object(
                'pending', count(*) FILTER (WHERE q.state = 'pending' AND q.kind <> 'events'),
                'failed', count(*) FILTER (WHERE q.state = 'failed'),
                'leased', count(*) FILTER (WHERE q.lease_until > now()),
                'oldest_pending_age_s', round(greatest(0, extract(epoch FROM clock_timestamp() - min(q.enqueued_at) FILTER (WHERE q.state = 'pending' AND q.kind <> 'events')))::numeric, 3),
                'events_behind', coalesce(sum((SELECT max(e.seq) FROM @extschema@.events e WHERE e.tenant_id = q.tenant_id) - q.done_seq)
                                              FILTER (WHERE q.kind = 'events'), 0))
              FROM @extschema@.embedding_queue q),
        'notifications', (
            SELECT jsonb_build_object(
                'pending', count(*) FILTER (WHERE n.state = 'pending'),
                'dead', count(*) FILTER (WHERE n.state = 'dead'),
                'delivered_24h', count(*) FILTER (WHERE n.state = 'delivered' AND n.delivered_at > now() - interval '1 day'),
                'oldest_pending_age_s', round(greatest(0, extract(epoch FROM clock_timestamp() - min(n.created_at) FILTER (WHERE n.state = 'pending')))::numeric, 3))
              FROM @extschema@.notifications n),
        'breakers', (SELECT coalesce(jsonb_agg(to_jsonb(b)), '[]') FROM custos_internal.breaker_states(false) b),
        'jobs', (
            SELECT coalesce(jsonb_object_agg(r.job, jsonb_build_object('tenant_id', r.tenant_id, 'last_started_at', r.started_at,
                                                                      'outcome', r.outcome, 'items', r.items, 'error', r.error)), '{}')
              FROM (SELECT DISTINCT ON (j.job) j.* FROM @extschema@.job_runs j ORDER BY j.job, j.started_at DESC) r))
$fn$;
COMMENT ON FUNCTION @extschema@.health() IS
'The state of custos'' background work in this database, as JSON: whether custos is preloaded, the launcher and the workers (pid, activity, heartbeat and its age, counters), the embedding queue (pending, failed, leased, oldest pending age, events not yet embedded), the notifications (pending, dead, delivered in 24 hours, oldest pending age), the providers'' circuit breakers, and each job''s last run. Read-only, so it works on a standby; a tenant sees its own queue and runs.';

-- For postgres_exporter's custom queries and Prometheus: one row a metric and label set, every
-- tenant's (owned by custos, which reads past row-level security; counts and ages only).
CREATE FUNCTION custos_internal.metric_rows()
RETURNS TABLE (metric text, labels jsonb, value double precision, help text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH w AS (SELECT custos_internal.worker_states() AS s)
    SELECT 'custos_worker_up', jsonb_build_object('database', current_database()),
           (jsonb_array_length(w.s->'workers') > 0)::int::float8, 'Whether a custos worker serves this database (1) or not (0).'
      FROM w
    UNION ALL
    SELECT 'custos_worker_heartbeat_age_seconds', jsonb_build_object('database', current_database(), 'pid', x->>'pid'),
           (x->>'heartbeat_age_s')::float8, 'Seconds since the worker last reported.'
      FROM w, jsonb_array_elements(w.s->'workers') x
    UNION ALL
    SELECT 'custos_embedding_queue_items', jsonb_build_object('tenant_id', q.tenant_id, 'state', q.state), count(*)::float8,
           'Identities and single events waiting to be embedded, by state.'
      FROM @extschema@.embedding_queue q WHERE q.kind <> 'events' GROUP BY q.tenant_id, q.state
    UNION ALL
    SELECT 'custos_embedding_queue_oldest_seconds', jsonb_build_object('tenant_id', q.tenant_id),
           greatest(0, extract(epoch FROM clock_timestamp() - min(q.enqueued_at)))::float8, 'Age of the oldest pending item of the embedding queue.'
      FROM @extschema@.embedding_queue q WHERE q.kind <> 'events' AND q.state = 'pending' GROUP BY q.tenant_id
    UNION ALL
    SELECT 'custos_embedding_events_behind', jsonb_build_object('tenant_id', q.tenant_id),
           ((SELECT max(e.seq) FROM @extschema@.events e WHERE e.tenant_id = q.tenant_id) - q.done_seq)::float8,
           'Events recorded but not embedded yet (tenants with jobs.embed_events).'
      FROM @extschema@.embedding_queue q WHERE q.kind = 'events'
    UNION ALL
    SELECT 'custos_notifications', jsonb_build_object('tenant_id', n.tenant_id, 'state', n.state), count(*)::float8,
           'Notifications by state (delivered: in the last 24 hours).'
      FROM @extschema@.notifications n WHERE n.state <> 'delivered' OR n.delivered_at > now() - interval '1 day'
     GROUP BY n.tenant_id, n.state
    UNION ALL
    SELECT 'custos_job_last_run_timestamp_seconds', jsonb_build_object('tenant_id', r.tenant_id, 'job', r.job, 'outcome', r.outcome),
           extract(epoch FROM r.started_at)::float8, 'When each job last ran, with its outcome.'
      FROM (SELECT DISTINCT ON (j.tenant_id, j.job) j.* FROM @extschema@.job_runs j ORDER BY j.tenant_id, j.job, j.started_at DESC) r
    UNION ALL
    SELECT 'custos_job_failures_24h', jsonb_build_object('tenant_id', j.tenant_id, 'job', j.job), count(*)::float8,
           'Failed job runs in the last 24 hours.'
      FROM @extschema@.job_runs j WHERE j.outcome = 'failed' AND j.started_at > now() - interval '1 day' GROUP BY j.tenant_id, j.job
    UNION ALL
    SELECT 'custos_ai_calls_month', jsonb_build_object('tenant_id', c.tenant_id, 'provider', c.provider, 'outcome', c.outcome),
           count(*)::float8, 'Remote AI calls this month.'
      FROM @extschema@.ai_calls c WHERE c.at >= date_trunc('month', now()) GROUP BY c.tenant_id, c.provider, c.outcome
    UNION ALL
    SELECT 'custos_ai_cost_usd_month', jsonb_build_object('tenant_id', c.tenant_id), sum(c.cost_micros)::float8 / 1e6,
           'What remote AI calls cost this month, in USD.'
      FROM @extschema@.ai_calls c WHERE c.at >= date_trunc('month', now()) GROUP BY c.tenant_id
    UNION ALL
    SELECT 'custos_breaker_open', jsonb_build_object('tenant_id', b.tenant_id, 'provider', b.provider),
           (b.state <> 'closed')::int::float8, 'Whether a (tenant, provider) circuit breaker is open or half-open.'
      FROM custos_internal.breaker_states(true) b
$fn$;
COMMENT ON FUNCTION custos_internal.metric_rows() IS
'Internal: the rows of custos.metrics, for every tenant.';

CREATE VIEW @extschema@.metrics AS SELECT * FROM custos_internal.metric_rows();
COMMENT ON VIEW @extschema@.metrics IS
'custos'' metrics for Prometheus (postgres_exporter custom queries): one row a metric and label set, with its help text: workers up and their heartbeat age, the embedding queue by state and its oldest item, events not embedded yet, notifications by state, each job''s last run and failures, AI calls and cost this month, open breakers. Every tenant''s counts (no content): for pg_monitor only, not for any tenant''s roles.';
GRANT SELECT ON @extschema@.metrics TO pg_monitor;

CREATE VIEW @extschema@.job_progress AS
    SELECT p.pid, p.activity, p.tenant_id, (custos_internal.job_names())[p.job_number] AS job, p.items_done,
           p.items_total, p.since
      FROM custos_internal.worker_progress() p;
COMMENT ON VIEW @extschema@.job_progress IS
'What each custos worker of this database is doing now, pg_stat_progress style: pid, activity (idle, embedding, delivering notifications, running a job, waiting for custos), the tenant (shown only to itself and to superusers), the job, items done and to do, since when. Jobs run by hand report their progress as NOTICEs instead.';
GRANT SELECT ON @extschema@.job_progress TO custos_reader, pg_monitor;
