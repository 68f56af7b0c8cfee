-- AI (src/ai/): PII redaction before any text leaves the database, and embeddings. This step
-- has the built-in offline embedder (provider local); Bedrock and OpenAI-compatible providers,
-- complete_json, budgets and breakers are the next.

ALTER FUNCTION @extschema@.embed_texts(text[], text) SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.check_redaction_pattern(text) SET SCHEMA custos_internal;

INSERT INTO @extschema@.setting_definitions (key, value_type, default_value, min_value, max_value, allowed_values, description) VALUES
    ('ai.provider', 'text', '"local"', NULL, NULL, ARRAY['local'],
     'Who computes embeddings and answers: local, the built-in offline models (no network; lexical similarity).'),
    ('ai.embedding_model', 'text', '"local-lexical-384"', NULL, NULL,
     ARRAY['local-lexical-256', 'local-lexical-384', 'local-lexical-512', 'local-lexical-768', 'local-lexical-1024', 'local-lexical-1536'],
     'Embedding model when custos.embed is given none; the number is the vector''s dimensions.');

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
COMMENT ON FUNCTION custos_internal.embed_texts(text[], text) IS
'Internal: each text redacted, then embedded by the model (default: the tenant''s ai.embedding_model), in order, as real[].';

-- The real[] result becomes a vector through pgvector's assignment cast (found by type, not by
-- name: these functions pin their search_path).
CREATE FUNCTION @extschema@.embed(input text, model text DEFAULT NULL) RETURNS vector
LANGUAGE sql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT e FROM custos_internal.embed_texts(ARRAY[input], model) e $fn$;
COMMENT ON FUNCTION @extschema@.embed(text, text) IS
'The embedding of a text (redacted first) by model, else the tenant''s ai.embedding_model. The built-in local-lexical-<dims> models need no network and capture lexical similarity only (shared words, word pairs and parts of words; not synonyms). NULL, text without a word, text over 1 MiB and unknown models are refused.';

CREATE FUNCTION @extschema@.embed_batch(inputs text[], model text DEFAULT NULL) RETURNS SETOF vector
LANGUAGE sql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT e FROM custos_internal.embed_texts(inputs, model) e $fn$;
COMMENT ON FUNCTION @extschema@.embed_batch(text[], text) IS
'The embeddings of several texts, in their order, as custos.embed computes them; one request per batch for providers that take batches.';
