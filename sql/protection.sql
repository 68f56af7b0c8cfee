-- Ledger data protection (src/protection/, src/ledger/access.rs): field encryption policy, sealed
-- values opened for readers, logged reads, streaming exports, GDPR export and erasure, retention
-- with chained anchors.

-- Functions written in Rust that only custos itself calls: out of the public schema.
ALTER FUNCTION @extschema@.reveal(uuid, uuid, text, text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.reveal_actor(uuid, text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.is_erased(uuid, text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.log_access(uuid, text, jsonb, bigint) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.require_tenant_access(uuid) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.require_master_key() SET SCHEMA custos_internal;

INSERT INTO @extschema@.setting_definitions (key, value_type, default_value, min_value, max_value, description) VALUES
    ('ledger.encrypt', 'boolean', 'false', NULL, NULL,
     'Seal ip_address, user_agent and the ledger.encrypted_detail_keys of new events with the actor''s key (AES-256-GCM). Needs custos.master_key.'),
    ('ledger.encrypted_detail_keys', 'text', '"email,phone,name,address"', NULL, NULL,
     'Comma-separated details keys sealed when ledger.encrypt is on, at any depth: a top-level value that holds one deeper is sealed whole.'),
    ('ledger.subject_entity_types', 'text', '"user,identity,person,account,customer,employee,member"', NULL, NULL,
     'Comma-separated entity types whose entity_id names a person: with ledger.encrypt on, that entity_id is sealed with the person''s key, so that forgetting them erases it.'),
    ('ledger.hot_retention_days', 'integer', '365', 1, 36500,
     'Events younger than this are what custos.timeline and custos.export_events return unless asked for an older time range.'),
    ('ledger.archive_years', 'integer', '7', 1, 100,
     'custos.apply_retention removes events recorded longer ago than this.'),
    ('ledger.legal_hold', 'boolean', 'false', NULL, NULL,
     'While on, custos.apply_retention removes nothing.');

-- Encryption cannot be switched on for a tenant without a master key to wrap its keys.
CREATE FUNCTION custos_internal.ledger_settings_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.tenant_settings', 'custos.ledger_settings_check');
    IF NEW.key = 'ledger.encrypt' AND NEW.value = 'true'::jsonb THEN
        PERFORM custos_internal.require_master_key();
    END IF;
    RETURN NEW;
END
$fn$;
COMMENT ON FUNCTION custos_internal.ledger_settings_check() IS
'BEFORE trigger of custos.tenant_settings: refuses ledger.encrypt = true while no master key is configured.';
CREATE TRIGGER ledger_settings_check BEFORE INSERT OR UPDATE ON @extschema@.tenant_settings
    FOR EACH ROW EXECUTE FUNCTION custos_internal.ledger_settings_check();
COMMENT ON FUNCTION custos_internal.require_master_key() IS
'Raises 55000 unless a usable master key is configured (custos.master_key_file, or custos.master_key in the session).';

COMMENT ON FUNCTION custos_internal.require_tenant_access(uuid) IS
'Raises 42501 unless the caller works in the given tenant (its current tenant); superusers work in any.';
COMMENT ON FUNCTION custos_internal.reveal(uuid, uuid, text, text) IS
'Internal: a stored event field as the tenant''s reader sees it (opened if sealed; NULL once its subject was forgotten). Used by custos'' logged read functions.';
CREATE FUNCTION custos_internal.reveal_details(tenant uuid, event_id uuid, details jsonb) RETURNS jsonb
LANGUAGE c STABLE STRICT PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'custos_reveal_details';
COMMENT ON FUNCTION custos_internal.reveal_details(uuid, uuid, jsonb) IS
'Internal: details with sealed values opened (null where the subject was forgotten).';
COMMENT ON FUNCTION custos_internal.reveal_actor(uuid, text) IS
'Internal: the actor of an event as the tenant''s reader sees it (the subject''s name for a pseudonym, NULL once forgotten).';
COMMENT ON FUNCTION custos_internal.is_erased(uuid, text) IS 'Internal: whether a stored value is sealed under a destroyed key.';

------------------------------------------------------------------------------------------------
-- Access log
------------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.access_log (
    tenant_id     uuid NOT NULL,
    seq           bigint NOT NULL,
    id            uuid NOT NULL,
    accessed_at   timestamptz NOT NULL,
    reader        text NOT NULL,
    actor         text NOT NULL,
    function      text NOT NULL,
    filters       jsonb NOT NULL,
    rows_returned bigint NOT NULL,
    prev_hash     bytea NOT NULL,
    hash          bytea NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
COMMENT ON TABLE @extschema@.access_log IS
'Who read the audit ledger through custos'' functions: when, which function, with which filters, how many rows. Append-only, its own per-tenant SHA-256 chain (custos.verify_access_log).';
SELECT custos_internal.make_append_only('@extschema@.access_log');
SELECT @extschema@.enable_tenant_isolation('@extschema@.access_log');
-- Its rows are user data: pg_dump carries them (extension tables are otherwise left out).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.access_log', '');
REVOKE ALL ON @extschema@.access_log FROM PUBLIC;
GRANT SELECT ON @extschema@.access_log TO custos_auditor;

COMMENT ON FUNCTION custos_internal.log_access(uuid, text, jsonb, bigint) IS
'Internal: appends one read to the tenant''s access log (chained); called by custos'' read functions.';
COMMENT ON FUNCTION @extschema@.verify_access_log(uuid) IS
'Recomputes the tenant''s access-log chain: ok, rows checked, the first broken seq and why.';

------------------------------------------------------------------------------------------------
-- Logged reads
------------------------------------------------------------------------------------------------
-- Events with their sealed values opened (for the current tenant only: reveal checks). Read only
-- by custos' logged functions, which filter on tenant_id; nobody else may select from it.
CREATE VIEW custos_internal.opened_events AS
SELECT e.tenant_id, e.seq, e.id, e.occurred_at, e.recorded_at,
       custos_internal.reveal_actor(e.tenant_id, e.actor) AS actor, e.db_role, e.action, e.entity_type,
       custos_internal.reveal(e.tenant_id, e.id, 'entity_id', e.entity_id) AS entity_id, e.severity,
       custos_internal.reveal_details(e.tenant_id, e.id, e.details) AS details,
       custos_internal.reveal(e.tenant_id, e.id, 'ip_address', e.ip_address) AS ip_address,
       custos_internal.reveal(e.tenant_id, e.id, 'user_agent', e.user_agent) AS user_agent,
       custos_internal.is_erased(e.tenant_id, e.ip_address) OR custos_internal.is_erased(e.tenant_id, e.user_agent)
       OR custos_internal.is_erased(e.tenant_id, e.entity_id)
       OR (starts_with(e.actor, 'subject:') AND custos_internal.reveal_actor(e.tenant_id, e.actor) IS NULL) AS erased
  FROM @extschema@.events e;
COMMENT ON VIEW custos_internal.opened_events IS 'Internal: events with sealed values opened, behind custos.timeline, custos.event and the exports.';
REVOKE ALL ON custos_internal.opened_events FROM PUBLIC;

CREATE FUNCTION custos_internal.severity_rank(severity text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT array_position(ARRAY['info', 'low', 'medium', 'high', 'critical'], severity) $$;
COMMENT ON FUNCTION custos_internal.severity_rank(text) IS 'Order of a severity: info 1, low 2, medium 3, high 4, critical 5; NULL if unknown.';

-- The events a reader of the current tenant may see, opened, with the filters every read function
-- shares. since defaults to the hot-retention window; older events need an explicit since.
CREATE FUNCTION custos_internal.readable_events(tenant uuid, since timestamptz, until timestamptz, of_type text,
                                            of_entity text, by_actor text, min_severity text, with_action text,
                                            before_seq bigint, page_size integer, newest_first boolean)
RETURNS TABLE (seq bigint, id uuid, occurred_at timestamptz, recorded_at timestamptz, actor text, db_role text,
               action text, entity_type text, entity_id text, severity text, details jsonb, ip_address text,
               user_agent text, erased boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    hot_days integer := @extschema@.tenant_setting(tenant, 'ledger.hot_retention_days');
    floor_rank integer := coalesce(custos_internal.severity_rank(min_severity), 1);
BEGIN
    IF min_severity IS NOT NULL AND custos_internal.severity_rank(min_severity) IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('unknown severity "%s"', min_severity),
            HINT = 'one of info, low, medium, high, critical';
    END IF;
    IF page_size IS NOT NULL AND page_size NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('page_size must be between 1 and 10000, not %s', page_size);
    END IF;
    IF since IS NOT NULL AND until IS NOT NULL AND until < since THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'until is before since';
    END IF;
    since := coalesce(since, now() - make_interval(days => hot_days));
    -- Built per call so that the plan walks the primary key in the direction asked for.
    RETURN QUERY EXECUTE format($q$
        SELECT o.seq, o.id, o.occurred_at, o.recorded_at, o.actor, o.db_role, o.action, o.entity_type,
               o.entity_id, o.severity, o.details, o.ip_address, o.user_agent, o.erased
          FROM custos_internal.opened_events o
         WHERE o.tenant_id = $1
           AND o.occurred_at >= $2 AND ($3::timestamptz IS NULL OR o.occurred_at < $3)
           AND ($4::text IS NULL OR o.entity_type = $4) AND ($5::text IS NULL OR o.entity_id = $5)
           AND ($6::text IS NULL OR o.actor = $6) AND ($7::text IS NULL OR o.action = $7)
           AND ($8 = 1 OR custos_internal.severity_rank(o.severity) >= $8)
           AND ($9::bigint IS NULL OR o.seq < $9)
         ORDER BY o.seq %s
         LIMIT $10$q$, CASE WHEN newest_first THEN 'DESC' ELSE 'ASC' END)
    USING tenant, since, until, of_type, of_entity, by_actor, with_action, floor_rank, before_seq, page_size;
END
$fn$;
COMMENT ON FUNCTION custos_internal.readable_events(uuid, timestamptz, timestamptz, text, text, text, text, text, bigint, integer, boolean) IS
'Internal: the filtered, opened events behind custos.timeline and custos.export_events.';

CREATE FUNCTION @extschema@.timeline(since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL,
                                     of_type text DEFAULT NULL, of_entity text DEFAULT NULL, by_actor text DEFAULT NULL,
                                     min_severity text DEFAULT NULL, with_action text DEFAULT NULL,
                                     before_seq bigint DEFAULT NULL, page_size integer DEFAULT 100)
RETURNS TABLE (seq bigint, id uuid, occurred_at timestamptz, recorded_at timestamptz, actor text, db_role text,
               action text, entity_type text, entity_id text, severity text, details jsonb, ip_address text,
               user_agent text, erased boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
    n bigint;
BEGIN
    RETURN QUERY SELECT * FROM custos_internal.readable_events(tenant, since, until, of_type, of_entity, by_actor,
                                                          min_severity, with_action, before_seq, coalesce(page_size, 100), true);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM custos_internal.log_access(tenant, 'custos.timeline',
        jsonb_strip_nulls(jsonb_build_object('since', since, 'until', until, 'of_type', of_type, 'of_entity', of_entity,
            'by_actor', by_actor, 'min_severity', min_severity, 'with_action', with_action, 'before_seq', before_seq,
            'page_size', page_size)), n);
END
$fn$;
COMMENT ON FUNCTION @extschema@.timeline(timestamptz, timestamptz, text, text, text, text, text, bigint, integer) IS
'The current tenant''s events, newest first, with sealed fields opened: filter by time (since defaults to the hot-retention window), entity type and id, actor, minimum severity and action; page with before_seq (the last seq of the previous page). Every call is recorded in custos.access_log.';

CREATE FUNCTION @extschema@.event(event_id uuid)
RETURNS TABLE (seq bigint, id uuid, occurred_at timestamptz, recorded_at timestamptz, actor text, db_role text,
               action text, entity_type text, entity_id text, severity text, details jsonb, ip_address text,
               user_agent text, erased boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
    n bigint;
BEGIN
    -- custos' ids carry their seq: one primary-key lookup. Ids that carry none (from the 2^48th
    -- event of a tenant on) are searched for over the tenant's whole key range.
    RETURN QUERY
    SELECT o.seq, o.id, o.occurred_at, o.recorded_at, o.actor, o.db_role, o.action, o.entity_type,
           o.entity_id, o.severity, o.details, o.ip_address, o.user_agent, o.erased
      FROM custos_internal.opened_events o
     WHERE o.tenant_id = tenant AND o.id = event_id
       AND o.seq BETWEEN coalesce(@extschema@.event_seq(event_id), 1)
                     AND coalesce(@extschema@.event_seq(event_id), 9223372036854775807);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM custos_internal.log_access(tenant, 'custos.event', jsonb_build_object('id', event_id), n);
    IF n = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('no event %s in the current tenant', event_id);
    END IF;
END
$fn$;
COMMENT ON FUNCTION @extschema@.event_seq(uuid) IS
'The seq an event id carries (custos makes ids as RFC 9562 version-8 UUIDs whose first 48 bits are the seq); NULL for other UUIDs.';
COMMENT ON FUNCTION @extschema@.event(uuid) IS
'One event of the current tenant by id, sealed fields opened; recorded in custos.access_log (also when it is not found).';

CREATE FUNCTION @extschema@.export_events(format text DEFAULT 'jsonl', since timestamptz DEFAULT NULL,
                                          until timestamptz DEFAULT NULL, of_type text DEFAULT NULL,
                                          by_actor text DEFAULT NULL, min_severity text DEFAULT NULL)
RETURNS SETOF text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
    n bigint;
BEGIN
    IF NOT pg_has_role(custos_internal.caller_role(), 'custos_exporter', 'MEMBER') THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'exporting the ledger needs the custos_exporter role';
    END IF;
    IF format NOT IN ('csv', 'jsonl') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('unknown export format "%s"', format),
            HINT = 'csv or jsonl';
    END IF;
    -- Rows go through a tuplestore that spills to disk past work_mem: memory stays flat.
    IF format = 'csv' THEN
        RETURN NEXT 'seq,id,occurred_at,recorded_at,actor,db_role,action,entity_type,entity_id,severity,details,ip_address,user_agent';
        RETURN QUERY
        SELECT concat_ws(',', r.seq, r.id, custos_internal.csv_field(r.occurred_at::text), custos_internal.csv_field(r.recorded_at::text),
                         custos_internal.csv_field(r.actor), custos_internal.csv_field(r.db_role), custos_internal.csv_field(r.action),
                         custos_internal.csv_field(r.entity_type), custos_internal.csv_field(r.entity_id), r.severity,
                         custos_internal.csv_field(r.details::text), custos_internal.csv_field(r.ip_address), custos_internal.csv_field(r.user_agent))
          FROM custos_internal.readable_events(tenant, since, until, of_type, NULL, by_actor, min_severity, NULL, NULL, NULL, false) r;
    ELSE
        RETURN QUERY
        SELECT jsonb_build_object('seq', r.seq, 'id', r.id, 'occurred_at', r.occurred_at, 'recorded_at', r.recorded_at,
                                  'actor', r.actor, 'db_role', r.db_role, 'action', r.action, 'entity_type', r.entity_type,
                                  'entity_id', r.entity_id, 'severity', r.severity, 'details', r.details,
                                  'ip_address', r.ip_address, 'user_agent', r.user_agent, 'erased', r.erased)::text
          FROM custos_internal.readable_events(tenant, since, until, of_type, NULL, by_actor, min_severity, NULL, NULL, NULL, false) r;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM custos_internal.log_access(tenant, 'custos.export_events',
        jsonb_strip_nulls(jsonb_build_object('format', format, 'since', since, 'until', until, 'of_type', of_type,
                                             'by_actor', by_actor, 'min_severity', min_severity)), n);
END
$fn$;
COMMENT ON FUNCTION @extschema@.export_events(text, timestamptz, timestamptz, text, text, text) IS
'The current tenant''s events in seq order as CSV lines (with a header) or JSON Lines, sealed fields opened. For custos_exporter; recorded in custos.access_log. Stream it with COPY (SELECT * FROM custos.export_events(''csv'')) TO STDOUT.';

CREATE FUNCTION custos_internal.csv_field(value text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN value IS NULL THEN '' ELSE '"' || replace(value, '"', '""') || '"' END $$;
COMMENT ON FUNCTION custos_internal.csv_field(text) IS 'A value as one RFC 4180 CSV field (quoted; NULL as empty).';


------------------------------------------------------------------------------------------------
-- GDPR
------------------------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.export_subject(tenant uuid, subject text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    doc jsonb;
    n bigint;
BEGIN
    PERFORM custos_internal.require_tenant_access(tenant);
    IF subject IS NULL OR subject = '' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'subject must not be empty';
    END IF;
    SELECT jsonb_build_object(
        'tenant', tenant, 'subject', subject, 'exported_at', now(),
        'events', coalesce((SELECT jsonb_agg(to_jsonb(r) ORDER BY r.seq)
                              FROM custos_internal.readable_events(tenant, '-infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, false) r
                             WHERE r.actor = subject OR r.entity_id = subject), '[]'),
        'identities', coalesce((SELECT jsonb_agg(to_jsonb(i) - 'risk_key') FROM @extschema@.identities i
                                 WHERE i.tenant_id = tenant AND i.user_id = subject), '[]'),
        'keys', coalesce((SELECT jsonb_agg(jsonb_build_object('id', k.id, 'created_at', k.created_at, 'retired_at', k.retired_at))
                            FROM @extschema@.subject_keys k WHERE k.tenant_id = tenant AND k.subject = export_subject.subject), '[]'),
        'insights', custos_internal.subject_insights(tenant, subject))
      INTO doc;
    n := jsonb_array_length(doc->'events') + jsonb_array_length(doc->'identities');
    IF n = 0 AND jsonb_array_length(doc->'keys') = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('tenant %s holds nothing about subject "%s"', tenant, subject),
            HINT = 'subjects are matched on events.actor, events.entity_id and identities.user_id';
    END IF;
    PERFORM custos_internal.log_access(tenant, 'custos.export_subject', jsonb_build_object('subject', subject), n);
    RETURN doc;
END
$fn$;
COMMENT ON FUNCTION @extschema@.export_subject(uuid, text) IS
'Everything the tenant holds about a person (events they acted in or that name them, with sealed fields opened; their identity record; their keys; the analyses of their account and the embeddings of their profile, without the vectors) as one JSON document, for a GDPR access request. For custos_exporter; recorded in custos.access_log.';

CREATE FUNCTION @extschema@.forget_subject(tenant uuid, subject text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    destroyed integer;
    first_key uuid;
    identities_removed integer;
    plaintext_events bigint;
    plaintext_reads bigint;
BEGIN
    PERFORM custos_internal.require_tenant_access(tenant);
    SELECT count(*), min(k.id::text)::uuid INTO destroyed, first_key
      FROM @extschema@.subject_keys k WHERE k.tenant_id = tenant AND k.subject = forget_subject.subject;
    DELETE FROM @extschema@.identities i WHERE i.tenant_id = tenant AND i.user_id = forget_subject.subject;
    GET DIAGNOSTICS identities_removed = ROW_COUNT;
    -- Reviewers' free-text notes on anomalies may name the person too.
    UPDATE @extschema@.anomalies a SET feedback_note = NULL
     WHERE a.tenant_id = tenant AND strpos(lower(a.feedback_note), lower(forget_subject.subject)) > 0;
    IF destroyed = 0 AND identities_removed = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('tenant %s has no keys or records of subject "%s"', tenant, subject),
            HINT = 'nothing was sealed for this subject: is ledger.encrypt on, and is the subject spelled as in events.actor?';
    END IF;
    -- Crypto-shredding: without the wrapped key nothing it sealed can be opened again. The
    -- ledger rows stay as they were, so every chain still verifies.
    UPDATE @extschema@.subject_keys k SET wrapped = NULL, subject = NULL, destroyed_at = now()
     WHERE k.tenant_id = tenant AND k.subject = forget_subject.subject;
    PERFORM custos_internal.invalidate_caches();
    -- What the append-only ledger still holds in plaintext (written before ledger.encrypt was on,
    -- or on a tenant without it) cannot be erased without breaking the chain: say how much.
    SELECT count(*) INTO plaintext_events FROM @extschema@.events e
     WHERE e.tenant_id = tenant AND (e.actor = forget_subject.subject OR e.entity_id = forget_subject.subject);
    SELECT count(*) INTO plaintext_reads FROM @extschema@.access_log a
     WHERE a.tenant_id = tenant
       AND forget_subject.subject IN (a.actor, a.filters->>'subject', a.filters->>'by_actor', a.filters->>'of_entity');
    IF plaintext_events + plaintext_reads > 0 THEN
        RAISE NOTICE 'custos: % ledger events and % access-log rows still name "%" in plaintext', plaintext_events, plaintext_reads, subject
            USING HINT = 'the ledger is append-only and its chain covers them; turn ledger.encrypt on so that what is recorded from now on is sealed and erasable';
    END IF;
    INSERT INTO @extschema@.events (tenant_id, action, entity_type, entity_id, severity, details)
    VALUES (tenant, 'custos.forget_subject', 'subject', coalesce(first_key::text, 'identity-only'), 'medium',
            jsonb_build_object('keys_destroyed', destroyed, 'identities_removed', identities_removed));
    RETURN jsonb_build_object('keys_destroyed', destroyed, 'identities_removed', identities_removed,
                              'plaintext_events', plaintext_events, 'plaintext_access_log_rows', plaintext_reads);
END
$fn$;
COMMENT ON FUNCTION @extschema@.forget_subject(uuid, text) IS
'Erases a person (GDPR): destroys their keys so every field sealed for them becomes unreadable (crypto-shredding: actor, ip_address, user_agent, sealed details, a person''s entity_id, their pseudonyms in the access log), removes their identity record (with its review note), and records the erasure as a ledger event (naming the key, not the person). The chain still verifies. Returns how many were destroyed and removed, and how many ledger events and access-log rows still name the person in plaintext (recorded while ledger.encrypt was off: the append-only ledger keeps them).';

------------------------------------------------------------------------------------------------
-- Retention
------------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.chain_anchors (
    tenant_id   uuid NOT NULL,
    through_seq bigint NOT NULL,
    anchor_hash bytea NOT NULL,
    event_seq   bigint NOT NULL,
    removed     bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, through_seq)
);
COMMENT ON TABLE @extschema@.chain_anchors IS
'Where retention cut each tenant''s chain: events through through_seq were removed; anchor_hash is the hash of the last one, which the first remaining event links to. The retention event at event_seq records the same, inside the chain. Append-only.';
SELECT custos_internal.make_append_only('@extschema@.chain_anchors');
SELECT @extschema@.enable_tenant_isolation('@extschema@.chain_anchors');
-- Its rows are user data: pg_dump carries them (extension tables are otherwise left out).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.chain_anchors', '');
REVOKE ALL ON @extschema@.chain_anchors FROM PUBLIC;
GRANT SELECT ON @extschema@.chain_anchors TO custos_auditor;

-- Holds a retention DELETE to the tenant and seq custos.apply_retention named.
CREATE FUNCTION custos_internal.retention_delete_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    allowed text := current_setting('custos.retention_through', true);
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.events', 'custos.retention_delete_check');
    IF coalesce(allowed, '') !~ '^[0-9a-f-]{36}:[0-9]+$'
       OR EXISTS (SELECT 1 FROM custos_removed r
                   WHERE r.tenant_id::text <> split_part(allowed, ':', 1) OR r.seq > split_part(allowed, ':', 2)::bigint) THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'custos.events is append-only: DELETE is not allowed',
            HINT = 'old events leave only through custos.apply_retention';
    END IF;
    RETURN NULL;
END
$fn$;
CREATE TRIGGER retention_delete_check AFTER DELETE ON @extschema@.events
    REFERENCING OLD TABLE AS custos_removed FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.retention_delete_check();
ALTER TABLE @extschema@.events ENABLE ALWAYS TRIGGER retention_delete_check;

CREATE FUNCTION @extschema@.apply_retention(tenant uuid)
RETURNS TABLE (removed bigint, through_seq bigint, anchor_hash text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    years integer;
    hold boolean;
    cutoff timestamptz;
    cut bigint;
    previous bigint;
    anchor bytea;
    retention_seq bigint;
    n bigint;
BEGIN
    PERFORM custos_internal.require_tenant_access(tenant);
    years := @extschema@.tenant_setting(tenant, 'ledger.archive_years');
    hold := @extschema@.tenant_setting(tenant, 'ledger.legal_hold');
    IF hold THEN
        RAISE EXCEPTION USING ERRCODE = '55000', MESSAGE = format('tenant %s is under legal hold: retention removes nothing', tenant),
            HINT = 'lift it with custos.set_setting(''ledger.legal_hold'', ''false'') once the hold ends';
    END IF;
    cutoff := now() - make_interval(years => years);
    previous := coalesce((SELECT max(a.through_seq) FROM @extschema@.chain_anchors a WHERE a.tenant_id = tenant), 0);
    -- Retention removes a prefix of the chain: everything before the first event recorded since the cutoff.
    cut := coalesce((SELECT min(e.seq) - 1 FROM @extschema@.events e WHERE e.tenant_id = tenant AND e.recorded_at >= cutoff),
                    (SELECT max(e.seq) FROM @extschema@.events e WHERE e.tenant_id = tenant), 0);
    -- Rows of the newest writers may still be becoming visible (see custos.settled_seq): cut at a
    -- row this snapshot sees. Any row above such a hole is new, so this stays below them all.
    cut := coalesce((SELECT max(e.seq) FROM @extschema@.events e WHERE e.tenant_id = tenant AND e.seq <= cut), 0);
    IF cut <= previous THEN
        RETURN QUERY SELECT 0::bigint, previous, NULL::text;
        RETURN;
    END IF;
    SELECT e.hash INTO anchor FROM @extschema@.events e WHERE e.tenant_id = tenant AND e.seq = cut;
    -- The retention event goes first, so the chain never empties and its head never moves back.
    INSERT INTO @extschema@.events (tenant_id, action, entity_type, entity_id, severity, details)
    VALUES (tenant, 'custos.retention', 'ledger', 'events', 'medium',
            jsonb_build_object('through_seq', cut, 'anchor_hash', encode(anchor, 'hex'), 'cutoff', cutoff,
                               'archive_years', years, 'removed', cut - previous))
    RETURNING seq INTO retention_seq;
    PERFORM set_config('custos.retention_through', tenant::text || ':' || cut, true);
    DELETE FROM @extschema@.events e WHERE e.tenant_id = tenant AND e.seq <= cut;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('custos.retention_through', '', true);
    INSERT INTO @extschema@.chain_anchors (tenant_id, through_seq, anchor_hash, event_seq, removed)
    VALUES (tenant, cut, anchor, retention_seq, n);
    RETURN QUERY SELECT n, cut, encode(anchor, 'hex');
END
$fn$;
COMMENT ON FUNCTION @extschema@.apply_retention(uuid) IS
'Removes the tenant''s events recorded before its archive horizon (ledger.archive_years, default 7), refused under ledger.legal_hold. Leaves a chained anchor (custos.chain_anchors and a custos.retention event) so the remaining chain still verifies. The only way rows leave the ledger.';
