-- A version per pending invalidation: every change that queues one bumps it, and a delete after
-- a successful Redis DEL removes the row only at the version that change saw. Without it, a
-- change whose DEL succeeded could delete the row of a later change whose DEL failed, and the
-- stale mem:{user} entry would outlive that change until its TTL.
ALTER TABLE pending_invalidations ADD COLUMN version bigint NOT NULL DEFAULT 1;
