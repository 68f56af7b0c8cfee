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
        EXECUTE format('ALTER ROLE %I NOBYPASSRLS', r);
    END LOOP;
END
$$;

-- custos_writer and custos_auditor can do what custos_reader can; custos_admin can do everything.
GRANT custos_reader TO custos_writer, custos_auditor, custos_exporter;
GRANT custos_writer, custos_auditor, custos_exporter TO custos_admin;

GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;
