/* Unit tests of membership's pure rules (services/membership/rules.c): every combination of
 * actor kind, actor role, target kind, target role, new role, group kind and archived flag is
 * compared with an oracle written here from DESIGN.md §4 (R1-R4) and the issue, not from the
 * code; plus parsing and input checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "rules.h"

#define OK        EXTRANET__STATUS__OK
#define NOT_FOUND EXTRANET__STATUS__NOT_FOUND
#define FORBIDDEN EXTRANET__STATUS__FORBIDDEN
#define INVALID   EXTRANET__STATUS__INVALID
#define CONFLICT  EXTRANET__STATUS__CONFLICT

static const ukind_t s_kinds[] = {UKIND_UNKNOWN, UKIND_ADMIN, UKIND_EMPLOYEE, UKIND_EXTRANET};
static const mrole_t s_roles[] = {ROLE_NONE, ROLE_MEMBER, ROLE_MODERATOR, ROLE_OWNER};
#define N(a) (sizeof(a) / sizeof((a)[0]))

/* Oracle: can the actor see the group at all? */
static int o_sees(ukind_t a, mrole_t r) {
    return a == UKIND_ADMIN || ((a == UKIND_EMPLOYEE || a == UKIND_EXTRANET) && r != ROLE_NONE);
}
static int o_manager(ukind_t a, mrole_t r) {
    return a == UKIND_ADMIN || r == ROLE_OWNER || r == ROLE_MODERATOR;
}
/* R2 + R3: may a user of kind t hold role in a group of kind g? */
static int o_role_ok(gkind_t g, ukind_t t, mrole_t role) {
    if (t == UKIND_EXTRANET)
        return g == GKIND_EXTRANET && role == ROLE_MEMBER;
    return t != UKIND_UNKNOWN && role != ROLE_NONE;
}

static void t_view(void **state) {
    (void)state;
    for (size_t i = 0; i < N(s_kinds); i++)
        for (size_t j = 0; j < N(s_roles); j++) {
            rules_verdict_t v = rules_group_view(s_kinds[i], s_roles[j]);
            if (o_sees(s_kinds[i], s_roles[j])) {
                assert_int_equal(v.status, OK);
            } else {
                /* R1: hidden exactly like missing. */
                assert_int_equal(v.status, NOT_FOUND);
                assert_string_equal(v.message, RULES_NOT_FOUND);
            }
        }
}

static void t_create(void **state) {
    (void)state;
    assert_int_equal(rules_group_create(UKIND_ADMIN).status, OK);
    assert_int_equal(rules_group_create(UKIND_EMPLOYEE).status, OK);
    assert_int_equal(rules_group_create(UKIND_EXTRANET).status, FORBIDDEN);
    assert_int_equal(rules_group_create(UKIND_UNKNOWN).status, EXTRANET__STATUS__UNAUTHENTICATED);
}

static void t_settings_and_invite(void **state) {
    (void)state;
    for (size_t i = 0; i < N(s_kinds); i++)
        for (size_t j = 0; j < N(s_roles); j++)
            for (int archived = 0; archived < 2; archived++)
                for (int g = 0; g < 2; g++) {
                    ukind_t a = s_kinds[i];
                    mrole_t r = s_roles[j];
                    rules_verdict_t s = rules_group_settings(a, r, archived);
                    rules_verdict_t m = rules_invitations_manage(a, r);
                    rules_verdict_t inv = rules_invite(a, r, (gkind_t)g, archived);
                    if (!o_sees(a, r)) {
                        assert_int_equal(s.status, NOT_FOUND);
                        assert_int_equal(m.status, NOT_FOUND);
                        assert_int_equal(inv.status, NOT_FOUND);
                        continue;
                    }
                    int owner = a == UKIND_ADMIN || r == ROLE_OWNER;
                    assert_int_equal(s.status, !owner ? FORBIDDEN : archived ? CONFLICT : OK);
                    assert_int_equal(m.status, o_manager(a, r) ? OK : FORBIDDEN);
                    Extranet__Status want = !o_manager(a, r)      ? FORBIDDEN
                                            : g != GKIND_EXTRANET ? INVALID /* R2 */
                                            : archived            ? CONFLICT
                                                                  : OK;
                    assert_int_equal(inv.status, want);
                }
}

static void t_role_allowed(void **state) {
    (void)state;
    for (int g = 0; g < 2; g++)
        for (size_t i = 0; i < N(s_kinds); i++)
            for (size_t j = 0; j < N(s_roles); j++) {
                rules_verdict_t v = rules_role_allowed((gkind_t)g, s_kinds[i], s_roles[j]);
                if (s_kinds[i] == UKIND_UNKNOWN)
                    assert_int_equal(v.status, NOT_FOUND);
                else
                    assert_int_equal(v.status,
                                     o_role_ok((gkind_t)g, s_kinds[i], s_roles[j]) ? OK : INVALID);
            }
    /* The messages name the rule. */
    assert_non_null(strstr(rules_role_allowed(GKIND_INTERNAL, UKIND_EXTRANET, ROLE_MEMBER).message,
                           "internal"));
    assert_non_null(strstr(
        rules_role_allowed(GKIND_EXTRANET, UKIND_EXTRANET, ROLE_MODERATOR).message, "member"));
}

