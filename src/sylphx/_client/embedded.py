"""The embedded control plane: one detached server per SYLPHX_HOME, shared by terminals.

The SDK and CLI call :func:`ensure_local_server` when no URL is configured; it
starts ``python -m sylphx server --uds <socket>`` on demand, serialised by an
exclusive lock on ``<home>/start.lock`` so two terminals never race.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from sylphx._core.errors import ServerUnavailable
from sylphx._settings import home_dir, socket_path

__all__ = ["LocalServerStatus", "ensure_local_server", "local_server_status", "stop_local_server"]

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_LOG_TAIL_LINES = 20
# Servers started by this process, so stop/start can reap them (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class LocalServerStatus:
    """What is known about the embedded control plane of one SYLPHX_HOME."""

    home: Path
    socket: Path
    log: Path
    pid: int | None  # from <home>/server.pid, when that process is alive
    healthy: bool  # the socket answers GET /healthz

    @property
    def running(self) -> bool:
        return self.pid is not None or self.healthy


def _resolve(home: Path | None) -> Path:
    return (home or home_dir()).expanduser().resolve()


def healthy(sock: Path, timeout: float = 2.0) -> bool:
    """True when the Unix socket answers ``GET /healthz`` with ``{"ok": true}``."""
    if not sock.exists():
        return False
    try:
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://sylphx", timeout=timeout) as c:
            response = c.get("/healthz")
            return response.status_code == 200 and response.json().get("ok") is True
    except (httpx.HTTPError, ValueError, AttributeError, OSError):
        return False


def _read_pid(home: Path) -> int | None:
    try:
        text = (home / "server.pid").read_text().strip()
    except OSError:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        pass
    try:
        data = json.loads(text)
        return int(data["pid"]) if isinstance(data, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie (reaping our own children)."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _children[pid]
            return False
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_sylphx(pid: int) -> bool:
    """Guard against pid reuse: the process's command line mentions sylphx."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the pid file
    return b"sylphx" in cmdline


def _live_pid(home: Path) -> int | None:
    pid = _read_pid(home)
    if pid is None or not _alive(pid) or not _is_sylphx(pid):
        return None
    return pid


def _log_tail(log: Path, offset: int) -> str:
    try:
        with log.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no server.log)"
    lines = text.strip().splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(server.log is empty)"


def _private(path: Path) -> int:
    """``path`` opened to append (made if need be) 0600: the server's log and the start
    lock are the user's alone (a lock another user could open, it could hold)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _spawn(home: Path, sock: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SYLPHX_HOME=str(home))
    cmd = [sys.executable, "-m", "sylphx", "server", "--uds", str(sock)]
    with os.fdopen(_private(log), "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(home),
            start_new_session=True,
        )
    _children[proc.pid] = proc
    return proc


def ensure_local_server(home: Path | None = None) -> Path:
    """Return the socket of the embedded control plane for ``home``, starting it if needed.

    ``home`` defaults to ``$SYLPHX_HOME`` (``~/.sylphx``). Raises ServerUnavailable
    quoting ``server.log`` when the server cannot start within 30 seconds.
    """
    home = _resolve(home)
    sock = socket_path(home)
    if healthy(sock):
        return sock
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = home / "server.log"
    with os.fdopen(_private(home / "start.lock"), "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if healthy(sock):
                return sock
            offset = log.stat().st_size if log.exists() else 0
            proc = _spawn(home, sock, log)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if healthy(sock, timeout=1.0):
                    return sock
                code = proc.poll()
                if code is not None:
                    _children.pop(proc.pid, None)
                    if healthy(sock):  # another control plane answered meanwhile
                        return sock
                    raise ServerUnavailable(
                        f"the embedded sylphx control plane for SYLPHX_HOME={home} exited"
                        f" with code {code} while starting. Last lines of {log}:\n"
                        f"{_log_tail(log, offset)}\nFix: correct the problem above; if"
                        " another server holds this home, set SYLPHX_URL to it or use a"
                        " different SYLPHX_HOME"
                    )
                time.sleep(0.1)
            raise ServerUnavailable(
                f"the embedded sylphx control plane for SYLPHX_HOME={home} (pid {proc.pid})"
                f" did not answer on {sock} within {START_TIMEOUT:g}s. Last lines of {log}:\n"
                f"{_log_tail(log, offset)}\nFix: check {log}; `sylphx local stop` then retry"
            )
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def stop_local_server(home: Path | None = None) -> bool:
    """SIGTERM the control plane holding ``home`` and wait up to 10 s for it to exit.

    Returns False when none was running. Raises ServerUnavailable if it outlives the wait.
    """
    home = _resolve(home)
    pid = _live_pid(home)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + STOP_TIMEOUT
    child = _children.get(pid)
    if child is not None:
        try:
            child.wait(timeout=STOP_TIMEOUT)
            _children.pop(pid, None)
            return True
        except subprocess.TimeoutExpired:
            pass
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    if not _alive(pid):
        return True
    raise ServerUnavailable(
        f"the control plane for SYLPHX_HOME={home} (pid {pid}) did not exit within"
        f" {STOP_TIMEOUT:g}s of SIGTERM. Fix: check {home / 'server.log'}; kill -9 {pid}"
    )


def local_server_status(home: Path | None = None) -> LocalServerStatus:
    """Report the embedded control plane of ``home`` without starting it."""
    home = _resolve(home)
    sock = socket_path(home)
    return LocalServerStatus(
        home=home,
        socket=sock,
        log=home / "server.log",
        pid=_live_pid(home),
        healthy=healthy(sock),
    )
