"""The CLI in its ecosystem: one exit-code table, --json everywhere, choices, shell
completion, named contexts (whoami, login, logout), a command optional with --image, and
the wording of its tables and errors. Against a real control plane, in-process (click's
CliRunner) unless the process boundary itself is under test."""

from __future__ import annotations

import inspect
import json
import os
import socket
import socketserver
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import pytest
import stamina
from click.testing import CliRunner, Result

from conftest import Server
from oci import BusyboxImages
from sylphx import RunsClient, UsageClient, create_client
from sylphx._cli import cli
from sylphx._cli import common as exits
from sylphx._cli.completion import TIMEOUT_SECONDS, complete_run_id
from sylphx._cli.render import shard_table, spec_line
from sylphx._client import embedded
from sylphx._client.contexts import LOCAL, Contexts, config_file, resolve, stored_token
from sylphx._client.credentials import credentials_file
from sylphx._client.transport import build_spec, spec_fields
from sylphx._core import errors
from sylphx._core.spec import RunSpec
from sylphx._core.states import RunState, ShardState
from sylphx._core.views import Aggregate, RunList, RunView, ShardView
from sylphx._settings import socket_path

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SYLPHX_* from outside: a fresh SYLPHX_HOME and config directory (returned)."""
    for key in list(os.environ):
        if key.startswith("SYLPHX_") and key != "SYLPHX_TEST_STORE":
            monkeypatch.delenv(key)
    monkeypatch.setenv("SYLPHX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SYLPHX_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


def sx(
    *args: str, url: str | None = None, token: str | None = None, stdin: str | None = None,
    **env: str,
) -> Result:  # fmt: skip
    """``sylphx ARGS`` in-process, with SYLPHX_URL / SYLPHX_TOKEN when given."""
    extra = {"SYLPHX_URL": url, "SYLPHX_TOKEN": token} | env
    return CliRunner().invoke(
        cli,
        list(args),
        input=stdin,
        env={k: v for k, v in extra.items() if v is not None},
        prog_name="sylphx",
        catch_exceptions=False,
    )


def js(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def dead_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def no_retries() -> Iterator[None]:
    """The SDK tries each request once (a dead URL fails at once, not after ~20 s)."""
    stamina.set_testing(True, attempts=1)
    try:
        yield
    finally:
        stamina.set_testing(False)


# -- 1. one exit-code table -----------------------------------------------------------------


def test_the_exit_code_table_maps_the_error_tree() -> None:
    ceiling = errors.QuotaExceeded("per-job", details=[{"limit": "perJobParallelism"}])
    budget = errors.QuotaExceeded("busy", retry_after=30)
    budget_quote = errors.QuotaExceeded(  # a quote's error: the details, no Retry-After
        "busy", details=[{"limit": "orgConcurrentShards", "max": 4, "requested": 3}]
    )
    too_big = errors.QuotaExceeded(
        "never", details=[{"limit": "orgConcurrentShards", "max": 4, "requested": 9}]
    )
    cases = {
        errors.ValidationError("x"): 2,
        errors.Unschedulable("x"): 2,
        errors.NotFound("x"): 2,
        errors.PayloadTooLarge("x"): 2,
        ceiling: 2,
        too_big: 2,
        budget: 3,
        budget_quote: 3,
        errors.SpendLimitReached("x"): 3,
        errors.Unauthorized("x"): 4,
        errors.ServerUnavailable("x"): 5,
        errors.StoreUnavailable("x"): 5,
        errors.ExecutorError("x"): 5,
        errors.TransportError("x"): 5,
        errors.ConflictError("x"): 1,
        errors.SylphxError("x"): 1,
    }
    assert {type(e).__name__ + str(i): exits.exit_code(e) for i, e in enumerate(cases)} == {
        type(e).__name__ + str(i): code for i, (e, code) in enumerate(cases.items())
    }


def test_the_table_is_in_the_help_and_the_readme() -> None:
    shown = sx("--help")
    assert shown.exit_code == 0 and "Exit codes:" in shown.stdout
    readme = README.read_text()
    cli_section = readme[readme.index("### CLI") : readme.index("### Python SDK")]
    for code in range(6):
        assert f"| {code} |" in cli_section, code
    for line in exits.EXIT_CODES_HELP.splitlines()[2:]:
        assert line.strip() in shown.stdout


def test_unknown_ids_named_in_the_spec_exit_2(server: Server, home: Path) -> None:
    vol = sx("run", "--volume", "vol_nope:/data", "--", "true", url=server.url, token=server.token)
    assert vol.exit_code == 2 and "volume 'vol_nope' does not exist" in vol.stderr, vol.output
    sec = sx("run", "--secret", "NOPE", "--", "true", url=server.url, token=server.token)
    assert sec.exit_code == 2 and "secret 'NOPE' not found" in sec.stderr, sec.output
    run = sx("runs", "get", "wrk_nope", url=server.url, token=server.token)
    assert run.exit_code == 2
    assert server.http.get("/v1/runs").json()["items"] == []


def test_a_per_job_ceiling_exits_2_and_a_busy_budget_3(server: Server, home: Path) -> None:
    free = server.new_org("free-ceiling", plan="free")
    over = sx("run", "-n", "4", "--", "true", url=server.url, token=free)
    assert over.exit_code == 2 and "per-job ceiling of 1 shard(s)" in over.stderr, over.output
    quoted = sx("run", "--dry-run", "-n", "4", "--", "true", url=server.url, token=free)
    assert quoted.exit_code == 2 and quoted.stdout.startswith("refused:"), quoted.output

    busy = server.new_org("busy-budget", plan="pro", concurrent_shards=2)
    http = server.client(busy)
    spec = {"command": ["sleep", "60"], "parallelism": 2, "machine": "nano"}
    holder = http.post("/v1/runs", json=spec | {"gangScheduling": False}).json()
    try:
        later = sx("run", "--machine", "nano", "--", "true", url=server.url, token=busy)
        assert later.exit_code == 3 and "wait for 1 running shard" in later.stderr, later.output
        quote = sx(
            "run", "--dry-run", "--machine", "nano", "--", "true", url=server.url, token=busy
        )
        assert quote.exit_code == 3, quote.output
        never = sx("run", "-n", "3", "--machine", "nano", "--", "true", url=server.url, token=busy)
        assert never.exit_code == 2, never.output  # larger than the whole budget: never clears
    finally:
        http.post(f"/v1/runs/{holder['id']}/cancel")
        http.close()


def test_a_spend_limit_exits_3(server: Server, home: Path) -> None:
    token = server.new_org("at-limit", plan="pro")
    admin = {"SYLPHX_DATABASE_URL": server.settings.database_url}
    admin["SYLPHX_HOME"] = str(server.settings.home)
    limited = js(sx("admin", "org", "set", "at-limit", "--monthly-limit", "0", "--json", **admin))
    assert limited["monthlyLimitSeconds"] == 0 and limited["name"] == "at-limit"
    got = sx("run", "--", "true", url=server.url, token=token)
    assert got.exit_code == 3 and "monthly" in got.stderr, got.output


def test_a_bad_key_exits_4(server: Server, home: Path) -> None:
    for args in (["runs", "list"], ["whoami"], ["run", "--", "true"]):
        got = sx(*args, url=server.url, token="sx_not-a-key")
        assert got.exit_code == 4 and "unknown or revoked API key" in got.stderr, got.output
    nokey = sx("runs", "list", url=server.url)
    assert nokey.exit_code == 4 and "missing API key" in nokey.stderr


def test_an_unreachable_server_exits_5_naming_where_its_url_came_from(
    home: Path, no_retries: None
) -> None:
    url = dead_url()
    flag = sx("--url", url, "runs", "list")
    assert flag.exit_code == 5 and "cannot reach" in flag.stderr, flag.output
    assert "correct --url" in flag.stderr and "SYLPHX_URL" not in flag.stderr
    env = sx("runs", "list", url=url)
    assert env.exit_code == 5 and "correct SYLPHX_URL" in env.stderr, env.output
    assert sx("context", "set", "gone", "--url", url, "--use").exit_code == 0
    ctx = sx("runs", "list")
    assert ctx.exit_code == 5 and "point context gone elsewhere" in ctx.stderr, ctx.output
    assert "SYLPHX_URL" not in ctx.stderr
    assert sx("--url", "ftp://nowhere", "runs", "list").exit_code == 2


class _Unavailable(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"error": "store_unavailable", "message": "the store is down"})
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


def test_a_503_exits_5(home: Path, no_retries: None) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        got = sx("runs", "list", url=f"http://127.0.0.1:{httpd.server_address[1]}", token="t")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert got.exit_code == 5 and "the store is down" in got.stderr, got.output


# -- 2. --json everywhere ---------------------------------------------------------------------


def test_every_creating_listing_or_showing_command_speaks_json(server: Server, home: Path) -> None:
    admin = {"SYLPHX_DATABASE_URL": server.settings.database_url}
    admin["SYLPHX_HOME"] = str(server.settings.home)
    org = js(sx("admin", "org", "create", "jsonco", "--plan", "pro", "--json", **admin))
    assert org["name"] == "jsonco" and org["id"].startswith("org_") and org["plan"] == "pro"
    changed = js(sx("admin", "org", "set", "jsonco", "--plan", "team", "--json", **admin))
    assert (changed["plan"], changed["concurrentShards"]) == ("team", 1024)
    key = js(sx("admin", "key", "create", "--org", "jsonco", "--name", "ci", "--json", **admin))
    assert key["key"].startswith("sx_") and key["state"] == "active" and key["name"] == "ci"
    keys = js(sx("admin", "key", "list", "--org", "jsonco", "--json", **admin))
    assert [k["id"] for k in keys] == [key["id"]] and "key" not in keys[0]
    orgs = js(sx("admin", "org", "list", "--json", **admin))
    assert [o for o in orgs if o["name"] == "jsonco"] == [changed]
    policy = js(sx("admin", "org", "policy", "jsonco", "--allow-source", "ghcr.io/jsonco/",
                   "--require-digest", "--json", **admin))  # fmt: skip
    assert policy == {
        "id": org["id"],
        "name": "jsonco",
        "imagePolicy": {
            "allowedSources": ["ghcr.io/jsonco/"], "requireDigest": True, "denyDigests": []
        },
    }  # fmt: skip
    shown = sx("admin", "org", "policy", "jsonco", "--deny-digest", "sha256:bad", **admin)
    assert shown.stdout == (
        "jsonco: images from ghcr.io/jsonco/ only; pinned by digest; 1 digest(s) denied\n"
    ), shown.output
    cleared = js(sx("admin", "org", "policy", "jsonco", "--clear", "--json", **admin))
    assert cleared["imagePolicy"] is None
    assert sx("admin", "org", "policy", "jsonco", **admin).stdout == (
        "jsonco: no image policy (any image is admitted)\n"
    )
    spare = js(sx("admin", "key", "create", "--org", "jsonco", "--json", **admin))
    revoked = js(sx("admin", "key", "revoke", spare["id"], "--json", **admin))
    assert (revoked["id"], revoked["state"]) == (spare["id"], "revoked") and revoked["revokedAt"]
    assert "key" not in revoked
    assert sx("admin", "key", "revoke", spare["id"], **admin).stdout == f"revoked {spare['id']}\n"
    as_org = {"url": server.url, "token": key["key"]}

    who = js(sx("whoami", "--json", **as_org))
    assert who["org"]["name"] == "jsonco" and who["url"] == server.url
    assert (who["origin"], who["context"]) == ("SYLPHX_URL", None)
    assert js(sx("usage", "--json", **as_org))["org"] == "jsonco"

    secret = js(sx("secrets", "set", "API_TOKEN", "--json", stdin="s3cret", **as_org))
    assert secret["name"] == "API_TOKEN" and "s3cret" not in json.dumps(secret)
    assert [s["name"] for s in js(sx("secrets", "list", "--json", **as_org))] == ["API_TOKEN"]
    assert js(sx("secrets", "delete", "API_TOKEN", "--json", **as_org)) == {"deleted": "API_TOKEN"}

    vol = js(sx("volumes", "create", "--name", "v", "--json", **as_org))
    assert [v["id"] for v in js(sx("volumes", "list", "--json", **as_org))] == [vol["id"]]
    assert js(sx("volumes", "delete", vol["id"], "--json", **as_org)) == {"deleted": vol["id"]}

    done = sx("run", "--machine", "nano", "--follow", "--json", "--", "true", **as_org)
    assert done.exit_code == 0, done.output
    run_id = json.loads(done.stdout)["id"]
    assert js(sx("runs", "get", run_id, "--json", **as_org))["status"] == "succeeded"
    assert run_id in [r["id"] for r in js(sx("runs", "list", "--json", **as_org))["items"]]
    assert js(sx("runs", "delete", run_id, "--json", **as_org)) == {"deleted": run_id}

    logged = js(sx("login", "--token", key["key"], "--json", url=server.url))
    assert logged["org"]["name"] == "jsonco" and logged["context"] is None
    assert logged["stored"].endswith("credentials.json")
    out = js(sx("logout", "--json", url=server.url))
    assert out == {"url": server.url, "context": None, "forgotten": [logged["stored"]]}


def test_run_without_follow_prints_only_the_id_on_stdout(server: Server, home: Path) -> None:
    got = sx("run", "--machine", "nano", "--", "true", url=server.url, token=server.token)
    assert got.exit_code == 0, got.output
    run_id = got.stdout.strip()
    assert run_id.startswith("wrk_") and got.stdout == f"{run_id}\n"
    assert f"sylphx runs get {run_id}" in got.stderr
    assert f"sylphx runs logs {run_id} --all --follow" in got.stderr and "--follow" in got.stderr
    server.wait(run_id)
    env = {**os.environ, "SYLPHX_URL": server.url, "SYLPHX_TOKEN": server.token}
    shell = subprocess.run(  # as scripts use it
        ["sh", "-c", f'ID=$("{sys.executable}" -m sylphx run -- true 2>/dev/null); echo "<$ID>"'],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert shell.stdout.startswith("<wrk_") and shell.stdout.endswith(">\n"), shell.stdout


# -- 3. choices -------------------------------------------------------------------------------


def test_machine_and_completion_mode_are_choices_of_admissible_values(home: Path) -> None:
    shown = sx("run", "--help").stdout
    assert "[nano|micro|small|standard|large|xlarge|2xlarge|mem-2xlarge]" in shown
    assert "gpu" not in shown.split("--machine")[1].split("\n")[0]
    assert "[Indexed|NonIndexed]" in shown
    gpu = sx("run", "--machine", "gpu-large", "--", "true")
    assert gpu.exit_code == 2
    assert "'gpu-large' is not one of nano, micro, small, standard, large, xlarge" in gpu.stderr
    assert "GPU tiers (gpu-small, gpu-large) are not admitted yet" in gpu.stderr


def test_the_servers_tier_message_names_only_admissible_tiers(server: Server) -> None:
    r = server.http.post("/v1/runs", json={"command": ["true"], "machine": "huge"})
    assert r.status_code == 422
    message = r.json()["message"]
    assert "must be one of 'nano', 'micro'" in message and "'mem-2xlarge' (got 'huge')" in message
    assert "'gpu-small'" not in message and "not admitted yet" in message


# -- 4. shell completion ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _sylphx_completion sylphx"),
        ("zsh", "#compdef sylphx"),
        ("fish", "complete --no-files --command sylphx"),
    ],
)
def test_completion_prints_the_shells_script(shell: str, marker: str, home: Path) -> None:
    got = sx("completion", shell)
    assert got.exit_code == 0 and marker in got.stdout and "_SYLPHX_COMPLETE" in got.stdout
    assert sx("completion", "tcsh").exit_code == 2


def complete(
    words: str, env: dict[str, str], shell: str = "bash"
) -> subprocess.CompletedProcess[str]:
    """What the shell's completion function gets for the command line ``words``."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    return subprocess.run(
        [sys.executable, "-m", "sylphx"],
        capture_output=True, text=True, timeout=60,
        env=env | {"_SYLPHX_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
                   "COMP_CWORD": str(cword)},
    )  # fmt: skip


