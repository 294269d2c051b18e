"""P1: 256 shards of ``true`` on the nano tier, submit -> terminal, against ``xargs -P``.

(Also 256 x ``sleep 1``, plain: the same fan-out with shards that take a second, where
the fixed overhead shows at its real scale.)

The control plane is a real ``sylphx server`` subprocess (SQLite, local executor) whose
capacity is raised so all 256 shards fit at once. The client submits over HTTP and polls
``GET /v1/runs/{id}`` every 5 ms until the run is terminal. The baseline, measured in the
same run, is ``xargs -P 256`` running the same 256 ``true`` processes.

Two sylphx envelopes are measured: ``plain`` (SYLPHX_SANDBOX=off, no cgroups: the same
processes xargs starts) and ``sandboxed`` (the production default: a bubblewrap sandbox
and a cgroup per shard), which is compared with xargs running the same bubblewrap argv.

    python bench/p1_fanout.py [--shards 256] [--rounds 20]
"""

from __future__ import annotations

import argparse
import subprocess
import time

from harness import ENVELOPES, Server, machine, sandbox_argv, summary, table


def xargs(n: int, argv: list[str]) -> float:
    """``seq n | xargs -P n -I{} <argv>``: n processes of ``argv``, n at once."""
    cmd = ["xargs", "-P", str(n), "-I{}", *argv]
    start = time.perf_counter()
    subprocess.run(cmd, input="\n".join("x" * n), text=True, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    n = args.shards
    print(f"P1 on {machine()}")
    rows = []
    cases = [(name, env, ["true"], {}) for name, env in ENVELOPES.items()]
    # the baseline cannot start a slirp4netns per process: compare like with like too
    cases.append(
        ("sandboxed, network: false", ENVELOPES["sandboxed"], ["true"], {"network": False})
    )
    cases.append(("plain", ENVELOPES["plain"], ["sleep", "1"], {}))  # a shard that does something
    for name, env, command, extra in cases:
        cap = {"SYLPHX_LOCAL_CPUS": str(n), "SYLPHX_LOCAL_MEMORY": f"{n}GiB"}
        with Server(**cap, **env) as server:
            server.fan_out(n)  # warm-up: imports, first cgroup, page cache
            ours, base = [], []
            baseline_argv = command if name == "plain" else sandbox_argv(command)
            for _ in range(args.rounds):  # interleaved, so both see the same machine load
                server.quiesce()
                base.append(xargs(n, baseline_argv))
                server.quiesce()
                ours.append(server.fan_out(n, command, **extra))
        o, b = summary(ours), summary(base)
        rows.append(
            [
                name,
                f"`{' '.join(command)}`",
                f"{b['median']:.3f} ({b['min']:.3f}-{b['max']:.3f})",
                f"{o['median']:.3f} ({o['min']:.3f}-{o['max']:.3f})",
                f"{o['median'] / b['median']:.2f}x",
                f"{(o['median'] - b['median']) / n * 1e3:.2f}",
            ]
        )
    table(
        f"P1: {n} x `true`, nano, submit -> terminal; seconds, median (min-max) of"
        f" {args.rounds} rounds; goal <= 1.5x",
        ["envelope", "shard", f"xargs -P {n}", "sylphx", "ratio", "overhead ms/shard"],
        rows,
    )


if __name__ == "__main__":
    main()
