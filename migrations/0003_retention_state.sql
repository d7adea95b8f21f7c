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

-- One retention batch, server-side, so that a batch is one statement (one short
-- transaction) and one round trip however many organizations it serves.
--
-- Two passes over the organizations, in the order given:
--   1. each gets a turn of at most turn_size rows (its oldest, after its keyset),
--      until the batch is full;
--   2. if every organization had its turn and the batch still has room, the ones
--      that have more rows fill it, in order.
-- Small turns make a batch serve many organizations at once: their oldest rows
-- share heap pages (a log interleaves organizations in time), so a batch touches
-- far fewer pages than one organization's rows alone would, and every organization
-- progresses every round. The second pass keeps batches full, so a run deletes
-- exactly batch_size × max_batches rows whenever that many have expired.
--
-- Only rows before the organization's cutoff, and at or before the lowest position
-- the file sinks of this cluster published (`(tx, id) <= (tx, event_id)`; no
-- position, no bound) are deleted, so a sink never misses an event retention
-- removed first. The bound is read in the same statement, hence the same snapshot,
-- as the rows.
--
-- The rows are found through audit_events_org_occurred_idx read backwards (oldest
-- first), one more than the limit (to tell whether more are left), and deleted by
-- their physical address (ctid) found in the same statement and snapshot: a TID scan,
-- without a second index lookup per row. The address cannot point at another row
-- meanwhile (the statement's snapshot keeps the tuple from being vacuumed); if a
-- concurrent UPDATE moved the row, the re-check of the new version fails and the row
-- is left for the next run.
--
-- Returns one row per organization that lost rows, in order: its position in the
-- arrays (from 1), the rows deleted, the last row deleted (its keyset for the next
-- turn), whether it has more rows that may be deleted now, and (on every row) the
-- position of the last organization the first pass reached: later ones were not
-- looked at.
CREATE FUNCTION audit_retention_delete_batch(
    organization_ids uuid[],
    cutoffs timestamptz[],
    after_occurred_at timestamptz[],
    after_ids bigint[],
    batch_size bigint,
    turn_size bigint,
    cluster_system_identifier text
) RETURNS TABLE (
    target integer,
    rows_deleted bigint,
    last_occurred_at timestamptz,
    last_id bigint,
    more boolean,
    reached integer
)
LANGUAGE plpgsql
-- The statement below runs once per organization turn with new values: a generic
-- plan saves planning it every time (about as long as a small turn's deletes), and
-- the generic plan (the index read backwards, stopping at the limit) is the right
-- one whatever the organization's size, where a custom plan for a small one may
-- read all its expired rows and sort them.
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    targets constant integer := coalesce(cardinality(organization_ids), 0);
    room bigint := batch_size;
    deleted_rows bigint[] := array_fill(0::bigint, ARRAY[targets]);
    has_more boolean[] := array_fill(false, ARRAY[targets]);
    at timestamptz[] := after_occurred_at;
    ids bigint[] := after_ids;
    pass integer;
    n bigint;
    step_at timestamptz;
    step_id bigint;
    step_more boolean;
BEGIN
    reached := 0;
    FOR pass IN 1 .. 2 LOOP
        FOR i IN 1 .. targets LOOP
            EXIT WHEN room <= 0;
            -- The second pass serves only organizations the first left with more.
            CONTINUE WHEN pass = 2 AND NOT has_more[i];
            IF pass = 1 THEN
                reached := i;
            END IF;
            WITH picked AS MATERIALIZED (
                SELECT ARRAY(
                    SELECT e.ctid FROM audit_events AS e
                    WHERE e.organization_id = organization_ids[i]
                      AND e.occurred_at < cutoffs[i]
                      AND (e.occurred_at, e.id)
                          > (COALESCE(at[i], '-infinity'), COALESCE(ids[i], -9223372036854775808))
                      AND (e.tx, e.id) <= (
                          SELECT b.tx, b.event_id FROM (
                              SELECT p.tx, p.event_id FROM audit_sink_positions AS p
                              WHERE p.system_identifier = cluster_system_identifier
                              UNION ALL
                              SELECT '18446744073709551615'::xid8, 9223372036854775807
                          ) AS b
                          ORDER BY b.tx, b.event_id
                          LIMIT 1)
                    ORDER BY e.occurred_at, e.id
                    LIMIT CASE WHEN pass = 1 THEN least(room, turn_size) ELSE room END + 1
                ) AS ctids
            ), limits AS (
                SELECT p.ctids,
                       least(cardinality(p.ctids),
                             CASE WHEN pass = 1 THEN least(room, turn_size) ELSE room END) AS take
                FROM picked AS p
            ), deleted AS (
                DELETE FROM audit_events
                WHERE ctid = ANY ((SELECT l.ctids[1:l.take] FROM limits AS l)::tid[])
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM deleted), r.occurred_at, r.id,
                   cardinality(l.ctids) > l.take
            INTO n, step_at, step_id, step_more
            FROM limits AS l
            JOIN audit_events AS r ON r.ctid = l.ctids[l.take];
            IF NOT FOUND THEN
                -- Nothing picked: nothing (more) to delete now.
                has_more[i] := false;
                CONTINUE;
            END IF;
            deleted_rows[i] := deleted_rows[i] + n;
            at[i] := step_at;
            ids[i] := step_id;
            has_more[i] := step_more;
            room := room - n;
            -- Nothing deleted although rows were picked: they were updated
            -- concurrently; leave them for the next run rather than spin.
            IF n = 0 THEN
                has_more[i] := false;
            END IF;
        END LOOP;
    END LOOP;
    FOR i IN 1 .. targets LOOP
        CONTINUE WHEN deleted_rows[i] = 0;
        target := i;
        rows_deleted := deleted_rows[i];
        last_occurred_at := at[i];
        last_id := ids[i];
        more := has_more[i];
        RETURN NEXT;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION audit_retention_delete_batch(uuid[], timestamptz[], timestamptz[], bigint[], bigint, bigint, text) IS
    'One batch of audit.retention.cleanup: turns of the oldest expired rows of the given organizations, up to batch_size, never past a sink position.';
