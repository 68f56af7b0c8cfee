-- Roles custos grants privileges to. They are cluster-wide, so they may exist already (another
-- database, an earlier install): create what is missing and make sure none can bypass RLS.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['custos_reader', 'custos_writer', 'custos_auditor', 'custos_exporter', 'custos_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOBYPASSRLS', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by CREATE EXTENSION in another database
            END;
        END IF;
        -- Only when needed: concurrent installs would otherwise update the same catalog row.
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r AND rolbypassrls) THEN
            EXECUTE format('ALTER ROLE %I NOBYPASSRLS', r);
        END IF;
    END LOOP;
END
$$;

-- custos_writer, custos_auditor and custos_exporter can do what custos_reader can; custos_admin
-- can do everything. Granted only where missing, tolerating a concurrent install doing the same.
DO $$
DECLARE
    m record;
BEGIN
    FOR m IN SELECT * FROM (VALUES ('custos_reader', 'custos_writer'), ('custos_reader', 'custos_auditor'),
                                   ('custos_reader', 'custos_exporter'), ('custos_writer', 'custos_admin'),
                                   ('custos_auditor', 'custos_admin'), ('custos_exporter', 'custos_admin')) AS v(role, member)
    LOOP
        CONTINUE WHEN pg_catalog.pg_has_role(m.member, m.role, 'MEMBER');
        BEGIN
            EXECUTE format('GRANT %I TO %I', m.role, m.member);
        EXCEPTION WHEN unique_violation OR internal_error THEN
            IF NOT pg_catalog.pg_has_role(m.member, m.role, 'MEMBER') THEN
                RAISE;
            END IF;
        END;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;

-- Functions and views that only custos itself calls live apart from the public API, so that
-- PostgREST (which publishes every function of the schemas it exposes) never sees them.
CREATE SCHEMA custos_internal;
COMMENT ON SCHEMA custos_internal IS
'custos'' internal functions and views: called by custos'' own functions and triggers, not an API. Not to be exposed through PostgREST.';
GRANT USAGE ON SCHEMA custos_internal TO custos_reader;
