"""Evaluation report: Markdown/HTML report (Jinja2 templates in ``templates/``) and a
plain-text metrics table for the terminal; ``make_report`` also draws the plots (``plots.py``).

The metrics dicts are those of ``components.metrics.evaluate_embeddings``.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import jinja2
import numpy as np

from triplet_tfx.components import contract
from triplet_tfx.components.class_split import format_classes

# The plots, re-exported: callers use them as `report.plot_...`.
from triplet_tfx.components.evaluation.plots import (  # noqa: F401
    EmbeddingPlotProcess,
    _pca_2d,
    _sorted_class_keys,
    class_label,
    plot_calibration,
    plot_confusion_matrices,
    plot_embedding_2d,
    plot_per_class_precision,
    plot_worst_retrievals,
    project_2d,
    subsample,
)

SCATTER_FILENAME = "embedding_2d.png"
PER_CLASS_FILENAME = "per_class_precision_at_1.png"
CALIBRATION_FILENAME = "match_threshold.png"
CONFUSION_FILENAME = "confusion_matrix_1nn.png"
CONFUSION_CAPTION = "1-nearest-neighbour confusion matrix (colour: fraction of the query class; text: count)"
GALLERY_CAPTION = "Worst retrievals: query, then its nearest neighbours (wrong class in red)"
GALLERY_FILENAMES = {"candidate": "worst_retrievals.png", "baseline": "worst_retrievals_baseline.png"}


# Row order of the metrics table; recall_at_<k> rows are inserted sorted by k.
_HEAD_KEYS = ("precision_at_1",)
_TAIL_KEYS = ("r_precision", "map_at_r", "nmi", "ami")
_COUNT_KEYS = ("num_queries", "num_queries_skipped", "num_references", "num_classes")
_LABELS = {
    "precision_at_1": "Precision@1",
    "r_precision": "R-Precision",
    "map_at_r": "MAP@R",
    "nmi": "NMI",
    "ami": "AMI",
    "num_queries": "queries",
    "num_queries_skipped": "queries skipped",
    "num_references": "references",
    "num_classes": "classes",
    "match_threshold": "match threshold (distance)",
    "match_recall": "recall at the match threshold",
    "open_set_rejection_rate": "unseen-class queries rejected",
}

# report.md.j2 and report.html.j2 (autoescaped), shipped as package data (setup.py).
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)


def _metric_rows(candidate: Mapping, baseline: Optional[Mapping]) -> List[str]:
    keys = set(candidate) | set(baseline or {})
    recall = sorted((k for k in keys if re.fullmatch(r"recall_at_\d+", k)), key=lambda k: int(k[10:]))
    ordered = [k for k in _HEAD_KEYS if k in keys] + recall
    ordered += [k for k in _TAIL_KEYS if k in keys]
    # Any other scalar metric, then the counts.
    known = set(ordered) | set(_COUNT_KEYS)
    for k in sorted(keys - known):
        v = candidate.get(k, (baseline or {}).get(k))
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "max_r":
            ordered.append(k)
    ordered += [k for k in _COUNT_KEYS if k in keys]
    return ordered


def metric_label(key: str) -> str:
    if key in _LABELS:
        return _LABELS[key]
    m = re.fullmatch(r"recall_at_(\d+)", key)
    if m:
        return f"Recall@{m.group(1)}"
    return key


def _fmt(v, count: bool) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if count else f"{float(v):.4f}"
    return str(v)


def _delta(c, b, count: bool) -> str:
    if not isinstance(c, (int, float, np.number)) or not isinstance(b, (int, float, np.number)):
        return "n/a"
    d = float(c) - float(b)
    return f"{int(d):+d}" if count else f"{d:+.4f}"


def _table_rows(candidate: Mapping, baseline: Optional[Mapping]) -> List[List[str]]:
    rows = []
    for k in _metric_rows(candidate, baseline):
        count = k in _COUNT_KEYS
        row = [metric_label(k), _fmt(candidate.get(k), count)]
        if baseline is not None:
            row += [_fmt(baseline.get(k), count), _delta(candidate.get(k), baseline.get(k), count)]
        rows.append(row)
    return rows


def _header(baseline) -> List[str]:
    return ["metric", "candidate"] + (["baseline", "delta"] if baseline is not None else [])


def format_metrics_table(candidate: Mapping, baseline: Optional[Mapping] = None) -> str:
    """Plain-text table of the scalar metrics (candidate, and baseline + delta when given),
    for the terminal."""
    header = _header(baseline)
    rows = _table_rows(candidate, baseline)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first] + rest).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    proto = candidate.get("protocol")
    if proto:
        out.append(f"protocol: {proto}")
    return "\n".join(out)


def verdict_line(blessed: Optional[bool], already_pushed: bool, message: str) -> str:
    """What became of the model, in one line: the evaluator's log line and the run summary's alike."""
    if already_pushed:
        return f"Model already in production (blessed and pushed by an earlier run): {message}"
    return f"Model {'BLESSED' if blessed else 'NOT BLESSED'}: {message}"


def unseen_classes_line(metrics: Mapping) -> str:
    """One line for reports and the run summary under unseen-class evaluation."""
    names = metrics.get("class_names") or {}
    return (
        f"Unseen classes: eval classes {format_classes(metrics['eval_classes'])}"
        f"{_names_of(metrics['eval_classes'], names)} were not in training "
        f"(train classes {format_classes(metrics['train_classes'])}{_names_of(metrics['train_classes'], names)}); "
        f"classes_seen_in_training: false"
        + (
            f"; {metrics['open_set_rejection_rate']:.1%} of their queries answered 'no match' by the served index"
            if metrics.get("open_set_rejection_rate") is not None
            else ""
        )
    )


def _names_of(ids: Sequence[int], names: Mapping[str, str], most: int = 10) -> str:
    """ " (cat, dog, ...)": the names of classes, when they are not just their ids."""
    shown = [names[str(i)] for i in ids if str(i) in names]
    if not shown or all(names[str(i)] == str(i) for i in ids if str(i) in names):
        return ""
    return " (" + ", ".join(shown[:most]) + (", ..." if len(shown) > most else "") + ")"


def report_class_names(candidate: Mapping, baseline: Optional[Mapping] = None) -> Dict[str, str]:
    """{class id as text: name} of metrics.json's "class_names" (the candidate's, then the baseline's)."""
    return {**((baseline or {}).get("class_names") or {}), **(candidate.get("class_names") or {})}


