"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` on a temporary directory.

It listens on a Unix socket only (no TCP). As root, the server runs as the ``postgres``
user (Debian's package creates it), since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

_names = itertools.count()


def find_bin(name: str) -> str:
    """``name`` from Debian's versioned directory (newest first), else from PATH."""
    for cand in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        if os.access(cand, os.X_OK):
            return cand
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"PostgreSQL's {name} not found. Fix: `make system-deps` (Debian package postgresql)."
        )
    return found


class PgServer:
    """One PostgreSQL cluster; :meth:`create_database` hands out fresh databases."""

    def __init__(self, *, durable: bool = False) -> None:
        """``durable=False`` trades crash safety for speed (fine unless the test crashes PG)."""
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="sylphx-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.user: str | None = None
        self.running = False
        if os.geteuid() == 0:
            self.user = "postgres"
            try:
                pw = pwd.getpwnam(self.user)
            except KeyError:
                self.user = "nobody"
                pw = pwd.getpwnam(self.user)
            os.chmod(self.root, 0o755)
            self.sock.mkdir()
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chown(self.sock, pw.pw_uid, pw.pw_gid)
        else:
            self.sock.mkdir()

    def _run(self, *argv: str) -> None:
        subprocess.run(
            argv,
            check=True,
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.root,
        )

    def start(self) -> None:
        if not self.data.exists():
            self._run(
                find_bin("initdb"), "-D", str(self.data), "-U", "sylphx",
                "--auth=trust", "--no-sync", "-E", "UTF8",
            )  # fmt: skip
        opts = f"-c listen_addresses='' -c unix_socket_directories='{self.sock}'"
        opts += " -c max_connections=300"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            find_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-w", "-t", "60",
            "-l", str(self.root / "server.log"), "start",
        )  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run(find_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
            self.running = False

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://sylphx@/{dbname}?host={self.sock}"

    def create_database(self, template: str | None = None) -> str:
        """A fresh database, empty or a copy of the database named ``template`` (which
        nothing may be connected to); returns its SQLAlchemy URL."""
        name = f"t{os.getpid()}_{next(_names)}"
        copy = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(
            host=str(self.sock), user="sylphx", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{copy}')  # type: ignore[arg-type]
        return self.url(name)
