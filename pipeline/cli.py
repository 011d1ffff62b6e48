"""`triplet-tfx`: the command line. Flags build the one PipelineConfig.

  triplet-tfx run                     # the main job: full MNIST, the tutorial's settings
  triplet-tfx run --max-examples 2000 --max-steps 100 --output-root /tmp/smoke
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Iterator, List, Optional

import triplet_tfx.pipeline  # noqa: F401  (pins the Keras flavour before TensorFlow loads)
from triplet_tfx.kubeflow import cli as kubeflow_cli
from triplet_tfx.pipeline import runs, terminal
from triplet_tfx.components.config import (BEAM_ENVIRONMENTS, BEAM_RUNNERS, DEFAULT_BEAM_ARGS,
                                         ON_BAD_IMAGE, RESIZE_MODES,
                                         NETWORKS, PRECISIONS, PROFILES, SPLITS, STRATEGIES, BeamConfig, ConfigError,
                                         DataConfig, EvalConfig, PipelineConfig, ServingConfig, TrainConfig)

OUTPUT_MARKER = "triplet-tfx-output.json"
EXIT_NOT_BLESSED = 3  # `run --require-blessed`
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as shells report SIGINT
logger = logging.getLogger(__name__)


class OutputRootError(RuntimeError):
    pass


class RunInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped the run; its unfinished executions are marked cancelled."""


