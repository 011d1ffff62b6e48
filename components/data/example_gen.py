"""SourceExampleGen: one ExampleGen for every data source of the configuration.

A thin TFX wrapper around `data_sources`: TFX's own ExampleGen machinery (splits, gzipped
TFRecord output, span/version properties) with a Beam PTransform that reads the source.
Split patterns name the source's own splits (`train`/`test` for MNIST, TFDS split names,
`train`/`eval` sub-folders of a TFRecord or image folder, a manifest's split column); `images:`
and `manifest:` sources without splits are split by hash of the serialized example.

Encoded sources check every image before it is written (data/image_check.py); a bad image stops
the run naming it, or under --on-bad-image skip is left out, listed in the Examples artifact's
contract.SKIPPED_IMAGES_FILE and counted in its contract.SKIPPED_IMAGES_PROPERTY. Every split must
hold at least 2 classes, and without a class split all --num-classes classes must appear.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
from tfx import types
from tfx.components.example_gen import base_example_gen_executor, driver, utils as example_gen_utils, write_split
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, component_spec, standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from triplet_tfx.components import class_split, contract
from triplet_tfx.components.config import DataConfig
from triplet_tfx.components.data import data_sources, image_check, image_folder, image_items, manifest
from triplet_tfx.components.data.errors import BadImageError
from triplet_tfx.components.tfrecords import WriteToGzipTFRecord

DATA_CONFIG_KEY = "data_config"
DATA_FINGERPRINT_KEY = "data_fingerprint"
# 1: a catalog to embed (serving/catalog.py), not training data: every item in one split (or the
# source's own splits), no rule on how many classes a split holds.
CATALOG_KEY = "catalog"
CATALOG_SPLIT = "catalog"
# Execution property added by the executor: the Examples artifact's folder, where the Beam graph
# writes each split's skipped images (SKIPPED_PART_PREFIX files, merged into SKIPPED_IMAGES_FILE).
SKIPPED_DIR_KEY = "_skipped_images_dir"
SKIPPED_PART_PREFIX = ".skipped_images-"
SKIPPED = "skipped"  # the Beam output of skipped images: "<where>: <reason>" lines
_CHUNK = 2000  # examples per Beam element when slicing in-memory arrays
logger = logging.getLogger(__name__)


def named_source(data: DataConfig):
    """The listing of an images: folder (image_folder.FolderLayout) or a manifest (manifest.Manifest)."""
    if data.source_kind == "manifest":
        return manifest.read(data.source_path)
    return image_folder.scan(data.source_path)


def split_patterns(data: DataConfig) -> Dict[str, str]:
    """{output split: source split pattern}; empty for sources split by hash."""
    if data.source_kind in ("images", "manifest"):
        return {"train": "train", "eval": "eval"} if named_source(data).has_splits else {}
    return {
        "mnist": {"train": "train", "eval": "test"},
        "tfds": {"train": data.tfds_train_split, "eval": data.tfds_eval_split},
        "tfrecord": {"train": "train", "eval": "eval"},
    }[data.source_kind]


def _checked(image: np.ndarray, label: int, data: DataConfig, where: str) -> bytes:
    data_sources.check_example(image, label, data.image_shape, data.num_classes, where)
    return data_sources.make_example(image, label)


def _mnist_chunk(bounds: Tuple[int, int], split: str, data: DataConfig) -> List[bytes]:
    images, labels = data_sources.load_mnist()[split]
    start, stop = bounds
    images, labels = images[start:stop], labels[start:stop]
    # `check_example` of the chunk's first example that fails it (each one, for a wrong shape): it raises.
    shape_fits = images.shape[1:] == tuple(data.image_shape)
    failing = np.flatnonzero((labels < 0) | (labels >= data.num_classes)) if shape_fits else [0]
    for i in failing[:1]:
        where = f"mnist {split} example {start + i}"
        data_sources.check_example(images[i], labels[i], data.image_shape, data.num_classes, where)
    return data_sources.make_examples(images, labels)


def _mnist_labels(data: DataConfig, split: str) -> np.ndarray:
    """The labels of the MNIST examples written from its `split` ("train" or "test"): the first
    --max-examples of them, or all."""
    return data_sources.load_mnist()[split][1][: data.max_examples or None]


def _bad_image(err: BadImageError, data: DataConfig) -> Iterator[beam.pvalue.TaggedOutput]:
    """A bad image stops the run (raised), or under --on-bad-image skip goes to the skipped output."""
    if data.on_bad_image != "skip":
        raise err
    logger.warning("skipped image %s", err)
    yield beam.pvalue.TaggedOutput(SKIPPED, str(err))


def _encoded(
    content: bytes, where: str, label: int, class_name: str, item_id: Optional[str], data: DataConfig
) -> Iterator[Any]:
    try:
        info = image_check.check_image(content, where)
    except BadImageError as err:
        yield from _bad_image(err, data)
        return
    yield data_sources.make_encoded_example(content, label, class_name, info, item_id)


def _image_item(item: image_items.ImageItem, class_ids: Dict[str, int], data: DataConfig) -> Iterator[Any]:
    """An image of a folder or manifest: its example, or (skip mode) its skipped line."""
    try:
        content = image_items.read_item(item)
    except BadImageError as err:
        yield from _bad_image(err, data)
        return
    yield from _encoded(content, item.where, class_ids[item.class_name], item.class_name, item.id, data)


def _tfds_split(split: str, data: DataConfig) -> Iterator[Any]:
    name = data.source_path
    records = data_sources.read_tfds(name, split, data.tfds_data_dir, data.max_examples)
    for i, (content, label, class_name, tfds_id) in enumerate(records):
        where = f"tfds:{name} {split} example {i}" + (f" ({tfds_id})" if tfds_id else "")
        _check_label(label, data, where)
        yield from _encoded(content, where, label, class_name, tfds_id, data)


def _check_label(label: int, data: DataConfig, where: str) -> None:
    if not 0 <= label < data.num_classes:
        raise data_sources.DataSourceError(
            f"{where}: label {label} out of range [0, {data.num_classes}) (--num-classes)"
        )


def _tfrecord_file(path: str, data: DataConfig) -> Iterator[Any]:
    """Each record of one file, checked: an unreadable file or bad record names the file. Raw
    records (uint8 pixels of the training shape) are rewritten as today; encoded ones
    (--tfrecord-encoded) to the encoded layout, with class_name = the label as text."""
    with tf.io.gfile.GFile(path, "rb") as f:
        compression = "GZIP" if f.read(2) == b"\x1f\x8b" else ""
    image_key, label_key = data.tfrecord_image_key, data.tfrecord_label_key
    feature_spec = {
        image_key: tf.io.FixedLenFeature([], tf.string),
        label_key: tf.io.FixedLenFeature([], tf.int64),
    }
    expected = int(np.prod(data.image_shape))
    index = -1
    try:
        for index, record in enumerate(tf.data.TFRecordDataset(path, compression_type=compression)):
            try:
                parsed = tf.io.parse_single_example(record, feature_spec)
            except tf.errors.InvalidArgumentError as err:
                raise data_sources.DataSourceError(
                    f"{path} record {index}: not a tf.Example with a bytes '{image_key}' and an int64 "
                    f"'{label_key}' ({err.message.splitlines()[0]}); name the features with "
                    "--tfrecord-image-key and --tfrecord-label-key"
                ) from None
            content = parsed[image_key].numpy()
            label = int(parsed[label_key])
            where = f"{path} record {index}"
            if data.tfrecord_encoded:
                _check_label(label, data, where)
                yield from _encoded(content, where, label, str(label), None, data)
                continue
            if len(content) != expected:
                encoded = image_check.sniff_format(content)
                if encoded:
                    raise data_sources.DataSourceError(
                        f"{where}: feature '{image_key}' holds an encoded {encoded.upper()} image, not raw "
                        f"pixels: pass --tfrecord-encoded"
                    )
                raise data_sources.DataSourceError(
                    f"{where}: feature '{image_key}' has {len(content)} bytes, "
                    f"expected {expected} raw uint8 pixels of shape {data.image_shape}"
                )
            image = np.frombuffer(content, np.uint8).reshape(data.image_shape)
            yield _checked(image, label, data, where)
    except tf.errors.OpError as err:  # DataLossError and friends: corrupt or truncated file
        where = "at the first record" if index < 0 else f"after record {index}"
        raise data_sources.DataSourceError(
            f"{path}: unreadable TFRecord {where} ({type(err).__name__}: {err.message})"
        ) from None


def _write_skipped(lines: List[str], folder: Optional[str], split_pattern: str) -> None:
    """One split's skipped images, to a part file of the Examples folder (the executor merges them)."""
    if not lines or not folder:
        return
    tf.io.gfile.makedirs(folder)
    name = SKIPPED_PART_PREFIX + hashlib.sha256(split_pattern.encode()).hexdigest()[:12]
    with tf.io.gfile.GFile(os.path.join(folder, name), "w") as f:
        f.write("".join(line + "\n" for line in sorted(lines)))


