-- Desired state of the controller. Every change to desired state or to instance
-- readiness bumps `revision` in the same transaction, so watch streams can resume.

CREATE TABLE sites (
    name              TEXT PRIMARY KEY NOT NULL,
    image             TEXT NOT NULL,
    image_digest      TEXT NOT NULL,           -- pinned reference host/repo@sha256:...
    instances         INTEGER NOT NULL CHECK (instances >= 0),
    port              INTEGER NOT NULL,
    env               TEXT NOT NULL DEFAULT '{}',  -- JSON object of strings
    insecure_registry INTEGER NOT NULL DEFAULT 0,
    registry_auth     TEXT NOT NULL DEFAULT '',
    created_at        TEXT NOT NULL,
    generation        INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE workers (
    id            TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL UNIQUE,
    ingress_addr  TEXT NOT NULL,
    capacity      INTEGER NOT NULL,
    memory_mb     INTEGER NOT NULL,
    registered_at TEXT NOT NULL
);

CREATE TABLE instances (
    id         TEXT PRIMARY KEY NOT NULL,
    site       TEXT NOT NULL REFERENCES sites(name) ON DELETE CASCADE,
    worker_id  TEXT NULL REFERENCES workers(id) ON DELETE SET NULL,
    state      TEXT NOT NULL DEFAULT 'pending',
    message    TEXT NOT NULL DEFAULT '',
    generation INTEGER NOT NULL
);

CREATE INDEX instances_by_site ON instances(site);
CREATE INDEX instances_by_worker ON instances(worker_id);

CREATE TABLE revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);

INSERT INTO revision (id, value) VALUES (1, 0);
