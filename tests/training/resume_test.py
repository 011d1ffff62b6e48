"""Kill and resume: a training process SIGKILLed after its first backup, rerun, resumes from that
step, ends with the configured step count, and trains the weights an uninterrupted run trains
(TensorFlow op determinism on CPU: bit-equal)."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tiny_training_inputs

from triplet_tfx.components.training import checkpoints, worker

pytestmark = pytest.mark.slow

# 256 examples / batch 32 = 8 steps per epoch, 6 epochs: 48 steps, a backup every 5; dropout 0.3 and
# a cosine schedule, so that the dropout generators and the step counter must be restored too.
TRAIN = dict(batch_size=32, examples_per_class=8, epochs=6, embedding_dim=16, lr_schedule="cosine", checkpoint_every=5)
TOTAL = 48
# The worker entry point, with op determinism on (a test setting, not the product's).
DETERMINISTIC_WORKER = (
    "import sys, triplet_tfx.components, tensorflow as tf; "
    "tf.config.experimental.enable_op_determinism(); "
    "from triplet_tfx.components.training import worker; sys.exit(worker.main(sys.argv[1:]))"
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return tiny_training_inputs.make_inputs(str(tmp_path_factory.mktemp("inputs")))


def start(spec: str, log: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return subprocess.Popen(
        [sys.executable, "-c", DETERMINISTIC_WORKER, "--spec", spec],
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )


def finish(process: subprocess.Popen, log: str) -> str:
    try:
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = open(log).read()
    assert process.returncode == 0, text[-3000:]
    return text


def steps_run(log: str) -> int:
    return sum(int(n) for n in re.findall(r"^(\d+)/\1 - ", log, re.M))


def weights_digest(log: str) -> str:
    match = re.search(rf"Trained {TOTAL} steps \(optimizer step {TOTAL}\); weights sha256 (\w+)", log)
    assert match, log[-3000:]
    return match.group(1)


def test_killed_training_resumes_and_matches_an_uninterrupted_run(inputs, tmp_path):
    whole = tiny_training_inputs.fn_args(inputs, str(tmp_path / "whole"), 1, **TRAIN)
    uninterrupted = finish(start(worker.write_spec(whole), str(tmp_path / "whole.log")), str(tmp_path / "whole.log"))
    assert "Resuming" not in uninterrupted

    first = tiny_training_inputs.fn_args(inputs, str(tmp_path / "root"), 1, **TRAIN)
    backup = checkpoints.backup_dir(
        first.model_run_dir, [*first.train_files, *first.eval_files, first.transform_output], first.custom_config
    )
    killed = start(worker.write_spec(first), str(tmp_path / "killed.log"))
    try:
        deadline = time.time() + 600
        while not os.path.exists(os.path.join(backup, checkpoints.LATEST)):
            assert killed.poll() is None, open(tmp_path / "killed.log").read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert not os.path.exists(first.serving_model_dir)

    # TFX reruns the Trainer in a new execution with new output folders; the backup is found by its key.
    rerun = tiny_training_inputs.fn_args(inputs, str(tmp_path / "root"), 2, **TRAIN)
    resumed = finish(start(worker.write_spec(rerun), str(tmp_path / "resumed.log")), str(tmp_path / "resumed.log"))
    step = int(re.search(rf"Resuming from step (\d+) of {TOTAL}", resumed).group(1))
    assert 0 < step < TOTAL and step % TRAIN["checkpoint_every"] == 0
    # Keras ran only the steps that were left (its lines "N/N - ...", one per epoch or partial epoch).
    assert steps_run(uninterrupted) == TOTAL and steps_run(resumed) == TOTAL - step
    assert weights_digest(resumed) == weights_digest(uninterrupted)
    assert os.path.exists(os.path.join(rerun.serving_model_dir, "saved_model.pb"))
    assert not os.path.exists(backup)  # removed after the export
