"""One pipeline run per output root at a time: a lock file in the output root.

The file holds the holder's PID, host and start time (JSON), and is locked with flock while the
run lasts, so the kernel releases it when the holder dies, however it dies. A file left behind
by a dead holder (its lock released) is a stale lock: the next run takes it over with a warning.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
from typing import Optional

LOCK_FILE = "triplet-tfx-run.lock"
logger = logging.getLogger(__name__)


class RunLockError(RuntimeError):
    """Another run holds the output root."""


def _describe(holder: dict) -> str:
    if not holder:
        return "a run that is just starting"
    return f"PID {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _read_holder(fd: int) -> dict:
    text = os.pread(fd, 1 << 16, 0).decode(errors="replace")
    try:
        return json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:  # a holder killed while writing it
        return {"pid": "?", "host": socket.gethostname(), "started": "?"}


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunLock:
    """`with RunLock(output_root):` holds the output root for one run, or raises RunLockError."""

    def __init__(self, output_root: str):
        self.path = os.path.join(output_root, LOCK_FILE)
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            holder = _read_holder(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLockError(
                    f"--output-root {os.path.dirname(self.path)} is in use by another run "
                    f"({_describe(holder)}; lock file {self.path})"
                ) from None
            # The holder may have released and removed the file between our open and flock:
            # then we locked a deleted file; start again on the path's current file.
            if not os.path.exists(self.path) or os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                os.close(fd)
                continue
            break
        holder = _read_holder(fd)  # again: what we read before flock may be outdated
        if holder:
            if holder.get("host") != socket.gethostname():
                # On a shared file system flock may not reach the other host, and its PID cannot
                # be checked from here: never treat such a lock as stale.
                os.close(fd)
                raise RunLockError(
                    f"--output-root {os.path.dirname(self.path)} is locked by a run on another "
                    f"host ({_describe(holder)}); delete {self.path} if that run is gone"
                )
            logger.warning(
                "Took over the stale lock of a run that is no longer running (%s)%s",
                _describe(holder),
                " (its PID now belongs to another process)" if _pid_alive(holder.get("pid")) else "",
            )
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": datetime.datetime.now().isoformat(timespec="seconds"),
                }
            ).encode(),
            0,
        )
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.unlink(self.path)  # while still locked, so that nobody locks the file we remove
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
