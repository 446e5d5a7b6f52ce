/* membership's pure decisions: who may see a group, manage its members, change its settings,
 * invite; which roles a user of a given kind may hold (R2, R3); which people a viewer may see
 * (R4); input checks. No I/O: tests/unit/test_membership_rules.c covers every combination. */
#ifndef MEMBERSHIP_RULES_H
#define MEMBERSHIP_RULES_H
#include "envelope.pb-c.h"
#include "extranet/iso.h"
#include <stdbool.h>
#include <stddef.h>

/* A role in a group (the isolation library's, extranet/iso.h); ROLE_NONE = not a member.
 * Ordered by power. */
typedef iso_role_t mrole_t;
#define ROLE_NONE      ISO_ROLE_NONE
#define ROLE_MEMBER    ISO_ROLE_MEMBER
#define ROLE_MODERATOR ISO_ROLE_MODERATOR
#define ROLE_OWNER     ISO_ROLE_OWNER
/* The kind of a user (the target of a change), as identity reports it. */
typedef enum { UKIND_UNKNOWN = 0, UKIND_ADMIN, UKIND_EMPLOYEE, UKIND_EXTRANET } ukind_t;
typedef enum { GKIND_INTERNAL = 0, GKIND_EXTRANET } gkind_t;

/* A decision: status OK, or a status with a message safe to show the caller. Every refusal
 * toward someone who cannot see the group is NOT_FOUND with RULES_NOT_FOUND (R1). */
typedef struct {
    Extranet__Status status;
    const char *message; /* static; NULL when OK */
} rules_verdict_t;

#define RULES_NOT_FOUND "not found"

/* "owner" | "moderator" | "member" -> role; false for anything else (ROLE_NONE has no name). */
bool rules_role_parse(const char *s, mrole_t *ret);
const char *rules_role_name(mrole_t r); /* "" for ROLE_NONE */
/* "admin" | "employee" | "extranet" -> kind (UKIND_UNKNOWN otherwise). */
ukind_t rules_ukind_parse(const char *s);
/* The signed-in actor's kind as a user kind (UKIND_UNKNOWN for anonymous/system). */
ukind_t rules_actor_ukind(Extranet__ActorKind k);

/* The group exists for this viewer: admins see every group, everyone else only the groups
 * they are a member of. NOT_FOUND otherwise (R1). */
rules_verdict_t rules_group_view(ukind_t actor, mrole_t actor_role);
/* Creating a group of kind g: admins and employees; extranet users get FORBIDDEN. */
rules_verdict_t rules_group_create(ukind_t actor);
/* Changing settings, archiving: the owner or an admin. */
rules_verdict_t rules_group_settings(ukind_t actor, mrole_t actor_role, bool archived);
/* Listing or revoking invitations: owners, moderators, admins. */
rules_verdict_t rules_invitations_manage(ukind_t actor, mrole_t actor_role);
/* Inviting by email into group g: owners, moderators, admins; extranet groups only (R2); not
 * while archived. */
rules_verdict_t rules_invite(ukind_t actor, mrole_t actor_role, gkind_t g, bool archived);

/* Whether a user of kind `target` may hold `role` in a group of kind g (R2, R3). */
rules_verdict_t rules_role_allowed(gkind_t g, ukind_t target, mrole_t role);

/* Adding `target` (currently target_role, ROLE_NONE when not a member) with `role`:
 * owners and admins may add members and moderators; moderators members only; "owner" is
 * never added (ownership is transferred). */
rules_verdict_t rules_member_add(ukind_t actor, mrole_t actor_role, gkind_t g, bool archived,
                                 ukind_t target, mrole_t target_role, mrole_t role);
/* Changing target's role (target_role != NONE) to `role`. Only the owner or an admin;
 * role OWNER transfers ownership (the current owner becomes a moderator); the owner's own
 * role changes only through a transfer (a group always has exactly one owner). */
rules_verdict_t rules_member_set_role(ukind_t actor, mrole_t actor_role, bool self, gkind_t g,
                                      bool archived, ukind_t target, mrole_t target_role,
                                      mrole_t role);
/* Removing target (target_role != NONE). Anyone but the owner may leave (self); moderators
 * remove members; the owner and admins remove members and moderators; the owner is never
 * removed (transfer first). */
rules_verdict_t rules_member_remove(ukind_t actor, mrole_t actor_role, bool self,
                                    mrole_t target_role);

/* R4: may `viewer` see the profile of a user of kind `target`? self: the same user;
 * shares_group: they have at least one group in common. Admins see everyone, employees see
 * employees and admins, and extranet users only where they share a group; extranet users
 * see only the people they share a group with. */
bool rules_person_visible(ukind_t viewer, bool self, ukind_t target, bool shares_group);

/* Input checks: NULL when valid, else a message safe to show. */
const char *rules_group_name_check(const char *s);  /* 1..200 bytes, no controls */
const char *rules_description_check(const char *s); /* 0..4000 bytes, no controls but \n\t */
const char *rules_group_kind_check(const char *s, gkind_t *ret);
const char *rules_task_visibility_check(const char *s); /* all | involved */
const char *rules_file_access_check(const char *s);     /* none | view | upload | edit */
const char *rules_email_check(const char *s);           /* a plain addr-spec, 3..254 bytes */
/* An invitation token as issued: 43 characters of base64url without padding. */
bool rules_token_shape(const char *s);
#define RULES_TOKEN_LEN 43

/* TTL of a mem:{user} cache entry in ms. */
#define RULES_MEM_CACHE_TTL_MS 60000
#endif