static void t_member_add(void **state) {
    (void)state;
    for (size_t i = 0; i < N(s_kinds); i++)
        for (size_t j = 0; j < N(s_roles); j++)
            for (int g = 0; g < 2; g++)
                for (int archived = 0; archived < 2; archived++)
                    for (size_t k = 0; k < N(s_kinds); k++)
                        for (size_t l = 0; l < N(s_roles); l++)
                            for (size_t m = 0; m < N(s_roles); m++) {
                                ukind_t a = s_kinds[i], t = s_kinds[k];
                                mrole_t r = s_roles[j], tr = s_roles[l], nr = s_roles[m];
                                rules_verdict_t v =
                                    rules_member_add(a, r, (gkind_t)g, archived, t, tr, nr);
                                Extranet__Status want;
                                if (!o_sees(a, r))
                                    want = NOT_FOUND;
                                else if (!o_manager(a, r))
                                    want = FORBIDDEN;
                                else if (archived)
                                    want = CONFLICT;
                                else if (nr == ROLE_OWNER)
                                    want = INVALID; /* exactly one owner: transfer instead */
                                else if (t == UKIND_UNKNOWN)
                                    want = NOT_FOUND;
                                else if (!o_role_ok((gkind_t)g, t, nr))
                                    want = INVALID; /* R2, R3 */
                                else if (nr == ROLE_MODERATOR && a != UKIND_ADMIN &&
                                         r != ROLE_OWNER)
                                    want = FORBIDDEN;
                                else if (tr != ROLE_NONE)
                                    want = CONFLICT;
                                else
                                    want = OK;
                                if (v.status != want)
                                    fail_msg("add a=%d r=%d g=%d arch=%d t=%d tr=%d nr=%d: got "
                                             "%d want %d",
                                             a, r, g, archived, t, tr, nr, v.status, want);
                            }
}

static void t_member_set_role(void **state) {
    (void)state;
    for (size_t i = 0; i < N(s_kinds); i++)
        for (size_t j = 0; j < N(s_roles); j++)
            for (int g = 0; g < 2; g++)
                for (int archived = 0; archived < 2; archived++)
                    for (size_t k = 0; k < N(s_kinds); k++)
                        for (size_t l = 0; l < N(s_roles); l++)
                            for (size_t m = 0; m < N(s_roles); m++)
                                for (int self = 0; self < 2; self++) {
                                    ukind_t a = s_kinds[i], t = s_kinds[k];
                                    mrole_t r = s_roles[j], tr = s_roles[l], nr = s_roles[m];
                                    rules_verdict_t v = rules_member_set_role(
                                        a, r, self, (gkind_t)g, archived, t, tr, nr);
                                    Extranet__Status want;
                                    if (!o_sees(a, r) || tr == ROLE_NONE)
                                        want = NOT_FOUND;
                                    else if (a != UKIND_ADMIN && r != ROLE_OWNER)
                                        want = FORBIDDEN; /* escalation by members/moderators */
                                    else if (archived)
                                        want = CONFLICT;
                                    else if (t == UKIND_UNKNOWN)
                                        want = NOT_FOUND;
                                    else if (!o_role_ok((gkind_t)g, t, nr))
                                        want = INVALID;
                                    else if (tr == ROLE_OWNER && nr != ROLE_OWNER)
                                        want = CONFLICT; /* exactly one owner */
                                    else
                                        want = OK;
                                    if (v.status != want)
                                        fail_msg("set a=%d r=%d g=%d arch=%d t=%d tr=%d nr=%d: "
                                                 "got %d want %d",
                                                 a, r, g, archived, t, tr, nr, v.status, want);
                                }
}

static void t_member_remove(void **state) {
    (void)state;
    for (size_t i = 0; i < N(s_kinds); i++)
        for (size_t j = 0; j < N(s_roles); j++)
            for (size_t l = 0; l < N(s_roles); l++)
                for (int self = 0; self < 2; self++) {
                    ukind_t a = s_kinds[i];
                    mrole_t r = s_roles[j], tr = s_roles[l];
                    rules_verdict_t v = rules_member_remove(a, r, self, tr);
                    Extranet__Status want;
                    if (!o_sees(a, r) || tr == ROLE_NONE)
                        want = NOT_FOUND;
                    else if (tr == ROLE_OWNER)
                        want = CONFLICT;
                    else if (self && r != ROLE_NONE)
                        want = OK; /* leaving */
                    else if (a == UKIND_ADMIN || r == ROLE_OWNER)
                        want = OK;
                    else if (r == ROLE_MODERATOR && tr == ROLE_MEMBER)
                        want = OK;
                    else
                        want = FORBIDDEN;
                    if (v.status != want)
                        fail_msg("remove a=%d r=%d tr=%d self=%d: got %d want %d", a, r, tr, self,
                                 v.status, want);
                }
}

