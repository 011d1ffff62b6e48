"""components.report: plots decode as PNG, tables and reports carry the values."""

import re
import warnings

import numpy as np
import pytest
from PIL import Image

from triplet_tfx.components.evaluation import plots as P, report as R


def _metrics(p1, per_class, skipped=0):
    return {
        "protocol": "leave_one_out",
        "num_queries": 100,
        "num_references": 100,
        "num_classes": len(per_class),
        "num_queries_skipped": skipped,
        "precision_at_1": p1,
        "recall_at_1": p1,
        "recall_at_10": 0.99,
        "recall_at_5": 0.95,
        "r_precision": 0.5,
        "map_at_r": 0.25,
        "max_r": None,
        "nmi": 0.6,
        "ami": None,
        "per_class_precision_at_1": per_class,
    }


CAND = _metrics(0.9, {"0": 0.8, "1": 1.0, "10": 0.9, "2": None})
BASE = _metrics(0.85, {"0": 0.7, "1": 1.0, "10": 0.95, "2": 0.5}, skipped=3)


def _decode_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return np.asarray(im)


def _data(n=200, d=8, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    x = rng.normal(size=(classes, d))[y] * 3 + rng.normal(size=(n, d))
    return x.astype(np.float32), y


def test_format_metrics_table_candidate_only():
    text = R.format_metrics_table(CAND)
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "candidate"]
    assert "baseline" not in text and "delta" not in text
    assert "0.9000" in text and "0.2500" in text and "n/a" in text  # ami None
    names = [line.split("  ")[0].strip() for line in lines[2:]]
    # Precision@1 first, Recall@K sorted by K (not as strings), counts last.
    assert names[:4] == ["Precision@1", "Recall@1", "Recall@5", "Recall@10"]
    assert names.index("MAP@R") < names.index("queries")
    assert "protocol: leave_one_out" in text


def test_format_metrics_table_with_baseline_and_deltas():
    text = R.format_metrics_table(CAND, BASE)
    assert text.splitlines()[0].split() == ["metric", "candidate", "baseline", "delta"]
    p1 = next(line for line in text.splitlines() if line.startswith("Precision@1"))
    assert p1.split() == ["Precision@1", "0.9000", "0.8500", "+0.0500"]
    skipped = next(line for line in text.splitlines() if line.startswith("queries skipped"))
    assert skipped.split()[-3:] == ["0", "3", "-3"]


def test_write_report_markdown_and_html(tmp_path):
    paths = R.write_report(str(tmp_path), CAND, BASE, notes=["candidate: model/1"])
    md = open(paths["markdown"]).read()
    assert "| metric | candidate | baseline | delta |" in md
    assert "| Precision@1 | 0.9000 | 0.8500 | +0.0500 |" in md
    assert "| 10 | 0.9000 | 0.9500 | -0.0500 |" in md  # per-class table
    assert "| 2 | n/a | 0.5000 | n/a |" in md
    assert "candidate: model/1" in md
    page = open(paths["html"]).read()
    assert page.startswith("<!DOCTYPE html>") and "<td>+0.0500</td>" in page

    paths = R.write_report(str(tmp_path / "solo"), CAND)
    md = open(paths["markdown"]).read()
    assert "| metric | candidate |" in md and "baseline" not in md and "delta" not in md
    assert "| Precision@1 | 0.9000 |" in md


def test_per_class_chart_png(tmp_path):
    out = R.plot_per_class_precision(
        CAND["per_class_precision_at_1"], str(tmp_path / "bars.png"),
        baseline_per_class=BASE["per_class_precision_at_1"],
    )  # fmt: skip
    img = _decode_png(out["path"])
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert R._sorted_class_keys(["10", "2", "b", "1"]) == ["1", "2", "10", "b"]


def test_scatter_pca_png(tmp_path):
    x, y = _data()
    out = R.plot_embedding_2d(x, y, str(tmp_path / "s.png"), method="pca", max_points=150)
    assert out["method"] == "pca" and out["num_points"] == 150
    img = _decode_png(out["path"])
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 4  # several colours drawn


