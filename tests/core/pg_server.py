"""A private, throwaway PostgreSQL server for tests and benchmarks (Debian's postgresql binaries, run as `postgres`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_BIN_CANDIDATES = tuple(Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14, 13))


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries, or the server would not start; the message says why."""


def find_pg_bin() -> Path:
    """Folder of `initdb`/`pg_ctl` ($TAXALENS_PG_BIN, Debian's /usr/lib/postgresql/<v>/bin, or PATH)."""
    env = os.environ.get("TAXALENS_PG_BIN")
    candidates = [Path(env)] if env else list(PG_BIN_CANDIDATES)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise PostgresUnavailable(f"PostgreSQL server binaries not found (looked in {[str(c) for c in candidates]}); "
                              "install Debian's `postgresql` or set TAXALENS_PG_BIN")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl start on a free port and a private data directory; `stop()` removes it all.

    PostgreSQL refuses to run as root, so under root the server runs as the `postgres` user (`runuser`).
    `durable=False` turns fsync off (fast tests; a killed *client* still loses nothing committed).
    """

    def __init__(self, *, durable: bool = True) -> None:
        self.bin = find_pg_bin()
        self.port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="taxalens-pg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sock"
        self.durable = durable
        self._as_root = os.geteuid() == 0
        self._n_databases = 0
        self.running = False

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        command = [str(a) for a in args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(command)} failed ({result.returncode}): "
                                      f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    def start(self) -> PostgresServer:
        self.sockets.mkdir(parents=True)
        os.chmod(self.base, 0o755)
        if self._as_root:
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        self._run(self.bin / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-instructions")
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c max_connections=100"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.base / "server.log", "-o", options, "-w",
                  "-t", "60", "start")
        self.running = True
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "taxalens") -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg

        self._n_databases += 1
        name = f"{prefix}_{self._n_databases}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.running:
            self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
            self.running = False
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