def merge_skipped(folder: str) -> int:
    """Merges the part files of the skipped images into contract.SKIPPED_IMAGES_FILE (written only
    when images were skipped); returns how many were skipped."""
    lines: List[str] = []
    for part in sorted(tf.io.gfile.glob(os.path.join(folder, SKIPPED_PART_PREFIX + "*"))):
        with tf.io.gfile.GFile(part, "r") as f:
            lines += [line for line in f.read().splitlines() if line]
        tf.io.gfile.remove(part)
    if lines:
        with tf.io.gfile.GFile(os.path.join(folder, contract.SKIPPED_IMAGES_FILE), "w") as f:
            f.write("".join(line + "\n" for line in sorted(lines)))
    return len(lines)


def _fail_if_empty(count: int, where: str) -> None:
    if count == 0:
        raise data_sources.DataSourceError(f"{where}: no examples (empty split)")


def _read_with_skips(
    pcoll: beam.pvalue.PCollection, fn, *args
) -> Tuple[beam.pvalue.PCollection, beam.pvalue.PCollection]:
    outputs = pcoll | "Read" >> beam.FlatMap(fn, *args).with_outputs(SKIPPED, main="examples")
    return outputs.examples, outputs[SKIPPED]


def _named_items(data: DataConfig, split_pattern: str) -> Tuple[List[image_items.ImageItem], Dict[str, int]]:
    """The items of one split of an images: or manifest: source (stratified --max-examples) and the
    class ids by name; the source must have --num-classes classes."""
    source = named_source(data)
    data_sources.check_class_count(
        source.class_names,
        data.num_classes,
        data.source_path,
        "class folders" if data.source_kind == "images" else "classes",
    )
    items = source.splits[split_pattern if source.has_splits else "all"]
    items = image_items.stratified(items, data.max_examples, source.class_names)
    return items, {name: i for i, name in enumerate(source.class_names)}


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(bytes)
def _SourceToExamples(
    pipeline: beam.Pipeline, exec_properties: Dict[str, Any], split_pattern: str
) -> beam.pvalue.PCollection:
    data = DataConfig(**json.loads(exec_properties[DATA_CONFIG_KEY]))
    limit = data.max_examples
    kind = data.source_kind
    skipped = None
    if kind == "mnist":
        count = len(_mnist_labels(data, split_pattern))
        chunks = [(s, min(s + _CHUNK, count)) for s in range(0, count, _CHUNK)]
        examples = (
            pipeline | "Chunks" >> beam.Create(chunks) | "Read" >> beam.FlatMap(_mnist_chunk, split_pattern, data)
        )
        _fail_if_empty(count, f"mnist split {split_pattern!r}")  # known without counting
        return examples
    if kind == "tfds":
        examples, skipped = _read_with_skips(pipeline | "Split" >> beam.Create([split_pattern]), _tfds_split, data)
        examples = examples | "Spread" >> beam.Reshuffle()
        where = f"{data.source} split {split_pattern!r}"
    elif kind == "tfrecord":
        files = data_sources.tfrecord_files(data.source_path, split_pattern)
        examples, skipped = _read_with_skips(pipeline | "Files" >> beam.Create(files), _tfrecord_file, data)
        if limit:
            examples = examples | "Limit" >> beam.combiners.Sample.FixedSizeGlobally(limit) | beam.FlatMap(lambda x: x)
        where = os.path.join(data.source_path, split_pattern)
    else:  # images: and manifest:, split by their split folders or column, or afterwards by hash
        items, class_ids = _named_items(data, split_pattern)
        examples, skipped = _read_with_skips(pipeline | "Files" >> beam.Create(items), _image_item, class_ids, data)
        where = data.source_path + ("" if split_pattern in ("*", "all") else f" split {split_pattern!r}")
    if skipped is not None and data.on_bad_image == "skip":
        _ = (
            skipped
            | "ListSkipped" >> beam.combiners.ToList()
            | "WriteSkipped" >> beam.Map(_write_skipped, exec_properties.get(SKIPPED_DIR_KEY), split_pattern)
        )
    _ = examples | "Count" >> beam.combiners.Count.Globally() | "FailIfEmpty" >> beam.Map(_fail_if_empty, where)
    return examples


