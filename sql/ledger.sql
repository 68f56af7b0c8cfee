-- The audit ledger: append-only, per-tenant hash-chained events.

-- Functions written in Rust that only custos itself calls: out of the public schema.
ALTER FUNCTION @extschema@.events_chain() SET SCHEMA custos_internal;

------------------------------------------------------------------------------------------------
-- Events
------------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.events (
    tenant_id   uuid NOT NULL DEFAULT @extschema@.current_tenant(),
    seq         bigint NOT NULL,
    id          uuid NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL,
    actor       text NOT NULL,
    db_role     text NOT NULL,
    txid        bigint NOT NULL,
    -- Checked by the chain trigger (cheaper than CHECK constraints, and it cannot be disabled):
    -- action and entity_type 1-200 characters, entity_id up to 1000, user_agent up to 2000,
    -- severity one of info/low/medium/high/critical, details a JSON object.
    action      text NOT NULL,
    entity_type text NOT NULL,
    entity_id   text,
    severity    text NOT NULL DEFAULT 'info',
    details     jsonb NOT NULL DEFAULT '{}',
    ip_address  text,
    user_agent  text,
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
COMMENT ON TABLE @extschema@.events IS
'The audit ledger. Append-only; each tenant''s rows form a SHA-256 hash chain (seq 1, 2, ...) computed at insert time. Clients insert tenant_id, occurred_at, actor, action, entity_type, entity_id, severity, details, ip_address, user_agent; custos fills the rest. See docs/ledger-format.md.';
COMMENT ON COLUMN @extschema@.events.seq IS 'Position in the tenant''s chain: 1, 2, 3 ... with no gap.';
COMMENT ON COLUMN @extschema@.events.actor IS 'Application user: as given, else custos.set_actor(), else the JWT sub claim, else the database role.';
COMMENT ON COLUMN @extschema@.events.db_role IS 'Database role that inserted the row (after SET ROLE; the caller of a SECURITY DEFINER function).';
COMMENT ON COLUMN @extschema@.events.prev_hash IS 'hash of the previous event of the tenant (seq - 1); for seq 1 the tenant''s genesis hash.';
COMMENT ON COLUMN @extschema@.events.hash IS 'SHA-256 over the canonical encoding of this row and prev_hash (format v1).';

-- Large details (captured rows, batches) are compressed when stored: lz4 is many times faster than
-- PostgreSQL's default pglz. Servers built without lz4 keep the default.
DO $$
BEGIN
    ALTER TABLE @extschema@.events ALTER COLUMN details SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    NULL;
END
$$;

-- Named so it fires after any other BEFORE trigger: what it hashes is what is stored.
CREATE TRIGGER zz_chain BEFORE INSERT ON @extschema@.events
    FOR EACH ROW EXECUTE FUNCTION custos_internal.events_chain();

CREATE FUNCTION custos_internal.refuse_ledger_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF TG_TABLE_SCHEMA <> '@extschema@' THEN
        RAISE EXCEPTION USING ERRCODE = '39P01',
            MESSAGE = 'custos.refuse_ledger_change is a trigger of custos'' own tables only';
    END IF;
    -- The one way out: custos.apply_retention, which sets this superuser-only setting for its
    -- own DELETE (and the AFTER DELETE check holds it to the tenant and seq it named).
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'events'
       AND coalesce(current_setting('custos.retention_through', true), '') <> '' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('%I.%I is append-only: %s is not allowed', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP),
        HINT = 'record a correcting event instead; old events leave only through custos.apply_retention';
END
$fn$;
COMMENT ON FUNCTION custos_internal.refuse_ledger_change() IS
'Trigger function that refuses UPDATE, DELETE and TRUNCATE on custos'' append-only tables.';

-- Refuses UPDATE, DELETE and TRUNCATE on a custos table. ENABLE ALWAYS: the triggers fire even
-- with session_replication_role = replica.
CREATE FUNCTION custos_internal.make_append_only(tbl regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    EXECUTE format('CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.refuse_ledger_change()', tbl);
    EXECUTE format('CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.refuse_ledger_change()', tbl);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER append_only', tbl);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER append_only_truncate', tbl);
END
$fn$;
COMMENT ON FUNCTION custos_internal.make_append_only(regclass) IS 'Internal: puts custos'' append-only triggers on one of its tables.';

SELECT custos_internal.make_append_only('@extschema@.events');
ALTER TABLE @extschema@.events ENABLE ALWAYS TRIGGER zz_chain;

SELECT @extschema@.enable_tenant_isolation('@extschema@.events');
-- Its rows are user data: pg_dump carries them (extension tables are otherwise left out).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.events', '');
GRANT INSERT ON @extschema@.events TO custos_writer;
GRANT SELECT ON @extschema@.events TO custos_auditor;

------------------------------------------------------------------------------------------------
-- Signed checkpoints, as custos.checkpoint() issued them. Append-only too.
------------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.checkpoints (
    tenant_id  uuid NOT NULL,
    seq        bigint NOT NULL,
    head       bytea NOT NULL,
    signed_at  timestamptz NOT NULL,
    key_id     text NOT NULL,
    checkpoint text NOT NULL,
    PRIMARY KEY (tenant_id, seq, signed_at)
);
COMMENT ON TABLE @extschema@.checkpoints IS
'Every checkpoint custos.checkpoint() signed. custos.verify_chain() checks the chain still reaches and agrees with them; keep the texts outside the database too, where a superuser cannot rewrite them.';
SELECT custos_internal.make_append_only('@extschema@.checkpoints');
SELECT @extschema@.enable_tenant_isolation('@extschema@.checkpoints');
-- Its rows are user data: pg_dump carries them (extension tables are otherwise left out).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.checkpoints', '');
GRANT SELECT ON @extschema@.checkpoints TO custos_auditor;

------------------------------------------------------------------------------------------------
-- Guard: DDL that would switch off the protections is refused, superusers included.
------------------------------------------------------------------------------------------------
CREATE FUNCTION custos_internal.guard_ledger_ddl() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    problem text;
BEGIN
    SELECT format('%s on %s', t.expected, t.tbl) INTO problem
      FROM (VALUES ('@extschema@.events'::regclass, 'zz_chain'),
                   ('@extschema@.events'::regclass, 'append_only'),
                   ('@extschema@.events'::regclass, 'append_only_truncate'),
                   ('@extschema@.checkpoints'::regclass, 'append_only'),
                   ('@extschema@.checkpoints'::regclass, 'append_only_truncate')) AS t(tbl, expected)
     WHERE NOT EXISTS (SELECT 1 FROM pg_trigger g
                        WHERE g.tgrelid = t.tbl AND g.tgname = t.expected AND g.tgenabled = 'A')
     LIMIT 1;
    IF problem IS NULL THEN
        SELECT format('row-level security of %s', c.oid::regclass) INTO problem
          FROM pg_class c
         WHERE c.oid IN ('@extschema@.events'::regclass, '@extschema@.checkpoints'::regclass)
           AND NOT (c.relrowsecurity AND c.relforcerowsecurity)
         LIMIT 1;
    END IF;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('custos ledger protection cannot be removed or disabled (%s)', problem),
            HINT = 'the audit ledger is append-only for every role; the statement was rolled back';
    END IF;
END
$fn$;
COMMENT ON FUNCTION custos_internal.guard_ledger_ddl() IS
'Event trigger function: refuses DDL that drops or disables the ledger''s triggers or row-level security.';
CREATE EVENT TRIGGER custos_guard_ledger ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'DROP TRIGGER', 'ALTER TRIGGER', 'CREATE TRIGGER')
    EXECUTE FUNCTION custos_internal.guard_ledger_ddl();

