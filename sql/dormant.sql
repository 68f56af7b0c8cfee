-- Dormant identities: accounts per tenant, their activity, and an explained risk score.

-- Functions written in Rust that only custos itself calls: out of the public schema.
ALTER FUNCTION @extschema@.identities_derive() SET SCHEMA custos_internal;
ALTER FUNCTION @extschema@.lock_activity_fold(uuid) SET SCHEMA custos_internal;

INSERT INTO @extschema@.setting_definitions (key, value_type, default_value, min_value, max_value, description) VALUES
    ('dormant.grace_days', 'integer', '30', 0, 3650,
     'Accounts that never signed in count as dormant only once they are this many days old (before that they are new).'),
    ('dormant.count_never_active', 'boolean', 'true', NULL, NULL,
     'Whether accounts that never signed in are reported as dormant (after the grace period).'),
    ('dormant.privileged_threshold_days', 'integer', '0', 0, 3650,
     'Inactivity threshold for privileged accounts; 0 means dormant.threshold_days.'),
    ('dormant.service_threshold_days', 'integer', '0', 0, 3650,
     'Inactivity threshold for service accounts; 0 means dormant.threshold_days.'),
    ('dormant.activity_actions', 'text', '"login,user.login,auth.login,session.start"', NULL, NULL,
     'Comma-separated ledger actions that count as an account''s activity (its actor signed in); * counts every action. A writer can name any actor, so keep this to sign-in events.'),
    ('dormant.activity_roles', 'text', '"*"', NULL, NULL,
     'Comma-separated database roles whose events count as activity (* any). Name the roles of your sign-in path to make ledger activity unforgeable by other writers.');

CREATE TABLE @extschema@.identities (
    -- What the report and summary read comes first: rows are decoded only up to the last column a
    -- query needs, and fixed-width columns before the texts keep that short.
    tenant_id             uuid NOT NULL DEFAULT @extschema@.current_tenant(),
    dormant_at            timestamptz,
    risk_key              double precision,
    is_privileged         boolean NOT NULL DEFAULT false,
    source                text NOT NULL DEFAULT 'local' CHECK (source ~ '^[a-z0-9_.-]{1,40}$'),
    department            text,
    user_id               text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 256),
    email                 text,
    display_name          text,
    status                text NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'suspended', 'provisioned', 'deprovisioned')),
    roles                 text[] NOT NULL DEFAULT '{}',
    is_service_account    boolean NOT NULL DEFAULT false,
    mfa_enabled           boolean NOT NULL DEFAULT false,
    has_valid_credentials boolean NOT NULL DEFAULT true,
    created_at            timestamptz NOT NULL DEFAULT now(),
    last_active_at        timestamptz,
    last_active_source    text,
    attributes            jsonb NOT NULL DEFAULT '{}',
    updated_at            timestamptz NOT NULL DEFAULT now(),
    -- Kept current by custos (trigger custos.identities_derive, custos.refresh_peer_scores); see
    -- crates/core/src/dormant/risk.rs. dormant_at and risk_key above are derived too.
    peer_score            real NOT NULL DEFAULT 0,
    risk_static           real NOT NULL DEFAULT 0,
    threshold_days        integer NOT NULL DEFAULT 30,
    review_decision       text CHECK (review_decision IN ('keep', 'disable', 'delete', 'false_positive')),
    reviewed_at           timestamptz,
    reviewed_by           text,
    review_note           text,
    PRIMARY KEY (tenant_id, user_id)
);
COMMENT ON TABLE @extschema@.identities IS
'Accounts of each tenant (from Entra ID, Okta, Google, the application itself ...), their activity and review state. Tenant-isolated. peer_score, risk_static, dormant_at, risk_key and threshold_days are maintained by custos.';
COMMENT ON COLUMN @extschema@.identities.status IS 'active, suspended, provisioned (provisioned but never activated), or deprovisioned.';
COMMENT ON COLUMN @extschema@.identities.dormant_at IS 'When the account becomes (or became) dormant: last activity (or creation, for never-active accounts) plus its threshold. NULL: never reported.';
COMMENT ON COLUMN @extschema@.identities.risk_key IS 'Clock-free ordering key: ordering by it is ordering by risk score at any moment.';
-- First pages in risk order at any size: an index walk in key order, filtered on dormant_at.
-- INCLUDE: a page is chosen by an index-only scan (the filters read only indexed columns), and only
-- the rows returned are fetched; a deep page does not visit 9,000 skipped rows in the heap.
CREATE INDEX identities_risk ON @extschema@.identities (tenant_id, risk_key DESC, user_id DESC)
    INCLUDE (dormant_at, is_privileged);
