-- siprecd schema, version 1 (SQLite). Times are epoch milliseconds (UTC);
-- JSON columns hold JSON text. Keep in step with ../postgresql/0001_initial.sql.
-- Statements end with ';' at the end of a line (the migration runner splits there).

CREATE TABLE apps (
    api_id          TEXT PRIMARY KEY,
    secret_hash     TEXT NOT NULL,
    webhook_target  TEXT,
    label           TEXT,
    created_ms      INTEGER NOT NULL,
    rotated_ms      INTEGER,
    revoked_ms      INTEGER
);

CREATE TABLE calls (
    guid             TEXT PRIMARY KEY,
    conversation_id  TEXT NOT NULL UNIQUE,
    call_id          TEXT,
    identifiers      TEXT NOT NULL DEFAULT '[]',
    node             TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('active', 'ended')),
    mixed            INTEGER NOT NULL DEFAULT 0,
    started_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    ended_ms         INTEGER,
    end_reason       TEXT,
    sip              TEXT NOT NULL DEFAULT '{}',
    participants     TEXT NOT NULL DEFAULT '[]'
);
-- Retention walks ended calls oldest first; a dead node's calls are ended.
CREATE INDEX calls_ended ON calls (ended_ms) WHERE state = 'ended';
CREATE INDEX calls_node_active ON calls (node) WHERE state = 'active';

CREATE TABLE legs (
    id           TEXT PRIMARY KEY,
    call_guid    TEXT NOT NULL REFERENCES calls (guid) ON DELETE CASCADE,
    number       INTEGER NOT NULL,
    customer_id  TEXT,
    agent_id     TEXT,
    params       TEXT NOT NULL DEFAULT '{}',
    started_ms   INTEGER NOT NULL,
    ended_ms     INTEGER,
    UNIQUE (call_guid, number)
);

CREATE TABLE streams (
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
    updated_ms     INTEGER NOT NULL,
    UNIQUE (leg_id, role)
);
CREATE INDEX streams_call ON streams (call_guid);

CREATE TABLE messages (
    pk               INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    stream_id        TEXT NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    call_guid        TEXT NOT NULL REFERENCES calls (guid) ON DELETE CASCADE,
    leg_id           TEXT NOT NULL,
    sequence         INTEGER NOT NULL,
    text             TEXT NOT NULL,
    unredacted_text  TEXT,
    tokens           TEXT,
    start_ms         INTEGER NOT NULL,
    end_ms           INTEGER NOT NULL,
    created_ms       INTEGER NOT NULL,
    client_ms        INTEGER,
    language         TEXT,
    UNIQUE (stream_id, sequence)
);
-- GET messages by guid, in order; the daily export by creation time.
CREATE INDEX messages_call ON messages (call_guid, pk);
CREATE INDEX messages_created ON messages (created_ms, pk);

CREATE TABLE outbox (
    id                INTEGER PRIMARY KEY,
    message_pk        INTEGER NOT NULL REFERENCES messages (pk) ON DELETE CASCADE,
    stream_id         TEXT NOT NULL,
    sequence          INTEGER NOT NULL,
    target            TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'in-flight', 'delivered', 'dead')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms   INTEGER NOT NULL,
    last_error        TEXT,
    claimed_by        TEXT,
    claimed_until_ms  INTEGER,
    created_ms        INTEGER NOT NULL,
    delivered_ms      INTEGER,
    UNIQUE (message_pk, target)
);
-- Due rows, and the head of each (stream, target) queue.
CREATE INDEX outbox_due ON outbox (next_attempt_ms) WHERE state IN ('pending', 'in-flight');
CREATE INDEX outbox_open ON outbox (stream_id, target, sequence) WHERE state IN ('pending', 'in-flight');
CREATE INDEX outbox_dead ON outbox (target, id) WHERE state = 'dead';

CREATE TABLE export_runs (
    id           INTEGER PRIMARY KEY,
    feed         TEXT NOT NULL,
    day          TEXT NOT NULL,
    node         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    started_ms   INTEGER NOT NULL,
    finished_ms  INTEGER,
    row_count    INTEGER,
    detail       TEXT,
    error        TEXT
);
CREATE UNIQUE INDEX export_runs_running ON export_runs (feed, day) WHERE state = 'running';
CREATE INDEX export_runs_day ON export_runs (feed, day, id);

CREATE TABLE nodes (
    id            TEXT PRIMARY KEY,
    address       TEXT,
    started_ms    INTEGER NOT NULL,
    heartbeat_ms  INTEGER NOT NULL
);

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_ms  INTEGER NOT NULL
);

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY,
    at_ms   INTEGER NOT NULL,
    app_id  TEXT,
    action  TEXT NOT NULL,
    guid    TEXT,
    detail  TEXT
);
CREATE INDEX audit_guid ON audit_log (guid, id);
CREATE INDEX audit_app ON audit_log (app_id, id);
