"""Ctrl-C and SIGTERM: one line on the terminal, the run marked cancelled, the lock released;
a second signal exits at once. Real processes, signalled by the test."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from ml_metadata.proto import metadata_store_pb2

from triplet_tfx.pipeline import cli, recovery, summary
from triplet_tfx.pipeline.run_lock import RunLock

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
import signalled_in_a_weakref_callback  # noqa: E402  (tests/)

pytestmark = pytest.mark.slow


def test_sigterm_during_training_stops_with_one_line_and_cancels_the_execution(tmp_path):
    root = tmp_path / "out"
    argv = [
        "run",
        "--output-root",
        str(root),
        "--max-examples",
        "200",
        "--max-steps",
        "100000",
        "--checkpoint-every",
        "1",
        "--min-precision-at-1",
        "0",
        "--plot",
        "pca",
    ]
    config = cli.config_from_args(cli.build_parser().parse_args(argv))
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "triplet-tfx"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        models = os.path.join(config.pipeline_root, "Trainer", "model")
        deadline = time.time() + 300
        while not (os.path.isdir(models) and os.listdir(models)) and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before its Trainer started"
        time.sleep(3)  # inside the fit
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == cli.EXIT_INTERRUPTED, err[-2000:]
    assert err.rstrip().splitlines()[-1] == (
        "triplet-tfx: interrupted at Trainer; run the same command again to resume (finished components come "
        "from the cache, the Trainer from its last backup)"
    )
    assert "Traceback" not in err
    store = summary.open_store(config.metadata_path)
    [trainer] = [e for e in store.get_executions() if summary.node_id(store, e) == "Trainer"]
    assert trainer.last_known_state == metadata_store_pb2.Execution.CANCELED
    assert "interrupted by Ctrl-C or SIGTERM" in trainer.custom_properties[recovery.INTERRUPTED_PROPERTY].string_value
    with RunLock(str(root)):  # released
        pass


SIGNALLED_TWICE = textwrap.dedent("""
    import os, signal, time
    from triplet_tfx.pipeline import cli
    with cli._interruptible():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            print("first signal: KeyboardInterrupt", flush=True)
            os.kill(os.getpid(), signal.SIGINT)  # the second one exits at once
            time.sleep(5)
            print("not reached", flush=True)
""")


def test_a_second_signal_exits_at_once():
    completed = subprocess.run([sys.executable, "-c", SIGNALLED_TWICE], capture_output=True, text=True, timeout=60)
    assert completed.stdout == "first signal: KeyboardInterrupt\n"
    assert completed.returncode == 128 + signal.SIGINT


def test_an_interrupt_that_python_drops_is_raised_again():
    completed = signalled_in_a_weakref_callback.run(
        "from triplet_tfx.pipeline import cli", "cli._interruptible()", "SIGTERM", "KeyboardInterrupt"
    )
    assert completed.stdout == "stopped\n", completed.stderr
    assert completed.returncode == 0
    assert "Exception ignored" not in completed.stderr
