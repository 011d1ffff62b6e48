"""`triplet-tfx`: the command line. Flags build the one PipelineConfig.

  triplet-tfx run                     # the main job: full MNIST, the tutorial's settings
  triplet-tfx run --max-examples 2000 --max-steps 100 --output-root /tmp/smoke

The commands live in their own modules: `run` in run_command.py, `index` in index_command.py, `compile` and `deploy` in
kubeflow/cli.py, `embed` and `search` in serving_commands.py, `runs` in runs.py; the configuration
flags (declared on the configuration's fields, components/config.py) in flags.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import sys
from typing import List, Optional

import triplet_tfx.pipeline  # noqa: F401  (pins the Keras flavour before TensorFlow loads)
from triplet_tfx.components.config import PROFILES, ConfigError, PipelineConfig
from triplet_tfx.kubeflow import cli as kubeflow_cli
from triplet_tfx.pipeline import index_command, run_command as run_module, runs, serving_commands
from triplet_tfx.pipeline.flags import add_config_flags, config_from_args, profile_flag_defaults

# Names the tests, the benchmarks and pipeline/local_runner.py use as cli.<name>.
from triplet_tfx.pipeline.run_command import (
    EXIT_INTERRUPTED,
    EXIT_NOT_BLESSED,
    OUTPUT_MARKER,
    OutputRootError,
    PipelineRunError,
    RunInterrupted,
    _interruptible,
    check_writable,
    claim_output_root,
    disk_full,
    preflight,
    run_command,
    run_locally,
)
from triplet_tfx.pipeline.serving_commands import SERVING_EPILOG, serving_command

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_NOT_BLESSED",
    "OUTPUT_MARKER",
    "OutputRootError",
    "PipelineConfig",
    "PipelineRunError",
    "RunInterrupted",
    "SERVING_EPILOG",
    "_interruptible",
    "build_parser",
    "check_writable",
    "claim_output_root",
    "config_from_args",
    "console_main",
    "disk_full",
    "main",
    "preflight",
    "profile_flag_defaults",
    "run_command",
    "run_locally",
    "serving_command",
]


def build_parser(profile: str = "tutorial") -> argparse.ArgumentParser:
    """The parser of every command; the configuration flags' defaults are `profile`'s."""
    parser = argparse.ArgumentParser(
        prog="triplet-tfx", description="TFX pipeline for image embeddings with the semi-hard triplet loss."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_module.add_command(commands, functools.partial(add_config_flags, profile=profile))
    index_command.add_command(commands, functools.partial(add_config_flags, profile=profile))
    kubeflow_cli.add_commands(commands, functools.partial(add_config_flags, profile=profile, kubeflow=True))
    for command in commands.choices.values():
        command.add_argument("--print-config", action="store_true", help="print the configuration as JSON and exit")
    serving_commands.add_commands(commands)  # after the loop: no pipeline configuration, no profile
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


def console_main(argv: Optional[List[str]] = None) -> int:
    """The `triplet-tfx` command: `main` in a process of its own, which ends after it. What TensorFlow,
    TFX and Beam leave behind (~800k objects) goes with the process: hidden from the garbage
    collector, Python's shutdown takes about 0.3 s instead of 2.2-2.8 s (docs/architecture.md)."""
    code = main(argv)
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console_main())
