"""Who is using the dashboard: sign-in through Streamlit's `st.login` (OpenID Connect) when `.streamlit/secrets.toml`
has an `[auth]` section, else a local name typed once; the resulting `Actor` lives in one plain session key.

app.py resolves the actor on every run (`resolve_actor`, stored under `tl_actor`); pages read it with
`current_actor()` and hide what its role may not do with `may(action)` (`core.access.PERMISSIONS` says which role
each action needs).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import streamlit as st

from core.access import AccessError, AccessRules, Actor, local_actor, read_access_rules, signed_in_actor
from core.errors import USER_ERRORS
from core.workspace import Workspace
from pages._state import KEY_ACTOR, KEY_ACTOR_PROBLEM, KEY_REVIEWER, KEY_WORKSPACE
from pages._text import md

logger = logging.getLogger(__name__)

KEY_LOCAL_NAME = KEY_REVIEWER  # the name typed in the sidebar when no sign-in is configured


def secrets_section(name: str) -> Mapping | None:
    """The `[name]` table of the deployment's `.streamlit/secrets.toml`, or None when there is none."""
    try:
        if not st.secrets.load_if_toml_exists():
            return None
        section = st.secrets.get(name)
    except (FileNotFoundError, OSError, ValueError) as exc:
        logger.warning("cannot read .streamlit/secrets.toml: %s", exc)
        return None
    return section if isinstance(section, Mapping) and section else None


def sign_in_configured() -> bool:
    """True when the deployment's secrets have an `[auth]` section: identities then come from the provider."""
    return secrets_section("auth") is not None


def access_rules(workspace: Workspace) -> AccessRules:
    """The `[access]` rules of `workspace` (AccessConfigError when the table cannot be used)."""
    return read_access_rules(workspace.extras.get("access"), source=str(workspace.root / "taxalens.toml"))


def signed_in_email() -> str | None:
    """The signed-in account's e-mail claim, or None when nobody is signed in."""
    if not st.user.is_logged_in:
        return None
    email = st.user.get("email")
    return email if isinstance(email, str) else ""


def resolve_actor(workspace: Workspace | None) -> Actor | None:
    """The current actor, stored under `KEY_ACTOR`: the signed-in account with its `[access]` role, or (no sign-in
    configured) the typed local name with the `local` role; None, with the reason under `KEY_ACTOR_PROBLEM`, when
    there is none (nobody signed in, no name typed, an address without a role, a refused name)."""
    actor, problem = None, None
    if workspace is None:
        problem = "open a workspace first"
    else:
        try:
            rules = access_rules(workspace)
            if sign_in_configured():
                email = signed_in_email()
                if email is None:
                    problem = "sign in to act"
                else:
                    actor = signed_in_actor(email, rules)
            else:
                name = st.session_state.get(KEY_LOCAL_NAME) or ""
                if name.strip():
                    actor = local_actor(name, rules)
                else:
                    problem = "type your name in the sidebar to record decisions"
        except AccessError as exc:  # AccessConfigError is not one: a broken [access] table is the admin's to fix
            problem = str(exc)
        except ValueError as exc:
            problem = str(exc)
    st.session_state[KEY_ACTOR] = actor
    st.session_state[KEY_ACTOR_PROBLEM] = problem
    return actor


def current_actor() -> Actor | None:
    """The current actor, resolved again from the session (cheap: the workspace is cached), so a page reads the same
    answer whether app.py ran around it or a test runs the page script alone."""
    from pages._cached import default_workspace_path, open_workspace

    try:
        workspace = open_workspace(st.session_state.get(KEY_WORKSPACE) or default_workspace_path())
    except USER_ERRORS:
        workspace = None
    return resolve_actor(workspace)


def may(action: str) -> bool:
    """True when the current actor may do `action` (False without an actor)."""
    actor = current_actor()
    return actor is not None and actor.may(action)


def explain_hidden(action: str, what: str) -> None:
    """A caption in place of controls the current actor may not use: why, and what would allow it."""
    actor = current_actor()
    if actor is None:
        reason = st.session_state.get(KEY_ACTOR_PROBLEM) or "no identity"
        st.caption(f"{md(what)} hidden: {md(reason)}.")
        return
    from core.access import PERMISSIONS

    st.caption(f"{md(what)} hidden: **{md(actor.name)}** is a {actor.role.label}; this needs the "
               f"{PERMISSIONS[action].label} role (ask a workspace admin to grant it in `[access]` of taxalens.toml).")
