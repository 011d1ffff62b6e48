"""Benchmark of the search index (not a test): exact k-NN (the served `search` today) against the IVF
index (components/ivf_index.py), with faiss-cpu and ScaNN as reference points only.

    .venv/bin/python bench/bench_index.py                          # N = 60,000 and 1,000,000
    .venv/bin/python bench/bench_index.py --sizes 60000 --no-references

Data (synthetic, seeded): N x 256 unit-norm float32 embeddings from 1,000 Gaussian clusters on
the sphere. The centres are uniform on the unit sphere; cluster weights are log-normal (sigma 0.5,
so cluster sizes vary about 2x either way); a point is centre + isotropic Gaussian noise of norm
~s, re-normalised, with s drawn per cluster uniformly in
  --data separated:   [0.35, 0.55]: well separated clusters (each IVF list falls inside one
                      cluster; the easy case, and the one the brief names);
  --data overlapping: [1.8, 2.2]: the clusters overlap (a query's 10th neighbour is ~0.83 x as far
                      as a random item): a stress case where partitions cut through neighbourhoods.
The 1,000 queries are fresh draws from the same mixture (not in the index). Recall@10 is
|found ∩ true top-10| / 10 averaged over the queries, the truth being exact k-NN by NumPy in
float32. Real embeddings are not this: measure recall on them (a held-out sample against exact
search) before choosing nprobe.

Each index is built once, saved with tf.saved_model.save, loaded in process (tf.saved_model.load)
and queried through its saved signature: batch-1 latency p50/p99 over --latency-queries queries,
recall@10 over all the queries (batches of 25). Methods:

* exact: the current scheme, reference embeddings in a variable, ivf_index.nearest (one matmul + top_k);
* ivf float32 / ivf int8 (per-vector scale) / ivf int8 per-dimension scale / ivf int8 + float32
  re-rank: ivf_index.IvfIndex, default_lists(N) lists from k-means (10 iterations, random init) on
  a sample of 40 x lists items, swept over nprobe;
* references (never imported by the product): faiss IndexIVFFlat (same lists) and IndexHNSWFlat
  (M=32, efConstruction=40), ScaNN (tree with sqrt(N) leaves, AH 2-dim blocks with anisotropic
  threshold 0.2 on dot products (= L2 order on unit vectors), exact reorder of 100). Each is swept
  and reported at the first setting reaching the recall of the IVF int8 row at default nprobe
  (at least 0.95). They run in bench/.index-venv (Python 3.10, faiss-cpu, scann: created on first use
  when they are not importable here), in a subprocess of this script (`--reference-worker`).

Memory is the index's in-memory size: the served variables (ivf_index.memory_bytes; ids counted
as UTF-8 bytes + 24 bytes of TF string header each, labels int64), faiss's serialised index and
ScaNN's serialised assets (which hold neither ids nor labels). Build time: k-means + assignment +
packing (exact: the squared norms); not the SavedModel write.

Targets on this machine for N = 1,000,000: recall@10 >= 0.95, batch-1 p50 <= 5 ms, memory <= 0.35 GB.
N = 10,000,000 runs only when --sizes names it and MemAvailable allows; else its need is printed.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_VENV = os.path.join(HERE, ".index-venv")
DIM, CLUSTERS, K = 256, 1000, 10


# --------------------------------------------------------------------------- shared (both venvs)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k].tolist()) & set(b.tolist())) / k for a, b in zip(found, truth)]))


def percentiles(seconds):
    return float(np.percentile(seconds, 50) * 1e3), float(np.percentile(seconds, 99) * 1e3)


def timed_single(search, queries):
    search(queries[:1])
    times = []
    for i in range(len(queries)):
        start = time.perf_counter()
        search(queries[i : i + 1])
        times.append(time.perf_counter() - start)
    return percentiles(times)


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(folder) for n in names)


# ------------------------------------------------------------------- references (.index-venv)


def reference_worker(folder: str) -> None:
    """Runs faiss and ScaNN on the data in `folder`; prints one JSON object per result line."""
    params = json.load(open(os.path.join(folder, "params.json")))
    x = np.load(os.path.join(folder, "x.npy"), mmap_mode="r")
    x = np.ascontiguousarray(x)
    queries = np.load(os.path.join(folder, "queries.npy"))
    truth = np.load(os.path.join(folder, "truth.npy"))
    latency_queries = queries[: params["latency_queries"]]
    target, lists, n = params["target"], params["lists"], x.shape[0]

    def emit(**row):
        print(json.dumps(row), flush=True)

    def sweep(name, settings, search, build_s, memory):
        best = None
        for setting in settings:
            found = search(queries, setting)
            rec = recall_at(found, truth)
            best = (setting, rec)
            if rec >= target:
                break
        setting, rec = best
        p50, p99 = timed_single(lambda q: search(q, setting), latency_queries)
        emit(method=name, setting=setting, build_s=build_s, memory=memory, recall=rec, p50=p50, p99=p99)

    try:
        import faiss

        faiss.omp_set_num_threads(os.cpu_count())
        rng = np.random.default_rng(0)
        sample = x[np.sort(rng.choice(n, min(n, 40 * lists), replace=False))]
        start = time.perf_counter()
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(x.shape[1]), x.shape[1], lists)
        index.cp.niter = 10
        index.train(sample)
        index.add(x)
        build = time.perf_counter() - start

        def ivf_search(q, nprobe):
            # F821: pyflakes reads the `del index` below; the sweep calls this before it
            index.nprobe = nprobe  # noqa: F821
            return index.search(q, K)[1]  # noqa: F821

        sweep(
            "faiss IndexIVFFlat",
            [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p <= lists],
            ivf_search,
            build,
            int(faiss.serialize_index(index).nbytes),
        )
        del index
        if n <= params["hnsw_max"]:
            start = time.perf_counter()
            hnsw = faiss.IndexHNSWFlat(x.shape[1], 32)
            hnsw.hnsw.efConstruction = 40
            hnsw.add(x)
            build = time.perf_counter() - start

            def hnsw_search(q, ef):
                hnsw.hnsw.efSearch = ef
                return hnsw.search(q, K)[1]

            sweep(
                "faiss IndexHNSWFlat",
                (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512),
                hnsw_search,
                build,
                int(faiss.serialize_index(hnsw).nbytes),
            )
            del hnsw
        else:
            emit(
                method="faiss IndexHNSWFlat",
                error=f"not built above --hnsw-max {params['hnsw_max']:,} items (build time on 2 cores)",
            )
    except Exception as error:  # noqa: BLE001  (a reference point failing must not stop the others)
        emit(method="faiss", error=f"{type(error).__name__}: {error}")
    try:
        import scann

        leaves = max(2, int(round(math.sqrt(n))))
        start = time.perf_counter()
        searcher = (
            scann.scann_ops_pybind.builder(x, K, "dot_product")
            .tree(num_leaves=leaves, num_leaves_to_search=leaves // 20 or 1, training_sample_size=min(n, 250_000))
            .score_ah(2, anisotropic_quantization_threshold=0.2)
            .reorder(100)
            .build()
        )
        build = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as assets:
            searcher.serialize(assets)
            memory = folder_bytes(assets)

        def scann_search(q, leaves_to_search):
            if q.shape[0] == 1:
                return searcher.search(
                    q[0], final_num_neighbors=K, leaves_to_search=leaves_to_search, pre_reorder_num_neighbors=100
                )[0][None, :]
            return searcher.search_batched(
                q, final_num_neighbors=K, leaves_to_search=leaves_to_search, pre_reorder_num_neighbors=100
            )[0]

        sweep(
            f"ScaNN ({leaves} leaves)",
            [s for s in (2, 4, 8, 16, 32, 64, 128, 256) if s <= leaves],
            scann_search,
            build,
            memory,
        )
    except Exception as error:  # noqa: BLE001
        emit(method="ScaNN", error=f"{type(error).__name__}: {error}")


def reference_python():
    """A Python with faiss and scann: this one, else bench/.index-venv (created on first use)."""
    try:
        import faiss  # noqa: F401
        import scann  # noqa: F401

        return sys.executable
    except ImportError:
        pass
    python = os.path.join(REFERENCE_VENV, "bin", "python")
    if not os.path.exists(python):
        import glob

        base = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
        subprocess.run([base[-1] if base else "python3.10", "-m", "venv", REFERENCE_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "faiss-cpu", "scann"], check=True)
    return python


def run_references(folder, args, lists, target, x, queries, truth):
    np.save(os.path.join(folder, "x.npy"), x)
    np.save(os.path.join(folder, "queries.npy"), queries)
    np.save(os.path.join(folder, "truth.npy"), truth)
    json.dump(
        {"lists": lists, "target": target, "latency_queries": args.latency_queries, "hnsw_max": args.hnsw_max},
        open(os.path.join(folder, "params.json"), "w"),
    )
    try:
        python = reference_python()
    except Exception as error:  # noqa: BLE001
        return [{"method": "faiss / ScaNN", "error": f"no reference environment: {error}"}]
    done = subprocess.run(
        [python, os.path.abspath(__file__), "--reference-worker", folder],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0:
        rows.append({"method": "references", "error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"})
    return rows


# ------------------------------------------------------------------------------------ main venv

SPREADS = {"separated": (0.35, 0.55), "overlapping": (1.8, 2.2)}


def synthetic(n, queries, data="separated", seed=0, d=DIM, clusters=CLUSTERS):
    """(embeddings [n, d], labels [n], queries [queries, d]): see the module docstring."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 0.5, clusters)
    weights /= weights.sum()
    spread = rng.uniform(*SPREADS[data], clusters).astype(np.float32) / np.sqrt(d)

    def draw(count, stream):
        labels = stream.choice(clusters, size=count, p=weights)
        out = np.empty((count, d), np.float32)
        for s in range(0, count, 100_000):
            part = labels[s : s + 100_000]
            points = centres[part] + stream.standard_normal((len(part), d), dtype=np.float32) * spread[part, None]
            out[s : s + len(part)] = points / np.linalg.norm(points, axis=1, keepdims=True)
        return out, labels.astype(np.int64)

    x, labels = draw(n, rng)
    q, _ = draw(queries, np.random.default_rng(seed + 1))
    return x, labels, q


