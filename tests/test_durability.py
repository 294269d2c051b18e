"""Durability short of kill -9: graceful stop, lease, CAS, a full disk, a lost store."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm.exc import StaleDataError

from conftest import TEST_STORE, Server, database_url_for, pid_alive, pids_of_run, start_server
from serverproc import ServerProcess
from sylphx._server.infra.faults import MIN_FREE_BYTES
from sylphx._server.infra.lease import Lease
from sylphx._server.store import RunRow, lost_race, make_engine, migrate


def test_sigterm_refuses_new_runs_leaves_shards_running_and_restart_resumes(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "home")
    try:
        server.start()
        run = server.submit(command=["sh", "-c", "sleep 5; echo ok"])
        deadline = time.monotonic() + 30
        while len(pids_of_run(run["id"])) < 2:  # the sandbox and the shell
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pids = pids_of_run(run["id"])
        assert server.term() == 0  # exits promptly and cleanly...
        assert all(pid_alive(pid) for pid in pids)  # ...leaving the shard running
        server.start()
        done = server.wait(run["id"])
        assert done["status"] == "succeeded"
        (shard,) = server.http.get(f"/v1/runs/{run['id']}/shards").json()
        assert shard["attempts"] == 1
        assert server.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": 0}).text == "ok\n"
    finally:
        server.close()


def test_a_draining_server_answers_503_to_new_runs(server: Server) -> None:
    server.plane.draining = True
    r = server.http.post("/v1/runs", json={"command": ["true"]})
    assert r.status_code == 503
    assert r.json()["error"] == "server_unavailable"
    assert "shutting down" in r.json()["message"] and "Fix:" in r.json()["message"]
    assert server.http.get("/v1/runs").status_code == 200  # reads still work


def test_only_one_lease_holder_and_it_passes_on(tmp_path: Path) -> None:
    engine = make_engine(database_url_for(tmp_path))
    migrate(engine)
    first, second = Lease(engine, tmp_path), Lease(engine, tmp_path)
    try:
        assert first.ensure() and first.ensure()
        assert not second.ensure()
        first.release()  # as when its holder dies: the connection or the flock goes away
        assert second.ensure()
        assert not first.ensure()
    finally:
        first.release()
        second.release()
        engine.dispose()


def test_status_writes_are_compare_and_set(server: Server) -> None:
    run = server.submit(command=["true"])
    server.wait(run["id"])
    with server.plane.reads() as s:
        row = s.get(RunRow, run["id"])  # read now, written later: the row may go stale
        assert row is not None
        s.commit()
        with server.plane.sessions.begin() as other:  # someone else writes first
            theirs = other.get(RunRow, run["id"])
            assert theirs is not None
            theirs.message = "theirs"
        row.message = "mine"
        with pytest.raises(StaleDataError):  # UPDATE ... WHERE version = <what we read>
            s.commit()


def test_a_cancel_wins_against_a_writer_that_rewrites_the_run_all_the_time(
    server: Server,
) -> None:
    """As the reconciler does with a run whose pass keeps faulting (its message counts the
    strikes): each write holds the row until its commit, then the next one takes it. A
    cancel that read first and compared later lost every try to it (503 on PostgreSQL);
    it now locks the row as it reads."""
    run = server.submit(command=["sleep", "60"], machine="nano")
    server.wait_for(lambda: server.get(run["id"])["status"] == "running", timeout=60)
    stop, writes = threading.Event(), [0]
    bump = (
        update(RunRow)
        .where(RunRow.id == run["id"])
        .values(message="rewritten", version=RunRow.version + 1)
    )

    def churn() -> None:  # two of them: one holds the row while the other waits for it
        while not stop.is_set():
            with server.plane.sessions.begin() as s:
                s.execute(bump)  # the row is held from here...
                time.sleep(0.05)  # ...to the commit
            writes[0] += 1

    writers = [threading.Thread(target=churn) for _ in range(2)]
    for writer in writers:
        writer.start()
    try:
        server.wait_for(lambda: writes[0] >= 4, timeout=10)
        cancelled = server.http.post(f"/v1/runs/{run['id']}/cancel")
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    assert cancelled.status_code == 202, cancelled.text
    assert server.wait(run["id"])["status"] == "cancelled"


def test_a_transaction_postgresql_breaks_out_of_a_deadlock_is_a_lost_race(
    tmp_path: Path,
) -> None:
    """Two writers taking two rows in opposite orders: PostgreSQL aborts one (40P01), and
    a cancel, retry or delete caught in it is run again (lost_race), not a 503."""
    if TEST_STORE != "postgresql":
        pytest.skip("SQLite's writers are one at a time: they never deadlock")
    engine = make_engine(database_url_for(tmp_path))
    migrate(engine)
    table = "CREATE TABLE IF NOT EXISTS race (id int PRIMARY KEY, n int)"
    with engine.begin() as db:
        db.execute(text(table))
        db.execute(text("INSERT INTO race VALUES (1, 0), (2, 0) ON CONFLICT DO NOTHING"))
    both = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(first: int, second: int) -> None:
        try:
            with engine.begin() as db:
                db.execute(text("UPDATE race SET n = n + 1 WHERE id = :i"), {"i": first})
                both.wait(timeout=10)
                db.execute(text("UPDATE race SET n = n + 1 WHERE id = :i"), {"i": second})
        except Exception as exc:  # the one PostgreSQL chose
            errors.append(exc)

    writers = [threading.Thread(target=write, args=order) for order in ((1, 2), (2, 1))]
    try:
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(timeout=30)
    finally:
        engine.dispose()
    (error,) = errors
    assert lost_race(error), error
    assert not lost_race(ValueError("no"))


def test_two_api_workers_share_the_store_and_one_reconciles(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "home", workers=2)
    try:
        server.start()
        vol = server.http.post("/v1/volumes", json={"name": "out"}).json()["id"]
        run = server.submit(
            command=["sh", "-c", "echo $SYLPHX_SHARD_INDEX >> /out/$SYLPHX_SHARD_INDEX"],
            parallelism=16,
            machine="nano",
            volumeMounts=[{"volumeId": vol, "mountPath": "/out"}],
        )
        assert server.wait(run["id"])["status"] == "succeeded"
        out = server.home / "volumes" / vol
        for i in range(16):
            assert (out / str(i)).read_text() == f"{i}\n"  # started exactly once
    finally:
        server.close()


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")


def test_full_log_disk_is_a_clear_503_and_runs_resume_when_there_is_room(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    logs = home / "logs"
    _mount_tmpfs(logs, "2m")
    server, stop = start_server(home)
    try:
        filler = logs / "filler"
        with open(filler, "wb") as fh:
            fh.write(b"\0" * (2 * 1024 * 1024 - MIN_FREE_BYTES // 2))
        # A plain submit takes room on trust from a reading at most a second old (docs/adr/
        # 0011); past that second, any reading that young is of the full disk.
        time.sleep(1.5)
        r = server.http.post("/v1/runs", json={"command": ["true"]})
        assert r.status_code == 503
        body = r.json()
        assert body["error"] == "storage_full"
        assert str(logs) in body["message"] and "Fix: free space" in body["message"]
        assert server.http.get("/v1/runs").json()["items"] == []  # nothing half-stored
        filler.unlink()
        run = server.submit(command=["sh", "-c", "echo fine"])
        assert server.wait(run["id"])["status"] == "succeeded"
    finally:
        stop()
        subprocess.run(["umount", "-l", str(logs)], check=False)


@pytest.mark.skipif(TEST_STORE != "postgresql", reason="the postgresql pass covers it")
def test_database_outage_is_a_clear_503_and_the_plane_resumes(tmp_path: Path) -> None:
    from pgserver import PgServer

    pg = PgServer(durable=True)  # it is crashed below: commits must survive that
    pg.start()
    server, stop = start_server(tmp_path / "home", database_url=pg.create_database())
    try:
        run = server.submit(command=["sh", "-c", "sleep 1.5; echo done"])
        server.wait_for(lambda: server.get(run["id"])["status"] == "running")
        pg.stop("immediate")
        r = server.http.get(f"/v1/runs/{run['id']}")
        assert r.status_code == 503
        body = r.json()
        assert body["error"] == "store_unavailable"
        assert "PostgreSQL server is running" in body["message"]
        time.sleep(2)  # the shard ends while the store is away
        pg.start()
        done = server.wait(run["id"], timeout=60)
        assert done["status"] == "succeeded"
        assert server.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": 0}).text == "done\n"
    finally:
        stop()
        pg.destroy()
