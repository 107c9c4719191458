"""The served-to-whom rule (loopback unless sign-in or --allow-anonymous) and the workspace roots of the sidebar."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.serving import (
    Exposure,
    ServingError,
    allow_anonymous,
    find_workspaces,
    inside_roots,
    is_loopback,
    workspace_roots,
)


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("", False), ("0.0.0.0", False), ("::", False), ("192.168.1.20", False),
    ("10.0.0.1", False), ("lab-server.example.org", False), ("127.0.0.1.nip.io", False),
])
def test_is_loopback(address: str, expected: bool) -> None:
    assert is_loopback(address) is expected


def test_a_network_address_without_sign_in_is_refused_and_says_what_to_do() -> None:
    for address in ("0.0.0.0", "", "192.168.1.20"):
        problem = Exposure(address, sign_in=False).problem()
        assert problem is not None
        assert "[auth]" in problem and "--allow-anonymous" in problem and "127.0.0.1" in problem
    assert "every network interface" in Exposure("", sign_in=False).problem()


def test_loopback_sign_in_or_explicit_anonymous_is_allowed() -> None:
    assert Exposure("127.0.0.1", sign_in=False).problem() is None
    signed = Exposure("0.0.0.0", sign_in=True)
    assert signed.problem() is None and not signed.anonymous_network
    anonymous = Exposure("0.0.0.0", sign_in=False, allow_anonymous=True)
    assert anonymous.problem() is None and anonymous.anonymous_network  # pages show the banner
    assert not Exposure("127.0.0.1", sign_in=False).anonymous_network


def test_allow_anonymous_is_an_exact_flag() -> None:
    assert allow_anonymous(["--workspace", "ws", "--allow-anonymous"])
    assert not allow_anonymous(["--workspace", "--allow-anonymous-please"])
    assert not allow_anonymous([])


def _workspace(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "taxalens.toml").write_text('[dataset]\nroot = "images"\n', encoding="utf-8")
    return folder


def test_roots_from_the_environment_and_the_config(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    for folder in (a, b, c):
        folder.mkdir()
    environ = {"TAXALENS_WORKSPACES": os.pathsep.join([str(a), str(tmp_path / "missing"), str(b), str(a)])}
    assert workspace_roots(environ=environ, config_roots=[str(c)], fallback=tmp_path / "x") == (a, b, c)
    assert workspace_roots(environ={}, config_roots=str(c)) == (c,)
    with pytest.raises(ServingError, match=r"\[server\] roots must be a list"):
        workspace_roots(environ={}, config_roots=[str(a), 3])


def test_without_configured_roots_the_given_workspace_and_its_parent_are_the_root(tmp_path: Path) -> None:
    given = _workspace(tmp_path / "lab" / "ws1")
    _workspace(tmp_path / "lab" / "ws2")
    _workspace(tmp_path / "elsewhere")
    roots = workspace_roots(environ={}, fallback=given)
    assert roots == (tmp_path / "lab",)
    assert find_workspaces(roots) == {"ws1": given, "ws2": tmp_path / "lab" / "ws2"}


def test_find_workspaces_by_name_two_levels_deep_hidden_skipped(tmp_path: Path) -> None:
    root1, root2 = tmp_path / "r1", tmp_path / "r2"
    _workspace(root1 / "beetles")
    _workspace(root1 / "group" / "plankton")
    _workspace(root1 / "a" / "b" / "too-deep")
    _workspace(root1 / ".hidden")
    _workspace(root2)  # a root that is itself a workspace
    assert find_workspaces([root1]) == {"beetles": root1 / "beetles", "group/plankton": root1 / "group" / "plankton"}
    assert find_workspaces([root1, root2]) == {"r1/beetles": root1 / "beetles",
                                               "r1/group/plankton": root1 / "group" / "plankton", "r2": root2}


def test_inside_roots_follows_symlinks(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", _workspace(tmp_path / "outside")
    _workspace(root / "ws")
    (root / "link").symlink_to(outside)
    assert inside_roots(root / "ws", [root]) and inside_roots(root, [root])
    assert not inside_roots(root / "link", [root])  # a link that leads out of the root does not count
    assert not inside_roots(root / ".." / "outside", [root])
