"""EmbeddingEvaluator: judges the embedding space of a trained model, blesses or rejects it.

A thin TFX component around `metrics` (the math) and `projector` (the Embedding Projector
files). It embeds the eval split through the exported serving signature, exactly as a
client of TF Serving would, so the metric is that of the model that gets pushed.
"""

import json
import logging
import os
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf
from tfx.components.evaluator import constants
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import Examples, Model, ModelBlessing, ModelEvaluation
from tfx.utils import path_utils

from triplet_tfx.components import metrics, projector
from triplet_tfx.components.data_sources import IMAGE_KEY, LABEL_KEY
from triplet_tfx.components.model import EMBEDDING_KEY, SERVING_SIGNATURE
from triplet_tfx.pipeline.config import PipelineConfig

logger = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
PROJECTOR_DIR = "projector"
_BATCH = 1024


def read_split(examples: Examples, split: str) -> list:
    """Serialized tf.Examples of one split of an Examples artifact."""
    files = sorted(tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*")))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def embed(serving_model_dir: str, serialized: list, image_shape) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings, labels, uint8 images) of serialized raw tf.Examples, via the serving signature."""
    serve = tf.saved_model.load(serving_model_dir).signatures[SERVING_SIGNATURE]
    spec = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string), LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
    embeddings, labels, images = [], [], []
    for start in range(0, len(serialized), _BATCH):
        batch = tf.constant(serialized[start:start + _BATCH])
        embeddings.append(serve(examples=batch)[EMBEDDING_KEY].numpy())
        parsed = tf.io.parse_example(batch, spec)
        labels.append(parsed[LABEL_KEY].numpy())
        images.append(tf.reshape(tf.io.decode_raw(parsed[IMAGE_KEY], tf.uint8), [-1, *image_shape]).numpy())
    return np.concatenate(embeddings), np.concatenate(labels), np.concatenate(images)


def blessing_decision(candidate: Dict[str, float], min_precision_at_1: float) -> Tuple[bool, str]:
    p1 = candidate["precision_at_1"]
    if p1 >= min_precision_at_1:
        return True, f"precision_at_1 {p1:.4f} >= threshold {min_precision_at_1:.4f}"
    return False, f"precision_at_1 {p1:.4f} < threshold {min_precision_at_1:.4f}"


@component
def EmbeddingEvaluator(
    examples: InputArtifact[Examples],
    model: InputArtifact[Model],
    evaluation: OutputArtifact[ModelEvaluation],
    blessing: OutputArtifact[ModelBlessing],
    config: Parameter[str],
    code_fingerprint: Parameter[str],  # only so that TFX's cache notices code changes
) -> None:
    """Precision@1 (leave-one-out on the eval split), projector files, ModelBlessing."""
    cfg = PipelineConfig.from_dict(json.loads(config))
    serving_dir = path_utils.serving_model_path(model.uri)
    embeddings, labels, images = embed(serving_dir, read_split(examples, "eval"), cfg.data.image_shape)
    logger.info("Evaluating %d eval embeddings of %s", len(labels), serving_dir)
    result = metrics.evaluate_embeddings(embeddings, labels)
    blessed, reason = blessing_decision(result, cfg.eval.min_precision_at_1)

    with tf.io.gfile.GFile(os.path.join(evaluation.uri, METRICS_FILE), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    projector.write_projector_bundle(
        os.path.join(evaluation.uri, PROJECTOR_DIR), embeddings, labels, images=images,
        split=["eval"] * len(labels), correct_at_1=metrics.correct_at_1(embeddings, labels))
    for key, value in result.items():
        if isinstance(value, (int, float)):
            evaluation.set_float_custom_property(key, float(value))

    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY, int(blessed))
    blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY, reason)
    blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri)
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
    # A file too, as TFX's own Evaluator writes, for readers of the pipeline root.
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write(reason + "\n")
    logger.info("Model %s: %s", "BLESSED" if blessed else "NOT BLESSED", reason)
