"""After an interrupted run: its executions are marked failed (or, after Ctrl-C, cancelled) in ML
Metadata, their empty output folders removed.

A run killed mid-component (Ctrl-C twice, SIGKILL, a lost machine) leaves its execution RUNNING
for ever and the folders TFX made for its outputs. Called with the output root's run lock held,
so no RUNNING execution of this pipeline can belong to a live run.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
from typing import List

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from triplet_tfx.components.config import PipelineConfig
from triplet_tfx.pipeline import summary

INTERRUPTED_PROPERTY = "interrupted"  # custom property of an execution marked failed here
_UNFINISHED = (metadata_store_pb2.Execution.NEW, metadata_store_pb2.Execution.RUNNING)
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InterruptedExecution:
    run_id: str
    component: str
    execution_id: int

    def describe(self) -> str:
        return f"previous run {self.run_id} was interrupted at {self.component}"


def _is_empty_tree(folder: str) -> bool:
    return not any(files for _, _, files in os.walk(folder))


def mark_interrupted_runs(config: PipelineConfig) -> List[InterruptedExecution]:
    """Marks this pipeline's unfinished (NEW/RUNNING) executions FAILED, with a custom property
    saying why, and removes their output folders that hold no file. Returns what it marked."""
    now = datetime.datetime.now().isoformat(timespec="seconds")
    found = _mark_unfinished(
        config,
        metadata_store_pb2.Execution.FAILED,
        f"its run ended without finishing it (process killed or machine lost); marked failed by triplet-tfx at {now}",
    )
    for interrupted in found:
        logger.warning(
            "The %s; its %s execution %d is now marked FAILED",
            interrupted.describe(),
            interrupted.component,
            interrupted.execution_id,
        )
    return found


def mark_cancelled(config: PipelineConfig) -> List[InterruptedExecution]:
    """After Ctrl-C or SIGTERM, still holding the run lock: this run's unfinished executions are
    marked CANCELED (and their empty output folders removed), so that nothing stays RUNNING."""
    now = datetime.datetime.now().isoformat(timespec="seconds")
    return _mark_unfinished(config, metadata_store_pb2.Execution.CANCELED, f"interrupted by Ctrl-C or SIGTERM at {now}")


def _mark_unfinished(config: PipelineConfig, state: int, reason: str) -> List[InterruptedExecution]:
    if not os.path.exists(config.metadata_path):
        return []
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = config.metadata_path
    store = metadata_store.MetadataStore(connection)
    pipeline = store.get_context_by_type_and_name("pipeline", config.pipeline_name)
    if pipeline is None:
        return []
    run_type = store.get_context_type("pipeline_run").id
    found = []
    for execution in store.get_executions_by_context(pipeline.id):
        if execution.last_known_state not in _UNFINISHED:
            continue
        component = summary.node_id(store, execution)
        runs = [c.name for c in store.get_contexts_by_execution(execution.id) if c.type_id == run_type]
        execution.last_known_state = state
        execution.custom_properties[INTERRUPTED_PROPERTY].string_value = reason
        store.put_executions([execution])
        found.append(InterruptedExecution(runs[0] if runs else "?", component, execution.id))
        node_dir = os.path.join(config.pipeline_root, component)
        for key in os.listdir(node_dir) if os.path.isdir(node_dir) else []:
            output = os.path.join(node_dir, key, str(execution.id))
            if not key.startswith(".") and os.path.isdir(output) and _is_empty_tree(output):
                shutil.rmtree(output)
    return found
