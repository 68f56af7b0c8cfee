-- Keys of the envelope encryption (src/crypto/): each tenant's data keys, wrapped by the master
-- key, and each subject's keys, wrapped by a data key. Only custos' own functions touch them.

CREATE TABLE @extschema@.data_keys (
    tenant_id  uuid NOT NULL,
    version    integer NOT NULL CHECK (version > 0),
    wrapped    bytea NOT NULL,
    master_key_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, version)
);
COMMENT ON TABLE @extschema@.data_keys IS
'Per-tenant AES-256 data keys, each version wrapped (AES-256-GCM) by the master key named in master_key_id, with the tenant and version as associated data. The newest version wraps new subject keys; older ones stay for reading. custos.rewrap_data_keys moves them to a new master key.';

CREATE TABLE @extschema@.subject_keys (
    tenant_id        uuid NOT NULL,
    id               uuid PRIMARY KEY,
    short_id         integer NOT NULL,
    subject          text,
    subject_ref      uuid NOT NULL,
    data_key_version integer NOT NULL,
    wrapped          bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    retired_at       timestamptz,
    destroyed_at     timestamptz,
    CHECK ((destroyed_at IS NULL) = (wrapped IS NOT NULL))
);
CREATE UNIQUE INDEX subject_keys_live ON @extschema@.subject_keys (tenant_id, subject)
    WHERE destroyed_at IS NULL AND retired_at IS NULL;
CREATE UNIQUE INDEX subject_keys_short_id ON @extschema@.subject_keys (tenant_id, short_id);
CREATE INDEX subject_keys_subject ON @extschema@.subject_keys (tenant_id, subject);
CREATE INDEX subject_keys_ref ON @extschema@.subject_keys (tenant_id, subject_ref);
COMMENT ON TABLE @extschema@.subject_keys IS
'Per-subject AES-256 keys that seal a person''s fields in the ledger, wrapped by a tenant data key. short_id (random, unique in the tenant) names the key in the values it sealed (enc3.<short_id>.<ciphertext>). subject_ref is the subject''s pseudonym, the same for all its keys: encrypted events store the actor as subject:<subject_ref in base64url>. custos.forget_subject destroys the keys (wrapped and subject become NULL): what they sealed can no longer be read and the pseudonym names nobody, while the chain still verifies.';

SELECT @extschema@.enable_tenant_isolation('@extschema@.data_keys');
SELECT @extschema@.enable_tenant_isolation('@extschema@.subject_keys');
-- Its rows are user data: pg_dump carries them (extension tables are otherwise left out).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.data_keys', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.subject_keys', '');
REVOKE ALL ON @extschema@.data_keys, @extschema@.subject_keys FROM PUBLIC;

COMMENT ON FUNCTION @extschema@.rotate_data_key(uuid) IS
'Makes a new data key version for the tenant and retires its subjects'' current keys, so new values are sealed under fresh keys; values sealed before stay readable. Returns the new version.';

COMMENT ON FUNCTION @extschema@.rewrap_data_keys(uuid) IS
'Master-key rotation: rewraps the data keys of a tenant (NULL: every tenant) that custos.master_key_previous wrapped under custos.master_key, in one transaction. Returns how many were rewrapped, how many were already under the configured key, and its id. Superusers only.';