def _per_class_rows(candidate: Mapping, baseline: Optional[Mapping]) -> List[List[str]]:
    cp = candidate.get("per_class_precision_at_1") or {}
    bp = (baseline or {}).get("per_class_precision_at_1") or {}
    names = report_class_names(candidate, baseline)
    rows = []
    for c in _sorted_class_keys(list(cp) + list(bp)):
        row = [class_label(c, names), _fmt(cp.get(c), False)]
        if baseline is not None:
            row += [_fmt(bp.get(c), False), _delta(cp.get(c), bp.get(c), False)]
        rows.append(row)
    return rows


def write_report(
    out_dir: str,
    candidate_metrics: Mapping,
    baseline_metrics: Optional[Mapping] = None,
    *,
    title: str = "Embedding evaluation",
    figures: Optional[Mapping[str, str]] = None,
    notes: Optional[Sequence[str]] = None,
) -> Dict[str, str]:
    """Write ``report.md`` and ``report.html`` into ``out_dir``: the metrics table (candidate,
    and baseline + delta columns when ``baseline_metrics`` is given), the per-class
    Precision@1 table and the figures.

    Args:
      figures: {caption: path, or a list of paths shown side by side}; paths inside ``out_dir``
        are linked relatively. When None, the standard figure files of this module found in
        ``out_dir`` are used.
      notes: extra lines (e.g. model URIs) listed under the title.

    Returns:
      {"markdown": path, "html": path}.
    """
    os.makedirs(out_dir, exist_ok=True)
    if figures is None:
        figures = {}
        for caption, fnames in (
            (GALLERY_CAPTION, tuple(GALLERY_FILENAMES.values())),
            (CONFUSION_CAPTION, (CONFUSION_FILENAME,)),
            ("2-D projection of the embeddings", (SCATTER_FILENAME,)),
            ("Precision@1 per class", (PER_CLASS_FILENAME,)),
            ("Match threshold: precision, recall and F1 against the distance threshold", (CALIBRATION_FILENAME,)),
        ):
            found = [f for f in fnames if os.path.isfile(os.path.join(out_dir, f))]
            if found:
                figures[caption] = found
    rel = {}
    for caption, paths_ in figures.items():
        rel[caption] = []
        for p in [paths_] if isinstance(paths_, str) else paths_:  # several paths: side by side
            ap = os.path.abspath(os.path.join(out_dir, p))
            r = os.path.relpath(ap, os.path.abspath(out_dir))
            rel[caption].append(r if not r.startswith("..") else ap)

    header = _header(baseline_metrics)
    rows = _table_rows(candidate_metrics, baseline_metrics)
    pc_header = ["class", "candidate"] + (["baseline", "delta"] if baseline_metrics is not None else [])
    pc_rows = _per_class_rows(candidate_metrics, baseline_metrics)
    info = []
    if candidate_metrics.get("protocol"):
        info.append(f"Protocol: {candidate_metrics['protocol']}")
    if baseline_metrics is not None and baseline_metrics.get("protocol") not in (
        None,
        candidate_metrics.get("protocol"),
    ):
        info.append(f"Baseline protocol: {baseline_metrics['protocol']}")
    if candidate_metrics.get("classes_seen_in_training") is False:
        info.append(unseen_classes_line(candidate_metrics))
    info += list(notes or [])

    # The pictures people look at before numbers (worst retrievals, confusion) come first.
    first = [(c, rel[c]) for c in rel if c in (GALLERY_CAPTION, CONFUSION_CAPTION)]
    later = [(c, rel[c]) for c in rel if c not in (GALLERY_CAPTION, CONFUSION_CAPTION)]
    context = {
        "title": title,
        "info": info,
        "first": first,
        "later": later,
        "header": header,
        "rows": rows,
        "pc_header": pc_header,
        "pc_rows": pc_rows,
    }
    paths = {
        "markdown": os.path.join(out_dir, contract.MARKDOWN_REPORT_FILE),
        "html": os.path.join(out_dir, contract.HTML_REPORT_FILE),
    }
    for kind, template in (("markdown", "report.md.j2"), ("html", "report.html.j2")):
        with open(paths[kind], "w", encoding="utf-8") as f:
            f.write(_TEMPLATES.get_template(template).render(context))
    return paths


