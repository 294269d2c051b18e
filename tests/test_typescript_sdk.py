"""The TypeScript SDK (sdk/typescript, ``@sylphx/sdk``, issue #24) against a real
``sylphx server`` on loopback: its own tests under node's runner (the product page's
example, a 429 as QuotaExceeded with retryAfter, a broken rule with its field and fix,
wait() through a restart of the server), built strict with tsc; and ``npm pack`` gives a
tarball that installs offline and imports, and the page's example type-checks (strict)
against it.

The package's devDependencies come from its lockfile (``make node-deps``: ``npm ci``);
SQLite pass only (the SDK talks HTTP: the store behind it is the Python tests' concern).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import TEST_STORE
from serverproc import ServerProcess

PACKAGE = Path(__file__).resolve().parents[1] / "sdk" / "typescript"
NODE, NPM, NPX = shutil.which("node"), shutil.which("npm"), shutil.which("npx")

pytestmark = [
    pytest.mark.slow,  # ~30 s: make test runs it, make check does not
    pytest.mark.skipif(
        TEST_STORE != "sqlite",
        reason="the TypeScript SDK talks HTTP; it runs once, in the SQLite pass",
    ),
    pytest.mark.skipif(
        NODE is None or NPM is None or NPX is None, reason="node and npm are not installed"
    ),
    pytest.mark.skipif(
        not (PACKAGE / "node_modules" / ".bin" / "tsc").exists(),
        reason="sdk/typescript/node_modules is missing: run `make node-deps` (npm ci)",
    ),
]


def _node_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYLPHX_")}
    env["NODE_NO_WARNINGS"] = "1"
    return env | extra


def _run(argv: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        argv, cwd=cwd, capture_output=True, text=True, env=_node_env(), **kwargs
    )


@pytest.fixture(scope="module")
def built() -> Path:
    """The package compiled (strict; src, tests and the example) into dist/."""
    assert NPX is not None
    result = _run([NPX, "--no-install", "tsc", "-p", "tsconfig.json"], PACKAGE, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return PACKAGE / "dist"


def _token_of(server: ServerProcess) -> str:
    return str(server.http.headers["authorization"]).removeprefix("Bearer ")


def _small_org(server: ServerProcess) -> str:
    """A key of an org on the free plan with one concurrent shard: its second run is a 429."""
    from sylphx._server.store import make_engine, session_factory
    from sylphx._server.tenancy import orgs

    engine = make_engine(server.env["SYLPHX_DATABASE_URL"])
    now = datetime.now(UTC)
    try:
        with session_factory(engine).begin() as s:
            orgs.create_org(s, "small", plan="free", now=now, concurrent_shards=1, org_id="org_sm")
            return orgs.create_key(s, "org_sm", name="ts", now=now)[1]
    finally:
        engine.dispose()


class Restarter(threading.Thread):
    """Restarts ``server`` once the node test writes ``waiting`` into ``folder``."""

    def __init__(self, server: ServerProcess, folder: Path, deadline: float) -> None:
        super().__init__(daemon=True)
        self.server, self.folder, self.deadline = server, folder, deadline
        self.error: BaseException | None = None
        self.down_seconds = 0.0
        self.cancelled = False  # the test is over: restart nothing

    def run(self) -> None:
        try:
            while not (self.folder / "waiting").exists():
                if time.monotonic() > self.deadline or self.cancelled:
                    return
                time.sleep(0.05)
            time.sleep(1.0)  # wait() is in its long-poll by now
            stopped = time.monotonic()
            self.server.term()
            (self.folder / "stopped").write_text("")
            time.sleep(1.0)  # nothing listens: wait()'s requests are refused, then retried
            self.server.start()
            self.down_seconds = time.monotonic() - stopped
            (self.folder / "restarted").write_text("")
        except BaseException as exc:
            self.error = exc


@pytest.mark.timeout(360)  # ~30 s; more on a machine busy with other work
def test_the_typescript_sdk_against_a_real_server(built: Path, tmp_path: Path) -> None:
    assert NODE is not None
    # capacity for the page's 9 large shards at once (besides the other tests' nano ones)
    server = ServerProcess(
        tmp_path / "home",
        SYLPHX_LOCAL_CPUS="24",
        SYLPHX_LOCAL_MEMORY="64GiB",
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', os.defpath)}",
    )
    restarts = tmp_path / "restart"
    restarts.mkdir()
    restarter = Restarter(server, restarts, time.monotonic() + 240)
    try:
        server.start()
        env = _node_env(
            SYLPHX_URL=server.url,
            SYLPHX_TOKEN=_token_of(server),
            SYLPHX_TEST_SMALL_TOKEN=_small_org(server),
            SYLPHX_TEST_RESTART_DIR=str(restarts),
        )
        restarter.start()
        tests = sorted(str(p) for p in (built / "test").glob("*.test.js"))
        started = time.monotonic()
        result = subprocess.run(
            [NODE, "--test", "--test-reporter=tap", *tests],
            cwd=PACKAGE,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        took = time.monotonic() - started
    finally:
        restarter.cancelled = True
        if restarter.is_alive():
            restarter.join(timeout=90)
        server.close()
    output = result.stdout + result.stderr
    print(output)
    print(f"node --test took {took:.1f}s; the server was down {restarter.down_seconds:.1f}s")
    assert restarter.error is None, restarter.error
    assert result.returncode == 0, output
    counts = dict(re.findall(r"^# (tests|pass|fail|skipped|cancelled) (\d+)$", output, re.M))
    assert counts["fail"] == counts["cancelled"] == counts["skipped"] == "0", counts
    assert int(counts["pass"]) == int(counts["tests"]) >= 12, counts
    for name in (
        "the page example: 9 shards, 2 fail after their retries, the partial aggregate",
        "a 429 surfaces as QuotaExceeded with retryAfter and the limit it hit",
        "a broken rule is a ValidationError naming the field, the rule and the fix",
        "wait() survives a restart of the server",
    ):
        assert re.search(rf"^ok \d+ - {re.escape(name)}$", output, re.M), name
    # what the example printed: the failure count, a failed shard's log, the aggregate
    assert "2/9 shards failed" in output
    assert "fold 2: no price history for SYM002; cannot train" in output
    assert "Aggregate status: partial — succeeded: 7" in output
    volumes = list((tmp_path / "home" / "volumes").iterdir())
    written = {p.name for v in volumes for p in v.glob("scores-*.json")}
    assert written == {f"scores-{i}.json" for i in range(9) if i not in (2, 5)}


def test_npm_pack_gives_a_tarball_that_installs_imports_and_type_checks(
    built: Path, tmp_path: Path
) -> None:
    assert NPM is not None and NODE is not None
    packed = _run(
        [NPM, "pack", "--ignore-scripts", "--json", "--pack-destination", str(tmp_path)],
        PACKAGE,
        timeout=120,
    )
    assert packed.returncode == 0, packed.stdout + packed.stderr
    info = json.loads(packed.stdout[packed.stdout.index("[") :])[0]
    tarball = tmp_path / info["filename"]
    assert info["name"] == "@sylphx/sdk" and tarball.exists()
    files = {f["path"] for f in info["files"]}
    assert {"package.json", "README.md", "dist/src/index.js", "dist/src/index.d.ts"} <= files
    assert not any(
        f.startswith(("dist/test/", "dist/examples/", "src/", "node_modules/")) for f in files
    )
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(
        json.dumps({"name": "app", "private": True, "type": "module"})
    )
    install = _run(
        [NPM, "install", "--offline", "--no-audit", "--no-fund", str(tarball)], app, timeout=120
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert not (app / "node_modules" / ".package-lock.json").read_text().count('"node_modules/') > 1
    probe = (
        "import { RunsClient, createClient, QuotaExceeded, ValidationError, VolumesClient,"
        " UsageClient, VERSION } from '@sylphx/sdk';"
        "const c = createClient('http://127.0.0.1:1', { token: 't' });"
        "console.log(typeof RunsClient.runDistributed, typeof RunsClient.run,"
        " typeof VolumesClient.create, typeof UsageClient.org,"
        " new QuotaExceeded('x', { retryAfter: 3 }).retryAfter, c.baseUrl,"
        " new ValidationError('y') instanceof Error, VERSION)"
    )
    # the page's example type-checks, strict, against the installed package's declarations
    shutil.copy(PACKAGE / "examples" / "train-distributed.ts", app)
    modules = PACKAGE / "node_modules"
    tsc = [NODE, str(modules / "typescript" / "bin" / "tsc"), "--strict", "--noEmit"]
    tsc += ["--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022"]
    tsc += ["--typeRoots", str(modules / "@types"), "--types", "node", "train-distributed.ts"]
    checked = _run(tsc, app, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    imported = _run([NODE, "--input-type=module", "-e", probe], app, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.split() == [
        "function", "function", "function", "function", "3", "http://127.0.0.1:1", "true",
        info["version"],  # the User-Agent's version is the package's
    ]  # fmt: skip
