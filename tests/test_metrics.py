"""GET /metrics (issue #23, item 2): Prometheus text, parsed with prometheus-client's own
parser, whose values move as runs progress: runs and shards by state, the queue, admission
latency, reconcile passes, exits settled, preemptions, compute-seconds by org and tier,
request durations by route template. Guarded by SYLPHX_METRICS_TOKEN (an API key never
opens it); with ``--workers 2`` every worker's requests are summed and the lease holder's
reconciler metrics are there whichever worker answers the scrape."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import multiprocess
from prometheus_client.parser import text_string_to_metric_families

from conftest import Server
from sylphx._core.errors import ValidationError
from sylphx._settings import Settings

TOKEN = "metrics-token-" + "0123456789abcdef"
DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "sylphx.json"
Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by sample name (``x_total``, ``x_bucket``, ...)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def parse_family_files(paths: list[Path]) -> Samples:
    """The samples in some of prometheus-client's multiprocess files."""
    out: Samples = {}
    for family in multiprocess.MultiProcessCollector.merge([str(p) for p in paths]):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def scrape(url: str, **headers: str) -> Samples:
    # a fresh connection each time: with --workers N it may land on any worker
    r = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        v for got, v in samples.get(name, []) if all(got.get(k) == w for k, w in labels.items())
    )


def waiting_for(go: str) -> list[str]:
    """A shard command that runs until the file ``go`` exists."""
    return ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done"]


