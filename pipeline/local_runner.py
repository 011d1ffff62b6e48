"""Runner file for TFX's own CLI (LocalDagRunner):

  tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py
  TRIPLET_TFX_ARGS="--epochs 1 --output-root runs" tfx run create --engine local --pipeline_name triplet-mnist

`tfx run create` passes no flags to the runner file: options for `triplet-tfx run` come from the
TRIPLET_TFX_ARGS environment variable (shell words), then the file's own arguments
(`python pipeline/local_runner.py --epochs 1`). The run stops cleanly (as after Ctrl-C) when the
process that started it dies, so that killing `tfx run create` leaves no orphan holding the lock.
"""

import ctypes
import os
import shlex
import signal
import sys

# Run as a script, this file's folder leads sys.path and its modules (config.py, pipeline.py...)
# would shadow top-level names: use the installed package only.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from triplet_tfx.pipeline import cli  # noqa: E402  (pins the Keras flavour first)

ARGS_VARIABLE = "TRIPLET_TFX_ARGS"
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def stop_with_parent() -> None:
    """Linux: SIGTERM this process when its parent (`tfx run create`) dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux
        pass


if __name__ == "__main__":
    stop_with_parent()
    sys.exit(cli.console_main(["run", *shlex.split(os.environ.get(ARGS_VARIABLE, "")), *sys.argv[1:]]))
