-- Alerts (src/alerts/): raised by custos (a broken chain now; anomalies later), triaged by admins.

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
