"""The serving folder (`<serving dir>/<model name>/`), where model servers look for versions.

Every change to it happens under an exclusive lock (`.<model name>.push.lock` beside it, flock:
the kernel releases it however the holder dies), so that runs sharing one serving folder never collide:
  * a new version is the clock's second, or one more than the newest version already there;
  * it is copied to `.push-tmp-<version>-<pid>` (a name TF Serving and KServe ignore: not a
    number), then renamed to `<version>` in one step (POSIX rename within one folder): a model
    server never sees a half-written version;
  * a push that does not fit the free space is refused before it writes anything, and one that
    runs out of space midway (ENOSPC) removes what it wrote and says so, with the sizes;
  * `--keep-versions N` removes all but the newest N versions after a push (renamed out of sight
    first, then deleted);
  * leftovers of interrupted pushes are removed before a push and by the pre-flight checks:
    `.push-tmp-*` folders, and numbered folders without `saved_model.pb` (the half-written
    versions of older releases, which copied in place), which are moved aside to
    `.interrupted-<version>`; each is logged.
Standard library only: the pre-flight checks use it before TensorFlow loads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import time
from typing import Iterator, List

LOCK_SUFFIX = ".push.lock"
TEMP_PREFIX = ".push-tmp-"
INTERRUPTED_PREFIX = ".interrupted-"
SAVED_MODEL_FILE = "saved_model.pb"
logger = logging.getLogger(__name__)


@contextlib.contextmanager
def serving_folder_lock(base: str, blocking: bool = True) -> Iterator[bool]:
    """Holds the serving folder's lock exclusively; yields False (holding nothing) when `blocking`
    is False and another process holds it. The lock file lies beside the folder, not in it, where
    model servers list versions."""
    os.makedirs(base, exist_ok=True)
    parent, name = os.path.split(os.path.normpath(base))
    fd = os.open(os.path.join(parent, f".{name}{LOCK_SUFFIX}"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def versions(base: str) -> List[int]:
    """The version numbers in a serving folder (its all-digit sub-folders)."""
    if not os.path.isdir(base):
        return []
    return sorted(int(name) for name in os.listdir(base) if name.isdigit() and os.path.isdir(os.path.join(base, name)))


def next_version(base: str, now: float) -> int:
    """The clock's second, or one more than the newest version when that is not older."""
    existing = versions(base)
    return max(int(now), existing[-1] + 1 if existing else 0)


def remove_interrupted_pushes(base: str) -> List[str]:
    """Cleans up after pushes that were killed midway; call it holding the lock. Returns one
    line per folder removed or moved aside."""
    done: List[str] = []
    if not os.path.isdir(base):
        return done
    for name in sorted(os.listdir(base)):
        path = os.path.join(base, name)
        if name.startswith(TEMP_PREFIX) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path}, the leftover of an interrupted push (no model server saw it)")
        elif name.isdigit() and os.path.isdir(path) and not os.path.exists(os.path.join(path, SAVED_MODEL_FILE)):
            aside = os.path.join(base, f"{INTERRUPTED_PREFIX}{name}")
            os.rename(path, aside)
            done.append(f"moved {path} to {aside}: a half-written version (no {SAVED_MODEL_FILE})")
    for line in done:
        logger.warning("Serving folder: %s", line)
    return done


def clean_serving_folder(base: str) -> List[str]:
    """The pre-flight clean-up: `remove_interrupted_pushes` when no push is under way (else nothing)."""
    if "://" in base or not os.path.isdir(base):
        return []
    with serving_folder_lock(base, blocking=False) as held:
        return remove_interrupted_pushes(base) if held else []


class NoSpaceError(OSError):
    """The serving folder's file system has too little free space for the model."""


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def _no_space(base: str, needed: int) -> NoSpaceError:
    free = shutil.disk_usage(base).free
    return NoSpaceError(
        errno.ENOSPC,
        f"no space left on device for the model: it needs {needed / 1e6:.1f} MB, {free / 1e6:.1f} MB are free",
        base,
    )


def check_free_space(base: str, needed: int) -> None:
    """Raises NoSpaceError (naming the folder and both sizes) unless `needed` bytes fit in `base`."""
    existing = base
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if shutil.disk_usage(existing).free < needed:
        raise _no_space(existing, needed)


def expected_model_bytes(base: str) -> int:
    """The size of the newest version (the next one is about as big); 0 when there is none."""
    existing = versions(base)
    return folder_bytes(os.path.join(base, str(existing[-1]))) if existing else 0


def remove_old_versions(base: str, keep: int) -> List[str]:
    """Keeps the newest `keep` versions (0: all); call it holding the lock. Each older one is first
    renamed out of the model server's sight (a non-number name), then removed. Returns their paths."""
    removed: List[str] = []
    for version in versions(base)[:-keep] if keep else []:
        path = os.path.join(base, str(version))
        aside = os.path.join(base, f"{TEMP_PREFIX}old-{version}")
        os.rename(path, aside)
        shutil.rmtree(aside, ignore_errors=True)
        removed.append(path)
    if removed:
        logger.info("Serving folder: removed %d older version(s) (--keep-versions %d): %s", len(removed), keep, removed)
    return removed


def push_atomically(model_path: str, base: str, keep: int = 0) -> str:
    """Copies the SavedModel folder `model_path` to a new version of `base` and keeps the newest
    `keep` versions (0: all); returns the new version's path."""
    needed = folder_bytes(model_path)
    with serving_folder_lock(base):
        remove_interrupted_pushes(base)
        check_free_space(base, needed)
        version = next_version(base, time.time())
        temporary = os.path.join(base, f"{TEMP_PREFIX}{version}-{os.getpid()}")
        try:
            shutil.copytree(model_path, temporary)
        except (OSError, shutil.Error) as err:
            shutil.rmtree(temporary, ignore_errors=True)  # gives the space back, for the metadata store too
            if getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err):
                raise _no_space(base, needed) from None
            raise
        final = os.path.join(base, str(version))
        os.rename(temporary, final)
        remove_old_versions(base, keep)
    return final
