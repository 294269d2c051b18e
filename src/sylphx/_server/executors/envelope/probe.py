"""The envelope's start-up check: a host that cannot give shards the whole envelope
refuses to start, naming the missing piece and its fix (never a silently weaker one)."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from sylphx._core.errors import ExecutorError
from sylphx._server.executors.local.netstack import ENV_FD, SECCOMP_FD, slirp4netns_path

from .sandbox import Policy, Sandbox
from .seccomp import write_filter

log = logging.getLogger("sylphx")


def check_envelope(policy: Policy, filter_path: Path) -> str:
    """Compile the seccomp filter into ``filter_path`` and start one sandbox (``true``)
    with the whole envelope; returns the filter's path. Raises ExecutorError naming
    what is missing: bubblewrap, libseccomp, slirp4netns, user namespaces."""
    if policy.network == "slirp4netns" and slirp4netns_path() is None:
        raise ExecutorError(
            "shards with network: true get their own network through slirp4netns, which is"
            " not installed. Fix: install the Debian package 'slirp4netns' (make"
            " system-deps), or set SYLPHX_SHARD_NETWORK=host to let shards use the host's"
            " network, loopback included (unsafe on shared machines)."
        )
    if policy.network == "host":
        log.warning(
            "SYLPHX_SHARD_NETWORK=host: shards with network: true share the host's network"
            " and reach every service on its loopback (the control plane's port included);"
            " not for shared machines"
        )
    path = str(write_filter(filter_path))
    box = [*Sandbox(network=False, working_dir="/", policy=policy).argv(), "/bin/true"]
    # the shell opens the filter at SECCOMP_FD in the child only (as the supervisor does)
    opener = f'f=$1; shift; exec "$@" {SECCOMP_FD}<"$f" {ENV_FD}</dev/null'
    probe = subprocess.run(
        ["/bin/sh", "-c", opener, "sylphx-probe", path, *box],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.defpath},
    )
    if probe.returncode != 0:
        raise ExecutorError(
            f"the shard sandbox does not start on this host ({probe.stderr.strip()[:300]})."
            " Fix: allow unprivileged user namespaces (sysctl user.max_user_namespaces=15000,"
            " and kernel.unprivileged_userns_clone=1 where that exists), install bubblewrap"
            " >= 0.8 (make system-deps), or set SYLPHX_SANDBOX=off to run shards unsandboxed"
            " (not for shared machines)."
        )
    return path
