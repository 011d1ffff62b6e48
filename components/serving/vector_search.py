"""Catalog embeddings in the format Vertex AI Vector Search ingests as is: JSON Lines, one object
per item, `{"id": "...", "embedding": [...], "restricts": [{"namespace": "class", "allow": [name]}]}`,
uncompressed, ids unique, at most MAX_FILES files directly under one folder.
(cloud.google.com/vertex-ai/docs/vector-search/setup/format-structure: the `restricts` let a query
filter by class.)
"""

from __future__ import annotations

import json
import math
from typing import Iterable, List

MAX_FILES = 5000  # files directly under one import folder
FILE_BYTES = 64 << 20  # about this much JSON per file
RESTRICT_NAMESPACE = "class"


def record(item_id: str, embedding: Iterable[float], class_name: str) -> str:
    """One line: the id, the embedding (float32 printed to 9 significant digits: read back exactly)
    and the class as a restrict."""
    values = ",".join(f"{float(v):.9g}" for v in embedding)
    restricts = json.dumps([{"namespace": RESTRICT_NAMESPACE, "allow": [class_name]}])
    return f'{{"id": {json.dumps(item_id)}, "embedding": [{values}], "restricts": {restricts}}}'


def file_count(items: int, dimension: int) -> int:
    """Files for `items` embeddings of `dimension` floats: about FILE_BYTES each, at most MAX_FILES."""
    line_bytes = 16 * dimension + 100  # digits, sign, comma per value; the id and the restricts
    return max(1, min(MAX_FILES, math.ceil(items * line_bytes / FILE_BYTES)))


def duplicates_message(counted: List[tuple], most: int = 5) -> str:
    """The error for ids seen more than once: [(id, count)] (empty: no error)."""
    if not counted:
        return ""
    shown = ", ".join(f"{item_id!r} ({count} times)" for item_id, count in sorted(counted)[:most])
    more = f" and {len(counted) - most} more" if len(counted) > most else ""
    return f"catalog: {len(counted)} id(s) appear more than once: {shown}{more}; every item needs its own id"
