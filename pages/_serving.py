"""The served-to-whom checks app.py runs before any page: refuse a network address without sign-in, hide error
details from a network, the anonymous-network banner, and the workspace roots the sidebar may open."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

from core.serving import Exposure, allow_anonymous, find_workspaces, workspace_roots
from pages._access import current_actor, secrets_section, sign_in_configured
from pages._cached import default_workspace_path
from pages._state import KEY_ACTOR_PROBLEM
from pages._text import md


def current_exposure() -> Exposure:
    """Where this server listens (`server.address`) and what protects it (sign-in, --allow-anonymous)."""
    return Exposure(address=str(st.get_option("server.address") or ""), sign_in=sign_in_configured(),
                    allow_anonymous=allow_anonymous(sys.argv[1:]))


def guard_exposure() -> Exposure:
    """Stop every page when the server listens beyond loopback without sign-in (and no --allow-anonymous); beyond
    loopback, error details are hidden and, without sign-in, a banner says identities are not verified."""
    exposure = current_exposure()
    problem = exposure.problem()
    if problem:
        st.error(problem)
        st.stop()
    if not exposure.loopback:
        st.set_option("client.showErrorDetails", "none")
    if exposure.anonymous_network:
        st.warning("Served to the network without sign-in (`--allow-anonymous`): identities are **not verified**; "
                   "anyone who can reach this page can record labels under any name.", icon=":material/warning:")
    return exposure


def sign_in_prompt() -> None:
    """With sign-in configured and nobody signed in: a sign-in button instead of the page, and stop."""
    if sign_in_configured() and not st.user.is_logged_in:
        st.title("TaxaLens")
        st.info("Sign in with your institution's account to open the dashboard.")
        st.button("Sign in", key="tl-login", type="primary", on_click=st.login)
        st.stop()


def require_access() -> None:
    """Stop this run unless the session may see pages: the server's address is allowed, and with sign-in the user is
    signed in with a role in the workspace. app.py checks the same before navigation; every page checks again
    (through `page_context`), since a fresh server can run a page script without app.py around it."""
    problem = current_exposure().problem()
    if problem:
        st.error(problem)
        st.stop()
    sign_in_prompt()
    if sign_in_configured() and current_actor() is None:
        st.error(md(st.session_state.get(KEY_ACTOR_PROBLEM) or "no role in this workspace"))
        st.stop()


def configured_roots() -> tuple[Path, ...]:
    """Workspace roots: `$TAXALENS_WORKSPACES` and `[server] roots` of the deployment's secrets; else the parent of
    the workspace given on the command line (or `$TAXALENS_WORKSPACE`, or the demo)."""
    server = secrets_section("server") or {}
    return workspace_roots(environ=os.environ, config_roots=server.get("roots"), fallback=default_workspace_path(),
                           source=".streamlit/secrets.toml [server] roots")


@st.cache_data(ttl=30, show_spinner=False)
def _workspaces(roots: tuple[Path, ...]) -> dict[str, str]:
    return {name: str(path) for name, path in find_workspaces(roots).items()}


def workspace_choices() -> dict[str, str]:
    """Display name -> absolute path of each workspace under the roots (rescanned at most every 30 s)."""
    return _workspaces(configured_roots())
