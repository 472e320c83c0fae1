-- The SIP dialog of each recording session in progress: what a BYE needs
-- when the node that had the call restarts or is lost (siprecd.orphans).
-- A row lives while its call is up; rows of a node are taken (deleted and
-- returned) by the node that hangs them up.
CREATE TABLE dialogs (
    call_id        TEXT NOT NULL,
    local_tag      TEXT NOT NULL,
    remote_tag     TEXT NOT NULL DEFAULT '',
    node           TEXT NOT NULL,
    guid           TEXT,
    transport      TEXT NOT NULL,
    local_uri      TEXT NOT NULL,
    remote_uri     TEXT NOT NULL,
    remote_target  TEXT NOT NULL,
    route_set      JSONB NOT NULL DEFAULT '[]',
    local_seq      BIGINT NOT NULL,
    remote_seq     BIGINT NOT NULL,
    source         TEXT NOT NULL,
    local_address  TEXT NOT NULL,
    secure         BOOLEAN NOT NULL DEFAULT FALSE,
    created_ms     BIGINT NOT NULL,
    updated_ms     BIGINT NOT NULL,
    PRIMARY KEY (call_id, local_tag, remote_tag)
);
CREATE INDEX dialogs_node ON dialogs (node);
