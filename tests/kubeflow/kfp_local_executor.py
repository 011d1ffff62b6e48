"""Test aid: executes a compiled KFP v2 PipelineSpec task by task, without Kubernetes.

For each task of the spec's root DAG, in dependency order, it does what the KFP v2 driver and
launcher do for a container task, minus the container runtime:
  * builds the task's ExecutorInput (kfp's pipeline_spec_pb2.ExecutorInput): constant parameters
    from the task spec, input artifacts = the RuntimeArtifacts (uri, type, metadata) that the
    upstream tasks reported in their executor_output.json, output artifacts with fresh URIs
    under a local pipeline root (<root>/<task>/<output key>; created up front, as object
    stores have no directories to create), and outputs.outputFile;
  * substitutes the `{{$}}` placeholder of the container args with that JSON (any other
    placeholder fails the run: this harness does not resolve it);
  * runs the container's command and args from the spec (`python -m tfx.orchestration.
    kubeflow.v2.container.kubeflow_v2_run_executor --executor_class_path ...` plus the Beam
    args) as a subprocess, `python` being this interpreter, with TF_USE_LEGACY_KERAS=0 as the
    image sets it;
  * reads back executor_output.json for the downstream tasks.
Resolver tasks (MLMD queries on the cluster: the latest blessed model) resolve to no artifacts,
which is what they return on a first run against a fresh pipeline root.

It is not an orchestrator (no caching, no retries, no parallelism, no conditions).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, List, Optional

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2 as pb

EXECUTOR_INPUT_PLACEHOLDER = "{{$}}"


class TaskFailed(RuntimeError):
    pass


def load_pipeline_spec(path: str) -> pb.PipelineSpec:
    with open(path) as f:
        first = next(yaml.safe_load_all(f))
    return json_format.ParseDict(first, pb.PipelineSpec())


def topological_order(spec: pb.PipelineSpec) -> List[str]:
    tasks = spec.root.dag.tasks
    upstream = {
        name: set(task.dependent_tasks)
        | {
            a.task_output_artifact.producer_task
            for a in task.inputs.artifacts.values()
            if a.task_output_artifact.producer_task
        }
        for name, task in tasks.items()
    }
    order, done = [], set()
    while len(order) < len(tasks):
        ready = sorted(name for name in tasks if name not in done and upstream[name] <= done)
        if not ready:
            raise ValueError(f"cycle or missing task among {sorted(set(tasks) - done)}")
        order.extend(ready)
        done.update(ready)
    return order


def _executor(spec: pb.PipelineSpec, task_name: str):
    component = spec.components[spec.root.dag.tasks[task_name].component_ref.name]
    deployment = pb.PipelineDeploymentConfig()
    json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec), deployment)
    return component, deployment.executors[component.executor_label]


def build_executor_input(
    spec: pb.PipelineSpec, task_name: str, pipeline_root: str, produced: Dict[str, Dict[str, List[pb.RuntimeArtifact]]]
) -> pb.ExecutorInput:
    task = spec.root.dag.tasks[task_name]
    component, _ = _executor(spec, task_name)
    executor_input = pb.ExecutorInput()
    for name, param in task.inputs.parameters.items():
        kind = param.WhichOneof("kind")
        if kind != "runtime_value":
            raise NotImplementedError(f"{task_name}: parameter {name} is {kind}, only constants are resolved")
        value = param.runtime_value
        if value.HasField("constant_value"):  # schema 2.0.0 (TFX's default): legacy Value
            executor_input.inputs.parameters[name].CopyFrom(value.constant_value)
        else:  # schema 2.1.0: google.protobuf.Value
            executor_input.inputs.parameter_values[name].CopyFrom(value.constant)
    for name, artifact in task.inputs.artifacts.items():
        source = artifact.task_output_artifact
        artifacts = produced[source.producer_task].get(source.output_artifact_key, [])
        executor_input.inputs.artifacts[name].artifacts.extend(artifacts)
    task_root = os.path.join(pipeline_root, task_name)
    os.makedirs(task_root, exist_ok=True)
    for key, definition in component.output_definitions.artifacts.items():
        uri = os.path.join(task_root, key)
        os.makedirs(uri, exist_ok=True)
        executor_input.outputs.artifacts[key].artifacts.add(
            name=f"local-run/{task_name}/{key}", uri=uri, type=definition.artifact_type
        )
    executor_input.outputs.output_file = os.path.join(task_root, "executor_output.json")
    return executor_input


def resolve_command(container, executor_input: pb.ExecutorInput, python: str) -> List[str]:
    serialized = json_format.MessageToJson(executor_input, sort_keys=True)
    argv = [python if part == "python" else part for part in container.command]
    for arg in container.args:
        if arg == EXECUTOR_INPUT_PLACEHOLDER:
            argv.append(serialized)
        elif "{{$" in arg:
            raise NotImplementedError(f"placeholder not resolved by this harness: {arg}")
        else:
            argv.append(arg)
    return argv


def upstream_closure(spec: pb.PipelineSpec, task_name: str) -> set:
    """`task_name` and every task it depends on, directly or not."""
    tasks = spec.root.dag.tasks
    needed, pending = set(), [task_name]
    while pending:
        name = pending.pop()
        if name not in needed:
            needed.add(name)
            task = tasks[name]
            pending.extend(task.dependent_tasks)
            pending.extend(
                a.task_output_artifact.producer_task
                for a in task.inputs.artifacts.values()
                if a.task_output_artifact.producer_task
            )
    return needed


def run_pipeline_spec(
    spec_path: str,
    pipeline_root: str,
    python: Optional[str] = None,
    timeout_per_task: float = 600.0,
    env: Optional[Dict[str, str]] = None,
    log=print,
    until: Optional[str] = None,
) -> Dict[str, Dict[str, List[pb.RuntimeArtifact]]]:
    """Runs every task (or only `until` and its upstream tasks); returns
    {task: {output key: [RuntimeArtifact reported by the executor]}}."""
    python = python or sys.executable
    spec = load_pipeline_spec(spec_path)
    selected = upstream_closure(spec, until) if until else set(spec.root.dag.tasks)
    run_env = {**os.environ, "TF_USE_LEGACY_KERAS": "0", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    produced: Dict[str, Dict[str, List[pb.RuntimeArtifact]]] = {}
    for task_name in [name for name in topological_order(spec) if name in selected]:
        component, executor = _executor(spec, task_name)
        if executor.WhichOneof("spec") == "resolver":
            produced[task_name] = {key: [] for key in component.output_definitions.artifacts}
            log(f"[kfp-local] {task_name}: resolver -> no artifacts (fresh pipeline root)")
            continue
        if executor.WhichOneof("spec") != "container":
            raise NotImplementedError(f"{task_name}: executor {executor.WhichOneof('spec')} not supported")
        executor_input = build_executor_input(spec, task_name, pipeline_root, produced)
        argv = resolve_command(executor.container, executor_input, python)
        log_path = os.path.join(pipeline_root, task_name, "container.log")
        log(f"[kfp-local] {task_name}: {' '.join(argv[:4])} {executor.container.args[1]} (log: {log_path})")
        with open(log_path, "wb") as out:
            code = subprocess.run(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=run_env,
                cwd=os.path.join(pipeline_root, task_name),
                timeout=timeout_per_task,
            ).returncode
        if code != 0:
            with open(log_path, errors="replace") as f:
                tail = "".join(f.readlines()[-40:])
            raise TaskFailed(f"task {task_name} exited with {code}; last lines of {log_path}:\n{tail}")
        executor_output = pb.ExecutorOutput()
        with open(executor_input.outputs.output_file) as f:
            json_format.Parse(f.read(), executor_output, ignore_unknown_fields=True)
        outputs = {}
        for key, definition in component.output_definitions.artifacts.items():
            reported = (
                executor_output.artifacts[key].artifacts
                if key in executor_output.artifacts
                else executor_input.outputs.artifacts[key].artifacts
            )
            outputs[key] = []
            for artifact in reported:
                # What the KFP launcher hands downstream: the artifact as recorded in ML Metadata.
                result = pb.RuntimeArtifact()
                result.CopyFrom(artifact)
                result.type.CopyFrom(definition.artifact_type)
                result.name = artifact.name or f"local-run/{task_name}/{key}"
                outputs[key].append(result)
        produced[task_name] = outputs
    return produced
