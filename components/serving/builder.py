"""ServingModelBuilder: the blessed candidate plus its reference index, as the one Model the Pusher pushes.

Why a component between the evaluator and the Pusher (and not the index inside the Trainer):
  * only a blessed model pays for the index (embedding the whole reference split); an unblessed
    one writes no SavedModel and the Pusher, which checks the blessing first, reads none;
  * the reference set (`--index-split`) is this component's parameter alone, so changing it
    rebuilds the index without retraining or re-evaluating;
  * the SavedModel it writes reuses the Trainer's embedding functions as they are (loaded, not
    rebuilt), so what the evaluator scored is exactly what is served, and model and index leave
    together in one Model artifact: the Pusher copies it as one version. TFX's Pusher takes any
    Model artifact as `model` and checks only `model_blessing`'s `blessed` property
    (tfx/components/pusher/executor.py); the blessing keeps naming the Trainer's model, which is
    what LatestBlessedModelStrategy resolves as the next run's baseline.
"""

import json
import logging
import os
import time
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tfx.components.util import model_utils
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Examples, InferenceResult, Model, ModelBlessing, ModelEvaluation
from tfx.utils import path_utils

from triplet_tfx.components import contract, ivf_index
from triplet_tfx.components.config import PipelineConfig
from triplet_tfx.components.examples_io import embed, model_path, parse_examples, read_split
from triplet_tfx.components.serving import catalog, index

logger = logging.getLogger(__name__)

RECALL_QUERIES = 1000  # ivf: eval examples whose recall@10 against exact search is measured and recorded


def evaluated_threshold(evaluation: ModelEvaluation) -> Optional[float]:
    """The evaluator's calibrated match threshold (None: no threshold reached --match-precision)."""
    with tf.io.gfile.GFile(os.path.join(evaluation.uri, contract.METRICS_FILE)) as f:
        evaluated = json.load(f)
    if evaluated.get(contract.MATCH_THRESHOLD) is None:
        logger.warning(
            "No distance threshold reaches the match precision %s on the eval data: the served model has no "
            "`match` signature (a lower --match-precision gives one)",
            evaluated.get("calibration", {}).get("match_precision"),
        )
    return evaluated.get(contract.MATCH_THRESHOLD)


def added_to_served_index(served, ids, labels, names, embeddings) -> Tuple[ivf_index.IvfState, List[str]]:
    """(the served model's ivf index with the items added to its lists, the class-name table of
    all its items): --index-add, an index refreshed without re-clustering."""
    if getattr(served, "ivf", None) is None:
        raise catalog.CatalogError("--index-add: the served model's index is exact; it has no lists to add to")
    state = ivf_index.state_of(served.ivf)
    repeated = sorted(set(state.ids.tolist()) & set(np.asarray(ids).tolist()))
    if repeated:
        raise catalog.CatalogError(
            f"--index-add: {len(repeated)} catalog id(s) are in the served index already, e.g. {repeated[:3]}"
        )
    served_names = [name.decode("utf-8") for name in served.reference_class_names.numpy()]
    table = index.names_by_label(np.concatenate([state.labels, labels]), served_names + list(names))
    return ivf_index.add(state, embeddings, ids, labels), table


def folder_bytes(folder: str) -> int:
    return sum(
        tf.io.gfile.stat(os.path.join(root, name)).length
        for root, _, names in tf.io.gfile.walk(folder)
        for name in names
    )


