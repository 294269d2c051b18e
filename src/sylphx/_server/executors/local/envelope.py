"""The local executor's envelopes: argv (sandbox included), environment and start folder.

On the host, argv and folder are the same for every shard of a run: worked out (and
checked) once per run, the environment per shard. A container image gets its rootfs as
``/``, its Env and WorkingDir.
"""

from __future__ import annotations

from pathlib import Path

from sylphx._core.errors import ExecutorError
from sylphx._server.executors.base import LaunchRequest
from sylphx._server.executors.envelope.sandbox import Policy
from sylphx._server.executors.envelope.shard import (
    host_envelope,
    image_envelope,
    place_manifest,
    shard_env,
)
from sylphx._server.images.store import ImageStore

Envelope = tuple[list[str], dict[str, str], Path]


class Envelopes:
    """Builds each request's envelope, caching the per-run parts (64 runs at most)."""

    def __init__(
        self,
        *,
        sandbox: bool,
        policy: Policy,
        images: ImageStore | None,
        scratch_root: Path,
        host_path: str | None,
    ) -> None:
        self._sandbox, self._policy, self._images = sandbox, policy, images
        self._scratch_root, self._host_path = scratch_root, host_path
        self._cache: dict[tuple[object, ...], tuple[list[str], Path]] = {}  # per run

    def __call__(self, request: LaunchRequest) -> Envelope:
        if request.manifest is not None:  # a merge step: once per run, never cached
            directory = self._scratch(request.run_id)
            request = place_manifest(request, directory, sandbox=self._sandbox)
            if request.image is None:
                return host_envelope(
                    request,
                    sandbox=self._sandbox,
                    policy=self._policy,
                    host_path=self._host_path,
                    scratch=lambda: directory,
                )
        if request.image is not None:
            return self._image(request)
        key = (
            request.run_id,
            tuple(request.command),
            request.working_dir,
            tuple(request.mounts),
            request.network,
        )
        hit = self._cache.get(key)
        if hit is None:
            argv, env, cwd = host_envelope(
                request,
                sandbox=self._sandbox,
                policy=self._policy,
                host_path=self._host_path,
                scratch=lambda: self._scratch(request.run_id),
            )
            if len(self._cache) >= 64:
                self._cache.clear()
            self._cache[key] = (argv, cwd)
            return argv, env, cwd
        env = shard_env(request, image_env=None, host_path=self._host_path)
        return list(hit[0]), env, hit[1]

    def _image(self, request: LaunchRequest) -> Envelope:
        if self._images is None or not self._sandbox:
            raise ExecutorError(
                "container images need the sandbox (SYLPHX_SANDBOX=on) and an image store"
            )
        # inside the reconciler's pass: an admitted image is never unpacked here
        image = self._images.resolve(request.image or "", request.image_digest, cached_only=True)
        return image_envelope(request, image, sandbox=self._sandbox, policy=self._policy)

    def _scratch(self, run_id: str) -> Path:
        path = self._scratch_root / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path
