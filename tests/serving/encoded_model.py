"""An encoded-source embedding SavedModel, built in-process for the tests: tf.Examples as ExampleGen
writes them for images:/manifest:/tfds: sources (the encoded file bytes in `image`, `label`,
`class_name`, `image_width/height/channels`, `image_format`, `id`), the project's preprocessing_fn
through tf.Transform (Beam's in-process FnApiRunner, analysing the examples given), an untrained
tiny network and the Trainer's export."""

from __future__ import annotations

import functools
import io
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from triplet_tfx.components import contract
from triplet_tfx.components.config import DataConfig, PipelineConfig, TrainConfig
from triplet_tfx.components.data import preprocessing


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: Optional[str] = None, **options) -> bytes:
    from PIL import Image

    array = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def random_photo(height: int, width: int, seed: int, channels: int = 3) -> np.ndarray:
    """A smooth random picture (JPEG keeps such pictures close to themselves)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 4), max(2, width // 4), channels)).astype(np.float32)
    big = tf.image.resize(small, [height, width], method="bilinear").numpy()
    return np.clip(np.round(big + rng.normal(0, 8, big.shape)), 0, 255).astype(np.uint8)


def encoded_example(data: bytes, label: int, class_name: str, item_id: str = "") -> bytes:
    """A serialized tf.Example as ExampleGen writes it for encoded sources."""
    image = tf.io.decode_image(data, expand_animations=False)
    fmt = "png" if data.startswith(b"\x89PNG") else "jpeg" if data.startswith(b"\xff\xd8") else "other"

    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    def strings(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    features = {
        contract.IMAGE_KEY: strings(data),
        contract.LABEL_KEY: ints(label),
        contract.CLASS_NAME_KEY: strings(class_name.encode()),
        contract.IMAGE_HEIGHT_KEY: ints(image.shape[0]),
        contract.IMAGE_WIDTH_KEY: ints(image.shape[1]),
        contract.IMAGE_CHANNELS_KEY: ints(image.shape[2]),
        contract.IMAGE_FORMAT_KEY: strings(fmt.encode()),
        contract.ID_KEY: strings((item_id or f"item{label}").encode()),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def encoded_spec() -> Dict[str, tf.io.FixedLenFeature]:
    """The schema SchemaGen infers (infer_feature_shape=True) for ExampleGen's encoded examples."""
    return {
        contract.IMAGE_KEY: tf.io.FixedLenFeature([1], tf.string),
        contract.LABEL_KEY: tf.io.FixedLenFeature([1], tf.int64),
        contract.CLASS_NAME_KEY: tf.io.FixedLenFeature([1], tf.string),
        contract.IMAGE_HEIGHT_KEY: tf.io.FixedLenFeature([1], tf.int64),
        contract.IMAGE_WIDTH_KEY: tf.io.FixedLenFeature([1], tf.int64),
        contract.IMAGE_CHANNELS_KEY: tf.io.FixedLenFeature([1], tf.int64),
        contract.IMAGE_FORMAT_KEY: tf.io.FixedLenFeature([1], tf.string),
        contract.ID_KEY: tf.io.FixedLenFeature([1], tf.string),
    }


def encoded_config(
    resize: str = "stretch", height: int = 16, width: int = 12, channels: int = 3, num_classes: int = 3
) -> PipelineConfig:
    return PipelineConfig(
        data=DataConfig(
            source="images:/unused",
            image_height=height,
            image_width=width,
            channels=channels,
            resize=resize,
            num_classes=num_classes,
        ),
        train=TrainConfig(embedding_dim=8),
    )


def write_transform_graph(
    folder: str,
    examples: Sequence[bytes],
    config: PipelineConfig,
    spec: Optional[Dict[str, tf.io.FixedLenFeature]] = None,
) -> str:
    """Transform's output folder for the project's preprocessing_fn analysing `examples`."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    spec = spec or encoded_spec()
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    fn = functools.partial(preprocessing.preprocessing_fn, custom_config={"data": config.to_dict()["data"]})
    records = [{k: v.numpy() for k, v in tf.io.parse_single_example(e, spec).items()} for e in examples]
    output = os.path.join(folder, "transform")
    with beam.Pipeline(runner=FnApiRunner()) as pipeline, tft_beam.Context(temp_dir=os.path.join(folder, "tmp")):
        transform_fn = (pipeline | beam.Create(records), metadata) | tft_beam.AnalyzeDataset(fn)
        _ = transform_fn | tft_beam.WriteTransformFn(output)
    metadata_io.write_metadata(metadata, os.path.join(output, tft.TFTransformOutput.RAW_METADATA_DIR))
    return output


def export_untrained(folder: str, transform_output: str, config: PipelineConfig):
    """(Keras model, export path): a seeded untrained network exported as the Trainer exports it."""
    import keras
    import tensorflow_transform as tft

    from triplet_tfx.components.training.export import export_serving_model
    from triplet_tfx.components.training.network import build_model

    keras.utils.set_random_seed(0)
    model = build_model(config.data.image_shape, config.train.embedding_dim)
    path = os.path.join(folder, "model")
    export_serving_model(model, tft.TFTransformOutput(transform_output), config, path)
    return model, path


def photos(seed: int = 0) -> List[bytes]:
    """JPEG and PNG photos of several sizes and aspect ratios (and the training size, 16 x 12)."""
    sizes = [(16, 12), (40, 80), (80, 40), (33, 17), (7, 9), (64, 48)]
    out = []
    for i, (h, w) in enumerate(sizes):
        pixels = random_photo(h, w, seed + i)
        out.append(encode(pixels, "PNG"))
        out.append(encode(pixels, "JPEG", quality=90))
    out.append(encode(random_photo(20, 30, seed + 99, 1), "PNG"))  # grey
    out.append(
        encode(np.concatenate([random_photo(25, 25, seed + 7), np.full((25, 25, 1), 128, np.uint8)], -1), "PNG", "RGBA")
    )
    return out