def example_label(serialized: bytes) -> int:
    return tf.train.Example.FromString(serialized).features.feature[data_sources.LABEL_KEY].int64_list.value[0]


def _fail_if_no_class_left(count: int, split: str, classes: Tuple[int, ...]) -> None:
    if count == 0:
        raise data_sources.DataSourceError(
            f"split {split!r} has no examples of its classes {class_split.format_classes(classes)} "
            f"(--{split}-classes / --class-split)"
        )


def _check_classes(labels: List[int], split: str, data: DataConfig) -> None:
    if len(labels) == 1:  # an empty split fails by name elsewhere
        raise data_sources.DataSourceError(
            f"split {split!r} holds examples of 1 class only (class {labels[0]}): triplet training and "
            "retrieval evaluation need at least 2 "
            f"classes in each split ({data.source}; --max-examples keeps classes in turn)"
        )


def _check_all_classes(labels: List[int], data: DataConfig) -> None:
    if len(labels) < data.num_classes:
        missing = sorted(set(range(data.num_classes)) - set(labels))
        raise data_sources.DataSourceError(
            f"{data.source}: the examples hold {len(labels)} of --num-classes {data.num_classes} classes (no "
            f"example of class {', '.join(map(str, missing[:12]))}{', ...' if len(missing) > 12 else ''}); "
            "lower --num-classes or raise --max-examples"
        )


