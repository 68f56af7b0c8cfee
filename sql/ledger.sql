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
-- Its rows are user data: pg_dump carries them (extension tables are otherwise left out).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.alerts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.alerts_id_seq', '');
GRANT SELECT ON @extschema@.alerts TO custos_auditor;

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
    FOR EACH ROW EXECUTE FUNCTION @extschema@.events_chain();

CREATE FUNCTION @extschema@.refuse_ledger_change() RETURNS trigger
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
COMMENT ON FUNCTION @extschema@.refuse_ledger_change() IS
'Trigger function that refuses UPDATE, DELETE and TRUNCATE on custos'' append-only tables.';

-- Refuses UPDATE, DELETE and TRUNCATE on a custos table. ENABLE ALWAYS: the triggers fire even
-- with session_replication_role = replica.
CREATE FUNCTION @extschema@.make_append_only(tbl regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    EXECUTE format('CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.refuse_ledger_change()', tbl);
    EXECUTE format('CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.refuse_ledger_change()', tbl);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER append_only', tbl);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER append_only_truncate', tbl);
END
$fn$;
COMMENT ON FUNCTION @extschema@.make_append_only(regclass) IS 'Internal: puts custos'' append-only triggers on one of its tables.';

SELECT @extschema@.make_append_only('@extschema@.events');
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
SELECT @extschema@.make_append_only('@extschema@.checkpoints');
SELECT @extschema@.enable_tenant_isolation('@extschema@.checkpoints');
-- Its rows are user data: pg_dump carries them (extension tables are otherwise left out).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.checkpoints', '');
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

