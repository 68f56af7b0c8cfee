-- Tenancy: isolation helpers, coverage report and per-tenant settings.

-- Functions written in Rust that only custos itself calls: out of the public schema.
ALTER FUNCTION @extschema@.invalidate_caches() SET SCHEMA custos_internal;

COMMENT ON FUNCTION @extschema@.current_tenant() IS
'The tenant of the current request: the value of custos.set_tenant() in this transaction, else the tenant_id claim of request.jwt.claims (as PostgREST sets it). NULL when neither holds a valid UUID, so tenant-isolated tables show no rows.';
COMMENT ON FUNCTION @extschema@.set_tenant(uuid) IS
'Sets the tenant for the rest of the current transaction (NULL clears it) and returns it. For application servers that connect directly; PostgREST requests carry the tenant in their JWT instead.';

------------------------------------------------------------------------------------------------
-- Row-level security helpers
------------------------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.enable_tenant_isolation(tbl regclass, col name DEFAULT 'tenant_id')
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

CREATE FUNCTION @extschema@.rls_coverage()
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

------------------------------------------------------------------------------------------------
-- Helpers for the SQL interface of every capability
------------------------------------------------------------------------------------------------
CREATE FUNCTION custos_internal.caller_role() RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    -- Inside SECURITY DEFINER, current_user is the owner; the caller is SET ROLE's, else the session's.
    SELECT CASE WHEN current_setting('role') = 'none' THEN session_user ELSE current_setting('role')::name END
$fn$;
COMMENT ON FUNCTION custos_internal.caller_role() IS
'The role that called in: SET ROLE''s role, else the session user. Unlike current_user, unchanged inside SECURITY DEFINER functions.';

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

CREATE FUNCTION custos_internal.check_json_batch(batch jsonb, what text, allowed_keys text[], example text)
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

------------------------------------------------------------------------------------------------
-- Settings: extension-wide definitions with defaults, per-tenant overrides
------------------------------------------------------------------------------------------------
CREATE TABLE @extschema@.setting_definitions (
    key            text PRIMARY KEY,
    value_type     text NOT NULL CHECK (value_type IN ('integer', 'number', 'boolean', 'text')),
    default_value  jsonb NOT NULL,
    min_value      numeric,
    max_value      numeric,
    allowed_values text[],
    description    text NOT NULL
);
COMMENT ON TABLE @extschema@.setting_definitions IS
'Every setting custos knows, with its type, allowed range and extension-wide default. Each capability adds its own rows.';

CREATE TABLE @extschema@.tenant_settings (
    tenant_id  uuid NOT NULL DEFAULT @extschema@.current_tenant(),
    key        text NOT NULL REFERENCES @extschema@.setting_definitions (key),
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL DEFAULT current_user,
    PRIMARY KEY (tenant_id, key)
);
COMMENT ON TABLE @extschema@.tenant_settings IS
'Per-tenant overrides of custos.setting_definitions. Tenant-isolated; values are validated on write.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.tenant_settings');
-- Its rows are user data: pg_dump carries them (extension tables are otherwise left out).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tenant_settings', '');

CREATE FUNCTION @extschema@.validate_setting(key text, value jsonb)
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

-- Trigger functions refuse every table but their own (custos.require_trigger_on).
CREATE FUNCTION custos_internal.require_trigger_on(fired_on oid, own regclass, fn text) RETURNS void
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

CREATE FUNCTION custos_internal.tenant_settings_validate() RETURNS trigger
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
CREATE TRIGGER validate BEFORE INSERT OR UPDATE ON @extschema@.tenant_settings
    FOR EACH ROW EXECUTE FUNCTION custos_internal.tenant_settings_validate();

-- Settings are cached per session (src/tenancy/mod.rs): any change ages every session's cache.
-- A row trigger named to fire before the other AFTER triggers on tenant_settings, which may read
-- the new values at once.
CREATE FUNCTION custos_internal.tenant_settings_invalidate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM custos_internal.require_trigger_on(TG_RELID, '@extschema@.tenant_settings', 'custos.tenant_settings_invalidate');
    PERFORM custos_internal.invalidate_caches();
    RETURN NULL;
END
$fn$;
CREATE TRIGGER cache_invalidation AFTER INSERT OR UPDATE OR DELETE ON @extschema@.tenant_settings
    FOR EACH ROW EXECUTE FUNCTION custos_internal.tenant_settings_invalidate();
COMMENT ON FUNCTION custos_internal.invalidate_caches() IS
'Ages the cached settings and keys of every session (they are read again on next use); custos calls it when settings change, keys rotate or a subject is forgotten.';

CREATE FUNCTION @extschema@.tenant_setting(tenant uuid, key text)
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

CREATE FUNCTION @extschema@.setting(key text)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT @extschema@.tenant_setting(@extschema@.current_tenant(), key) $fn$;
COMMENT ON FUNCTION @extschema@.setting(text) IS
'Effective value of a setting for the current tenant: its override if it has one, else the default. Unknown keys raise an error listing the known ones.';

CREATE FUNCTION @extschema@.settings()
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

CREATE FUNCTION @extschema@.set_setting(key text, value jsonb)
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

CREATE FUNCTION @extschema@.reset_setting(key text)
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

INSERT INTO @extschema@.setting_definitions (key, value_type, default_value, min_value, max_value, description) VALUES
    ('dormant.threshold_days', 'integer', '30', 1, 3650,
     'Days without activity after which an identity counts as dormant.');

GRANT SELECT ON @extschema@.setting_definitions TO custos_reader;
-- Row-level security decides which rows: without a tenant, none.
GRANT SELECT ON @extschema@.tenant_settings TO custos_reader;
GRANT INSERT, UPDATE, DELETE ON @extschema@.tenant_settings TO custos_admin;