def _known_labels(data: DataConfig, split: str) -> Optional[List[int]]:
    """The sorted distinct labels an output split will hold, where known without reading its examples:
    MNIST's, from its arrays (within --max-examples, of the split's classes); None for other sources."""
    if data.source_kind != "mnist":
        return None
    labels = np.unique(_mnist_labels(data, split_patterns(data)[split]))
    keep = (data.classes_by_split or {}).get(split)
    return [int(label) for label in labels if keep is None or label in keep]


class _DistinctLabels(beam.CombineFn):
    """The sorted distinct labels of serialized examples. A combiner, so that each bundle sends one
    set on, not every label through a shuffle as `beam.Distinct` does."""

    def create_accumulator(self) -> Set[int]:
        return set()

    def add_input(self, labels: Set[int], serialized: bytes) -> Set[int]:
        labels.add(example_label(serialized))
        return labels

    def merge_accumulators(self, accumulators: Iterable[Set[int]]) -> Set[int]:
        return set().union(*accumulators)

    def extract_output(self, labels: Set[int]) -> List[int]:
        return sorted(labels)


class SourceExampleGenExecutor(base_example_gen_executor.BaseExampleGenExecutor):
    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _SourceToExamples

    def GenerateExamplesByBeam(
        self, pipeline: beam.Pipeline, exec_properties: Dict[str, Any]
    ) -> Dict[str, beam.pvalue.PCollection]:
        """TFX's splits, then the class split: each output split keeps only its own classes (after
        the hash split of `images:` sources, so every source is filtered the same way). Then each
        split must hold at least 2 classes, and, without a class split, all --num-classes appear."""
        splits = super().GenerateExamplesByBeam(pipeline, exec_properties)
        if exec_properties.get(CATALOG_KEY):
            return splits
        data = DataConfig(**json.loads(exec_properties[DATA_CONFIG_KEY]))
        classes = data.classes_by_split
        for split, keep in (classes or {}).items():
            keep_set = frozenset(keep)
            splits[split] = splits[split] | f"KeepClasses[{split}]" >> beam.Filter(
                lambda example, keep_set=keep_set: example_label(example) in keep_set
            )
            _ = (
                splits[split]
                | f"CountKept[{split}]" >> beam.combiners.Count.Globally()
                | f"FailIfNoClassLeft[{split}]" >> beam.Map(_fail_if_no_class_left, split, keep)
            )
        labels = {}
        for split, examples in splits.items():
            known = _known_labels(data, split)
            labels[split] = (
                examples | f"Labels[{split}]" >> beam.CombineGlobally(_DistinctLabels())
                if known is None
                else pipeline | f"Labels[{split}]" >> beam.Create([known])
            )
        for split, distinct in labels.items():
            _ = distinct | f"TwoClasses[{split}]" >> beam.Map(_check_classes, split, data)
        if classes is None:
            _ = (
                tuple(labels.values())
                | "AllSplits" >> beam.Flatten()
                | "AllLabels" >> beam.CombineGlobally(lambda lists: sorted(set().union(*lists)))
                | "AllClasses" >> beam.Map(_check_all_classes, data)
            )
        return splits

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        """TFX's ExampleGen without its shuffle before each split is written, then the skipped images
        of encoded sources (--on-bad-image skip): their list, contract.SKIPPED_IMAGES_FILE, and their
        count, contract.SKIPPED_IMAGES_PROPERTY.

        TFX's `Do` reshuffles every split before writing it (`write_split.WriteSplit`) to spread the
        writes over a distributed runner's workers; `beam.Create` already spreads what the sources
        read (chunks, files, items; `tfds:` reshuffles its records), and on the in-process runner
        the shuffle kept the order and cost 2.0-2.7 s of MNIST's 60,000 training examples
        (bench/README.md). Each split is written as TFX writes it: serialized examples, gzipped
        TFRecords (at gzip's fastest level: tfrecords.py), the artifact's split names, payload
        format and file format as TFX sets them."""
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        exec_properties = {**exec_properties, SKIPPED_DIR_KEY: examples.uri}
        self._log_startup(input_dict, output_dict, exec_properties)
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        output_config = example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
        examples.split_names = artifact_utils.encode_split_names(
            example_gen_utils.generate_output_split_names(input_config, output_config)
        )
        with self._make_beam_pipeline() as pipeline:
            for split, split_examples in self.GenerateExamplesByBeam(pipeline, exec_properties).items():
                path = os.path.join(
                    artifact_utils.get_split_uri([examples], split), write_split.DEFAULT_TF_RECORD_FILE_NAME
                )
                _ = split_examples | f"WriteSplit[{split}]" >> WriteToGzipTFRecord(path)
        examples_utils.set_payload_format(examples, exec_properties[standard_component_specs.OUTPUT_DATA_FORMAT_KEY])
        examples_utils.set_file_format(
            examples, write_split.to_file_format_str(exec_properties[standard_component_specs.OUTPUT_FILE_FORMAT_KEY])
        )
        if DataConfig(**json.loads(exec_properties[DATA_CONFIG_KEY])).encoded_images:
            count = merge_skipped(examples.uri)
            examples.set_int_custom_property(contract.SKIPPED_IMAGES_PROPERTY, count)
            if count:
                logger.warning(
                    "skipped %d image(s) that cannot be used (--on-bad-image skip): listed in %s",
                    count,
                    os.path.join(examples.uri, contract.SKIPPED_IMAGES_FILE),
                )


