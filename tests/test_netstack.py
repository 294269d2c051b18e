"""The sandbox's network hand-shake (``netstack.Net``) against a stand-in for bubblewrap: a
real process holding the info and block pipes at bubblewrap's fds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sylphx._server.executors.local import netstack

# bubblewrap's part: after DELAY s write the info JSON (a pid with no children: the
# set-up never completes, so no slirp4netns is started), wait for the block pipe to
# close, exit 0. A write into a pipe nobody reads would kill it with SIGPIPE.
BWRAP = (
    "import os, sys, time; time.sleep(float(sys.argv[1]));"
    " os.write(4, b'{\"child-pid\": 1}\\n') if sys.argv[2] == 'write' else None;"
    " os.read(5, 1); sys.exit(0)"
)


def _spawn(net: netstack.Net, delay: float, write: bool) -> subprocess.Popen[bytes]:
    pairs = net.child_fds()

    def dup() -> None:
        for source, target in pairs:
            os.dup2(source, target)

    proc = subprocess.Popen(
        [sys.executable, "-c", BWRAP, str(delay), "write" if write else "quiet"],
        preexec_fn=dup,  # the test's own child; no threads
        pass_fds=[target for _, target in pairs],
    )
    net.spawned()
    return proc


def test_a_sandbox_reporting_after_the_deadline_runs_on_unrouted_and_is_not_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netstack, "READY_SECONDS", 0.3)
    net = netstack.Net()
    proc = _spawn(net, delay=1.0, write=True)
    why = net.attach("/nonexistent/slirp4netns")
    assert why is not None and "did not report its sandbox within 0.3 s" in why
    assert proc.wait(timeout=30) == 0  # its late info found a reader: no SIGPIPE
    net.close()


def test_a_sandbox_that_ends_before_reporting_needs_no_network() -> None:
    net = netstack.Net()
    proc = _spawn(net, delay=0.0, write=False)
    os.close(net.block_w)  # let the stand-in end without writing: EOF on the info pipe
    net.block_w = -1
    assert proc.wait(timeout=30) == 0
    assert net.attach("/nonexistent/slirp4netns") is None
    net.close()
