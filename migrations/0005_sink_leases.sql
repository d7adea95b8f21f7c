-- Reference schema, part 5: one writer per sink group (docs/replicas.md).
--
-- Replicas of the daemon with the same `file_sink.id` form a group; one of them at a
-- time, the leader, appends lines. Leadership is a lease row per group with an expiry
-- renewed by the leader and an epoch that every takeover increments. The epoch is also
-- stored with the group's published position, and the leader's publications are
-- conditional on its epoch still being the lease's, so a deposed leader can never move
-- the group's position.
--
-- Times are the database server's clock (`clock_timestamp()`), never a replica's: the
-- replicas compare nothing but the expiry the server wrote with the server's own now.

CREATE TABLE audit_sink_leases (
    sink_id text PRIMARY KEY,
    -- Incremented by every takeover; the fence of every publication.
    epoch bigint NOT NULL,
    -- The holder: its replica name (for people), its process instance (the fence), and
    -- the sink directory it writes (a restart of the same directory may take over at
    -- once: the directory's lock proves the previous process is gone).
    holder_name text,
    holder_instance uuid,
    holder_sink uuid,
    acquired_at timestamptz,
    renewed_at timestamptz,
    -- No replica may take over before this (server clock); '-infinity' once released.
    expires_at timestamptz NOT NULL,
    -- Set when the holder handed the lease over on shutdown.
    released_at timestamptz,
    -- The holder's appended position at its last renewal: a new leader counts the
    -- events it writes up to there as re-written (written by both).
    appended_tx xid8,
    appended_event_id bigint,
    CHECK (epoch >= 0)
);

COMMENT ON TABLE audit_sink_leases IS
    'Leader lease of each file sink group: which replica appends, until when, and its epoch (fence).';

-- The epoch under which the position was published, and the sink directory that
-- published it (so a directory that finds its own files behind its own publication
-- knows it lost lines, where one behind another's is taking over).
ALTER TABLE audit_sink_positions
    ADD COLUMN epoch bigint NOT NULL DEFAULT 0,
    ADD COLUMN sink_instance uuid;
