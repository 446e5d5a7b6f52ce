-- audit's schema: one append-only hash chain (README.md). records.seq is gap-free from 1;
-- head holds the last seq and hash and is locked (SELECT ... FOR UPDATE) by every append, so
-- several audit copies append one after the other and never fork the chain.
CREATE TABLE audit.records (
    seq           bigint      PRIMARY KEY CHECK (seq > 0),
    event_id      uuid        NOT NULL UNIQUE,
    time          timestamptz NOT NULL,
    actor_id      text        NOT NULL,
    actor_kind    text        NOT NULL,
    actor_ip      text        NOT NULL,
    actor_session text        NOT NULL,
    action        text        NOT NULL,
    target_type   text        NOT NULL,
    target_id     text        NOT NULL,
    group_id      text        NOT NULL,
    outcome       text        NOT NULL,
    request_id    text        NOT NULL,
    -- the producer's JSON text, byte for byte (jsonb would re-serialize it and change the hash)
    details       text        NOT NULL,
    service       text        NOT NULL,
    prev_hash     bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash          bytea       NOT NULL CHECK (length(hash) = 32),
    appended_at   timestamptz NOT NULL DEFAULT now()
);

-- the filters of Query/Export, each walked in seq order (the cursor)
CREATE INDEX records_actor ON audit.records (actor_id, seq);
CREATE INDEX records_action ON audit.records (action, seq);
CREATE INDEX records_group ON audit.records (group_id, seq) WHERE group_id <> '';
CREATE INDEX records_target ON audit.records (target_id, seq) WHERE target_id <> '';
CREATE INDEX records_time ON audit.records (time);

CREATE TABLE audit.head (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq  bigint  NOT NULL,
    hash bytea   NOT NULL CHECK (length(hash) = 32)
);
INSERT INTO audit.head (id, seq, hash) VALUES (true, 0, decode(repeat('00', 32), 'hex'));

-- Retention: records are never changed or removed. The service has no such statement; this
-- trigger refuses it from anyone else too (tests bypass it with ALTER TABLE ... DISABLE TRIGGER
-- as the table owner to simulate tampering). In production audit also runs as a role without
-- UPDATE/DELETE/TRUNCATE on audit.records (deploy/db-init).
CREATE FUNCTION audit.records_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit.records is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER records_immutable BEFORE UPDATE OR DELETE ON audit.records
    FOR EACH ROW EXECUTE FUNCTION audit.records_immutable();
CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON audit.records
    FOR EACH STATEMENT EXECUTE FUNCTION audit.records_immutable();
