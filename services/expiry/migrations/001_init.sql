-- expiry's schema: durable timers. A timer is (kind, subject, due_at); at most one pending timer
-- per (kind, subject), so Schedule is an upsert that moves due_at. Rows that are done or
-- cancelled stay as history (the unique index covers pending rows only).
CREATE TABLE expiry.timers (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    kind            text        NOT NULL,
    subject         text        NOT NULL,
    due_at          timestamptz NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'done', 'cancelled')),
    -- calls made to the owner (counted when claimed; given back when a claim is released
    -- without calling)
    attempts        integer     NOT NULL DEFAULT 0,
    -- not fired before this: the claim's lease while a call is in flight, then the backoff
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- the claim of the copy calling the owner right now; only that claim may finish the row
    claim           uuid,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    fired_at        timestamptz
);

CREATE UNIQUE INDEX timers_pending_kind_subject ON expiry.timers (kind, subject)
    WHERE state = 'pending';
-- the firing scan: pending rows in due order
CREATE INDEX timers_pending_due ON expiry.timers (due_at) WHERE state = 'pending';