static void t_person_visible(void **state) {
    (void)state;
    for (size_t i = 0; i < N(s_kinds); i++)
        for (size_t k = 0; k < N(s_kinds); k++)
            for (int self = 0; self < 2; self++)
                for (int shares = 0; shares < 2; shares++) {
                    ukind_t v = s_kinds[i], t = s_kinds[k];
                    bool want;
                    if (v == UKIND_UNKNOWN || t == UKIND_UNKNOWN)
                        want = false;
                    else if (self || v == UKIND_ADMIN)
                        want = true;
                    else if (v == UKIND_EXTRANET)
                        want = shares; /* R4: co-members only */
                    else
                        want = t != UKIND_EXTRANET || shares;
                    assert_int_equal(rules_person_visible(v, self, t, shares), want);
                }
}

static void t_parse(void **state) {
    (void)state;
    mrole_t r = ROLE_NONE;
    assert_true(rules_role_parse("owner", &r) && r == ROLE_OWNER);
    assert_true(rules_role_parse("moderator", &r) && r == ROLE_MODERATOR);
    assert_true(rules_role_parse("member", &r) && r == ROLE_MEMBER);
    assert_false(rules_role_parse("", &r));
    assert_false(rules_role_parse("Owner", &r));
    assert_false(rules_role_parse("admin", &r));
    assert_false(rules_role_parse(NULL, &r));
    assert_string_equal(rules_role_name(ROLE_NONE), "");
    assert_string_equal(rules_role_name(ROLE_OWNER), "owner");
    assert_int_equal(rules_ukind_parse("extranet"), UKIND_EXTRANET);
    assert_int_equal(rules_ukind_parse("system"), UKIND_UNKNOWN);
    assert_int_equal(rules_ukind_parse(NULL), UKIND_UNKNOWN);
    assert_int_equal(rules_actor_ukind(EXTRANET__ACTOR_KIND__SYSTEM), UKIND_UNKNOWN);
    assert_int_equal(rules_actor_ukind(EXTRANET__ACTOR_KIND__ANONYMOUS), UKIND_UNKNOWN);
    assert_int_equal(rules_actor_ukind(EXTRANET__ACTOR_KIND__EXTRANET), UKIND_EXTRANET);
}

static void t_inputs(void **state) {
    (void)state;
    gkind_t g;
    assert_null(rules_group_name_check("Project X"));
    assert_non_null(rules_group_name_check(""));
    assert_non_null(rules_group_name_check("a\nb"));
    char big[4100];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_non_null(rules_description_check(big));
    big[201] = '\0';
    assert_non_null(rules_group_name_check(big));
    big[200] = '\0';
    assert_null(rules_group_name_check(big));
    assert_null(rules_description_check("line 1\nline 2\tx"));
    assert_non_null(rules_description_check("bell\a"));
    assert_null(rules_group_kind_check("internal", &g));
    assert_int_equal(g, GKIND_INTERNAL);
    assert_null(rules_group_kind_check("extranet", &g));
    assert_int_equal(g, GKIND_EXTRANET);
    assert_non_null(rules_group_kind_check("public", &g));
    assert_non_null(rules_group_kind_check("", &g));
    assert_null(rules_task_visibility_check("involved"));
    assert_non_null(rules_task_visibility_check("some"));
    assert_null(rules_file_access_check("upload"));
    assert_non_null(rules_file_access_check("write"));
    assert_null(rules_email_check("a.b@example.com"));
    assert_non_null(rules_email_check("ab"));
    assert_non_null(rules_email_check("a@b@c"));
    assert_non_null(rules_email_check("a b@c.d"));
    assert_non_null(rules_email_check("a@c..d"));
    assert_non_null(rules_email_check("<a@c.d>"));
    assert_non_null(rules_email_check("a@c.d\r\nBcc: x@y.z"));
    assert_true(rules_token_shape("abcdefghijABCDEFGHIJ0123456789-_abcdefghijk"));
    assert_false(rules_token_shape("abcdefghijABCDEFGHIJ0123456789-_abcdefghij"));
    assert_false(rules_token_shape("abcdefghijABCDEFGHIJ0123456789-_abcdefghij="));
    assert_false(rules_token_shape("abcdefghijABCDEFGHIJ0123456789-/abcdefghijk"));
    assert_false(rules_token_shape(NULL));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_view),
        cmocka_unit_test(t_create),
        cmocka_unit_test(t_settings_and_invite),
        cmocka_unit_test(t_role_allowed),
        cmocka_unit_test(t_member_add),
        cmocka_unit_test(t_member_set_role),
        cmocka_unit_test(t_member_remove),
        cmocka_unit_test(t_person_visible),
        cmocka_unit_test(t_parse),
        cmocka_unit_test(t_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
