"""images:<dir> sources: the folder layout, listed without decoding anything.

  <dir>/<class>/<image files>                       split by hash into train and eval
  <dir>/train/<class>/... and <dir>/eval/<class>/...  the splits as given
The class of an image is its folder's name. Image files are PNG, JPEG, GIF or BMP of any size
(by suffix, any case); files with the suffix of a format TensorFlow cannot decode (WebP, TIFF,
HEIF, AVIF) are listed too, so that they are refused by name rather than left out unnoticed.
Hidden files and folders (.*, among them macOS's AppleDouble ._* files) and __MACOSX folders are
left out. Symbolic links are followed; a link loop is left out (logged), a broken link is an
error naming it. Only regular files are read: anything else (a FIFO named x.png) is refused by
name when the examples are written.
"""

from __future__ import annotations

import os
import stat
from typing import Dict, List, NamedTuple, Tuple

from triplet_tfx.components import contract
from triplet_tfx.components.contract import IMAGE_SUFFIXES, is_image_name
from triplet_tfx.components.data.errors import DataSourceError
from triplet_tfx.components.data.image_items import ImageItem, is_remote, stat_followed
from triplet_tfx.components.files import file_kind

SPLIT_FOLDERS = ("train", "eval")


class FolderLayout(NamedTuple):
    # {"train": items, "eval": items} when the folder has train/ and eval/, else {"all": items}
    splits: Dict[str, List[ImageItem]]
    class_names: List[str]  # contract.class_order of every class folder: the class id is the index

    @property
    def has_splits(self) -> bool:
        return "all" not in self.splits


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _entries(folder: str) -> List[Tuple[str, str, str]]:
    """(name, path, kind) of the visible entries of a folder, sorted; kind: dir, file or another
    file type's name. Broken links raise; link loops are logged and left out."""
    import tensorflow as tf

    if is_remote(folder):
        names = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(folder))
        return [
            (name, os.path.join(folder, name), "dir" if tf.io.gfile.isdir(os.path.join(folder, name)) else "file")
            for name in names
            if not _hidden(name)
        ]
    found = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if _hidden(name):
            continue
        info = stat_followed(path)
        if info is None:
            continue
        mode = info.st_mode
        found.append((name, path, "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else file_kind(mode)))
    return found


def _class_items(folder: str, class_name: str, root: str) -> List[ImageItem]:
    items = []
    for name, path, kind in _entries(folder):
        if kind == "dir" or not is_image_name(name):
            continue
        problem = "" if kind == "file" else f"not a regular file ({kind})"
        items.append(
            ImageItem(uri=path, class_name=class_name, id=os.path.relpath(path, root), where=path, problem=problem)
        )
    if not items:
        raise DataSourceError(f"{folder}: class folder without image files ({', '.join(IMAGE_SUFFIXES)})")
    return items


def _class_folders(folder: str) -> List[Tuple[str, str]]:
    return [(name, path) for name, path, kind in _entries(folder) if kind == "dir"]


def scan(root: str) -> FolderLayout:
    """The layout of an images:<dir> folder (no file is opened)."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(root):
        raise DataSourceError(f"{root}: image folder not found (--data images:<dir>)")
    top = dict(_class_folders(root))
    if all(name in top for name in SPLIT_FOLDERS):
        others = sorted(set(top) - set(SPLIT_FOLDERS))
        if others:
            raise DataSourceError(
                f"{root}: has train/ and eval/ and other folders ({', '.join(others)}): put "
                "every class below train/ and eval/, or use one folder per class"
            )
        splits = {}
        for split in SPLIT_FOLDERS:
            classes = _class_folders(top[split])
            if not classes:
                raise DataSourceError(
                    f"{top[split]}: no class sub-folders (expected <dir>/{split}/<class>/<image files>)"
                )
            splits[split] = [item for name, path in classes for item in _class_items(path, name, root)]
    else:
        if not top:
            raise DataSourceError(
                f"{root}: no class sub-folders (expected <dir>/<class>/<image files>, or "
                "<dir>/train/<class>/ and <dir>/eval/<class>/)"
            )
        splits = {"all": [item for name, path in top.items() for item in _class_items(path, name, root)]}
    names = contract.class_order(item.class_name for items in splits.values() for item in items)
    order = {name: i for i, name in enumerate(names)}
    splits = {
        split: sorted(items, key=lambda item: (order[item.class_name], item.uri)) for split, items in splits.items()
    }
    return FolderLayout(splits=splits, class_names=names)
