-- Reference schema, part 3: where retention cleanup left off.
--
-- One run of audit.retention.cleanup deletes at most BATCH_SIZE × MAX_BATCHES rows,
-- shared round-robin between the organizations that have expired rows. When a run
-- stops at that cap, the organization whose turn came next is recorded here and the
-- next run (on any replica) starts with it, so a huge organization cannot take every
-- run's whole budget while the others wait.

CREATE TABLE audit_retention_state (
    -- The job's name (`audit.retention.cleanup`): one row per job.
    job text PRIMARY KEY,
    -- The next run serves this organization first, then the following ones in id
    -- order, wrapping around. No foreign key: deleting an organization must not
    -- depend on this row, and a vanished id simply resumes at the next larger one.
    resume_organization_id uuid,
    updated_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE audit_retention_state IS
    'Where the last capped retention cleanup run stopped; the next run resumes there.';
