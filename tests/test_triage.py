"""Failure triage, table-driven: what a stderr line normalises to, and how failures group."""

from __future__ import annotations

import pytest

from sylphx._server.runs.triage import Failure, group, normalise


@pytest.mark.parametrize(
    ("line", "normalised"),
    [
        ("ValueError: bad row 1734 in /data/part-3.csv", "ValueError: bad row <n> in <path>"),
        ("segfault at 0x7ffd3a2b", "segfault at <hex>"),
        ("run wrk_01m90e9mss565m2r lost", "run <id> lost"),
        ("key 550e8400-e29b-41d4-a716-446655440000 missing", "key <id> missing"),
        ("sha 9f86d081884c7d65 differs", "sha <hex> differs"),
        ("took 3.25s, 2 retries", "took <n>s, <n> retries"),
        ("Killed", "Killed"),
    ],
)
def test_normalise(line: str, normalised: str) -> None:
    assert normalise(line) == normalised


def test_failures_group_by_reason_exit_code_and_normalised_line() -> None:
    failures = [
        Failure(0, 1, "Error: exit code 1", "bad row 3"),
        Failure(4, 1, "Error: exit code 1", "bad row 99"),
        Failure(5, 137, "OOMKilled: over its tier's memory", "bad row 3"),
        Failure(7, 1, "Error: exit code 1", "bad row 7"),
        Failure(9, None, "DeadlineExceeded: timed out", ""),
    ]
    got = [(g.reason, g.exit_code, g.line, g.count, g.indices, g.sample) for g in group(failures)]
    assert got == [
        ("Error", 1, "bad row <n>", 3, "0,4,7", "bad row 3"),
        ("OOMKilled", 137, "bad row <n>", 1, "5", "bad row 3"),  # by size, then index
        ("DeadlineExceeded", None, "", 1, "9", ""),
    ]