def test_run_ids_and_tiers_complete(server: Server, home: Path, tmp_path: Path) -> None:
    run = server.submit(command=["true"], machine="nano")
    base = {k: v for k, v in os.environ.items() if not k.startswith("SYLPHX_")}
    base |= {"SYLPHX_HOME": str(tmp_path / "home"), "SYLPHX_CONFIG_DIR": str(home)}
    env = base | {"SYLPHX_URL": server.url, "SYLPHX_TOKEN": server.token}
    ids = complete("sylphx runs get ", env)
    assert ids.returncode == 0 and f"plain,{run['id']}" in ids.stdout.splitlines(), ids
    flagged = complete(
        f"sylphx --url {server.url} runs delete ", base | {"SYLPHX_TOKEN": server.token}
    )
    assert f"plain,{run['id']}" in flagged.stdout.splitlines(), flagged  # --url is honoured
    assert complete("sylphx runs cancel wrk_zz", env).stdout.strip() == ""  # by the prefix
    described = complete("sylphx runs retry wrk", env, shell="zsh")
    assert run["id"] in described.stdout and "true" in described.stdout, described
    tiers = complete("sylphx run --machine ", env).stdout.splitlines()
    assert "plain,nano" in tiers and "plain,mem-2xlarge" in tiers
    assert not [t for t in tiers if "gpu" in t]

    dead = complete("sylphx runs get ", base | {"SYLPHX_URL": dead_url()})
    assert (dead.returncode, dead.stdout.strip(), dead.stderr) == (0, "", "")
    began = time.monotonic()
    embedded = complete("sylphx runs get ", base)  # never starts the embedded control plane
    assert (embedded.returncode, embedded.stdout.strip(), embedded.stderr) == (0, "", "")
    assert time.monotonic() - began < 30  # the interpreter's start; no server's
    home_dir = tmp_path / "home"
    assert not home_dir.exists() or sorted(p.name for p in home_dir.iterdir()) == []