class PipelineRunError(RuntimeError):
    """A component failed; `summary` describes the run up to there."""

    def __init__(self, cause: Exception, summary: "Optional[summary.RunSummary]"):
        super().__init__(f"the run failed: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
        self.summary = summary


# Flags whose name differs from their configuration field.
_FLAG_FOR_FIELD = {"distance_metric": "distance", "source": "data", "max_examples_per_split": "max_examples"}


def profile_flag_defaults(profile: str) -> dict:
    """The argparse defaults that a profile sets (its fields, under their flag names)."""
    return {_FLAG_FOR_FIELD.get(field, field): value
            for section in PROFILES[profile].values() for field, value in section.items()}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    d, t, e, p = DataConfig(), TrainConfig(), EvalConfig(), PipelineConfig()
    parser.add_argument("--profile", choices=sorted(PROFILES), default="tutorial",
                        help="named defaults: tutorial (the TFA tutorial's settings) or recommended "
                             "(" + ", ".join(f"{k}={v}" for k, v in profile_flag_defaults("recommended").items())
                             + "); other flags override it. Default: %(default)s")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=d.source, metavar="SOURCE",
                      help="mnist (bundled, offline), tfds:<name> (a prepared TFDS data set), "
                           "tfrecord:<dir> (<dir>/train/* and <dir>/eval/* of tf.Example TFRecords), "
                           "images:<dir> (one sub-folder per class, or <dir>/train/<class>/ and "
                           "<dir>/eval/<class>/; PNG, JPEG, GIF, BMP of any size) or manifest:<file> "
                           "(CSV or JSON Lines with uri, label and optional split and id). Default: %(default)s")
    data.add_argument("--tfds-data-dir", default=d.tfds_data_dir, help="TFDS data dir of tfds: sources")
    data.add_argument("--image-size", "--input-size", default="x".join(map(str, d.image_shape)), metavar="HxWxC",
                      help="the training shape, the network's input: every image is converted to C channels "
                           "and resized to H x W by --resize, in training and serving alike (default %(default)s)")
    data.add_argument("--resize", choices=RESIZE_MODES, default=d.resize,
                      help="images of another size: stretch to HxW, or keep the aspect ratio and pad (black) "
                           "or centre-crop; antialiased bilinear (default %(default)s)")
    data.add_argument("--on-bad-image", choices=ON_BAD_IMAGE, default=d.on_bad_image,
                      help="an image that does not decode: fail naming the file, or skip it (counted, listed "
                           "in skipped_images.txt of the examples and in the summary). Default: %(default)s")
    data.add_argument("--tfrecord-image-key", default=d.tfrecord_image_key, metavar="NAME",
                      help="tfrecord: sources: the image feature (default %(default)s; TFDS and TF-Slim "
                           "write image/encoded)")
    data.add_argument("--tfrecord-label-key", default=d.tfrecord_label_key, metavar="NAME",
                      help="tfrecord: sources: the int64 label feature (default %(default)s; TF-Slim "
                           "writes image/class/label)")
    data.add_argument("--tfrecord-encoded", action="store_true",
                      help="tfrecord: sources hold encoded images (PNG, JPEG...), not raw pixels")
    data.add_argument("--num-classes", type=int, default=d.num_classes,
                      help="default %(default)s; an images: folder must have exactly this many class folders")
    data.add_argument("--convert-channels", choices=("luminance",), default=None,
                      help="deprecated, no effect: every image is converted to --image-size's channels by one "
                           "rule (docs/data.md); accepted with a warning until the next release")
    data.add_argument("--max-examples", type=int, default=d.max_examples_per_split, metavar="N",
                      help="keep only N examples of each split, for smoke runs (the first N of mnist and "
                           "tfds:, the classes in turn for images: and manifest:, a random N of a tfrecord: folder)")
    split = parser.add_argument_group(
        "unseen-class evaluation", "train on some classes, evaluate on the others (labels keep their class ids)")
    split.add_argument("--train-classes", default=d.train_classes, metavar="IDS",
                       help="the train split keeps only these classes, e.g. 0-4 or 0,2,4-6 (with "
                            "--eval-classes alone: its complement)")
    split.add_argument("--eval-classes", default=d.eval_classes, metavar="IDS",
                       help="the eval split keeps only these classes, e.g. 5-9 (with --train-classes alone: "
                            "its complement); needs --eval-protocol leave_one_out")
    split.add_argument("--class-split", default=d.class_split, metavar="random:SEED",
                       help="train on a seeded random half of the classes, evaluate on the other half")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=t.epochs, help="default %(default)s")
    train.add_argument("--batch-size", type=int, default=t.batch_size, help="default %(default)s")
    train.add_argument("--learning-rate", type=float, default=t.learning_rate, help="Adam; default %(default)s")
    train.add_argument("--lr-schedule", choices=("constant", "cosine"), default=t.lr_schedule,
                       help="default %(default)s")
    train.add_argument("--network", choices=NETWORKS, default=t.network,
                       help="embedding network: tutorial (the seed's), strided (cheaper per step, batch "
                            "normalisation) or a Keras Applications backbone with a projection head "
                            "(colour images of at least 32x32). Default: %(default)s")
    train.add_argument("--backbone-weights", default=t.backbone_weights, metavar="imagenet|none|PATH",
                       help="backbones: ImageNet weights (Keras downloads them once; machines without "
                            "internet give the PATH of the .weights.h5/.h5 file without the top), none "
                            "(random), or PATH. Default: %(default)s")
    train.add_argument("--freeze-backbone-epochs", type=int, default=t.freeze_backbone_epochs, metavar="N",
                       help="backbones: train the head alone for N epochs (backbone frozen, batch norm in "
                            "inference mode), then everything at a lower learning rate (default %(default)s)")
    train.add_argument("--fine-tune-lr-factor", type=float, default=t.fine_tune_lr_factor, metavar="F",
                       help="learning rate x F after the frozen epochs (default %(default)s)")
    train.add_argument("--dropout", type=float, default=t.dropout, metavar="RATE",
                       help="rate of the network's Dropout layers, in training (default %(default)s)")
    train.add_argument("--loss", choices=("semihard", "hard"), default=t.loss, help="default %(default)s")
    train.add_argument("--margin", type=float, default=t.margin, help="default %(default)s")
    train.add_argument("--distance", choices=("L2", "squared-L2", "angular"), default=t.distance_metric,
                       help="default %(default)s")
    train.add_argument("--soft", action="store_true", help="soft-margin hard loss")
    train.add_argument("--examples-per-class", type=int, default=t.examples_per_class, metavar="M",
                       help="class-balanced batches of M examples per class (default: plain shuffled batches)")
    train.add_argument("--augment-shift", type=float, default=t.augment_shift, metavar="FRACTION",
                       help="random translation of training images by up to this fraction of their size "
                            "(default %(default)s: none)")
    train.add_argument("--precision", choices=PRECISIONS, default=t.precision,
                       help="layer arithmetic in training: mixed_bfloat16 is 1.5-2x faster on CPUs with "
                            "AVX512-BF16 or AMX (grep bf16 /proc/cpuinfo), mixed_float16 on GPUs; auto picks "
                            "one of these where the trainer runs natively, else float32. Weights and the "
                            "exported model stay float32. Default: %(default)s")
    train.add_argument("--max-steps", type=int, default=t.max_steps, help="cap on training steps (smoke runs)")
    train.add_argument("--seed", type=int, default=t.seed, help="default %(default)s")
    dist = parser.add_argument_group("training on several devices or workers")
    dist.add_argument("--strategy", choices=STRATEGIES, default=t.strategy,
                      help="tf.distribute strategy; auto: multi-worker when TF_CONFIG names several tasks, "
                           "mirrored over all local GPUs when there are several, else one device "
                           "(default %(default)s). --batch-size is the global batch")
    dist.add_argument("--mining", choices=("global", "replica"), default=t.mining,
                      help="triplet mining over the global batch or each replica's share (default %(default)s)")
    dist.add_argument("--checkpoint-every", type=int, default=t.checkpoint_every_steps, metavar="STEPS",
                      help="back up the training state every STEPS steps; a rerun after a kill resumes "
                           "(default %(default)s)")
    dist.add_argument("--workers", type=int, default=t.workers, metavar="N",
                      help="train in N local processes (chief + workers on 127.0.0.1) under "
                           "MultiWorkerMirroredStrategy (default %(default)s)")
    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--eval-protocol", choices=("leave_one_out", "eval_vs_train"), default=e.protocol,
                    help="eval queries against the rest of the eval split, or against the train split "
                         "(default %(default)s)")
    ev.add_argument("--min-precision-at-1", type=float, default=e.min_precision_at_1,
                    help="bless (and push) the model only if eval Precision@1 reaches this (default %(default)s)")
    ev.add_argument("--min-metric", action="append", default=[], metavar="NAME=VALUE",
                    help="another lower bound for blessing, repeatable, e.g. map_at_r=0.9 "
                         "(names as in metrics.json: recall_at_5, r_precision, map_at_r, nmi, ami...)")
    ev.add_argument("--max-regression", type=float, default=e.max_regression,
                    help="largest allowed drop of " + " and ".join(e.compared_metrics) +
                         " against the latest blessed model (default %(default)s)")
    ev.add_argument("--plot", choices=("umap", "pca"), default=e.plot_method,
                    help="2-D picture of the embeddings in the report (default %(default)s)")
    serve = parser.add_argument_group("serving")
    serve.add_argument("--index-split", choices=SPLITS, default=ServingConfig().index_split,
                       help="reference set of the served search signature: this split's examples, embedded by "
                            "the blessed model and pushed with it as one version (default %(default)s)")
    out = parser.add_argument_group("pipeline")
    out.add_argument("--pipeline-name", default=p.pipeline_name, help="default %(default)s")
    out.add_argument("--output-root", default=p.output_root,
                     help="folder for pipeline artifacts, ML Metadata and pushed models (default %(default)s)")
    out.add_argument("--model-name", default=p.model_name, help="default %(default)s")
    out.add_argument("--serving-dir", default=p.serving_dir,
                     help="push to <serving-dir>/<model-name>/<version>/ (default <output-root>/serving)")
    out.add_argument("--no-cache", action="store_true", help="re-run every component")
    _add_beam_flags(parser)


