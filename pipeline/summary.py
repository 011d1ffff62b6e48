"""The short report printed at the end of a local run, read back from ML Metadata."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from triplet_tfx.components.evaluation import report
from triplet_tfx.components.evaluation.evaluator import METRICS_FILE, TENSORBOARD_DIR
from triplet_tfx.pipeline.config import PipelineConfig


@dataclasses.dataclass
class RunSummary:
    run_id: str
    executions: Dict[str, str]  # component id -> COMPLETE / CACHED / FAILED ...
    metrics: Dict[str, object]
    blessed: Optional[bool]
    blessing_message: str
    pushed_to: Optional[str]
    evaluation_dir: Optional[str]
    seconds: Dict[str, float] = dataclasses.field(default_factory=dict)  # component id -> wall time
    log_path: Optional[str] = None

    def format(self) -> str:
        lines = [f"Run {self.run_id}:"]
        lines += [f"  {component:<26} {state:<9} {self.seconds[component]:7.1f} s" if component in self.seconds
                  else f"  {component:<26} {state}" for component, state in self.executions.items()]
        if self.metrics:
            lines.append("Metrics (eval split):")
            lines.append(report.format_metrics_table(self.metrics, self.metrics.get("baseline")))
        if self.blessed is not None:
            lines.append(f"Model {'BLESSED' if self.blessed else 'NOT BLESSED'}: {self.blessing_message}")
        lines.append(f"Pushed model: {self.pushed_to}" if self.pushed_to else
                     "Pushed model: none (nothing was pushed by this run)")
        if self.evaluation_dir:
            lines.append(f"Evaluation: {self.evaluation_dir} (report.html, metrics.json, plots)")
            lines.append("Embedding Projector and metric scalars: tensorboard --logdir "
                         + os.path.join(self.evaluation_dir, TENSORBOARD_DIR))
        if self.log_path:
            lines.append(f"Log file: {self.log_path}")
        return "\n".join(lines)


def _state_name(state: int) -> str:
    return metadata_store_pb2.Execution.State.Name(state)


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    """Read-only connection to a local run's SQLite ML Metadata."""
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = metadata_path
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(connection)


def node_id(store: metadata_store.MetadataStore, execution: metadata_store_pb2.Execution) -> str:
    """The pipeline node (component id) an execution belongs to."""
    node_type = store.get_context_type("node").id
    nodes = [c for c in store.get_contexts_by_execution(execution.id) if c.type_id == node_type]
    return nodes[0].name.split(".", 1)[-1] if nodes else str(execution.id)  # "<pipeline>.<node id>"


def execution_seconds(execution: metadata_store_pb2.Execution) -> float:
    """Wall time of an execution: from its creation (the launcher's start) to its last update."""
    return (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000


def latest_run(config: PipelineConfig) -> Optional[RunSummary]:
    """Summary of the pipeline's most recent run in its MLMD database; None if it has none (e.g.
    under `tfx pipeline create`, which loads the runner file without running the pipeline)."""
    if not os.path.exists(config.metadata_path):
        return None
    store = open_store(config.metadata_path)
    pipeline = store.get_context_by_type_and_name("pipeline", config.pipeline_name)
    pipeline_executions = {e.id for e in store.get_executions_by_context(pipeline.id)} if pipeline else set()
    runs = [c for c in store.get_contexts_by_type("pipeline_run")
            if {e.id for e in store.get_executions_by_context(c.id)} & pipeline_executions]
    if not runs:
        return None
    run = max(runs, key=lambda c: c.id)
    executions = store.get_executions_by_context(run.id)
    states = {node_id(store, execution): _state_name(execution.last_known_state)
              for execution in sorted(executions, key=lambda e: e.id)}
    seconds = {node_id(store, execution): execution_seconds(execution) for execution in executions}
    artifacts = store.get_artifacts_by_context(run.id)
    types = {t.id: t.name for t in store.get_artifact_types()}
    latest: Dict[str, List[metadata_store_pb2.Artifact]] = {}
    for artifact in artifacts:
        latest.setdefault(types[artifact.type_id], []).append(artifact)

    def newest(type_name: str) -> Optional[metadata_store_pb2.Artifact]:
        found = latest.get(type_name)
        return max(found, key=lambda a: a.id) if found else None

    evaluation, blessing, pushed = newest("ModelEvaluation"), newest("ModelBlessing"), newest("PushedModel")
    metrics: Dict[str, object] = {}
    if evaluation is not None and os.path.exists(os.path.join(evaluation.uri, METRICS_FILE)):
        with open(os.path.join(evaluation.uri, METRICS_FILE)) as f:
            metrics = json.load(f)
    pushed_to = None
    if pushed is not None and pushed.custom_properties["pushed"].int_value == 1:
        pushed_to = pushed.custom_properties["pushed_destination"].string_value
    return RunSummary(
        run_id=run.name,
        executions=states,
        metrics=metrics,
        blessed=None if blessing is None else blessing.custom_properties["blessed"].int_value == 1,
        blessing_message="" if blessing is None else blessing.custom_properties["blessing_message"].string_value,
        pushed_to=pushed_to,
        evaluation_dir=evaluation.uri if evaluation is not None else None,
        seconds=seconds,
    )