CREATE FUNCTION custos_internal.guard_ledger_drop() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'custos_guard_ledger_drop';
COMMENT ON FUNCTION custos_internal.guard_ledger_drop() IS
'Event trigger function: refuses DROP EXTENSION custos, DROP SCHEMA custos and ALTER EXTENSION custos DROP unless a superuser set custos.allow_ledger_drop; firing for every DDL command, it also loads the hook that refuses drops cascading into the ledger.';
-- Every DDL command: besides refusing the direct drops above, the call loads custos' library,
-- whose object-access hook then refuses any drop that would cascade into the ledger
-- (src/ledger/guard.rs).
CREATE EVENT TRIGGER custos_guard_ledger_drop ON ddl_command_start
    EXECUTE FUNCTION custos_internal.guard_ledger_drop();

------------------------------------------------------------------------------------------------
-- Writing events
------------------------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.set_actor(actor text) RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT set_config('custos.actor', coalesce(actor, ''), true) $fn$;
COMMENT ON FUNCTION @extschema@.set_actor(text) IS
'Names the application user for the rest of the transaction; ledger events record it as actor unless they name one.';

CREATE FUNCTION @extschema@.record_event(
    action      text,
    entity_type text,
    entity_id   text DEFAULT NULL,
    details     jsonb DEFAULT '{}',
    severity    text DEFAULT 'info',
    occurred_at timestamptz DEFAULT NULL,
    actor       text DEFAULT NULL,
    ip_address  inet DEFAULT NULL,
    user_agent  text DEFAULT NULL
) RETURNS TABLE (id uuid, seq bigint, recorded_at timestamptz, hash bytea)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    INSERT INTO @extschema@.events AS e
           (tenant_id, action, entity_type, entity_id, details, severity, occurred_at, actor, ip_address, user_agent)
    VALUES (@extschema@.require_tenant(), action, entity_type, entity_id, coalesce(details, '{}'),
            coalesce(severity, 'info'), occurred_at, actor, ip_address, user_agent)
    RETURNING e.id, e.seq, e.recorded_at, e.hash
