"""Kill and rerun the whole local pipeline: `triplet-tfx run` SIGKILLed while the Trainer trains
(after its first backup), rerun with the same flags: ExampleGen to Transform come from the cache,
the new Trainer execution resumes from the backup, and exactly one model is pushed."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

FLAGS = [
    "--max-examples",
    "256",
    "--batch-size",
    "32",
    "--examples-per-class",
    "8",
    "--max-steps",
    "40",
    "--checkpoint-every",
    "5",
    "--min-precision-at-1",
    "0",
    "--plot",
    "pca",
]


def run_command(root):
    return [sys.executable, "-m", "triplet_tfx.pipeline.cli", "run", "--output-root", root, *FLAGS]


def test_killed_pipeline_reruns_resumes_and_pushes_one_model(tmp_path):
    root = str(tmp_path / "out")
    backups = os.path.join(root, "pipelines", "triplet-mnist", "Trainer", "training_backup", "*", "latest.json")
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen(run_command(root), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 900
        while not glob.glob(backups):
            assert killed.poll() is None, open(tmp_path / "killed.log").read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    serving = os.path.join(root, "serving", "triplet_mnist")
    assert not os.path.exists(serving)

    rerun = subprocess.run(run_command(root), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    step = int(re.search(r"Resuming from step (\d+) of (\d+)", rerun.stderr).group(1))
    assert step > 0 and step % 5 == 0
    assert len(os.listdir(serving)) == 1
    assert not glob.glob(backups)