def until(pred: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_the_values_move_as_runs_progress(server: Server) -> None:
    before = scrape(server.url)
    assert value(before, "sylphx_store_up") == 1
    assert value(before, "sylphx_runs", state="running") == 0
    vol, out = server.volume()
    mount = [{"volumeId": vol, "mountPath": "/out"}]
    # two standard shards fill the server's 2 vCPU: the second run waits in the queue
    first = server.submit(
        command=waiting_for("/out/go"), parallelism=2, machine="standard", volumeMounts=mount
    )
    second = server.submit(command=["true"], parallelism=1, machine="standard")

    def both_in_place() -> bool:
        now = scrape(server.url)
        running = value(now, "sylphx_shards", state="running")
        return running == 2 and value(now, "sylphx_queue_depth") == 1

    until(both_in_place)
    time.sleep(0.3)  # the queued run ages
    during = scrape(server.url)
    assert value(during, "sylphx_runs", state="running") == 1
    assert value(during, "sylphx_runs", state="queued") == 1
    assert value(during, "sylphx_shards", state="running") == 2
    assert value(during, "sylphx_shards", state="pending") == 1
    assert value(during, "sylphx_queue_depth") == 1
    assert value(during, "sylphx_queue_head_age_seconds") >= 0.3
    # the first run was admitted (all its shards running): observed once
    admitted = "sylphx_admission_latency_seconds_count"
    assert value(during, admitted) - value(before, admitted) == 1

    (out / "go").touch()
    assert server.wait(first["id"])["status"] == "succeeded"
    assert server.wait(second["id"])["status"] == "succeeded"
    after = scrape(server.url)
    assert value(after, "sylphx_runs", state="succeeded") == 2
    assert value(after, "sylphx_runs", state="running") == 0
    assert value(after, "sylphx_runs", state="queued") == 0
    assert value(after, "sylphx_shards", state="running") == 0  # only runs not yet ended
    assert value(after, "sylphx_queue_depth") == 0
    assert value(after, "sylphx_queue_head_age_seconds") == 0
    assert value(after, admitted) - value(before, admitted) == 2  # each run once

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("sylphx_exits_settled_total", outcome="succeeded") == 3
    assert grew("sylphx_reconcile_pass_seconds_count") > 0
    assert grew("sylphx_reconcile_pass_seconds_sum") > 0
    compute = value(after, "sylphx_compute_seconds_total", org="test", tier="standard")
    assert compute > 0  # 1 unit x each shard's wall seconds
    assert value(after, "sylphx_compute_seconds_total", billed="false") == 0
    # requests, by route template (never a run's id) and status
    requests = "sylphx_http_request_duration_seconds_count"
    by_id = value(after, requests, method="GET", route="/v1/runs/{run_id}", status="200")
    assert by_id >= 2  # server.wait polled both runs
    assert value(after, requests, method="POST", route="/v1/runs", status="201") >= 2
    routes = {labels["route"] for labels, _ in after[requests]}
    assert not any(first["id"] in route for route in routes), routes
    server.http.get("/no/such/path")
    missing = scrape(server.url)
    assert value(missing, requests, route="unmatched", status="404") >= 1


def test_the_grafana_dashboard_uses_metrics_the_server_exposes(server: Server) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource"}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    r = httpx.get(f"{server.url}/metrics")  # every family, with samples or none yet
    families = {family.name for family in text_string_to_metric_families(r.text)}
    used = {name for expr in exprs for name in re.findall(r"\bsylphx_\w+", expr)}
    for name in used:
        assert re.sub(r"_(total|bucket|count|sum)$", "", name) in families, name
    shown = " ".join(exprs)
    for family in (
        "sylphx_runs", "sylphx_shards", "sylphx_queue_depth", "sylphx_queue_head_age_seconds",
        "sylphx_admission_latency_seconds", "sylphx_reconcile_pass_seconds",
        "sylphx_exits_settled_total", "sylphx_compute_seconds_total", "sylphx_preemptions_total",
        "sylphx_http_request_duration_seconds",
    ):  # fmt: skip
        assert family in shown, family


def test_preemptions_are_counted(make_server: Callable[..., Server]) -> None:
    server = make_server(preemption_grace_seconds=1.0)
    before = scrape(server.url)
    opportunistic = server.submit(
        command=["sleep", "300"], parallelism=2, machine="standard", gangScheduling=False
    )
    until(lambda: value(scrape(server.url), "sylphx_shards", state="running") == 2)
    gang = server.submit(command=["true"], parallelism=2, machine="standard")
    assert server.wait(gang["id"])["status"] == "succeeded"
    after = scrape(server.url)
    assert value(after, "sylphx_preemptions_total") - value(before, "sylphx_preemptions_total") == 2
    preempted = "sylphx_exits_settled_total"
    grew = value(after, preempted, outcome="preempted") - value(
        before, preempted, outcome="preempted"
    )
    assert grew >= 2
    server.http.post(f"/v1/runs/{opportunistic['id']}/cancel")
    server.wait(opportunistic["id"])


def test_the_token_guards_metrics_and_an_api_key_does_not_open_them(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(metrics_token=TOKEN)
    url = f"{server.url}/metrics"
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Bearer {server.token}"},  # a tenant's API key
        {"Authorization": f"Basic {TOKEN}"},
    ):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"] == "unauthorized"
        assert "sylphx_" not in r.text
    ok = scrape(server.url, Authorization=f"Bearer {TOKEN}")
    assert value(ok, "sylphx_store_up") == 1
    # /metrics is not part of the tenants' API document
    assert "/metrics" not in httpx.get(f"{server.url}/openapi.json").json()["paths"]


def test_without_a_token_only_loopback_clients_that_no_proxy_forwarded(server: Server) -> None:
    assert value(scrape(server.url), "sylphx_store_up") == 1  # this test is on loopback
    for forwarded in ({"X-Forwarded-For": "203.0.113.7"}, {"Forwarded": "for=203.0.113.7"}):
        r = httpx.get(f"{server.url}/metrics", headers=forwarded)
        assert r.status_code == 401, r.text
        assert "SYLPHX_METRICS_TOKEN" in r.json()["message"]
    r = httpx.post(f"{server.url}/metrics")
    assert r.status_code == 405 and r.headers["allow"] == "GET", r.text


def test_a_bad_token_setting_is_refused() -> None:
    for bad in ("short", "has a space in it, sixteen+", "tab\tin-the-token-here"):
        with pytest.raises(ValidationError, match="SYLPHX_METRICS_TOKEN") as err:
            Settings.from_env({"SYLPHX_METRICS_TOKEN": bad, "SYLPHX_HOME": "/tmp/x"})
        assert bad not in err.value.message  # never echoed
    ok = Settings.from_env({"SYLPHX_METRICS_TOKEN": TOKEN, "SYLPHX_HOME": "/tmp/x"})
    assert ok.metrics_token == TOKEN


def test_with_two_workers_requests_are_summed_and_reconciler_metrics_shown(
    tmp_path: Path,
) -> None:
    from serverproc import ServerProcess

    server = ServerProcess(tmp_path / "home", workers=2, SYLPHX_METRICS_TOKEN=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        server.start()
        key = server.http.headers["authorization"]
        requests = "sylphx_http_request_duration_seconds_count"

        def served() -> list[str]:
            """The worker processes whose own files count /v1/org requests."""
            files = (server.home / "metrics").glob("*/histogram_*.db")
            return [
                f.name for f in files if value(parse_family_files([f]), requests, route="/v1/org")
            ]

        n, deadline = 0, time.monotonic() + 60
        while len(served()) < 2:  # until both workers served some (and counted their own)
            assert time.monotonic() < deadline, served()
            for _ in range(10):  # a fresh connection each: the kernel spreads them over both
                with httpx.Client(base_url=server.url, timeout=30) as fresh:
                    assert fresh.get("/v1/org", headers={"Authorization": key}).status_code == 200
                n += 1
        for _ in range(6):  # whichever worker answers, the sum of both
            got = scrape(server.url, **auth)
            assert value(got, requests, method="GET", route="/v1/org", status="200") == n
        run = server.submit(command=["true"], parallelism=3, machine="nano")
        assert server.wait(run["id"])["status"] == "succeeded"
        for _ in range(6):  # the lease holder's events, from any worker
            got = scrape(server.url, **auth)
            assert value(got, "sylphx_exits_settled_total", outcome="succeeded") == 3
            assert value(got, "sylphx_admission_latency_seconds_count") == 1
            assert value(got, "sylphx_reconcile_pass_seconds_count") > 0
            assert value(got, "sylphx_runs", state="succeeded") == 1
            assert value(got, "sylphx_compute_seconds_total", tier="nano") > 0
        r = httpx.get(f"{server.url}/metrics", headers={"Authorization": key})
        assert r.status_code == 401  # an API key is not the metrics token
    finally:
        server.close()
