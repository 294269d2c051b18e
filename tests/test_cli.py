"""The CLI as users run it: a real `sylphx` process against a real control plane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TEST_STORE, Server

SYLPHX = [sys.executable, "-m", "sylphx"]


def cli(
    *args: str,
    url: str | None = None,
    cwd: Path | None = None,
    token: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if url is not None:
        env["SYLPHX_URL"] = url
    if token is not None:
        env["SYLPHX_TOKEN"] = token
    return subprocess.run(
        [*SYLPHX, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


# (arguments, words the error must contain) -- every config-reference rule
INVALID = [
    (["--parallelism", "0"], "parallelism: must be between 1 and 256"),
    (["--parallelism", "257"], "parallelism: must be between 1 and 256"),
    (
        ["-n", "9", "--backoff-limit-per-index", "3"],
        "backoffLimitPerIndex: requires gangScheduling: false (opportunistic runs only)",
    ),
    (
        ["--opportunistic", "--backoff-limit-per-index", "3"],
        "backoffLimitPerIndex: requires parallelism > 1",
    ),
    (
        ["-n", "9", "--opportunistic", "--backoff-limit-per-index", "51"],
        "backoffLimitPerIndex: must be between 0 and 50",
    ),
    (["--machine", "huge"], "'huge' is not one of nano, micro, small"),
    (["--machine", "gpu-small"], "the GPU tiers (gpu-small, gpu-large) are not admitted yet"),
    (["--merge-command", "true", "--merge-machine", "huge"], "'huge' is not one of nano"),
    (["--timeout", "0"], "timeoutSeconds: must be between 1 and 86400"),
    (["--timeout", "86401"], "timeoutSeconds: must be between 1 and 86400"),
    (["--completion-mode", "Sometimes"], "'Sometimes' is not one of Indexed, NonIndexed"),
    (["--env", "SYLPHX_SHARD_INDEX=1"], "reserved"),
    (["--env", "NOEQUALS"], "--env"),
    (["--volume", "vol_x:relative"], "mountPath: must be an absolute path"),
    (["--volume", "novolpath"], "--volume"),
]


@pytest.mark.parametrize(("args", "words"), INVALID)
def test_cli_refuses_invalid_specs_with_exit_2(server: Server, args: list[str], words: str) -> None:
    r = cli("run", *args, "--", "true", url=server.url, token=server.token)
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr
    assert "Fix" in r.stderr or "fix" in r.stderr.lower()


def test_cli_unschedulable_gang_exits_2_with_the_numbers(server: Server) -> None:
    r = cli(
        "run", "-n", "9", "--machine", "large", "--", "true", url=server.url, token=server.token
    )
    assert r.returncode == 2
    assert "needs 18 vCPU / 36 GiB at once" in r.stderr


def test_run_follow_get_logs_list(server: Server) -> None:
    r = cli(
        "run",
        "-n",
        "4",
        "--machine",
        "nano",
        "--env",
        "WORD=hi",
        "--follow",
        "--",
        "sh",
        "-c",
        'echo "$WORD $SYLPHX_SHARD_INDEX"; [ "$SYLPHX_SHARD_INDEX" != 2 ]',
        url=server.url,
        token=server.token,
    )
    assert r.returncode == 1, r.stderr  # partial is not success
    run_id = r.stdout.split()[0]
    assert run_id.startswith("wrk_")
    assert "partial" in r.stdout
    got = cli("runs", "get", run_id, url=server.url, token=server.token)
    assert got.returncode == 0
    assert "partial" in got.stdout and "failed" in got.stdout
    as_json = json.loads(
        cli("runs", "get", run_id, "--json", url=server.url, token=server.token).stdout
    )
    assert as_json["aggregate"]["succeeded"] == 3
    assert [(s["index"], s["exitCode"]) for s in as_json["shards"]] == [
        (0, 0),
        (1, 0),
        (2, 1),
        (3, 0),
    ]
    logs = cli("runs", "logs", run_id, "--shard", "2", url=server.url, token=server.token)
    assert logs.returncode == 0 and logs.stdout == "hi 2\n"
    assert (
        cli(
            "runs", "logs", run_id, "--shard", "2", "--stderr", url=server.url, token=server.token
        ).stdout
        == ""
    )
    listed = json.loads(cli("runs", "list", "--json", url=server.url, token=server.token).stdout)
    assert run_id in [item["id"] for item in listed["items"]]
    ok = cli("run", "--follow", "--", "true", url=server.url, token=server.token)
    assert ok.returncode == 0 and "succeeded" in ok.stdout


def test_logs_follow_and_cancel(server: Server) -> None:
    code = (
        "import time\nfor i in range(100):\n    print('tick', i, flush=True)\n    time.sleep(0.2)"
    )
    r = cli("run", "--", sys.executable, "-c", code, url=server.url, token=server.token)
    run_id = r.stdout.strip()
    env = {**os.environ, "SYLPHX_URL": server.url, "SYLPHX_TOKEN": server.token}
    follower = subprocess.Popen(
        [*SYLPHX, "runs", "logs", run_id, "--shard", "0", "--follow"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert follower.stdout is not None
    assert follower.stdout.readline() == "tick 0\n"  # streamed while the shard runs
    assert follower.stdout.readline() == "tick 1\n"
    cancelled = cli("runs", "cancel", run_id, url=server.url, token=server.token)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    follower.wait(timeout=15)  # the follow ends when the shard ends
    assert follower.returncode == 0
    assert server.get(run_id)["status"] == "cancelled"
    deleted = cli("runs", "delete", run_id, url=server.url, token=server.token)
    assert deleted.returncode == 0 and f"deleted {run_id}" in deleted.stdout
    assert server.http.get(f"/v1/runs/{run_id}").status_code == 404


def test_cli_not_found(server: Server) -> None:
    r = cli("runs", "get", "wrk_nope", url=server.url, token=server.token)
    assert r.returncode == 2 and "run 'wrk_nope' not found" in r.stderr  # an unknown id: usage


def test_seed_cli_example_on_the_embedded_default(clean_env: Path, tmp_path: Path) -> None:
    """The spec page's CLI example, as written (without --image), from a clean SYLPHX_HOME."""
    work = tmp_path / "job"
    work.mkdir()
    (work / "train.py").write_text(
        "import os\n"
        'shard = int(os.environ["SYLPHX_SHARD_INDEX"])\n'
        'count = int(os.environ["SYLPHX_SHARD_COUNT"])\n'
        'print(f"fold {shard} of {count}")\n'
    )
    r = cli(
        "run",
        "--parallelism",
        "9",
        "--opportunistic",
        "--backoff-limit-per-index",
        "12",
        "--machine",
        "large",
        "--timeout",
        "7200",
        "--follow",
        "--",
        "python",
        "train.py",
        cwd=work,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    run_id = r.stdout.split()[0]
    # another shell sees the same run through the shared embedded control plane
    got = cli("runs", "get", run_id, "--json")
    assert json.loads(got.stdout)["status"] == "succeeded"
    assert cli("runs", "logs", run_id, "--shard", "3").stdout == "fold 3 of 9\n"
    if TEST_STORE == "sqlite":  # the embedded default's store lives in SYLPHX_HOME
        assert (clean_env / "sylphx.db").exists()


def test_embedded_run_without_follow_still_finishes(clean_env: Path) -> None:
    r = cli("run", "-n", "3", "--machine", "nano", "--", "sleep", "0.5")
    assert r.returncode == 0
    run_id = r.stdout.strip()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # polled from fresh CLI processes
        status = json.loads(cli("runs", "get", run_id, "--json").stdout)["status"]
        if status == "succeeded":
            break
        time.sleep(0.3)
    assert status == "succeeded"
    status_out = cli("local", "status")
    assert status_out.returncode == 0
    assert cli("local", "stop").returncode == 0
