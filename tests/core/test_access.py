"""Roles, identities and the permission table of core.access."""

from __future__ import annotations

import pytest

from core.access import (
    PERMISSIONS,
    AccessConfigError,
    AccessError,
    Actor,
    Role,
    local_actor,
    normalise_identity,
    read_access_rules,
    signed_in_actor,
)

RULES = read_access_rules({
    "admin": ["PI@Lab.org"],
    "lead": ["curator@lab.org"],
    "reviewer": ["@lab.org", "guest@partner.edu"],
    "default": "viewer",
})


def test_highest_matching_grant_wins_and_domains_match_whole_domains() -> None:
    assert signed_in_actor("pi@lab.org", RULES).role is Role.ADMIN  # also matches @lab.org (reviewer)
    assert signed_in_actor(" Curator@LAB.org ", RULES) == Actor("curator@lab.org", Role.LEAD, signed_in=True)
    assert signed_in_actor("someone@lab.org", RULES).role is Role.REVIEWER
    assert signed_in_actor("guest@partner.edu", RULES).role is Role.REVIEWER
    assert signed_in_actor("other@partner.edu", RULES).role is Role.VIEWER  # default
    assert signed_in_actor("x@sub.lab.org", RULES).role is Role.VIEWER  # a subdomain is another domain


def test_default_none_refuses_unknown_accounts() -> None:
    rules = read_access_rules({"reviewer": ["@lab.org"], "default": "none"})
    with pytest.raises(AccessError, match=r"stranger@else\.org has no role"):
        signed_in_actor("stranger@else.org", rules)
    with pytest.raises(AccessError, match="e-mail claim"):
        signed_in_actor("", rules)


def test_roles_are_ordered_by_the_permission_table() -> None:
    viewer, reviewer, lead, admin = (Actor("a", role) for role in Role)
    assert viewer.may("view") and not viewer.may("record")
    assert reviewer.may("record") and not reviewer.may("undo_others") and not reviewer.may("adjudicate")
    assert lead.may("adjudicate") and lead.may("export") and lead.may("retrain") and not lead.may("edit_workspace")
    assert admin.may("edit_workspace")
    assert set(PERMISSIONS) >= {"view", "record", "undo_others", "adjudicate", "export", "retrain", "edit_workspace"}
    with pytest.raises(AccessError, match="'a' is a reviewer and may not adjudicate .*needs the lead role"):
        reviewer.require("adjudicate")
    with pytest.raises(ValueError, match="unknown action"):
        admin.may("fly")


@pytest.mark.parametrize("typed", ["alice", "Alice", " ALICE ", "ａｌｉｃｅ"])  # fullwidth folds under NFKC
def test_local_names_normalise_to_one_identity(typed: str) -> None:
    assert normalise_identity(typed) == "alice"


@pytest.mark.parametrize(("typed", "reason"), [
    ("alice\u200b", "invisible or control"),  # zero-width space
    ("al\u202eice", "invisible or control"),  # right-to-left override
    ("ali\nce", "invisible or control"),
    ("\u0430lice", "mixes cyrillic and latin"),  # Cyrillic a
    ("   ", "required"),
    ("x" * 121, "at most 120"),
])
def test_look_alike_and_invisible_names_are_refused(typed: str, reason: str) -> None:
    with pytest.raises(AccessError, match=reason):
        normalise_identity(typed)


def test_names_in_one_non_latin_script_are_fine() -> None:
    assert normalise_identity("Ольга") == "ольга"
    assert normalise_identity("José María") == "josé maría"


def test_local_actor_takes_the_local_role() -> None:
    assert local_actor("Bob", read_access_rules(None)) == Actor("bob", Role.ADMIN)
    assert local_actor("Bob", read_access_rules({"local": "reviewer"})).role is Role.REVIEWER


@pytest.mark.parametrize(("table", "phrase"), [
    ({"lead": "not-an-address"}, "neither an e-mail address"),
    ({"lead": [3]}, "must be a list"),
    ({"default": "boss"}, "use one of"),
    ({"local": "none"}, "use one of"),
    ({"leads": ["a@b.c"]}, "unknown key"),
])
def test_bad_access_tables_name_the_key(table: dict, phrase: str) -> None:
    with pytest.raises(AccessConfigError, match=phrase):
        read_access_rules(table, source="ws/taxalens.toml")
