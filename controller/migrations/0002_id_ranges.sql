-- Host uid/gid ranges of the sites' user namespaces. The controller picks them, so a
-- site has the same host ids on every worker and its /home files (the file servers
-- store the caller's host uid) keep their owner when the site scales out or moves.
-- A row outlives its site: the /home volume is named after the site and kept after a
-- delete, so a site created again under the same name gets its old ids back. A range
-- is never handed to another name.
CREATE TABLE id_ranges (
    site    TEXT PRIMARY KEY NOT NULL,
    host_id INTEGER NOT NULL UNIQUE
);

-- Sites that exist already get ranges in creation order, the order in which a worker
-- of the previous version handed out its local ranges (first 1,000,000, step 65,536).
INSERT INTO id_ranges (site, host_id)
SELECT name, 1000000 + 65536 * (ROW_NUMBER() OVER (ORDER BY created_at, rowid) - 1)
FROM sites;