class SourceExampleGenSpec(component_spec.ComponentSpec):
    PARAMETERS = {
        **standard_component_specs.QueryBasedExampleGenSpec.PARAMETERS,
        DATA_CONFIG_KEY: component_spec.ExecutionParameter(type=str),  # DataConfig as JSON
        # Sizes and times of the source files, so that TFX's cache notices changed data.
        DATA_FINGERPRINT_KEY: component_spec.ExecutionParameter(type=str),
        CATALOG_KEY: component_spec.ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {}
    OUTPUTS = standard_component_specs.QueryBasedExampleGenSpec.OUTPUTS


class SourceExampleGen(base_beam_component.BaseBeamComponent):
    """ExampleGen for `mnist`, `tfds:`, `tfrecord:`, `images:` and `manifest:` sources."""

    SPEC_CLASS = SourceExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(SourceExampleGenExecutor)
    DRIVER_CLASS = driver.QueryBasedDriver

    def __init__(self, data: DataConfig, data_fingerprint: Optional[str] = None, catalog: bool = False):
        """`catalog`: the examples of a catalog (`catalog_data`), in one split (or the source's own)."""
        patterns = split_patterns(data)
        if patterns:
            input_config = example_gen_pb2.Input(
                splits=[example_gen_pb2.Input.Split(name=name, pattern=pattern) for name, pattern in patterns.items()]
            )
            output_config = example_gen_pb2.Output()
        else:
            input_config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="all", pattern="*")])
            buckets = {CATALOG_SPLIT: 1} if catalog else {"train": 100 - data.eval_percent, "eval": data.eval_percent}
            output_config = example_gen_pb2.Output(
                split_config=example_gen_pb2.SplitConfig(
                    splits=[
                        example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=count)
                        for name, count in buckets.items()
                    ]
                )
            )
        spec = SourceExampleGenSpec(
            input_config=input_config,
            output_config=output_config,
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            data_config=json.dumps(dataclasses.asdict(data), sort_keys=True),
            data_fingerprint=data_fingerprint or "",
            catalog=int(catalog),
            examples=types.Channel(type=standard_artifacts.Examples),
        )
        super().__init__(spec=spec)
