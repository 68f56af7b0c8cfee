-- custos 0.1.0 -> 0.2.0. Frozen once released, like every upgrade script.
\echo Use "ALTER EXTENSION custos UPDATE TO '0.2.0'" to load this file. \quit

-- Internal functions and views move out of the public schema.
CREATE SCHEMA custos_internal;
COMMENT ON SCHEMA custos_internal IS
'custos'' internal functions and views: called by custos'' own functions and triggers, not an API. Not to be exposed through PostgREST.';
GRANT USAGE ON SCHEMA custos_internal TO custos_reader;
ALTER FUNCTION @extschema@.caller_role() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.capture_changes() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.capture_truncate() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.check_json_batch(jsonb,text,text[],text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.csv_field(text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.dormant_row(@extschema@.identities,text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.dormant_settings_changed() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.dormant_users_page(integer,integer,integer,text,boolean,text,text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.events_chain() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.guard_ledger_ddl() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.guard_ledger_drop() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.identities_derive() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.invalidate_caches() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.is_erased(uuid,text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.log_access(uuid,text,jsonb,bigint) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.make_append_only(regclass) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.readable_events(uuid,timestamp with time zone,timestamp with time zone,text,text,text,text,text,bigint,integer,boolean) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.refuse_ledger_change() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.require_tenant_access(uuid) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.retention_delete_check() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.reveal(uuid,uuid,text,text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.reveal_actor(uuid,text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.reveal_details(uuid,uuid,jsonb) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.severity_rank(text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.tenant_settings_invalidate() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.tenant_settings_validate() SET SCHEMA custos_internal;
ALTER VIEW @extschema@.opened_events SET SCHEMA custos_internal;

-- Functions written in Rust that 0.2.0 adds.
CREATE  FUNCTION "current_actor"() RETURNS TEXT /* String */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'current_actor_wrapper';

CREATE  FUNCTION "lock_activity_fold"(
	"tenant" uuid /* pgrx :: Uuid */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'lock_activity_fold_wrapper';

CREATE  FUNCTION "require_master_key"() RETURNS void
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'require_master_key_wrapper';
ALTER FUNCTION @extschema@.lock_activity_fold(uuid) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.require_master_key() SET SCHEMA custos_internal;

-- From sql/tenancy.sql: every function (replaced), comment, and table marked for pg_dump.
COMMENT ON FUNCTION @extschema@.current_tenant() IS
'The tenant of the current request: the value of custos.set_tenant() in this transaction, else the tenant_id claim of request.jwt.claims (as PostgREST sets it). NULL when neither holds a valid UUID, so tenant-isolated tables show no rows.';

COMMENT ON FUNCTION @extschema@.set_tenant(uuid) IS
'Sets the tenant for the rest of the current transaction (NULL clears it) and returns it. For application servers that connect directly; PostgREST requests carry the tenant in their JWT instead.';

CREATE OR REPLACE FUNCTION @extschema@.enable_tenant_isolation(tbl regclass, col name DEFAULT 'tenant_id')
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    col_type regtype;
    kind "char";
    pol name;
BEGIN
    SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = tbl;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION USING ERRCODE = '42809',
            MESSAGE = format('%s is not a table', tbl),
            HINT = 'row-level security applies to ordinary and partitioned tables only';
    END IF;
    SELECT a.atttypid::regtype INTO col_type
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF col_type IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42703',
            MESSAGE = format('column %I does not exist in table %s', col, tbl),
            HINT = 'pass the name of the tenant column as the second argument';
    END IF;
    IF col_type <> 'uuid'::regtype THEN
        RAISE EXCEPTION USING ERRCODE = '42804',
            MESSAGE = format('tenant column %I of %s has type %s, not uuid', col, tbl, col_type);
    END IF;

    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    -- FORCE: the table owner is filtered too (superusers and BYPASSRLS roles never are).
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    -- Re-running replaces the policies (quietly: IF EXISTS would print a notice per policy).
    FOR pol IN SELECT p.polname FROM pg_policy p
                WHERE p.polrelid = tbl AND p.polname IN ('custos_tenant_access', 'custos_tenant_isolation') LOOP
        EXECUTE format('DROP POLICY %I ON %s', pol, tbl);
    END LOOP;
    -- The permissive policy grants a tenant its rows; the restrictive one makes sure no other
    -- permissive policy a user adds later can widen access beyond the tenant.
    -- (select ...) runs once per query as an InitPlan, so an index on the column is usable.
    EXECUTE format($p$CREATE POLICY custos_tenant_access ON %s AS PERMISSIVE FOR ALL
                      USING (%I = (SELECT @extschema@.current_tenant()))
                      WITH CHECK (%I = (SELECT @extschema@.current_tenant()))$p$, tbl, col, col);
    EXECUTE format($p$CREATE POLICY custos_tenant_isolation ON %s AS RESTRICTIVE FOR ALL
                      USING (%I = (SELECT @extschema@.current_tenant()))
                      WITH CHECK (%I = (SELECT @extschema@.current_tenant()))$p$, tbl, col, col);
    RETURN format('%s isolated by %I', tbl, col);
END
$fn$;

COMMENT ON FUNCTION @extschema@.enable_tenant_isolation(regclass, name) IS
'Enables and forces row-level security on a table, with policies that show and accept only rows whose tenant column equals custos.current_tenant(). Idempotent. The caller must own the table.';

CREATE OR REPLACE FUNCTION @extschema@.rls_coverage()
RETURNS TABLE (table_name regclass, tenant_column name, rls_enabled boolean, rls_forced boolean,
               has_isolation_policy boolean, problem text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH candidates AS (
        SELECT c.oid, a.attname,
               c.relrowsecurity, c.relforcerowsecurity,
               EXISTS (SELECT 1 FROM pg_policy p
                        WHERE p.polrelid = c.oid AND p.polname = 'custos_tenant_isolation'
                          AND NOT p.polpermissive) AS has_policy
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relkind IN ('r', 'p')
           AND NOT c.relispartition
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg\_toast%'
           AND a.attname = 'tenant_id'
    )
    SELECT oid::regclass, attname, relrowsecurity, relforcerowsecurity, has_policy,
           CASE WHEN NOT relrowsecurity THEN 'row-level security is disabled'
                WHEN NOT relforcerowsecurity THEN 'row-level security is not forced: the owner sees every tenant'
                ELSE 'no custos tenant isolation policy' END
      FROM candidates
     WHERE NOT (relrowsecurity AND relforcerowsecurity AND has_policy)
     ORDER BY oid::regclass::text
$fn$;

COMMENT ON FUNCTION @extschema@.rls_coverage() IS
'Tables with a tenant_id column that are not isolated by custos (RLS disabled, not forced, or without the isolation policy), with what is missing. Empty when every such table is covered.';

CREATE OR REPLACE FUNCTION custos_internal.caller_role() RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    -- Inside SECURITY DEFINER, current_user is the owner; the caller is SET ROLE's, else the session's.
    SELECT CASE WHEN current_setting('role') = 'none' THEN session_user ELSE current_setting('role')::name END
$fn$;

COMMENT ON FUNCTION custos_internal.caller_role() IS
'The role that called in: SET ROLE''s role, else the session user. Unlike current_user, unchanged inside SECURITY DEFINER functions.';

CREATE OR REPLACE FUNCTION @extschema@.require_tenant() RETURNS uuid
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

CREATE OR REPLACE FUNCTION custos_internal.check_json_batch(batch jsonb, what text, allowed_keys text[], example text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    bad text;
BEGIN
    IF batch IS NULL OR jsonb_typeof(batch) <> 'array' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s must be a JSON array of objects', what),
            HINT = format('for example: %s', example);
    END IF;
    SELECT format('element %s is %s', i - 1, jsonb_typeof(e)) INTO bad
      FROM jsonb_array_elements(batch) WITH ORDINALITY AS a(e, i) WHERE jsonb_typeof(e) <> 'object' LIMIT 1;
    IF bad IS NULL THEN
        SELECT format('element %s has unknown key "%s"', i - 1, k) INTO bad
          FROM jsonb_array_elements(batch) WITH ORDINALITY AS a(e, i), jsonb_object_keys(e) AS k
         WHERE k <> ALL (allowed_keys) LIMIT 1;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('invalid %s: %s', what, bad),
            HINT = format('allowed keys: %s', array_to_string(allowed_keys, ', '));
    END IF;
END
$fn$;

COMMENT ON FUNCTION custos_internal.check_json_batch(jsonb, text, text[], text) IS
'Raises a clear error (22023) unless batch is a JSON array of objects using only allowed_keys; used by the batch functions (record_events, upsert_identities).';

COMMENT ON TABLE @extschema@.setting_definitions IS
'Every setting custos knows, with its type, allowed range and extension-wide default. Each capability adds its own rows.';

COMMENT ON TABLE @extschema@.tenant_settings IS
'Per-tenant overrides of custos.setting_definitions. Tenant-isolated; values are validated on write.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.tenant_settings', '');

CREATE OR REPLACE FUNCTION @extschema@.validate_setting(key text, value jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    def @extschema@.setting_definitions;
    actual text := jsonb_typeof(value);
    num numeric;
BEGIN
    SELECT * INTO def FROM @extschema@.setting_definitions d WHERE d.key = validate_setting.key;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('unknown setting "%s"', key),
            HINT = format('known settings: %s',
                          (SELECT string_agg(d.key, ', ' ORDER BY d.key) FROM @extschema@.setting_definitions d));
    END IF;
    IF value IS NULL OR actual = 'null' THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = format('setting "%s" cannot be null', key),
            HINT = 'use custos.reset_setting(key) to go back to the default';
    END IF;
    IF def.value_type IN ('integer', 'number') THEN
        IF actual <> 'number' THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('setting "%s" takes %s %s, not %s', key,
                                 CASE def.value_type WHEN 'integer' THEN 'an' ELSE 'a' END, def.value_type, actual),
                HINT = format('for example: %s', def.default_value);
        END IF;
        num := value::text::numeric;
        IF def.value_type = 'integer' AND num <> trunc(num) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('setting "%s" takes a whole number, not %s', key, num);
        END IF;
        IF num < def.min_value OR num > def.max_value THEN
            RAISE EXCEPTION USING ERRCODE = '22003',
                MESSAGE = format('setting "%s" must be between %s and %s, not %s', key, def.min_value, def.max_value, num);
        END IF;
    ELSIF def.value_type = 'boolean' AND actual <> 'boolean' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('setting "%s" takes true or false, not %s', key, actual);
    ELSIF def.value_type = 'text' THEN
        IF actual <> 'string' THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('setting "%s" takes a string, not %s', key, actual);
        END IF;
        IF def.allowed_values IS NOT NULL AND NOT (value #>> '{}') = ANY (def.allowed_values) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('setting "%s" cannot be %s', key, value),
                HINT = format('allowed values: %s', array_to_string(def.allowed_values, ', '));
        END IF;
    END IF;
    RETURN value;
END
$fn$;

COMMENT ON FUNCTION @extschema@.validate_setting(text, jsonb) IS
'Returns the value if it is valid for the setting; otherwise raises an error naming what is wrong (unknown key, wrong type, out of range).';

CREATE OR REPLACE FUNCTION custos_internal.require_trigger_on(fired_on oid, own regclass, fn text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF fired_on IS DISTINCT FROM own::oid THEN
        RAISE EXCEPTION USING ERRCODE = '39P01',
            MESSAGE = format('%s is the trigger of %s and runs on no other table', fn, own);
    END IF;
END
$fn$;

COMMENT ON FUNCTION custos_internal.require_trigger_on(oid, regclass, text) IS
'Internal: raises 39P01 unless a trigger function fires on its own table.';

CREATE OR REPLACE FUNCTION custos_internal.tenant_settings_validate() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.tenant_settings', 'custos.tenant_settings_validate');
    NEW.value := @extschema@.validate_setting(NEW.key, NEW.value);
    NEW.updated_at := now();
    NEW.updated_by := current_user;
    RETURN NEW;
END
$fn$;

CREATE OR REPLACE FUNCTION custos_internal.tenant_settings_invalidate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.tenant_settings', 'custos.tenant_settings_invalidate');
    PERFORM custos_internal.invalidate_caches();
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION custos_internal.invalidate_caches() IS
'Ages the cached settings and keys of every session (they are read again on next use); custos calls it when settings change, keys rotate or a subject is forgotten.';

CREATE OR REPLACE FUNCTION @extschema@.tenant_setting(tenant uuid, key text)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    result jsonb;
BEGIN
    SELECT coalesce(
             (SELECT s.value FROM @extschema@.tenant_settings s
               WHERE s.tenant_id = tenant_setting.tenant AND s.key = tenant_setting.key),
             d.default_value)
      INTO result
      FROM @extschema@.setting_definitions d
     WHERE d.key = tenant_setting.key;
    IF NOT FOUND THEN
        PERFORM @extschema@.validate_setting(key, 'null');  -- raises "unknown setting" with the list
    END IF;
    RETURN result;
END
$fn$;

COMMENT ON FUNCTION @extschema@.tenant_setting(uuid, text) IS
'Effective value of a setting for a tenant, as far as the caller may see that tenant''s overrides (row-level security): its override, else the default. Unknown keys raise an error listing the known ones.';

CREATE OR REPLACE FUNCTION @extschema@.setting(key text)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT @extschema@.tenant_setting(@extschema@.current_tenant(), key) $fn$;

COMMENT ON FUNCTION @extschema@.setting(text) IS
'Effective value of a setting for the current tenant: its override if it has one, else the default. Unknown keys raise an error listing the known ones.';

CREATE OR REPLACE FUNCTION @extschema@.settings()
RETURNS TABLE (key text, value jsonb, source text, value_type text, description text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT d.key, coalesce(s.value, d.default_value),
           CASE WHEN s.value IS NULL THEN 'default' ELSE 'tenant' END,
           d.value_type, d.description
      FROM @extschema@.setting_definitions d
      LEFT JOIN @extschema@.tenant_settings s
        ON s.key = d.key AND s.tenant_id = (SELECT @extschema@.current_tenant())
     ORDER BY d.key
$fn$;

COMMENT ON FUNCTION @extschema@.settings() IS
'Every setting with its effective value for the current tenant and where that value comes from (tenant or default).';

CREATE OR REPLACE FUNCTION @extschema@.set_setting(key text, value jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
BEGIN
    INSERT INTO @extschema@.tenant_settings AS s (tenant_id, key, value)
    VALUES (tenant, set_setting.key, set_setting.value)
    ON CONFLICT ON CONSTRAINT tenant_settings_pkey DO UPDATE SET value = excluded.value;
    RETURN @extschema@.setting(key);
END
$fn$;

COMMENT ON FUNCTION @extschema@.set_setting(text, jsonb) IS
'Overrides a setting for the current tenant after validating the value; returns the effective value.';

CREATE OR REPLACE FUNCTION @extschema@.reset_setting(key text)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM @extschema@.setting(key);  -- unknown keys raise
    DELETE FROM @extschema@.tenant_settings s
     WHERE s.tenant_id = @extschema@.current_tenant() AND s.key = reset_setting.key;
    RETURN @extschema@.setting(key);
END
$fn$;

COMMENT ON FUNCTION @extschema@.reset_setting(text) IS
'Removes the current tenant''s override of a setting; returns the default now in effect.';

-- From sql/crypto.sql: every function (replaced), comment, and table marked for pg_dump.
COMMENT ON TABLE @extschema@.data_keys IS
'Per-tenant AES-256 data keys, each version wrapped (AES-256-GCM) by the master key named in master_key_id, with the tenant and version as associated data. The newest version wraps new subject keys; older ones stay for reading. custos.rewrap_data_keys moves them to a new master key.';

COMMENT ON TABLE @extschema@.subject_keys IS
'Per-subject AES-256 keys that seal a person''s fields in the ledger, wrapped by a tenant data key. short_id (random, unique in the tenant) names the key in the values it sealed (enc3.<short_id>.<ciphertext>). subject_ref is the subject''s pseudonym, the same for all its keys: encrypted events store the actor as subject:<subject_ref in base64url>. custos.forget_subject destroys the keys (wrapped and subject become NULL): what they sealed can no longer be read and the pseudonym names nobody, while the chain still verifies.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.data_keys', '');

SELECT pg_catalog.pg_extension_config_dump('@extschema@.subject_keys', '');

COMMENT ON FUNCTION @extschema@.rotate_data_key(uuid) IS
'Makes a new data key version for the tenant and retires its subjects'' current keys, so new values are sealed under fresh keys; values sealed before stay readable. Returns the new version.';

COMMENT ON FUNCTION @extschema@.rewrap_data_keys(uuid) IS
'Master-key rotation: rewraps the data keys of a tenant (NULL: every tenant) that custos.master_key_previous wrapped under custos.master_key, in one transaction. Returns how many were rewrapped, how many were already under the configured key, and its id. Superusers only.';

-- From sql/ledger.sql: every function (replaced), comment, and table marked for pg_dump.
COMMENT ON TABLE @extschema@.events IS
'The audit ledger. Append-only; each tenant''s rows form a SHA-256 hash chain (seq 1, 2, ...) computed at insert time. Clients insert tenant_id, occurred_at, actor, action, entity_type, entity_id, severity, details, ip_address, user_agent; custos fills the rest. See docs/ledger-format.md.';

COMMENT ON COLUMN @extschema@.events.seq IS 'Position in the tenant''s chain: 1, 2, 3 ... with no gap.';

COMMENT ON COLUMN @extschema@.events.actor IS 'Application user: as given, else custos.set_actor(), else the JWT sub claim, else the database role.';

COMMENT ON COLUMN @extschema@.events.db_role IS 'Database role that inserted the row (after SET ROLE; the caller of a SECURITY DEFINER function).';

COMMENT ON COLUMN @extschema@.events.prev_hash IS 'hash of the previous event of the tenant (seq - 1); for seq 1 the tenant''s genesis hash.';

COMMENT ON COLUMN @extschema@.events.hash IS 'SHA-256 over the canonical encoding of this row and prev_hash (format v1).';

CREATE OR REPLACE FUNCTION custos_internal.refuse_ledger_change() RETURNS trigger
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

CREATE OR REPLACE FUNCTION custos_internal.make_append_only(tbl regclass) RETURNS void
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

SELECT pg_catalog.pg_extension_config_dump('@extschema@.events', '');

COMMENT ON TABLE @extschema@.checkpoints IS
'Every checkpoint custos.checkpoint() signed. custos.verify_chain() checks the chain still reaches and agrees with them; keep the texts outside the database too, where a superuser cannot rewrite them.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.checkpoints', '');

CREATE OR REPLACE FUNCTION custos_internal.guard_ledger_ddl() RETURNS event_trigger
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

CREATE OR REPLACE FUNCTION custos_internal.guard_ledger_drop() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'custos_guard_ledger_drop';

COMMENT ON FUNCTION custos_internal.guard_ledger_drop() IS
'Event trigger function: refuses DROP EXTENSION custos, DROP SCHEMA custos and ALTER EXTENSION custos DROP unless a superuser set custos.allow_ledger_drop; firing for every DDL command, it also loads the hook that refuses drops cascading into the ledger.';

CREATE OR REPLACE FUNCTION @extschema@.set_actor(actor text) RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT set_config('custos.actor', coalesce(actor, ''), true) $fn$;

COMMENT ON FUNCTION @extschema@.set_actor(text) IS
'Names the application user for the rest of the transaction; ledger events record it as actor unless they name one.';

CREATE OR REPLACE FUNCTION @extschema@.record_event(
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

CREATE OR REPLACE FUNCTION @extschema@.record_events(events jsonb) RETURNS bigint
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

-- From sql/alerts.sql: every function (replaced), comment, and table marked for pg_dump.
COMMENT ON TABLE @extschema@.alerts IS
'Alerts raised by custos: a broken audit chain (source ledger.verify), later anomalies. Tenant-isolated.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.alerts', '');

SELECT pg_catalog.pg_extension_config_dump('@extschema@.alerts_id_seq', '');

CREATE OR REPLACE FUNCTION @extschema@.set_alert_status(alert_id bigint, status text, note text DEFAULT NULL)
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

-- From sql/capture.sql: every function (replaced), comment, and table marked for pg_dump.
CREATE OR REPLACE FUNCTION custos_internal.capture_truncate() RETURNS trigger
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

COMMENT ON FUNCTION custos_internal.capture_changes() IS
'AFTER ... FOR EACH STATEMENT trigger of tables tracked by custos.track_table: reads the statement''s transition tables and records each changed row (or group of rows) as an event in the row''s tenant.';

CREATE OR REPLACE FUNCTION @extschema@.track_table(tbl regclass, tenant_column name DEFAULT 'tenant_id', entity_type text DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION @extschema@.untrack_table(tbl regclass) RETURNS text
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

COMMENT ON VIEW @extschema@.tracked_tables IS 'Tables whose changes custos records in the audit ledger.';

-- From sql/protection.sql: every function (replaced), comment, and table marked for pg_dump.
CREATE OR REPLACE FUNCTION custos_internal.ledger_settings_check() RETURNS trigger
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

COMMENT ON FUNCTION custos_internal.require_master_key() IS
'Raises 55000 unless a usable master key is configured (custos.master_key_file, or custos.master_key in the session).';

COMMENT ON FUNCTION custos_internal.require_tenant_access(uuid) IS
'Raises 42501 unless the caller works in the given tenant (its current tenant); superusers work in any.';

COMMENT ON FUNCTION custos_internal.reveal(uuid, uuid, text, text) IS
'Internal: a stored event field as the tenant''s reader sees it (opened if sealed; NULL once its subject was forgotten). Used by custos'' logged read functions.';

CREATE OR REPLACE FUNCTION custos_internal.reveal_details(tenant uuid, event_id uuid, details jsonb) RETURNS jsonb
LANGUAGE c STABLE STRICT PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'custos_reveal_details';

COMMENT ON FUNCTION custos_internal.reveal_details(uuid, uuid, jsonb) IS
'Internal: details with sealed values opened (null where the subject was forgotten).';

COMMENT ON FUNCTION custos_internal.reveal_actor(uuid, text) IS
'Internal: the actor of an event as the tenant''s reader sees it (the subject''s name for a pseudonym, NULL once forgotten).';

COMMENT ON FUNCTION custos_internal.is_erased(uuid, text) IS 'Internal: whether a stored value is sealed under a destroyed key.';

COMMENT ON TABLE @extschema@.access_log IS
'Who read the audit ledger through custos'' functions: when, which function, with which filters, how many rows. Append-only, its own per-tenant SHA-256 chain (custos.verify_access_log).';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.access_log', '');

COMMENT ON FUNCTION custos_internal.log_access(uuid, text, jsonb, bigint) IS
'Internal: appends one read to the tenant''s access log (chained); called by custos'' read functions.';

COMMENT ON FUNCTION @extschema@.verify_access_log(uuid) IS
'Recomputes the tenant''s access-log chain: ok, rows checked, the first broken seq and why.';

COMMENT ON VIEW custos_internal.opened_events IS 'Internal: events with sealed values opened, behind custos.timeline, custos.event and the exports.';

CREATE OR REPLACE FUNCTION custos_internal.severity_rank(severity text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT array_position(ARRAY['info', 'low', 'medium', 'high', 'critical'], severity) $$;

COMMENT ON FUNCTION custos_internal.severity_rank(text) IS 'Order of a severity: info 1, low 2, medium 3, high 4, critical 5; NULL if unknown.';

CREATE OR REPLACE FUNCTION custos_internal.readable_events(tenant uuid, since timestamptz, until timestamptz, of_type text,
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

CREATE OR REPLACE FUNCTION @extschema@.timeline(since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION @extschema@.event(event_id uuid)
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

CREATE OR REPLACE FUNCTION @extschema@.export_events(format text DEFAULT 'jsonl', since timestamptz DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION custos_internal.csv_field(value text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN value IS NULL THEN '' ELSE '"' || replace(value, '"', '""') || '"' END $$;

COMMENT ON FUNCTION custos_internal.csv_field(text) IS 'A value as one RFC 4180 CSV field (quoted; NULL as empty).';

CREATE OR REPLACE FUNCTION @extschema@.export_subject(tenant uuid, subject text) RETURNS jsonb
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

CREATE OR REPLACE FUNCTION @extschema@.forget_subject(tenant uuid, subject text) RETURNS jsonb
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

COMMENT ON TABLE @extschema@.chain_anchors IS
'Where retention cut each tenant''s chain: events through through_seq were removed; anchor_hash is the hash of the last one, which the first remaining event links to. The retention event at event_seq records the same, inside the chain. Append-only.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.chain_anchors', '');

CREATE OR REPLACE FUNCTION custos_internal.retention_delete_check() RETURNS trigger
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

CREATE OR REPLACE FUNCTION @extschema@.apply_retention(tenant uuid)
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

-- From sql/dormant.sql: every function (replaced), comment, and table marked for pg_dump.
COMMENT ON TABLE @extschema@.identities IS
'Accounts of each tenant (from Entra ID, Okta, Google, the application itself ...), their activity and review state. Tenant-isolated. peer_score, risk_static, dormant_at, risk_key and threshold_days are maintained by custos.';

COMMENT ON COLUMN @extschema@.identities.status IS 'active, suspended, provisioned (provisioned but never activated), or deprovisioned.';

COMMENT ON COLUMN @extschema@.identities.dormant_at IS 'When the account becomes (or became) dormant: last activity (or creation, for never-active accounts) plus its threshold. NULL: never reported.';

COMMENT ON COLUMN @extschema@.identities.risk_key IS 'Clock-free ordering key: ordering by it is ordering by risk score at any moment.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.identities', '');

COMMENT ON FUNCTION custos_internal.identities_derive() IS
'BEFORE trigger of custos.identities: refuses future timestamps and computes threshold_days, dormant_at, risk_static and risk_key from the row and its tenant''s dormant.* settings.';

CREATE OR REPLACE FUNCTION @extschema@.refresh_peer_scores(tenant uuid DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t uuid := coalesce(tenant, @extschema@.require_tenant());
    n bigint;
BEGIN
    -- The accounts are joined only to the per-department counts (a few rows), never to themselves:
    -- the plan stays linear whatever the statistics say right after a bulk load.
    WITH counts AS (
        SELECT department, count(*) AS members,
               count(*) FILTER (WHERE dormant_at IS NULL OR dormant_at > now()) AS active
          FROM @extschema@.identities WHERE tenant_id = t AND department IS NOT NULL
         GROUP BY department
    ), dept AS (
        -- An account's peers are the other members: one fewer active peer if it is active itself.
        SELECT department,
               @extschema@.peer_score((active - 1)::float8 / greatest(members - 1, 1), members - 1) AS if_active,
               @extschema@.peer_score(active::float8 / greatest(members - 1, 1), members - 1) AS if_idle
          FROM counts
    )
    UPDATE @extschema@.identities i
       SET peer_score = CASE WHEN i.dormant_at IS NULL OR i.dormant_at > now() THEN d.if_active ELSE d.if_idle END
      FROM dept d
     WHERE i.tenant_id = t AND i.department = d.department
       AND i.peer_score IS DISTINCT FROM
           CASE WHEN i.dormant_at IS NULL OR i.dormant_at > now() THEN d.if_active ELSE d.if_idle END;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

COMMENT ON FUNCTION @extschema@.refresh_peer_scores(uuid) IS
'Recomputes how unusual each account''s inactivity is among its department (peer_score, in 0.2 steps) and returns how many rows changed. Run after bulk changes and daily; custos.upsert_identities runs it.';

CREATE OR REPLACE FUNCTION @extschema@.upsert_identities(identities jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
    bad text;
    n bigint;
BEGIN
    PERFORM custos_internal.check_json_batch(identities, 'identities',
        ARRAY['user_id', 'email', 'display_name', 'source', 'status', 'is_privileged', 'is_service_account',
              'mfa_enabled', 'has_valid_credentials', 'department', 'roles', 'created_at', 'last_active_at', 'attributes'],
        '[{"user_id": "u1", "email": "ana@example.com", "last_active_at": "2026-01-31T09:00:00Z"}]');
    SELECT format('element %s has no user_id', i - 1) INTO bad
      FROM jsonb_array_elements(identities) WITH ORDINALITY AS a(e, i)
     WHERE coalesce(e->>'user_id', '') = '' LIMIT 1;
    IF bad IS NULL THEN
        SELECT format('user_id "%s" appears more than once', e->>'user_id') INTO bad
          FROM jsonb_array_elements(identities) AS a(e) GROUP BY e->>'user_id' HAVING count(*) > 1 LIMIT 1;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('invalid identities: %s', bad);
    END IF;

    INSERT INTO @extschema@.identities AS i
           (tenant_id, user_id, email, display_name, source, status, is_privileged, is_service_account, mfa_enabled,
            has_valid_credentials, department, roles, created_at, last_active_at, last_active_source, attributes)
    SELECT tenant, r.user_id, r.email, r.display_name, coalesce(r.source, 'local'), coalesce(r.status, 'active'),
           coalesce(r.is_privileged, false), coalesce(r.is_service_account, false), coalesce(r.mfa_enabled, false),
           coalesce(r.has_valid_credentials, true), r.department, coalesce(r.roles, '{}'), coalesce(r.created_at, now()),
           r.last_active_at, CASE WHEN r.last_active_at IS NOT NULL THEN coalesce(r.source, 'local') END,
           coalesce(r.attributes, '{}')
      FROM jsonb_to_recordset(identities) AS r(user_id text, email text, display_name text, source text, status text,
           is_privileged boolean, is_service_account boolean, mfa_enabled boolean, has_valid_credentials boolean,
           department text, roles text[], created_at timestamptz, last_active_at timestamptz, attributes jsonb)
    ON CONFLICT ON CONSTRAINT identities_pkey DO UPDATE SET
           email = excluded.email, display_name = excluded.display_name, source = excluded.source,
           status = excluded.status, is_privileged = excluded.is_privileged,
           is_service_account = excluded.is_service_account, mfa_enabled = excluded.mfa_enabled,
           has_valid_credentials = excluded.has_valid_credentials, department = excluded.department,
           roles = excluded.roles, created_at = excluded.created_at,
           -- Activity only moves forward: an older sync must not make an account look idle.
           last_active_at = greatest(i.last_active_at, excluded.last_active_at),
           last_active_source = CASE WHEN excluded.last_active_at > i.last_active_at OR i.last_active_at IS NULL
                                     THEN excluded.last_active_source ELSE i.last_active_source END,
           attributes = excluded.attributes, updated_at = now();
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM @extschema@.refresh_peer_scores(tenant);
    RETURN n;
END
$fn$;

COMMENT ON FUNCTION @extschema@.upsert_identities(jsonb) IS
'Inserts or updates the current tenant''s accounts from a JSON array of objects (keys user_id, email, display_name, source, status, is_privileged, is_service_account, mfa_enabled, has_valid_credentials, department, roles, created_at, last_active_at, attributes), all or nothing; returns how many. last_active_at never moves backwards.';

CREATE OR REPLACE FUNCTION @extschema@.touch_activity(tenant uuid, user_id text, at timestamptz DEFAULT now(), source text DEFAULT 'api')
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    result timestamptz;
BEGIN
    UPDATE @extschema@.identities i
       SET last_active_at = greatest(i.last_active_at, touch_activity.at),
           last_active_source = CASE WHEN i.last_active_at IS NULL OR touch_activity.at > i.last_active_at
                                     THEN touch_activity.source ELSE i.last_active_source END,
           updated_at = now()
     WHERE i.tenant_id = touch_activity.tenant AND i.user_id = touch_activity.user_id
    RETURNING i.last_active_at INTO result;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('no identity "%s" in this tenant', user_id),
            HINT = 'create it with custos.upsert_identities first';
    END IF;
    RETURN result;
END
$fn$;

COMMENT ON FUNCTION @extschema@.touch_activity(uuid, text, timestamptz, text) IS
'Records activity of an account at a time (default now); its last_active_at only moves forward. Future times are refused.';

COMMENT ON TABLE @extschema@.activity_watermarks IS 'Up to which ledger seq each tenant''s events were folded into custos.identities.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.activity_watermarks', '');

CREATE OR REPLACE FUNCTION @extschema@.sync_activity_from_ledger(tenant uuid DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t uuid := coalesce(tenant, @extschema@.current_tenant());
    from_seq bigint;
    to_seq bigint;
    n bigint;
    actions text[];
    roles text[];
BEGIN
    IF t IS NULL OR (t IS DISTINCT FROM @extschema@.current_tenant()
                     AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = custos_internal.caller_role())) THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'activity can be synced for the current tenant only';
    END IF;
    -- A read-only transaction (a hot standby, a PostgREST GET) reads the report as the last fold
    -- left it: folding writes.
    IF current_setting('transaction_read_only')::boolean THEN
        RETURN 0;
    END IF;
    -- One fold at a time per tenant; a concurrent caller waits, then finds little left to do.
    -- (A lock SQL's advisory-lock functions cannot take: no role can block the report with it.)
    PERFORM custos_internal.lock_activity_fold(t);
    SELECT folded_seq INTO from_seq FROM @extschema@.activity_watermarks w WHERE w.tenant_id = t;
    from_seq := coalesce(from_seq, 0);
    -- Not max(seq): the watermark must not step over an event that is still becoming visible.
    to_seq := @extschema@.settled_seq(t, from_seq);
    IF to_seq IS NULL OR to_seq <= from_seq THEN
        RETURN 0;
    END IF;
    -- Actors of encrypted tenants are stored as pseudonyms: name them (forgotten ones match nobody).
    -- Only events the tenant trusts as activity count: a writer can name any actor, so an event
    -- counts only if its action is one of dormant.activity_actions and, when the tenant names
    -- them, it was written by one of dormant.activity_roles.
    actions := string_to_array(replace(@extschema@.tenant_setting(t, 'dormant.activity_actions') #>> '{}', ' ', ''), ',');
    roles := string_to_array(replace(@extschema@.tenant_setting(t, 'dormant.activity_roles') #>> '{}', ' ', ''), ',');
    WITH latest AS (
        SELECT custos_internal.reveal_actor(t, g.actor) AS actor, g.at
          FROM (SELECT e.actor, max(e.occurred_at) AS at
                  FROM @extschema@.events e
                 WHERE e.tenant_id = t AND e.seq > from_seq AND e.seq <= to_seq
                   AND ('*' = ANY (actions) OR e.action = ANY (actions))
                   AND ('*' = ANY (roles) OR e.db_role = ANY (roles))
                 GROUP BY e.actor) g
    ), matched AS (
        -- Two equi-joins, not one join on an OR of both keys: that could only be a nested loop,
        -- minutes for tens of thousands of actors and accounts.
        SELECT m.user_id, max(m.at) AS at
          FROM (SELECT i.user_id, l.at
                  FROM latest l JOIN @extschema@.identities i ON i.tenant_id = t AND i.user_id = l.actor
                UNION ALL
                SELECT i.user_id, l.at
                  FROM latest l JOIN @extschema@.identities i ON i.tenant_id = t AND lower(i.email) = lower(l.actor)) m
         GROUP BY m.user_id
    )
    UPDATE @extschema@.identities i
       SET last_active_at = m.at, last_active_source = 'ledger', updated_at = now()
      FROM matched m
     WHERE i.tenant_id = t AND i.user_id = m.user_id
       AND (i.last_active_at IS NULL OR i.last_active_at < m.at)
       AND m.at <= clock_timestamp();
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO @extschema@.activity_watermarks AS w (tenant_id, folded_seq) VALUES (t, to_seq)
    ON CONFLICT (tenant_id) DO UPDATE SET folded_seq = excluded.folded_seq, folded_at = now();
    RETURN n;
END
$fn$;

COMMENT ON FUNCTION @extschema@.sync_activity_from_ledger(uuid) IS
'Folds ledger events since the last fold into identities (actor matched to user_id or email; only the actions and roles the tenant trusts as activity, see dormant.activity_actions and dormant.activity_roles): their last_active_at advances. Returns how many identities moved; in a read-only transaction (a hot standby, a PostgREST GET) it folds nothing and returns 0. custos.dormant_users() calls it first.';

CREATE OR REPLACE FUNCTION custos_internal.dormant_row(i @extschema@.identities, cursor text)
RETURNS TABLE (
    user_id text, email text, display_name text, last_active_at timestamptz, days_inactive integer,
    never_active boolean, status text, risk_score real, risk_level text, reasons text[],
    review_decision text, cursor text
)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT (i).user_id, (i).email, (i).display_name, (i).last_active_at,
           CASE WHEN (i).last_active_at IS NOT NULL
                THEN floor(extract(epoch FROM now() - (i).last_active_at) / 86400)::int END,
           (i).last_active_at IS NULL, (i).status, x.risk_score, x.risk_level, x.reasons, (i).review_decision, $2
      FROM @extschema@.explain_risk((i).is_privileged, (i).last_active_at IS NULL, (i).is_service_account,
           (i).mfa_enabled, (i).has_valid_credentials, (i).status, (i).peer_score,
           extract(epoch FROM now() - coalesce((i).last_active_at, (i).created_at)) / 86400, (i).threshold_days) x
$fn$;

COMMENT ON FUNCTION custos_internal.dormant_row(@extschema@.identities, text) IS
'One row of custos.dormant_users: days_inactive, risk score, level and reasons computed at the moment of the call.';

CREATE OR REPLACE FUNCTION custos_internal.dormant_users_page(
    p_inactive_days integer, p_skip integer, p_lim integer, p_risk_level text, p_only_privileged boolean,
    p_order_by text, p_after text
) RETURNS TABLE (
    user_id text, email text, display_name text, last_active_at timestamptz, days_inactive integer,
    never_active boolean, status text, risk_score real, risk_level text, reasons text[],
    review_decision text, cursor text
)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.current_tenant();
    after_key double precision;
    after_ts timestamptz;
    after_user text;
BEGIN
    IF p_inactive_days IS NOT NULL AND p_inactive_days < 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('inactive_days must be 1 or more, not %s', p_inactive_days);
    END IF;
    IF p_skip IS NULL OR p_skip < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('skip must be 0 or more, not %s', p_skip);
    END IF;
    IF p_lim IS NULL OR p_lim < 1 OR p_lim > 1000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('lim must be between 1 and 1000, not %s', p_lim),
            HINT = 'page through larger results with skip or after';
    END IF;
    IF p_order_by IS NULL OR p_order_by NOT IN ('risk', 'days_inactive', 'user_id') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('unknown order_by "%s"', p_order_by),
            HINT = 'order_by is one of risk, days_inactive, user_id';
    END IF;
    IF p_risk_level IS NOT NULL AND p_risk_level NOT IN ('low', 'medium', 'high', 'critical') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('unknown risk_level "%s"', p_risk_level),
            HINT = 'risk_level is one of low, medium, high, critical';
    END IF;
    IF tenant IS NULL THEN
        RETURN;  -- fail closed: no tenant, no rows
    END IF;
    IF p_after IS NOT NULL THEN
        BEGIN
            CASE p_order_by
                WHEN 'risk' THEN after_key := split_part(p_after, '|', 1)::double precision;
                WHEN 'days_inactive' THEN after_ts := split_part(p_after, '|', 1)::timestamptz;
                ELSE NULL;
            END CASE;
            after_user := substr(p_after, strpos(p_after, '|') + 1);
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'after is not a cursor returned by custos.dormant_users',
                HINT = 'pass the cursor column of the last row of the previous page, with the same order_by';
        END;
        IF strpos(p_after, '|') = 0 THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'after is not a cursor returned by custos.dormant_users';
        END IF;
    END IF;
    -- Never a stale days_inactive: fold in ledger activity since the last report first.
    PERFORM @extschema@.sync_activity_from_ledger(tenant);

    IF p_inactive_days IS NOT NULL THEN
        -- Ad hoc threshold: scored and ordered for this call, without the stored order (and cursor).
        IF p_after IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'after cannot be combined with inactive_days',
                HINT = 'page an ad hoc threshold with skip';
        END IF;
        RETURN QUERY
        SELECT d.*, NULL::text AS cursor
          FROM (
            SELECT i.user_id, i.email, i.display_name, i.last_active_at,
                   CASE WHEN i.last_active_at IS NOT NULL
                        THEN floor(extract(epoch FROM now() - i.last_active_at) / 86400)::int END,
                   i.last_active_at IS NULL, i.status, x.risk_score, x.risk_level, x.reasons, i.review_decision
              FROM @extschema@.identities i
             CROSS JOIN LATERAL @extschema@.explain_risk(i.is_privileged, i.last_active_at IS NULL, i.is_service_account,
                   i.mfa_enabled, i.has_valid_credentials, i.status, i.peer_score,
                   extract(epoch FROM now() - coalesce(i.last_active_at, i.created_at)) / 86400, p_inactive_days) x
             WHERE i.tenant_id = tenant
               AND coalesce(i.last_active_at, i.created_at) <= now() - make_interval(days => p_inactive_days)
               AND (NOT p_only_privileged OR i.is_privileged)
               AND (p_risk_level IS NULL OR x.risk_level = p_risk_level)
             ORDER BY CASE WHEN p_order_by = 'risk' THEN -x.risk_score END,
                      CASE WHEN p_order_by = 'days_inactive' THEN coalesce(i.last_active_at, i.created_at) END,
                      i.user_id
             OFFSET p_skip LIMIT p_lim) d;
        RETURN;
    END IF;

    -- One static query per order, so that each walks its index (no sort of the whole tenant).
    -- The keys of the page come from an index-only scan; the rows are fetched for those keys only.
    IF p_order_by = 'risk' THEN
        RETURN QUERY
        SELECT r.* FROM (
            SELECT k.user_id, k.risk_key FROM @extschema@.identities k
             WHERE k.tenant_id = tenant AND k.dormant_at <= now()
               AND (NOT p_only_privileged OR k.is_privileged)
               AND (p_risk_level IS NULL
                    OR @extschema@.risk_level_of(k.risk_key + extract(epoch FROM now())::float8 / 8640000) = p_risk_level)
               AND (after_key IS NULL OR (k.risk_key, k.user_id) < (after_key, after_user))
             ORDER BY k.risk_key DESC, k.user_id DESC
             OFFSET p_skip LIMIT p_lim) page
        JOIN @extschema@.identities i ON i.tenant_id = tenant AND i.user_id = page.user_id,
        LATERAL custos_internal.dormant_row(i, page.risk_key::text || '|' || page.user_id) r
        ORDER BY page.risk_key DESC, page.user_id DESC;
    ELSIF p_order_by = 'days_inactive' THEN
        RETURN QUERY
        SELECT r.* FROM (
            SELECT k.user_id, k.dormant_at FROM @extschema@.identities k
             WHERE k.tenant_id = tenant AND k.dormant_at <= now()
               AND (NOT p_only_privileged OR k.is_privileged)
               AND (p_risk_level IS NULL
                    OR @extschema@.risk_level_of(k.risk_key + extract(epoch FROM now())::float8 / 8640000) = p_risk_level)
               AND (after_ts IS NULL OR (k.dormant_at, k.user_id) > (after_ts, after_user))
             ORDER BY k.dormant_at, k.user_id
             OFFSET p_skip LIMIT p_lim) page
        JOIN @extschema@.identities i ON i.tenant_id = tenant AND i.user_id = page.user_id,
        LATERAL custos_internal.dormant_row(i, page.dormant_at::text || '|' || page.user_id) r
        ORDER BY page.dormant_at, page.user_id;
    ELSE
        RETURN QUERY
        SELECT r.* FROM @extschema@.identities i,
        LATERAL custos_internal.dormant_row(i, '|' || i.user_id) r
         WHERE i.tenant_id = tenant AND i.dormant_at <= now()
           AND (NOT p_only_privileged OR i.is_privileged)
           AND (p_risk_level IS NULL
                OR @extschema@.risk_level_of(i.risk_key + extract(epoch FROM now())::float8 / 8640000) = p_risk_level)
           AND (after_user IS NULL OR i.user_id > after_user)
         ORDER BY i.user_id
        OFFSET p_skip LIMIT p_lim;
    END IF;
END
$fn$;

COMMENT ON FUNCTION custos_internal.dormant_users_page(integer, integer, integer, text, boolean, text, text) IS
'The body of custos.dormant_users (PL/pgSQL cannot have an argument and a result column both named risk_level).';

CREATE OR REPLACE FUNCTION @extschema@.dormant_users(
    inactive_days   integer DEFAULT NULL,
    skip            integer DEFAULT 0,
    lim             integer DEFAULT 50,
    risk_level      text DEFAULT NULL,
    only_privileged boolean DEFAULT false,
    order_by        text DEFAULT 'risk',
    after           text DEFAULT NULL
) RETURNS TABLE (
    user_id text, email text, display_name text, last_active_at timestamptz, days_inactive integer,
    never_active boolean, status text, risk_score real, risk_level text, reasons text[],
    review_decision text, cursor text
)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT * FROM custos_internal.dormant_users_page($1, $2, $3, $4, $5, $6, $7) $fn$;

COMMENT ON FUNCTION @extschema@.dormant_users(integer, integer, integer, text, boolean, text, text) IS
'Dormant accounts of the current tenant, riskiest first (order_by risk, days_inactive or user_id), lim rows (1 to 1000) after skip rows or after a cursor from the previous page (stable under concurrent writes). Each row: days_inactive (whole days, NULL when never active), risk_score 0..1, risk_level and the reasons behind it. inactive_days overrides the tenant''s thresholds for this call.';

CREATE OR REPLACE FUNCTION @extschema@.dormant_summary()
RETURNS TABLE (dimension text, value text, identities bigint, dormant bigint, privileged_dormant bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET max_parallel_workers_per_gather = 0
AS $fn$
    -- One pass: each account's level (NULL when not dormant) from its raw score against bounds
    -- computed once, counted per (source, department, level, privileged); the few resulting groups
    -- are rolled up into the dimensions.
    WITH base AS (
        SELECT i.source, i.department, i.is_privileged AS priv,
               -- 0 low .. 3 critical, NULL when not dormant (small integers hash faster than text)
               CASE WHEN i.dormant_at > now() OR i.dormant_at IS NULL THEN NULL
                    WHEN i.risk_key + (SELECT extract(epoch FROM now())::float8 / 8640000) >= (SELECT critical FROM @extschema@.risk_level_bounds()) THEN 3
                    WHEN i.risk_key + (SELECT extract(epoch FROM now())::float8 / 8640000) >= (SELECT high FROM @extschema@.risk_level_bounds()) THEN 2
                    WHEN i.risk_key + (SELECT extract(epoch FROM now())::float8 / 8640000) >= (SELECT medium FROM @extschema@.risk_level_bounds()) THEN 1
                    ELSE 0 END AS level,
               count(*) AS n
          FROM @extschema@.identities i
         WHERE i.tenant_id = (SELECT @extschema@.current_tenant())  -- once, not per row
         GROUP BY 1, 2, 3, 4
    )
    SELECT 'total', 'all', sum(n)::bigint, (sum(n) FILTER (WHERE level IS NOT NULL))::bigint,
           coalesce(sum(n) FILTER (WHERE level IS NOT NULL AND priv), 0)::bigint
      FROM base HAVING count(*) > 0
    UNION ALL
    SELECT * FROM (
        SELECT 'risk_level', (ARRAY['low', 'medium', 'high', 'critical'])[level + 1], sum(n)::bigint, sum(n)::bigint,
               coalesce(sum(n) FILTER (WHERE priv), 0)::bigint
          FROM base WHERE level IS NOT NULL GROUP BY level ORDER BY level) levels
    UNION ALL
    SELECT * FROM (
        SELECT 'source', source, sum(n)::bigint, coalesce(sum(n) FILTER (WHERE level IS NOT NULL), 0)::bigint,
               coalesce(sum(n) FILTER (WHERE level IS NOT NULL AND priv), 0)::bigint
          FROM base GROUP BY source ORDER BY source) sources
    UNION ALL
    SELECT * FROM (
        SELECT 'department', coalesce(department, '(none)'), sum(n)::bigint, coalesce(sum(n) FILTER (WHERE level IS NOT NULL), 0)::bigint,
               coalesce(sum(n) FILTER (WHERE level IS NOT NULL AND priv), 0)::bigint
          FROM base GROUP BY department ORDER BY department NULLS LAST) departments
$fn$;

COMMENT ON FUNCTION @extschema@.dormant_summary() IS
'Counts of the current tenant''s accounts: in total, by risk level of the dormant ones, by source and by department, each with how many are dormant and how many of those are privileged.';

CREATE OR REPLACE FUNCTION @extschema@.mark_reviewed(user_id text, decision text, note text DEFAULT NULL)
RETURNS TABLE (reviewed_user_id text, review_decision text, reviewed_at timestamptz, reviewed_by text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.require_tenant();
    who text := @extschema@.current_actor();
BEGIN
    IF decision IS NULL OR decision NOT IN ('keep', 'disable', 'delete', 'false_positive') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('unknown decision "%s"', decision),
            HINT = 'decision is one of keep, disable, delete, false_positive';
    END IF;
    UPDATE @extschema@.identities i
       SET review_decision = decision, review_note = note, reviewed_at = now(), reviewed_by = who
     WHERE i.tenant_id = tenant AND i.user_id = mark_reviewed.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('no identity "%s" in this tenant', mark_reviewed.user_id);
    END IF;
    -- The decision is part of the audit trail. The note stays on the identity (erased with it);
    -- the append-only ledger keeps only its SHA-256, which proves it without repeating it.
    INSERT INTO @extschema@.events (tenant_id, actor, action, entity_type, entity_id, severity, details)
    VALUES (tenant, who, 'identity.review', 'identity', mark_reviewed.user_id,
            CASE decision WHEN 'keep' THEN 'info' WHEN 'false_positive' THEN 'info' ELSE 'medium' END,
            jsonb_strip_nulls(jsonb_build_object('decision', decision,
                'note_sha256', encode(sha256(convert_to(note, 'UTF8')), 'hex'))));
    RETURN QUERY SELECT i.user_id, i.review_decision, i.reviewed_at, i.reviewed_by
                   FROM @extschema@.identities i WHERE i.tenant_id = tenant AND i.user_id = mark_reviewed.user_id;
END
$fn$;

COMMENT ON FUNCTION @extschema@.mark_reviewed(text, text, text) IS
'Records an analyst''s decision on an account (keep, disable, delete, false_positive) with a note, on the identity and as an identity.review event in the audit ledger.';

CREATE OR REPLACE FUNCTION custos_internal.dormant_settings_changed() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t uuid := coalesce(NEW.tenant_id, OLD.tenant_id);
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.tenant_settings', 'custos.dormant_settings_changed');
    IF coalesce(NEW.key, OLD.key) LIKE 'dormant.%' THEN
        UPDATE @extschema@.identities SET updated_at = updated_at WHERE tenant_id = t;
    END IF;
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION @extschema@.explain_risk(boolean, boolean, boolean, boolean, boolean, text, real, double precision, integer) IS
'The dormant risk score of an account, its level and the reasons (each with its contribution); see crates/core/src/dormant/risk.rs for the formula.';

COMMENT ON FUNCTION @extschema@.risk_level_of(double precision) IS 'Risk level (low, medium, high, critical) of a raw risk score.';

COMMENT ON FUNCTION @extschema@.risk_level_bounds() IS 'Raw scores at which medium, high and critical begin (the level bounds of the risk score, as raw values).';

COMMENT ON FUNCTION @extschema@.peer_score(double precision, bigint) IS 'Peer contribution (0 to 0.6 in 0.2 steps) from the share of department peers who are active.';

-- Settings 0.2.0 adds or describes anew.
INSERT INTO @extschema@.setting_definitions (key, value_type, default_value, min_value, max_value, description) VALUES
    ('ledger.subject_entity_types', 'text', '"user,identity,person,account,customer,employee,member"', NULL, NULL,
     'Comma-separated entity types whose entity_id names a person: with ledger.encrypt on, that entity_id is sealed with the person''s key, so that forgetting them erases it.'),
    ('dormant.activity_actions', 'text', '"login,user.login,auth.login,session.start"', NULL, NULL,
     'Comma-separated ledger actions that count as an account''s activity (its actor signed in); * counts every action. A writer can name any actor, so keep this to sign-in events.'),
    ('dormant.activity_roles', 'text', '"*"', NULL, NULL,
     'Comma-separated database roles whose events count as activity (* any). Name the roles of your sign-in path to make ledger activity unforgeable by other writers.');
UPDATE @extschema@.setting_definitions
   SET description = 'Comma-separated details keys sealed when ledger.encrypt is on, at any depth: a top-level value that holds one deeper is sealed whole.'
 WHERE key = 'ledger.encrypted_detail_keys';

-- BEGIN anomaly (new in 0.2.0): its Rust functions, then sql/anomaly.sql as it is.
CREATE  FUNCTION "anomaly_scores_on_insert"(
	"tenant" uuid /* pgrx :: Uuid */
) RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'anomaly_scores_on_insert_wrapper';

CREATE  FUNCTION "event_value_key"(
	"tenant" uuid, /* pgrx :: Uuid */
	"event_id" uuid, /* pgrx :: Uuid */
	"field" TEXT, /* & str */
	"stored" TEXT /* Option < & str > */
) RETURNS bigint /* Option < i64 > */
STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'event_value_key_wrapper';

CREATE  FUNCTION "if_assess"(
	"tenant" uuid, /* pgrx :: Uuid */
	"name" TEXT, /* & str */
	"features" double precision[], /* pgrx :: Array < f64 > */
	"threshold" double precision, /* f64 */
	"top" INT /* i32 */
) RETURNS TABLE (
	"score" double precision,  /* f64 */
	"confidence" double precision,  /* f64 */
	"explanation" jsonb  /* pgrx :: JsonB */
)
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'if_assess_wrapper';

CREATE  FUNCTION "if_explain"(
	"name" TEXT, /* Option < & str > */
	"features" double precision[], /* :: std :: option :: Option < pgrx :: Array < f64 > > */
	"top" INT DEFAULT 3 /* Option < i32 > */
) RETURNS jsonb /* pgrx :: JsonB */
STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'if_explain_wrapper';

CREATE  FUNCTION "if_score"(
	"name" TEXT, /* Option < & str > */
	"features" double precision[] /* :: std :: option :: Option < pgrx :: Array < f64 > > */
) RETURNS double precision /* f64 */
STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'if_score_wrapper';

CREATE  FUNCTION "if_train"(
	"name" TEXT, /* Option < & str > */
	"query" TEXT, /* Option < & str > */
	"n_trees" INT DEFAULT 100, /* Option < i32 > */
	"sample_size" INT DEFAULT 256, /* Option < i32 > */
	"seed" bigint DEFAULT NULL, /* Option < i64 > */
	"extended" bool DEFAULT false /* Option < bool > */
) RETURNS INT /* i32 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'if_train_wrapper';

CREATE  FUNCTION "invalidate_model_cache"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'invalidate_model_cache_wrapper';

CREATE  FUNCTION "train_event_model"(
	"query" TEXT, /* & str */
	"n_trees" INT, /* i32 */
	"sample_size" INT, /* i32 */
	"seed" bigint /* Option < i64 > */
) RETURNS INT /* i32 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'train_event_model_wrapper';

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
-- END anomaly

-- BEGIN ai (new in 0.2.0): its Rust functions, then sql/ai.sql as it is.
CREATE  FUNCTION "check_ai_task"(
	"template" TEXT, /* & str */
	"answer_schema" jsonb /* JsonB */
) RETURNS void
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_ai_task_wrapper';

CREATE  FUNCTION "check_redaction_pattern"(
	"pattern" TEXT /* & str */
) RETURNS void
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_redaction_pattern_wrapper';

CREATE  FUNCTION "complete_json"(
	"task" TEXT, /* Option < & str > */
	"input" jsonb /* Option < JsonB > */
) RETURNS jsonb /* JsonB */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'complete_json_wrapper';

CREATE  FUNCTION "embed_texts"(
	"inputs" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"model" TEXT /* Option < & str > */
) RETURNS SETOF real[] /* Vec < f32 > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'embed_texts_wrapper';

CREATE  FUNCTION "redact"(
	"input" TEXT /* Option < & str > */
) RETURNS TEXT /* String */
STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'redact_wrapper';

CREATE  FUNCTION "run_ai_task"(
	"task" TEXT, /* Option < & str > */
	"input" jsonb /* Option < JsonB > */
) RETURNS TABLE (
	"answer" jsonb,  /* JsonB */
	"provider" TEXT,  /* String */
	"model" TEXT,  /* String */
	"prompt_version" INT,  /* i32 */
	"fallback" bool  /* bool */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'run_ai_task_wrapper';

-- AI (src/ai/): PII redaction before any text leaves the database, embeddings, and validated JSON
-- answers of registered tasks, from the built-in offline models (the default), Amazon Bedrock or
-- OpenAI-compatible servers; budgets, breakers and a log of every call.

ALTER FUNCTION @extschema@.embed_texts(text[], text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.check_redaction_pattern(text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.check_ai_task(text, jsonb) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.run_ai_task(text, jsonb) SET SCHEMA custos_internal;

INSERT INTO @extschema@.setting_definitions (key, value_type, default_value, min_value, max_value, allowed_values, description) VALUES
    ('ai.provider', 'text', '"local"', NULL, NULL, ARRAY['local', 'bedrock', 'openai'],
     'Who computes embeddings and answers: local, the built-in offline models (no network; lexical similarity and rule-based answers); bedrock, Amazon Bedrock; openai, an OpenAI-compatible server (OpenAI, Ollama, vLLM). Models named local-* are always computed locally.'),
    ('ai.embedding_model', 'text', '"local-lexical-384"', NULL, NULL, NULL,
     'Embedding model when custos.embed is given none: local-lexical-256 to -1536 (built in; the number is the dimensions), amazon.titan-embed-text-v2:0 or amazon.titan-embed-text-v1 (bedrock), or the OpenAI-compatible server''s model name.'),
    ('ai.embedding_dimensions', 'integer', '0', 0, 4096, NULL,
     'Dimensions asked of a remote embedding model: 0 for the model''s own (Titan v2: 1024; 512 and 256 also), else that many (OpenAI text-embedding-3 models shorten on request).'),
    ('ai.chat_model', 'text', '"local-rules"', NULL, NULL, NULL,
     'Model answering custos.complete_json tasks that name none: local-rules (built in, fills the schema by rules), a Claude model on Bedrock (anthropic.claude-3-haiku-20240307-v1:0), or the OpenAI-compatible server''s model name.'),
    ('ai.region', 'text', '"us-east-1"', NULL, NULL, NULL,
     'AWS region of Amazon Bedrock (bedrock-runtime.<region>.amazonaws.com), also the region SigV4 signatures name.'),
    ('ai.endpoint', 'text', '""', NULL, NULL, NULL,
     'Base URL replacing the provider''s own (a VPC endpoint, a proxy, a local server); empty for the provider''s own. It must be listed by a superuser in custos.ai_allowed_endpoints.'),
    ('ai.timeout_ms', 'integer', '15000', 100, 600000, NULL,
     'Longest wait for a provider call, retries and their backoff included; never beyond what is left of statement_timeout.'),
    ('ai.max_retries', 'integer', '2', 0, 2, NULL,
     'Retries of a call that failed transiently (throttling, a model not ready, 500, 502, 503, 504, timeouts), with exponential backoff and full jitter; Retry-After is honoured.'),
    ('ai.breaker_failures', 'integer', '5', 1, 100, NULL,
     'Failed calls in a row (retries spent) after which the circuit breaker of the provider opens for this tenant.'),
    ('ai.breaker_cool_down_s', 'integer', '30', 1, 3600, NULL,
     'Seconds an open circuit breaker refuses calls before it lets one probe through.'),
    ('ai.monthly_token_budget', 'integer', '2000000', 0, 1000000000000, NULL,
     'Tokens (input and output) the tenant''s remote calls may use per calendar month (UTC); 0 for no limit. Calls in flight hold their estimate.'),
    ('ai.monthly_budget_usd', 'number', '20', 0, 1000000, NULL,
     'US dollars the tenant''s remote calls may cost per calendar month (UTC), priced by custos.ai_model_prices; 0 for no limit.');

------------------------------------------------------------------------------------------------
-- Redaction
------------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.ai_redaction_patterns (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid NOT NULL DEFAULT @extschema@.current_tenant(),
    pattern    text NOT NULL CHECK (length(pattern) BETWEEN 1 AND 1000),
    note       text,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.ai_redaction_patterns IS
'A tenant''s own redaction patterns (regular expressions, Rust regex syntax, matched in linear time), applied by custos.redact and before any text leaves the database, besides the built-in kinds. Tenant-isolated.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.ai_redaction_patterns');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_redaction_patterns', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_redaction_patterns_id_seq', '');
GRANT SELECT ON @extschema@.ai_redaction_patterns TO custos_reader;
GRANT INSERT, UPDATE, DELETE ON @extschema@.ai_redaction_patterns TO custos_admin;

CREATE FUNCTION custos_internal.ai_redaction_patterns_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.ai_redaction_patterns', 'custos.ai_redaction_patterns_check');
    PERFORM custos_internal.check_redaction_pattern(NEW.pattern);
    RETURN NEW;
END
$fn$;
COMMENT ON FUNCTION custos_internal.ai_redaction_patterns_check() IS
'BEFORE trigger of custos.ai_redaction_patterns: refuses a pattern that does not compile (22023).';
CREATE TRIGGER check_pattern BEFORE INSERT OR UPDATE ON @extschema@.ai_redaction_patterns
    FOR EACH ROW EXECUTE FUNCTION custos_internal.ai_redaction_patterns_check();
COMMENT ON FUNCTION custos_internal.check_redaction_pattern(text) IS
'Internal: raises 22023 with the reason unless the pattern compiles.';

COMMENT ON FUNCTION @extschema@.redact(text) IS
'The text with its PII replaced by placeholders stable within the call (<EMAIL_1>, <PHONE_1>, ...): e-mail addresses, phone numbers, IPv4 and IPv6 addresses, payment cards (Luhn-checked), IBANs (mod-97), US SSNs, AWS keys, JWTs, bearer tokens and common API keys, the tenant''s own patterns (custos.ai_redaction_patterns) and the user ids of its identities. Version numbers, dates, order ids, UUIDs, hashes, ports and amounts survive. Applied to every text custos embeds or sends out.';

------------------------------------------------------------------------------------------------
-- Prices, calls and breakers
------------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.ai_prices (
    provider          text NOT NULL CHECK (provider IN ('bedrock', 'openai')),
    model             text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    usd_per_1k_input  numeric(12, 8) NOT NULL CHECK (usd_per_1k_input >= 0),
    usd_per_1k_output numeric(12, 8) NOT NULL CHECK (usd_per_1k_output >= 0),
    PRIMARY KEY (provider, model)
);
COMMENT ON TABLE @extschema@.ai_prices IS
'Prices of remote models, in US dollars per 1,000 tokens, that replace or extend custos'' built-in list (see custos.ai_model_prices). Server-wide; superusers edit it.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_prices', '');
GRANT SELECT ON @extschema@.ai_prices TO custos_reader;

CREATE VIEW @extschema@.ai_model_prices AS
    SELECT provider, model, usd_per_1k_input, usd_per_1k_output, true AS edited
      FROM @extschema@.ai_prices
    UNION ALL
    SELECT b.provider, b.model, b.usd_per_1k_input, b.usd_per_1k_output, false
      FROM (VALUES
        ('bedrock', 'amazon.titan-embed-text-v1', 0.0001::numeric, 0::numeric),
        ('bedrock', 'amazon.titan-embed-text-v2:0', 0.00002, 0),
        ('bedrock', 'anthropic.claude-3-haiku-20240307-v1:0', 0.00025, 0.00125),
        ('openai', 'text-embedding-3-small', 0.00002, 0),
        ('openai', 'text-embedding-3-large', 0.00013, 0),
        ('openai', 'gpt-4o-mini', 0.00015, 0.0006)
      ) AS b (provider, model, usd_per_1k_input, usd_per_1k_output)
     WHERE NOT EXISTS (SELECT 1 FROM @extschema@.ai_prices p WHERE p.provider = b.provider AND p.model = b.model);
COMMENT ON VIEW @extschema@.ai_model_prices IS
'The price custos charges each remote model''s calls to the tenant''s money budget: custos.ai_prices where a superuser set one (edited), else the built-in on-demand list price (us-east-1, USD per 1,000 tokens). A model without a price cannot be called while the tenant has a money budget.';
GRANT SELECT ON @extschema@.ai_model_prices TO custos_reader;

CREATE TABLE @extschema@.ai_calls (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid NOT NULL,
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    provider       text NOT NULL,
    model          text NOT NULL,
    operation      text NOT NULL CHECK (operation IN ('embed', 'complete')),
    task           text,
    prompt_version integer,
    tokens_in      bigint NOT NULL DEFAULT 0,
    tokens_out     bigint NOT NULL DEFAULT 0,
    cost_micros    bigint NOT NULL DEFAULT 0,
    cost_usd       numeric GENERATED ALWAYS AS (cost_micros / 1000000.0) STORED,
    latency_ms     double precision NOT NULL DEFAULT 0,
    attempts       integer NOT NULL DEFAULT 0,
    outcome        text NOT NULL CHECK (outcome IN ('ok', 'fallback')),
    error          text,
    prompt_hash    text NOT NULL,
    excerpt        text NOT NULL
);
CREATE INDEX ai_calls_tenant_at ON @extschema@.ai_calls (tenant_id, at);
COMMENT ON TABLE @extschema@.ai_calls IS
'One row per remote AI call that completed: embeddings and custos.complete_json answers from Bedrock or an OpenAI-compatible server (the local models are pure computation in the database: neither billed nor logged). Outcome ok (the model''s valid answer) or fallback (the rule-based answer after an invalid answer twice or an unavailable provider; error says why). prompt_hash is the SHA-256 of what was sent, excerpt its first 200 characters: both redacted, never the raw text. A call whose transaction rolls back leaves no row, but still counts against the budget while the server runs. Each row appends an ai.call event to the tenant''s ledger when its transaction commits. Tenant-isolated; written by custos only.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.ai_calls');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_calls', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_calls_id_seq', '');
GRANT SELECT ON @extschema@.ai_calls TO custos_reader;

-- At commit, after every provider call of the transaction has returned: appending takes the
-- tenant's chain lock, which no provider call may be made under.
CREATE FUNCTION custos_internal.ai_call_to_ledger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.ai_calls', 'custos.ai_call_to_ledger');
    INSERT INTO @extschema@.events (tenant_id, action, entity_type, entity_id, severity, details)
    VALUES (NEW.tenant_id, 'ai.call', 'ai_call', NEW.id::text, 'info',
            jsonb_build_object('task', NEW.task, 'prompt_version', NEW.prompt_version,
                               'operation', NEW.operation, 'provider', NEW.provider, 'model', NEW.model,
                               'prompt_hash', NEW.prompt_hash, 'tokens_in', NEW.tokens_in,
                               'tokens_out', NEW.tokens_out, 'cost_micros', NEW.cost_micros,
                               'outcome', NEW.outcome));
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION custos_internal.ai_call_to_ledger() IS
'Deferred trigger of custos.ai_calls: appends the call''s ai.call event (task, provider, model, prompt hash, tokens, cost, outcome) to the tenant''s ledger at commit.';
CREATE CONSTRAINT TRIGGER zz_ai_call_to_ledger AFTER INSERT ON @extschema@.ai_calls
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION custos_internal.ai_call_to_ledger();

------------------------------------------------------------------------------------------------
-- Tasks
------------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.ai_tasks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid,
    name            text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    version         integer NOT NULL CHECK (version > 0),
    system_prompt   text NOT NULL CHECK (length(system_prompt) BETWEEN 1 AND 20000),
    prompt_template text NOT NULL CHECK (length(prompt_template) BETWEEN 1 AND 20000),
    answer_schema   jsonb NOT NULL CHECK (octet_length(answer_schema::text) <= 65536),
    model           text,
    max_tokens      integer NOT NULL DEFAULT 1024 CHECK (max_tokens BETWEEN 1 AND 8192),
    temperature     double precision NOT NULL DEFAULT 0 CHECK (temperature BETWEEN 0 AND 1),
    active          boolean NOT NULL DEFAULT true,
    builtin         boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text NOT NULL DEFAULT session_user,
    CONSTRAINT ai_tasks_version UNIQUE NULLS NOT DISTINCT (tenant_id, name, version)
);
CREATE UNIQUE INDEX ai_tasks_one_active ON @extschema@.ai_tasks (tenant_id, name) NULLS NOT DISTINCT WHERE active;
COMMENT ON TABLE @extschema@.ai_tasks IS
'Tasks custos.complete_json runs, one row per version: a system prompt, a template whose {{input}} takes the input as JSON, the JSON Schema every answer must satisfy, a model (NULL: the tenant''s ai.chat_model) and limits. tenant_id NULL marks a shared task (builtin ones come with custos); a tenant''s own active version of a name comes first. Every call records the task''s name and version in custos.ai_calls.';
ALTER TABLE @extschema@.ai_tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.ai_tasks FORCE ROW LEVEL SECURITY;
CREATE POLICY custos_tenant_access ON @extschema@.ai_tasks AS PERMISSIVE FOR ALL
    USING (tenant_id = (SELECT @extschema@.current_tenant())
           OR (tenant_id IS NULL AND (SELECT @extschema@.current_tenant()) IS NOT NULL))
    WITH CHECK (tenant_id = (SELECT @extschema@.current_tenant()));
CREATE POLICY custos_tenant_isolation ON @extschema@.ai_tasks AS RESTRICTIVE FOR ALL
    USING (tenant_id = (SELECT @extschema@.current_tenant())
           OR (tenant_id IS NULL AND (SELECT @extschema@.current_tenant()) IS NOT NULL))
    WITH CHECK (tenant_id = (SELECT @extschema@.current_tenant()));
-- Built-in tasks come back with CREATE EXTENSION; only what users registered is dumped.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_tasks', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_tasks_id_seq', '');
GRANT SELECT ON @extschema@.ai_tasks TO custos_reader;
GRANT INSERT, UPDATE (active) ON @extschema@.ai_tasks TO custos_admin;

CREATE FUNCTION custos_internal.ai_tasks_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.ai_tasks', 'custos.ai_tasks_check');
    IF TG_OP = 'UPDATE' AND (NEW.system_prompt, NEW.prompt_template, NEW.answer_schema, NEW.model, NEW.max_tokens, NEW.temperature, NEW.name, NEW.version, NEW.tenant_id)
            IS DISTINCT FROM (OLD.system_prompt, OLD.prompt_template, OLD.answer_schema, OLD.model, OLD.max_tokens, OLD.temperature, OLD.name, OLD.version, OLD.tenant_id) THEN
        RAISE EXCEPTION 'a version of an AI task cannot change'
            USING ERRCODE = '55000', HINT = 'register a new version with custos.register_ai_task; calls record the version they ran';
    END IF;
    PERFORM custos_internal.check_ai_task(NEW.prompt_template, NEW.answer_schema);
    RETURN NEW;
END
$fn$;
COMMENT ON FUNCTION custos_internal.ai_tasks_check() IS
'BEFORE trigger of custos.ai_tasks: a version never changes (only active may), and its template and schema must pass custos_internal.check_ai_task.';
CREATE TRIGGER check_task BEFORE INSERT OR UPDATE ON @extschema@.ai_tasks
    FOR EACH ROW EXECUTE FUNCTION custos_internal.ai_tasks_check();
COMMENT ON FUNCTION custos_internal.check_ai_task(text, jsonb) IS
'Internal: raises 22023 unless the template contains {{input}} and the answer schema is a self-contained JSON Schema of an object that the rule-based fallback can fill.';

CREATE FUNCTION @extschema@.register_ai_task(
    name text, system_prompt text, prompt_template text, answer_schema jsonb,
    model text DEFAULT NULL, max_tokens integer DEFAULT 1024, temperature double precision DEFAULT 0)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant uuid := @extschema@.current_tenant();
    next_version integer;
BEGIN
    IF tenant IS NULL AND NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'registering an AI task needs a tenant'
            USING ERRCODE = '42501', HINT = 'call custos.set_tenant(uuid) first; superusers without a tenant register shared tasks';
    END IF;
    SELECT coalesce(max(t.version), 0) + 1 INTO next_version
      FROM @extschema@.ai_tasks t WHERE t.tenant_id IS NOT DISTINCT FROM tenant AND t.name = register_ai_task.name;
    UPDATE @extschema@.ai_tasks t SET active = false
     WHERE t.tenant_id IS NOT DISTINCT FROM tenant AND t.name = register_ai_task.name AND t.active;
    INSERT INTO @extschema@.ai_tasks (tenant_id, name, version, system_prompt, prompt_template, answer_schema, model, max_tokens, temperature)
    VALUES (tenant, register_ai_task.name, next_version, register_ai_task.system_prompt, register_ai_task.prompt_template,
            register_ai_task.answer_schema, register_ai_task.model, register_ai_task.max_tokens, register_ai_task.temperature);
    RETURN next_version;
END
$fn$;
COMMENT ON FUNCTION @extschema@.register_ai_task(text, text, text, jsonb, text, integer, double precision) IS
'Registers a new version of the tenant''s AI task (a superuser without a tenant: a shared one) and makes it the active one; returns the version. The template must contain {{input}}; the answer schema must be a self-contained JSON Schema of an object that the rule-based fallback can fill (22023 otherwise).';

INSERT INTO @extschema@.ai_tasks (tenant_id, name, version, builtin, system_prompt, prompt_template, answer_schema) VALUES
(NULL, 'summarize_events', 1, true,
 'You are a security analyst. Summarise the audit events you are given for an auditor: what happened, who acted, and what stands out. Be factual; do not guess beyond the events.',
 E'Audit events (JSON):\n{{input}}',
 '{"type": "object", "additionalProperties": false,
   "required": ["summary", "risk", "key_terms", "event_count"],
   "properties": {
     "summary": {"type": "string", "minLength": 1, "maxLength": 800},
     "risk": {"enum": ["none", "low", "medium", "high", "critical"], "default": "low"},
     "key_terms": {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 5},
     "event_count": {"type": "integer", "minimum": 0},
     "follow_up": {"type": "string", "maxLength": 400}}}'),
(NULL, 'triage_alert', 1, true,
 'You triage security alerts of an audit system. Judge how severe the alert is, whether it is likely benign, and what to check next.',
 E'Alert (JSON):\n{{input}}',
 '{"type": "object", "additionalProperties": false,
   "required": ["summary", "severity", "likely_benign", "next_steps"],
   "properties": {
     "summary": {"type": "string", "minLength": 1, "maxLength": 500},
     "severity": {"enum": ["low", "medium", "high", "critical"], "default": "medium"},
     "likely_benign": {"type": "boolean"},
     "next_steps": {"type": "array", "items": {"type": "string", "maxLength": 300}, "minItems": 1, "maxItems": 3}}}');

------------------------------------------------------------------------------------------------
-- Embeddings and answers
------------------------------------------------------------------------------------------------
COMMENT ON FUNCTION custos_internal.embed_texts(text[], text) IS
'Internal: each text redacted, then embedded by the model (default: the tenant''s ai.embedding_model), in order, as real[].';

-- The real[] result becomes a vector through pgvector's assignment cast (found by type, not by
-- name: these functions pin their search_path).
CREATE FUNCTION @extschema@.embed(input text, model text DEFAULT NULL) RETURNS vector
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT e FROM custos_internal.embed_texts(ARRAY[input], model) e $fn$;
COMMENT ON FUNCTION @extschema@.embed(text, text) IS
'The embedding of a text (redacted first) by model, else the tenant''s ai.embedding_model. The built-in local-lexical-<dims> models need no network and capture lexical similarity only (shared words, word pairs and parts of words; not synonyms); Titan (bedrock) and OpenAI-compatible models are called out, budgeted and logged in custos.ai_calls. NULL, text without a word, text over 1 MiB and unknown models are refused.';

CREATE FUNCTION @extschema@.embed_batch(inputs text[], model text DEFAULT NULL) RETURNS SETOF vector
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT e FROM custos_internal.embed_texts(inputs, model) e $fn$;
COMMENT ON FUNCTION @extschema@.embed_batch(text[], text) IS
'The embeddings of several texts, in their order, as custos.embed computes them; one request per batch for providers that take batches (OpenAI-compatible), one per text for Titan.';

COMMENT ON FUNCTION @extschema@.complete_json(text, jsonb) IS
'Runs the AI task named task (custos.ai_tasks: the tenant''s own, else the shared one) on input and returns its answer, valid against the task''s JSON Schema. The prompt is redacted before it leaves the database and placeholders in the answer are mapped back. An invalid answer is repaired once; if it is still invalid, or the provider is unavailable (retries spent, breaker open), the rule-based answer is returned instead, with a NOTICE and outcome fallback in custos.ai_calls. Errors: 53400 when the monthly budget would be exceeded, 38000 when the provider refuses the request, 28000 without credentials.';
COMMENT ON FUNCTION custos_internal.run_ai_task(text, jsonb) IS
'Internal: what custos.complete_json does, with who answered (provider, model, prompt version, and fallback when the rule-based answerer did): for custos'' own analyses.';
-- END ai

-- BEGIN search (new in 0.2.0): its Rust functions, then sql/search.sql as it is.


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
-- END search

-- BEGIN insights (new in 0.2.0): its Rust functions, then sql/insights.sql as it is.


-- Insights (src/insights/): analyses that combine custos' own data with a model's judgement
-- (retrieval-augmented), each answer validated against its task's schema and stored with who
-- gave it: custos.analyze_dormant_user (into custos.user_insights, the latest per user),
-- custos.explain_event (both into custos.rag_analysis_history, every one) and custos.summarize
-- (into custos.summaries). Without a model, each falls back to an answer by rules of the same
-- shape. Texts shown to a model never open a sealed value (custos_internal.masked).

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
    subject_type    text NOT NULL CHECK (subject_type IN ('user', 'event')),
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
'Every analysis custos made (custos.analyze_dormant_user of a user, custos.explain_event of an event: subject is its id), with the answer as stored and who gave it. Tenant-isolated; removed with the identity, or the event (retention), it is about.';
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

-- What the model is told about an identity (custos.analyze_dormant_user, the dormant_insights
-- job): its profile, inactivity, deterministic risk with reasons, and its most similar accounts
-- with their state (when its profile is embedded).
CREATE FUNCTION custos_internal.dormant_context(tenant uuid, who text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    i @extschema@.identities;
    d record;
    neighbours jsonb := '[]';
BEGIN
    SELECT * INTO i FROM @extschema@.identities x WHERE x.tenant_id = tenant AND x.user_id = who;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the current tenant has no identity "%"', who
            USING ERRCODE = 'P0002', HINT = 'custos.dormant_users lists the tenant''s identities';
    END IF;
    SELECT * INTO d FROM custos_internal.dormant_row(i, NULL);
    IF EXISTS (SELECT 1 FROM @extschema@.identity_embeddings e
                WHERE e.tenant_id = tenant AND e.user_id = who AND e.model = custos_internal.embedding_model(NULL)) THEN
        SELECT coalesce(jsonb_agg(jsonb_build_object('user_id', s.similar_user_id, 'similarity', round(s.similarity::numeric, 3),
                                                     'status', s.status, 'department', s.department,
                                                     'privileged', s.is_privileged, 'last_active_at', s.last_active_at)
                                  ORDER BY s.similarity DESC), '[]')
          INTO neighbours FROM @extschema@.similar_users(who, 5) s;
    END IF;
    RETURN jsonb_build_object(
        'account', jsonb_strip_nulls(jsonb_build_object(
            'user_id', who, 'status', (i).status, 'service_account', (i).is_service_account,
            'privileged', (i).is_privileged, 'roles', to_jsonb((i).roles), 'department', (i).department,
            'source', (i).source, 'mfa_enabled', (i).mfa_enabled, 'credentials_valid', (i).has_valid_credentials,
            'days_inactive', d.days_inactive, 'never_active', d.never_active,
            'review_decision', (i).review_decision)),
        'deterministic_risk', jsonb_build_object('score', round(d.risk_score::numeric, 3), 'level', d.risk_level,
                                                 'reasons', to_jsonb(d.reasons)),
        'similar_accounts', neighbours);
END
$fn$;
COMMENT ON FUNCTION custos_internal.dormant_context(uuid, text) IS
'Internal: what the analyze_dormant_user task is told about an identity (profile, inactivity, deterministic risk and reasons, similar accounts); P0002 for an unknown one.';

-- Stores an analysis (the model's answer, or the rules' when fallback) as the latest of the
-- identity and in the history.
CREATE FUNCTION custos_internal.store_dormant_analysis(tenant uuid, who text, context jsonb, answer jsonb, provider text,
                                                       model text, prompt_version integer, fallback boolean)
RETURNS @extschema@.user_insights
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    i @extschema@.identities;
    d record;
    version text := 'analyze_dormant_user@' || prompt_version;
    neighbours jsonb := coalesce(context->'similar_accounts', '[]');
    stored @extschema@.user_insights;
BEGIN
    IF fallback THEN
        SELECT * INTO i FROM @extschema@.identities x WHERE x.tenant_id = tenant AND x.user_id = who;
        SELECT * INTO d FROM custos_internal.dormant_row(i, NULL);
        answer := custos_internal.dormant_analysis_by_rules(i, d.risk_score, d.risk_level, d.reasons, d.days_inactive);
    END IF;
    INSERT INTO @extschema@.rag_analysis_history (tenant_id, subject_type, subject, analysis, provider, model, prompt_version, fallback)
    VALUES (tenant, 'user', who, answer || jsonb_build_object('similar_users', neighbours), provider, model, version, fallback);
    INSERT INTO @extschema@.user_insights AS u (tenant_id, user_id, risk_score, risk_level, summary, insights, recommendations,
                                                similar_users, provider, model, prompt_version, fallback, analyzed_at)
    VALUES (tenant, who, (answer->>'risk_score')::float8, answer->>'risk_level', answer->>'summary', answer->'insights',
            answer->'recommendations', neighbours, provider, model, version, fallback, now())
    ON CONFLICT (tenant_id, user_id) DO UPDATE
       SET risk_score = excluded.risk_score, risk_level = excluded.risk_level, summary = excluded.summary,
           insights = excluded.insights, recommendations = excluded.recommendations,
           similar_users = excluded.similar_users, provider = excluded.provider, model = excluded.model,
           prompt_version = excluded.prompt_version, fallback = excluded.fallback, analyzed_at = excluded.analyzed_at
    RETURNING * INTO stored;
    RETURN stored;
END
$fn$;
COMMENT ON FUNCTION custos_internal.store_dormant_analysis(uuid, text, jsonb, jsonb, text, text, integer, boolean) IS
'Internal: stores an analysis of an identity (the rules'' when fallback) in custos.user_insights and custos.rag_analysis_history.';

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
    context jsonb := custos_internal.dormant_context(tenant, who);
    r record;
    u @extschema@.user_insights;
BEGIN
    SELECT * INTO r FROM custos_internal.run_ai_task('analyze_dormant_user', context);
    u := custos_internal.store_dormant_analysis(tenant, who, context, r.answer, r.provider, r.model, r.prompt_version, r.fallback);
    RETURN QUERY SELECT u.user_id, u.risk_score, u.risk_level, u.summary, u.insights, u.recommendations,
                        u.similar_users, u.provider, u.model, u.prompt_version, u.fallback, u.analyzed_at;
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

------------------------------------------------------------------------------------------------
-- Events explained
------------------------------------------------------------------------------------------------
INSERT INTO @extschema@.ai_tasks (tenant_id, name, version, builtin, system_prompt, prompt_template, answer_schema, max_tokens) VALUES
(NULL, 'explain_event', 1, true,
 'You explain one audit event to an auditor: what happened, in plain words, and why it may matter given how often such events occur, who usually does them and what happened around it. Ground every statement in the data given; values shown as <sealed> are encrypted and unknown to you.',
 E'Event and its context (JSON):\n{{input}}',
 '{"type": "object", "additionalProperties": false,
   "required": ["what_happened", "why_it_matters", "significance", "follow_up"],
   "properties": {
     "what_happened": {"type": "string", "minLength": 1, "maxLength": 600},
     "why_it_matters": {"type": "string", "minLength": 1, "maxLength": 800},
     "significance": {"enum": ["low", "medium", "high", "critical"], "default": "low"},
     "follow_up": {"type": "array", "items": {"type": "string", "maxLength": 300}, "maxItems": 3}}}',
 700);

-- What a model is told about an event: the event with sealed values masked, how common it is,
-- and the events around it. Counts cover the 30 days before the event.
CREATE FUNCTION custos_internal.event_context(tenant uuid, ev @extschema@.events) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    stats record;
    utc_hour integer := extract(hour FROM ev.occurred_at AT TIME ZONE 'UTC');
    m text;
    q @extschema@.event_embeddings.embedding%TYPE;
    related jsonb;
BEGIN
    SELECT count(*) AS tenant_events,
           count(*) FILTER (WHERE e.action = ev.action) AS action_events,
           count(*) FILTER (WHERE e.action = ev.action AND e.actor = ev.actor) AS actor_action_events,
           count(*) FILTER (WHERE e.actor = ev.actor) AS actor_events
      INTO stats
      FROM @extschema@.events e
     WHERE e.tenant_id = tenant AND e.occurred_at > ev.occurred_at - interval '30 days' AND e.occurred_at <= ev.occurred_at;
    -- Around it: the same actor or entity within a day (among the 10,000 events either side),
    -- and, when the events are embedded, the nearest in meaning.
    SELECT coalesce(jsonb_agg(x ORDER BY x.occurred_at, x.seq), '[]') INTO related FROM (
        SELECT e.seq, e.id, e.occurred_at, e.action, e.severity,
               CASE WHEN ev.entity_id IS NOT NULL AND e.entity_type = ev.entity_type AND e.entity_id = ev.entity_id
                    THEN 'same entity' ELSE 'same actor' END AS relation
          FROM @extschema@.events e
         WHERE e.tenant_id = tenant AND e.seq BETWEEN ev.seq - 10000 AND ev.seq + 10000 AND e.seq <> ev.seq
           AND e.occurred_at BETWEEN ev.occurred_at - interval '1 day' AND ev.occurred_at + interval '1 day'
           AND (e.actor = ev.actor OR (ev.entity_id IS NOT NULL AND e.entity_type = ev.entity_type AND e.entity_id = ev.entity_id))
         ORDER BY abs(extract(epoch FROM e.occurred_at - ev.occurred_at)), e.seq
         LIMIT 5) x;
    m := custos_internal.embedding_model(NULL);
    SELECT e.embedding INTO q FROM @extschema@.event_embeddings e WHERE e.tenant_id = tenant AND e.seq = ev.seq AND e.model = m;
    IF q IS NOT NULL THEN
        related := related || coalesce((
            SELECT jsonb_agg(jsonb_build_object('seq', n.seq, 'id', n.id, 'occurred_at', n.occurred_at, 'action', n.action,
                                                'severity', n.severity, 'relation', 'similar',
                                                'similarity', round(n.similarity::numeric, 3)) ORDER BY n.similarity DESC)
              FROM custos_internal.nearest_events(tenant, q, m, 3, NULL, NULL, NULL, NULL, ev.seq) n
             WHERE NOT related @> jsonb_build_array(jsonb_build_object('seq', n.seq))), '[]');
    END IF;
    RETURN jsonb_build_object(
        'event', jsonb_strip_nulls(jsonb_build_object(
            'action', ev.action, 'entity_type', ev.entity_type, 'entity_id', custos_internal.masked(ev.entity_id),
            'actor', custos_internal.masked(ev.actor), 'db_role', ev.db_role, 'severity', ev.severity,
            'occurred_at', ev.occurred_at, 'ip_address', custos_internal.masked(ev.ip_address),
            'details', custos_internal.masked_details(ev.details))),
        'statistics', jsonb_build_object(
            'tenant_events_30d', stats.tenant_events, 'action_events_30d', stats.action_events,
            'actor_events_30d', stats.actor_events, 'actor_action_events_30d', stats.actor_action_events,
            'first_of_its_kind_for_actor', stats.actor_action_events <= 1,
            'outside_working_hours_utc', utc_hour < 7 OR utc_hour >= 20,
            'weekend_utc', extract(isodow FROM ev.occurred_at AT TIME ZONE 'UTC') >= 6),
        'related_events', related);
END
$fn$;
COMMENT ON FUNCTION custos_internal.event_context(uuid, @extschema@.events) IS
'Internal: what custos.explain_event tells a model about an event: the event (sealed values masked), how common such events are in the 30 days before it, and related events (same actor or entity within a day; the nearest in meaning when embedded).';

-- The explanation by rules, when no model answered: the event in words and the signals its
-- context raises.
CREATE FUNCTION custos_internal.event_explanation_by_rules(ev @extschema@.events, context jsonb) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH s AS (SELECT context->'statistics' AS st, jsonb_array_length(context->'related_events') AS n_related),
    signals AS (
        SELECT array_remove(ARRAY[
                   CASE WHEN (st->>'first_of_its_kind_for_actor')::boolean
                        THEN format('It is the first "%s" by this actor in 30 days.', (ev).action) END,
                   CASE WHEN (st->>'action_events_30d')::bigint <= 3
                        THEN format('The tenant recorded only %s such event%s in 30 days.', st->>'action_events_30d',
                                    CASE WHEN st->>'action_events_30d' = '1' THEN '' ELSE 's' END) END,
                   CASE WHEN (st->>'outside_working_hours_utc')::boolean OR (st->>'weekend_utc')::boolean
                        THEN 'It happened outside working hours (UTC).' END], NULL) AS found,
               st, n_related
          FROM s)
    SELECT jsonb_build_object(
        'what_happened', format('%s on %s%s by %s at %s UTC, severity %s.', (ev).action, (ev).entity_type,
                                coalesce(' ' || custos_internal.masked((ev).entity_id), ''),
                                coalesce(nullif(custos_internal.masked((ev).actor), ''), 'an unknown actor'),
                                to_char((ev).occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), (ev).severity),
        'why_it_matters', CASE WHEN cardinality(found) = 0 AND (ev).severity IN ('info', 'low')
                               THEN format('A routine event: %s such events in 30 days, %s by this actor.',
                                           st->>'action_events_30d', st->>'actor_action_events_30d')
                               ELSE concat_ws(' ', CASE WHEN (ev).severity IN ('high', 'critical')
                                                        THEN format('It was recorded with severity %s.', (ev).severity) END,
                                              array_to_string(found, ' ')) END
                          || CASE WHEN n_related = 1 THEN ' 1 related event is listed.'
                                  WHEN n_related > 1 THEN format(' %s related events are listed.', n_related) ELSE '' END,
        'significance', CASE WHEN (ev).severity = 'critical' THEN 'critical'
                             WHEN (ev).severity = 'high' OR cardinality(found) >= 2 THEN 'high'
                             WHEN (ev).severity = 'medium' OR cardinality(found) = 1 THEN 'medium'
                             ELSE 'low' END,
        'follow_up', to_jsonb(array_remove(ARRAY[
            CASE WHEN (st->>'first_of_its_kind_for_actor')::boolean AND (ev).severity <> 'info'
                 THEN 'Confirm with the actor that the action was intended.' END,
            CASE WHEN (ev).severity IN ('high', 'critical') OR cardinality(found) >= 2
                 THEN 'Review the related events around it in custos.timeline().' END], NULL)))
      FROM signals
$fn$;
COMMENT ON FUNCTION custos_internal.event_explanation_by_rules(@extschema@.events, jsonb) IS
'Internal: the explanation of custos.explain_event by rules (the event in words; rarity, first time for the actor, hours and severity as reasons), when no model answered.';

CREATE FUNCTION @extschema@.explain_event(event_id uuid)
RETURNS TABLE (explained_event_id uuid, seq bigint, occurred_at timestamptz, action text, what_happened text,
               why_it_matters text, significance text, follow_up jsonb, related_events jsonb, provider text,
               model text, prompt_version text, fallback boolean, explained_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    tenant uuid := @extschema@.require_tenant();
    ev @extschema@.events;
    context jsonb;
    r record;
    answer jsonb;
    version text;
BEGIN
    SELECT * INTO ev FROM @extschema@.events e
     WHERE e.tenant_id = tenant AND e.seq = @extschema@.event_seq(explain_event.event_id) AND e.id = explain_event.event_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the current tenant has no event %', explain_event.event_id
            USING ERRCODE = 'P0002', HINT = 'custos.timeline() lists the tenant''s events with their ids';
    END IF;
    context := custos_internal.event_context(tenant, ev);
    SELECT * INTO r FROM custos_internal.run_ai_task('explain_event', context);
    answer := CASE WHEN r.fallback THEN custos_internal.event_explanation_by_rules(ev, context) ELSE r.answer END;
    version := 'explain_event@' || r.prompt_version;
    INSERT INTO @extschema@.rag_analysis_history (tenant_id, subject_type, subject, analysis, provider, model, prompt_version, fallback)
    VALUES (tenant, 'event', ev.id::text, answer || jsonb_build_object('related_events', context->'related_events',
                                                                        'statistics', context->'statistics'),
            r.provider, r.model, version, r.fallback);
    PERFORM custos_internal.log_access(tenant, 'custos.explain_event', jsonb_build_object('id', ev.id), 1);
    RETURN QUERY SELECT ev.id, ev.seq, ev.occurred_at, ev.action, answer->>'what_happened', answer->>'why_it_matters',
                        answer->>'significance', coalesce(answer->'follow_up', '[]'), context->'related_events',
                        r.provider, r.model, version, r.fallback, now();
END
$fn$;
COMMENT ON FUNCTION @extschema@.explain_event(uuid) IS
'Explains one event of the current tenant: the event (sealed values masked, never opened), how common such events are in the 30 days before it and the related events around it (same actor or entity within a day; the nearest in meaning when embedded) go, redacted, to the explain_event task; the answer (what happened, why it may matter, significance, follow-up), validated against the task''s schema, is stored in custos.rag_analysis_history and returned with the related events and who answered. With the local provider, or when the model fails twice, the explanation by rules stands (fallback = true). Recorded in custos.access_log.';

CREATE FUNCTION custos_internal.event_explanations_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.events', 'custos.event_explanations_removed');
    IF EXISTS (SELECT 1 FROM @extschema@.rag_analysis_history h WHERE h.subject_type = 'event') THEN
        DELETE FROM @extschema@.rag_analysis_history h USING custos_removed r
         WHERE h.tenant_id = r.tenant_id AND h.subject_type = 'event' AND h.subject = r.id::text;
    END IF;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION custos_internal.event_explanations_removed() IS
'Trigger of custos.events: the explanations of the events retention removes go with them.';
CREATE TRIGGER zz_event_explanations_removed AFTER DELETE ON @extschema@.events
    REFERENCING OLD TABLE AS custos_removed FOR EACH STATEMENT EXECUTE FUNCTION custos_internal.event_explanations_removed();

------------------------------------------------------------------------------------------------
-- Periods summarised
------------------------------------------------------------------------------------------------
INSERT INTO @extschema@.ai_tasks (tenant_id, name, version, builtin, system_prompt, prompt_template, answer_schema, max_tokens) VALUES
(NULL, 'summarize_period', 1, true,
 'You write the security summary of one period of an organisation''s audit ledger for its security team and auditors. You are given statistics computed from the ledger for the period and the one before it. Say what happened, what changed and what deserves attention, most important first. Use only the numbers given; values shown as <sealed> are encrypted and unknown to you.',
 E'Period statistics (JSON):\n{{input}}',
 '{"type": "object", "additionalProperties": false,
   "required": ["summary", "risk", "highlights", "follow_up"],
   "properties": {
     "summary": {"type": "string", "minLength": 1, "maxLength": 1200},
     "risk": {"enum": ["none", "low", "medium", "high", "critical"], "default": "low"},
     "highlights": {"type": "array", "items": {"type": "string", "maxLength": 300}, "maxItems": 5},
     "follow_up": {"type": "array", "items": {"type": "string", "maxLength": 300}, "maxItems": 3}}}',
 900);

CREATE TABLE @extschema@.summaries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid NOT NULL DEFAULT @extschema@.current_tenant(),
    period         text NOT NULL CHECK (period IN ('daily', 'weekly', 'monthly')),
    window_start   timestamptz NOT NULL,
    window_end     timestamptz NOT NULL CHECK (window_end > window_start),
    statistics     jsonb NOT NULL,
    summary        text NOT NULL,
    risk           text NOT NULL CHECK (risk IN ('none', 'low', 'medium', 'high', 'critical')),
    highlights     jsonb NOT NULL,
    follow_up      jsonb NOT NULL,
    provider       text NOT NULL,
    model          text NOT NULL,
    prompt_version text NOT NULL,
    fallback       boolean NOT NULL,
    summarized_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX summaries_tenant_period ON @extschema@.summaries (tenant_id, period, window_end DESC);
COMMENT ON TABLE @extschema@.summaries IS
'Every summary custos.summarize made: the period''s statistics (computed in SQL) and the narrative, validated against the summarize_period task''s schema, with who wrote it (fallback when the rules did). Tenant-isolated.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.summaries');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.summaries', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.summaries_id_seq', '');
GRANT SELECT ON @extschema@.summaries TO custos_reader;

-- A period's statistics, beside the period before it. Sealed actors read <sealed>.
CREATE FUNCTION custos_internal.period_statistics(tenant uuid, window_start timestamptz, window_end timestamptz)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH w AS MATERIALIZED (
        SELECT e.action, e.severity, e.actor FROM @extschema@.events e
         WHERE e.tenant_id = tenant AND e.occurred_at >= window_start AND e.occurred_at < window_end)
    SELECT jsonb_build_object(
        'window_start', window_start, 'window_end', window_end,
        'events', (SELECT count(*) FROM w),
        'previous_period_events', (SELECT count(*) FROM @extschema@.events e
                                    WHERE e.tenant_id = tenant AND e.occurred_at >= window_start - (window_end - window_start)
                                      AND e.occurred_at < window_start),
        'actors', (SELECT count(DISTINCT w.actor) FROM w),
        'by_severity', (SELECT coalesce(jsonb_object_agg(x.severity, x.n), '{}')
                          FROM (SELECT w.severity, count(*) AS n FROM w GROUP BY 1) x),
        'top_actions', (SELECT coalesce(jsonb_agg(jsonb_build_object('action', x.action, 'events', x.n) ORDER BY x.n DESC, x.action), '[]')
                          FROM (SELECT w.action, count(*) AS n FROM w GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10) x),
        'top_actors', (SELECT coalesce(jsonb_agg(jsonb_build_object('actor', x.actor, 'events', x.n) ORDER BY x.n DESC, x.actor), '[]')
                         FROM (SELECT custos_internal.masked(w.actor) AS actor, count(*) AS n FROM w GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5) x),
        'erasures', (SELECT count(*) FROM w WHERE w.action = 'custos.forget_subject'),
        'alerts', (SELECT coalesce(jsonb_object_agg(x.severity, x.n), '{}')
                     FROM (SELECT a.severity, count(*) AS n FROM @extschema@.alerts a
                            WHERE a.tenant_id = tenant AND a.created_at >= window_start AND a.created_at < window_end
                            GROUP BY 1) x))
$fn$;
COMMENT ON FUNCTION custos_internal.period_statistics(uuid, timestamptz, timestamptz) IS
'Internal: the statistics custos.summarize reports for [window_start, window_end): events by severity, the top actions and actors, erasures, alerts by severity, and the previous period''s event count.';

-- The summary by rules, when no model answered: the statistics in words.
CREATE FUNCTION custos_internal.period_summary_by_rules(period text, st jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH n AS (
        SELECT (st->>'events')::bigint AS events, (st->>'previous_period_events')::bigint AS previous,
               coalesce((st->'by_severity'->>'critical')::bigint, 0) AS critical,
               coalesce((st->'by_severity'->>'high')::bigint, 0) AS high,
               coalesce((st->'by_severity'->>'medium')::bigint, 0) AS medium,
               (st->>'erasures')::bigint AS erasures,
               (SELECT coalesce(sum(v::bigint), 0) FROM jsonb_each_text(st->'alerts') a(k, v)) AS alerts,
               coalesce((st->'alerts'->>'critical')::bigint, 0) + coalesce((st->'alerts'->>'high')::bigint, 0) AS serious_alerts,
               CASE period WHEN 'daily' THEN 'day' WHEN 'weekly' THEN 'week' ELSE 'month' END AS span)
    SELECT jsonb_build_object(
        'summary', CASE WHEN events = 0 THEN format('No events were recorded in the last %s.', span)
                        ELSE format('%s by %s in the last %s (%s in the %s before). Most frequent: %s.',
                                    CASE WHEN events = 1 THEN '1 event' ELSE events || ' events' END, CASE WHEN st->>'actors' = '1' THEN '1 actor' ELSE (st->>'actors') || ' actors' END,
                                    span, previous, span,
                                    (SELECT string_agg(format('%s (%s)', a->>'action', a->>'events'), ', ')
                                       FROM jsonb_array_elements(st->'top_actions') WITH ORDINALITY t(a, o) WHERE o <= 3))
                   END,
        'risk', CASE WHEN critical > 0 OR coalesce((st->'alerts'->>'critical')::bigint, 0) > 0 THEN 'critical'
                     WHEN high > 0 OR serious_alerts > 0 THEN 'high'
                     WHEN medium > 0 OR alerts > 0 OR erasures > 0 THEN 'medium'
                     WHEN events > 0 THEN 'low' ELSE 'none' END,
        'highlights', to_jsonb(array_remove(ARRAY[
            CASE WHEN critical + high > 0
                 THEN format('%s event%s of severity high or critical.', critical + high, CASE WHEN critical + high = 1 THEN '' ELSE 's' END) END,
            CASE WHEN alerts > 0 THEN format('%s alert%s raised (%s high or critical).', alerts,
                                             CASE WHEN alerts = 1 THEN '' ELSE 's' END, serious_alerts) END,
            CASE WHEN erasures > 0 THEN format('%s subject%s erased (custos.forget_subject).', erasures,
                                               CASE WHEN erasures = 1 THEN '' ELSE 's' END) END,
            CASE WHEN previous > 0 AND (events >= 2 * previous OR 2 * events <= previous)
                 THEN format('Activity changed from %s to %s events against the period before.', previous, events) END], NULL)),
        'follow_up', to_jsonb(array_remove(ARRAY[
            CASE WHEN serious_alerts > 0 THEN 'Triage the open high and critical alerts (custos.alerts).' END,
            CASE WHEN critical + high > 0 THEN 'Review the high and critical events in custos.timeline(min_severity => ''high'').' END], NULL)))
      FROM n
$fn$;
COMMENT ON FUNCTION custos_internal.period_summary_by_rules(text, jsonb) IS
'Internal: the summary of custos.summarize by rules (the statistics in words, a risk from severities, alerts and erasures), when no model answered.';

-- The window of a period ending at until: [until - period, until); 22023 for an unknown period.
CREATE FUNCTION custos_internal.period_window(period text, until timestamptz)
RETURNS TABLE (window_start timestamptz, window_end timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    w_end timestamptz := coalesce(period_window.until, now());
    w_start timestamptz := w_end - CASE period_window.period WHEN 'daily' THEN interval '1 day'
                                   WHEN 'weekly' THEN interval '7 days' WHEN 'monthly' THEN interval '1 month' END;
BEGIN
    IF w_start IS NULL THEN
        RAISE EXCEPTION 'unknown period "%"', period_window.period
            USING ERRCODE = '22023', HINT = 'one of daily, weekly, monthly: the period that ends at until (default now)';
    END IF;
    RETURN QUERY SELECT w_start, w_end;
END
$fn$;
COMMENT ON FUNCTION custos_internal.period_window(text, timestamptz) IS
'Internal: the window [start, end) of a daily, weekly or monthly period ending at until (default now).';

-- Stores a summary (the model's narrative, or the rules' when fallback) and logs the read.
CREATE FUNCTION custos_internal.store_summary(tenant uuid, period text, w_start timestamptz, w_end timestamptz,
                                              statistics jsonb, answer jsonb, provider text, model text,
                                              prompt_version integer, fallback boolean)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    new_id bigint;
BEGIN
    IF fallback THEN
        answer := custos_internal.period_summary_by_rules(period, statistics);
    END IF;
    INSERT INTO @extschema@.summaries (tenant_id, period, window_start, window_end, statistics, summary, risk, highlights,
                                       follow_up, provider, model, prompt_version, fallback)
    VALUES (tenant, period, w_start, w_end, statistics, answer->>'summary', answer->>'risk',
            coalesce(answer->'highlights', '[]'), coalesce(answer->'follow_up', '[]'), provider, model,
            'summarize_period@' || prompt_version, fallback)
    RETURNING id INTO new_id;
    PERFORM custos_internal.log_access(tenant, 'custos.summarize',
                                       jsonb_build_object('period', period, 'since', w_start, 'until', w_end),
                                       (statistics->>'events')::bigint);
    RETURN new_id;
END
$fn$;
COMMENT ON FUNCTION custos_internal.store_summary(uuid, text, timestamptz, timestamptz, jsonb, jsonb, text, text, integer, boolean) IS
'Internal: stores a summary (the rules'' narrative when fallback) in custos.summaries and records the read in the access log.';

CREATE FUNCTION @extschema@.summarize(period text DEFAULT 'daily', until timestamptz DEFAULT NULL)
RETURNS TABLE (summary_id bigint, window_start timestamptz, window_end timestamptz, statistics jsonb, summary text,
               risk text, highlights jsonb, follow_up jsonb, provider text, model text, prompt_version text,
               fallback boolean, summarized_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    tenant uuid := @extschema@.require_tenant();
    w record;
    st jsonb;
    r record;
    new_id bigint;
BEGIN
    SELECT * INTO w FROM custos_internal.period_window(summarize.period, summarize.until);
    st := custos_internal.period_statistics(tenant, w.window_start, w.window_end);
    SELECT * INTO r FROM custos_internal.run_ai_task('summarize_period', st || jsonb_build_object('period', summarize.period));
    new_id := custos_internal.store_summary(tenant, summarize.period, w.window_start, w.window_end, st, r.answer,
                                            r.provider, r.model, r.prompt_version, r.fallback);
    RETURN QUERY SELECT s.id, s.window_start, s.window_end, s.statistics, s.summary, s.risk, s.highlights, s.follow_up,
                        s.provider, s.model, s.prompt_version, s.fallback, s.summarized_at
                   FROM @extschema@.summaries s WHERE s.id = new_id;
END
$fn$;
COMMENT ON FUNCTION @extschema@.summarize(text, timestamptz) IS
'Summarises the current tenant''s ledger over the daily, weekly or monthly period that ends at until (default now): statistics computed in SQL (events by severity, top actions and actors with sealed actors masked, erasures, alerts, the period before) and a narrative from the summarize_period task, validated against its schema; both stored in custos.summaries and returned. With the local provider, or when the model fails twice, the summary by rules stands (fallback = true). Recorded in custos.access_log.';

-- What custos.export_subject adds about a person from this module: their latest analysis and
-- every earlier one.
CREATE FUNCTION custos_internal.subject_insights(tenant uuid, subject text) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT jsonb_build_object(
        'latest', (SELECT to_jsonb(u) - 'tenant_id' FROM @extschema@.user_insights u
                    WHERE u.tenant_id = tenant AND u.user_id = subject),
        'history', coalesce((SELECT jsonb_agg(to_jsonb(h) - 'tenant_id' ORDER BY h.analyzed_at)
                               FROM @extschema@.rag_analysis_history h
                              WHERE h.tenant_id = tenant AND h.subject_type = 'user' AND h.subject = subject_insights.subject), '[]'),
        'embeddings', coalesce((SELECT jsonb_agg(jsonb_build_object('model', e.model, 'dimensions', e.dims,
                                                                    'embedded_at', e.embedded_at) ORDER BY e.model)
                                  FROM @extschema@.identity_embeddings e
                                 WHERE e.tenant_id = tenant AND e.user_id = subject), '[]'))
$fn$;
COMMENT ON FUNCTION custos_internal.subject_insights(uuid, text) IS
'Internal: what custos.export_subject reports of a person''s analyses (latest and history) and of their profile''s embeddings (model, dimensions, when; not the vectors).';
-- END insights

-- BEGIN webhooks (new in 0.2.0): its Rust functions, then sql/webhooks.sql as it is.
CREATE  FUNCTION "check_webhook_url"(
	"url" TEXT /* Option < & str > */
) RETURNS void
STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_webhook_url_wrapper';

CREATE  FUNCTION "shown_url"(
	"url" TEXT /* & str */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'shown_url_wrapper';

CREATE  FUNCTION "wake_worker_at_commit"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'wake_worker_at_commit_wrapper';

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
-- END webhooks

-- BEGIN jobs (new in 0.2.0): its Rust functions, then sql/jobs.sql as it is.
CREATE  FUNCTION "breaker_states"(
	"every_tenant" bool /* bool */
) RETURNS TABLE (
	"tenant_id" uuid,  /* pgrx :: Uuid */
	"provider" TEXT,  /* String */
	"state" TEXT,  /* String */
	"failures" INT,  /* i32 */
	"retry_at" timestamp with time zone  /* Option < pgrx :: datum :: TimestampWithTimeZone > */
)
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'breaker_states_wrapper';

CREATE  FUNCTION "worker_progress"() RETURNS TABLE (
	"pid" INT,  /* i32 */
	"activity" TEXT,  /* String */
	"tenant_id" uuid,  /* Option < pgrx :: Uuid > */
	"job_number" INT,  /* Option < i32 > */
	"items_done" bigint,  /* i64 */
	"items_total" bigint,  /* i64 */
	"since" timestamp with time zone  /* Option < pgrx :: datum :: TimestampWithTimeZone > */
)
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'worker_progress_wrapper';

CREATE  FUNCTION "worker_states"() RETURNS jsonb /* JsonB */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'worker_states_wrapper';

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
-- END jobs

-- Triggers and event triggers 0.2.0 adds or changes.
CREATE TRIGGER ledger_settings_check BEFORE INSERT OR UPDATE ON @extschema@.tenant_settings
    FOR EACH ROW EXECUTE FUNCTION custos_internal.ledger_settings_check();
DROP EVENT TRIGGER custos_guard_ledger_drop;
CREATE EVENT TRIGGER custos_guard_ledger_drop ON ddl_command_start
    EXECUTE FUNCTION custos_internal.guard_ledger_drop();

-- Table privileges 0.2.0 narrows.
REVOKE SELECT ON @extschema@.setting_definitions, @extschema@.tenant_settings FROM PUBLIC;
GRANT SELECT ON @extschema@.setting_definitions TO custos_reader;
GRANT SELECT ON @extschema@.tenant_settings TO custos_reader;
REVOKE UPDATE (status) ON @extschema@.alerts FROM custos_auditor;
REVOKE SELECT ON @extschema@.tracked_tables FROM PUBLIC;
GRANT SELECT ON @extschema@.tracked_tables TO custos_admin, custos_auditor;

-- Function privileges: all anew, as sql/privileges.sql sets them.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA @extschema@
  FROM custos_reader, custos_writer, custos_auditor, custos_exporter, custos_admin;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA custos_internal
  FROM custos_reader, custos_writer, custos_auditor, custos_exporter, custos_admin;


REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA custos_internal FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    custos_internal.anomaly_scores_on_insert(uuid),
    @extschema@.current_tenant(),
    @extschema@.set_actor(text),
    @extschema@.current_actor()
TO PUBLIC;

GRANT EXECUTE ON FUNCTION
    @extschema@.set_tenant(uuid),
    @extschema@.require_tenant(),
    @extschema@.setting(text),
    @extschema@.settings(),
    @extschema@.tenant_setting(uuid, text),
    @extschema@.validate_setting(text, jsonb),
    custos_internal.check_json_batch(jsonb, text, text[], text),
    @extschema@.dormant_users(integer, integer, integer, text, boolean, text, text),
    custos_internal.dormant_users_page(integer, integer, integer, text, boolean, text, text),
    custos_internal.dormant_row(@extschema@.identities, text),
    @extschema@.dormant_summary(),
    @extschema@.sync_activity_from_ledger(uuid),
    @extschema@.explain_risk(boolean, boolean, boolean, boolean, boolean, text, real, double precision, integer),
    @extschema@.risk_level_of(double precision),
    @extschema@.risk_level_bounds(),
    @extschema@.peer_score(double precision, bigint),
    @extschema@.if_score(text, double precision[]),
    @extschema@.if_score_query(text, text),
    @extschema@.if_explain(text, double precision[], integer),
    @extschema@.redact(text),
    @extschema@.embed(text, text),
    @extschema@.embed_batch(text[], text),
    custos_internal.embed_texts(text[], text),
    @extschema@.complete_json(text, jsonb),
    @extschema@.similar_users(text, integer, double precision),
    custos_internal.embedding_model(text),
    custos_internal.check_k(integer),
    custos_internal.schema_of_type(regtype),
    custos_internal.large_enough_for_hnsw(bigint),
    custos_internal.prefer_hnsw(boolean),
    custos_internal.restore_planner(text),
    @extschema@.health(),
    custos_internal.worker_states(),
    custos_internal.breaker_states(boolean),
    custos_internal.worker_progress(),
    custos_internal.job_names(),
    custos_internal.shown_url(text)
TO custos_reader;

GRANT EXECUTE ON FUNCTION
    custos_internal.metric_rows(),
    custos_internal.worker_states(),
    custos_internal.breaker_states(boolean),
    custos_internal.worker_progress(),
    custos_internal.job_names()
TO pg_monitor;

GRANT EXECUTE ON FUNCTION
    @extschema@.record_event(text, text, text, jsonb, text, timestamptz, text, inet, text),
    @extschema@.record_events(jsonb)
TO custos_writer;

GRANT EXECUTE ON FUNCTION
    @extschema@.verify_chain(uuid, bigint, bigint),
    @extschema@.settled_seq(uuid, bigint),
    @extschema@.checkpoint(uuid),
    @extschema@.verify_checkpoint(text, text),
    @extschema@.checkpoint_public_key(),
    @extschema@.verify_access_log(uuid),
    @extschema@.timeline(timestamptz, timestamptz, text, text, text, text, text, bigint, integer),
    @extschema@.event(uuid),
    @extschema@.event_seq(uuid),
    @extschema@.score_events(timestamptz, timestamptz),
    @extschema@.detect_anomalies(timestamptz, timestamptz, double precision),
    @extschema@.anomaly_detection_rates(timestamptz, timestamptz),
    @extschema@.search_events(text, integer, timestamptz, timestamptz, text, text),
    @extschema@.similar_events(uuid, integer),
    @extschema@.analyze_dormant_user(text),
    @extschema@.explain_event(uuid),
    @extschema@.summarize(text, timestamptz)
TO custos_auditor;

GRANT EXECUTE ON FUNCTION
    @extschema@.export_events(text, timestamptz, timestamptz, text, text, text),
    @extschema@.export_subject(uuid, text)
TO custos_exporter;

GRANT EXECUTE ON FUNCTION
    custos_internal.require_trigger_on(oid, regclass, text),
    @extschema@.set_setting(text, jsonb),
    @extschema@.reset_setting(text),
    custos_internal.require_master_key(),
    @extschema@.enable_tenant_isolation(regclass, name),
    @extschema@.rls_coverage(),
    @extschema@.track_table(regclass, name, text, integer),
    @extschema@.untrack_table(regclass),
    @extschema@.upsert_identities(jsonb),
    @extschema@.touch_activity(uuid, text, timestamptz, text),
    @extschema@.mark_reviewed(text, text, text),
    @extschema@.refresh_peer_scores(uuid),
    @extschema@.forget_subject(uuid, text),
    @extschema@.apply_retention(uuid),
    @extschema@.rotate_data_key(uuid),
    @extschema@.set_alert_status(bigint, text, text),
    @extschema@.if_train(text, text, integer, integer, bigint, boolean),
    @extschema@.activate_model(text, integer),
    @extschema@.train_anomaly_model(timestamptz, timestamptz, integer, integer, bigint, boolean),
    @extschema@.anomaly_feedback(bigint, boolean, text),
    @extschema@.register_ai_task(text, text, text, jsonb, text, integer, double precision),
    custos_internal.check_ai_task(text, jsonb),
    custos_internal.check_redaction_pattern(text),
    @extschema@.embed_identities(text),
    @extschema@.embed_events(timestamptz, timestamptz, text),
    @extschema@.run_job(text, uuid),
    @extschema@.retry_failed(),
    @extschema@.set_integration(text, text, text, text, text[], boolean),
    @extschema@.remove_integration(text),
    @extschema@.retry_dead_notifications()
TO custos_admin;
