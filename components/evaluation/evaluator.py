"""EmbeddingEvaluator: judges a model's embedding space, against a blessed baseline if there is one.

A thin TFX component around `metrics` (the math), `projector` (Embedding Projector files)
and `report` (plots and the report). It embeds the eval split through the exported serving
signature, exactly as a client of TF Serving would, so the metrics are those of the model
that gets pushed. TFX's own Evaluator (TFMA) judges classifiers, not embedding spaces.

Classes are shown by name (the model's class names, `signatures.read_class_names`: an encoded source's
class-name vocabulary, or the ids as text) in the report, the confusion matrix, the gallery, the
projector's meta.tsv ("class_name" column) and metrics.json ("class_names": {id: name}). The pictures
of encoded examples are decoded by the image function (`images.decode_to_pixels`, traced as the
Transform graph runs it) at the training shape.

Outputs, in the ModelEvaluation folder:
  metrics.json            candidate metrics (and `baseline` metrics when compared)
  report.md, report.html  metrics table, candidate vs baseline; embedding_2d.png; per_class_precision.png
  calibration.csv         the match threshold's calibration curve (calibration.py), match_threshold.png its plot;
                          metrics.json's "match_threshold" is what the served `match` signature uses
  tensorboard/            the metrics as scalars, and vecs.tsv, meta.tsv, sprite.png,
                          projector_config.pbtxt for the Embedding Projector (`tensorboard --logdir <it>`)
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tfx.components.evaluator import constants
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Examples, Model, ModelBlessing, ModelEvaluation
from tfx.utils import path_utils

from triplet_tfx.components import ivf_index, projector
from triplet_tfx.components.config import EvalConfig, PipelineConfig, ServingConfig
from triplet_tfx.components.contract import (
    ALREADY_PUSHED_KEY,
    INDEX_RECALL_AT_10,
    MATCH_THRESHOLD,
    METRICS_FILE,
    TENSORBOARD_DIR,
)
from triplet_tfx.components.evaluation import calibration, metrics, report, retrievals
from triplet_tfx.components.evaluation.report import verdict_line
from triplet_tfx.components.examples_io import embed, model_label, parse_examples, read_split
from triplet_tfx.components.progress import Progress
from triplet_tfx.components.signatures import read_class_names

logger = logging.getLogger(__name__)
# The report's gallery: the worst-retrieved queries and their nearest neighbours.
GALLERY_QUERIES, GALLERY_NEIGHBOURS = 8, 5
# Next to the evaluation folders: {result_key: evaluation folder} of every model evaluated.
RESULT_INDEX_DIR = "results_by_key"


def model_class_names(model: Model) -> Optional[List[str]]:
    """The class names by class id that the model's SavedModel carries (None: a model without them)."""
    return read_class_names(path_utils.serving_model_path(model.uri))


def class_name_map(class_names: Optional[List[str]], labels) -> Dict[str, str]:
    """{class id as text: name} of the classes in `labels` (metrics.json's "class_names"); an id the
    names do not cover, or every id without names, is named by itself."""
    names = class_names or []
    ids = sorted({int(v) for v in np.asarray(labels).reshape(-1).tolist()})
    return {str(i): names[i] if 0 <= i < len(names) else str(i) for i in ids}


def blessing_message(reasons: List[str], already_pushed: bool) -> str:
    """The blessing's message: the checks' outcomes, and for the model already in production (blessed
    and pushed by an earlier run) that there is nothing new to push."""
    return "; ".join(list(reasons) + (["nothing new to push"] if already_pushed else []))


def blessing_decision(candidate: Dict, baseline: Optional[Dict], rule: EvalConfig) -> Tuple[bool, List[str]]:
    """(blessed, reasons): every lower bound met and, given a baseline, no regression beyond tolerance."""
    reasons, blessed = [], True
    for name, bound in sorted(rule.lower_bounds.items()):
        value = candidate.get(name)
        ok = value is not None and value >= bound
        blessed &= ok
        reasons.append(
            f"{name} {value:.4f} {'>=' if ok else '<'} threshold {bound:.4f}"
            if value is not None
            else f"{name} unavailable (threshold {bound:.4f})"
        )
    if baseline is not None:
        for name in rule.compared_metrics:
            drop = baseline[name] - candidate[name]
            ok = drop <= rule.max_regression + 1e-9  # float rounding of equal drops
            blessed &= ok
            reasons.append(
                f"{name} {candidate[name]:.4f} vs baseline {baseline[name]:.4f}: "
                + ("within" if ok else "regression beyond")
                + f" tolerance {rule.max_regression:.4f}"
            )
    return blessed, reasons


