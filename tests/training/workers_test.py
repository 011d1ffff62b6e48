"""`--workers 2`: run_fn trains in two local processes (chief + worker, TF_CONFIG on 127.0.0.1) under
MultiWorkerMirroredStrategy through the worker entry point; both resume from a backup, end with the
same weights, only the chief exports, nothing else is left behind; a failing worker fails with its log tail."""

import logging
import os
import re

import pytest
import tiny_training_inputs

from triplet_tfx.components.training import checkpoints, run, worker

pytestmark = pytest.mark.slow

TRAIN = dict(
    batch_size=32, examples_per_class=8, epochs=1, max_steps=4, embedding_dim=16, checkpoint_every=2, workers=2
)


def test_local_tf_configs_name_a_chief_and_workers_on_free_ports():
    configs = worker.local_tf_configs(3)
    cluster = configs[0]["cluster"]
    assert all(c["cluster"] == cluster for c in configs)
    assert [c["task"] for c in configs] == [
        {"type": "chief", "index": 0},
        {"type": "worker", "index": 0},
        {"type": "worker", "index": 1},
    ]
    addresses = cluster["chief"] + cluster["worker"]
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)


class Killed(Exception):
    pass


def test_two_local_workers_resume_train_in_sync_and_the_chief_alone_exports(tmp_path, caplog, monkeypatch):
    inputs = tiny_training_inputs.make_inputs(str(tmp_path / "inputs"))
    # A first execution, in this process on one device, stops right after its first backup (step 2)...
    save = checkpoints.save

    def save_then_stop(*args):
        save(*args)
        raise Killed()

    monkeypatch.setattr(checkpoints, "save", save_then_stop)
    single = {**TRAIN, "workers": 1}
    with pytest.raises(Killed):
        run.run_fn(tiny_training_inputs.fn_args(inputs, str(tmp_path / "root"), 1, **single))
    monkeypatch.undo()
    # ...and the rerun, with --workers 2, resumes from it under MultiWorkerMirroredStrategy.
    args = tiny_training_inputs.fn_args(inputs, str(tmp_path / "root"), 2, **TRAIN)
    with caplog.at_level(logging.INFO, logger="triplet_tfx"):
        run.run_fn(args)
    lines = [r.getMessage() for r in caplog.records]
    resumed = [line.split("]")[0] for line in lines if "Resuming from step 2 of 4" in line]
    assert sorted(resumed) == ["[chief 0", "[worker 0"]
    strategy = [
        line for line in lines if "Strategy: MultiWorkerMirroredStrategy, 2 replica(s), per-replica batch 16" in line
    ]
    assert {line.split("]")[0] for line in strategy} == {"[chief 0", "[worker 0"}
    trained = re.compile(r"\[(\w+ \d)\] .*Trained 4 steps \(optimizer step 4\); weights sha256 (\w+)")
    digests = {m.group(1): m.group(2) for m in map(trained.match, lines) if m}
    assert set(digests) == {"chief 0", "worker 0"}
    assert digests["chief 0"] == digests["worker 0"]
    # Exactly one model, in the Trainer's output; TensorBoard logs from the chief only; no backup left.
    model_root = os.path.dirname(args.serving_model_dir)
    assert os.listdir(model_root) == ["Format-Serving"]
    assert os.path.exists(os.path.join(args.serving_model_dir, "saved_model.pb"))
    assert sorted(os.listdir(args.model_run_dir)) == ["train", "validation", "worker_spec.json"]
    backups = tmp_path / "root" / "Trainer" / "training_backup"
    assert not backups.exists() or not os.listdir(backups)


def test_a_failing_worker_fails_with_its_log_tail(tmp_path):
    missing = str(tmp_path / "no_spec.json")
    with pytest.raises(
        worker.WorkerFailed,
        match=r"(?s)exited with status 1; its last lines:.*--spec: worker spec " + re.escape(missing) + " not found",
    ):
        worker.run_local_workers(missing, 2)
