"""`triplet-tfx index`: a served model's search index refreshed without retraining.

The model of a pushed version embeds the --catalog source in Beam, and a new version (a new
number, the same model, the new index, the same match threshold) is pushed next to it, atomically
(components/serving/serving_folder.py: a model server never sees a half-written version; an
interrupted refresh leaves none). It is pipeline.create_index_pipeline run locally, as `run` runs
the training pipeline; on Kubeflow the same pipeline is compiled by `triplet-tfx compile --index`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from triplet_tfx.components.config import PipelineConfig
from triplet_tfx.pipeline.run_command import run_and_report

SAVED_MODEL_FILE = "saved_model.pb"


class ServedModelError(ValueError):
    """--model names no served model."""


def served_version(path: str) -> str:
    """The version folder of --model: the folder itself when it holds a SavedModel, else its newest
    numbered version (a serving folder, as the Pusher writes it)."""
    if "://" in path:
        return path  # remote: read where the pipeline runs
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        return path
    if not os.path.isdir(path):
        raise ServedModelError(f"--model {path}: no such folder")
    numbered = sorted(
        (
            int(name)
            for name in os.listdir(path)
            if name.isdigit() and os.path.isfile(os.path.join(path, name, SAVED_MODEL_FILE))
        ),
    )
    if not numbered:
        raise ServedModelError(
            f"--model {path}: neither a SavedModel ({SAVED_MODEL_FILE}) nor a serving folder of numbered versions"
        )
    return os.path.join(path, str(numbered[-1]))


def index_command(args: argparse.Namespace, config: PipelineConfig) -> int:
    if not config.serving.catalog:
        print("triplet-tfx: error: index needs --catalog SOURCE (the items to index)", file=sys.stderr)
        return 2
    try:
        version = served_version(args.model)
    except ServedModelError as err:
        print(f"triplet-tfx: error: {err}", file=sys.stderr)
        return 2
    return run_and_report(config, args.verbose, served_model=version)[0]


def add_command(commands, add_config_flags: Callable[[argparse.ArgumentParser], Any]) -> None:
    """Adds `index` to the CLI's sub-parsers."""
    index = commands.add_parser(
        "index",
        help="index a catalog with a pushed model and push it as a new version (no retraining)",
        description="Embed --catalog SOURCE in Beam with the model of a pushed version (--model) and push "
        "a new version next to it: the same model with the new search index (--index, --index-lists, ...) "
        "and the same match threshold. Older versions stay (--keep-versions N keeps the newest N). The "
        "index pipeline's runs live in <output-root>/pipelines/<pipeline-name>-index.",
    )
    add_config_flags(index)
    index.add_argument(
        "--model",
        required=True,
        metavar="SERVING_DIR|VERSION_DIR",
        help="a pushed model: a version folder, or a serving folder (its newest version)",
    )
    index.add_argument(
        "--verbose", action="store_true", help="show on the terminal everything TFX, Beam and TensorFlow log"
    )
    index.set_defaults(handler=index_command)