@component
def ServingModelBuilder(
    model: InputArtifact[Model],
    serving_model: OutputArtifact[Model],
    config: Parameter[str],  # JSON: the serving section and the code fingerprint
    examples: InputArtifact[Examples] = None,
    blessing: InputArtifact[ModelBlessing] = None,
    evaluation: InputArtifact[ModelEvaluation] = None,
    catalog_embeddings: InputArtifact[InferenceResult] = None,
) -> None:
    """Writes the blessed model + its index as one SavedModel: the index holds the catalog's
    embeddings (CatalogEmbedder) when given, else the `--index-split` examples, embedded here. The
    `match` threshold is the evaluation's calibrated one, or, for a served model given again (index
    refresh), the one it already has."""
    if blessing is not None and not model_utils.is_model_blessed(blessing):
        logger.info("Model %s is not blessed: no serving model built, nothing to push", model.uri)
        serving_model.set_int_custom_property(contract.INDEX_SIZE, 0)
        return
    serving = PipelineConfig.from_dict({"serving": json.loads(config)["serving"]}).serving
    start = time.monotonic()
    source = model_path(model)
    # A catalog's embeddings are checked against the model; a model given again keeps its threshold.
    loaded = tf.saved_model.load(source) if catalog_embeddings is not None or evaluation is None else None
    reference_names = None
    if catalog_embeddings is not None:
        catalog.check_model(catalog_embeddings, index.embedding_dimension(loaded), model)
        ids, labels, names, embeddings = catalog.read_embeddings(catalog_embeddings)
        reference_names = index.names_by_label(labels, names)
        split = "catalog"
    else:
        split = serving.index_split
        references = read_split(examples, split)
        labels, _ = parse_examples(references)
        embeddings = embed(model, references)  # the evaluator's own path: serving_default on raw tf.Examples
        ids = index.reference_ids(split, len(labels))
    ivf, nprobe, queries, reasons = None, 0, None, None
    if serving.index_add:  # the served model's lists kept: the catalog's items assigned to them
        ivf, reference_names = added_to_served_index(loaded, ids, labels, names, embeddings)
        ids, labels, embeddings = ivf.ids, ivf.labels, ivf.float32()
        nprobe = serving.index_nprobe or int(loaded.nprobe.numpy())
    kind = "ivf" if ivf is not None else ivf_index.served_kind(serving.index, len(labels))
    if kind == "ivf":
        if ivf is None:
            ivf = ivf_index.build_for(embeddings, ids, labels, serving.index_lists, serving.index_storage)
            nprobe = ivf_index.served_nprobe(serving.index_nprobe, ivf.lists)
        # Recall is measured on eval examples, or without them on catalog items (each its own nearest).
        queries = (
            embed(model, read_split(examples, "eval")[:RECALL_QUERIES])
            if examples is not None
            else embeddings[:: max(1, len(embeddings) // RECALL_QUERIES)][:RECALL_QUERIES]
        )
    if evaluation is not None:
        threshold = evaluated_threshold(evaluation)
    else:
        threshold = float(loaded.match_threshold.numpy()) if hasattr(loaded, "match_threshold") else None
    path = path_utils.serving_model_dir(serving_model.uri)
    recall = index.build_serving_model(
        source,
        ids,
        labels,
        embeddings,
        path,
        ivf=ivf,
        nprobe=nprobe,
        recall_queries=queries,
        match_threshold=threshold,
        reference_names=reference_names,
    )
    if threshold is not None:
        serving_model.set_float_custom_property(contract.MATCH_THRESHOLD, threshold)
    if ivf is not None and recall is not None:
        serving_model.set_int_custom_property(contract.INDEX_LISTS, ivf.lists)
        serving_model.set_int_custom_property(contract.INDEX_NPROBE, nprobe)
        serving_model.set_float_custom_property(contract.INDEX_RECALL_AT_10, recall)
        if serving.index_add:
            reasons = "; ".join(ivf_index.rebuild_reasons(ivf, recall))
            serving_model.set_string_custom_property(contract.INDEX_REBUILD_REASONS, reasons)
            logger.info(
                "Search index: %d items added to the served lists; %s", len(names), reasons or "no rebuild needed"
            )
        logger.info(
            "Search index: ivf, %d lists, nprobe %d, %s storage; recall@10 against exact search %.4f (%d eval queries)",
            ivf.lists,
            nprobe,
            serving.index_storage,
            recall,
            len(queries),
        )
    seconds, size = time.monotonic() - start, folder_bytes(path)
    serving_model.set_int_custom_property(contract.INDEX_SIZE, len(labels))
    serving_model.set_string_custom_property(contract.INDEX_SPLIT, split)
    serving_model.set_string_custom_property(contract.INDEX_KIND, kind)
    serving_model.set_float_custom_property(contract.INDEX_BUILD_SECONDS, seconds)
    serving_model.set_int_custom_property(contract.INDEX_BYTES, size)
    logger.info(
        "Search index (%s): %d %s references embedded and saved with the model in %.1f s (%.1f MB): %s",
        kind,
        len(labels),
        split,
        seconds,
        size / 1e6,
        path,
    )
