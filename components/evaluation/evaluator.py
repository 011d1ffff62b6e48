"""EmbeddingEvaluator: judges a model's embedding space, against a blessed baseline if there is one.

A thin TFX component around `metrics` (the math), `projector` (Embedding Projector files)
and `report` (plots and the report). It embeds the eval split through the exported serving
signature, exactly as a client of TF Serving would, so the metrics are those of the model
that gets pushed. TFX's own Evaluator (TFMA) judges classifiers, not embedding spaces.

Outputs, in the ModelEvaluation folder:
  metrics.json            candidate metrics (and `baseline` metrics when compared)
  report.md, report.html  metrics table, candidate vs baseline; embedding_2d.png; per_class_precision.png
  tensorboard/            the metrics as scalars, and vecs.tsv, meta.tsv, sprite.png,
                          projector_config.pbtxt for the Embedding Projector (`tensorboard --logdir <it>`)
"""
import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tfx.components.evaluator import constants
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import Examples, Model, ModelBlessing, ModelEvaluation
from tfx.utils import path_utils

from triplet_tfx.components.evaluation import metrics, projector, report
from triplet_tfx.components.data.data_sources import IMAGE_KEY, LABEL_KEY
from triplet_tfx.components.serving.export import SERVING_SIGNATURE
from triplet_tfx.components.training.network import EMBEDDING_KEY
from triplet_tfx.pipeline.config import EvalConfig, PipelineConfig

logger = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
# One folder for TensorBoard: the metric scalars and the Embedding Projector bundle.
TENSORBOARD_DIR = "tensorboard"
# Blessing property: 1 when the candidate passed every check but is the model already in production
# (blessed and pushed by an earlier run), so it is not blessed, and so not pushed, a second time.
ALREADY_PUSHED_KEY = "already_pushed"
_BATCH = 1024


