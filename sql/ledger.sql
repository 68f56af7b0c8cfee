-- The audit ledger: append-only, per-tenant hash-chained events.

------------------------------------------------------------------------------------------------
-- Alerts raised by custos (a broken chain here; anomalies later). Tenant-isolated.
------------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.alerts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    source     text NOT NULL,
    severity   text NOT NULL CHECK (severity IN ('info', 'low', 'medium', 'high', 'critical')),
    title      text NOT NULL,
    details    jsonb NOT NULL DEFAULT '{}',
    status     text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'acknowledged', 'resolved', 'false_positive'))
);
CREATE INDEX alerts_tenant_created ON @extschema@.alerts (tenant_id, created_at DESC);
COMMENT ON TABLE @extschema@.alerts IS
'Alerts raised by custos: a broken audit chain (source ledger.verify), later anomalies. Tenant-isolated.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.alerts');
GRANT SELECT ON @extschema@.alerts TO custos_auditor;
GRANT UPDATE (status) ON @extschema@.alerts TO custos_auditor;

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
    action      text NOT NULL CHECK (length(action) BETWEEN 1 AND 200),
    entity_type text NOT NULL CHECK (length(entity_type) BETWEEN 1 AND 200),
    entity_id   text CHECK (length(entity_id) <= 1000),
    severity    text NOT NULL DEFAULT 'info' CHECK (severity IN ('info', 'low', 'medium', 'high', 'critical')),
    details     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object'),
    ip_address  inet,
    user_agent  text CHECK (length(user_agent) <= 2000),
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

-- Named so it fires after any other BEFORE trigger: what it hashes is what is stored.
CREATE TRIGGER zz_chain BEFORE INSERT ON @extschema@.events
    FOR EACH ROW EXECUTE FUNCTION @extschema@.events_chain();

CREATE FUNCTION @extschema@.refuse_ledger_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('%I.%I is append-only: %s is not allowed', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP),
        HINT = 'record a correcting event instead; old events leave only through custos retention';
END
$fn$;
COMMENT ON FUNCTION @extschema@.refuse_ledger_change() IS
'Trigger function that refuses UPDATE, DELETE and TRUNCATE on custos'' append-only tables.';

-- ENABLE ALWAYS: these fire even with session_replication_role = replica.
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON @extschema@.events
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.refuse_ledger_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON @extschema@.events
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.refuse_ledger_change();
ALTER TABLE @extschema@.events ENABLE ALWAYS TRIGGER zz_chain;
ALTER TABLE @extschema@.events ENABLE ALWAYS TRIGGER append_only;
ALTER TABLE @extschema@.events ENABLE ALWAYS TRIGGER append_only_truncate;

SELECT @extschema@.enable_tenant_isolation('@extschema@.events');
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
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON @extschema@.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.refuse_ledger_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON @extschema@.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.refuse_ledger_change();
ALTER TABLE @extschema@.checkpoints ENABLE ALWAYS TRIGGER append_only;
ALTER TABLE @extschema@.checkpoints ENABLE ALWAYS TRIGGER append_only_truncate;
SELECT @extschema@.enable_tenant_isolation('@extschema@.checkpoints');
GRANT SELECT ON @extschema@.checkpoints TO custos_auditor;

------------------------------------------------------------------------------------------------
-- Guard: DDL that would switch off the protections is refused, superusers included.
------------------------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.guard_ledger_ddl() RETURNS event_trigger
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
COMMENT ON FUNCTION @extschema@.guard_ledger_ddl() IS
'Event trigger function: refuses DDL that drops or disables the ledger''s triggers or row-level security.';
CREATE EVENT TRIGGER custos_guard_ledger ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'DROP TRIGGER', 'ALTER TRIGGER', 'CREATE TRIGGER')
    EXECUTE FUNCTION @extschema@.guard_ledger_ddl();

------------------------------------------------------------------------------------------------
-- Writing events
------------------------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.set_actor(actor text) RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT set_config('custos.actor', coalesce(actor, ''), true) $fn$;
COMMENT ON FUNCTION @extschema@.set_actor(text) IS
'Names the application user for the rest of the transaction; ledger events record it as actor unless they name one.';