CREATE INDEX identities_dormant_at ON @extschema@.identities (tenant_id, dormant_at, user_id)
    INCLUDE (risk_key, is_privileged);
-- dormant_summary() reads only this: an index-only scan over the tenant's entries, never the wide
-- rows of the table (nor other tenants' rows). Costs one more index on writes.
CREATE INDEX identities_summary ON @extschema@.identities (tenant_id, source, department, is_privileged)
    INCLUDE (dormant_at, risk_key);
SELECT @extschema@.enable_tenant_isolation('@extschema@.identities');
-- Its rows are user data: pg_dump carries them (extension tables are otherwise left out).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.identities', '');
GRANT SELECT ON @extschema@.identities TO custos_reader;
GRANT INSERT, UPDATE, DELETE ON @extschema@.identities TO custos_admin;

CREATE TRIGGER derive BEFORE INSERT OR UPDATE ON @extschema@.identities
    FOR EACH ROW EXECUTE FUNCTION custos_internal.identities_derive();
COMMENT ON FUNCTION custos_internal.identities_derive() IS
'BEFORE trigger of custos.identities: refuses future timestamps and computes threshold_days, dormant_at, risk_static and risk_key from the row and its tenant''s dormant.* settings.';

-- Peers: per department, the share of other members who are active.
CREATE FUNCTION @extschema@.refresh_peer_scores(tenant uuid DEFAULT NULL) RETURNS bigint
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

CREATE FUNCTION @extschema@.upsert_identities(identities jsonb) RETURNS bigint
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

CREATE FUNCTION @extschema@.touch_activity(tenant uuid, user_id text, at timestamptz DEFAULT now(), source text DEFAULT 'api')
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

-- Activity from the ledger: events by an actor advance that identity's last_active_at. Folded in
-- per tenant from a seq watermark when the report is read, so no event ever updates a hot row.
CREATE TABLE @extschema@.activity_watermarks (
    tenant_id  uuid PRIMARY KEY,
    folded_seq bigint NOT NULL,
    folded_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.activity_watermarks IS 'Up to which ledger seq each tenant''s events were folded into custos.identities.';
SELECT @extschema@.enable_tenant_isolation('@extschema@.activity_watermarks');
-- Its rows are user data: pg_dump carries them (extension tables are otherwise left out).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.activity_watermarks', '');

CREATE FUNCTION @extschema@.sync_activity_from_ledger(tenant uuid DEFAULT NULL) RETURNS bigint
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

------------------------------------------------------------------------------------------------
-- The report
------------------------------------------------------------------------------------------------
-- One report row: days and score computed now, from the stored identity.
CREATE FUNCTION custos_internal.dormant_row(i @extschema@.identities, cursor text)
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

CREATE FUNCTION custos_internal.dormant_users_page(
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

CREATE FUNCTION @extschema@.dormant_users(
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

CREATE FUNCTION @extschema@.dormant_summary()
RETURNS TABLE (dimension text, value text, identities bigint, dormant bigint, privileged_dormant bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
-- Parallel workers start slower than one core scans a tenant of a million accounts.
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

CREATE FUNCTION @extschema@.mark_reviewed(user_id text, decision text, note text DEFAULT NULL)
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

-- Changing a tenant's dormant.* settings recomputes its accounts' thresholds and order.
CREATE FUNCTION custos_internal.dormant_settings_changed() RETURNS trigger
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
CREATE TRIGGER dormant_settings_changed AFTER INSERT OR UPDATE OR DELETE ON @extschema@.tenant_settings
    FOR EACH ROW EXECUTE FUNCTION custos_internal.dormant_settings_changed();

COMMENT ON FUNCTION @extschema@.explain_risk(boolean, boolean, boolean, boolean, boolean, text, real, double precision, integer) IS
'The dormant risk score of an account, its level and the reasons (each with its contribution); see crates/core/src/dormant/risk.rs for the formula.';
COMMENT ON FUNCTION @extschema@.risk_level_of(double precision) IS 'Risk level (low, medium, high, critical) of a raw risk score.';
COMMENT ON FUNCTION @extschema@.risk_level_bounds() IS 'Raw scores at which medium, high and critical begin (the level bounds of the risk score, as raw values).';
COMMENT ON FUNCTION @extschema@.peer_score(double precision, bigint) IS 'Peer contribution (0 to 0.6 in 0.2 steps) from the share of department peers who are active.';
