"""The training worker: `python -m triplet_tfx.components.training.worker --spec PATH`.

PATH (any tf.io.gfile path: local, gs://, s3://) holds the Trainer's FnArgs fields as JSON
(`write_spec`); the worker trains under the strategy its TF_CONFIG gives (`trainer.train_and_export`),
and only the chief exports the model into `serving_model_dir`. Every multi-worker run goes through it:
`--workers N` starts N local processes (`run_local_workers`), a Kubeflow TFJob N pods.
"""

from __future__ import annotations

import triplet_tfx.components  # noqa: F401  (pins Keras 3 before TensorFlow loads)

# isort: split
import argparse
import collections
import json
import logging
import os
import posixpath
import re
import subprocess
import sys
import threading
import types
from typing import Any, Dict, List, Optional

import portpicker

logger = logging.getLogger(__name__)

# FnArgs fields a worker reads (the rest, such as data_accessor, need the TFX executor).
SPEC_FIELDS = ("train_files", "eval_files", "transform_output", "serving_model_dir", "model_run_dir", "custom_config")
LOG_TAIL_LINES = 30
WORKER_MODULE = "triplet_tfx.components.training.worker"
_KERAS_PROGRESS = re.compile(r"^Epoch \d+/\d+$|/step - ")


class WorkerFailed(RuntimeError):
    """A local worker exited with an error; the message holds its exit status and log tail."""


def write_spec(fn_args, path: Optional[str] = None) -> str:
    """Writes the worker spec (default: `<model_run_dir>/worker_spec.json`); returns its path."""
    import tensorflow as tf

    spec = {field: getattr(fn_args, field) for field in SPEC_FIELDS}
    path = path or posixpath.join(fn_args.model_run_dir, "worker_spec.json")
    tf.io.gfile.makedirs(posixpath.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(spec, indent=2, sort_keys=True))
    return path


def read_spec(path: str) -> types.SimpleNamespace:
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"--spec: worker spec {path} not found")
    with tf.io.gfile.GFile(path) as f:
        spec = json.loads(f.read())
    missing = [field for field in SPEC_FIELDS if field not in spec]
    if missing:
        raise ValueError(f"--spec: worker spec {path} lacks {', '.join(missing)}")
    return types.SimpleNamespace(**spec)


def local_tf_configs(workers: int) -> List[Dict[str, Any]]:
    """TF_CONFIG of each of `workers` local processes: a chief and workers on 127.0.0.1, free ports."""
    ports = [portpicker.pick_unused_port() for _ in range(workers)]
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{p}" for p in ports[1:]]}
    tasks = [{"type": "chief", "index": 0}] + [{"type": "worker", "index": i} for i in range(workers - 1)]
    return [{"cluster": cluster, "task": task} for task in tasks]


def _stream(process: subprocess.Popen, prefix: str, tail: collections.deque) -> None:
    """Logs a worker's lines with its name: this project's messages and Keras' epoch lines at INFO,
    TensorFlow's own chatter at DEBUG (all of it in the tail of a failure)."""
    for line in process.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        level = logging.INFO if " triplet_tfx." in line or _KERAS_PROGRESS.search(line) else logging.DEBUG
        logger.log(level, "[%s] %s", prefix, line)


def run_local_workers(spec_path: str, workers: int) -> None:
    """Runs the worker entry point in `workers` local processes and waits for them; raises
    WorkerFailed with the first failing worker's log tail (the others are then stopped)."""
    procs = []
    try:
        for tf_config in local_tf_configs(workers):
            name = f"{tf_config['task']['type']} {tf_config['task']['index']}"
            env = {**os.environ, "TF_CONFIG": json.dumps(tf_config)}
            process = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, "--spec", spec_path],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            tail = collections.deque(maxlen=LOG_TAIL_LINES)
            reader = threading.Thread(target=_stream, args=(process, name, tail), daemon=True)
            reader.start()
            procs.append((name, process, tail, reader))
        logger.info("Training in %d local processes (chief + %d worker(s)), spec %s", workers, workers - 1, spec_path)
        pending = list(procs)
        while pending:
            for entry in list(pending):
                name, process, tail, reader = entry
                try:
                    code = process.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    continue
                pending.remove(entry)
                reader.join()
                if code != 0:
                    raise WorkerFailed(
                        f"training {name} exited with status {code}; its last lines:\n" + "\n".join(tail)
                    )
    finally:
        for _, process, _, _ in procs:
            if process.poll() is None:
                process.kill()
                process.wait()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Trains the triplet model as one task of the cluster that "
        "TF_CONFIG describes (or alone); the chief exports the model."
    )
    parser.add_argument("--spec", required=True, help="JSON of the Trainer's fields (written by run_fn)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    from triplet_tfx.components.training import distribute, trainer

    spec = read_spec(args.spec)
    trainer.train_and_export(spec, distribute.parse_tf_config(os.environ.get("TF_CONFIG")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
