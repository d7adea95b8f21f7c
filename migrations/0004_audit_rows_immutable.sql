-- Reference schema, part 4: audit rows the mirror cannot miss, and that stay as written.
--
-- The mirror reads in (tx, id) order below the visibility horizon (SPEC §12). That is
-- gap-free only if every row's tx is the transaction that inserted it; a plain DEFAULT
-- lets a statement name another value (a copied row, a restore, a replicated row),
-- and a row whose tx is below the mirror's cursor is never mirrored, then deleted by
-- retention. A row changed or deleted after it was mirrored makes the sink disagree
-- with the table.

-- tx is the inserting transaction, whatever the statement says: INSERT naming tx,
-- COPY (a data-only `pg_dump | psql` restore), or a logical-replication apply worker.
-- ENABLE ALWAYS, so that it also fires where session_replication_role = replica (a
-- subscriber's apply and initial-copy workers): there a row arrives with the
-- publisher's tx, which means nothing in this cluster's transaction ids.
CREATE FUNCTION audit_events_force_tx() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.tx := pg_catalog.pg_current_xact_id();
    RETURN NEW;
END
$$;

CREATE TRIGGER audit_events_force_tx
    BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_force_tx();
ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_force_tx;

-- No UPDATE, no TRUNCATE, and DELETE only from audit_retention_delete_batch: its SET
-- clause below turns compartment_audit.retention_delete on while it runs, and
-- PostgreSQL restores the previous value when it returns (or fails), so the flag
-- never outlives the call. One check per statement, not per row.
--
-- This guards against mistakes (a stray statement, an ORM, a script), not against the
-- table's owner or a superuser: they can set the flag by hand, DISABLE or DROP the
-- trigger. ENABLE ALWAYS means session_replication_role = replica does not skip it
-- (a subscriber applying replicated UPDATEs or DELETEs stops with this error: publish
-- inserts only, see README). Immutability against the application itself needs an
-- application role that is not the owner and holds only INSERT and SELECT.
CREATE FUNCTION audit_events_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND pg_catalog.current_setting('compartment_audit.retention_delete', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit events cannot be changed: % on audit_events is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit events are append-only; only retention cleanup (audit_retention_delete_batch) deletes them.';
END
$$;

CREATE TRIGGER audit_events_immutable
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_immutable();
ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_immutable;

ALTER FUNCTION audit_retention_delete_batch(uuid[], timestamptz[], timestamptz[], bigint[], bigint, bigint, text)
    SET compartment_audit.retention_delete = 'on';

COMMENT ON COLUMN audit_events.tx IS
    'Inserting transaction, set by the audit_events_force_tx trigger whatever the INSERT says; the mirror''s cursor is (tx, id).';
COMMENT ON TABLE audit_events IS
    'Organization-scoped, append-only audit events (no UPDATE; DELETE only by audit_retention_delete_batch). Compartment''s API inserts them with a plain INSERT naming these columns.';