CREATE FUNCTION @extschema@.guard_ledger_drop() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'custos_guard_ledger_drop';
COMMENT ON FUNCTION @extschema@.guard_ledger_drop() IS
'Event trigger function: refuses DROP EXTENSION custos, DROP SCHEMA custos and ALTER EXTENSION custos DROP unless a superuser set custos.allow_ledger_drop; firing for every DDL command, it also loads the hook that refuses drops cascading into the ledger.';
-- Every DDL command: besides refusing the direct drops above, the call loads custos' library,
-- whose object-access hook then refuses any drop that would cascade into the ledger
-- (src/ledger/guard.rs).
CREATE EVENT TRIGGER custos_guard_ledger_drop ON ddl_command_start
    EXECUTE FUNCTION @extschema@.guard_ledger_drop();

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
    PERFORM @extschema@.check_json_batch(events, 'event batch',
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
COMMENT ON FUNCTION @extschema@.events_chain() IS
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


------------------------------------------------------------------------------------------------
-- Capture of business tables: every INSERT, UPDATE, DELETE and TRUNCATE becomes ledger events.
-- Statement-level triggers with transition tables: a 1,000-row statement costs one set-based
-- (Details are built as json text and converted to jsonb once: nesting jsonb values re-walks them.)
--
-- INSERT into the ledger, not 1,000 trigger calls. Each tracked table gets its own generated
-- function (static SQL, cached plans), owned by custos and run as SECURITY DEFINER so that the
-- event lands in the tenant named by the row, whatever the writer's own tenant.
------------------------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.caller_role() RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    -- Inside SECURITY DEFINER, current_user is the owner; the caller is SET ROLE's, else the session's.
    SELECT CASE WHEN current_setting('role') = 'none' THEN session_user ELSE current_setting('role')::name END
$fn$;
COMMENT ON FUNCTION @extschema@.caller_role() IS
'The role that called in: SET ROLE''s role, else the session user. Unlike current_user, unchanged inside SECURITY DEFINER functions.';

-- TRUNCATE has no transition table: one event per tenant that had rows, recorded before they go.
CREATE FUNCTION @extschema@.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    -- Runs as custos' owner on a table its caller owns: nothing of the caller's may run here.
    -- Only the trigger track_table made; and the tenant column read only if it is exactly uuid
    -- (not a domain or a type of the caller's with casts and operators of its own), so the
    -- DISTINCT and the INSERT use PostgreSQL's built-in uuid operators and no cast at all.
    IF TG_NAME <> 'custos_track_truncate' OR TG_WHEN <> 'BEFORE' OR TG_LEVEL <> 'STATEMENT' OR TG_NARGS < 1 THEN
        RAISE EXCEPTION USING ERRCODE = '39P01',
            MESSAGE = 'custos.capture_truncate runs only as the TRUNCATE trigger custos.track_table creates';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = TG_RELID AND a.attname = TG_ARGV[0] AND a.attnum > 0
                      AND NOT a.attisdropped AND a.atttypid = 'uuid'::regtype) THEN
        RAISE EXCEPTION USING ERRCODE = '42804',
            MESSAGE = format('tenant column %I of %s is no longer a uuid: the TRUNCATE cannot be recorded', TG_ARGV[0], TG_RELID::regclass),
            HINT = 'the tenant column of a tracked table must stay of type uuid; untrack the table before changing it';
    END IF;
    EXECUTE format('INSERT INTO @extschema@.events (tenant_id, action, entity_type, details)
                    SELECT DISTINCT t.%1$I, ''truncate'', $1, jsonb_build_object(''table'', $2)
                      FROM %2$s t WHERE t.%1$I IS NOT NULL', TG_ARGV[0], TG_RELID::regclass)
        USING TG_ARGV[1], format('%s.%s', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION @extschema@.capture_truncate() IS
'BEFORE TRUNCATE trigger of tables tracked by custos.track_table: records one truncate event per tenant that had rows.';

-- capture_changes (src/ledger/capture.rs) writes events of any tenant: only track_table may use it.
-- It runs as the writer, not SECURITY DEFINER: it appends to the ledger's heap and indexes itself,
-- and only its SPI fallback (when custos.events has other INSERT triggers) switches to the
-- superuser, with a pinned search_path. A definer call with SET search_path costs every captured
-- statement a GUC save and restore and a new namespace search path.
COMMENT ON FUNCTION @extschema@.capture_changes() IS
'AFTER ... FOR EACH STATEMENT trigger of tables tracked by custos.track_table: reads the statement''s transition tables and records each changed row (or group of rows) as an event in the row''s tenant.';

CREATE FUNCTION @extschema@.track_table(tbl regclass, tenant_column name DEFAULT 'tenant_id', entity_type text DEFAULT NULL,
                                        rows_per_event integer DEFAULT 1)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    rel record;
    pk_cols name[];
    tenant_type regtype;
    etype text;
    args text;
    trig name;
BEGIN
    SELECT c.relname, n.nspname, c.relkind, c.relowner INTO rel
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION USING ERRCODE = '42809', MESSAGE = format('%s is not a table', tbl);
    END IF;
    IF rows_per_event IS NULL OR rows_per_event NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('rows_per_event must be between 1 and 1000, not %s', rows_per_event);
    END IF;
    IF rel.nspname = '@extschema@' THEN
        RAISE EXCEPTION USING ERRCODE = '42809', MESSAGE = format('%s belongs to custos and cannot be tracked', tbl);
    END IF;
    IF NOT pg_has_role(@extschema@.caller_role(), rel.relowner, 'USAGE') THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = format('must be owner of table %s to track it', tbl);
    END IF;
    SELECT a.atttypid::regtype INTO tenant_type FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = tenant_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF tenant_type IS DISTINCT FROM 'uuid'::regtype THEN
        RAISE EXCEPTION USING ERRCODE = '42703',
            MESSAGE = format('table %s has no uuid column %I to take the tenant from', tbl, tenant_column),
            HINT = 'pass the tenant column as tenant_column';
    END IF;
    SELECT array_agg(a.attname ORDER BY k.ord) INTO pk_cols
      FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = tbl AND i.indisprimary;
    IF pk_cols IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000', MESSAGE = format('table %s has no primary key', tbl),
            HINT = 'events name the changed row by its primary key; add one first';
    END IF;
    etype := coalesce(entity_type, format('%s.%s', rel.nspname, rel.relname));
    IF length(etype) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'entity_type must be 1 to 200 characters';
    END IF;
    -- Trigger arguments of custos.capture_changes: tenant column, entity_type, rows per event, key.
    args := format('%L, %L, %L', tenant_column, etype, rows_per_event)
            || (SELECT string_agg(format(', %L', c), '') FROM unnest(pk_cols) c);

    -- Tracking again replaces the triggers (quietly: IF EXISTS would print a notice per trigger).
    FOR trig IN SELECT t.tgname FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname LIKE 'custos\_track\_%' LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trig, tbl);
    END LOOP;
    EXECUTE format('CREATE TRIGGER custos_track_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS custos_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.capture_changes(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER custos_track_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS custos_old NEW TABLE AS custos_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.capture_changes(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER custos_track_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS custos_old '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.capture_changes(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER custos_track_truncate BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.capture_truncate(%s)', tbl, args);
    RETURN format('%s is tracked: its changes are recorded in custos.events as entity_type %s%s', tbl, etype,
                  CASE WHEN rows_per_event > 1 THEN format(', up to %s rows per event', rows_per_event) ELSE '' END);
END
$fn$;
COMMENT ON FUNCTION @extschema@.track_table(regclass, name, text, integer) IS
'Records every INSERT, UPDATE, DELETE (old and new values, primary key, actor) and TRUNCATE of a table in the audit ledger, in the tenant named by each row''s tenant column. rows_per_event 1 (default) gives one event per row with the key as entity_id; more puts up to that many rows of a statement in one event (details.rows), for bulk-heavy tables. The caller must own the table; the table needs a primary key. Idempotent.';

CREATE FUNCTION @extschema@.untrack_table(tbl regclass) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF NOT pg_has_role(@extschema@.caller_role(), (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = format('must be owner of table %s to untrack it', tbl);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'custos_track_insert') THEN
        RAISE EXCEPTION USING ERRCODE = '55000', MESSAGE = format('%s is not tracked', tbl);
    END IF;
    -- Stopping the audit trail is itself worth a record, in the current tenant if there is one.
    IF @extschema@.current_tenant() IS NOT NULL THEN
        INSERT INTO @extschema@.events (tenant_id, action, entity_type, entity_id, severity, details)
        VALUES (@extschema@.current_tenant(), 'custos.untrack_table', 'table', tbl::text, 'medium',
                jsonb_build_object('table', tbl::text));
    END IF;
    EXECUTE format('DROP TRIGGER custos_track_insert ON %s', tbl);
    EXECUTE format('DROP TRIGGER custos_track_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER custos_track_delete ON %s', tbl);
    EXECUTE format('DROP TRIGGER custos_track_truncate ON %s', tbl);
    RETURN format('%s is no longer tracked', tbl);
END
$fn$;
COMMENT ON FUNCTION @extschema@.untrack_table(regclass) IS
'Stops recording a table''s changes; records that it did so in the current tenant''s ledger when a tenant is set.';

CREATE VIEW @extschema@.tracked_tables AS
SELECT t.tgrelid::regclass AS table_name, a.args[1]::name AS tenant_column, a.args[2] AS entity_type,
       a.args[3]::integer AS rows_per_event, a.args[4:] AS key_columns
  FROM pg_trigger t
 CROSS JOIN LATERAL (SELECT string_to_array(replace(regexp_replace(encode(t.tgargs, 'escape'), '\\000$', ''), '\\', '\'), '\000') AS args) a
 WHERE t.tgname = 'custos_track_insert';
COMMENT ON VIEW @extschema@.tracked_tables IS 'Tables whose changes custos records in the audit ledger.';
GRANT SELECT ON @extschema@.tracked_tables TO custos_admin, custos_auditor;

------------------------------------------------------------------------------------------------
-- Alert triage: only through this function, and on the record.
------------------------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.set_alert_status(alert_id bigint, status text, note text DEFAULT NULL)
RETURNS TABLE (id bigint, previous_status text, new_status text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
    before text;
BEGIN
    IF status IS NULL OR status NOT IN ('open', 'acknowledged', 'resolved', 'false_positive') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('unknown alert status "%s"', status),
            HINT = 'one of open, acknowledged, resolved, false_positive';
    END IF;
    SELECT a.status INTO before FROM @extschema@.alerts a
     WHERE a.id = alert_id AND a.tenant_id = tenant FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('no alert %s in the current tenant', alert_id);
    END IF;
    UPDATE @extschema@.alerts a SET status = set_alert_status.status WHERE a.id = alert_id AND a.tenant_id = tenant;
    -- Who closed which alert, and why, is part of the audit trail.
    INSERT INTO @extschema@.events (tenant_id, action, entity_type, entity_id, severity, details)
    VALUES (tenant, 'custos.alert_status', 'alert', alert_id::text, 'info',
            jsonb_strip_nulls(jsonb_build_object('from', before, 'to', set_alert_status.status, 'note', note)));
    RETURN QUERY SELECT alert_id, before, set_alert_status.status;
END
$fn$;
COMMENT ON FUNCTION @extschema@.set_alert_status(bigint, text, text) IS
'Moves an alert of the current tenant to open, acknowledged, resolved or false_positive, and records the change (with the note) as a custos.alert_status event in the ledger. For custos_admin; auditors read alerts but cannot close them.';