def evaluate_model(
    model: Model,
    query_embeddings: np.ndarray,
    query_labels: np.ndarray,
    reference_embeddings: Optional[np.ndarray],
    reference_labels: Optional[np.ndarray],
    rule: EvalConfig,
    background: ThreadPoolExecutor,
):
    """(metrics, per-query details, gallery neighbours [Q, k], clustering) of one model's embeddings
    under the configured protocol. The metrics include the 1-NN confusion matrix ("confusion_1nn").
    One nearest-neighbour search per model: the gallery's neighbours come from the metrics' search.
    `clustering` is the metrics' (nmi, ami) to come: K-means in `background`, which runs beside the
    caller's pictures and files (one core's Python) once the search has used every core."""
    with Progress(
        f"Nearest neighbours and metrics of model {model_label(model)}", len(query_labels), "queries"
    ) as progress:
        result, per_query = metrics.evaluate_embeddings(
            query_embeddings,
            query_labels,
            reference_embeddings,
            reference_labels,
            ks=rule.recall_ks,
            clustering=False,
            return_per_query=True,
            progress=progress.advance,
            neighbours=GALLERY_NEIGHBOURS,
        )
    clustering = background.submit(metrics.clustering_scores, query_embeddings, query_labels)
    labels_ = query_labels if reference_embeddings is None else reference_labels
    neighbours = per_query.get("neighbour_indices", np.zeros((len(query_labels), 0), np.int64))
    kept = ~per_query["skipped"] & (per_query["nearest_index"] >= 0)
    counts, classes = retrievals.confusion_matrix(
        query_labels[kept],
        labels_[per_query["nearest_index"][kept]],
        classes=sorted(set(query_labels.tolist()) | set(labels_.tolist())),
    )
    result["confusion_1nn"] = {"classes": [int(c) for c in classes], "counts": counts.tolist()}
    return result, per_query, neighbours, clustering


def match_calibration(per_query: Dict, match_precision: float, folder: Optional[str]) -> Dict:
    """metrics.json's "match_threshold" (None: no threshold reaches the precision), "match_recall"
    and "calibration" (calibration.calibrate) from the queries' nearest neighbours; with a `folder`,
    the curve (calibration.CURVE_FILE) and its plot are written there."""
    searched = per_query["nearest_index"] >= 0
    result = calibration.calibrate(
        per_query["nearest_distance"][searched], per_query["correct_at_1"][searched], match_precision
    )
    curve, chosen = result.pop("curve"), result["match"]
    if folder is not None:
        with tf.io.gfile.GFile(os.path.join(folder, calibration.CURVE_FILE), "w") as f:
            calibration.write_curve(f, curve)
        report.plot_calibration(curve, chosen, os.path.join(folder, report.CALIBRATION_FILENAME), match_precision)
    return {
        MATCH_THRESHOLD: None if chosen is None else chosen["threshold"],
        "match_recall": None if chosen is None else chosen["recall"],
        "calibration": result,
    }


def served_index_recall(
    model: Model, query_embeddings: np.ndarray, examples: Examples, serving: ServingConfig
) -> Optional[float]:
    """Recall@10 against exact search, on the eval queries, of the ivf index that the serving
    settings build over the --index-split examples (None: the index is exact, or a --catalog's, which
    the ServingModelBuilder measures). Metrics stay exact; this says what serving loses."""
    if serving.catalog or serving.index == "exact":
        return None
    references = read_split(examples, serving.index_split)
    if ivf_index.served_kind(serving.index, len(references)) != "ivf":
        return None
    labels, _ = parse_examples(references)
    embeddings = embed(model, references)
    ids = [str(i) for i in range(len(labels))]
    state = ivf_index.build_for(embeddings, ids, labels, serving.index_lists, serving.index_storage)
    nprobe = ivf_index.served_nprobe(serving.index_nprobe, state.lists)
    return ivf_index.recall_against_exact(ivf_index.IvfIndex(state), nprobe, query_embeddings, embeddings, ids)


