"""manifest:<file> sources: a CSV file (with a header row) or JSON Lines (.jsonl/.json: one
object a line) listing the images.

  uri    a local path (relative paths are relative to the manifest's folder) or any path
         tf.io.gfile reads (gs://...)
  label  the class name (any text; integers sort numerically: contract.class_order)
  split  optional: train or eval; when no row has one, the examples are split by hash
  id     optional: the item's id (unique), written as the example's `id`
Other columns are ignored. Every error names the manifest file and the line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from typing import Dict, List, NamedTuple

from triplet_tfx.components import contract
from triplet_tfx.components.data.errors import DataSourceError
from triplet_tfx.components.data.image_items import ImageItem, is_remote, stat_followed

REQUIRED = ("uri", "label")
SPLITS = ("train", "eval")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


class Manifest(NamedTuple):
    path: str
    # {"train": items, "eval": items} when the rows name their split, else {"all": items}
    splits: Dict[str, List[ImageItem]]
    class_names: List[str]  # contract.class_order of every label: the class id is the index

    @property
    def has_splits(self) -> bool:
        return "all" not in self.splits


def _read_text(path: str) -> str:
    import tensorflow as tf

    if is_remote(path):
        if not tf.io.gfile.exists(path):
            raise DataSourceError(f"{path}: manifest not found (--data manifest:<file>)")
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    else:
        if not os.path.isfile(path):
            raise DataSourceError(f"{path}: manifest not found (--data manifest:<file>)")
        with open(path, "rb") as f:
            data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataSourceError(f"{path}: not UTF-8 text ({err})") from None


def _rows(path: str, text: str):
    """(line number, {column: text}) of each row."""
    kind = SUFFIXES.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise DataSourceError(f"{path}: a manifest is a .csv (with a header row) or a .jsonl/.json (JSON Lines) file")
    if kind == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None:
            raise DataSourceError(f"{path}: empty manifest (expected a header row: uri,label[,split][,id])")
        columns = [name.strip() for name in reader.fieldnames]
        missing = [name for name in REQUIRED if name not in columns]
        if missing:
            raise DataSourceError(
                f"{path} line 1: missing column {', '.join(missing)} (the header has "
                f"{', '.join(columns)}; expected uri,label[,split][,id])"
            )
        try:
            for row in reader:
                values = {
                    (key or "").strip(): (value or "").strip() if isinstance(value, str) else ""
                    for key, value in row.items()
                }
                if any(values.values()):
                    yield reader.line_num, values
        except csv.Error as err:
            raise DataSourceError(f"{path} line {reader.line_num}: bad CSV ({err})") from None
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataSourceError(f"{path} line {number}: bad JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(row, dict):
            raise DataSourceError(
                f"{path} line {number}: expected a JSON object with uri and label, got {type(row).__name__}"
            )
        missing = [name for name in REQUIRED if name not in row]
        if missing:
            raise DataSourceError(
                f"{path} line {number}: missing {', '.join(missing)} (each line is a JSON "
                'object like {"uri": "a.jpg", "label": "cat"})'
            )
        yield number, {key: "" if value is None else str(value).strip() for key, value in row.items()}


def read(path: str, check_files: bool = False) -> Manifest:
    """The parsed manifest; DataSourceError naming the file and line of the first problem.
    check_files: every local uri must exist (pre-flight); nothing is opened or decoded."""
    text = _read_text(path)
    folder = os.path.dirname(path)
    rows = list(_rows(path, text))
    if not rows:
        raise DataSourceError(f"{path}: no rows (expected uri,label[,split][,id] of each image)")
    ids: Dict[str, int] = {}
    items: List[tuple] = []  # (split, item)
    for number, row in rows:
        where = f"{path} line {number}"
        uri, label, split, item_id = row["uri"], row["label"], row.get("split", ""), row.get("id", "")
        if not uri:
            raise DataSourceError(f"{where}: empty uri")
        if not label:
            raise DataSourceError(f"{where}: empty label ({uri})")
        if split and split not in SPLITS:
            raise DataSourceError(f"{where}: unknown split {split!r} (train or eval, or none for a hash split)")
        if item_id:
            if item_id in ids:
                raise DataSourceError(f"{where}: duplicate id {item_id!r} (also on line {ids[item_id]})")
            ids[item_id] = number
        if not is_remote(uri) and not os.path.isabs(uri):
            uri = os.path.join(folder, uri)
        if check_files and not is_remote(uri):
            if not os.path.exists(uri):  # follows links
                problem = "broken symbolic link" if os.path.islink(uri) else "file not found"
                raise DataSourceError(f"{where}: {uri}: {problem}")
        items.append((split, ImageItem(uri=uri, class_name=label, id=item_id or None, where=f"{where}: {uri}")))
    with_split = [number for (split, _), (number, _) in zip(items, rows) if split]
    if with_split and len(with_split) < len(items):
        number = next(number for (split, _), (number, _) in zip(items, rows) if not split)
        raise DataSourceError(
            f"{path} line {number}: no split, but line {with_split[0]} has one (give every "
            "row a split, or none for a hash split)"
        )
    splits: Dict[str, List[ImageItem]] = {name: [] for name in (SPLITS if with_split else ("all",))}
    for split, item in items:
        splits[split or "all"].append(item)
    for split, members in splits.items():
        if not members:
            raise DataSourceError(
                f"{path}: no rows of split {split!r} (the rows name their split: give both train and eval rows)"
            )
    names = contract.class_order(item.class_name for _, item in items)
    return Manifest(path=path, splits=splits, class_names=names)


def fingerprint(path: str) -> str:
    """The manifest's content and the sizes and times of its local files: the pipeline's cache key."""
    digest = hashlib.sha256(_read_text(path).encode())
    for items in read(path).splits.values():
        for item in items:
            if not is_remote(item.uri):
                info = stat_followed(item.uri)
                if info is not None:
                    digest.update(f"{item.uri}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
