-- Similarity search (src/search/): embeddings of identities and events stored with what made them
-- (model, dimensions, content hash), HNSW indexes, and tenant-isolated searches: users like this
-- one, events like a text, events like this one.
--
-- One table per kind holds every model's vectors (column vector without a fixed dimension); an
-- HNSW index per common dimension indexes the rows of that dimension (a partial expression index:
-- HNSW needs a fixed dimension), built with m = 32 and ef_construction = 200: with pgvector's
-- defaults (16, 64) recall@10 of a tenant-filtered search stayed below 0.9 on clustered
-- 1,024-dimension vectors; with these it is 1.0 at under 2 ms (bench/search.sh). Searches filter
-- by tenant inside the index scan with pgvector's iterative scans (hnsw.iterative_scan =
-- relaxed_order), take four times k candidates and re-order them exactly.

CREATE TABLE @extschema@.identity_embeddings (
    tenant_id    uuid NOT NULL DEFAULT @extschema@.current_tenant(),
    user_id      text NOT NULL,
    model        text NOT NULL,
    dims         integer NOT NULL CHECK (dims > 0),
    content_hash bytea NOT NULL,
    embedded_at  timestamptz NOT NULL DEFAULT now(),
    embedding    vector NOT NULL,
    PRIMARY KEY (tenant_id, user_id, model)
);
COMMENT ON TABLE @extschema@.identity_embeddings IS
'Embeddings of identities'' profiles (status, roles, department, source, privileges, MFA, activity; never names, e-mails or user ids), one per identity and model, with the SHA-256 of the text they were made from: custos.embed_identities re-embeds only what changed. Tenant-isolated.';
CREATE INDEX identity_embeddings_hnsw_384 ON @extschema@.identity_embeddings
    USING hnsw ((embedding::vector(384)) vector_cosine_ops) WITH (m = 32, ef_construction = 200) WHERE dims = 384;
CREATE INDEX identity_embeddings_hnsw_1024 ON @extschema@.identity_embeddings
    USING hnsw ((embedding::vector(1024)) vector_cosine_ops) WITH (m = 32, ef_construction = 200) WHERE dims = 1024;
SELECT @extschema@.enable_tenant_isolation('@extschema@.identity_embeddings');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.identity_embeddings', '');
GRANT SELECT ON @extschema@.identity_embeddings TO custos_reader;

CREATE TABLE @extschema@.event_embeddings (
    tenant_id    uuid NOT NULL,
    seq          bigint NOT NULL,
    occurred_at  timestamptz NOT NULL,
    action       text NOT NULL,
    model        text NOT NULL,
    dims         integer NOT NULL CHECK (dims > 0),
    content_hash bytea NOT NULL,
    embedded_at  timestamptz NOT NULL DEFAULT now(),
    embedding    vector NOT NULL,
    PRIMARY KEY (tenant_id, seq, model)
);
COMMENT ON TABLE @extschema@.event_embeddings IS
'Embeddings of ledger events (action, entity, severity and details, redacted before embedding; sealed values are not opened and no text is stored), one per event and model, with the SHA-256 of the text they were made from. Tenant-isolated; removed with the events retention removes.';
CREATE INDEX event_embeddings_hnsw_384 ON @extschema@.event_embeddings
    USING hnsw ((embedding::vector(384)) vector_cosine_ops) WITH (m = 32, ef_construction = 200) WHERE dims = 384;
CREATE INDEX event_embeddings_hnsw_1024 ON @extschema@.event_embeddings
    USING hnsw ((embedding::vector(1024)) vector_cosine_ops) WITH (m = 32, ef_construction = 200) WHERE dims = 1024;
SELECT @extschema@.enable_tenant_isolation('@extschema@.event_embeddings');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.event_embeddings', '');
GRANT SELECT ON @extschema@.event_embeddings TO custos_reader;

