"""What the report shows before the numbers: the worst retrievals and the 1-NN confusion matrix.

Pure NumPy on labels and neighbour lists (from `metrics.nearest_neighbors`); `report` draws them.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np


def worst_queries(query_labels, neighbour_labels, count: int, skipped=None) -> np.ndarray:
    """Indices of the `count` queries retrieved worst, worst first.

    neighbour_labels[i] holds the labels of query i's k nearest references, nearest first.
    Worst = fewest neighbours of the query's class among the k; ties: the one whose first
    neighbour of its class comes later (k if none), then the smaller query index. Queries whose
    k neighbours are all of their class, and skipped queries (no reference of their class), are
    never chosen.
    """
    labels = np.asarray(query_labels).reshape(-1)
    neighbours = np.asarray(neighbour_labels)
    if neighbours.ndim != 2 or neighbours.shape[0] != labels.shape[0]:
        raise ValueError(f"neighbour_labels must be [Q, k] with Q = {labels.shape[0]}, got {neighbours.shape}")
    same = neighbours == labels[:, None]
    k = same.shape[1]
    correct = same.sum(axis=1)
    first_correct = np.where(same.any(axis=1), same.argmax(axis=1), k)
    eligible = correct < k
    if skipped is not None:
        eligible &= ~np.asarray(skipped, dtype=bool)
    candidates = np.flatnonzero(eligible)
    # np.lexsort sorts by the last key first.
    order = np.lexsort((candidates, -first_correct[candidates], correct[candidates]))
    return candidates[order][:count]


def confusion_matrix(true_labels, predicted_labels, classes: Optional[List] = None) -> Tuple[np.ndarray, List]:
    """(counts [C, C], classes): counts[i, j] = queries of class classes[i] whose nearest
    neighbour has class classes[j]. Classes default to the sorted union of both label arrays."""
    true = np.asarray(true_labels).reshape(-1)
    predicted = np.asarray(predicted_labels).reshape(-1)
    if true.shape != predicted.shape:
        raise ValueError(f"{true.shape[0]} true labels but {predicted.shape[0]} predicted labels")
    if classes is None:
        classes = sorted(set(true.tolist()) | set(predicted.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, ([index[c] for c in true.tolist()], [index[c] for c in predicted.tolist()]), 1)
    return counts, list(classes)


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the fraction of a class's queries per predicted class);
    rows without queries stay 0."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