def _complete_in_process() -> tuple[list[str], float]:
    """The run ids completed for ``sylphx runs get <TAB>`` (no --url), and how long it took."""
    ctx = click.Context(cli)
    ctx.params = {"url": None}
    began = time.monotonic()
    items = complete_run_id(ctx, click.Argument(["run_id"]), "")
    return [i.value for i in items], time.monotonic() - began


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> list[Path | None]:
    """Every start of the embedded control plane asked for (none happens)."""
    asked: list[Path | None] = []

    def ensure(home: Path | None = None) -> Path:
        asked.append(home)
        raise AssertionError("completion started the embedded control plane")

    monkeypatch.setattr(embedded, "ensure_local_server", ensure)
    return asked


def test_completion_answers_within_2s_overall_and_never_starts_the_embedded_one(
    home: Path, tmp_path: Path, starts: list[Path | None]
) -> None:
    sylphx_home = tmp_path / "home"
    sylphx_home.mkdir()
    sock = socket_path(sylphx_home.resolve())
    assert _complete_in_process()[0] == [] and not sock.exists()  # nothing there: nothing

    stale = socket.socket(socket.AF_UNIX)  # a control plane that died: its socket stays
    stale.bind(str(sock))
    stale.close()
    ids, took = _complete_in_process()
    assert ids == [] and took < TIMEOUT_SECONDS, took  # refused at once, and not restarted

    sock.unlink()
    hung = socket.socket(socket.AF_UNIX)  # one that accepts and never answers
    hung.bind(str(sock))
    hung.listen(8)
    try:
        ids, took = _complete_in_process()
    finally:
        hung.close()
    assert ids == [] and TIMEOUT_SECONDS - 0.1 < took < TIMEOUT_SECONDS + 1.0, took
    assert starts == [] and [p for p in sylphx_home.iterdir() if p != sock] == []


