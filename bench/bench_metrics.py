"""Benchmark of components.metrics (not a test): evaluation and exact k-NN time and peak memory.

    .venv/bin/python bench/bench_metrics.py                # all cases, prints a Markdown table
    .venv/bin/python bench/bench_metrics.py --quick        # small sizes (smoke run)
    .venv/bin/python bench/bench_metrics.py --faiss        # also faiss-cpu IndexFlatL2, if importable

Each case runs in its own subprocess so that ``ru_maxrss`` (peak resident memory) belongs to
that case alone. "data MB" is the peak before the measured call (synthetic data held in
memory); "peak MB" the peak after; their difference is the working memory of the call.
Data are synthetic 256-d float32 embeddings: Gaussian clusters, one per class (10 classes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

DIM = 256


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _clustered(n: int, seed: int, n_classes: int = 10, dim: int = DIM, chunk: int = 65536):
    """Clustered embeddings, generated in chunks (no float64 copy of the whole array)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(12345).normal(size=(n_classes, dim)).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    y = rng.integers(0, n_classes, size=n)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        x[s:e] = centers[y[s:e]] * 0.35 + rng.standard_normal(size=(e - s, dim), dtype=np.float32) * 0.9
    return x, y


def run_case(case: str, n_query: int, n_ref: int, k: int) -> dict:
    from triplet_tfx.components.evaluation import metrics as M

    xq, yq = _clustered(n_query, seed=1)
    xr = yr = None
    if case in ("eval_vs_ref", "knn", "faiss"):
        xr, yr = _clustered(n_ref, seed=2)
    data_mb = _peak_mb()
    t0 = time.perf_counter()
    extra = {}
    if case == "eval_loo":
        m = M.evaluate_embeddings(xq, yq)
        extra = {"precision_at_1": m["precision_at_1"], "map_at_r": m["map_at_r"]}
    elif case == "eval_loo_noclust":
        m = M.evaluate_embeddings(xq, yq, clustering=False)
    elif case == "eval_vs_ref":
        m = M.evaluate_embeddings(xq, yq, xr, yr, clustering=False)
        extra = {"precision_at_1": m["precision_at_1"], "map_at_r": m["map_at_r"]}
    elif case == "knn":
        idx, _ = M.nearest_neighbors(xq, xr, k)
        extra = {"checksum": int(idx[:, 0].sum())}
    elif case == "faiss":
        import faiss

        index = faiss.IndexFlatL2(DIM)
        index.add(xr)
        _, idx = index.search(xq, k)
        extra = {"checksum": int(idx[:, 0].sum())}
    else:
        raise ValueError(case)
    seconds = time.perf_counter() - t0
    peak = _peak_mb()
    return {"case": case, "n_query": n_query, "n_ref": n_ref, "k": k, "seconds": round(seconds, 2),
            "data_mb": round(data_mb), "peak_mb": round(peak), "work_mb": round(peak - data_mb), **extra}  # fmt: skip


CASES = [
    # (case, n_query, n_ref, k, description)
    ("eval_loo", 10_000, 0, 0, "evaluate_embeddings, 10k leave-one-out (+ KMeans NMI/AMI)"),
    ("eval_loo_noclust", 10_000, 0, 0, "evaluate_embeddings, 10k leave-one-out, retrieval only"),
    ("eval_vs_ref", 10_000, 60_000, 0, "evaluate_embeddings, 10k queries vs 60k references, retrieval only"),
    ("knn", 1_000, 100_000, 10, "nearest_neighbors k=10, 1k queries vs 100k references"),
    ("knn", 1_000, 1_000_000, 10, "nearest_neighbors k=10, 1k queries vs 1M references"),
]
QUICK = [
    ("eval_loo", 2_000, 0, 0, "evaluate_embeddings, 2k leave-one-out"),
    ("eval_vs_ref", 2_000, 10_000, 0, "evaluate_embeddings, 2k vs 10k"),
    ("knn", 200, 50_000, 10, "nearest_neighbors k=10, 200 vs 50k"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--faiss", action="store_true", help="also time faiss-cpu IndexFlatL2 on the k-NN cases")
    ap.add_argument("--case", nargs=4, metavar=("CASE", "NQ", "NR", "K"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        c, nq, nr, k = args.case
        print(json.dumps(run_case(c, int(nq), int(nr), int(k))))
        return
    cases = list(QUICK if args.quick else CASES)
    if args.faiss:
        cases += [("faiss", nq, nr, k, d.replace("nearest_neighbors", "faiss IndexFlatL2"))
                  for c, nq, nr, k, d in cases if c == "knn"]  # fmt: skip
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    print("| case | seconds | data MB | peak MB | working MB | notes |")
    print("|---|---:|---:|---:|---:|---|")
    for c, nq, nr, k, desc in cases:
        res = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--case", c, str(nq), str(nr), str(k)],
            capture_output=True, text=True,
        )  # fmt: skip
        if res.returncode != 0:
            print(f"| {desc} | failed | | | | {res.stderr.strip().splitlines()[-1] if res.stderr else ''} |")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        notes = ", ".join(f"{key}={r[key]:.4f}" for key in ("precision_at_1", "map_at_r") if key in r)
        if "checksum" in r:
            notes = f"checksum={r['checksum']}"
        print(
            f"| {desc} | {r['seconds']:.2f} | {r['data_mb']} | {r['peak_mb']} | {r['work_mb']} | {notes} |", flush=True
        )


if __name__ == "__main__":
    main()