-- The text an identity is embedded from: what it is and does, not who it is.
CREATE FUNCTION custos_internal.identity_profile(i @extschema@.identities) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT concat_ws('; ',
        'status ' || i.status,
        CASE WHEN i.is_service_account THEN 'service account' ELSE 'person' END,
        CASE WHEN i.is_privileged THEN 'privileged' END,
        'roles ' || coalesce(nullif(array_to_string(i.roles, ', '), ''), 'none'),
        'department ' || coalesce(i.department, 'unknown'),
        'source ' || i.source,
        CASE WHEN i.mfa_enabled THEN 'mfa enabled' ELSE 'no mfa' END,
        CASE WHEN NOT i.has_valid_credentials THEN 'credentials revoked' END,
        CASE WHEN i.last_active_at IS NULL THEN 'never active'
             WHEN i.last_active_at > now() - interval '30 days' THEN 'active this month'
             WHEN i.last_active_at > now() - interval '90 days' THEN 'inactive 30 to 90 days'
             WHEN i.last_active_at > now() - interval '365 days' THEN 'inactive 90 days to a year'
             ELSE 'inactive over a year' END)
$fn$;
COMMENT ON FUNCTION custos_internal.identity_profile(@extschema@.identities) IS
'Internal: the profile text an identity is embedded from (status, kind, privileges, roles, department, source, MFA, credentials, activity band); no name, e-mail or user id.';

