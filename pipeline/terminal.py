"""What `triplet-tfx run` shows on the terminal, and the run's log file.

At the default verbosity the terminal shows the project's own lines (component started and
finished with its duration, the Trainer's line per epoch, the evaluator's verdict, the end
summary), warnings that are not known noise, and errors. Everything, the noise included, goes to
`<output root>/logs/run-<time>.log`. `--verbose` shows everything on the terminal too.

TensorFlow, XLA and Beam's native libraries print their own lines (CUDA stub messages, oneDNN
and CPU-feature notes, XLA service lines, "Local rendezvous is aborting") on file descriptor 2,
from C++, partly before Python's logging exists. `TF_CPP_MIN_LOG_LEVEL` would drop them for good
(nothing left to debug with) and not cover Beam's or absl's early lines, so for the run we point
fd 2 at the log file instead, and give Python's `sys.stderr` (tracebacks, our log handler) a copy
of the original terminal descriptor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import warnings
from typing import Dict, Iterator, Optional

LOG_DIR = "logs"

# Third-party lines with nothing for a user to act on: (logger name, pattern of the message).
# Python warnings arrive through logging.captureWarnings as "<file>:<line>: <Category>: <text>".
_NOISE = (
    # google-api-core (from 2.28; constraints.txt pins an older one) and google-cloud-aiplatform, imported
    # by TFX: Python 3.10 and storage < 3 notices.
    (
        "py.warnings",
        re.compile(
            r"/google/(api_core|cloud/aiplatform)/.*: FutureWarning: "
            r"(You are using a non-supported Python version|Support for google-cloud-storage)"
        ),
    ),
    # tensorflow_transform: the project runs Keras 3 on purpose; TFT itself uses tf_keras internally.
    ("absl", re.compile(r"TF_USE_LEGACY_KERAS is set to 0, which will not use Keras 2")),
    # TFX's Transform says why it runs a Beam pass although it writes no data: the preprocessing_fn's
    # input checks (tf.debugging asserts) count as analyzing the features for tf.Transform.
    ("absl", re.compile(r"Not using the in-place Transform because the following features require analyzing")),
    # TFX warns about its own resolver query on every run.
    ("absl", re.compile(r"ArtifactQuery\.property_predicate is not supported")),
)


def is_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return any(record.name == name and pattern.search(message) for name, pattern in _NOISE)


class TerminalFilter(logging.Filter):
    """The terminal's lines at the default verbosity: this project's messages, warnings and errors
    that are not known noise, and TFX's component lines, rewritten with their duration."""

    def __init__(self):
        super().__init__()
        self._started: Dict[str, float] = {}
        self._cached: Dict[str, bool] = {}
        self._running: Optional[str] = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in ("Component %s is running.", "Component %s is finished.") and record.args:
            return self._component_line(record)
        if isinstance(record.msg, str) and record.msg.startswith("A cached execution") and self._running:
            self._cached[self._running] = True
            return False
        if is_noise(record):
            return False
        return record.levelno >= logging.WARNING or record.name.startswith("triplet_tfx")

    def _component_line(self, record: logging.LogRecord) -> bool:
        component = str(record.args[0])
        if record.msg.endswith("running."):
            self._started[component], self._cached[component], self._running = time.time(), False, component
            record.msg, record.args = "%s started", (component,)
            return True
        seconds = time.time() - self._started.get(component, time.time())
        record.msg, record.args = (
            "%s finished in %.1f s%s",
            (component, seconds, " (cached)" if self._cached.get(component) else ""),
        )
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it may be replaced, e.g. by a test's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


class _TerminalFormatter(logging.Formatter):
    """The terminal's format. Another library's error keeps its message line there, and its
    traceback (Beam's, TFX's: their machinery, not the user's problem) goes to the log file only."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.name.startswith("triplet_tfx"):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(record)


_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
_TERMINAL_FORMAT = _TerminalFormatter(_FORMAT._fmt, _FORMAT.datefmt)


def setup_logging(verbose: bool) -> None:
    """Python logging (absl's included) and Python warnings to one terminal handler."""
    handler = _StderrHandler()
    handler.setFormatter(_FORMAT)
    if not verbose:
        handler.setFormatter(_TERMINAL_FORMAT)
        handler.addFilter(TerminalFilter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)  # warnings become records of "py.warnings": filtered and logged
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_handler().setLevel(logging.CRITICAL + 1)  # one handler: ours
    logging.getLogger("absl").propagate = True


def new_log_path(output_root: str) -> str:
    return os.path.join(output_root, LOG_DIR, time.strftime("run-%Y%m%d-%H%M%S.log"))


@contextlib.contextmanager
def logged_to_file(path: str, verbose: bool) -> Iterator[None]:
    """For the duration of a run: every log record into `path`, and (unless verbose) the native
    libraries' fd 2 too, while Python's sys.stderr keeps writing to the terminal."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    log_file = open(path, "a", buffering=1, encoding="utf-8")
    file_handler = logging.StreamHandler(log_file)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers.insert(0, file_handler)  # before the terminal handler, which rewrites some records
    # The file gets INFO and above even where the caller's logging is set higher (e.g. under a test).
    levels = {name: logging.getLogger(name).level for name in ("", "absl")}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(min(level or logging.WARNING, logging.INFO))
    saved_fd, saved_stderr = None, sys.stderr
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a capture without a descriptor
        stderr_fd = None
    if not verbose:
        sys.stderr.flush()
        saved_fd = os.dup(2)
        os.dup2(log_file.fileno(), 2)
        if stderr_fd == 2:
            sys.stderr = os.fdopen(
                os.dup(saved_fd), "w", buffering=1, encoding=saved_stderr.encoding, errors="backslashreplace"
            )
    try:
        yield
    finally:
        root.removeHandler(file_handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if saved_fd is not None:
            if sys.stderr is not saved_stderr:
                sys.stderr.close()
                sys.stderr = saved_stderr
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        log_file.close()


@contextlib.contextmanager
def quiet(verbose: bool) -> Iterator[None]:
    """For a short command (`embed`, `search`): unless verbose, the native libraries' fd 2 goes to
    /dev/null (`logged_to_file`'s mechanism) and Python warnings and log records go nowhere visible
    (to the logging handlers there are, /dev/null's among them), while Python's sys.stderr keeps
    writing to the terminal, for the command's own lines."""
    if verbose:
        yield
        return

    def log_warning(message, category, filename, lineno, file=None, line=None):
        logging.getLogger("py.warnings").warning(
            "%s", warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        )

    with logged_to_file(os.devnull, verbose=False), warnings.catch_warnings():
        warnings.showwarning = log_warning
        yield
