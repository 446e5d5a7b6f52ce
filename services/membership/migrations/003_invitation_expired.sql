-- Invitation state 'expired': set by membership.ExpireInvitation when expiry's
-- "invitation.expire" timer fires (clean-up only: reads already compare expires_at).
ALTER TABLE invitations DROP CONSTRAINT invitations_state_check;
ALTER TABLE invitations ADD CONSTRAINT invitations_state_check
    CHECK (state IN ('pending', 'accepting', 'accepted', 'revoked', 'expired'));
