"""The client's results as text: JSON lines or TSV, and files for TensorBoard's Embedding Projector.

  embed  jsonl: {"input": "a.png", "embedding": [0.01, ...]}           one line per image
         tsv:   input, e0 ... e<D-1>                                  header, then one row per image
  search jsonl: {"input": "a.png", "neighbours": [{"id": "train/7", "label": 3, "class_name": "cat",
                                                  "distance": 0.12}, ...]}
         tsv:   input, rank, id, label, distance, class_name          header, then one row per neighbour
(class_name: the label's class name; the id as text for integer-labelled sources.)
Floats are written in the shortest form that reads back as the same float32.
"""

from __future__ import annotations

import json
from typing import Sequence, TextIO

import numpy as np

from triplet_tfx.components.projector import write_projector_bundle

FORMATS = ("jsonl", "tsv")


def _float(value) -> float:
    return float(str(np.float32(value)))  # numpy prints a float32 in its shortest round-trip form


def _cell(text: str) -> str:
    return str(text).replace("\t", " ").replace("\n", " ")


def write_embeddings(stream: TextIO, names: Sequence[str], embeddings: np.ndarray, fmt: str) -> None:
    if fmt == "jsonl":
        for name, vector in zip(names, embeddings):
            stream.write(json.dumps({"input": name, "embedding": [_float(v) for v in vector]}) + "\n")
        return
    stream.write("\t".join(["input"] + [f"e{i}" for i in range(embeddings.shape[1])]) + "\n")
    for name, vector in zip(names, embeddings):
        stream.write("\t".join([_cell(name)] + [str(_float(v)) for v in vector]) + "\n")


def write_neighbours(stream: TextIO, names: Sequence[str], result, fmt: str) -> None:
    """`result`: a client SearchResult (ids, labels, class_names, distances of shape [N, k])."""
    if fmt == "tsv":
        stream.write("input\trank\tid\tlabel\tdistance\tclass_name\n")
    class_names = (
        result.class_names
        if getattr(result, "class_names", None) is not None
        else np.asarray(result.labels).astype(str)
    )
    for name, ids, labels, classes, distances in zip(names, result.ids, result.labels, class_names, result.distances):
        neighbours = [
            {"id": str(i), "label": int(label), "class_name": str(c), "distance": _float(d)}
            for i, label, c, d in zip(ids, labels, classes, distances)
        ]
        if fmt == "jsonl":
            stream.write(json.dumps({"input": name, "neighbours": neighbours}) + "\n")
            continue
        for rank, n in enumerate(neighbours, 1):
            stream.write(
                f"{_cell(name)}\t{rank}\t{_cell(n['id'])}\t{n['label']}\t{n['distance']}\t{_cell(n['class_name'])}\n"
            )


def write_projector(out_dir: str, names: Sequence[str], embeddings: np.ndarray) -> dict:
    """vecs.tsv, meta.tsv (the input names) and projector_config.pbtxt in out_dir."""
    return write_projector_bundle(out_dir, embeddings, labels=np.asarray(names, dtype=object))