def test_scatter_falls_back_to_pca_when_umap_fails(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_umap(name, *args, **kwargs):
        if name == "umap" or name.startswith("umap."):
            raise ImportError("umap blocked by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_umap)
    x, y = _data(n=60)
    xy, used = R.project_2d(x, method="umap")
    assert used == "pca" and xy.shape == (60, 2)
    out = R.plot_embedding_2d(x, y, str(tmp_path / "s.png"), method="umap")
    assert out["method"] == "pca"
    _decode_png(out["path"])


@pytest.mark.slow
def test_umap_when_installed(tmp_path):
    pytest.importorskip("umap")
    x, y = _data(n=300)
    out = R.plot_embedding_2d(x, y, str(tmp_path / "u.png"), method="umap", max_points=250)
    assert out["method"] == "umap" and out["num_points"] == 250
    _decode_png(out["path"])


@pytest.mark.slow
def test_umap_keeps_separated_classes_apart_without_warnings():
    """UMAP on exact neighbours: well-separated classes stay separated in 2-D (each point's
    nearest 2-D neighbour is of its class), deterministically for a seed, and without the
    warnings our settings used to cause (n_jobs, no search index)."""
    pytest.importorskip("umap")
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(5), 60)
    x = (rng.normal(size=(5, 32)) * 4)[y] + rng.normal(size=(300, 32))
    # Recorded, both calls: scikit-learn also warns that the 5 classes' neighbour graph is not
    # connected, which is true of such data and not of our settings.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xy, used = R.project_2d(x, method="umap", seed=3)
        again = R.project_2d(x, method="umap", seed=3)[0]
    assert not [w for w in caught if re.search("n_jobs|knn_search_index", str(w.message))]
    assert used == "umap" and xy.shape == (300, 2)
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).mean() >= 0.98
    np.testing.assert_array_equal(again, xy)


@pytest.mark.slow
def test_umap_compiled_code_is_cached_and_projects_the_same(tmp_path):
    """Two processes project the same points: the first writes umap-learn's compiled functions to
    numba's cache (here NUMBA_CACHE_DIR), the second loads them, and both draw the same projection."""
    pytest.importorskip("umap")
    import os
    import subprocess
    import sys

    x, _ = _data(n=300)
    np.save(tmp_path / "x.npy", x)
    program = (
        "import sys, numpy as np\n"
        "from triplet_tfx.components.evaluation import plots\n"
        "xy, used = plots.project_2d(np.load(sys.argv[1]), method='umap', seed=3)\n"
        "assert used == 'umap'\n"
        "np.save(sys.argv[2], xy)\n"
    )
    cache = tmp_path / "numba-cache"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    for run in ("first", "second"):
        subprocess.run(
            [sys.executable, "-c", program, str(tmp_path / "x.npy"), str(tmp_path / f"{run}.npy")], env=env, check=True
        )
        if run == "first":
            cached = {p.name.split("-")[0] for p in cache.rglob("*.nbi")}
            assert {"umap_.smooth_knn_dist", "umap_.compute_membership_strengths"} <= cached, cached
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), np.load(tmp_path / "second.npy"))


