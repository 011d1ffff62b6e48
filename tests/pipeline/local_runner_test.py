"""The runner file of TFX's own CLI: options through TRIPLET_TFX_ARGS, and no orphan when the
process that started it (`tfx run create`) is killed."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from triplet_tfx.pipeline.run_lock import RunLock

RUNNER = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "pipeline", "local_runner.py")


def test_options_come_from_the_environment_variable_then_the_arguments():
    completed = subprocess.run(
        [sys.executable, RUNNER, "--batch-size", "64", "--print-config"],
        env={**os.environ, "TRIPLET_TFX_ARGS": "--epochs 3 --batch-size 16 --pipeline-name 'my pipeline'"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    config = json.loads(completed.stdout)
    assert (config["train"]["epochs"], config["train"]["batch_size"], config["pipeline_name"]) == (3, 64, "my pipeline")


PARENT = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, *sys.argv[1:]])
    print(child.pid, flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
def test_killing_the_parent_stops_the_run_and_releases_the_lock(tmp_path):
    root = tmp_path / "out"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PARENT,
            RUNNER,
            "--output-root",
            str(root),
            "--max-examples",
            "200",
            "--max-steps",
            "100000",
            "--plot",
            "pca",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    try:
        deadline = time.time() + 300
        while not (root / "logs").is_dir() and time.time() < deadline:  # the run holds the lock
            time.sleep(0.2)
        time.sleep(2)
        parent.kill()
        parent.wait()
        deadline = time.time() + 120
        while time.time() < deadline and _alive(child):
            time.sleep(0.2)
        assert not _alive(child), "the runner outlived the process that started it"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
    with RunLock(str(root)):  # released
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead: its parent is gone, init reaps it
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
