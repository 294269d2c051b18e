"""The batches a supervisor is given on its stdin (see :mod:`.supervise`).

One line of JSON a batch. The first is waited for; once the supervisor runs shards, its
loop watches stdin beside them and reads later batches as they come, without waiting on
a line cut short. Stdin at its end (the control plane closed it, or went away) means no
more batches. Standard library only: the supervisor imports it at every start.
"""

from __future__ import annotations

import json
import os

__all__ = ["Inbox"]


def _dropped(what: str) -> None:
    """Say on stderr (the control plane's ``state/supervisors.log``) that a batch was lost
    here: its attempts are then recorded lost (LOST_AFTER_SECONDS later) and retried."""
    os.write(2, f"sylphx supervisor {os.getpid()}: {what}; its shards were not started\n".encode())


class Inbox:
    """The batches on stdin, one line of JSON each: the first waited for, the later ones
    read as the loop sees them come. Stdin at its end means no more batches."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.open = True
        self._buf = bytearray()
        self._ready: list[list[dict[str, object]]] = []  # read with the first, not yet taken

    def first(self) -> list[dict[str, object]]:
        """The first batch; [] when stdin ends before a whole line (no batch)."""
        while self.open and b"\n" not in self._buf:
            data = os.read(self.fd, 1 << 16)
            self._buf += data
            self.open = bool(data)
        os.set_blocking(self.fd, False)
        batches = self.take()
        if not batches and not self.open and self._buf:
            _dropped(f"stdin ended inside a batch ({len(self._buf)} bytes)")
        self._ready = batches[1:]
        return batches[0] if batches else []

    def pump(self) -> bool:
        """Read what stdin holds; False once it is at its end."""
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return True
            if not data:
                self.open = False
                return False
            self._buf += data

    def take(self) -> list[list[dict[str, object]]]:
        """The whole batches read so far (one cut short or malformed is none)."""
        *lines, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest)
        batches, self._ready = self._ready, []
        for line in lines:
            try:
                batch = json.loads(line)
            except ValueError:
                _dropped(f"a batch that is not JSON ({len(line)} bytes)")
                continue
            if isinstance(batch, list) and batch:
                batches.append(batch)
            elif batch != []:
                _dropped(f"a batch that is not a list of shards ({len(line)} bytes)")
        return batches