def _drawn_here(*args, **options):
    """plot_embedding_2d in this process with one BLAS thread, as the plot process runs it: with more,
    OpenBLAS rounds the neighbours' distances differently on some CPUs (seen with AVX2 only), and
    UMAP's layout follows."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return R.plot_embedding_2d(*args, **options)


@pytest.mark.slow
def test_the_plot_process_draws_what_plot_embedding_2d_draws(tmp_path):
    pytest.importorskip("umap")
    x, y = _data(n=300)
    names = {str(c): f"class {c}" for c in np.unique(y)}
    here = _drawn_here(x, y, str(tmp_path / "here.png"), method="umap", max_points=250, class_names=names)
    with R.EmbeddingPlotProcess(
        x, y, str(tmp_path / "there.png"), method="umap", max_points=250, class_names=names
    ) as process:
        there = process.result()
    assert there == {**here, "path": str(tmp_path / "there.png")} and there["method"] == "umap"
    np.testing.assert_array_equal(_decode_png(there["path"]), _decode_png(here["path"]))


def _program(folder, body):
    """An executable that runs `body` (sh), whatever its arguments: the plot process's stand-in."""
    path = folder / "program"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_a_failed_plot_process_is_drawn_here(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(P.sys, "executable", _program(tmp_path, "echo no luck; exit 1"))
    monkeypatch.setattr(P, "project_2d", lambda x, method="umap", seed=0: (R._pca_2d(x, seed), "pca"))
    x, y = _data(n=60)
    with R.EmbeddingPlotProcess(x, y, str(tmp_path / "s.png"), method="umap") as process:
        drawn = process.result()
        folder = process._worker.folder
    assert drawn["method"] == "pca" and drawn["num_points"] == 60
    _decode_png(drawn["path"])
    assert "process failed (exit code 1): no luck" in caplog.text
    assert not P.os.path.exists(folder)


def test_leaving_early_stops_the_plot_process(tmp_path, monkeypatch):
    monkeypatch.setattr(P.sys, "executable", _program(tmp_path, "exec sleep 600"))
    x, y = _data(n=60)
    with R.EmbeddingPlotProcess(x, y, str(tmp_path / "s.png"), method="umap") as process:
        running, folder = process._worker.process, process._worker.folder
        assert running.poll() is None
    assert running.poll() is not None and not P.os.path.exists(folder)
    assert not (tmp_path / "s.png").exists()


@pytest.mark.slow
def test_the_plot_process_on_standby_draws_the_next_plot(tmp_path):
    pytest.importorskip("umap")
    x, y = _data(n=300)
    here = _drawn_here(x, y, str(tmp_path / "here.png"), method="umap", max_points=250)
    with P.plot_process_on_standby():
        standby = P._standby
        with R.EmbeddingPlotProcess(x, y, str(tmp_path / "there.png"), method="umap", max_points=250) as process:
            assert process._worker is standby and P._standby is None
            there = process.result()
        assert standby.process is None and not P.os.path.exists(standby.folder)
    assert there == {**here, "path": str(tmp_path / "there.png")}
    np.testing.assert_array_equal(_decode_png(there["path"]), _decode_png(here["path"]))


def test_a_plot_process_on_standby_that_nothing_asked_for_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(P.sys, "executable", _program(tmp_path, "exec sleep 600"))
    with P.plot_process_on_standby():
        standby = P._standby
        running = standby.process
        assert running.poll() is None
    assert running.poll() is not None and P._standby is None and not P.os.path.exists(standby.folder)


def test_a_plot_process_on_standby_that_ended_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(P.sys, "executable", _program(tmp_path, "exit 0"))
    x, y = _data(n=60)
    with P.plot_process_on_standby():
        ended = P._standby
        ended.process.wait()
        monkeypatch.setattr(P.sys, "executable", _program(tmp_path, "exec sleep 600"))
        with R.EmbeddingPlotProcess(x, y, str(tmp_path / "s.png"), method="umap") as process:
            assert process._worker is not ended and process._worker.process.poll() is None
        assert ended.process is None and not P.os.path.exists(ended.folder)


def test_pca_is_drawn_at_once(tmp_path):
    x, y = _data(n=60)
    with R.EmbeddingPlotProcess(x, y, str(tmp_path / "s.png"), method="pca") as process:
        assert (tmp_path / "s.png").is_file()
        assert process.result()["method"] == "pca"


def test_make_report_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "project_2d", lambda x, method="umap", seed=0: (R._pca_2d(x, seed), "pca"))
    x, y = _data(n=100)
    out = R.make_report(str(tmp_path), x, y, CAND, BASE)
    for key in ("scatter", "per_class", "markdown", "html"):
        assert (tmp_path / out[key].split("/")[-1]).is_file()
    _decode_png(out["scatter"])
    _decode_png(out["per_class"])
    md = open(out["markdown"]).read()
    assert f"]({R.SCATTER_FILENAME})" in md and f"]({R.PER_CLASS_FILENAME})" in md
    assert "(PCA)" in md
    assert f"src='{R.PER_CLASS_FILENAME}'" in open(out["html"]).read()


