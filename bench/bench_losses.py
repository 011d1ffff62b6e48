"""Benchmark: triplet_tfx's semi-hard triplet loss against TensorFlow Addons' own, side by side.

Forward + gradient (w.r.t. the embeddings) of the semi-hard loss, d = 256, float32, labels from
10 classes, inside a ``tf.function`` (no XLA), on this machine's CPU. Each (implementation, B)
runs in its own subprocess so that peak memory is per size: the peak is the growth of the
process's resident memory (sampled every 2 ms, and ``ru_maxrss``) over its level just before the
first loss call (TensorFlow imported, inputs built).

TFA 0.23.0 cannot be imported next to Keras 3, so it runs in its own Python 3.10 environment with
``tensorflow-cpu==2.15.1``, created on demand under ``bench/.tfa-venv`` (override with
``--tfa-venv``; the base interpreter with ``--tfa-python``; needs PyPI access once). TFA tiles the
distance matrix to (B*B) x B, so above ``--tfa-max`` (default 1024) it is not run: B = 2048
needs 2048^3 * 4 bytes = 32 GiB per tiled tensor, more than this machine has.

    .venv/bin/python bench/bench_losses.py                      # the full table
    .venv/bin/python bench/bench_losses.py --sizes 32 512 --no-tfa
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_SIZES = [32, 128, 512, 1024, 2048, 4096, 8192]
TFA_PACKAGES = ["tensorflow-cpu==2.15.1", "tensorflow-addons==0.23.0"]
TFA_VENV = HERE / ".tfa-venv"  # the TensorFlow Addons environment (bench_pipeline.py's notebook too)
DEFAULT_TFA_PYTHON = sys.executable  # `-m venv` from a venv's Python builds on its base interpreter


# --------------------------------------------------------------------------- worker
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakSampler(threading.Thread):
    def __init__(self, period=0.002):
        super().__init__(daemon=True)
        self.period, self.peak, self._stop_event = period, _rss_bytes(), threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.period)

    def stop(self):
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, _rss_bytes())
        return self.peak


def worker(impl: str, batch: int, dim: int, repeats: int, seed: int = 0) -> dict:
    import resource

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if impl == "ours":
        os.environ["TF_USE_LEGACY_KERAS"] = "0"
    import numpy as np
    import tensorflow as tf

    if impl == "ours":
        from triplet_tfx.components.training.losses import triplet_semihard_loss as loss_fn
    else:
        import tensorflow_addons as tfa

        loss_fn = tfa.losses.triplet_semihard_loss

    rng = np.random.default_rng(seed)
    embeddings = tf.constant(rng.normal(size=(batch, dim)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 10, size=batch).astype(np.int32))

    @tf.function
    def step(labels, embeddings):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss = loss_fn(labels, embeddings)
        return loss, tape.gradient(loss, embeddings)

    baseline = _rss_bytes()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sampler = _PeakSampler()
    sampler.start()
    step(labels, embeddings)[1].numpy()  # trace + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss, grad = step(labels, embeddings)
        grad.numpy()
        times.append(time.perf_counter() - start)
    peak = sampler.stop()
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if maxrss_after > maxrss_before:  # a new lifetime peak: the exact figure
        peak = max(peak, maxrss_after)
    return {
        "impl": impl,
        "batch": batch,
        "dim": dim,
        "repeats": repeats,
        "ms_median": statistics.median(times) * 1e3,
        "ms_min": min(times) * 1e3,
        "peak_mb": (peak - baseline) / 2**20,
        "loss": float(loss),
        "versions": {"tensorflow": tf.__version__},
    }


# --------------------------------------------------------------------------- driver
def ensure_tfa_venv(venv: Path, base_python: str) -> Path:
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import tensorflow_addons, tensorflow"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} with {' '.join(TFA_PACKAGES)} ...", file=sys.stderr)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TFA_PACKAGES], check=True)
    return python


def run_worker(python: str, impl: str, batch: int, dim: int, repeats: int, timeout: int) -> dict:
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        impl,
        "--batch",
        str(batch),
        "--dim",
        str(dim),
        "--repeats",
        str(repeats),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        oom = proc.returncode in (-9, 137) or "MemoryError" in proc.stderr or "OOM" in proc.stderr
        return {"error": "OOM" if oom else f"failed (rc={proc.returncode}): {proc.stderr[-400:]}"}
    return json.loads(lines[-1][len("RESULT ") :])


def default_repeats(batch: int, impl: str) -> int:
    if impl == "tfa":
        return 10 if batch <= 128 else 3
    return 20 if batch <= 1024 else (5 if batch <= 4096 else 3)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--tfa-max", type=int, default=1024)
    p.add_argument("--no-tfa", action="store_true")
    p.add_argument("--tfa-venv", type=Path, default=TFA_VENV)
    p.add_argument("--tfa-python", default=os.environ.get("TFA_PYTHON", DEFAULT_TFA_PYTHON))
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--json", type=Path, help="also write the raw results here")
    # worker mode (internal)
    p.add_argument("--worker", choices=["ours", "tfa"])
    p.add_argument("--batch", type=int)
    p.add_argument("--repeats", type=int)
    args = p.parse_args(argv)

    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.batch, args.dim, args.repeats)), flush=True)
        return

    tfa_python = None if args.no_tfa else str(ensure_tfa_venv(args.tfa_venv, args.tfa_python))
    rows, raw = [], []
    load_before = os.getloadavg()
    for batch in args.sizes:
        ours = run_worker(sys.executable, "ours", batch, args.dim, default_repeats(batch, "ours"), args.timeout)
        if tfa_python is None:
            tfa = {"error": "not run"}
        elif batch > args.tfa_max:
            tfa = {"error": "OOM (not run: O(B^3) memory)"}
        else:
            tfa = run_worker(tfa_python, "tfa", batch, args.dim, default_repeats(batch, "tfa"), args.timeout)
        raw.append({"batch": batch, "ours": ours, "tfa": tfa})

        def fmt(r, k, f):
            return f.format(r[k]) if k in r else r.get("error", "-")

        if "ms_median" in ours and "ms_median" in tfa:
            r = tfa["ms_median"] / ours["ms_median"]
            ratio = f"{r:.1f}x" if r < 10 else f"{r:.0f}x"
        else:
            ratio = "-"
        row = (
            f"| {batch} | {fmt(ours, 'ms_median', '{:.2f}')} | {fmt(tfa, 'ms_median', '{:.1f}')} "
            f"| {ratio} | {fmt(ours, 'peak_mb', '{:.0f}')} | {fmt(tfa, 'peak_mb', '{:.0f}')} |"
        )
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    print(
        f"\nSemi-hard triplet loss, forward + gradient, d={args.dim}, float32, CPU "
        f"({os.cpu_count()} cores); median of repeated runs; peak = RSS growth per process. "
        f"Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after.\n"
    )
    print("| B | ours ms | TFA 0.23 ms | TFA / ours | ours peak MB | TFA peak MB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
