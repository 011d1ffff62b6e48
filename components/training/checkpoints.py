"""Preemption-safe training: the training state backed up every N steps, restored by a rerun.

Keras' own `BackupAndRestore` resumes only at epoch boundaries and has every worker write the same
file; this is its step-level equivalent. A backup is the model's and optimizer's weights
(`model.save_weights`: Keras' .weights.h5, Adam's slots and step counter included), the
non-trainable variables that file leaves out (the dropout layers' random-generator states), and
`latest.json`, written last (as a temporary file, then renamed), which names the step (and the
training phase of --freeze-backbone-epochs: `frozen` or `fine_tune`, whose optimizers differ, so the
rerun compiles the model for the backup's phase before loading it): a kill during a save leaves the
previous backup in force.

Where: `<two folders above the Trainer's model_run output>/training_backup/<key>`: locally
`<pipeline root>/Trainer/training_backup/<key>`; on Kubeflow Pipelines and Vertex AI the run's
folder below the pipeline root, which a retried Trainer step shares. TFX gives a retried execution a
new output folder, so the key is a hash of what determines the training (the input artifacts' URIs,
the data and training configuration, the code fingerprint), not of that folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from typing import Any, Callable, Dict, Iterable, List, Optional

import keras
import numpy as np
import tensorflow as tf

from triplet_tfx.components.training.batch_parts import network_of

logger = logging.getLogger(__name__)

LATEST = "latest.json"
# TrainConfig fields that say how to run, not what to train: a rerun with other values resumes.
RUN_ONLY_FIELDS = ("strategy", "workers", "checkpoint_every", "batch_parts")


def backup_dir(model_run_dir: str, input_uris: Iterable[str], custom_config: Dict[str, Any]) -> str:
    """The backup folder of this training (see the module docstring)."""
    train = {k: v for k, v in custom_config["train"].items() if k not in RUN_ONLY_FIELDS}
    what = {
        "inputs": sorted(input_uris),
        "data": custom_config["data"],
        "train": train,
        "code": custom_config.get("code_fingerprint"),
    }
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    root = posixpath.dirname(posixpath.dirname(model_run_dir.rstrip("/")))
    return posixpath.join(root, "training_backup", key)


def _state_variables(model: keras.Model) -> List:
    """The non-trainable variables that save_weights leaves out (random-generator states): not the
    weights (a frozen backbone's weights are all non-trainable, and in the weights file already)."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.non_trainable_variables if id(v) not in weights]


def _holder(model: keras.Model) -> keras.Model:
    """The network, holding the model's optimizer: a backup's file is the same whether the batch
    trains in parts or whole (batch_parts.py), so that a rerun on another machine resumes from it."""
    network = network_of(model)
    network.optimizer = model.optimizer
    return network


def save(model: keras.Model, directory: str, step: int, extra: Optional[Dict[str, Any]] = None) -> None:
    tf.io.gfile.makedirs(directory)
    weights = f"step-{step}.weights.h5"
    holder = _holder(model)
    holder.save_weights(posixpath.join(directory, weights))
    state = {
        **(extra or {}),
        "step": step,
        "weights": weights,
        "non_trainable": [np.asarray(v.numpy()).tolist() for v in _state_variables(holder)],
    }
    latest = posixpath.join(directory, LATEST)
    with tf.io.gfile.GFile(latest + ".tmp", "w") as f:
        f.write(json.dumps(state))
    tf.io.gfile.rename(latest + ".tmp", latest, overwrite=True)
    for name in tf.io.gfile.listdir(directory):
        if name.startswith("step-") and name != weights:
            tf.io.gfile.remove(posixpath.join(directory, name))


def read_state(directory: str) -> Optional[Dict[str, Any]]:
    """The latest backup's latest.json (step, weights file, phase...); None when there is none."""
    latest = posixpath.join(directory, LATEST)
    if not tf.io.gfile.exists(latest):
        return None
    with tf.io.gfile.GFile(latest) as f:
        return json.loads(f.read())


def restore(model: keras.Model, directory: str) -> int:
    """Loads the latest backup into the compiled `model` (compiled for the backup's phase: see
    read_state; `trainer.compile_phase` builds the optimizer's slots that it loads); returns its step
    (0: none)."""
    state = read_state(directory)
    if state is None:
        return 0
    holder = _holder(model)
    holder.load_weights(posixpath.join(directory, state["weights"]))
    for variable, value in zip(_state_variables(holder), state["non_trainable"]):
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return int(state["step"])


def remove(directory: str) -> None:
    if tf.io.gfile.exists(directory):
        tf.io.gfile.rmtree(directory)


class StepBackup(keras.callbacks.Callback):
    """Saves the training state every `every` steps. It acts before a batch, not after one: Keras
    turns the step's outputs into Python numbers (waiting for the device) before calling any
    callback's on_train_batch_end, and at a batch's start the previous step's updates are in the
    variables already. Keras calls it once per call of `steps_per_execution` steps, which must
    divide `every`. `state(step)`: more fields for latest.json (the training phase)."""

    def __init__(
        self, directory: str, every: int, start_step: int, state: Optional[Callable[[int], Dict[str, Any]]] = None
    ):
        super().__init__()
        self.directory, self.every, self.step = directory, every, start_step
        self._last_saved = start_step
        self._state = state

    def on_train_batch_begin(self, batch, logs=None):
        if self.step % self.every == 0 and self.step != self._last_saved:
            if self._state is None:
                save(self.model, self.directory, self.step)
            else:
                save(self.model, self.directory, self.step, self._state(self.step))
            self._last_saved = self.step
        self.step += self.model.steps_per_execution
