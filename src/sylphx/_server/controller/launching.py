"""What a shard attempt is started with: its log files and the executor's request.

The parts every shard of a run shares (volumes resolved to host paths, granted secrets
decrypted) are worked out once per run and pass, not once per shard.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy.orm import Session

from ..._errors import ExecutorError
from ..._spec import RunSpec
from .. import secrets
from ..executors.base import LaunchRequest, Mount
from ..store import RunRow, VolumeRow


def attempt_log_paths(logs_dir: Path, run_id: str, index: int, attempt: int) -> tuple[Path, Path]:
    """Where an attempt's stdout and stderr go: ``logs/RUN/shard-I.attempt-N.stdout``, one
    folder per run (a folder per shard would be one more mkdir per launch). Readers use
    the paths stored on the attempt, so older layouts stay readable."""
    base = logs_dir / run_id
    name = f"shard-{index}.attempt-{attempt}"
    return base / f"{name}.stdout", base / f"{name}.stderr"


class RunLaunch:
    """Builds the :class:`LaunchRequest` of each shard of one run."""

    def __init__(self, s: Session, run: RunRow, spec: RunSpec, cipher: Fernet | None) -> None:
        self._s, self._run, self._spec, self._cipher = s, run, spec, cipher
        self._shared: tuple[list[Mount], dict[str, str]] | ExecutorError | None = None

    def _parts(self) -> tuple[list[Mount], dict[str, str]]:
        if self._shared is None:
            try:
                self._shared = (self._mounts(), self._secrets())
            except ExecutorError as exc:
                self._shared = exc
        if isinstance(self._shared, ExecutorError):
            raise self._shared  # every shard of the run fails to start with the same reason
        return self._shared

    def _mounts(self) -> list[Mount]:
        mounts = []
        for vm in self._spec.volume_mounts:
            volume = self._s.get(VolumeRow, vm.volume_id)
            if volume is None:
                raise ExecutorError(f"volume {vm.volume_id} no longer exists")
            mounts.append(Mount(Path(volume.path), vm.mount_path))
        return mounts

    def _secrets(self) -> dict[str, str]:
        if self._cipher is None:
            return {}
        return secrets.reveal(self._s, self._run.org_id, self._spec.secrets, self._cipher)

    def request(self, index: int, attempt: int, stdout: Path, stderr: Path) -> LaunchRequest:
        """Shard ``index``'s attempt number ``attempt``; raises ExecutorError."""
        mounts, granted = self._parts()
        spec = self._spec
        return LaunchRequest(
            run_id=self._run.id,
            index=index,
            attempt=attempt,
            count=spec.parallelism,
            indexed=spec.indexed,
            command=spec.command or [],
            env=spec.env,
            machine=spec.machine,
            stdout_path=stdout,
            stderr_path=stderr,
            working_dir=Path(spec.working_dir) if spec.working_dir else None,
            image=spec.image,
            mounts=mounts,
            network=spec.network,
            secrets=granted,
        )
