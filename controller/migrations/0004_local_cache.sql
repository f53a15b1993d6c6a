-- Per-site local cache of /home (docs/home-semantics.md, "Local cache"): when 1, each
-- instance gets a copy of the site's /home on its worker's disk, made before it starts.
ALTER TABLE sites ADD COLUMN local_cache INTEGER NOT NULL DEFAULT 0;