def test_subsample_is_seeded_and_sorted():
    a = R.subsample(10000, 3000, seed=1)
    assert len(a) == 3000 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, R.subsample(10000, 3000, seed=1))
    np.testing.assert_array_equal(R.subsample(5, 3000), np.arange(5))


def test_gallery_and_confusion_in_the_report_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "project_2d", lambda x, method="umap", seed=0: (R._pca_2d(x, seed), "pca"))
    x, y = _data(n=60)
    rng = np.random.default_rng(0)
    gallery = {
        "query_images": rng.integers(0, 255, (3, 8, 8, 1), dtype=np.uint8),
        "query_labels": np.array([0, 1, 2]),
        "neighbour_images": rng.integers(0, 255, (3, 4, 8, 8, 1), dtype=np.uint8),
        "neighbour_labels": np.array([[1, 0, 0, 0], [1, 2, 1, 1], [0, 0, 2, 2]]),
    }
    confusion = {"candidate": (np.array([[5, 1], [0, 6]]), [0, 1]), "baseline": (np.array([[4, 2], [1, 5]]), [0, 1])}
    out = R.make_report(
        str(tmp_path), x, y, CAND, BASE, confusion=confusion, galleries={"candidate": gallery, "baseline": gallery}
    )
    for name in (*R.GALLERY_FILENAMES.values(), R.CONFUSION_FILENAME):
        image = _decode_png(tmp_path / name)
        assert image.shape[0] > 100 and image.shape[1] > 100
    page = open(out["html"]).read()
    # Both galleries in one row of the page, then the confusion heat map.
    row = (
        f"<div class='row'><img src='{R.GALLERY_FILENAMES['candidate']}'"
        f" alt='{R.GALLERY_CAPTION}'><img src='{R.GALLERY_FILENAMES['baseline']}'"
    )
    assert row in page
    # Pictures first, then the numbers: galleries, confusion, metrics table, then the other figures.
    order = [
        page.index(R.GALLERY_FILENAMES["baseline"]),
        page.index(f"src='{R.CONFUSION_FILENAME}'"),
        page.index("<h2>Metrics</h2>"),
        page.index(f"src='{R.SCATTER_FILENAME}'"),
    ]
    assert order == sorted(order)
    md = open(out["markdown"]).read()
    assert f"]({R.GALLERY_FILENAMES['candidate']}) ![" in md and f"]({R.CONFUSION_FILENAME})" in md
    # Rewritten from the files alone (as for a reused evaluation), the figures stay referenced.
    page = open(R.write_report(str(tmp_path), CAND, None)["html"]).read()
    for name in (*R.GALLERY_FILENAMES.values(), R.CONFUSION_FILENAME, R.SCATTER_FILENAME):
        assert f"src='{name}'" in page


def test_confusion_heat_map_colours_follow_the_counts(tmp_path):
    # A perfect 2-class model: the diagonal cells are dark, the off-diagonal ones white.
    out = R.plot_confusion_matrices({"candidate": (np.array([[9, 0], [0, 9]]), [0, 1])}, str(tmp_path / "c.png"))
    image = _decode_png(out["path"])[..., :3].astype(int)
    dark_blue = (image[..., 2] > image[..., 0] + 60) & (image[..., 0] < 60)  # "Blues" near 1.0: (8, 48, 107)
    assert dark_blue.sum() > 1000  # two diagonal cells of many pixels each


NAMES = {"0": "ant", "1": "bee", "2": "cat", "10": "dog"}


