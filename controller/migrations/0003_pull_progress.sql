-- Image pull progress of a starting instance, as its agent last reported it (bytes of
-- layers downloaded and in all), so `berth sites create` can draw a progress bar.
-- Both are 0 when no pull is running.
ALTER TABLE instances ADD COLUMN pull_done_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN pull_total_bytes INTEGER NOT NULL DEFAULT 0;