def exact_truth(x, queries, k=K, chunk=200_000):
    """Exact top-k by NumPy (float32), chunked over the references."""
    q_norms = np.einsum("ij,ij->i", queries, queries)[:, None]
    best_d = np.full((len(queries), 0), np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for s in range(0, len(x), chunk):
        part = x[s : s + chunk]
        d2 = q_norms - 2 * queries @ part.T + np.einsum("ij,ij->i", part, part)[None, :]
        top = np.argpartition(d2, min(k, d2.shape[1] - 1), axis=1)[:, :k]
        best_d = np.concatenate([best_d, np.take_along_axis(d2, top, 1)], axis=1)
        best_i = np.concatenate([best_i, top + s], axis=1)
        keep = np.argsort(best_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(best_d, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"unknown CPU, {os.cpu_count()} cores"


def mem_available_bytes():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def need_bytes(n, d=DIM):
    """Peak memory of this benchmark at n items: the embeddings, the exact index's variable and its
    loaded copy, the largest IVF (int8 + float32 re-rank) built and loaded, the truth's matmul."""
    return int(n * d * 4 * 3 + 2 * n * (d + 4 * d + 48) + 1000 * 200_000 * 4)


def ids_for(n):
    return np.array([f"train/{i}" for i in range(n)], dtype=object)


def run_size(n, data, args, rows):
    import tensorflow as tf

    from triplet_tfx.components import ivf_index as ivf

    print(f"\n[N={n:,}] generating {data} data...", file=sys.stderr, flush=True)
    x, labels, queries = synthetic(n, args.queries, data)
    start = time.perf_counter()
    truth = exact_truth(x, queries)
    print(f"[N={n:,}] NumPy truth {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    ids = ids_for(n)
    id_bytes = sum(len(i) for i in ids) + 24 * n
    latency_queries = queries[: args.latency_queries]
    work = tempfile.mkdtemp(prefix="bench_index_")

    def saved(module, signature, name):
        path = os.path.join(work, name)
        tf.saved_model.save(module, path, signatures={"search": signature})
        return tf.saved_model.load(path).signatures["search"]

    def add(method, setting, build_s, memory, rec, p50, p99):
        rows.append(
            dict(
                n=n,
                data=data,
                method=method,
                setting=setting,
                build_s=build_s,
                memory=memory,
                recall=rec,
                p50=p50,
                p99=p99,
            )
        )
        print(f"[N={n:,}] {method} {setting}: recall {rec:.4f} p50 {p50:.2f} ms", file=sys.stderr, flush=True)

    # exact: the served scheme today
    start = time.perf_counter()
    norms = np.einsum("ij,ij->i", x, x)
    build = time.perf_counter() - start

    class Exact(tf.Module):
        def __init__(self):
            super().__init__()
            self.references = tf.Variable(x, trainable=False)
            self.norms = tf.Variable(norms, trainable=False)
            self.labels = tf.Variable(labels, trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([None, DIM], tf.float32), tf.TensorSpec([], tf.int32)])
        def search(self, q, k):
            return ivf.nearest(q, self.references, self.norms, k)

    module = Exact()
    signature = saved(module, module.search, "exact")
    del module
    gc.collect()
    k = tf.constant(K)
    found = np.concatenate(
        [signature(q=tf.constant(queries[s : s + 50]), k=k)["output_0"].numpy() for s in range(0, len(queries), 50)]
    )
    p50, p99 = timed_single(
        lambda q, signature=signature: signature(q=tf.constant(q), k=k), latency_queries[: args.exact_latency_queries]
    )
    add("exact (matmul + top_k)", "-", build, n * DIM * 4 + 4 * n + 8 * n + id_bytes, recall_at(found, truth), p50, p99)
    del signature
    gc.collect()

    # ivf: one quantizer, one assignment, four storages
    lists = ivf.default_lists(n)
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    sample = x[np.sort(rng.choice(n, min(n, 40 * lists), replace=False))]
    centroids = ivf.train_quantizer(sample, lists, iterations=10, seed=0)
    quantizer_s = time.perf_counter() - start
    start = time.perf_counter()
    list_ids = ivf.assign(x, centroids)
    assign_s = time.perf_counter() - start
    print(
        f"[N={n:,}] k-means {lists} lists {quantizer_s:.1f}s, assignment {assign_s:.1f}s", file=sys.stderr, flush=True
    )
    default = ivf.default_nprobe(lists)
    sweep = sorted({p for p in (default // 4, default // 2, default, default * 2, default * 4) if 1 <= p <= lists})
    target = 0.95
    variants = [
        ("ivf float32", "float32", "vector", False),
        ("ivf int8 per-vector", "int8", "vector", False),
        ("ivf int8 per-dimension", "int8", "dimension", False),
        ("ivf int8 + float32 re-rank", "int8", "vector", True),
    ]
    for name, storage, scale, keep in variants:
        start = time.perf_counter()
        state = ivf.build(x, ids, labels, centroids, storage=storage, scale=scale, keep_float32=keep, list_ids=list_ids)
        build = quantizer_s + assign_s + time.perf_counter() - start
        memory = ivf.memory_bytes(state)
        module = ivf.IvfIndex(state)
        signature = saved(module, module.search, name.replace(" ", "_").replace("+", "p"))
        stored_to_input = np.array([int(i.split("/")[1]) for i in state.ids])
        del module, state
        gc.collect()
        for nprobe in sweep:
            p = tf.constant(nprobe)
            found = np.concatenate(
                [
                    signature(queries=tf.constant(queries[s : s + 25]), k=k, nprobe=p)["output_0"].numpy()
                    for s in range(0, len(queries), 25)
                ]
            )
            rec = recall_at(stored_to_input[found], truth)
            p50, p99 = timed_single(
                lambda q, signature=signature, p=p: signature(queries=tf.constant(q), k=k, nprobe=p), latency_queries
            )
            add(
                name,
                f"lists {lists}, nprobe {nprobe}" + (" (default)" if nprobe == default else ""),
                build,
                memory,
                rec,
                p50,
                p99,
            )
            if name == "ivf int8 per-vector" and nprobe == default:
                target = max(0.95, rec)
        del signature
        gc.collect()

    if args.references:
        print(f"[N={n:,}] references (faiss, ScaNN) at recall >= {target:.4f}...", file=sys.stderr, flush=True)
        for row in run_references(work, args, lists, target, x, queries, truth):
            if "error" in row:
                rows.append(dict(n=n, data=data, method=row["method"], error=row["error"]))
            else:
                setting = row["setting"]
                setting = (
                    f"nprobe {setting}"
                    if "IVF" in row["method"]
                    else f"efSearch {setting}"
                    if "HNSW" in row["method"]
                    else f"leaves_to_search {setting}"
                )
                add(
                    row["method"] + " [reference]",
                    setting,
                    row["build_s"],
                    row["memory"],
                    row["recall"],
                    row["p50"],
                    row["p99"],
                )
    for name in os.listdir(work):
        path = os.path.join(work, name)
        subprocess.run(["rm", "-rf", path], check=False)
    os.rmdir(work)


def print_table(rows, sizes_skipped):
    print(
        f"\nSearch index benchmark, {datetime.date.today().isoformat()}, {cpu_model()}, "
        f"TensorFlow {__import__('tensorflow').__version__}"
    )
    print(
        f"Data: unit-norm {DIM}-d embeddings, {CLUSTERS:,} Gaussian clusters on the sphere; "
        f"queries: fresh draws; k = {K}; latency: batch 1 through the loaded SavedModel's signature"
    )
    header = "| N | data | method | setting | build s | memory GB | p50 ms | p99 ms | recall@10 |"
    print(header)
    print("|---:|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['n']:,} | {r['data']} | {r['method']} | {r['error']} | | | | | |")
        else:
            print(
                f"| {r['n']:,} | {r['data']} | {r['method']} | {r['setting']} | {r['build_s']:.1f} | "
                f"{r['memory'] / 1e9:.3f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['recall']:.4f} |"
            )
    for line in sizes_skipped:
        print(line)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[60_000, 1_000_000])
    parser.add_argument("--data", nargs="+", choices=sorted(SPREADS), default=["separated"])
    parser.add_argument("--queries", type=int, default=1000, help="recall queries")
    parser.add_argument("--latency-queries", type=int, default=300, help="batch-1 latency calls per setting")
    parser.add_argument("--exact-latency-queries", type=int, default=100)
    parser.add_argument("--hnsw-max", type=int, default=1_000_000, help="build HNSW only up to this many items")
    parser.add_argument("--no-references", dest="references", action="store_false")
    parser.add_argument("--reference-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference_worker:
        return reference_worker(args.reference_worker)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import triplet_tfx.components  # noqa: F401  (pins Keras 3 before TensorFlow loads)

    rows, skipped = [], []
    for n in args.sizes:
        need = need_bytes(n)
        if need > 0.9 * mem_available_bytes():
            skipped.append(
                f"N={n:,}: not run: needs ~{need / 1e9:.0f} GB of memory (embeddings, exact index and its "
                f"loaded copy, the largest IVF), {mem_available_bytes() / 1e9:.0f} GB available"
            )
            continue
        for data in args.data:
            run_size(n, data, args, rows)
    print_table(rows, skipped)


if __name__ == "__main__":
    main()
