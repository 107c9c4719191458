"""Who may do what: roles from `[access]` in `taxalens.toml`, the identity recorded on events, and the checks that
`core` runs before it writes (a page hides what a role may not do; `core` refuses it anyway).

```toml
[access]
admin = ["pi@lab.org"]            # e-mail addresses ...
lead = ["curator@lab.org"]
reviewer = ["@lab.org"]           # ... or "@domain": every account of that e-mail domain
viewer = ["@partner.edu"]
default = "viewer"                # role of any other signed-in account ("none": refuse it)
local = "admin"                   # role of the local user when no sign-in is configured
```

An account named by several entries gets the highest of their roles. Roles are ordered: each may do what the ones
below it may (`PERMISSIONS` says which role each action needs).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from core.errors import TaxaLensError

if TYPE_CHECKING:
    from core.workspace import Workspace

MAX_IDENTITY_LENGTH = 120  # characters of a reviewer identity
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # control, format (zero-width...), unassigned
_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")  # scripts whose look-alike letters must not mix in one name


class Role(IntEnum):
    """A workspace role; a higher role may do everything a lower one may."""

    VIEWER = 1  # reads every page
    REVIEWER = 2  # records review decisions and undoes their own
    LEAD = 3  # also adjudicates, undoes others' events, exports and retrains
    ADMIN = 4  # also edits the workspace (checkpoints, ensembles, taxalens.toml)

    @property
    def label(self) -> str:
        return self.name.lower()


# Action -> the lowest role allowed to do it. Pages and core both read this one table.
PERMISSIONS: dict[str, Role] = {
    "view": Role.VIEWER,
    "record": Role.REVIEWER,  # confirm, relabel, unsure, exclude, label; undo one's own events
    "undo_others": Role.LEAD,  # undo an event another reviewer recorded
    "adjudicate": Role.LEAD,
    "auto_accept": Role.LEAD,  # accept every pool prediction above its class threshold in one bulk event
    "export": Role.LEAD,  # curated label CSVs and the audit log
    "retrain": Role.LEAD,  # start or stop training and cross-validation runs
    "edit_workspace": Role.ADMIN,  # add checkpoints or ensembles, change taxalens.toml
}


class AccessError(TaxaLensError, PermissionError):
    """An identity or role that may not do what was asked."""


class AccessConfigError(TaxaLensError, ValueError):
    """An `[access]` table that cannot be used."""


@dataclass(frozen=True)
class Actor:
    """Who is acting: the identity written on label events and the role that decides what they may do."""

    name: str  # recorded identity: the signed-in e-mail (lower case) or the normalised, case-folded local name
    role: Role  # from the workspace's [access] rules
    signed_in: bool = False  # True when the identity comes from the identity provider, False for a typed local name

    def may(self, action: str) -> bool:
        """True when this actor's role allows `action` (a key of `PERMISSIONS`)."""
        return self.role >= _needed(action)

    def require(self, action: str) -> None:
        """Raise AccessError unless this actor may do `action`."""
        needed = _needed(action)
        if self.role < needed:
            raise AccessError(f"{self.name!r} is a {self.role.label} and may not {action.replace('_', ' ')} "
                              f"(needs the {needed.label} role); ask a workspace admin to grant it in [access] of "
                              "taxalens.toml")


@dataclass(frozen=True)
class AccessRules:
    """The `[access]` table of a workspace."""

    grants: tuple[tuple[str, Role], ...] = ()  # (lower-case e-mail or "@domain", role)
    default: Role | None = Role.VIEWER  # role of a signed-in account no grant names; None refuses it
    local: Role = Role.ADMIN  # role of the local user when no sign-in is configured

    def role_of(self, email: str) -> Role | None:
        """The role of a signed-in account: the highest grant naming its address or domain, else `default`."""
        address = email.strip().casefold()
        domain = "@" + address.rpartition("@")[2] if "@" in address else None
        roles = [role for who, role in self.grants if who in (address, domain)]
        return max(roles) if roles else self.default


