-- Capture of business tables (src/capture/): custos.track_table and the triggers it creates.

-- Functions written in Rust that only custos itself calls: out of the public schema.
ALTER FUNCTION @extschema@.capture_changes() SET SCHEMA custos_internal;

------------------------------------------------------------------------------------------------
-- Capture of business tables: every INSERT, UPDATE, DELETE and TRUNCATE becomes ledger events.
-- Statement-level triggers with transition tables: a 1,000-row statement costs one set-based
-- (Details are built as json text and converted to jsonb once: nesting jsonb values re-walks them.)
--
-- INSERT into the ledger, not 1,000 trigger calls. Each tracked table gets its own generated
-- function (static SQL, cached plans), owned by custos and run as SECURITY DEFINER so that the
-- event lands in the tenant named by the row, whatever the writer's own tenant.
------------------------------------------------------------------------------------------------
-- TRUNCATE has no transition table: one event per tenant that had rows, recorded before they go.
CREATE FUNCTION custos_internal.capture_truncate() RETURNS trigger
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
COMMENT ON FUNCTION custos_internal.capture_truncate() IS
'BEFORE TRUNCATE trigger of tables tracked by custos.track_table: records one truncate event per tenant that had rows.';

-- capture_changes (src/capture/mod.rs) writes events of any tenant: only track_table may use it.
-- It runs as the writer, not SECURITY DEFINER: it appends to the ledger's heap and indexes itself,
-- and only its SPI fallback (when custos.events has other INSERT triggers) switches to the
-- superuser, with a pinned search_path. A definer call with SET search_path costs every captured
-- statement a GUC save and restore and a new namespace search path.
COMMENT ON FUNCTION custos_internal.capture_changes() IS
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
    IF NOT pg_has_role(custos_internal.caller_role(), rel.relowner, 'USAGE') THEN
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
                   'FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.capture_changes(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER custos_track_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS custos_old NEW TABLE AS custos_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.capture_changes(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER custos_track_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS custos_old '
                   'FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.capture_changes(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER custos_track_truncate BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.capture_truncate(%s)', tbl, args);
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
    IF NOT pg_has_role(custos_internal.caller_role(), (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
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