def _add_beam_flags(parser: argparse.ArgumentParser) -> None:
    beam = parser.add_argument_group(
        "beam (where ExampleGen, StatisticsGen and Transform run; README: Running the data components on "
        "Flink, Spark or Dataflow)")
    beam.add_argument("--beam-runner", choices=BEAM_RUNNERS, default="local",
                      help="local: in-process (" + " ".join(DEFAULT_BEAM_ARGS) + "); portable: a Beam job "
                           "server (--beam-job-endpoint); flink, spark: a cluster; dataflow: Google Cloud. "
                           "Default: %(default)s")
    beam.add_argument("--beam-job-endpoint", metavar="HOST:PORT",
                      help="portable/flink/spark: the Beam job server (e.g. Beam's Flink job server)")
    beam.add_argument("--beam-artifact-endpoint", metavar="HOST:PORT",
                      help="portable/flink/spark: the job server's artifact service, when the address it reports "
                           "is not reachable from here (e.g. beam-flink-job-server.flink:8098 from a KFP task)")
    beam.add_argument("--beam-environment-type", choices=BEAM_ENVIRONMENTS,
                      help="portable/flink/spark: where the SDK workers run: EXTERNAL (a worker pool), DOCKER "
                           "(default: the image in --beam-environment-config, else --image), PROCESS")
    beam.add_argument("--beam-environment-config", metavar="CONFIG",
                      help="EXTERNAL: the worker pool's HOST:PORT; DOCKER: an image; PROCESS: "
                           "'{\"command\": \"/opt/apache/beam/boot\"}'")
    beam.add_argument("--flink-master", metavar="HOST:PORT",
                      help="flink: the Flink REST endpoint, when Beam should start its own Flink job server "
                           "(needs Java) instead of --beam-job-endpoint")
    beam.add_argument("--spark-master", metavar="URL",
                      help="spark: spark://HOST:7077, when Beam should start its own Spark job server (needs "
                           "Java) instead of --beam-job-endpoint")
    beam.add_argument("--beam-parallelism", type=int, metavar="N", help="flink: default parallelism")
    beam.add_argument("--dataflow-project", metavar="PROJECT", help="dataflow: Google Cloud project")
    beam.add_argument("--dataflow-region", metavar="REGION", help="dataflow: e.g. us-central1")
    beam.add_argument("--dataflow-temp-location", metavar="GS_URI", help="dataflow: gs://BUCKET/tmp (required)")
    beam.add_argument("--dataflow-staging-location", metavar="GS_URI",
                      help="dataflow: gs://BUCKET/staging (default: the temp location)")
    beam.add_argument("--dataflow-machine-type", metavar="TYPE", help="dataflow: worker machine type, "
                                                                       "e.g. n2-standard-4")
    beam.add_argument("--dataflow-max-workers", type=int, metavar="N", help="dataflow: autoscaling limit")
    beam.add_argument("--beam-sdk-container-image", metavar="IMAGE",
                      help="dataflow: the workers' image (default: --image, the project's CPU image, "
                           "kubeflow/Dockerfile: it has the project installed)")
    beam.add_argument("--dataflow-service-account", metavar="EMAIL", help="dataflow: the workers' service account")
    beam.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                      help="a raw Beam pipeline option for the data components, repeatable; appended after "
                           "the runner's options, so it wins")


