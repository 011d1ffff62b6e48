"""Evaluation plots (matplotlib, Agg backend): 2-D embedding scatter, per-class Precision@1
chart, 1-NN confusion heat maps and the worst-retrieval gallery, and how classes are shown.

The 2-D projection is UMAP (umap-learn) on a seeded subsample (default 3000 points), with PCA
(scikit-learn) when umap-learn cannot be imported or fails; the title says which one was used.
`EmbeddingPlotProcess` draws it in a process of its own while the caller goes on
(`python -m triplet_tfx.components.evaluation.plots FOLDER` is that process), which a local run
starts early (`plot_process_on_standby`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from triplet_tfx.components.evaluation.metrics import nearest_neighbors

logger = logging.getLogger(__name__)

# Colours of matplotlib's "tab10" then "tab20".
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
]  # fmt: skip


def _pyplot():
    """pyplot with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def subsample(n: int, max_points: Optional[int], seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded random subset of size min(n, max_points)."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_points), replace=False))


def project_2d(embeddings, method: str = "umap", seed: int = 0) -> Tuple[np.ndarray, str]:
    """2-D projection of [N, D] embeddings; returns (xy [N, 2], method actually used:
    "umap" or "pca"). UMAP falls back to PCA when umap-learn is missing or fails."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {x.shape}")
    if method not in ("umap", "pca"):
        raise ValueError(f"method must be 'umap' or 'pca', got {method!r}")
    if method == "umap" and x.shape[0] >= 4:
        try:
            import umap  # umap-learn

            _cache_umap_compilation(umap)
            # Exact neighbours (self first) instead of UMAP's approximate search: as fast, and it
            # spares compiling pynndescent's numba code (~10 s per process on 2 cores). One thread:
            # a few thousand points, and the plot's process runs beside the evaluator's own threads.
            n_neighbors = min(15, x.shape[0] - 1)
            knn = nearest_neighbors(x, x, n_neighbors, threads=1)
            reducer = umap.UMAP(
                n_components=2,
                n_neighbors=n_neighbors,
                min_dist=0.1,
                random_state=seed,
                n_jobs=1,  # what a fixed random_state implies (UMAP warns when asked for more)
                # UMAP's own choice above 10k points; enough for a picture (500 below 10k).
                n_epochs=200,
                precomputed_knn=(*knn, None),
            )
            with warnings.catch_warnings():
                # No search index: we never map new points into this projection.
                warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\] \(knn_search_index\)")
                xy = np.asarray(reducer.fit_transform(x), dtype=np.float32)
            if xy.shape == (x.shape[0], 2) and np.isfinite(xy).all():
                return xy, "umap"
            logger.warning("UMAP returned an unusable projection; using PCA")
        except Exception as e:  # ImportError or any failure inside umap/numba
            logger.warning("UMAP unavailable (%s: %s); using PCA", type(e).__name__, e)
    return _pca_2d(x, seed), "pca"


def _cache_umap_compilation(umap_package) -> None:
    """umap-learn compiles most of its numba functions anew in every process (~2.5 s of one core on a
    3000-point projection) and asks numba to cache only a few: numba's on-disk cache for all of them
    makes that a load from the second projection on a machine. Without a writable cache folder numba
    refuses; then they compile as before."""
    from numba.core.dispatcher import Dispatcher

    for module in (umap_package.umap_, umap_package.layouts):
        for function in vars(module).values():
            if isinstance(function, Dispatcher):
                try:
                    function.enable_caching()
                except RuntimeError:  # "cannot cache function ...: no locator available"
                    return


def _pca_2d(x: np.ndarray, seed: int) -> np.ndarray:
    out = np.zeros((x.shape[0], 2), dtype=np.float32)
    if x.shape[0] < 2:
        return out
    from sklearn.decomposition import PCA

    n_comp = int(min(2, x.shape[1], x.shape[0]))
    xy = PCA(n_components=n_comp, random_state=seed).fit_transform(x)
    out[:, :n_comp] = xy
    return out


def _class_order(labels: np.ndarray) -> List:
    return list(np.unique(labels))


def _label_str(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)


def class_label(c, class_names: Optional[Mapping[str, str]] = None) -> str:
    """How a class is shown: its name in `class_names` ({class id as text: name}, metrics.json's
    "class_names"), else its id (integer-labelled sources: the names are the ids)."""
    text = _label_str(c)
    return str((class_names or {}).get(text, text))


def plot_embedding_2d(
    embeddings,
    labels,
    path: str,
    *,
    method: str = "umap",
    max_points: Optional[int] = 3000,
    seed: int = 0,
    title: Optional[str] = None,
    class_names: Optional[Mapping[str, str]] = None,
) -> Dict[str, object]:
    """Scatter PNG of a 2-D projection coloured by class.

    UMAP on 10k points is slow on few cores, so at most ``max_points`` points (seeded random
    subset) are projected. Returns {"path", "method" ("umap" or "pca"), "num_points"}.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError("embeddings must be [N, D] with N labels")
    keep = subsample(x.shape[0], max_points, seed)
    x, y = x[keep], y[keep]
    xy, used = project_2d(x, method=method, seed=seed)
    name = "UMAP" if used == "umap" else "PCA"
    if method == "umap" and used != "umap":
        name = "PCA (UMAP unavailable)"
    full_title = f"{title + ': ' if title else ''}{name} of {len(y)} embeddings"
    classes = _class_order(y)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 8), dpi=100)
    for i, c in enumerate(classes):
        m = y == c
        ax.scatter(xy[m, 0], xy[m, 1], s=4, alpha=0.7, color=_PALETTE[i % len(_PALETTE)],
                   label=class_label(c, class_names))  # fmt: skip
    ax.set_title(full_title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(classes) <= 30:
        ax.legend(markerscale=3, fontsize=8, loc="best", title="class")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return {"path": path, "method": used, "num_points": int(len(y))}


# The plot's process keeps BLAS and OpenMP (UMAP's spectral start: ARPACK) to one thread: the
# evaluator's threads use every core meanwhile, and OpenBLAS's threads waiting beside them made that
# start take seconds on 2 CPUs. Read by each library as it loads.
_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class _PlotWorker:
    """A process of its own for the 2-D projection: ``python -m triplet_tfx.components.evaluation.plots
    FOLDER [--standby]``. It draws one plot from the inputs put in FOLDER once a line arrives on its
    stdin; on standby it first imports its libraries and loads UMAP's compiled code (a tiny
    projection), so that the plot itself is all that is left to do when the line comes."""

    def __init__(self, standby: bool):
        self.folder = tempfile.mkdtemp(prefix="embedding-2d-")
        with open(os.path.join(self.folder, "log.txt"), "wb") as log:
            self.process: Optional[subprocess.Popen] = subprocess.Popen(
                [sys.executable, "-m", __name__, self.folder] + (["--standby"] if standby else []),
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **_ONE_THREAD},
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, embeddings, labels, options: Dict[str, object]) -> None:
        assert self.process is not None and self.process.stdin is not None
        np.savez(os.path.join(self.folder, "inputs.npz"), embeddings=np.asarray(embeddings), labels=np.asarray(labels))
        with open(os.path.join(self.folder, "options.json"), "w") as f:
            json.dump(options, f)
        try:
            self.process.stdin.write(b"go\n")
            self.process.stdin.close()
        except OSError:  # it has ended already: `finish` reads its exit code and log
            pass

    def finish(self) -> Tuple[int, str, Optional[Dict[str, object]]]:
        """Waits for the process: (exit code, the end of what it said, its result or None)."""
        assert self.process is not None
        code = self.process.wait()
        with open(os.path.join(self.folder, "log.txt"), errors="replace") as f:
            said = f.read()[-2000:].strip()
        drawn = None
        result = os.path.join(self.folder, "result.json")
        if code == 0 and os.path.exists(result):  # none: it ended before its job came
            with open(result) as f:
                drawn = json.load(f)
        self.stop()
        return code, said, drawn

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            if self.process.stdin is not None:
                self.process.stdin.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.process = None


