"""How the dashboard may be served: the bind-address rule (loopback unless sign-in is configured or anonymous use of
a trusted network is explicit) and the workspace roots the sidebar may open workspaces from.

Pure functions over plain values, so app.py, the CLI and tests share one rule whatever launched the server.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.errors import TaxaLensError

logger = logging.getLogger(__name__)

ROOTS_ENV = "TAXALENS_WORKSPACES"  # os.pathsep-separated folders the sidebar may open workspaces under
ALLOW_ANONYMOUS_FLAG = "--allow-anonymous"  # after `--` on the streamlit command line: trusted network, no sign-in
WORKSPACE_FILE = "taxalens.toml"
LOCAL_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")


class ServingError(TaxaLensError, ValueError):
    """A server setting that would expose the dashboard unsafely, or a workspace outside the configured roots."""


@dataclass(frozen=True)
class Exposure:
    """Where the server listens and what protects it."""

    address: str  # Streamlit's server.address ("" = every interface, Streamlit's default)
    sign_in: bool  # an [auth] section is configured in .streamlit/secrets.toml
    allow_anonymous: bool = False  # --allow-anonymous was given (a trusted network, identities not verified)

    @property
    def loopback(self) -> bool:
        """True when only this machine can connect."""
        return is_loopback(self.address)

    @property
    def anonymous_network(self) -> bool:
        """Served beyond loopback with no sign-in (allowed only with --allow-anonymous): pages show a banner."""
        return not self.loopback and not self.sign_in

    def problem(self) -> str | None:
        """Why this exposure is refused, or None when it is allowed."""
        if self.loopback or self.sign_in or self.allow_anonymous:
            return None
        where = f"address {self.address!r}" if self.address else "every network interface (no --server.address)"
        return (f"TaxaLens refuses to serve on {where} without sign-in: anyone on the network could read and change "
                "labels. Configure sign-in (an [auth] section in .streamlit/secrets.toml, see README 'Running for a "
                "team'), bind to loopback (--server.address 127.0.0.1, what `make run` does), or pass "
                f"`-- {ALLOW_ANONYMOUS_FLAG}` on a trusted network")


def is_loopback(address: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost); "" and 0.0.0.0 are not."""
    host = (address or "").strip().strip("[]")
    if not host:
        return False
    if host.casefold() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a network interface


def allow_anonymous(argv: Sequence[str]) -> bool:
    """True when `--allow-anonymous` is among the script arguments (after `--` on the streamlit command line)."""
    return ALLOW_ANONYMOUS_FLAG in argv


# Workspace roots ------------------------------------------------------------------------------------------------------

def workspace_roots(*, environ: Mapping[str, str] | None = None, config_roots: object = None,
                    fallback: str | Path | None = None, source: str = "[server] roots") -> tuple[Path, ...]:
    """The folders the sidebar may open workspaces under: `$TAXALENS_WORKSPACES` (os.pathsep-separated) and
    `config_roots` (the `[server] roots` list of a config); when neither names any, `fallback` (the workspace given
    on the command line): its parent. Roots are resolved; missing folders are kept out with a log line."""
    environ = os.environ if environ is None else environ
    named = [p for p in (environ.get(ROOTS_ENV) or "").split(os.pathsep) if p.strip()]
    if config_roots is not None:
        if isinstance(config_roots, str):
            config_roots = [config_roots]
        if not isinstance(config_roots, list) or not all(isinstance(r, str) and r.strip() for r in config_roots):
            raise ServingError(f"{source} must be a list of folder paths, got {config_roots!r}")
        named += config_roots
    if not named and fallback is not None:
        given = Path(fallback).expanduser().resolve()
        named = [str(given.parent)]  # holds the given workspace and its siblings
    roots: list[Path] = []
    for entry in named:
        root = Path(entry).expanduser().resolve()
        if not root.is_dir():
            logger.warning("workspace root %s is not a folder; ignored", root)
            continue
        if root not in roots:
            roots.append(root)
    return tuple(roots)


def find_workspaces(roots: Iterable[Path], *, depth: int = 2) -> dict[str, Path]:
    """Workspaces (folders holding taxalens.toml) at most `depth` levels under each root, by display name: the path
    relative to its root (the root's own name for a root that is a workspace), prefixed with the root's name when
    several roots are configured. Hidden folders are skipped."""
    roots = list(roots)
    found: dict[str, Path] = {}
    for root in roots:
        prefix = f"{root.name}/" if len(roots) > 1 else ""
        for folder in _folders(root, depth):
            if (folder / WORKSPACE_FILE).is_file():
                relative = folder.relative_to(root).as_posix()
                name = root.name if relative == "." else f"{prefix}{relative}"
                found.setdefault(name, folder)
    return dict(sorted(found.items()))


def inside_roots(path: str | Path, roots: Iterable[Path]) -> bool:
    """True when `path` (resolved, symlinks followed) is one of `roots` or lies under one."""
    resolved = Path(path).expanduser().resolve()
    return any(resolved == root or resolved.is_relative_to(root) for root in roots)


def _folders(root: Path, depth: int) -> Iterable[Path]:
    yield root
    if depth <= 0:
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        logger.warning("cannot list workspace root %s: %s", root, exc)
        return
    for child in children:
        yield from _folders(child, depth - 1)