$fn$;
COMMENT ON FUNCTION @extschema@.record_event(text, text, text, jsonb, text, timestamptz, text, inet, text) IS
'Records one event in the current tenant''s ledger and returns its id, seq, recorded_at and hash.';

CREATE FUNCTION @extschema@.record_events(events jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
    bad text;
    n bigint;
BEGIN
    PERFORM custos_internal.check_json_batch(events, 'event batch',
        ARRAY['tenant_id', 'occurred_at', 'actor', 'action', 'entity_type', 'entity_id', 'severity', 'details',
              'ip_address', 'user_agent'],
        '[{"action": "login", "entity_type": "user", "entity_id": "u1"}]');
    SELECT format('element %s belongs to tenant %s, not the current tenant', i - 1, e->>'tenant_id') INTO bad
      FROM jsonb_array_elements(events) WITH ORDINALITY AS a(e, i)
     WHERE e ? 'tenant_id' AND (e->>'tenant_id')::uuid IS DISTINCT FROM tenant LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('invalid event batch: %s', bad);
    END IF;
    INSERT INTO @extschema@.events
           (tenant_id, occurred_at, actor, action, entity_type, entity_id, severity, details, ip_address, user_agent)
    SELECT tenant, r.occurred_at, r.actor, r.action, r.entity_type, r.entity_id,
           coalesce(r.severity, 'info'), coalesce(r.details, '{}'), r.ip_address, r.user_agent
      FROM jsonb_to_recordset(events) AS r(occurred_at timestamptz, actor text, action text, entity_type text,
                                           entity_id text, severity text, details jsonb, ip_address inet,
                                           user_agent text);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION @extschema@.record_events(jsonb) IS
'Records a JSON array of events in the current tenant''s ledger, all or nothing, in array order; returns how many. Each element: action, entity_type, and optionally entity_id, details, severity, occurred_at, actor, ip_address, user_agent.';

------------------------------------------------------------------------------------------------
-- Functions written in Rust (src/ledger/api.rs)
------------------------------------------------------------------------------------------------
COMMENT ON FUNCTION custos_internal.events_chain() IS
'BEFORE INSERT trigger of custos.events: assigns seq, id, times, actor, role and transaction, and links the row into its tenant''s SHA-256 chain.';
COMMENT ON FUNCTION @extschema@.verify_chain(uuid, bigint, bigint) IS
'Recomputes a tenant''s hash chain from from_seq to to_seq (default: its end) and returns ok, how many events were checked, and the first broken seq with the reason (content changed, hash altered, link broken, gap, reordered, truncated, rewritten). A break also raises a critical alert.';
COMMENT ON FUNCTION @extschema@.settled_seq(uuid, bigint) IS
'The highest seq of the tenant''s chain, from after_seq on, through which the caller''s snapshot sees every event. With track_commit_timestamp on, a writer may become visible an instant before the writer its events follow in the chain; a consumer that keeps a watermark ("done through seq n") reads up to settled_seq, not max(seq), so that it never steps over such an event.';
COMMENT ON FUNCTION @extschema@.checkpoint(uuid) IS
'Signs the tenant''s current chain head (tenant, seq, head hash, time) with Ed25519 and returns the one-line text; keep it outside the database. Also stored in custos.checkpoints.';
COMMENT ON FUNCTION @extschema@.checkpoint_public_key() IS
'Hex public key that verifies custos checkpoints; give it to whoever verifies them outside the database.';
COMMENT ON FUNCTION @extschema@.verify_checkpoint(text, text) IS
'Checks a checkpoint''s signature (with public_key, else the configured key) and that the current chain verifies and still has the checkpoint''s head at its seq: a rewritten or cut-off chain fails even if every hash was recomputed.';