class _Canned(BaseHTTPRequestHandler):
    """The embedded control plane, as far as completion asks it: one run, and who asked."""

    body = b""
    asked: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:
        self.asked.append((self.path, self.headers.get("Authorization")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_completion_asks_the_running_embedded_one_on_its_socket_with_its_key(
    home: Path, tmp_path: Path, starts: list[Path | None]
) -> None:
    sylphx_home = (tmp_path / "home").resolve()
    sylphx_home.mkdir()
    (sylphx_home / "local-token").write_text("sx_local-key\n")
    _Canned.body = json.dumps(RunList(items=[_view()]).to_wire()).encode()
    _Canned.asked = []
    httpd = socketserver.ThreadingUnixStreamServer(str(socket_path(sylphx_home)), _Canned)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        ids, took = _complete_in_process()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert ids == ["wrk_0000000000000000"] and took < TIMEOUT_SECONDS
    assert [(p.split("?")[0], a) for p, a in _Canned.asked] == [
        ("/v1/runs", "Bearer sx_local-key")
    ]  # one request, with the embedded control plane's own key
    assert starts == []


# -- 5. contexts, whoami, logout --------------------------------------------------------------


def test_contexts_set_use_list_and_the_precedence(
    server: Server, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = js(sx("context", "set", "prod", "--url", server.url + "/", "--token", server.token,
                 "--json"))  # fmt: skip
    assert made == {"name": "prod", "url": server.url, "hasToken": True, "current": False}
    path = config_file()
    assert path.parent == home and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert [p.name for p in home.iterdir()] == ["config.json"]  # written atomically: no tmp left
    assert server.token not in sx("context", "list").stdout
    listed = js(sx("context", "list", "--json"))
    assert listed["current"] == LOCAL
    assert [(c["name"], c["current"]) for c in listed["contexts"]] == [
        (LOCAL, True),
        ("prod", False),
    ]
    assert resolve().url is None  # nothing current: the embedded default

    assert js(sx("context", "use", "prod", "--json"))["current"] is True
    assert "* prod" in sx("context", "list").stdout
    who = js(sx("whoami", "--json"))  # the context's URL and key: no SYLPHX_URL/TOKEN
    assert (who["url"], who["context"], who["org"]["name"]) == (server.url, "prod", "test")
    assert "org      test (org_test)" in sx("whoami").stdout
    assert "context 'prod'" in sx("whoami").stdout

    config = create_client()  # the SDK honours the current context too
    try:
        assert UsageClient.org(config).name == "test"
    finally:
        config.close()

    dead = dead_url()  # SYLPHX_URL beats the context, --url beats SYLPHX_URL
    assert resolve().origin == "context 'prod'"
    with monkeypatch.context() as env:
        env.setenv("SYLPHX_URL", dead)
        assert resolve().url == dead and resolve(server.url).url == server.url
    flagged = sx("--url", server.url, "runs", "list", "--json", url=dead, token=server.token)
    assert flagged.exit_code == 0, flagged.output

    assert sx("context", "set", LOCAL, "--url", server.url).exit_code == 2
    assert sx("context", "set", "bad", "--url", "ftp://x").exit_code == 2
    assert sx("context", "set", "new").exit_code == 2  # a new context needs its URL
    assert sx("context", "use", "nope").exit_code == 2
    moved = js(sx("context", "set", "prod", "--url", dead, "--json"))
    assert moved["hasToken"] is False  # a key never follows its context to another URL
    assert js(sx("context", "delete", "prod", "--json")) == {"deleted": "prod", "current": LOCAL}
    assert Contexts.load().items == {} and resolve().url is None


def test_login_into_a_context_then_logout(server: Server, home: Path, tmp_path: Path) -> None:
    token = server.new_org("ctx-login", plan="team")
    got = sx("login", "--context", "team", "--token", token, url=server.url)
    assert got.exit_code == 0, got.output
    assert "(context team) as org ctx-login (team)" in got.stdout
    assert Contexts.load().items["team"].token == token
    assert stat.S_IMODE(config_file().stat().st_mode) == 0o600
    assert not (tmp_path / "home" / "credentials.json").exists()
    assert sx("context", "use", "team").exit_code == 0
    assert js(sx("whoami", "--json"))["org"]["name"] == "ctx-login"
    again = sx("login", "--token", token)  # the current context's URL; the key goes back there
    assert again.exit_code == 0 and "(context team)" in again.stdout, again.output

    out = js(sx("logout", "--json"))
    assert out == {"url": server.url, "context": "team", "forgotten": ["context team"]}
    assert Contexts.load().items["team"].token is None
    denied = sx("runs", "list")
    assert denied.exit_code == 4 and "missing API key" in denied.stderr
    assert "no key was stored" in sx("logout").stdout
    assert sx("login", "--context", "team", "--token", "sx_bad").exit_code == 4
    assert sx("login", "--context", "other", "--token", token).exit_code == 2  # no URL for it
    assert sx("context", "use", LOCAL).exit_code == 0
    assert sx("login", "--token", token).exit_code == 2  # the embedded one needs no login
    empty = sx("login", "--token", "  ", token=token, url=server.url)  # no fallback to either
    assert empty.exit_code == 2 and "--token is empty" in empty.stderr, empty.output


def test_whoami_on_the_embedded_default(clean_env: Path) -> None:
    """Nothing configured: the embedded control plane, its org and key, as before."""
    env = dict(os.environ)
    who = subprocess.run(
        [sys.executable, "-m", "sylphx", "whoami", "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert who.returncode == 0, who.stderr
    shown = json.loads(who.stdout)
    assert (shown["context"], shown["origin"]) == (LOCAL, "the embedded default")
    assert shown["url"].startswith("unix://") and shown["org"]["name"] == "local"


def plant(directory: Path, data: Any, *, dir_mode: int = 0o700, file_mode: int = 0o600) -> Path:
    """``directory/config.json`` holding ``data`` (JSON), with these modes."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    path.chmod(file_mode)
    directory.chmod(dir_mode)
    return path


def test_a_broken_config_file_is_named(home: Path) -> None:
    plant(home, "{not json")
    got = sx("context", "list")
    assert got.exit_code == 2 and str(home / "config.json") in got.stderr, got.output


def test_a_broken_context_is_named_and_only_skipped_when_a_key_is_looked_up(
    home: Path, no_retries: None
) -> None:
    contexts = {"bad": {"url": "ftp://x"}, "good": {"url": "http://good", "token": "sx_good"}}
    path = plant(home, {"current": None, "contexts": contexts})
    assert stored_token("http://good") == "sx_good"  # the other contexts still count
    assert Contexts.load(strict=False).items.keys() == {"good"}
    listed = sx("context", "list")
    assert listed.exit_code == 2, listed.output
    assert f"{path}: context 'bad': its url 'ftp://x' is not an http(s)" in listed.stderr
    assert f"Fix: correct or delete context 'bad' in {path}" in listed.stderr
    flagged = sx("--url", dead_url(), "runs", "list")  # --url commands are not broken by it
    assert flagged.exit_code == 5 and "cannot reach" in flagged.stderr, flagged.output


class _Recorder(BaseHTTPRequestHandler):
    """A URL another user planted: it records every Authorization header it gets."""

    seen: list[str | None] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.skipif(os.geteuid() != 0, reason="chowning to another uid needs root")
def test_a_config_another_user_could_plant_is_refused(home: Path, tmp_path: Path) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Recorder.seen = []
    trap = f"http://127.0.0.1:{httpd.server_address[1]}"
    path = plant(home, {"current": "x", "contexts": {"x": {"url": trap}}})
    os.chown(home, 65534, -1)  # the attacker's directory, as on a shared SYLPHX_CONFIG_DIR
    try:
        for args in (["runs", "list"], ["whoami"], ["login", "--token", "sx_typed"]):
            got = sx(*args, token="sx_secret")
            assert got.exit_code == 2, got.output
            assert f"refusing to use {home}: it is owned by uid 65534, not by you (uid 0)" in (
                got.stderr
            )
            assert f"Fix: `chown 0 {home}` (as root) if it is yours" in got.stderr
            assert "SYLPHX_CONFIG_DIR" in got.stderr
        with pytest.raises(errors.ValidationError, match="owned by uid 65534"):
            create_client()
        with pytest.raises(errors.ValidationError, match="owned by uid 65534"):
            stored_token("http://elsewhere")
        path.unlink()  # no file yet: nothing is written into it either
        made = sx("context", "set", "prod", "--url", "http://127.0.0.1:1")
        assert made.exit_code == 2 and "owned by uid 65534" in made.stderr, made.output
        assert not path.exists()

        os.chown(home, 0, -1)
        plant(home, {"current": "x", "contexts": {"x": {"url": trap}}})
        os.chown(path, 65534, -1)  # the file planted in a directory of ours
        got = sx("runs", "list", token="sx_secret")
        assert got.exit_code == 2 and f"refusing to use {path}: it is owned by uid 65534" in (
            got.stderr
        ), got.output
        assert f"delete it (`rm {path}`)" in got.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert _Recorder.seen == []  # no key went there


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o1777])
def test_a_config_dir_others_can_write_is_refused(home: Path, mode: int) -> None:
    plant(home, {"current": None, "contexts": {}}, dir_mode=mode)
    got = sx("context", "list")
    assert got.exit_code == 2, got.output
    assert f"refusing to use {home}: it is writable by group or others (mode {mode:04o})" in (
        got.stderr
    )
    assert f"Fix: `chmod 700 {home}`" in got.stderr
    home.chmod(0o700)
    assert sx("context", "list").exit_code == 0


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_a_config_file_others_can_read_or_write_is_refused(home: Path, mode: int) -> None:
    path = plant(home, {"current": None, "contexts": {"p": {"url": "http://p", "token": "k"}}},
                 file_mode=mode)  # fmt: skip
    got = sx("context", "list")
    assert got.exit_code == 2, got.output
    assert f"refusing to use {path}: group or others can read or change it (mode {mode:04o})" in (
        got.stderr
    )
    assert f"Fix: `chmod 600 {path}`" in got.stderr
    with pytest.raises(errors.ValidationError, match="chmod 600"):
        stored_token("http://p")  # a key lookup does not read it silently either
    path.chmod(0o600)
    assert js(sx("context", "list", "--json"))["contexts"][1]["hasToken"] is True


def test_symlinked_config_files_and_dirs_are_refused(home: Path, tmp_path: Path) -> None:
    real = plant(tmp_path / "real", {"current": None, "contexts": {}})
    home.mkdir()
    (home / "config.json").symlink_to(real)
    got = sx("context", "list")
    assert got.exit_code == 2, got.output
    assert f"refusing to use {home / 'config.json'}: it is a symbolic link" in got.stderr
    assert "Fix: replace it with the file itself" in got.stderr

    (home / "config.json").unlink()
    home.rmdir()
    home.symlink_to(real.parent)
    for args in (["context", "list"], ["context", "set", "p", "--url", "http://p"]):
        got = sx(*args)
        assert got.exit_code == 2, got.output
        assert f"refusing to use {home}: it is a symbolic link" in got.stderr


def test_a_relative_config_dir_is_refused(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYLPHX_CONFIG_DIR", "rel/config")
    for args in (["context", "set", "p", "--url", "http://p"], ["runs", "list"]):
        got = sx(*args)
        assert got.exit_code == 2, got.output
        assert "SYLPHX_CONFIG_DIR='rel/config' is not an absolute path" in got.stderr
        assert "Fix: give an absolute path" in got.stderr
    with pytest.raises(errors.ValidationError, match="SYLPHX_CONFIG_DIR"):
        create_client()
    assert not (tmp_path / "rel").exists()


def test_credentials_others_could_touch_are_refused(home: Path, tmp_path: Path) -> None:
    url = dead_url()
    creds = credentials_file()
    creds.parent.mkdir(mode=0o700)
    creds.write_text(json.dumps({url: "sx_stored"}))
    creds.chmod(0o600)
    assert stored_token(url) == "sx_stored"  # the normal case
    creds.chmod(0o644)
    got = sx("--url", url, "runs", "list")
    assert got.exit_code == 2, got.output
    assert f"refusing to use {creds}: group or others can read or change it" in got.stderr
    assert f"`chmod 600 {creds}`" in got.stderr
    creds.chmod(0o600)
    creds.parent.chmod(0o777)
    got = sx("--url", url, "logout")
    assert got.exit_code == 2, got.output
    assert f"refusing to use {creds.parent}: it is writable" in got.stderr
    assert "point SYLPHX_HOME at a directory of your own" not in got.stderr  # chmod fixes it
    creds.parent.chmod(0o700)
    if os.geteuid() == 0:
        os.chown(creds, 65534, -1)
        got = sx("--url", url, "logout")
        assert got.exit_code == 2 and "it is owned by uid 65534" in got.stderr, got.output
        os.chown(creds, 0, -1)
    real = tmp_path / "elsewhere.json"
    creds.rename(real)
    creds.symlink_to(real)
    with pytest.raises(errors.ValidationError, match="symbolic link"):
        stored_token(url)


# -- 6. wording -------------------------------------------------------------------------------


def _view(**spec: Any) -> RunView:
    return RunView(
        id="wrk_0000000000000000",
        status=RunState.RUNNING,
        spec=RunSpec.parse({"command": ["true"], "working_dir": "/w"} | spec),
        aggregate=Aggregate(status=RunState.RUNNING, total=2),
        created_at=datetime.now(UTC),
    )


def test_retries_per_index_are_counted_in_words() -> None:
    one = spec_line(_view(parallelism=2, gangScheduling=False, backoffLimitPerIndex=1))
    assert "opportunistic, 1 retry/index" in one
    three = spec_line(_view(parallelism=2, gangScheduling=False, backoffLimitPerIndex=3))
    assert "opportunistic, 3 retries/index" in three


def test_a_retried_shard_shows_no_exit_code_until_its_attempt_ends() -> None:
    shards = [
        ShardView(index=0, status=ShardState.RUNNING, attempts=2, exit_code=137),
        ShardView(index=1, status=ShardState.PENDING, attempts=1, exit_code=1),
        ShardView(index=2, status=ShardState.FAILED, attempts=3, exit_code=137),
    ]
    rows = [line.split() for line in shard_table(shards)[1:]]
    assert [(r[0], r[4]) for r in rows] == [("0", "-"), ("1", "-"), ("2", "137")]


# -- 7. a command is optional with --image ----------------------------------------------------


def test_no_command_needs_an_image(home: Path) -> None:
    got = sx("run", "-n", "2")
    assert got.exit_code == 2 and "no command to run" in got.stderr and "--image" in got.stderr
    spec = build_spec(spec_fields(image="oci:/images/app:latest", command=None))
    assert spec.command is None and spec.image == "oci:/images/app:latest"
    signature = inspect.signature(RunsClient.run_distributed)
    assert signature.parameters["command"].default is None


def test_an_image_runs_its_own_cmd(
    server: Server, home: Path, busybox_images: BusyboxImages
) -> None:
    image = f"oci:{busybox_images.layout}:latest"
    quote = sx("run", "--image", image, "--dry-run", "--json", url=server.url, token=server.token)
    assert quote.exit_code == 0, quote.output
    assert json.loads(quote.stdout)["spec"]["command"] is None
    done = sx("run", "--image", image, "--machine", "nano", "--follow",
              url=server.url, token=server.token)  # fmt: skip
    assert done.exit_code == 0, done.output
    run_id = done.stdout.split()[0]
    logs = server.http.get(f"/v1/runs/{run_id}/logs", params={"shard": 0}).text
    assert logs == "hello\n"  # the image's CMD: echo $GREETING
    assert "(image CMD)" in sx("runs", "get", run_id, url=server.url, token=server.token).stdout