def make_report(
    out_dir: str,
    embeddings,
    labels,
    candidate_metrics: Mapping,
    baseline_metrics: Optional[Mapping] = None,
    *,
    title: str = "Embedding evaluation",
    method: str = "umap",
    max_points: int = 3000,
    seed: int = 0,
    notes: Optional[Sequence[str]] = None,
    confusion: Optional[Mapping[str, Tuple[np.ndarray, List]]] = None,
    galleries: Optional[Mapping[str, Mapping[str, np.ndarray]]] = None,
) -> Dict[str, object]:
    """Everything at once: the worst-retrieval galleries, the 1-NN confusion heat map, the 2-D
    scatter and per-class chart PNGs, then ``write_report``.

    confusion: {"candidate": (counts, classes), "baseline": ...} (`retrievals.confusion_matrix`).
    galleries: {"candidate": {...}, "baseline": {...}}, each with query_images, query_labels,
      neighbour_images, neighbour_labels (see `plot_worst_retrievals`).
    Returns {"scatter", "per_class", "markdown", "html" (paths), "projection" ("umap"/"pca")}."""
    figures = {}
    names = report_class_names(candidate_metrics, baseline_metrics)
    if galleries:
        figures[GALLERY_CAPTION] = [
            os.path.basename(
                plot_worst_retrievals(
                    gallery["query_images"],
                    gallery["query_labels"],
                    gallery["neighbour_images"],
                    gallery["neighbour_labels"],
                    os.path.join(out_dir, GALLERY_FILENAMES[name]),
                    title=f"{name}: worst retrievals",
                    class_names=names,
                )["path"]
            )
            for name, gallery in galleries.items()
        ]
    if confusion:
        plot_confusion_matrices(confusion, os.path.join(out_dir, CONFUSION_FILENAME), class_names=names)
        figures[CONFUSION_CAPTION] = CONFUSION_FILENAME
    scatter = plot_embedding_2d(
        embeddings, labels, os.path.join(out_dir, SCATTER_FILENAME),
        method=method, max_points=max_points, seed=seed, class_names=names,
    )  # fmt: skip
    bars = plot_per_class_precision(
        candidate_metrics.get("per_class_precision_at_1") or {},
        os.path.join(out_dir, PER_CLASS_FILENAME),
        baseline_per_class=(baseline_metrics or {}).get("per_class_precision_at_1"),
        class_names=names,
    )
    figures[f"2-D projection of the embeddings ({scatter['method'].upper()})"] = SCATTER_FILENAME
    figures["Precision@1 per class"] = PER_CLASS_FILENAME
    paths = write_report(out_dir, candidate_metrics, baseline_metrics, title=title, figures=figures, notes=notes)
    return {
        "scatter": scatter["path"],
        "per_class": bars["path"],
        "markdown": paths["markdown"],
        "html": paths["html"],
        "projection": scatter["method"],
    }
