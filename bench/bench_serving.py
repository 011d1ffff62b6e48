"""Benchmark of the served model (not a test), in-process, against a pushed version.

    .venv/bin/python bench/bench_serving.py                       # the main job's latest push (runs/serving/...)
    .venv/bin/python bench/bench_serving.py runs/serving/triplet_mnist/1795891345 --repeats 200

Measures: tf.saved_model.load time; latency p50/p99 and images/s of `embed_images` (PNG bytes)
and `embed_pixels` at batch 1, 32 and 256; `search` with k=10 at batch 1 and 32; the index's
size on disk, and its build time re-measured here (embedding as many images as the index holds
with the model, in batches of 1024 as the ServingModelBuilder does, then writing model + index;
the pipeline's own figure is the run summary's "Search index" line); and the agreement of
`search`'s exact top-k with the evaluator's k-NN (`metrics.nearest_neighbors`) on the same
embeddings. Queries are MNIST test images when the model takes 28x28x1, else random pixels.
Targets (README): embed_images batch 1 p50 <= 5 ms, batch 256 >= 3,000 images/s, search k=10
over 60,000 references batch 1 p50 <= 10 ms, load <= 5 s.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

import numpy as np

import triplet_tfx.components  # noqa: F401  (pins Keras 3 before TensorFlow loads)

# isort: split
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from triplet_tfx.components import contract  # noqa: E402
from triplet_tfx.components.config import PipelineConfig  # noqa: E402
from triplet_tfx.components.contract import EMBEDDING_KEY  # noqa: E402
from triplet_tfx.components.data import data_sources  # noqa: E402
from triplet_tfx.components.evaluation import metrics  # noqa: E402
from triplet_tfx.components.serving import index  # noqa: E402

BATCHES = (1, 32, 256)
SEARCH_BATCHES = (1, 32)
K = 10


def latest_push(serving_model_dir: str) -> str:
    versions = [v for v in os.listdir(serving_model_dir) if v.isdigit()] if os.path.isdir(serving_model_dir) else []
    if not versions:
        sys.exit(f"no pushed model in {serving_model_dir}: run the main job (make run) or pass a version folder")
    return os.path.join(serving_model_dir, max(versions, key=int))


def folder_mb(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(folder) for n in names) / 1e6


def query_pixels(shape, count: int) -> np.ndarray:
    if tuple(shape) == (28, 28, 1):
        images = data_sources.load_mnist()["test"][0]
        return images[np.arange(count) % len(images)]
    return np.random.default_rng(0).integers(0, 256, (count, *shape), dtype=np.uint8)


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(out, "PNG")
    return out.getvalue()


def timed(call, repeats: int) -> np.ndarray:
    for _ in range(3):  # warm-up: tracing, thread pools
        call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return np.array(seconds)


def row(name: str, batch: int, seconds: np.ndarray, target: str = "") -> str:
    p50, p99 = np.percentile(seconds, 50) * 1e3, np.percentile(seconds, 99) * 1e3
    return f"| {name} | {batch} | {p50:.2f} | {p99:.2f} | {batch / np.median(seconds):,.0f} | {target} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "model",
        nargs="?",
        help=f"a pushed version folder (default: the latest under {PipelineConfig().serving_model_dir})",
    )
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per case (default %(default)s)")
    parser.add_argument(
        "--agreement-queries",
        type=int,
        default=1000,
        help="queries for the search vs evaluator k-NN comparison (default %(default)s)",
    )
    args = parser.parse_args()
    path = args.model or latest_push(PipelineConfig().serving_model_dir)

    start = time.perf_counter()
    model = tf.saved_model.load(path)
    load_seconds = time.perf_counter() - start
    missing = set(index.EMBEDDING_SIGNATURES + (contract.SEARCH_SIGNATURE,)) - set(model.signatures)
    if missing:
        sys.exit(f"{path}: no signature {', '.join(sorted(missing))} (a model pushed before the search index existed?)")
    embed_images = model.signatures[contract.EMBED_IMAGES_SIGNATURE]
    embed_pixels = model.signatures[contract.EMBED_PIXELS_SIGNATURE]
    search = model.signatures[contract.SEARCH_SIGNATURE]
    shape = embed_pixels.structured_input_signature[1][contract.PIXELS_INPUT].shape[1:]
    references = model.reference_embeddings.numpy()
    reference_ids = model.reference_ids.numpy()
    print(f"Model {path}: {len(references):,} references of dim {references.shape[1]}, images {tuple(shape)}")

    pixels = query_pixels(shape, max(max(BATCHES), args.agreement_queries))
    encoded = np.array([png(p) for p in pixels], dtype=object)
    lines = ["| signature | batch | p50 ms | p99 ms | images/s | target |", "|---|---:|---:|---:|---:|---|"]
    for batch in BATCHES:
        images, raw = tf.constant(encoded[:batch]), tf.constant(pixels[:batch])
        lines.append(
            row(
                "embed_images",
                batch,
                timed(lambda images=images: embed_images(images=images), args.repeats),
                {1: "p50 <= 5 ms", 256: ">= 3,000 images/s"}.get(batch, ""),
            )
        )
        lines.append(row("embed_pixels", batch, timed(lambda raw=raw: embed_pixels(pixels=raw), args.repeats)))
    k = tf.constant(min(K, len(references)))
    for batch in SEARCH_BATCHES:
        images = tf.constant(encoded[:batch])
        seconds = timed(lambda images=images: search(images=images, k=k), args.repeats)
        lines.append(
            row(f"search k={int(k)}", batch, seconds, "p50 <= 10 ms (60,000 references)" if batch == 1 else "")
        )
    print("\n".join(lines))

    # Index build, re-measured: embed as many images as the index holds, then write model + index.
    count = len(references)
    reference_pixels = query_pixels(shape, count)
    start = time.perf_counter()
    embedded = np.concatenate(
        [
            embed_pixels(pixels=tf.constant(reference_pixels[s : s + 1024]))[EMBEDDING_KEY].numpy()
            for s in range(0, count, 1024)
        ]
    )
    embed_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        index.build_serving_model(
            path, reference_ids, model.reference_labels.numpy(), embedded, os.path.join(folder, "1")
        )
        write_seconds = time.perf_counter() - start
    print(f"tf.saved_model.load: {load_seconds:.2f} s (target <= 5 s)")
    print(
        f"Index: {count:,} references; on disk: variables {folder_mb(os.path.join(path, 'variables')):.1f} MB, "
        f"whole version {folder_mb(path):.1f} MB"
    )
    print(
        f"Index build (re-measured): embedding {count:,} images {embed_seconds:.2f} s + writing model and index "
        f"{write_seconds:.2f} s"
    )

    # search's exact top-k vs the evaluator's k-NN on the same embeddings.
    queries = tf.constant(encoded[: args.agreement_queries])
    found = search(images=queries, k=k)
    position = {reference_id: i for i, reference_id in enumerate(reference_ids)}
    served = np.vectorize(position.get)(found["ids"].numpy())
    embeddings = embed_images(images=queries)[EMBEDDING_KEY].numpy()
    expected, expected_distances = metrics.nearest_neighbors(embeddings, references, k=int(k))
    differ = served != expected
    ties = differ & np.isclose(found["distances"].numpy(), expected_distances, rtol=0, atol=1e-6)
    print(
        f"search vs evaluator k-NN ({len(embeddings)} queries, k={int(k)}): {1 - differ.mean():.4%} of neighbours "
        f"identical; {ties.sum()} differ only in the order of equal distances, {(differ & ~ties).sum()} otherwise; "
        f"max distance difference {np.abs(found['distances'].numpy() - expected_distances).max():.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
