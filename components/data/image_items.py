"""Image items: one image file of a folder or manifest source, before it is read, and how items
are read and limited (--max-examples, stratified by class)."""

from __future__ import annotations

import errno
import logging
import os
import stat
from typing import Dict, List, NamedTuple, Optional, Sequence

from triplet_tfx.components.data.errors import BadImageError, DataSourceError
from triplet_tfx.components.files import file_kind

logger = logging.getLogger(__name__)


class ImageItem(NamedTuple):
    uri: str  # a local path or any path tf.io.gfile reads (gs://...)
    class_name: str
    id: Optional[str]  # written as the example's `id` when given
    where: str  # how messages name it: the path, or "<manifest> line <n>: <uri>"
    problem: str = ""  # found while listing (e.g. "not a regular file (FIFO)"): refused when read


def is_remote(path: str) -> bool:
    return "://" in path


def stat_followed(path: str) -> Optional[os.stat_result]:
    """os.stat of a local path, following symbolic links; None for a link loop (logged) or a file
    removed meanwhile. A broken link raises DataSourceError naming it and its target."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataSourceError(
                f"{path}: broken symbolic link (to {os.readlink(path)}): remove it or restore its target"
            ) from None
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            logger.warning("%s: symbolic link loop, left out", path)
            return None
        raise DataSourceError(f"{path}: cannot read ({err.strerror})") from None


def read_item(item: ImageItem) -> bytes:
    """The file's bytes as stored; BadImageError naming the item if it cannot be read. Local paths
    are opened only when they are regular files (after following symbolic links), so that a FIFO
    named x.png cannot block the reader."""
    if item.problem:
        raise BadImageError(item.where, item.problem)
    if not is_remote(item.uri):
        try:
            mode = os.stat(item.uri).st_mode
        except FileNotFoundError:
            reason = "broken symbolic link" if os.path.islink(item.uri) else "file not found"
            raise BadImageError(item.where, reason) from None
        except OSError as err:
            raise BadImageError(item.where, f"cannot read ({err.strerror})") from None
        if not stat.S_ISREG(mode):
            raise BadImageError(item.where, f"not a regular file ({file_kind(mode)})")
        try:
            with open(item.uri, "rb") as f:
                return f.read()
        except OSError as err:
            raise BadImageError(item.where, f"cannot read ({err.strerror})") from None
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(item.uri, "rb") as f:
            return f.read()
    except tf.errors.OpError as err:
        raise BadImageError(item.where, f"cannot read ({err.message})") from None


def stratified(items: Sequence[ImageItem], limit: Optional[int], class_names: Sequence[str]) -> List[ImageItem]:
    """At most `limit` items, taken from the classes in turn (round robin, classes in class-id order,
    each class's items in their given order), so that a small limit keeps every class."""
    if not limit or limit >= len(items):
        return list(items)
    by_class: Dict[str, List[ImageItem]] = {}
    for item in items:
        by_class.setdefault(item.class_name, []).append(item)
    queues = [by_class[name] for name in class_names if name in by_class]
    chosen: List[ImageItem] = []
    depth = 0
    while len(chosen) < limit:
        for queue in queues:
            if depth < len(queue) and len(chosen) < limit:
                chosen.append(queue[depth])
        depth += 1
    return chosen
