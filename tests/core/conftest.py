"""Label-store fixtures: a real SQLite file and a real private PostgreSQL server (under CI=true: fail, never skip)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.core.pg_server import PostgresServer, PostgresUnavailable


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server per test session (fsync off: speed; clients may still be killed safely)."""
    try:
        server = PostgresServer(durable=False).start()
    except PostgresUnavailable as exc:
        _unavailable(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty label store URL: a SQLite file in tmp_path, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture(scope="session")
def bccd_pixel(bccd_root: Path):
    """Real bccd crops with out-of-fold probabilities of a pixel-feature probe (`tests/core/real_tables.py`)."""
    from tests.core.real_tables import bccd_pixel_table

    return bccd_pixel_table(bccd_root)


@pytest.fixture(scope="session")
def demo_predictions(demo_workspace_readonly: Path):
    """The full demo's stored predictions (every split; never written to)."""
    from tests.core.real_tables import demo_table

    return demo_table(demo_workspace_readonly)