def test_report_shows_class_names(tmp_path):
    cand, base = {**CAND, "class_names": NAMES}, {**BASE, "class_names": NAMES}
    paths = R.write_report(str(tmp_path), cand, base)
    md = open(paths["markdown"]).read()
    for name, value in (("ant", "0.8000"), ("bee", "1.0000"), ("dog", "0.9000")):
        assert any(line.startswith(f"| {name} | {value}") for line in md.splitlines()), name
    page = open(paths["html"]).read()
    assert "<td>cat</td>" in page and "<td>10</td>" not in page


def test_integer_classes_are_shown_by_their_ids(tmp_path):
    ids = {c: c for c in ("0", "1", "2", "10")}
    md = open(R.write_report(str(tmp_path), {**CAND, "class_names": ids}, None)["markdown"]).read()
    assert "| 10 | 0.9000 |" in md and "| 0 | 0.8000 |" in md


def test_confusion_axes_and_gallery_captions_use_class_names(tmp_path):
    out = R.plot_confusion_matrices(
        {"candidate": (np.array([[9, 1], [0, 9]]), [0, 1])}, str(tmp_path / "c.png"), class_names=NAMES
    )
    assert out["class_labels"] == {"candidate": ["ant", "bee"]}
    assert R.plot_confusion_matrices({"candidate": (np.eye(2, dtype=int), [0, 1])}, str(tmp_path / "d.png"))[
        "class_labels"
    ] == {"candidate": ["0", "1"]}
    rng = np.random.default_rng(0)
    out = R.plot_worst_retrievals(
        rng.integers(0, 255, (1, 8, 8, 1), dtype=np.uint8),
        np.array([0]),
        rng.integers(0, 255, (1, 2, 8, 8, 1), dtype=np.uint8),
        np.array([[1, 0]]),
        str(tmp_path / "g.png"),
        title="t",
        class_names=NAMES,
    )
    assert out["captions"] == [["query: ant", "1: bee \u2717", "2: ant"]]


def test_gallery_mosaic_places_each_image_whole_inside_its_frame_with_room_for_its_caption():
    gray = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
    colour = np.random.default_rng(1).integers(0, 255, (28, 28, 3), dtype=np.uint8)
    mosaic, corners = P.gallery_mosaic([[(gray, "black"), (colour, "red")], [(colour, "green")]])
    assert mosaic.dtype == np.uint8 and mosaic.shape[2] == 3
    assert len(corners) == 2 and len(corners[0]) == 2 and len(corners[1]) == 1
    for (x, y), image, rgb, frame in (
        (corners[0][0], gray, (0, 0, 0), 1),
        (corners[0][1], colour, (220, 0, 0), 2),
        (corners[1][0], colour, (0, 128, 0), 1),
    ):
        left, top = int(x + 0.5 - 14), int(y + 1.5 + frame)  # caption point: centre x, just above the frame
        np.testing.assert_array_equal(mosaic[top : top + 28, left : left + 28], np.broadcast_to(image, (28, 28, 3)))
        assert (mosaic[top - frame : top, left : left + 28] == rgb).all()  # the frame above the image
        assert (mosaic[top - frame - 1, left : left + 28] == 255).all()  # white above the frame: the caption
    second_column = int(corners[0][1][0] + 0.5 - 14) - 2
    assert (mosaic[int(corners[1][0][1]) :, second_column:] == 255).all()  # the short row's missing cell: white


def test_unseen_classes_line_names_the_classes():
    metrics = {"eval_classes": [2, 10], "train_classes": [0, 1], "class_names": NAMES}
    assert R.unseen_classes_line(metrics) == (
        "Unseen classes: eval classes 2,10 (cat, dog) were not in training "
        "(train classes 0-1 (ant, bee)); classes_seen_in_training: false"
    )
    metrics["class_names"] = {c: c for c in NAMES}
    assert "(cat, dog)" not in R.unseen_classes_line(metrics)
