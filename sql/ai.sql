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
