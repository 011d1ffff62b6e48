"""CatalogEmbedder: a catalog (`--catalog SOURCE`, read by its own SourceExampleGen) embedded by the
model in Beam, on whichever runner the pipeline's Beam options name.

Why not TFX's BulkInferrer (tfx-bsl's RunInference inside): in TFX 1.16 its outputs are
PredictionLogs, each holding the whole request tf.Example, or output Examples that copy every input
feature and add the predictions (tfx/components/bulk_inferrer/prediction_to_example_utils.py): a photo
catalog's image bytes would be written a second time next to 256 floats, and the embeddings would
still need a pass to become an index or an import file. The component is plain Beam around the
model's `serving_default`, the signature the evaluator scores: each Beam worker loads the SavedModel
once (`DoFn.setup`) and embeds batches of serialized examples.

Output: an InferenceResult artifact (TFX's type for a model's outputs over a data set, which KFP v2
compiles; a custom type would need a top-level importable class), whose folder holds:
  embeddings/part-*.tfrecord.gz   tf.Examples: EMBEDDING_FEATURE (floats), contract.ID_KEY,
                                  contract.LABEL_KEY, contract.CLASS_NAME_KEY (read by `read_embeddings`)
  vector_search/part-*.json       the same as Vertex AI Vector Search imports them (vector_search.py)
and the properties `items`, `dimension` and `model_uri`.

An item's id is its example's `id` (an images: folder's relative path, a manifest's id column, a
TFDS id), else "<split>/<file number>/<position in the file>" of the catalog's examples.
"""

import json
import logging
import os
from typing import Iterator, List, Optional, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
from tfx.components.util import model_utils
from tfx.dsl.component.experimental.annotations import BeamComponentParameter, InputArtifact, OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import Examples, InferenceResult, Model, ModelBlessing

from triplet_tfx.components import contract
from triplet_tfx.components.examples_io import EMBED_BATCH, model_path
from triplet_tfx.components.serving import vector_search
from triplet_tfx.components.tfrecords import WriteToGzipTFRecord

logger = logging.getLogger(__name__)

EMBEDDINGS_DIR = "embeddings"
VECTOR_SEARCH_DIR = "vector_search"
EMBEDDING_FEATURE = "embedding"
COUNT_FILE = "items.json"  # written by the Beam job: {"items": N, "dimension": D}
ITEMS, DIMENSION, MODEL_URI = "items", "dimension", "model_uri"  # the artifact's properties


class CatalogError(ValueError):
    """A catalog that cannot be indexed; the message names the items or the models."""


