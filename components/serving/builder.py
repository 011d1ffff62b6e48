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

import tensorflow as tf
from tfx.components.util import model_utils
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Examples, Model, ModelBlessing
from tfx.utils import path_utils

from triplet_tfx.components import contract
from triplet_tfx.components.config import PipelineConfig
from triplet_tfx.components.examples_io import embed, parse_examples, read_split
from triplet_tfx.components.serving import index, ivf_index

logger = logging.getLogger(__name__)

RECALL_QUERIES = 1000  # ivf: eval examples whose recall@10 against exact search is measured and recorded


def folder_bytes(folder: str) -> int:
    return sum(
        tf.io.gfile.stat(os.path.join(root, name)).length
        for root, _, names in tf.io.gfile.walk(folder)
        for name in names
    )


@component
def ServingModelBuilder(
    model: InputArtifact[Model],
    examples: InputArtifact[Examples],
    blessing: InputArtifact[ModelBlessing],
    serving_model: OutputArtifact[Model],
    config: Parameter[str],  # JSON: the serving section and the code fingerprint
) -> None:
    """Embeds the reference split with the blessed model and writes model + index as one SavedModel."""
    if not model_utils.is_model_blessed(blessing):
        logger.info("Model %s is not blessed: no serving model built, nothing to push", model.uri)
        serving_model.set_int_custom_property(contract.INDEX_SIZE, 0)
        return
    serving = PipelineConfig.from_dict({"serving": json.loads(config)["serving"]}).serving
    split = serving.index_split
    start = time.monotonic()
    references = read_split(examples, split)
    labels, _ = parse_examples(references)
    embeddings = embed(model, references)  # the evaluator's own path: serving_default on raw tf.Examples
    ids = index.reference_ids(split, len(labels))
    kind = ivf_index.choose_index(len(labels)) if serving.index == "auto" else serving.index
    ivf, nprobe, queries = None, 0, None
    if kind == "ivf":
        ivf = ivf_index.build_for(embeddings, ids, labels, serving.index_lists, serving.index_storage)
        nprobe = serving.index_nprobe or ivf_index.default_nprobe(ivf.lists)
        if nprobe > ivf.lists:
            raise ValueError(f"--index-nprobe {nprobe}: the index has {ivf.lists} lists")
        queries = embed(model, read_split(examples, "eval")[:RECALL_QUERIES])
    path = path_utils.serving_model_dir(serving_model.uri)
    recall = index.build_serving_model(
        path_utils.serving_model_path(model.uri),
        ids,
        labels,
        embeddings,
        path,
        ivf=ivf,
        nprobe=nprobe,
        recall_queries=queries,
    )
    if ivf is not None and recall is not None:
        serving_model.set_int_custom_property(contract.INDEX_LISTS, ivf.lists)
        serving_model.set_int_custom_property(contract.INDEX_NPROBE, nprobe)
        serving_model.set_float_custom_property(contract.INDEX_RECALL_AT_10, recall)
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
