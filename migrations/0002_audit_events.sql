-- Reference schema, part 2: the audit events, their doorbell, and the sink positions.

CREATE TABLE audit_events (
    -- Allocated at insert, visible at commit: ids do NOT arrive in order (see tx).
    -- ALWAYS, so that an explicit id cannot collide with the sequence later.
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- NO ACTION: an organization cannot be deleted while it still has audit events,
    -- so no event disappears behind the file sink's and retention's back.
    organization_id uuid NOT NULL REFERENCES organizations (id),
    occurred_at timestamptz NOT NULL DEFAULT now(),
    event_type text NOT NULL CONSTRAINT audit_events_event_type_not_blank CHECK (event_type <> ''),
    actor_type text NOT NULL,
    actor_id text NOT NULL,
    actor_email text,
    target_type text,
    target_id text,
    project_id text,
    status text NOT NULL DEFAULT 'succeeded'
        CONSTRAINT audit_events_status_check CHECK (status IN ('succeeded', 'failed', 'denied')),
    metadata jsonb NOT NULL DEFAULT '{}'
        CONSTRAINT audit_events_metadata_is_object CHECK (jsonb_typeof(metadata) = 'object'),
    -- Commit-order key: the id of the inserting transaction. A reader that only
    -- takes rows with tx below its snapshot's xmin, ordered by (tx, id), never skips
    -- a row whose transaction commits after a later id's (SPEC §12).
    tx xid8 NOT NULL DEFAULT pg_current_xact_id()
);

COMMENT ON TABLE audit_events IS
    'Organization-scoped audit events. Compartment''s API inserts them with a plain INSERT naming these columns.';
COMMENT ON COLUMN audit_events.tx IS
    'Inserting transaction (pg_current_xact_id()); the mirror''s cursor is (tx, id).';
COMMENT ON COLUMN audit_events.metadata IS
    'Event-type specific details; allowlisted and scrubbed before anything leaves the database.';

-- The mirror's cursor: WHERE (tx, id) > (…) AND tx < pg_snapshot_xmin(…) ORDER BY tx, id.
CREATE INDEX audit_events_tx_id_idx ON audit_events (tx, id);

-- The list API (newest first, keyset pagination on (occurred_at, id)) and retention
-- (per organization, oldest first: the same index scanned backwards).
CREATE INDEX audit_events_org_occurred_idx
    ON audit_events (organization_id, occurred_at DESC, id DESC);

-- API filters, each with the list order so that a filtered page is one index range.
-- text_pattern_ops lets a prefix filter (`organization.user.*` → LIKE 'organization.user.%')
-- use the index whatever the database collation.
CREATE INDEX audit_events_org_event_type_idx
    ON audit_events (organization_id, event_type text_pattern_ops, occurred_at DESC, id DESC);
CREATE INDEX audit_events_org_actor_id_idx
    ON audit_events (organization_id, actor_id, occurred_at DESC, id DESC);
-- The actor filter matches e-mail addresses case-insensitively: lower(actor_email) = lower($1).
CREATE INDEX audit_events_org_actor_email_idx
    ON audit_events (organization_id, lower(actor_email), occurred_at DESC, id DESC)
    WHERE actor_email IS NOT NULL;
CREATE INDEX audit_events_org_target_type_idx
    ON audit_events (organization_id, target_type, occurred_at DESC, id DESC)
    WHERE target_type IS NOT NULL;
CREATE INDEX audit_events_org_project_idx
    ON audit_events (organization_id, project_id, occurred_at DESC, id DESC)
    WHERE project_id IS NOT NULL;

-- The doorbell. The payload is empty on purpose: the daemon always reads the rows
-- from the table, and identical notifications of one transaction are folded into
-- one, so a transaction inserting many rows rings about once.
CREATE FUNCTION audit_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('compartment_audit_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER audit_events_notify
    AFTER INSERT ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_notify();

-- Where each file sink has durably written up to, published by the mirror after the
-- fsync. Retention reads it and never deletes an event a sink has not written yet.
CREATE TABLE audit_sink_positions (
    sink_id text PRIMARY KEY,
    -- pg_control_system().system_identifier of the cluster the position belongs to:
    -- after a restore into another cluster xids restart and the position means nothing.
    system_identifier text NOT NULL,
    -- The (tx, id) cursor of the last event written.
    tx xid8 NOT NULL,
    event_id bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE audit_sink_positions IS
    'Durable position of each file sink; retention will not delete past it.';
