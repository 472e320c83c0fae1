-- A leg may have several streams in one role: further streams of a
-- 3-way call or conference, and the streams of every SIPREC session that
-- shares the guid. SQLite cannot drop a table constraint, so the table is
-- rebuilt (the storage runs this with foreign keys off, as SQLite's own
-- procedure for schema changes asks, and checks them afterwards).
CREATE TABLE streams_new (
    id             TEXT PRIMARY KEY,
    call_guid      TEXT NOT NULL REFERENCES calls (guid) ON DELETE CASCADE,
    leg_id         TEXT NOT NULL REFERENCES legs (id) ON DELETE CASCADE,
    role           TEXT NOT NULL CHECK (role IN ('customer', 'agent')),
    external_id    TEXT,
    label          TEXT,
    params         TEXT NOT NULL DEFAULT '{}',
    stats          TEXT NOT NULL DEFAULT '{}',
    last_sequence  INTEGER NOT NULL DEFAULT 0,
    created_ms     INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL
);
INSERT INTO streams_new (id, call_guid, leg_id, role, external_id, label, params, stats,
                         last_sequence, created_ms, updated_ms)
    SELECT id, call_guid, leg_id, role, external_id, label, params, stats, last_sequence,
           created_ms, updated_ms FROM streams;
DROP TABLE streams;
ALTER TABLE streams_new RENAME TO streams;
CREATE INDEX streams_call ON streams (call_guid);
CREATE INDEX streams_leg ON streams (leg_id, role);
