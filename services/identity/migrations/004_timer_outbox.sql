-- identity's expiry-timer outbox: the user.expire timer expiry must schedule (due_at) or cancel
-- for a user, written in the same transaction as the expires_at change. One row per user: a
-- newer change replaces a pending one (and its gen, so a late OK for the old one deletes
-- nothing). The request sends it at once after the commit and deletes the row on OK; the tick
-- ships what is left (expiry was down or slow), with backoff.
CREATE TABLE timer_outbox (
    user_id         uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    op              text        NOT NULL CHECK (op IN ('schedule', 'cancel')),
    due_at          timestamptz CHECK ((op = 'schedule') = (due_at IS NOT NULL)),
    gen             uuid        NOT NULL DEFAULT gen_random_uuid(), -- new on every change
    attempts        integer     NOT NULL DEFAULT 0,                 -- tick attempts
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX timer_outbox_next ON timer_outbox (next_attempt_at);
