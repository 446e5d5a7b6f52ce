-- identity schema: users, sessions (token hashes only), TOTP 2FA (sealed secrets), recovery
-- codes and mfa tokens (hashes only), the admin policy, and two outboxes retried by the tick:
-- Redis invalidations that could not be done yet, and mail to send.

CREATE FUNCTION rfc3339(t timestamptz) RETURNS text LANGUAGE sql STABLE AS
$$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') $$;

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    display_name  text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    kind          text NOT NULL CHECK (kind IN ('admin', 'employee', 'extranet')),
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deactivated')),
    expires_at    timestamptz,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- citext is not guaranteed to be installed: case-insensitive uniqueness through lower().
CREATE UNIQUE INDEX users_email_lower ON users (lower(email));

CREATE TABLE sessions (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash   text NOT NULL UNIQUE,          -- sha256 hex of the bearer token
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_ip    text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    idle_until   timestamptz NOT NULL,          -- moved forward when used
    max_until    timestamptz NOT NULL           -- fixed at login
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE mfa (
    user_id      uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret_enc   text NOT NULL,                 -- hex(nonce || secretbox(secret)), EXTRANET_DATA_KEY
    confirmed    boolean NOT NULL DEFAULT false,
    confirmed_at timestamptz,
    last_step    bigint NOT NULL DEFAULT 0,     -- highest TOTP step used: no replay
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE recovery_codes (
    id      bigserial PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    salt    text NOT NULL,                      -- 16 random bytes, hex
    hash    text NOT NULL,                      -- sha256(salt || code) hex
    used_at timestamptz
);
CREATE INDEX recovery_codes_user ON recovery_codes (user_id);

CREATE TABLE mfa_tokens (
    token_hash text PRIMARY KEY,                -- sha256 hex of the mfa_token
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tries      integer NOT NULL DEFAULT 0,
    client_ip  text NOT NULL DEFAULT '',
    expires_at timestamptz NOT NULL
);

CREATE TABLE policy (
    id                            boolean PRIMARY KEY DEFAULT true CHECK (id),
    extranet_mfa_required         boolean NOT NULL DEFAULT true,
    extranet_public_links_allowed boolean NOT NULL DEFAULT false,
    updated_at                    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO policy DEFAULT VALUES;

-- Redis entries sess:{h} that must still be deleted (DESIGN.md §5): written in the same
-- transaction as the revocation, removed once Redis confirmed the delete.
CREATE TABLE pending_invalidations (
    token_hash text PRIMARY KEY,
    attempts   integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mail_outbox (
    id         bigserial PRIMARY KEY,
    rcpt       text NOT NULL,
    subject    text NOT NULL,
    body       text NOT NULL,
    attempts   integer NOT NULL DEFAULT 0,
    next_at    timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now()
);