def read_split(examples: Examples, split: str) -> list:
    """Serialized tf.Examples of one split of an Examples artifact."""
    files = sorted(tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*")))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def parse_examples(serialized: list, image_shape=None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(labels, uint8 images) of serialized raw tf.Examples; images only if image_shape is given."""
    spec = {LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
    if image_shape is not None:
        spec[IMAGE_KEY] = tf.io.FixedLenFeature([], tf.string)
    labels, images = [], []
    for start in range(0, len(serialized), _BATCH):
        parsed = tf.io.parse_example(tf.constant(serialized[start:start + _BATCH]), spec)
        labels.append(parsed[LABEL_KEY].numpy())
        if image_shape is not None:
            images.append(tf.reshape(tf.io.decode_raw(parsed[IMAGE_KEY], tf.uint8), [-1, *image_shape]).numpy())
    return np.concatenate(labels), np.concatenate(images) if images else None


def embed(model: Model, serialized: list) -> np.ndarray:
    """Embeddings of serialized raw tf.Examples through the model's serving signature."""
    serve = tf.saved_model.load(path_utils.serving_model_path(model.uri)).signatures[SERVING_SIGNATURE]
    return np.concatenate([serve(examples=tf.constant(serialized[s:s + _BATCH]))[EMBEDDING_KEY].numpy()
                           for s in range(0, len(serialized), _BATCH)])


def blessing_decision(candidate: Dict, baseline: Optional[Dict], rule: EvalConfig) -> Tuple[bool, List[str]]:
    """(blessed, reasons): every lower bound met and, given a baseline, no regression beyond tolerance."""
    reasons, blessed = [], True
    for name, bound in sorted(rule.lower_bounds.items()):
        value = candidate.get(name)
        ok = value is not None and value >= bound
        blessed &= ok
        reasons.append(f"{name} {value:.4f} {'>=' if ok else '<'} threshold {bound:.4f}" if value is not None
                       else f"{name} unavailable (threshold {bound:.4f})")
    if baseline is not None:
        for name in rule.compared_metrics:
            drop = baseline[name] - candidate[name]
            ok = drop <= rule.max_regression + 1e-9  # float rounding of equal drops
            blessed &= ok
            reasons.append(f"{name} {candidate[name]:.4f} vs baseline {baseline[name]:.4f}: "
                           + ("within" if ok else "regression beyond") + f" tolerance {rule.max_regression:.4f}")
    return blessed, reasons


def evaluate_model(model: Model, queries: list, query_labels: np.ndarray, references: Optional[list],
                   reference_labels: Optional[np.ndarray], rule: EvalConfig):
    """(metrics, per-query details, query embeddings) of one model under the configured protocol."""
    query_embeddings = embed(model, queries)
    reference_embeddings = embed(model, references) if references is not None else None
    result, per_query = metrics.evaluate_embeddings(
        query_embeddings, query_labels, reference_embeddings, reference_labels, ks=rule.recall_ks,
        return_per_query=True)
    return result, per_query, query_embeddings


def class_split_facts(classes: Optional[Dict[str, Tuple[int, ...]]]) -> Dict:
    """What metrics.json says about the classes: unseen-class evaluation under a class split."""
    if classes is None:
        return {"classes_seen_in_training": True}
    return {"classes_seen_in_training": False, "train_classes": list(classes["train"]),
            "eval_classes": list(classes["eval"])}


def scalar_metrics(metrics: Dict) -> Dict[str, float]:
    """The numeric entries of a metrics dict (not the per-class table, protocol name or flags)."""
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


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
    config: Parameter[str],  # JSON: the data and eval sections, and the code fingerprint
    baseline_model: InputArtifact[Model] = None,
) -> None:
    """Retrieval and clustering metrics, report, projector files and a ModelBlessing."""
    cfg = PipelineConfig.from_dict({k: v for k, v in json.loads(config).items() if k in ("data", "eval")})
    rule = cfg.eval
    queries = read_split(examples, "eval")
    query_labels, images = parse_examples(queries, cfg.data.image_shape)
    references, reference_labels = None, None
    if rule.protocol == "eval_vs_train":
        references = read_split(examples, "train")
        reference_labels, _ = parse_examples(references)
    logger.info("Evaluating model %s on %d eval queries (%s)", model.uri, len(queries), rule.protocol)
    candidate, per_query, embeddings = evaluate_model(model, queries, query_labels, references,
                                                      reference_labels, rule)
    candidate.update(class_split_facts(cfg.data.classes_by_split))

    # A cached Trainer hands over the model that is already the baseline, the model in production
    # (pushed by an earlier run): keep the bounds check, but do not bless (and so push) it again.
    same_model = baseline_model is not None and baseline_model.id == model.id
    baseline = None
    if baseline_model is not None and not same_model:
        logger.info("Evaluating baseline model %s", baseline_model.uri)
        baseline = evaluate_model(baseline_model, queries, query_labels, references, reference_labels, rule)[0]
    blessed, reasons = blessing_decision(candidate, baseline, rule)
    already_pushed = same_model and blessed
    if already_pushed:
        blessed = False
        reasons.append(f"model {model.id} is already the model in production (blessed and pushed by an "
                       f"earlier run): nothing new to push")

    folder = evaluation.uri
    with tf.io.gfile.GFile(os.path.join(folder, METRICS_FILE), "w") as f:
        json.dump({**candidate, "baseline": baseline, "blessed": blessed, "reasons": reasons}, f, indent=2)
    projector.write_projector_bundle(os.path.join(folder, TENSORBOARD_DIR), embeddings, query_labels, images=images,
                                     split=["eval"] * len(query_labels), correct_at_1=per_query["correct_at_1"])
    report.make_report(folder, embeddings, query_labels, candidate, baseline, method=rule.plot_method,
                       notes=reasons)
    write_scalars(os.path.join(folder, TENSORBOARD_DIR), candidate, baseline)
    for key, value in scalar_metrics(candidate).items():
        evaluation.set_float_custom_property(key, value)
    evaluation.set_int_custom_property("classes_seen_in_training", int(candidate["classes_seen_in_training"]))

    message = "; ".join(reasons)
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
    logger.info("Model %s: %s", "BLESSED" if blessed else "NOT BLESSED", message)