def normalise_identity(text: object) -> str:
    """The identity recorded for a typed (local) reviewer name: NFKC, trimmed, case-folded.

    Refused with AccessError: a non-string or empty name, control or format characters (zero-width spaces included),
    names longer than `MAX_IDENTITY_LENGTH`, and names mixing look-alike scripts (a Cyrillic "а" among Latin letters),
    so `alice`, `Alice`, `аlice` and `alice` + zero-width space cannot be four reviewers.
    """
    if not isinstance(text, str):
        raise AccessError(f"a reviewer name must be text, got {type(text).__name__}")
    name = unicodedata.normalize("NFKC", text).strip()
    if not name:
        raise AccessError("a reviewer name is required: enter your name or initials (e.g. jdoe)")
    bad = sorted({f"U+{ord(ch):04X}" for ch in name if unicodedata.category(ch) in _REFUSED_CATEGORIES})
    if bad:
        raise AccessError(f"reviewer name {name.encode('unicode_escape').decode()!r} contains invisible or control "
                          f"characters ({', '.join(bad)}); type it again with letters, digits and spaces only")
    if len(name) > MAX_IDENTITY_LENGTH:
        raise AccessError(f"reviewer name is {len(name)} characters long; use at most {MAX_IDENTITY_LENGTH}")
    scripts = {_script(ch) for ch in name if ch.isalpha()} - {None}
    if len(scripts) > 1:
        raise AccessError(f"reviewer name {name!r} mixes {' and '.join(sorted(scripts)).lower()} letters, which can "
                          "look like another reviewer's name; type it in one alphabet")
    return name.casefold()


def normalise_email(email: object) -> str:
    """A signed-in account's address as recorded: trimmed and lower case (AccessError when it is not an address)."""
    if not isinstance(email, str) or "@" not in email.strip() or any(
            unicodedata.category(ch) in _REFUSED_CATEGORIES or ch.isspace() for ch in email.strip()):
        raise AccessError(f"the identity provider returned no usable e-mail address ({email!r}); the account needs "
                          "an e-mail claim (scope `email`)")
    return email.strip().casefold()


def read_access_rules(table: Mapping | None, *, source: str = "taxalens.toml") -> AccessRules:
    """Parse an `[access]` table (None or empty: everyone signed in is a viewer, the local user an admin)."""
    table = dict(table or {})
    grants: list[tuple[str, Role]] = []
    for role in Role:
        entries = table.pop(role.label, [])
        if isinstance(entries, str):
            entries = [entries]
        if not isinstance(entries, list) or not all(isinstance(e, str) and e.strip() for e in entries):
            raise AccessConfigError(f"{source}: [access] {role.label} must be a list of e-mail addresses or "
                                    f'"@domain" strings, got {entries!r}')
        for entry in entries:
            who = entry.strip().casefold()
            if "@" not in who:
                raise AccessConfigError(f"{source}: [access] {role.label} entry {entry!r} is neither an e-mail "
                                        'address nor an "@domain"')
            grants.append((who, role))
    default = _role_setting(table.pop("default", "viewer"), "default", source, allow_none=True)
    local = _role_setting(table.pop("local", "admin"), "local", source, allow_none=False)
    if table:
        raise AccessConfigError(f"{source}: unknown key(s) in [access]: {sorted(table)}; known: "
                                f"{[r.label for r in Role] + ['default', 'local']}")
    return AccessRules(grants=tuple(grants), default=default, local=local)  # type: ignore[arg-type]


def workspace_access_rules(workspace: Workspace) -> AccessRules:
    """The `[access]` table of an opened workspace (`Workspace.extras["access"]`), parsed by `read_access_rules`."""
    return read_access_rules(workspace.extras.get("access"), source=str(workspace.root / "taxalens.toml"))


def signed_in_actor(email: object, rules: AccessRules) -> Actor:
    """The actor of a signed-in account (AccessError when the rules admit no role for it)."""
    address = normalise_email(email)
    role = rules.role_of(address)
    if role is None:
        raise AccessError(f"{address} has no role in this workspace; ask a workspace admin to add the address or "
                          "its domain to [access] in taxalens.toml")
    return Actor(name=address, role=role, signed_in=True)


def local_actor(name: object, rules: AccessRules) -> Actor:
    """The actor of a typed name when no sign-in is configured: `rules.local` role, normalised name."""
    return Actor(name=normalise_identity(name), role=rules.local, signed_in=False)


def _needed(action: str) -> Role:
    try:
        return PERMISSIONS[action]
    except KeyError:
        raise ValueError(f"unknown action {action!r}; known: {sorted(PERMISSIONS)}") from None


def _role_setting(value: object, key: str, source: str, *, allow_none: bool) -> Role | None:
    if allow_none and value == "none":
        return None
    labels = {r.label: r for r in Role}
    if value not in labels:
        allowed = list(labels) + (["none"] if allow_none else [])
        raise AccessConfigError(f"{source}: [access] {key} = {value!r}; use one of {allowed}")
    return labels[value]  # type: ignore[index]


def _script(ch: str) -> str | None:
    name = unicodedata.name(ch, "")
    return next((script for script in _SCRIPTS if name.startswith(script)), None)
