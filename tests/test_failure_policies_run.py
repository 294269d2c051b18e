"""The failure policies with real processes (issue #20 item 3), on the test store: each
``failurePolicy`` action, ``maxFailedIndexes`` and ``retryBackoff``, told apart by the
marker file each execution leaves on the run's volume."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import Server

# Index i exits CODE_i on its first TIMES_i attempts (then 0), or sleeps when SLEEP_i is set.
SCRIPT = (
    "i=$SYLPHX_SHARD_INDEX; a=$SYLPHX_SHARD_ATTEMPT; touch /v/ran-$i-$a;"
    " eval c=\\${CODE_$i:-0}; eval n=\\${TIMES_$i:-1}; eval s=\\${SLEEP_$i:-0};"
    ' [ "$s" != 0 ] && exec sleep "$s"; [ "$a" -le "$n" ] && exit "$c"; exit 0'
)


def _rule(action: str, *codes: int) -> dict[str, Any]:
    return {"onExitCodes": {"operator": "In", "values": list(codes)}, "action": action}


def _run(server: Server, n: int, env: dict[str, str], **spec: Any) -> tuple[str, Path]:
    vol_id, vol = server.volume()
    run = server.submit(
        command=["sh", "-c", SCRIPT],
        parallelism=n,
        machine="nano",
        env=env,
        volumeMounts=[{"volumeId": vol_id, "mountPath": "/v"}],
        **({"gangScheduling": False, "retryBackoff": {"initialSeconds": 0}} | spec),
    )
    return run["id"], vol


def _ran(vol: Path, index: int) -> int:
    return len(list(vol.glob(f"ran-{index}-*")))


def test_each_failure_policy_action_on_real_shards(server: Server) -> None:
    env = {
        "CODE_0": "42",  # FailIndex: no retry
        "CODE_1": "43",  # Ignore: retried past the budget, and then succeeds
        "TIMES_1": "3",
        "CODE_2": "44",  # Count: today's rule, the budget of 2 retries
        "TIMES_2": "9",
        "CODE_3": "7",  # no rule matches: counted too, and it succeeds on its retry
    }
    policy = [_rule("FailIndex", 42), _rule("Ignore", 43), _rule("Count", 44)]
    run_id, vol = _run(server, 5, env, backoffLimitPerIndex=2, failurePolicy=policy)
    run = server.wait(run_id)
    assert run["status"] == "partial", run
    assert [_ran(vol, i) for i in range(5)] == [1, 4, 3, 2, 1]
    shards = {shard["index"]: shard for shard in server.shards(run_id)}
    assert shards[0]["status"] == "failed" and "FailIndex" in shards[0]["reason"], shards[0]
    assert shards[1]["status"] == "succeeded" and shards[1]["attempts"] == 4
    assert shards[2]["status"] == "failed" and shards[2]["exitCode"] == 44
    assert shards[3]["status"] == "succeeded" and shards[3]["attempts"] == 2
    assert run["spec"]["failurePolicy"][0]["action"] == "FailIndex"  # stored as given


def test_failrun_stops_the_run_at_once(server: Server) -> None:
    env = {"CODE_0": "45", **{f"SLEEP_{i}": "60" for i in (1, 2, 3)}}
    run_id, vol = _run(server, 4, env, backoffLimitPerIndex=3, failurePolicy=[_rule("FailRun", 45)])
    run = server.wait(run_id, timeout=40)  # the sleepers are stopped, not waited for
    assert run["status"] == "failed", run
    assert "FailRun" in run["message"] and "exit code 45" in run["message"], run["message"]
    assert _ran(vol, 0) == 1  # never retried
    states = {shard["index"]: shard["status"] for shard in server.shards(run_id)}
    assert states[0] == "failed" and {states[i] for i in (1, 2, 3)} <= {"cancelled", "failed"}


def test_max_failed_indexes_fails_the_run_once_past_the_limit(server: Server) -> None:
    env = {"CODE_0": "3", "CODE_1": "3", **{f"SLEEP_{i}": "60" for i in (2, 3, 4)}}
    run_id, _ = _run(server, 5, env, backoffLimitPerIndex=0, maxFailedIndexes=1)
    run = server.wait(run_id, timeout=40)
    assert run["status"] == "failed", run
    assert "maxFailedIndexes" in run["message"], run["message"]
    states = [shard["status"] for shard in server.shards(run_id)]
    assert states[:2] == ["failed", "failed"] and "running" not in states

    ok_id, _ = _run(server, 3, {"CODE_0": "3"}, backoffLimitPerIndex=0, maxFailedIndexes=1)
    assert server.wait(ok_id)["status"] == "partial"  # at the limit, not past it


def test_retry_backoff_delays_the_next_attempt_and_shows_when(server: Server) -> None:
    env = {"CODE_0": "3", "TIMES_0": "1"}
    run_id, _ = _run(server, 2, env, backoffLimitPerIndex=1, retryBackoff={"initialSeconds": 2})
    server.wait_for(lambda: server.shards(run_id)[0]["retryAt"] is not None)
    run = server.wait(run_id)
    assert run["status"] == "succeeded", run
    first, second = server.shards(run_id)[0]["history"]
    gap = datetime.fromisoformat(second["startedAt"]) - datetime.fromisoformat(first["endedAt"])
    assert gap.total_seconds() >= 2.0, (first, second)  # the delay is the semantics
