"""Faults and concurrency: the run lock, pre-flight checks, an interrupted run, a failed push.

The scenario (one output root, 200 examples, 5 steps): run A is killed (SIGKILL) during its
Trainer; run B marks A's execution failed and blesses its model, but its push fails; run C, with
the destination fixed and the cache on, pushes that model; run D is not blessed.
"""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from ml_metadata.proto import metadata_store_pb2

from triplet_tfx.pipeline import cli, recovery, summary
from triplet_tfx.pipeline.run_lock import LOCK_FILE, RunLock, RunLockError

pytestmark = pytest.mark.slow

SMALL = ["--max-examples", "200", "--max-steps", "5", "--min-precision-at-1", "0", "--plot", "pca"]


def _hold_lock(root):
    """A helper process that holds the output root's run lock until killed."""
    code = (
        "import sys, time\nfrom triplet_tfx.pipeline.run_lock import RunLock\n"
        f"RunLock({str(root)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(600)\n"
    )
    helper = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert helper.stdout.readline().strip() == "locked"
    return helper


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_second_run_is_refused_while_another_holds_the_root_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    root = tmp_path / "out"
    assert cli.main(["run", "--output-root", str(root), "--print-config"]) == 0  # nothing created
    cli.claim_output_root(cli.PipelineConfig(output_root=str(root)))
    helper = _hold_lock(root)
    try:
        capsys.readouterr()
        assert cli.main(["run", "--output-root", str(root), *SMALL]) == 2
        [error] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # one line
        assert (
            f"triplet-tfx: error: --output-root {root} is in use by another run (PID {helper.pid} on host "
            f"{socket.gethostname()}, started "
        ) in error
        assert not (root / "pipelines").exists()  # refused before any component ran
        with pytest.raises(RunLockError):
            RunLock(str(root)).acquire()
    finally:
        helper.send_signal(signal.SIGKILL)
        helper.wait()
    # The killed holder left its lock file behind: stale, taken over with a warning.
    assert json.loads((root / LOCK_FILE).read_text())["pid"] == helper.pid
    records = _Records()
    logging.getLogger("triplet_tfx.pipeline.run_lock").addHandler(records)
    try:
        with RunLock(str(root)):
            assert json.loads((root / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        logging.getLogger("triplet_tfx.pipeline.run_lock").removeHandler(records)
    [warning] = records.messages
    assert warning.startswith(f"Took over the stale lock of a run that is no longer running (PID {helper.pid} on host")
    assert not (root / LOCK_FILE).exists()  # released


def test_unwritable_serving_dir_and_missing_source_are_named_before_anything_is_created(tmp_path, capsys):
    (tmp_path / "file").write_text("a regular file")
    root = tmp_path / "out"
    assert cli.main(["run", "--output-root", str(root), "--serving-dir", str(tmp_path / "file" / "serving")]) == 2
    assert (
        f"triplet-tfx: error: --serving-dir {tmp_path / 'file' / 'serving'}/triplet_mnist: "
        f"{tmp_path / 'file'} is a file, not a folder\n"
    ) in capsys.readouterr().err
    assert cli.main(["run", "--output-root", str(tmp_path / "file" / "out")]) == 2
    assert "--output-root" in capsys.readouterr().err
    assert cli.main(["run", "--output-root", str(root), "--data", f"images:{tmp_path / 'nowhere'}"]) == 2
    assert "nowhere: image folder not found" in capsys.readouterr().err
    assert cli.main(["run", "--output-root", str(root), "--data", "tfds:no_such_dataset_xyz"]) == 2
    assert "unknown TFDS data set 'no_such_dataset_xyz'" in capsys.readouterr().err
    assert not root.exists()


def test_require_blessed_is_explained_in_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "--require-blessed" in capsys.readouterr().out.replace("\n", " ")


def _executions(config, component):
    store = summary.open_store(config.metadata_path)
    return [e for e in store.get_executions() if summary.node_id(store, e) == component]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """Runs A (killed in the Trainer), B (push fails), C (pushes), D (not blessed); their outputs."""
    root = tmp_path_factory.mktemp("faults") / "out"
    argv = ["run", "--output-root", str(root), *SMALL]
    config = cli.config_from_args(cli.build_parser().parse_args(argv))
    outputs = {}

    # A: a real process, killed once its Trainer execution has begun (its output folders exist).
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "triplet-tfx"), *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        models = os.path.join(config.pipeline_root, "Trainer", "model")
        deadline = time.time() + 300
        while not (os.path.isdir(models) and os.listdir(models)) and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, "run A ended before its Trainer started"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    outputs["A_model_dirs"] = sorted(os.listdir(models))
    outputs["A_trainer"] = _executions(config, "Trainer")

    # B: the destination breaks after the pre-flight check (it becomes a regular file): the push fails.
    from triplet_tfx.components.serving import pusher

    original = pusher.AtomicPushExecutor.Do

    def broken_destination(self, *args, **kwargs):
        os.makedirs(os.path.dirname(config.serving_model_dir), exist_ok=True)
        with open(config.serving_model_dir, "w") as f:
            f.write("not a folder")
        return original(self, *args, **kwargs)

    pusher.AtomicPushExecutor.Do = broken_destination
    try:
        outputs["B"] = _main(argv)
    finally:
        pusher.AtomicPushExecutor.Do = original
    os.remove(config.serving_model_dir)
    outputs["C"] = _main(argv + ["--require-blessed"])
    outputs["D"] = _main(argv + ["--require-blessed", "--min-precision-at-1", "1.0"])
    outputs["D_default"] = _main(argv + ["--min-precision-at-1", "1.0"])
    return config, outputs


def _main(argv):
    """cli.main in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_interrupted_run_is_marked_failed_and_reported(scenario):
    config, outputs = scenario
    [killed] = outputs["A_trainer"]
    assert killed.last_known_state == metadata_store_pb2.Execution.RUNNING  # what the kill left behind
    assert outputs["A_model_dirs"] == [str(killed.id)]
    now = {e.id: e for e in _executions(config, "Trainer")}[killed.id]
    assert now.last_known_state == metadata_store_pb2.Execution.FAILED
    assert "marked failed by triplet-tfx" in now.custom_properties[recovery.INTERRUPTED_PROPERTY].string_value
    assert not os.path.exists(os.path.join(config.pipeline_root, "Trainer", "model", str(killed.id)))
    store = summary.open_store(config.metadata_path)
    run_a = summary.pipeline_runs(store, config.pipeline_name)[0].name
    code, out, _ = outputs["B"]
    assert f"Note: previous run {run_a} was interrupted at Trainer" in out
    assert "previous run" not in outputs["C"][1]  # reported once


def test_failed_push_is_reported_and_the_next_run_pushes_the_blessed_model(scenario):
    config, outputs = scenario
    code, out, err = outputs["B"]
    assert code == 1 and "triplet-tfx: error: the run failed" in err
    assert re.search(r"Pusher\s+FAILED\b", out) and "Model BLESSED" in out and "NOT BLESSED" not in out
    code, out, err = outputs["C"]
    assert code == 0, err
    assert re.search(r"Trainer\s+CACHED\b", out) and re.search(r"EmbeddingEvaluator\s+CACHED\b", out)
    assert re.search(r"Pusher\s+COMPLETE\b", out)
    [version] = os.listdir(config.serving_model_dir)
    assert f"Pushed model: {os.path.join(config.serving_model_dir, version)}" in out
    assert os.path.exists(os.path.join(config.serving_model_dir, version, "saved_model.pb"))


def test_each_summary_describes_the_run_it_ends(scenario):
    config, outputs = scenario
    store = summary.open_store(config.metadata_path)
    run_ids = [run.name for run in summary.pipeline_runs(store, config.pipeline_name)]
    assert len(run_ids) == 5  # A, B, C, D, D_default
    for run_id, name in zip(run_ids[1:], ("B", "C", "D", "D_default")):
        assert f"Run {run_id}:" in outputs[name][1], name
    assert summary.latest_run(config, after_context_id=summary.latest_context_id(config)) is None


def test_require_blessed_exits_3_when_not_blessed(scenario):
    _, outputs = scenario
    code, out, _ = outputs["D"]
    assert code == cli.EXIT_NOT_BLESSED == 3 and "Model NOT BLESSED" in out
    code, out, _ = outputs["D_default"]
    assert code == 0 and "Model NOT BLESSED" in out