_standby: Optional[_PlotWorker] = None  # the worker `plot_process_on_standby` started, until taken


@contextlib.contextmanager
def plot_process_on_standby() -> Iterator[None]:
    """Starts the 2-D projection's process now, to take its ~2 s of imports and UMAP's compiled code
    while the caller works on one core (a local run: start-up and the data components); the next
    `EmbeddingPlotProcess` takes it. Stopped at the end if none did."""
    global _standby
    worker = _PlotWorker(standby=True)
    _standby = worker
    try:
        yield
    finally:
        if _standby is worker:
            _standby = None
            worker.stop()


class EmbeddingPlotProcess:
    """`plot_embedding_2d(embeddings, labels, path, **options)` in a process of its own (`_PlotWorker`,
    the one on standby if any), started at once; `result()` waits for it and returns the plot's
    result. As a context manager it stops the process if the caller leaves before asking for it.

    UMAP takes seconds of one core (imports, numba code compiled or loaded from numba's cache,
    `_cache_umap_compilation`): in a process of its own that runs while the caller computes the rest
    on the other cores. The process does not import TensorFlow (umap-learn would, for its
    parametric variant, which a projection does not use). PCA takes no time and runs here; should
    the process fail, the plot is drawn here."""

    def __init__(self, embeddings, labels, path: str, **options):
        global _standby
        self._arguments = (embeddings, labels, path)
        self._options = options
        self._drawn: Optional[Dict[str, object]] = None
        self._worker: Optional[_PlotWorker] = None
        if options.get("method", "umap") != "umap":
            self._drawn = plot_embedding_2d(embeddings, labels, path, **options)
            return
        worker, _standby = _standby, None
        if worker is None or not worker.running():
            if worker is not None:
                worker.stop()
            worker = _PlotWorker(standby=False)
        self._worker = worker
        worker.start(embeddings, labels, {"path": path, **options})

    def result(self) -> Dict[str, object]:
        if self._drawn is None:
            assert self._worker is not None
            code, said, drawn = self._worker.finish()
            if drawn is not None:
                if said:
                    logger.info("The 2-D projection's process said: %s", said)
                self._drawn = drawn
            else:
                logger.warning("The 2-D projection's process failed (exit code %s): %s; drawing it here", code, said)
                self._drawn = plot_embedding_2d(*self._arguments, **self._options)
        return self._drawn

    def __enter__(self) -> "EmbeddingPlotProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self._worker is not None:
            self._worker.stop()


