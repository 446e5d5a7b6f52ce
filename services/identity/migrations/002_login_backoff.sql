-- Failed logins slow down per account (DESIGN.md §12): exponential backoff after a few
-- failures, capped, never a permanent lock-out. Keyed by sha256(lower(email)) whether or not
-- the account exists, so the backoff itself tells nothing about which emails are registered.
CREATE TABLE login_failures (
    account    text PRIMARY KEY,            -- sha256 hex of the lower-cased email
    failures   integer NOT NULL DEFAULT 0,
    next_at    timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