CREATE FUNCTION @extschema@.require_tenant() RETURNS uuid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.current_tenant();
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'no tenant is set',
            HINT = 'call custos.set_tenant(uuid) first, or send a JWT with a tenant_id claim';
    END IF;
    RETURN tenant;
END
$fn$;
COMMENT ON FUNCTION @extschema@.require_tenant() IS 'The current tenant, or an error (42501) when none is set.';

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
    IF events IS NULL OR jsonb_typeof(events) <> 'array' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'events must be a JSON array of objects',
            HINT = 'for example: [{"action": "login", "entity_type": "user", "entity_id": "u1"}]';
    END IF;
    SELECT format('element %s is %s', i - 1, jsonb_typeof(e)) INTO bad
      FROM jsonb_array_elements(events) WITH ORDINALITY AS a(e, i)
     WHERE jsonb_typeof(e) <> 'object' LIMIT 1;
    IF bad IS NULL THEN
        SELECT format('element %s has unknown key "%s"', i - 1, k) INTO bad
          FROM jsonb_array_elements(events) WITH ORDINALITY AS a(e, i), jsonb_object_keys(e) AS k
         WHERE k NOT IN ('tenant_id', 'occurred_at', 'actor', 'action', 'entity_type', 'entity_id',
                         'severity', 'details', 'ip_address', 'user_agent')
         LIMIT 1;
    END IF;
    IF bad IS NULL THEN
        SELECT format('element %s belongs to tenant %s, not the current tenant', i - 1, e->>'tenant_id') INTO bad
          FROM jsonb_array_elements(events) WITH ORDINALITY AS a(e, i)
         WHERE e ? 'tenant_id' AND (e->>'tenant_id')::uuid IS DISTINCT FROM tenant LIMIT 1;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('invalid event batch: %s', bad),
            HINT = 'allowed keys: tenant_id, occurred_at, actor, action, entity_type, entity_id, severity, details, ip_address, user_agent';
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
COMMENT ON FUNCTION @extschema@.events_chain() IS
'BEFORE INSERT trigger of custos.events: assigns seq, id, times, actor, role and transaction, and links the row into its tenant''s SHA-256 chain.';
COMMENT ON FUNCTION @extschema@.verify_chain(uuid, bigint, bigint) IS
'Recomputes a tenant''s hash chain from from_seq to to_seq (default: its end) and returns ok, how many events were checked, and the first broken seq with the reason (content changed, hash altered, link broken, gap, reordered, truncated, rewritten). A break also raises a critical alert.';
COMMENT ON FUNCTION @extschema@.checkpoint(uuid) IS
'Signs the tenant''s current chain head (tenant, seq, head hash, time) with Ed25519 and returns the one-line text; keep it outside the database. Also stored in custos.checkpoints.';
COMMENT ON FUNCTION @extschema@.checkpoint_public_key() IS
'Hex public key that verifies custos checkpoints; give it to whoever verifies them outside the database.';
COMMENT ON FUNCTION @extschema@.verify_checkpoint(text, text) IS
'Checks a checkpoint''s signature (with public_key, else the configured key) and that the current chain verifies and still has the checkpoint''s head at its seq: a rewritten or cut-off chain fails even if every hash was recomputed.';

REVOKE EXECUTE ON FUNCTION @extschema@.record_event(text, text, text, jsonb, text, timestamptz, text, inet, text),
                            @extschema@.record_events(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.record_event(text, text, text, jsonb, text, timestamptz, text, inet, text),
                           @extschema@.record_events(jsonb) TO custos_writer;
REVOKE EXECUTE ON FUNCTION @extschema@.verify_chain(uuid, bigint, bigint), @extschema@.checkpoint(uuid),
                            @extschema@.verify_checkpoint(text, text), @extschema@.checkpoint_public_key() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.verify_chain(uuid, bigint, bigint), @extschema@.checkpoint(uuid),
                           @extschema@.verify_checkpoint(text, text), @extschema@.checkpoint_public_key() TO custos_auditor;