def _warm_up(folder: str) -> None:
    """What a first plot costs beyond its own work: the imports, UMAP's compiled code (loaded from
    numba's cache, or compiled), matplotlib's fonts; a tiny plot, drawn and thrown away."""
    points = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    logging.disable(logging.WARNING)  # a UMAP that fails says so when the real plot is drawn
    try:
        plot_embedding_2d(points, np.arange(60) % 3, os.path.join(folder, "warm-up.png"))
    except Exception:  # the real plot will meet the same failure and handle it
        pass
    finally:
        logging.disable(logging.NOTSET)


def _draw_embedding_2d(folder: str, standby: bool) -> None:
    """The process of `_PlotWorker`: its inputs and options from `folder` once a line comes on stdin
    (none: it ends), its result there."""
    for heavy in ("tensorflow", "keras"):
        sys.modules[heavy] = None  # type: ignore[assignment]  # an import of it raises ImportError
    if standby:
        _warm_up(folder)
    if not sys.stdin.buffer.readline():
        return
    inputs = np.load(os.path.join(folder, "inputs.npz"))
    with open(os.path.join(folder, "options.json")) as f:
        options = json.load(f)
    drawn = plot_embedding_2d(inputs["embeddings"], inputs["labels"], options.pop("path"), **options)
    with open(os.path.join(folder, "result.json"), "w") as f:
        json.dump(drawn, f)


