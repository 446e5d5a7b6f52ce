-- membership schema: groups, members (exactly one owner per group), invitations (token hashes
-- only) and the outbox of Redis invalidations (mem:{user}) that could not be done yet.

CREATE FUNCTION rfc3339(t timestamptz) RETURNS text LANGUAGE sql STABLE AS
$$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') $$;

CREATE TABLE groups (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                 text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description          text NOT NULL DEFAULT '' CHECK (length(description) <= 4000),
    kind                 text NOT NULL CHECK (kind IN ('internal', 'extranet')),
    task_visibility      text NOT NULL DEFAULT 'all'
                         CHECK (task_visibility IN ('all', 'involved')),
    external_file_access text NOT NULL DEFAULT 'view'
                         CHECK (external_file_access IN ('none', 'view', 'upload', 'edit')),
    archived             boolean NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- user_kind is identity's kind at the time the row was written (R2/R3 were checked against
-- identity then); it is a copy for the contacts filter, never the authority.
CREATE TABLE members (
    group_id   uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL,
    role       text NOT NULL CHECK (role IN ('owner', 'moderator', 'member')),
    user_kind  text NOT NULL CHECK (user_kind IN ('admin', 'employee', 'extranet')),
    joined_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, user_id),
    CHECK (user_kind <> 'extranet' OR role = 'member')                     -- R3
);
CREATE INDEX members_user ON members (user_id);
-- Exactly one owner: at most one by this index, at least one by the handlers (an owner can only
-- leave through a transfer, which swaps both rows in one transaction).
CREATE UNIQUE INDEX members_one_owner ON members (group_id) WHERE role = 'owner';

CREATE TABLE invitations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    group_id    uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    email       text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    token_hash  text NOT NULL UNIQUE,        -- sha256 hex of the token; the token is never stored
    state       text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'accepting', 'accepted', 'revoked')),
    claimed_until timestamptz,               -- 'accepting': the claim of one redeemer
    expires_at  timestamptz NOT NULL,
    invited_by  uuid NOT NULL,
    accepted_by uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invitations_group ON invitations (group_id, created_at);

CREATE TABLE pending_invalidations (
    user_id    uuid PRIMARY KEY,
    attempts   integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
