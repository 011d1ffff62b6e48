"""The short report printed at the end of a local run, read back from ML Metadata."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from triplet_tfx.components import contract
from triplet_tfx.components.config import PipelineConfig
from triplet_tfx.components.contract import ALREADY_PUSHED_KEY, METRICS_FILE, TENSORBOARD_DIR
from triplet_tfx.components.evaluation import report
from triplet_tfx.components.evaluation.report import verdict_line


@dataclasses.dataclass
class RunSummary:
    run_id: str
    executions: Dict[str, str]  # component id -> COMPLETE / CACHED / FAILED ...
    metrics: Dict[str, object]
    blessed: Optional[bool]
    blessing_message: str
    pushed_to: Optional[str]
    evaluation_dir: Optional[str]
    search_index: str = ""  # what building the served search index cost, when this run built one
    # The candidate is the model already in production (pushed by an earlier run): blessed, not pushed again.
    already_pushed: bool = False
    interrupted: List[str] = dataclasses.field(default_factory=list)  # "previous run ... was interrupted at ..."
    seconds: Dict[str, float] = dataclasses.field(default_factory=dict)  # component id -> wall time
    log_path: Optional[str] = None
    # "N images skipped ...: <list file>" when ExampleGen skipped images (--on-bad-image skip).
    skipped_images: str = ""

    def format(self) -> str:
        lines = [f"Note: {note}" for note in self.interrupted] + [f"Run {self.run_id}:"]
        lines += [
            f"  {component:<26} {state:<9} {self.seconds[component]:7.1f} s"
            if component in self.seconds
            else f"  {component:<26} {state}"
            for component, state in self.executions.items()
        ]
        if self.metrics:
            lines.append("Metrics (eval split):")
            lines.append(report.format_metrics_table(self.metrics, self.metrics.get("baseline")))
            if self.metrics.get("classes_seen_in_training") is False:
                lines.append(report.unseen_classes_line(self.metrics))
        if self.already_pushed or self.blessed is not None:  # the evaluator's own line
            lines.append(verdict_line(self.blessed, self.already_pushed, self.blessing_message))
        lines.append(
            f"Pushed model: {self.pushed_to}"
            if self.pushed_to
            else "Pushed model: none (nothing was pushed by this run)"
        )
        if self.skipped_images:
            lines.append(f"Skipped images: {self.skipped_images}")
        if self.search_index:
            lines.append(f"Search index: {self.search_index}")
        if self.evaluation_dir:
            lines.append(f"Evaluation: {self.evaluation_dir} (report.html, metrics.json, plots)")
            lines.append(
                "Embedding Projector and metric scalars: tensorboard --logdir "
                + os.path.join(self.evaluation_dir, TENSORBOARD_DIR)
            )
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


def pipeline_runs(store: metadata_store.MetadataStore, pipeline_name: str) -> List[metadata_store_pb2.Context]:
    """The pipeline_run contexts of a pipeline, oldest first."""
    pipeline = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline is None:
        return []
    pipeline_executions = {e.id for e in store.get_executions_by_context(pipeline.id)}
    return sorted(
        (
            c
            for c in store.get_contexts_by_type("pipeline_run")
            if {e.id for e in store.get_executions_by_context(c.id)} & pipeline_executions
        ),
        key=lambda c: c.id,
    )


def latest_context_id(config: PipelineConfig) -> int:
    """The highest context id in the run's MLMD database (0 if none): contexts above it are newer."""
    if not os.path.exists(config.metadata_path):
        return 0
    return max((c.id for c in open_store(config.metadata_path).get_contexts()), default=0)


def latest_run(config: PipelineConfig, after_context_id: int = 0) -> Optional[RunSummary]:
    """Summary of the pipeline's most recent run in its MLMD database, if it began after context
    `after_context_id`; None if there is none (e.g. under `tfx pipeline create`, which loads the
    runner file without running the pipeline)."""
    if not os.path.exists(config.metadata_path):
        return None
    store = open_store(config.metadata_path)
    runs = [run for run in pipeline_runs(store, config.pipeline_name) if run.id > after_context_id]
    return summarize_run(store, runs[-1]) if runs else None


def summarize_run(store: metadata_store.MetadataStore, run: metadata_store_pb2.Context) -> RunSummary:
    """What one pipeline_run context holds: component states, metrics, blessing, push."""
    executions = store.get_executions_by_context(run.id)
    states = {
        node_id(store, execution): _state_name(execution.last_known_state)
        for execution in sorted(executions, key=lambda e: e.id)
    }
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
    serving_models = [a for a in latest.get("Model", []) if contract.INDEX_BYTES in a.custom_properties]
    search_index = ""
    if serving_models:
        properties = max(serving_models, key=lambda a: a.id).custom_properties
        search_index = (
            f"{properties[contract.INDEX_SIZE].int_value} {properties[contract.INDEX_SPLIT].string_value} "
            f"references, built in {properties[contract.INDEX_BUILD_SECONDS].double_value:.1f} s "
            f"(ServingModelBuilder), "
            f"{properties[contract.INDEX_BYTES].int_value / 1e6:.1f} MB in the model"
        )
        if contract.INDEX_RECALL_AT_10 in properties:  # an approximate (ivf) index
            search_index += (
                f"; ivf, {properties[contract.INDEX_LISTS].int_value} lists, nprobe "
                f"{properties[contract.INDEX_NPROBE].int_value}, recall@10 against exact search "
                f"{properties[contract.INDEX_RECALL_AT_10].double_value:.4f}"
            )
        if properties.get(contract.INDEX_REBUILD_REASONS, None) is not None:
            reasons = properties[contract.INDEX_REBUILD_REASONS].string_value
            advice = f"rebuild advised: {reasons}" if reasons else "no rebuild needed"
            search_index += f"; items added to the served lists, {advice}"
        if contract.MATCH_THRESHOLD in properties:
            search_index += f"; match threshold {properties[contract.MATCH_THRESHOLD].double_value:.4g}"
    skipped_images = ""
    examples = [a for a in latest.get("Examples", []) if contract.SKIPPED_IMAGES_PROPERTY in a.custom_properties]
    if examples:
        newest_examples = max(examples, key=lambda a: a.id)
        skipped = newest_examples.custom_properties[contract.SKIPPED_IMAGES_PROPERTY].int_value
        if skipped:
            skipped_images = (
                f"{skipped} image(s) that cannot be used were left out (--on-bad-image skip), "
                f"listed in {os.path.join(newest_examples.uri, contract.SKIPPED_IMAGES_FILE)}"
            )
    properties = blessing.custom_properties if blessing is not None else {}
    already_pushed = ALREADY_PUSHED_KEY in properties and properties[ALREADY_PUSHED_KEY].int_value == 1
    return RunSummary(
        run_id=run.name,
        executions=states,
        metrics=metrics,
        blessed=None if blessing is None else properties["blessed"].int_value == 1 or already_pushed,
        blessing_message="" if blessing is None else properties["blessing_message"].string_value,
        pushed_to=pushed_to,
        evaluation_dir=evaluation.uri if evaluation is not None else None,
        search_index=search_index,
        skipped_images=skipped_images,
        already_pushed=already_pushed,
        seconds=seconds,
    )
