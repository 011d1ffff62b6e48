"""`triplet-tfx`: the command line. Flags build the one PipelineConfig.

  triplet-tfx run                     # the main job: full MNIST, the tutorial's settings
  triplet-tfx run --max-examples 2000 --max-steps 100 --output-root /tmp/smoke
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import List, Optional

import triplet_tfx.pipeline  # noqa: F401  (pins the Keras flavour before TensorFlow loads)
from triplet_tfx.kubeflow import cli as kubeflow_cli
from triplet_tfx.pipeline.config import (PRECISIONS, PROFILES, STRATEGIES, ConfigError, DataConfig, EvalConfig,
                                         PipelineConfig, TrainConfig)

OUTPUT_MARKER = "triplet-tfx-output.json"
logger = logging.getLogger(__name__)


class OutputRootError(RuntimeError):
    pass


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
                           "tfrecord:<dir> (<dir>/train/* and <dir>/eval/* of tf.Example TFRecords: "
                           "bytes 'image' of raw uint8 pixels, int64 'label') or images:<dir> "
                           "(one sub-folder per class). Default: %(default)s")
    data.add_argument("--tfds-data-dir", default=d.tfds_data_dir, help="TFDS data dir of tfds: sources")
    data.add_argument("--image-size", default="x".join(map(str, d.image_shape)), metavar="HxWxC",
                      help="image height x width x channels (default %(default)s)")
    data.add_argument("--num-classes", type=int, default=d.num_classes, help="default %(default)s")
    data.add_argument("--max-examples", type=int, default=d.max_examples_per_split, metavar="N",
                      help="keep only N examples of each split, for smoke runs (the first N; a random N "
                           "of a tfrecord: folder)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=t.epochs, help="default %(default)s")
    train.add_argument("--batch-size", type=int, default=t.batch_size, help="default %(default)s")
    train.add_argument("--learning-rate", type=float, default=t.learning_rate, help="Adam; default %(default)s")
    train.add_argument("--lr-schedule", choices=("constant", "cosine"), default=t.lr_schedule,
                       help="default %(default)s")
    train.add_argument("--dropout", type=float, default=t.dropout, metavar="RATE",
                       help="rate of the network's two Dropout layers, in training (default %(default)s)")
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
    out = parser.add_argument_group("pipeline")
    out.add_argument("--pipeline-name", default=p.pipeline_name, help="default %(default)s")
    out.add_argument("--output-root", default=p.output_root,
                     help="folder for pipeline artifacts, ML Metadata and pushed models (default %(default)s)")
    out.add_argument("--model-name", default=p.model_name, help="default %(default)s")
    out.add_argument("--serving-dir", default=p.serving_dir,
                     help="push to <serving-dir>/<model-name>/<version>/ (default <output-root>/serving)")
    out.add_argument("--beam-arg", action="append", default=None, metavar="ARG",
                     help="a Beam pipeline argument, repeatable (default: " + " ".join(p.beam_args) + ")")
    out.add_argument("--no-cache", action="store_true", help="re-run every component")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
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
    defaults = PipelineConfig()
    return PipelineConfig(
        pipeline_name=args.pipeline_name,
        output_root=os.path.abspath(args.output_root),
        model_name=args.model_name,
        serving_dir=(args.serving_dir if "://" in args.serving_dir else os.path.abspath(args.serving_dir))
        if args.serving_dir else None,
        enable_cache=not args.no_cache,
        beam_args=tuple(args.beam_arg) if args.beam_arg else defaults.beam_args,
        data=DataConfig(source=args.data, tfds_data_dir=args.tfds_data_dir, image_height=height,
                        image_width=width, channels=channels, num_classes=args.num_classes,
                        max_examples_per_split=args.max_examples),
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                          lr_schedule=args.lr_schedule, dropout=args.dropout, loss=args.loss,
                          margin=args.margin, distance_metric=args.distance, soft=args.soft,
                          examples_per_class=args.examples_per_class, augment_shift=args.augment_shift,
                          precision=args.precision, max_steps=args.max_steps, seed=args.seed,
                          strategy=args.strategy, mining=args.mining,
                          checkpoint_every_steps=args.checkpoint_every, workers=args.workers),
        eval=EvalConfig(protocol=args.eval_protocol, lower_bounds=bounds, max_regression=args.max_regression,
                        plot_method=args.plot),
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


def run_locally(config: PipelineConfig) -> "Optional[summary.RunSummary]":
    """Runs the pipeline with TFX's LocalDagRunner (Beam, SQLite ML Metadata)."""
    from tfx import v1 as tfx

    from triplet_tfx.pipeline import summary
    from triplet_tfx.pipeline.pipeline import create_pipeline

    claim_output_root(config)
    os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
    tfx.orchestration.LocalDagRunner().run(create_pipeline(
        config, tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)))
    return summary.latest_run(config)


class _ProgressFilter(logging.Filter):
    """Keeps warnings, this project's own messages and TFX's component start/finish lines."""

    # TFX warns about its own resolver query on every run; nothing a user can act on.
    _NOISE = ("ArtifactQuery.property_predicate is not supported",)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self._NOISE):
            return False
        return (record.levelno >= logging.WARNING or record.name.startswith("triplet_tfx")
                or (isinstance(record.msg, str) and record.msg.startswith("Component %s is ")))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it may be replaced, e.g. by a test's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def setup_logging(verbose: bool) -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    if not verbose:
        handler.addFilter(_ProgressFilter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_handler().setLevel(logging.CRITICAL + 1)  # one handler: ours
    logging.getLogger("absl").propagate = True


def run_command(args: argparse.Namespace, config: PipelineConfig) -> int:
    setup_logging(args.verbose)
    logger.info("Beam arguments: %s", " ".join(config.beam_args))
    from triplet_tfx.components.data.data_sources import DataSourceError

    try:
        result = run_locally(config)
    except (OutputRootError, DataSourceError) as err:
        print(f"triplet-tfx: error: {err}", file=sys.stderr)
        return 2
    if result is not None:
        print("\n" + result.format())
    return 0


def build_parser(profile: str = "tutorial") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triplet-tfx", description="TFX pipeline for image embeddings with the semi-hard triplet loss.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the whole pipeline locally (LocalDagRunner, Beam FnApiRunner)",
                              description="Run ExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator "
                                          "-> Transform -> Trainer -> EmbeddingEvaluator -> Pusher locally.")
    _add_config_flags(run)
    run.add_argument("--verbose", action="store_true", help="log everything TFX and Beam log at INFO level")
    run.set_defaults(handler=run_command)
    kubeflow_cli.add_commands(commands, _add_config_flags)
    for command in commands.choices.values():
        command.set_defaults(**profile_flag_defaults(profile))
        command.add_argument("--print-config", action="store_true",
                             help="print the configuration as JSON and exit")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Every command builds the one PipelineConfig from its flags, then calls its handler."""
    profile_parser = argparse.ArgumentParser(add_help=False)
    profile_parser.add_argument("--profile", choices=sorted(PROFILES), default="tutorial")
    profile = profile_parser.parse_known_args(argv)[0].profile
    args = build_parser(profile).parse_args(argv)
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