def catalog_files(examples: Examples) -> List[Tuple[str, int, str]]:
    """(split, file number, path) of every file of every split of the catalog's examples."""
    found = []
    for split in artifact_utils.decode_split_names(examples.split_names):
        paths = sorted(tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*")))
        found += [(split, number, path) for number, path in enumerate(paths)]
    return found


def _records(source: Tuple[str, int, str]) -> Iterator[Tuple[str, bytes]]:
    split, number, path = source
    for position, record in enumerate(tf.data.TFRecordDataset(path, compression_type="GZIP")):
        yield f"{split}/{number}/{position}", record.numpy()


class _Embed(beam.DoFn):
    """Batches of (fallback id, serialized example) -> (id, label, class name, embedding). Examples of
    encoded images (a photo catalog) are embedded from their image bytes (`embed_images`), which serves
    a model trained on raw pixels too; raw-pixel examples through `serving_default`."""

    def __init__(self, saved_model: str):
        self._saved_model = saved_model

    def setup(self):
        self._signatures = tf.saved_model.load(self._saved_model).signatures

    def process(self, batch: List[Tuple[str, bytes]]):
        fallback_ids, serialized = zip(*batch)
        parsed = tf.io.parse_example(
            tf.constant(serialized),
            {
                contract.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
                contract.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
                contract.IMAGE_FORMAT_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
                contract.ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
                contract.CLASS_NAME_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
            },
        )
        if all(parsed[contract.IMAGE_FORMAT_KEY].numpy()):
            output = self._signatures[contract.EMBED_IMAGES_SIGNATURE](images=parsed[contract.IMAGE_KEY])
        else:
            output = self._signatures[contract.SERVING_SIGNATURE](examples=tf.constant(serialized))
        embeddings = output[contract.EMBEDDING_KEY].numpy()
        labels = parsed[contract.LABEL_KEY].numpy().tolist()
        ids, names = parsed[contract.ID_KEY].numpy(), parsed[contract.CLASS_NAME_KEY].numpy()
        for i, embedding in enumerate(embeddings):
            yield (
                ids[i].decode("utf-8") or fallback_ids[i],
                labels[i],
                names[i].decode("utf-8") or str(labels[i]),
                embedding,
            )


def _as_example(item: Tuple[str, int, str, np.ndarray]) -> bytes:
    item_id, label, class_name, embedding = item
    feature = {
        contract.ID_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[item_id.encode("utf-8")])),
        contract.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        contract.CLASS_NAME_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[class_name.encode("utf-8")])),
        EMBEDDING_FEATURE: tf.train.Feature(float_list=tf.train.FloatList(value=embedding)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _fail_on_duplicates(counted: List[Tuple[str, int]]) -> None:
    message = vector_search.duplicates_message(counted)
    if message:
        raise CatalogError(message)


def _write_count(counts: List[Tuple[int, int]], path: str) -> None:
    dimensions = sorted({d for d, _ in counts})
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump({"items": sum(n for _, n in counts), "dimension": dimensions[0] if dimensions else 0}, f)


_EMBEDDING_SPEC = {
    contract.ID_KEY: tf.io.FixedLenFeature([], tf.string),
    contract.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
    contract.CLASS_NAME_KEY: tf.io.FixedLenFeature([], tf.string),
    EMBEDDING_FEATURE: tf.io.RaggedFeature(tf.float32),
}


def _read_embeddings(path: str) -> Iterator[Tuple[str, int, str, np.ndarray]]:
    """The items of one file of `embeddings/`, parsed in batches."""
    batches = tf.data.TFRecordDataset(path, compression_type="GZIP").batch(4096)
    for parsed in batches.map(lambda records: tf.io.parse_example(records, _EMBEDDING_SPEC)):
        ids, labels = parsed[contract.ID_KEY].numpy(), parsed[contract.LABEL_KEY].numpy().tolist()
        names, embeddings = parsed[contract.CLASS_NAME_KEY].numpy(), parsed[EMBEDDING_FEATURE].numpy()
        for i, embedding in enumerate(embeddings):
            yield ids[i].decode("utf-8"), labels[i], names[i].decode("utf-8"), np.asarray(embedding, np.float32)


@component(use_beam=True)
def CatalogEmbedder(
    examples: InputArtifact[Examples],
    model: InputArtifact[Model],
    catalog_embeddings: OutputArtifact[InferenceResult],
    blessing: InputArtifact[ModelBlessing] = None,
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Embeds every split of the catalog's examples with the (blessed) model, in Beam."""
    catalog_embeddings.set_string_custom_property(MODEL_URI, model.uri)
    if blessing is not None and not model_utils.is_model_blessed(blessing):
        logger.info("Model %s is not blessed: the catalog is not embedded", model.uri)
        catalog_embeddings.set_int_custom_property(ITEMS, 0)
        return
    files = catalog_files(examples)
    if not files:
        raise CatalogError(f"catalog: no examples in {examples.uri}")
    out = catalog_embeddings.uri
    with beam_pipeline as p:
        items = (
            p
            | "Files" >> beam.Create(files)
            | "Read" >> beam.FlatMap(_records)
            | "Spread" >> beam.Reshuffle()
            | "Batch" >> beam.BatchElements(min_batch_size=EMBED_BATCH, max_batch_size=EMBED_BATCH)
            | "Embed" >> beam.ParDo(_Embed(model_path(model)))
        )
        _ = (
            items
            | "Ids" >> beam.Map(lambda item: item[0])
            | "CountIds" >> beam.combiners.Count.PerElement()
            | "Repeated" >> beam.Filter(lambda counted: counted[1] > 1)
            | "ListRepeated" >> beam.combiners.ToList()
            | "FailOnDuplicates" >> beam.Map(_fail_on_duplicates)
        )
        _ = (
            items
            | "Dimensions" >> beam.Map(lambda item: (len(item[3]), 1))
            | "CountByDimension" >> beam.CombinePerKey(sum)
            | "ListCounts" >> beam.combiners.ToList()
            | "WriteCount" >> beam.Map(_write_count, os.path.join(out, COUNT_FILE))
        )
        _ = (
            items
            | "AsExamples" >> beam.Map(_as_example)
            | "WriteEmbeddings"
            >> WriteToGzipTFRecord(os.path.join(out, EMBEDDINGS_DIR, "part"), file_name_suffix=".tfrecord.gz")
        )
    with tf.io.gfile.GFile(os.path.join(out, COUNT_FILE)) as f:
        counted = json.load(f)
    # The export's file count depends on the number of items, known now: a second, light pass
    # over the embeddings (not the images).
    with beam.Pipeline(options=beam_pipeline.options) as p:
        _ = (
            p
            | "Files" >> beam.Create(tf.io.gfile.glob(os.path.join(out, EMBEDDINGS_DIR, "*")))
            | "Read" >> beam.FlatMap(_read_embeddings)
            | "AsJson" >> beam.Map(lambda item: vector_search.record(item[0], item[3], item[2]))
            | "WriteJson"
            >> beam.io.WriteToText(
                os.path.join(out, VECTOR_SEARCH_DIR, "part"),
                file_name_suffix=".json",
                num_shards=vector_search.file_count(counted["items"], counted["dimension"]),
            )
        )
    catalog_embeddings.set_int_custom_property(ITEMS, counted["items"])
    catalog_embeddings.set_int_custom_property(DIMENSION, counted["dimension"])
    logger.info(
        "Catalog: %d items embedded (%d dimensions) into %s; Vertex AI Vector Search import files in %s",
        counted["items"],
        counted["dimension"],
        os.path.join(out, EMBEDDINGS_DIR),
        os.path.join(out, VECTOR_SEARCH_DIR),
    )


def read_embeddings(catalog: InferenceResult) -> Tuple[np.ndarray, np.ndarray, List[str], np.ndarray]:
    """(ids, labels, class names, float32 embeddings [N, D]) of a CatalogEmbedder's output, in a
    stable order (sorted by id)."""
    rows = []
    for path in sorted(tf.io.gfile.glob(os.path.join(catalog.uri, EMBEDDINGS_DIR, "*"))):
        rows += list(_read_embeddings(path))
    rows.sort(key=lambda row: row[0])
    if not rows:
        return np.array([], object), np.zeros(0, np.int64), [], np.zeros((0, 0), np.float32)
    dimensions = {len(row[3]) for row in rows}
    if len(dimensions) > 1:
        raise CatalogError(f"catalog {catalog.uri}: embeddings of {sorted(dimensions)} dimensions mixed")
    return (
        np.array([row[0] for row in rows], dtype=object),
        np.array([row[1] for row in rows], np.int64),
        [row[2] for row in rows],
        np.stack([row[3] for row in rows]).astype(np.float32),
    )


def check_model(catalog: InferenceResult, dimension: int, model: Optional[Model] = None) -> None:
    """Refuses a catalog embedded with another model: another embedding dimension, or (given the
    model) another model artifact."""
    embedded = catalog.get_int_custom_property(DIMENSION)
    if embedded != dimension:
        raise CatalogError(
            f"catalog {catalog.uri}: embeddings of {embedded} dimensions, the model's have {dimension}: the "
            "catalog was embedded with another model; embed it with this one"
        )
    if model is not None and catalog.get_string_custom_property(MODEL_URI) not in ("", model.uri):
        raise CatalogError(
            f"catalog {catalog.uri} was embedded with the model {catalog.get_string_custom_property(MODEL_URI)}, "
            f"not {model.uri}; embed it with this one"
        )
