"""The Trainer's `run_fn` (TFX GenericExecutor): where the training runs.

The one module that knows the three ways, so that they import nothing of each other but in one
direction (run -> tfjob -> worker -> trainer): a Kubeflow TFJob (`tfjob.py`, when the pipeline was
compiled with `--trainer-workers N`), `train.workers` local processes (`worker.py`), or this process
(`trainer.train_and_export`).
"""

from __future__ import annotations

import os

from triplet_tfx.components.config import PipelineConfig
from triplet_tfx.components.training import distribute, tfjob, trainer, worker


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (GenericExecutor): trains here, or in `train.workers` local processes."""
    train = PipelineConfig.from_dict({"train": fn_args.custom_config["train"]}).train
    if tfjob.TFJOB_KEY in fn_args.custom_config:  # compiled with --trainer-workers N: a Kubeflow TFJob trains
        tfjob.launch_and_wait(fn_args)
    elif train.workers > 1:
        worker.run_local_workers(worker.write_spec(fn_args), train.workers)
    else:
        # TF_CONFIG: set where a platform runs the Trainer on several machines (Vertex AI).
        trainer.train_and_export(fn_args, distribute.parse_tf_config(os.environ.get("TF_CONFIG")))
