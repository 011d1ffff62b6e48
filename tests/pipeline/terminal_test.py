"""A quiet terminal: a small `triplet-tfx run` as a user runs it, terminal vs log file."""

import logging
import os
import re
import subprocess
import sys

import pytest

from triplet_tfx.pipeline import terminal

pytestmark = pytest.mark.slow

# Lines of third-party origin that must not reach the terminal at the default verbosity.
NOISE = re.compile(
    "|".join(
        [
            r"FutureWarning",
            r"cuda",
            r"cuDNN",
            r"cuBLAS",
            r"cuFFT",
            r"TensorRT",
            r"oneDNN",
            r"cpu_feature_guard",
            r"XLA service",
            r"StreamExecutor",
            r"absl::InitializeLog",
            r"only compatible with Keras 2",
            r"Local rendezvous",
            r"ran out of data",
            r"n_jobs",
            r"payload_format",
            r"warnings\.warn",
            r"in-place Transform",
        ]
    )
)
NATIVE_TF_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] ", re.M)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet") / "out"
    completed = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "triplet-tfx"),
            "run",
            "--output-root",
            str(root),
            "--max-examples",
            "200",
            "--max-steps",
            "5",
            "--plot",
            "pca",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:]
    logs = os.listdir(root / terminal.LOG_DIR)
    assert len(logs) == 1
    with open(root / terminal.LOG_DIR / logs[0]) as f:
        return completed.stdout, str(root / terminal.LOG_DIR / logs[0]), f.read()


def test_terminal_shows_only_the_projects_lines(small_run):
    terminal_text, log_path, _ = small_run
    noisy = [line for line in terminal_text.splitlines() if NOISE.search(line)]
    assert noisy == []
    for expected in (
        "SourceExampleGen started",
        "Trainer finished in",
        "EmbeddingEvaluator finished in",
        "Model NOT BLESSED: precision_at_1",
        "Metrics (eval split):",
    ):
        assert expected in terminal_text
    assert re.search(r"^5/5 - .*loss: [\d.]+ - val_loss: [\d.]+$", terminal_text, re.M)  # the epoch line
    assert terminal_text.count(f"Log file: {log_path}") == 2  # at start and at the end


def test_log_file_keeps_what_the_terminal_does_not_show(small_run):
    _, _, log_text = small_run
    assert "Tensorflow Transform is only compatible with Keras 2" in log_text
    assert "Not using the in-place Transform" in log_text  # TFX's note, kept in the file
    assert NATIVE_TF_LINE.search(log_text)  # TensorFlow's C++ logging, through fd 2
    assert "Component Trainer is finished." in log_text  # TFX's own lines, unchanged
    # Causes fixed in the project: the Trainer's validation pass ends at its last batch, and
    # the transformed examples carry their payload format.
    assert "Your input ran out of data" not in log_text
    assert "does not have payload_format custom property" not in log_text


def _record(name, level, msg, *args):
    return logging.LogRecord(name, level, "x.py", 1, msg, args, None)


def test_filter_rewrites_component_lines_and_drops_only_known_noise():
    keep = terminal.TerminalFilter()
    running = _record("absl", logging.INFO, "Component %s is running.", "Trainer")
    assert keep.filter(running) and running.getMessage() == "Trainer started"
    assert not keep.filter(_record("absl", logging.INFO, "A cached execution %d is used.", 7))
    finished = _record("absl", logging.INFO, "Component %s is finished.", "Trainer")
    assert keep.filter(finished) and re.fullmatch(r"Trainer finished in \d+\.\d s \(cached\)", finished.getMessage())
    keep.filter(_record("absl", logging.INFO, "Component %s is running.", "Pusher"))
    finished = _record("absl", logging.INFO, "Component %s is finished.", "Pusher")
    assert keep.filter(finished) and not finished.getMessage().endswith("(cached)")
    api_core = (
        "/v/site-packages/google/api_core/_python_version_support.py:246: FutureWarning: "
        "You are using a non-supported Python version (3.10.13)."
    )
    assert not keep.filter(_record("py.warnings", logging.WARNING, api_core))
    # The same text from another origin, or another warning from google, still shows.
    assert keep.filter(_record("other", logging.WARNING, api_core))
    assert keep.filter(
        _record(
            "py.warnings",
            logging.WARNING,
            "/v/site-packages/google/api_core/x.py:1: DeprecationWarning: something else",
        )
    )
    assert keep.filter(_record("triplet_tfx.components.training.trainer", logging.INFO, "Fit in 3.0 s"))
    assert not keep.filter(_record("absl", logging.INFO, "Running launcher for node_info"))
    assert keep.filter(_record("absl", logging.ERROR, "a real error"))


def test_another_librarys_traceback_goes_to_the_log_file_only(tmp_path, capsys):
    """A data error inside Beam: the terminal shows its message line, the log file its traceback."""
    log_path = str(tmp_path / "run.log")
    terminal.setup_logging(verbose=False)
    try:
        with terminal.logged_to_file(log_path, verbose=False):
            try:
                raise ValueError("/data/x.png: not an image")
            except ValueError:
                logging.getLogger("apache_beam.runners.common").error(
                    "/data/x.png: not an image [while running 'Read']", exc_info=True
                )
                logging.getLogger("triplet_tfx.pipeline.cli").error("ours keeps it", exc_info=True)
    finally:
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)
    shown = capsys.readouterr().err
    assert "ERROR /data/x.png: not an image [while running 'Read']\n" in shown
    assert shown.count("Traceback (most recent call last)") == 1  # the project's own error only
    with open(log_path) as f:
        assert f.read().count("Traceback (most recent call last)") == 2


def test_a_known_noisy_python_warning_goes_to_the_log_file_only(tmp_path, capsys):
    """google-api-core's Python-version notice (from 2.28; constraints.txt keeps an older one, but an
    environment without the pins has it): the log file keeps it, the terminal does not show it."""
    import warnings

    log_path = str(tmp_path / "run.log")
    notice = "You are using a non-supported Python version (3.10.13). Google will not post any further updates"
    logging.captureWarnings(False)  # pytest's per-test warning capture replaced what an earlier test set up
    terminal.setup_logging(verbose=False)
    try:
        with terminal.logged_to_file(log_path, verbose=False), warnings.catch_warnings():
            warnings.simplefilter("always")
            origin = "/v/site-packages/google/api_core/_python_version_support.py"
            warnings.warn_explicit(notice, FutureWarning, origin, 246)
            warnings.warn_explicit("another library's notice", FutureWarning, "/v/site-packages/other/x.py", 1)
    finally:
        logging.captureWarnings(False)
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)
    shown = capsys.readouterr().err
    assert "non-supported Python version" not in shown
    assert "another library's notice" in shown
    with open(log_path) as f:
        logged = f.read()
    assert "FutureWarning: " + notice in logged and "another library's notice" in logged