def beam_config_from_args(args: argparse.Namespace) -> BeamConfig:
    return BeamConfig(
        runner=args.beam_runner, job_endpoint=args.beam_job_endpoint, artifact_endpoint=args.beam_artifact_endpoint,
        environment_type=args.beam_environment_type,
        environment_config=args.beam_environment_config, flink_master=args.flink_master,
        spark_master=args.spark_master, parallelism=args.beam_parallelism, project=args.dataflow_project,
        region=args.dataflow_region, temp_location=args.dataflow_temp_location,
        staging_location=args.dataflow_staging_location, machine_type=args.dataflow_machine_type,
        max_workers=args.dataflow_max_workers, sdk_container_image=args.beam_sdk_container_image,
        service_account=args.dataflow_service_account)


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    if args.convert_channels:
        print("triplet-tfx: warning: --convert-channels is deprecated and has no effect: every image is "
              "converted to --image-size's channels by one rule (docs/data.md); it will be removed in the next "
              "release", file=sys.stderr)
    try:
        height, width, channels = (int(v) for v in args.image_size.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--image-size: expected HxWxC, e.g. 28x28x1, got {args.image_size!r}") from None
    bounds = {"precision_at_1": args.min_precision_at_1}
    for item in args.min_metric:
        name, _, value = item.partition("=")
        try:
            bounds[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--min-metric: expected NAME=VALUE, e.g. map_at_r=0.9, got {item!r}") from None
    return PipelineConfig(
        pipeline_name=args.pipeline_name,
        output_root=os.path.abspath(args.output_root),
        model_name=args.model_name,
        serving_dir=(args.serving_dir if "://" in args.serving_dir else os.path.abspath(args.serving_dir))
        if args.serving_dir else None,
        enable_cache=not args.no_cache,
        beam_args=tuple(args.beam_arg),
        beam=beam_config_from_args(args),
        data=DataConfig(source=args.data, tfds_data_dir=args.tfds_data_dir, image_height=height,
                        image_width=width, channels=channels, num_classes=args.num_classes,
                        max_examples_per_split=args.max_examples, train_classes=args.train_classes,
                        eval_classes=args.eval_classes, class_split=args.class_split,
                        resize=args.resize,
                        on_bad_image=args.on_bad_image, tfrecord_image_key=args.tfrecord_image_key,
                        tfrecord_label_key=args.tfrecord_label_key, tfrecord_encoded=args.tfrecord_encoded),
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                          lr_schedule=args.lr_schedule, network=args.network, dropout=args.dropout,
                          backbone_weights=args.backbone_weights, freeze_backbone_epochs=args.freeze_backbone_epochs,
                          fine_tune_lr_factor=args.fine_tune_lr_factor, loss=args.loss,
                          margin=args.margin, distance_metric=args.distance, soft=args.soft,
                          examples_per_class=args.examples_per_class, augment_shift=args.augment_shift,
                          precision=args.precision, max_steps=args.max_steps, seed=args.seed,
                          strategy=args.strategy, mining=args.mining,
                          checkpoint_every_steps=args.checkpoint_every, workers=args.workers),
        eval=EvalConfig(protocol=args.eval_protocol, lower_bounds=bounds, max_regression=args.max_regression,
                        plot_method=args.plot),
        serving=ServingConfig(index_split=args.index_split),
        kubeflow=kubeflow_cli.kubeflow_config_from_args(args),
    ).validate()


def claim_output_root(config: PipelineConfig) -> None:
    """Refuses an output root that holds something else; marks it as this pipeline's."""
    root = config.output_root
    marker = os.path.join(root, OUTPUT_MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            owner = json.load(f).get("pipeline_name")
        if owner != config.pipeline_name:
            raise OutputRootError(
                f"--output-root {root} holds the runs of pipeline {owner!r} ({marker}); "
                f"use --pipeline-name {owner} to continue it, or another --output-root")
        return
    if os.path.isdir(root) and os.listdir(root):
        raise OutputRootError(f"--output-root {root} is not empty and was not written by triplet-tfx "
                              f"(no {OUTPUT_MARKER}); choose an empty or new folder")
    os.makedirs(root, exist_ok=True)
    with open(marker, "w") as f:
        json.dump({"pipeline_name": config.pipeline_name}, f)


def check_writable(path: str, flag: str) -> None:
    """Fails (naming the flag) unless `path` is, or can be made, a folder this process can write in."""
    if "://" in path:
        return  # remote: checked where it is written
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputRootError(f"{flag} {path}: {existing} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise OutputRootError(f"{flag} {path}: cannot write in {existing} ({err.strerror})") from None


def preflight(config: PipelineConfig, verbose: bool) -> str:
    """Checks the source and the folders before anything is created; returns what was logged
    meanwhile. The source check imports TensorFlow, whose native start-up lines belong in the
    run's log file, which does not exist yet: they go to a scratch log, returned for the real one."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch_log = os.path.join(scratch, "preflight.log")
        with terminal.logged_to_file(scratch_log, verbose):
            from triplet_tfx.components.data.data_sources import check_source

            check_source(config.data)  # before TFX loads
            from triplet_tfx.components.training.backbones import BackboneWeightsError, check_backbone_weights

            try:  # --backbone-weights: ImageNet weights cached or downloadable now, or a file that loads
                check_backbone_weights(config.train, config.data.image_shape)
            except BackboneWeightsError as err:  # one line, as the other pre-flight errors
                raise OutputRootError(str(err)) from None
            check_writable(config.output_root, "--output-root")
            check_writable(config.serving_model_dir, "--serving-dir" if config.serving_dir else "--output-root")
            from triplet_tfx.components.serving import serving_folder

            for line in serving_folder.clean_serving_folder(config.serving_model_dir):
                logger.warning("Serving folder: %s", line)  # the terminal too: a model server may have noticed
            if "://" not in config.serving_model_dir:
                try:
                    serving_folder.check_free_space(config.serving_model_dir,
                                                    serving_folder.expected_model_bytes(config.serving_model_dir))
                except serving_folder.NoSpaceError as err:
                    raise OutputRootError(f"{'--serving-dir' if config.serving_dir else '--output-root'} "
                                          f"{err.filename}: {err.strerror} (the newest version's size)") from None
        with open(scratch_log, encoding="utf-8") as f:
            return f.read()


def run_locally(config: PipelineConfig, verbose: bool = True, data_only: bool = False
                ) -> "Optional[summary.RunSummary]":
    """Runs the pipeline with TFX's LocalDagRunner (Beam, SQLite ML Metadata), holding the output
    root's run lock and logging everything into a new log file in the output root (see `terminal`);
    returns the summary of this run (None if it reached no component). data_only: its data
    components alone (ExampleGen through Transform, no training)."""
    from triplet_tfx.pipeline.run_lock import RunLock

    preflight_lines = preflight(config, verbose)
    claim_output_root(config)
    with RunLock(config.output_root):
        log_path = terminal.new_log_path(config.output_root)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(preflight_lines)
        logger.info("Log file: %s", log_path)
        failure = None
        try:
            with terminal.logged_to_file(log_path, verbose):
                # Imported here, so that TensorFlow's native start-up lines land in the log file.
                from triplet_tfx.pipeline import recovery, summary
                from triplet_tfx.pipeline import tfx_api as tfx  # tfx.v1's names, without its extensions
                from triplet_tfx.pipeline.pipeline import create_pipeline

                interrupted = recovery.mark_interrupted_runs(config)
                before = summary.latest_context_id(config)
                os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
                try:
                    tfx.orchestration.LocalDagRunner().run(create_pipeline(
                        config, tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path),
                        data_only=data_only))
                except Exception as err:  # a component failed: its run's summary still tells what happened
                    failure = err
                except KeyboardInterrupt:  # Ctrl-C or SIGTERM (see run_command)
                    stopped = recovery.mark_cancelled(config)
                    where = ", ".join(sorted({s.component for s in stopped})) or "the start"
                    logger.debug("Interrupted", exc_info=True)  # the traceback: log file only
                    raise RunInterrupted(
                        f"interrupted at {where}; run the same command again to resume (finished components "
                        "come from the cache, the Trainer from its last backup)") from None
                result = summary.latest_run(config, after_context_id=before)
        except RunInterrupted:
            logger.info("The run's log file: %s", log_path)
            raise
        except BaseException:
            logger.error("The run failed; its log file: %s", log_path)
            raise
    if result is not None:
        result.interrupted = [found.describe() for found in interrupted]
        result.log_path = log_path
    if failure is not None:
        logger.error("The run failed; its log file: %s", log_path)
        raise PipelineRunError(failure, result) from failure
    return result


def _data_source_error() -> type:
    # Imported late: data_sources imports TensorFlow, whose start-up lines belong in the log file.
    from triplet_tfx.components.data.data_sources import DataSourceError

    return DataSourceError


def disk_full(error: BaseException, config: PipelineConfig) -> Optional[str]:
    """One line for a run that ran out of disk space, naming where and how much is free; None for
    other errors. The space may run out in a component's own write (ENOSPC, with the file) or in
    ML Metadata's (SQLite's "database or disk is full", which then hides the first one)."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    no_space = [e for e in chain if isinstance(e, OSError) and e.errno == errno.ENOSPC]
    if no_space:
        where = no_space[-1].filename or config.output_root  # the first to run out
    elif any("database or disk is full" in str(e) for e in chain):
        where = config.metadata_path
    else:
        return None
    existing = str(where)
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing or ".").free
    return (f"no space left on device writing {where} ({free / 1e6:.1f} MB free there); free some space, "
            "then run the same command again to resume")


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM (what Kubernetes and CI send) stop the run cleanly: the first raises
    KeyboardInterrupt in this thread (run_locally marks the run cancelled and releases the lock);
    a second one exits at once."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.getsignal(number) for number in signals}

    def exit_now(number, _frame):
        os._exit(128 + number)

    def interrupt(_number, _frame):
        for number in signals:
            signal.signal(number, exit_now)
        raise KeyboardInterrupt

    for number in signals:
        signal.signal(number, interrupt)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_command(args: argparse.Namespace, config: PipelineConfig) -> int:
    terminal.setup_logging(args.verbose)
    logger.info("Beam arguments of the data components: %s", " ".join(config.data_beam_args))
    from triplet_tfx.pipeline.run_lock import RunLockError

    try:
        with _interruptible():
            result = run_locally(config, args.verbose)
    except RunInterrupted as err:
        print(f"triplet-tfx: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OutputRootError, RunLockError, _data_source_error()) as err:  # evaluated only on an error
        print(f"triplet-tfx: error: {err}", file=sys.stderr)
        return 2
    except PipelineRunError as err:
        if err.summary is not None:
            print("\n" + err.summary.format())
        full = disk_full(err, config)
        print(f"triplet-tfx: error: {full or err} (the log above has the details)", file=sys.stderr)
        return 2 if isinstance(err.__cause__, _data_source_error()) else 1
    if result is not None:
        print("\n" + result.format())
    if args.require_blessed and not (result is not None and result.blessed):
        return EXIT_NOT_BLESSED
    return 0


SERVING_EPILOG = """\
The model: --model PATH loads a SavedModel (a version folder, or the base directory of numbered
versions: the latest, or --model-version) in this process; by default the latest version pushed
under <output-root>/serving/<model-name>. --server URL calls a running TF Serving instead:
http://HOST:8501 (REST, /v1/models/<model-name>[/versions/<v>]:predict) or grpc://HOST:8500 (gRPC
PredictionService). Unreachable servers (connection refused, HTTP 503, gRPC UNAVAILABLE) are
retried --retries times with exponential backoff. Results go to standard output.

Folders are searched recursively for PNG, JPEG, GIF and BMP files (and WebP, TIFF, HEIF files, to
refuse them by name), by the rule of the pipeline's images: folders: hidden files and folders (.*,
macOS's AppleDouble ._* files, __MACOSX) are ignored; symbolic links are followed, each folder once
(a link back to a folder on the way, such as loop -> ., is left out with a warning); a broken link
is an error naming it. Only regular files are read: anything else named like an image (a FIFO
x.png, a socket, a device) is refused by name, one line, before any model work.

TensorFlow's own lines (CUDA and CPU-feature notes, "Local rendezvous is aborting...") and library
warnings are not shown; --verbose shows them.
"""


def _add_serving_commands(commands) -> None:
    """`embed` and `search`: the served model's client (components/serving/client.py)."""
    from triplet_tfx.components.serving import result_formats

    defaults = PipelineConfig()
    for name, summary in (("embed", "embeddings of images, from a SavedModel or a TF Serving server"),
                          ("search", "nearest neighbours of images in the served model's index")):
        command = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                                      epilog=SERVING_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_argument("inputs", nargs="+", metavar="FILE|FOLDER",
                             help="PNG, JPEG, GIF or BMP files, or folders of them (searched recursively)")
        if name == "search":
            command.add_argument("--k", type=int, default=5, help="neighbours per image (default %(default)s)")
        where = command.add_mutually_exclusive_group()
        where.add_argument("--model", metavar="PATH", help="SavedModel folder or base directory of versions")
        where.add_argument("--server", metavar="URL", help="http://HOST:8501 (REST) or grpc://HOST:8500 (gRPC)")
        command.add_argument("--model-name", default=defaults.model_name, help="served model (default %(default)s)")
        command.add_argument("--model-version", type=int, metavar="N", help="model version (default: the latest)")
        command.add_argument("--output-root", default=defaults.output_root,
                             help="where the default model is looked for (default %(default)s)")
        command.add_argument("--serving-dir", help="the run's --serving-dir, if it set one (default "
                             "<output-root>/serving)")
        command.add_argument("--format", choices=result_formats.FORMATS, default="jsonl",
                             help="JSON lines or TSV (default %(default)s)")
        command.add_argument("--projector", metavar="DIR", help="also write vecs.tsv and meta.tsv (the file "
                             "names) for TensorBoard's Embedding Projector into DIR (new or empty)")
        command.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default %(default)s)")
        command.add_argument("--retries", type=int, default=3, help="retries of an unreachable server "
                             "(default %(default)s)")
        command.add_argument("--batch-size", type=int, default=64, help="images per request (default %(default)s)")
        command.add_argument("--verbose", action="store_true",
                             help="show TensorFlow's own lines and library warnings on the terminal (by default "
                                  "they are dropped)")
        command.set_defaults(handler=serving_command, uses_config=False)


def serving_command(args: argparse.Namespace) -> int:
    """`embed` and `search`: TensorFlow's native lines and library warnings are dropped unless
    --verbose (`terminal.quiet`), as `triplet-tfx run` keeps them off the terminal."""
    with terminal.quiet(getattr(args, "verbose", False)):
        return _serving_command(args)


def _serving_command(args: argparse.Namespace) -> int:
    from triplet_tfx.components.serving import client_errors, result_formats
    from triplet_tfx.components.serving.client import Client, IndexSizeError, image_files

    def fail(message: str) -> int:
        print(f"triplet-tfx: error: {message}", file=sys.stderr)
        return 2

    def warn(message: str) -> None:
        print(f"triplet-tfx: warning: {message}", file=sys.stderr)

    for flag, value, low in (("--k", getattr(args, "k", 1), 1), ("--retries", args.retries, 0),
                             ("--batch-size", args.batch_size, 1), ("--timeout", args.timeout, 1e-9)):
        if value < low:
            return fail(f"{flag}: must be at least {low:g}, got {value}")
    if args.server and not args.server.startswith(("http://", "https://", "grpc://")):
        return fail(f"--server {args.server}: expected http://HOST:8501 (REST) or grpc://HOST:8500 (gRPC)")
    if args.projector and os.path.isdir(args.projector) and os.listdir(args.projector):
        return fail(f"--projector {args.projector}: folder is not empty; choose a new or empty one")
    model = args.model or (None if args.server else PipelineConfig(
        output_root=os.path.abspath(args.output_root), serving_dir=args.serving_dir,
        model_name=args.model_name).serving_model_dir)
    try:
        files = image_files(args.inputs, warn=warn)
        with Client(model=model, server=args.server, model_name=args.model_name, version=args.model_version,
                    timeout=args.timeout, retries=args.retries, batch_size=args.batch_size) as client:
            if args.command == "search":
                client.check_k(args.k)  # the index size, where the model tells it: before any image work
                result_formats.write_neighbours(sys.stdout, files, client.search(files, args.k), args.format)
            embeddings = client.embed(files) if args.command == "embed" or args.projector else None
            if args.command == "embed":
                result_formats.write_embeddings(sys.stdout, files, embeddings, args.format)
            if args.projector:
                result_formats.write_projector(args.projector, files, embeddings)
    except client_errors.VersionNotLoadedError as err:
        return fail(f"--model-version {args.model_version}: {err}")
    except client_errors.ModelNotFoundError as err:
        return fail(f"--model-name {args.model_name}: {err}" if args.server else
                    f"--model: {err}" + ("" if args.model else "; run `triplet-tfx run` first, or give "
                                         "--model PATH or --server URL"))
    except client_errors.ImageInputError as err:
        return fail(str(err))
    except IndexSizeError as err:
        return fail(f"--k {args.k}: {err.detail}")
    except client_errors.ServingError as err:
        print(f"triplet-tfx: error: {err}", file=sys.stderr)
        return 1
    return 0


def build_parser(profile: str = "tutorial") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triplet-tfx", description="TFX pipeline for image embeddings with the semi-hard triplet loss.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the whole pipeline locally (LocalDagRunner, Beam FnApiRunner)",
                              description="Run ExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator "
                                          "-> Transform -> Trainer -> EmbeddingEvaluator -> Pusher locally.")
    _add_config_flags(run)
    run.add_argument("--verbose", action="store_true",
                     help="show on the terminal everything TFX, Beam and TensorFlow log (by default it goes "
                          "only to the run's log file, <output-root>/logs/run-<time>.log)")
    run.add_argument("--require-blessed", action="store_true",
                     help=f"exit with code {EXIT_NOT_BLESSED} when the run's model is not blessed (for CI); "
                          "without it a run that completes exits 0, blessed or not")
    run.set_defaults(handler=run_command)
    kubeflow_cli.add_commands(commands, _add_config_flags)
    for command in commands.choices.values():
        command.set_defaults(**profile_flag_defaults(profile))
        command.add_argument("--print-config", action="store_true",
                             help="print the configuration as JSON and exit")
    _add_serving_commands(commands)  # after the loop: no pipeline configuration, no profile
    runs.add_command(commands)  # reads ML Metadata only: no configuration
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Every command builds the one PipelineConfig from its flags, then calls its handler."""
    profile_parser = argparse.ArgumentParser(add_help=False)
    profile_parser.add_argument("--profile", choices=sorted(PROFILES), default="tutorial")
    profile = profile_parser.parse_known_args(argv)[0].profile
    args = build_parser(profile).parse_args(argv)
    if not getattr(args, "uses_config", True):
        return args.handler(args)
    try:
        config = config_from_args(args)
    except ConfigError as err:
        print(f"triplet-tfx: error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(dataclasses.asdict(config), indent=2))
        return 0
    return args.handler(args, config)


if __name__ == "__main__":
    sys.exit(main())
