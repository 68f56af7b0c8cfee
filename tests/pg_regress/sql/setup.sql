-- Golden tests of custos' public SQL surface: what each function returns and how it refuses bad
-- input (message, hint and SQLSTATE). Run by scripts/regress.sh (part of scripts/test.sh).
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE EXTENSION IF NOT EXISTS custos CASCADE;
DO $$ BEGIN
    CREATE ROLE regress_admin NOLOGIN; CREATE ROLE regress_writer NOLOGIN; CREATE ROLE regress_auditor NOLOGIN;
    CREATE ROLE regress_exporter NOLOGIN; CREATE ROLE regress_nobody NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
GRANT custos_admin TO regress_admin;
GRANT custos_writer TO regress_writer;
GRANT custos_auditor TO regress_auditor;
GRANT custos_exporter TO regress_exporter;
SELECT extversion FROM pg_extension WHERE extname = 'custos';
SELECT nspname FROM pg_namespace WHERE nspname LIKE 'custos%' ORDER BY 1;