def plot_per_class_precision(
    per_class: Mapping[str, Optional[float]],
    path: str,
    *,
    baseline_per_class: Optional[Mapping[str, Optional[float]]] = None,
    title: str = "Precision@1 per class",
    class_names: Optional[Mapping[str, str]] = None,
) -> Dict[str, object]:
    """Bar chart PNG of per-class Precision@1 (candidate, and baseline side by side when
    given). None values (class fully skipped) are drawn as 0 and marked "n/a" in the table.
    Returns {"path"}."""
    classes = _sorted_class_keys(list(per_class) + list(baseline_per_class or {}))
    cand = [_num(per_class.get(c)) for c in classes]
    base = [_num(baseline_per_class.get(c)) for c in classes] if baseline_per_class else None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) + 2), 4.5), dpi=100)
    pos = np.arange(len(classes))
    width = 0.4 if base is not None else 0.8
    ax.bar(pos - (width / 2 if base is not None else 0), cand, width, label="candidate",
           color=_PALETTE[0])  # fmt: skip
    if base is not None:
        ax.bar(pos + width / 2, base, width, label="baseline", color=_PALETTE[7])
        ax.legend(loc="lower right")
    ax.set_xticks(pos)
    ax.set_xticklabels(
        [class_label(c, class_names) for c in classes],
        rotation=90 if class_names and any(len(class_label(c, class_names)) > 4 for c in classes) else 0,
    )
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("Precision@1")
    ax.set_xlabel("class")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return {"path": path}