def gallery(
    query_labels: np.ndarray,
    query_images: np.ndarray,
    neighbours: np.ndarray,
    skipped: np.ndarray,
    references: Optional[list],
    reference_labels: Optional[np.ndarray],
    image_shape,
    encoded: bool = False,
    resize: str = "stretch",
) -> Dict:
    """The worst retrievals' images and labels (see `report.plot_worst_retrievals`). Reference
    images of the train split (query_vs_reference) are decoded for the chosen neighbours only."""
    labels_ = query_labels if references is None else reference_labels
    chosen = retrievals.worst_queries(query_labels, labels_[neighbours], GALLERY_QUERIES, skipped)
    picked = neighbours[chosen]
    if references is None:
        neighbour_images = query_images[picked]
    else:
        decoded = (
            parse_examples([references[i] for i in picked.ravel()], image_shape, encoded, resize)[1]
            if picked.size
            else np.zeros((0, *image_shape), np.uint8)
        )
        neighbour_images = decoded.reshape(*picked.shape, *image_shape)
    return {
        "query_images": query_images[chosen],
        "query_labels": query_labels[chosen],
        "neighbour_images": neighbour_images,
        "neighbour_labels": labels_[picked],
    }


def result_key(model: Model, examples: Examples, cfg: PipelineConfig, code_fingerprint: str) -> str:
    """What a model's evaluation depends on: the model, the examples, the code and the settings
    that change metrics or pictures (not the blessing rule)."""
    settings = {
        "data": dataclasses.asdict(cfg.data),
        "protocol": cfg.eval.protocol,
        "recall_ks": list(cfg.eval.recall_ks),
        "plot": cfg.eval.plot,
        "match_precision": cfg.eval.match_precision,
        "serving": dataclasses.asdict(cfg.serving),  # the served index's recall
    }
    text = json.dumps([model.uri, examples.uri, code_fingerprint, settings], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def earlier_result(index_dir: str, key: str) -> Optional[str]:
    """The evaluation folder that already holds the result of this key, if any."""
    entry = os.path.join(index_dir, key)
    if not tf.io.gfile.exists(entry):
        return None
    with tf.io.gfile.GFile(entry) as f:
        folder = f.read().strip()
    return folder if tf.io.gfile.exists(os.path.join(folder, METRICS_FILE)) else None


def earlier_baseline_metrics(folder: str) -> Optional[Dict]:
    """The baseline metrics an earlier evaluation compared with (None: it had no baseline)."""
    with tf.io.gfile.GFile(os.path.join(folder, METRICS_FILE)) as f:
        return json.load(f).get("baseline")


def candidate_part(evaluation_metrics: Dict) -> Dict:
    """A metrics.json without what depends on the comparison (baseline, verdict)."""
    return {k: v for k, v in evaluation_metrics.items() if k not in ("baseline", "blessed", "reasons")}


def copy_files(source: str, folder: str, names: Dict[str, str]) -> None:
    """Copies {source name: target name} from an earlier evaluation folder into `folder`."""
    for source_name, target_name in names.items():
        tf.io.gfile.copy(os.path.join(source, source_name), os.path.join(folder, target_name), overwrite=True)


def copy_projector_files(source: str, folder: str) -> None:
    """Copies an earlier evaluation's projector files (tensorboard/, without the metric scalars,
    which are written again)."""
    source_tb, target_tb = os.path.join(source, TENSORBOARD_DIR), os.path.join(folder, TENSORBOARD_DIR)
    if tf.io.gfile.isdir(source_tb):
        tf.io.gfile.makedirs(target_tb)
        for name in tf.io.gfile.listdir(source_tb):
            if not name.startswith("events.out.tfevents") and not tf.io.gfile.isdir(os.path.join(source_tb, name)):
                tf.io.gfile.copy(os.path.join(source_tb, name), os.path.join(target_tb, name), overwrite=True)


def class_split_facts(classes: Optional[Dict[str, Tuple[int, ...]]]) -> Dict:
    """What metrics.json says about the classes: unseen-class evaluation under a class split."""
    if classes is None:
        return {"classes_seen_in_training": True}
    return {
        "classes_seen_in_training": False,
        "train_classes": list(classes["train"]),
        "eval_classes": list(classes["eval"]),
    }


def scalar_metrics(metrics: Dict) -> Dict[str, float]:
    """The numeric entries of a metrics dict (not the per-class table, protocol name or flags)."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def write_scalars(folder: str, candidate: Dict, baseline: Optional[Dict]) -> None:
    writer = tf.summary.create_file_writer(folder)
    with writer.as_default():
        for prefix, values in (("candidate", candidate), ("baseline", baseline or {})):
            for key, value in scalar_metrics(values).items():
                tf.summary.scalar(f"{prefix}/{key}", value, step=0)
    writer.close()


@component
def EmbeddingEvaluator(
    examples: InputArtifact[Examples],
    model: InputArtifact[Model],
    evaluation: OutputArtifact[ModelEvaluation],
    blessing: OutputArtifact[ModelBlessing],
    config: Parameter[str],  # JSON: the data, eval and serving sections, and the code fingerprint
    baseline_model: InputArtifact[Model] = None,
) -> None:
    """Retrieval and clustering metrics, report, projector files and a ModelBlessing.

    A model already evaluated on the same examples with the same code and settings (an identical
    rerun, or the baseline evaluated when it was the candidate) is not embedded again: its
    metrics and pictures come from that earlier evaluation (an index of results by
    `result_key`, next to the evaluation folders)."""
    parameters = json.loads(config)
    cfg = PipelineConfig.from_dict({k: v for k, v in parameters.items() if k in ("data", "eval", "serving")})
    rule = cfg.eval
    folder = evaluation.uri
    index_dir = os.path.join(os.path.dirname(os.path.dirname(folder)), RESULT_INDEX_DIR)
    fingerprint = parameters.get("code_fingerprint", "")
    # A cached Trainer hands over the model that is already the baseline, the model in production
    # (pushed by an earlier run): keep the bounds check, but do not bless (and so push) it again.
    same_model = baseline_model is not None and baseline_model.id == model.id
    compare = baseline_model is not None and not same_model
    earlier = earlier_result(index_dir, result_key(model, examples, cfg, fingerprint))
    earlier_baseline = (
        earlier_result(index_dir, result_key(baseline_model, examples, cfg, fingerprint)) if compare else None
    )

    if earlier is None or (compare and earlier_baseline is None):
        queries = read_split(examples, "eval")
        query_labels, images = parse_examples(queries, cfg.data.image_shape, cfg.data.encoded_images, cfg.data.resize)
        references, reference_labels = None, None
        if rule.protocol == "query_vs_reference":
            references = read_split(examples, "train")
            reference_labels, _ = parse_examples(references)

    def evaluate_fresh(evaluated: Model, role: str) -> Dict:
        logger.info("Evaluating %s model %s on %d eval queries (%s)", role, evaluated.uri, len(queries), rule.protocol)
        with contextlib.ExitStack() as running:
            embeddings = embed(evaluated, queries)
            all_labels = query_labels if reference_labels is None else np.concatenate([query_labels, reference_labels])
            names = class_name_map(model_class_names(evaluated), all_labels)
            if role == "candidate":  # drawn while the rest is computed (plots.EmbeddingPlotProcess)
                scatter = running.enter_context(
                    report.EmbeddingPlotProcess(
                        embeddings,
                        query_labels,
                        os.path.join(folder, report.SCATTER_FILENAME),
                        method=rule.plot,
                        class_names=names,
                    )
                )
            reference_embeddings = embed(evaluated, references) if references is not None else None
            result, per_query, neighbours, clustering = evaluate_model(
                evaluated,
                embeddings,
                query_labels,
                reference_embeddings,
                reference_labels,
                rule,
                running.enter_context(ThreadPoolExecutor(1)),
            )
            result["class_names"] = names
            result.update(match_calibration(per_query, rule.match_precision, folder if role == "candidate" else None))
            if role == "candidate":
                result[INDEX_RECALL_AT_10] = served_index_recall(evaluated, embeddings, examples, cfg.serving)
            if role == "candidate" and cfg.data.classes_by_split is not None:
                # The served index holds the train split, whose classes the eval queries' are not.
                index_embeddings = embed(evaluated, read_split(examples, "train"))
                distances = metrics.nearest_neighbors(embeddings, index_embeddings, 1)[1][:, 0]
                result["open_set_rejection_rate"] = calibration.rejection_rate(distances, result[MATCH_THRESHOLD])
            report.plot_worst_retrievals(
                **gallery(
                    query_labels,
                    images,
                    neighbours,
                    per_query["skipped"],
                    references,
                    reference_labels,
                    cfg.data.image_shape,
                    cfg.data.encoded_images,
                    cfg.data.resize,
                ),
                path=os.path.join(folder, report.GALLERY_FILENAMES[role]),
                title=f"model {model_label(evaluated)}: worst retrievals",
                class_names=names,
            )
            if role == "candidate":
                projector.write_projector_bundle(
                    os.path.join(folder, TENSORBOARD_DIR),
                    embeddings,
                    query_labels,
                    images=images,
                    split=["eval"] * len(query_labels),
                    correct_at_1=per_query["correct_at_1"],
                    class_names=[names[str(int(v))] for v in query_labels],
                )
                scatter.result()
            result["nmi"], result["ami"] = clustering.result()
            return result

    def reuse(source: str, evaluated: Model, role: str) -> Dict:
        logger.info("Reusing the evaluation of %s model %s from %s", role, evaluated.uri, source)
        with tf.io.gfile.GFile(os.path.join(source, METRICS_FILE)) as f:
            result = candidate_part(json.load(f))
        copy_files(source, folder, {report.GALLERY_FILENAMES["candidate"]: report.GALLERY_FILENAMES[role]})
        if role == "candidate":
            copy_files(
                source,
                folder,
                {
                    name: name
                    for name in (report.SCATTER_FILENAME, report.CALIBRATION_FILENAME, calibration.CURVE_FILE)
                    if tf.io.gfile.exists(os.path.join(source, name))
                },
            )
            copy_projector_files(source, folder)
        return result

    candidate = reuse(earlier, model, "candidate") if earlier else evaluate_fresh(model, "candidate")
    candidate.update(class_split_facts(cfg.data.classes_by_split))
    baseline = None
    if compare:
        baseline = (
            reuse(earlier_baseline, baseline_model, "baseline")
            if earlier_baseline
            else evaluate_fresh(baseline_model, "baseline")
        )
    blessed, reasons = blessing_decision(candidate, baseline, rule)
    already_pushed = same_model and blessed
    message = blessing_message(reasons, already_pushed)
    if already_pushed:
        blessed = False
        reasons.append(
            f"model {model_label(model)} is already the model in production (blessed and pushed by an "
            f"earlier run): nothing new to push"
        )  # metrics.json's and the report's notes

    with tf.io.gfile.GFile(os.path.join(folder, METRICS_FILE), "w") as f:
        json.dump({**candidate, "baseline": baseline, "blessed": blessed, "reasons": reasons}, f, indent=2)
    comparison_pictures = (report.CONFUSION_FILENAME, report.PER_CLASS_FILENAME)
    if earlier and baseline is None and earlier_baseline_metrics(earlier) is None:
        # No baseline now nor then (an identical rerun): the earlier pictures are this run's too.
        copy_files(earlier, folder, {name: name for name in comparison_pictures})
    else:
        confusion = {
            role: (np.array(result["confusion_1nn"]["counts"]), result["confusion_1nn"]["classes"])
            for role, result in (("candidate", candidate), ("baseline", baseline))
            if result
        }
        names = report.report_class_names(candidate, baseline)
        report.plot_confusion_matrices(confusion, os.path.join(folder, report.CONFUSION_FILENAME), class_names=names)
        report.plot_per_class_precision(
            candidate.get("per_class_precision_at_1") or {},
            os.path.join(folder, report.PER_CLASS_FILENAME),
            baseline_per_class=(baseline or {}).get("per_class_precision_at_1"),
            class_names=names,
        )
    report.write_report(folder, candidate, baseline, notes=reasons)  # figures: the files in the folder
    write_scalars(os.path.join(folder, TENSORBOARD_DIR), candidate, baseline)
    if earlier is None:
        tf.io.gfile.makedirs(index_dir)
        with tf.io.gfile.GFile(os.path.join(index_dir, result_key(model, examples, cfg, fingerprint)), "w") as f:
            f.write(folder)
    for key, value in scalar_metrics(candidate).items():
        evaluation.set_float_custom_property(key, value)
    evaluation.set_int_custom_property("classes_seen_in_training", int(candidate["classes_seen_in_training"]))

    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY, int(blessed))
    blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY, message)
    blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri)
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
    blessing.set_int_custom_property(ALREADY_PUSHED_KEY, int(already_pushed))
    if baseline_model is not None:
        blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baseline_model.uri)
        blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, baseline_model.id)
    # Marker files too, as TFX's own Evaluator writes, for readers of the pipeline root.
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write(message + "\n")
    logger.info("%s", verdict_line(blessed, already_pushed, message))
