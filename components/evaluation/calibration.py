"""A distance threshold that says "no match": calibrated on the eval queries' nearest neighbours.

As TensorFlow Similarity's `calibrate` does: each query's nearest reference is a *match* when it
has the query's class; every distinct nearest-neighbour distance is a candidate threshold t, and a
query counts as matched at t when its nearest distance is <= t. At each t:
  precision = correct matches / matched queries, recall = correct matches / queries whose nearest
  neighbour is correct, F1 their harmonic mean.
For a target precision the chosen threshold is the largest t whose precision reaches the target
(the most recall at that precision); precision need not fall monotonically with t, so this is a
scan of the whole curve, not a bisection.
"""

from __future__ import annotations

import csv
from typing import Dict, Iterable, Optional, TextIO

import numpy as np

CURVE_FILE = "calibration.csv"  # threshold, matched, precision, recall, f1: one row per candidate threshold
TARGET_PRECISIONS = (0.9, 0.95, 0.99)  # reported besides the configured --match-precision


def threshold_curve(distances, correct) -> Dict[str, np.ndarray]:
    """{"threshold", "matched", "precision", "recall", "f1"} at every distinct distance, ascending.

    distances: [Q] each query's nearest-neighbour distance; correct: [Q] whether that neighbour has
    the query's class."""
    distances = np.asarray(distances, np.float64).reshape(-1)
    correct = np.asarray(correct, bool).reshape(-1)
    if distances.shape != correct.shape or distances.size == 0:
        raise ValueError(f"calibration needs one distance per query: {distances.size} distances, {correct.size} flags")
    order = np.argsort(distances, kind="stable")
    sorted_distances, hits = distances[order], np.cumsum(correct[order])
    last = np.r_[sorted_distances[1:] != sorted_distances[:-1], True]  # the last query at each distance
    matched = np.arange(1, distances.size + 1)[last]
    true_matches = hits[last].astype(np.float64)
    precision = true_matches / matched
    recall = true_matches / max(int(correct.sum()), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "threshold": sorted_distances[last],
        "matched": matched,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def point(curve: Dict[str, np.ndarray], i: int) -> Dict[str, float]:
    return {key: float(curve[key][i]) for key in ("threshold", "precision", "recall", "f1")}


def threshold_for_precision(curve: Dict[str, np.ndarray], target: float) -> Optional[Dict[str, float]]:
    """The curve's point with the largest threshold whose precision reaches `target` (None: none does)."""
    reaching = np.flatnonzero(curve["precision"] >= target)
    return point(curve, int(reaching[-1])) if reaching.size else None


def calibrate(distances, correct, match_precision: float, targets: Iterable[float] = TARGET_PRECISIONS) -> Dict:
    """What metrics.json keeps: the F1-optimal point, the point of each target precision (and of
    `match_precision`, the served threshold's), and the curve (returned under "curve")."""
    curve = threshold_curve(distances, correct)
    wanted = sorted({*targets, match_precision})
    return {
        "match_precision": match_precision,
        "match": threshold_for_precision(curve, match_precision),
        "best_f1": point(curve, int(np.argmax(curve["f1"]))),
        "by_precision": {f"{p:g}": threshold_for_precision(curve, p) for p in wanted},
        "curve": curve,
    }


def write_curve(f: TextIO, curve: Dict[str, np.ndarray]) -> None:
    """The curve as CSV (CURVE_FILE) into the open text file `f`."""
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["threshold", "matched", "precision", "recall", "f1"])
    for t, n, p, r, f1 in zip(curve["threshold"], curve["matched"], curve["precision"], curve["recall"], curve["f1"]):
        writer.writerow([f"{t:.6g}", int(n), f"{p:.6f}", f"{r:.6f}", f"{f1:.6f}"])


def rejection_rate(distances, threshold: Optional[float]) -> Optional[float]:
    """Share of queries whose nearest distance is above the threshold (open-set queries, whose class
    the index lacks, should all be rejected)."""
    distances = np.asarray(distances, np.float64).reshape(-1)
    if threshold is None or distances.size == 0:
        return None
    return float(np.mean(distances > threshold))