-- The model a tenant embeds with when none is named.
CREATE FUNCTION custos_internal.embedding_model(model text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT coalesce(model, @extschema@.setting('ai.embedding_model') #>> '{}') $fn$;
COMMENT ON FUNCTION custos_internal.embedding_model(text) IS
'Internal: the model named, else the tenant''s ai.embedding_model.';

-- The schema of a type, for naming pgvector's operators in queries built under a pinned
-- search_path (pgvector may live in any schema).
CREATE FUNCTION custos_internal.schema_of_type(t regtype) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT quote_ident(n.nspname) FROM pg_catalog.pg_type ty JOIN pg_catalog.pg_namespace n ON n.oid = ty.typnamespace WHERE ty.oid = t $fn$;
COMMENT ON FUNCTION custos_internal.schema_of_type(regtype) IS
'Internal: the (quoted) schema of a type, to name pgvector''s operators in queries built under a pinned search_path.';

-- Whether a search of a tenant's rows should go through the HNSW index rather than read them all
-- exactly: past a thousand rows (a few milliseconds of exact distances) the index wins; below,
-- exact search is as fast and returns every neighbour however small the tenant's share of the
-- index. The planner, seeing the tenant's rows at the head of the primary key (or a sequential
-- scan), keeps choosing the exact path long after the index would be many times faster
-- (bench/search.sh), so for large tenants the searches turn those paths off while they run.
CREATE FUNCTION custos_internal.large_enough_for_hnsw(n_rows bigint) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT n_rows >= 1000 $fn$;
COMMENT ON FUNCTION custos_internal.large_enough_for_hnsw(bigint) IS
'Internal: whether a tenant with this many vectors of a model is searched through the HNSW index (else exactly).';

-- Turns the exact paths (sequential scans, sorts) off for the search that follows when `hnsw`,
-- transaction-locally, and returns what to restore once its rows are read.
CREATE FUNCTION custos_internal.prefer_hnsw(hnsw boolean) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    before text := current_setting('enable_seqscan') || ',' || current_setting('enable_sort');
BEGIN
    IF hnsw THEN
        PERFORM set_config('enable_seqscan', 'off', true), set_config('enable_sort', 'off', true);
    END IF;
    RETURN before;
END
$fn$;
COMMENT ON FUNCTION custos_internal.prefer_hnsw(boolean) IS
'Internal: turns sequential scans and sorts off (transaction-locally) so that a large tenant''s search goes through the HNSW index; returns the settings to restore.';

CREATE FUNCTION custos_internal.restore_planner(before text) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT set_config('enable_seqscan', split_part(before, ',', 1), true), set_config('enable_sort', split_part(before, ',', 2), true)
$fn$;
COMMENT ON FUNCTION custos_internal.restore_planner(text) IS
'Internal: restores what custos_internal.prefer_hnsw changed.';

CREATE FUNCTION custos_internal.check_k(k integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000, not %', coalesce(k::text, 'NULL')
            USING ERRCODE = '22023', HINT = 'ask for at most 1000 neighbours; page through time ranges for more';
    END IF;
END
$fn$;
COMMENT ON FUNCTION custos_internal.check_k(integer) IS 'Internal: raises 22023 unless 1 <= k <= 1000.';

CREATE FUNCTION @extschema@.embed_identities(model text DEFAULT NULL)
RETURNS TABLE (embedded bigint, unchanged bigint, removed bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    tenant uuid := @extschema@.require_tenant();
    m text := custos_internal.embedding_model(model);
    batch record;
    n_embedded bigint := 0;
BEGIN
    -- Whatever the provider, 256 texts a batch: one request for providers that take batches.
    FOR batch IN
        WITH profiles AS (
            SELECT i.user_id, p.text, sha256(convert_to(m || E'\n' || p.text, 'UTF8')) AS hash
              FROM @extschema@.identities i
             CROSS JOIN LATERAL (SELECT custos_internal.identity_profile(i) AS text) p
             WHERE i.tenant_id = tenant),
        stale AS (
            SELECT p.*, row_number() OVER (ORDER BY p.user_id) - 1 AS n
              FROM profiles p
              LEFT JOIN @extschema@.identity_embeddings e
                ON e.tenant_id = tenant AND e.user_id = p.user_id AND e.model = m
             WHERE e.content_hash IS DISTINCT FROM p.hash)
        SELECT array_agg(user_id ORDER BY n) AS ids, array_agg(text ORDER BY n) AS texts,
               array_agg(hash ORDER BY n) AS hashes
          FROM stale GROUP BY n / 256
    LOOP
        INSERT INTO @extschema@.identity_embeddings AS e (tenant_id, user_id, model, dims, content_hash, embedding)
        SELECT tenant, batch.ids[v.n], m, array_length(v.e, 1), batch.hashes[v.n], v.e
          FROM custos_internal.embed_texts(batch.texts, m) WITH ORDINALITY AS v (e, n)
        ON CONFLICT (tenant_id, user_id, model) DO UPDATE
           SET dims = excluded.dims, content_hash = excluded.content_hash,
               embedded_at = now(), embedding = excluded.embedding;
        n_embedded := n_embedded + array_length(batch.ids, 1);
    END LOOP;
    DELETE FROM @extschema@.identity_embeddings e
     WHERE e.tenant_id = tenant AND e.model = m
       AND NOT EXISTS (SELECT 1 FROM @extschema@.identities i WHERE i.tenant_id = tenant AND i.user_id = e.user_id);
    GET DIAGNOSTICS removed = ROW_COUNT;
    -- What the workers had queued is done, where the profile as it stands now is the one embedded.
    IF m = custos_internal.embedding_model(NULL) THEN
        DELETE FROM @extschema@.embedding_queue q
         USING @extschema@.identities i, @extschema@.identity_embeddings e
         WHERE q.tenant_id = tenant AND q.kind = 'identity' AND i.tenant_id = tenant AND i.user_id = q.item
           AND e.tenant_id = tenant AND e.user_id = q.item AND e.model = m
           AND e.content_hash = sha256(convert_to(m || E'\n' || custos_internal.identity_profile(i), 'UTF8'));
    END IF;
    embedded := n_embedded;
    SELECT count(*) - n_embedded INTO unchanged
      FROM @extschema@.identity_embeddings e WHERE e.tenant_id = tenant AND e.model = m;
    RETURN NEXT;
END
$fn$;
COMMENT ON FUNCTION @extschema@.embed_identities(text) IS
'Embeds the current tenant''s identities'' profiles (custos_internal.identity_profile) with model, else the tenant''s ai.embedding_model, in batches of 256; only those whose profile changed since they were embedded (content hash), and removes embeddings of identities that are gone. Returns (embedded, unchanged, removed).';

-- The text an event is embedded from: its action, entity, severity and details (top-level keys
-- and values as text, so that redaction sees each value as it is, not JSON-escaped). Sealed
-- values (ledger.encrypt) are not opened: they read <sealed>, so neither a provider nor a vector
-- ever holds their plaintext, and erasing a person leaves nothing of them here.
-- A sealed value (enc2/enc3, see sql/crypto.sql) as <sealed>: texts custos builds for embeddings
-- and models never open one. No SET clause, so that it inlines (it uses built-ins only, and
-- pg_catalog is searched first).
CREATE FUNCTION custos_internal.masked(value text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$ SELECT CASE WHEN value ~ '^enc[23][.]' THEN '<sealed>' ELSE value END $fn$;
COMMENT ON FUNCTION custos_internal.masked(text) IS
'Internal: a value as custos shows it to embedders and models: <sealed> when it is sealed, else as it is.';

CREATE FUNCTION custos_internal.masked_details(details jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce(jsonb_object_agg(d.key, CASE WHEN jsonb_typeof(d.value) = 'string'
                                                 THEN to_jsonb(custos_internal.masked(d.value #>> '{}')) ELSE d.value END),
                    '{}')
      FROM jsonb_each(CASE WHEN jsonb_typeof(details) = 'object' THEN details END) d
$fn$;
COMMENT ON FUNCTION custos_internal.masked_details(jsonb) IS
'Internal: an event''s details with each sealed value as <sealed> (custos seals top-level values).';

CREATE FUNCTION custos_internal.event_text(action text, entity_type text, entity_id text, severity text, details jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT concat_ws('; ', action,
                     entity_type || coalesce(' ' || custos_internal.masked(entity_id), ''),
                     'severity ' || severity,
                     (SELECT string_agg(d.key || ': ' || custos_internal.masked(d.value), '; ' ORDER BY d.key)
                        FROM jsonb_each_text(CASE WHEN jsonb_typeof(details) = 'object' THEN details END) d))
$fn$;
COMMENT ON FUNCTION custos_internal.event_text(text, text, text, text, jsonb) IS
'Internal: the text an event is embedded from (redacted before it is embedded; sealed values read <sealed>); never stored.';

CREATE FUNCTION @extschema@.embed_events(since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL,
                                         model text DEFAULT NULL)
RETURNS TABLE (embedded bigint, unchanged bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    tenant uuid := @extschema@.require_tenant();
    m text := custos_internal.embedding_model(model);
    batch record;
    n_embedded bigint := 0;
    n_seen bigint := 0;
BEGIN
    FOR batch IN
        WITH texts AS (
            SELECT ev.seq, ev.occurred_at, ev.action,
                   custos_internal.event_text(ev.action, ev.entity_type, ev.entity_id, ev.severity, ev.details) AS text
              FROM @extschema@.events ev
             WHERE ev.tenant_id = tenant
               AND (since IS NULL OR ev.occurred_at >= since) AND (until IS NULL OR ev.occurred_at < until)),
        hashed AS (
            SELECT t.*, sha256(convert_to(m || E'\n' || t.text, 'UTF8')) AS hash FROM texts t),
        stale AS (
            SELECT h.*, row_number() OVER (ORDER BY h.seq) - 1 AS n, count(*) OVER () AS seen
              FROM hashed h
              LEFT JOIN @extschema@.event_embeddings e ON e.tenant_id = tenant AND e.seq = h.seq AND e.model = m
             WHERE e.content_hash IS DISTINCT FROM h.hash)
        SELECT array_agg(seq ORDER BY n) AS seqs, array_agg(occurred_at ORDER BY n) AS ats,
               array_agg(action ORDER BY n) AS actions, array_agg(text ORDER BY n) AS texts,
               array_agg(hash ORDER BY n) AS hashes
          FROM stale GROUP BY n / 256
    LOOP
        INSERT INTO @extschema@.event_embeddings AS e (tenant_id, seq, occurred_at, action, model, dims, content_hash, embedding)
        SELECT tenant, batch.seqs[v.n], batch.ats[v.n], batch.actions[v.n], m, array_length(v.e, 1), batch.hashes[v.n], v.e
          FROM custos_internal.embed_texts(batch.texts, m) WITH ORDINALITY AS v (e, n)
        ON CONFLICT (tenant_id, seq, model) DO UPDATE
           SET dims = excluded.dims, content_hash = excluded.content_hash,
               embedded_at = now(), embedding = excluded.embedding;
        n_embedded := n_embedded + array_length(batch.seqs, 1);
    END LOOP;
    SELECT count(*) INTO n_seen FROM @extschema@.events ev
     WHERE ev.tenant_id = tenant AND (since IS NULL OR ev.occurred_at >= since) AND (until IS NULL OR ev.occurred_at < until);
    embedded := n_embedded;
    unchanged := n_seen - n_embedded;
    RETURN NEXT;
END
$fn$;
COMMENT ON FUNCTION @extschema@.embed_events(timestamptz, timestamptz, text) IS
'Embeds the current tenant''s events that occurred in [since, until) (all when NULL) with model, else the tenant''s ai.embedding_model, in batches of 256; only those not embedded yet or whose text changed (content hash). The text (action, entity, severity, details) is redacted before embedding and never stored; sealed values are not opened (they read <sealed>). Returns (embedded, unchanged).';

CREATE FUNCTION @extschema@.similar_users(user_id text, k integer DEFAULT 10, min_similarity double precision DEFAULT 0.0)
RETURNS TABLE (similar_user_id text, similarity double precision, status text, department text,
               is_privileged boolean, last_active_at timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = 200
-- The costs of the paths turned off make any plan look dear enough to compile (40 ms of JIT for a
-- search of a few milliseconds).
SET jit = off
AS $fn$
#variable_conflict use_column
DECLARE
    tenant uuid := @extschema@.require_tenant();
    m text := custos_internal.embedding_model(NULL);
    q @extschema@.identity_embeddings.embedding%TYPE;
    d integer;
    tenant_rows bigint;
    planner text;
BEGIN
    PERFORM custos_internal.check_k(k);
    SELECT e.embedding, e.dims INTO q, d FROM @extschema@.identity_embeddings e
     WHERE e.tenant_id = tenant AND e.user_id = similar_users.user_id AND e.model = m;
    IF q IS NULL THEN
        RAISE EXCEPTION 'no embedding of identity "%" with model %', similar_users.user_id, m
            USING ERRCODE = 'P0002', HINT = 'is the user id right? custos.embed_identities() embeds the tenant''s identities';
    END IF;
    SELECT count(*) INTO tenant_rows
      FROM (SELECT 1 FROM @extschema@.identity_embeddings e WHERE e.tenant_id = tenant LIMIT 1000) x;
    -- Large tenants: the partial index of the dimension (fixed by the cast), filtered by tenant
    -- inside the scan, the candidates then re-ordered exactly. Small ones: exactly. pgvector's
    -- type and operator are named with their schema (the search_path is pinned).
    planner := custos_internal.prefer_hnsw(custos_internal.large_enough_for_hnsw(tenant_rows));
    RETURN QUERY EXECUTE format($q$
        WITH near AS MATERIALIZED (
            SELECT e.user_id, e.embedding::%2$s(%1$s) OPERATOR(%3$s.<=>) $1::%2$s(%1$s) AS distance
              FROM @extschema@.identity_embeddings e
             WHERE e.tenant_id = $2 AND e.model = $3 AND e.dims = %1$s AND e.user_id <> $4
             ORDER BY e.embedding::%2$s(%1$s) OPERATOR(%3$s.<=>) $1::%2$s(%1$s)
             LIMIT least($5 * 4, 1000))
        SELECT n.user_id, 1 - n.distance, i.status, i.department, i.is_privileged, i.last_active_at
          FROM near n JOIN @extschema@.identities i ON i.tenant_id = $2 AND i.user_id = n.user_id
         WHERE 1 - n.distance >= $6
         ORDER BY n.distance, n.user_id
         LIMIT $5$q$, d, pg_typeof(q), custos_internal.schema_of_type(pg_typeof(q)))
    USING q, tenant, m, similar_users.user_id, k, coalesce(min_similarity, 0.0);
    PERFORM custos_internal.restore_planner(planner);
END
$fn$;
COMMENT ON FUNCTION @extschema@.similar_users(text, integer, double precision) IS
'The k identities of the current tenant whose profiles are closest to user_id''s (cosine similarity of their embeddings by the tenant''s ai.embedding_model, at least min_similarity), nearest first. Needs custos.embed_identities. k from 1 to 1000.';

-- The events nearest to q, opened, for the search functions (which log the read).
CREATE FUNCTION custos_internal.nearest_events(tenant uuid, q vector, m text, k integer, since timestamptz,
                                               until timestamptz, with_action text, by_actor text, except_seq bigint)
RETURNS TABLE (seq bigint, id uuid, similarity double precision, occurred_at timestamptz, action text,
               entity_type text, entity_id text, actor text, severity text, details jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = 200
-- The costs of the paths turned off make any plan look dear enough to compile (40 ms of JIT for a
-- search of a few milliseconds).
SET jit = off
AS $fn$
#variable_conflict use_column
DECLARE
    d integer := array_length(q::real[], 1);
    tenant_rows bigint;
    planner text;
BEGIN
    SELECT count(*) INTO tenant_rows
      FROM (SELECT 1 FROM @extschema@.event_embeddings e WHERE e.tenant_id = tenant LIMIT 1000) x;
    planner := custos_internal.prefer_hnsw(custos_internal.large_enough_for_hnsw(tenant_rows) AND by_actor IS NULL);
    -- An actor may be sealed: it is compared once opened, after the nearest are found, so that
    -- filter reads the tenant's events exactly instead of through the index.
    RETURN QUERY EXECUTE format($q$
        WITH near AS MATERIALIZED (
            SELECT e.seq, e.embedding::%2$s(%1$s) OPERATOR(%3$s.<=>) $1::%2$s(%1$s) AS distance
              FROM @extschema@.event_embeddings e
             WHERE e.tenant_id = $2 AND e.model = $3 AND e.dims = %1$s
               AND ($5::timestamptz IS NULL OR e.occurred_at >= $5) AND ($6::timestamptz IS NULL OR e.occurred_at < $6)
               AND ($7::text IS NULL OR e.action = $7) AND ($9::bigint IS NULL OR e.seq <> $9)
             ORDER BY e.embedding::%2$s(%1$s) OPERATOR(%3$s.<=>) $1::%2$s(%1$s)
             LIMIT CASE WHEN $8::text IS NULL THEN least($4 * 4, 1000) END)
        SELECT o.seq, o.id, 1 - n.distance, o.occurred_at, o.action, o.entity_type, o.entity_id, o.actor,
               o.severity, o.details
          FROM near n JOIN custos_internal.opened_events o ON o.tenant_id = $2 AND o.seq = n.seq
         WHERE $8::text IS NULL OR o.actor = $8
         ORDER BY n.distance, o.seq
         LIMIT $4$q$, d, pg_typeof(q), custos_internal.schema_of_type(pg_typeof(q)))
    USING q, tenant, m, k, since, until, with_action, by_actor, except_seq;
    PERFORM custos_internal.restore_planner(planner);
END
$fn$;
COMMENT ON FUNCTION custos_internal.nearest_events(uuid, vector, text, integer, timestamptz, timestamptz, text, text, bigint) IS
'Internal: the k events of a tenant nearest to a vector, filtered, opened; behind custos.search_events and custos.similar_events.';

CREATE FUNCTION @extschema@.search_events(query text, k integer DEFAULT 20, since timestamptz DEFAULT NULL,
                                          until timestamptz DEFAULT NULL, with_action text DEFAULT NULL, by_actor text DEFAULT NULL)
RETURNS TABLE (seq bigint, id uuid, similarity double precision, occurred_at timestamptz, action text,
               entity_type text, entity_id text, actor text, severity text, details jsonb)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    tenant uuid := @extschema@.require_tenant();
    m text := custos_internal.embedding_model(NULL);
    n bigint;
BEGIN
    PERFORM custos_internal.check_k(k);
    IF query IS NULL OR btrim(query) = '' THEN
        RAISE EXCEPTION 'the query is empty' USING ERRCODE = '22023', HINT = 'describe the events to find, for example ''exports of customer data at night''';
    END IF;
    RETURN QUERY SELECT * FROM custos_internal.nearest_events(tenant, @extschema@.embed(query, m), m, k, since, until,
                                                              with_action, by_actor, NULL);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM custos_internal.log_access(tenant, 'custos.search_events',
        jsonb_strip_nulls(jsonb_build_object('query', @extschema@.redact(query), 'k', k, 'since', since, 'until', until,
                                             'with_action', with_action, 'by_actor', by_actor)), n);
END
$fn$;
COMMENT ON FUNCTION @extschema@.search_events(text, integer, timestamptz, timestamptz, text, text) IS
'The k events of the current tenant nearest in meaning to query (embedded, redacted first, by the tenant''s ai.embedding_model; needs custos.embed_events), optionally in [since, until), of one action (with_action) or by one actor (by_actor, compared opened); sealed fields opened. Recorded in custos.access_log (the query redacted). k from 1 to 1000.';

CREATE FUNCTION @extschema@.similar_events(event_id uuid, k integer DEFAULT 20)
RETURNS TABLE (seq bigint, id uuid, similarity double precision, occurred_at timestamptz, action text,
               entity_type text, entity_id text, actor text, severity text, details jsonb)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    tenant uuid := @extschema@.require_tenant();
    m text := custos_internal.embedding_model(NULL);
    s bigint := @extschema@.event_seq(event_id);
    q @extschema@.event_embeddings.embedding%TYPE;
    n bigint;
BEGIN
    PERFORM custos_internal.check_k(k);
    SELECT e.embedding INTO q FROM @extschema@.event_embeddings e
     WHERE e.tenant_id = tenant AND e.seq = s AND e.model = m;
    IF q IS NULL THEN
        PERFORM custos_internal.log_access(tenant, 'custos.similar_events', jsonb_build_object('id', event_id, 'k', k), 0);
        RAISE EXCEPTION 'no embedding of event % in the current tenant with model %', event_id, m
            USING ERRCODE = 'P0002', HINT = 'is the id right? custos.embed_events() embeds the tenant''s events';
    END IF;
    RETURN QUERY SELECT * FROM custos_internal.nearest_events(tenant, q, m, k, NULL, NULL, NULL, NULL, s);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM custos_internal.log_access(tenant, 'custos.similar_events', jsonb_build_object('id', event_id, 'k', k), n);
END
$fn$;
COMMENT ON FUNCTION @extschema@.similar_events(uuid, integer) IS
'The k events of the current tenant nearest to the event event_id (needs custos.embed_events), nearest first, sealed fields opened. Recorded in custos.access_log. k from 1 to 1000.';

-- What leaves the ledger or the identities leaves the embeddings too.
CREATE FUNCTION custos_internal.event_embeddings_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.events', 'custos.event_embeddings_removed');
    DELETE FROM @extschema@.event_embeddings ee USING custos_removed r
     WHERE ee.tenant_id = r.tenant_id AND ee.seq = r.seq;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION custos_internal.event_embeddings_removed() IS
'Trigger of custos.events: the embeddings of the events retention removes go with them.';
CREATE TRIGGER zz_event_embeddings_removed AFTER DELETE ON @extschema@.events
    REFERENCING OLD TABLE AS custos_removed FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.event_embeddings_removed();

CREATE FUNCTION custos_internal.identity_embeddings_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.identities', 'custos.identity_embeddings_removed');
    DELETE FROM @extschema@.identity_embeddings ie USING custos_removed r
     WHERE ie.tenant_id = r.tenant_id AND ie.user_id = r.user_id;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION custos_internal.identity_embeddings_removed() IS
'Trigger of custos.identities: a removed identity (custos.forget_subject among others) takes its embeddings along.';
CREATE TRIGGER zz_identity_embeddings_removed AFTER DELETE ON @extschema@.identities
    REFERENCING OLD TABLE AS custos_removed FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.identity_embeddings_removed();