def plot_calibration(curve: Mapping[str, np.ndarray], chosen: Optional[Mapping[str, float]], path: str, target: float):
    """Precision, recall and F1 of "match" against the distance threshold (calibration.py), with the
    served threshold (`chosen`, for precision `target`) marked. Returns {"path"}."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for key, colour in (("precision", _PALETTE[0]), ("recall", _PALETTE[1]), ("f1", _PALETTE[2])):
        ax.plot(curve["threshold"], curve[key], label=key if key != "f1" else "F1", color=colour)
    if chosen is not None:
        ax.axvline(chosen["threshold"], color=_PALETTE[3], linestyle="--",
                   label=f"served threshold {chosen['threshold']:.4g} (precision >= {target:g})")  # fmt: skip
    ax.set_xlabel("distance threshold (nearest neighbour at most this far: match)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Match threshold calibration on the eval queries")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return {"path": path}


def plot_confusion_matrices(
    matrices: Mapping[str, Tuple[np.ndarray, List]], path: str, class_names: Optional[Mapping[str, str]] = None
) -> Dict[str, object]:
    """Heat map PNG of 1-NN confusion matrices, one panel per model ({"candidate": (counts,
    classes), "baseline": ...}, side by side): colour = fraction of the row's queries, text =
    count (up to 20 classes); axes labelled with the class names (`class_label`). Returns {"path",
    "class_labels": {panel: the axis labels}}."""
    from triplet_tfx.components.evaluation.retrievals import row_normalised

    plt = _pyplot()
    n = len(matrices)
    size = max(4.5, 0.45 * max(len(classes) for _, classes in matrices.values()) + 2)
    fig, axes = plt.subplots(1, n, figsize=(size * n, size), dpi=100, squeeze=False)
    class_labels = {}
    for ax, (name, (counts, classes)) in zip(axes[0], matrices.items()):
        fractions = row_normalised(counts)
        image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
        ticks = np.arange(len(classes))
        ax.set_xticks(ticks)
        shown = class_labels[name] = [class_label(c, class_names) for c in classes]
        ax.set_xticklabels(shown, rotation=90 if len(classes) > 10 or any(len(t) > 4 for t in shown) else 0)
        ax.set_yticks(ticks)
        ax.set_yticklabels(shown)
        ax.set_xlabel("class of the nearest neighbour")
        ax.set_ylabel("query class")
        ax.set_title(f"{name}: 1-NN confusion")
        if len(classes) <= 20:
            for i in range(len(classes)):
                for j in range(len(classes)):
                    if counts[i, j]:
                        ax.text(
                            j,
                            i,
                            str(int(counts[i, j])),
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if fractions[i, j] > 0.5 else "black",
                        )
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the class's queries")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return {"path": path, "class_labels": class_labels}


def plot_worst_retrievals(
    query_images,
    query_labels,
    neighbour_images,
    neighbour_labels,
    path: str,
    title: str,
    class_names: Optional[Mapping[str, str]] = None,
) -> Dict[str, object]:
    """Gallery PNG: one row per query (its image, then its nearest neighbours' images), each
    titled with its class (`class_label`); neighbours of another class framed and titled in red.
    Images are uint8 [n, H, W, C] and [n, k, H, W, C]. Returns {"path", "rows", "captions"}.
    The cells are one image (`gallery_mosaic`) in one Axes: an Axes per cell took ~0.9 s for 8 x 6."""
    plt = _pyplot()
    rows, k = len(query_labels), (neighbour_images.shape[1] if len(query_labels) else 0)
    captions, cells = [], []
    for i in range(rows):
        row = [(query_images[i], f"query: {class_label(query_labels[i], class_names)}", "black")]
        for j in range(k):
            wrong = neighbour_labels[i][j] != query_labels[i]
            row.append(
                (
                    neighbour_images[i, j],
                    f"{j + 1}: {class_label(neighbour_labels[i][j], class_names)}" + (" \u2717" if wrong else ""),
                    "red" if wrong else "green",
                )
            )
        captions.append([caption for _, caption, _ in row])
        cells.append(row)
    fig, ax = plt.subplots(figsize=(1.3 * (k + 1), 1.4 * max(rows, 1) + 0.5), dpi=100)
    ax.set_axis_off()
    if rows:
        mosaic, corners = gallery_mosaic([[(image, colour) for image, _, colour in row] for row in cells])
        ax.imshow(mosaic, interpolation="nearest")
        for row, row_corners in zip(cells, corners):
            for (_, caption, colour), (x, y) in zip(row, row_corners):
                ax.text(x, y, caption, fontsize=8, color=colour, ha="center", va="bottom")
    else:
        ax.set_title("no query with a wrong neighbour", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return {"path": path, "rows": rows, "captions": captions}


_FRAME_RGB = {"black": (0, 0, 0), "green": (0, 128, 0), "red": (220, 0, 0)}


def gallery_mosaic(
    rows: Sequence[Sequence[Tuple[np.ndarray, str]]],
) -> Tuple[np.ndarray, List[List[Tuple[float, float]]]]:
    """One uint8 RGB image of rows of (image [H, W, C], frame colour) cells on white: each image
    framed in its colour (red frames twice as wide), with room above it for a caption. Returns the
    mosaic and, per cell, where its caption goes: (centre x, top y) in the mosaic's pixels."""
    height, width = rows[0][0][0].shape[:2]
    frame = max(1, round(max(height, width) / 28))
    gap_x, gap_y = 2 * frame + max(2, width // 8), 2 * frame + max(4, height // 3)  # gap_y: the caption
    pitch_x, pitch_y = width + gap_x, height + gap_y
    columns = max(len(row) for row in rows)
    mosaic = np.full((len(rows) * pitch_y, columns * pitch_x, 3), 255, np.uint8)
    corners = []
    for r, row in enumerate(rows):
        corners.append([])
        for c, (image, colour) in enumerate(row):
            top, left = r * pitch_y + gap_y - frame, c * pitch_x + gap_x // 2
            wide = 2 * frame if colour == "red" else frame
            mosaic[top - wide : top + height + wide, left - wide : left + width + wide] = _FRAME_RGB[colour]
            pixels = np.asarray(image, np.uint8)
            pixels = pixels[..., :3] if pixels.shape[-1] >= 3 else pixels[..., :1]  # gray: the same in R, G, B
            mosaic[top : top + height, left : left + width] = pixels
            corners[-1].append((left + width / 2 - 0.5, top - wide - 1.5))
    return mosaic, corners


def _num(v) -> float:
    return float(v) if v is not None else 0.0


def _sorted_class_keys(keys: Sequence[str]) -> List[str]:
    uniq = list(dict.fromkeys(keys))

    def key(k):
        try:
            return (0, float(k), "")
        except ValueError:
            return (1, 0.0, k)

    return sorted(uniq, key=key)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    _draw_embedding_2d(sys.argv[1], standby="--standby" in sys.argv[2:])
