"""Kubeflow Pipelines v2: compiles create_pipeline(config) with TFX's KubeflowV2DagRunner.

The same create_pipeline and PipelineConfig as the local run. What is Kubeflow-specific is
applied here, on the built pipeline: the Trainer's GPU/CPU/memory request
(`with_platform_config(ResourceSpec)`), an image per component (a CPU image for the data
components, a GPU image for the Trainer), and the conversion of TFX's PipelineJob JSON into
the PipelineSpec YAML that the KFP SDK, CLI and API accept (`kfp pipeline create`,
`kfp.Client().upload_pipeline`, `create_run_from_pipeline_package`).

Compiling needs no network and no credentials: user code is referenced by the dotted names of
modules installed in the image (triplet_tfx.components...), nothing is packaged or uploaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Dict, List, Optional

import triplet_tfx.pipeline  # noqa: F401  (pins the Keras flavour before TensorFlow loads)
from triplet_tfx.components.config import ConfigError, KubeflowConfig, PipelineConfig

TRAINER_ID = "Trainer"
# TFX's key for "every component not named in the image map".
DEFAULT_IMAGE_KEY = "default_image_path"
REMOTE_SCHEMES = ("gs://", "s3://", "minio://")
TRAINER_BACKENDS = ("kubeflow", "vertex")
# Open-source KFP: a Kubernetes extended resource name (nvidia.com/gpu, amd.com/gpu...).
# Vertex AI Pipelines: an accelerator enum name (NVIDIA_TESLA_T4, NVIDIA_L4, TPU_V3...).
_K8S_RESOURCE = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?/[a-zA-Z0-9]([a-zA-Z0-9._-]*[a-zA-Z0-9])?")
_VERTEX_ACCELERATOR = re.compile(r"(NVIDIA|TPU)_[A-Z0-9_]+")
_PIPELINE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")


@dataclasses.dataclass(frozen=True)
class CompiledPackage:
    yaml_path: str  # the PipelineSpec: what KFP uploads and runs
    json_path: str  # TFX's PipelineJob (Vertex AI PipelineJob format), kept for reference
    pipeline_spec: Dict[str, Any]


def parse_component_images(items) -> Dict[str, str]:
    images = {}
    for item in items:
        component, sep, image = item.partition("=")
        if not sep or not component.strip() or not image.strip():
            raise ConfigError(
                f"kubeflow.component_images (--component-image): expected COMPONENT_ID=IMAGE, got {item!r}"
            )
        images[component.strip()] = image.strip()
    return images


def validate_kubeflow(config: PipelineConfig) -> PipelineConfig:
    """Raises ConfigError naming the first invalid Kubeflow setting (and its flag)."""
    kf = config.kubeflow
    root = kf.pipeline_root
    checks = [
        (
            _PIPELINE_NAME.fullmatch(config.pipeline_name),
            "pipeline_name (--pipeline-name)",
            "Kubeflow needs lower-case letters, digits and '-' (pattern [a-z0-9][a-z0-9-]{0,127})",
        ),
        (
            root.startswith(REMOTE_SCHEMES) or os.path.isabs(root),
            "kubeflow.pipeline_root (--pipeline-root)",
            f"{root!r}: use gs://, s3://, minio:// or the absolute path of a mounted PVC",
        ),
        (
            root.startswith(REMOTE_SCHEMES) or kf.pvc,
            "kubeflow.pvc (--pvc)",
            f"a local pipeline root ({root}) needs the PVC that holds it: --pvc CLAIM_NAME",
        ),
        (
            not kf.pvc
            or root.startswith(REMOTE_SCHEMES)
            or os.path.normpath(root).startswith(os.path.normpath(kf.pvc_mount_path)),
            "kubeflow.pipeline_root (--pipeline-root)",
            f"{root} must lie below the PVC mount path {kf.pvc_mount_path} (--pvc-mount-path)",
        ),
        (kf.image.strip(), "kubeflow.image (--image)", "must not be empty"),
        (kf.gpu_image.strip(), "kubeflow.gpu_image (--gpu-image)", "must not be empty"),
        (kf.gpu_count >= 0, "kubeflow.gpu_count (--gpu-count)", "must be >= 0"),
        (
            kf.gpu_count == 0 or _K8S_RESOURCE.fullmatch(kf.gpu_type) or _VERTEX_ACCELERATOR.fullmatch(kf.gpu_type),
            "kubeflow.gpu_type (--gpu-type)",
            f"{kf.gpu_type!r}: use a Kubernetes resource name such as nvidia.com/gpu (open-source KFP) "
            "or a Vertex AI accelerator such as NVIDIA_TESLA_T4",
        ),
        (kf.trainer_cpu is None or kf.trainer_cpu > 0, "kubeflow.trainer_cpu (--trainer-cpu)", "must be positive"),
        (
            kf.trainer_memory is None or kf.trainer_memory > 0,
            "kubeflow.trainer_memory (--trainer-memory)",
            "must be positive",
        ),
        (
            kf.trainer_backend in TRAINER_BACKENDS,
            "kubeflow.trainer_backend (--trainer-backend)",
            f"{kf.trainer_backend!r}: use " + " or ".join(TRAINER_BACKENDS),
        ),
        (kf.trainer_workers >= 1, "kubeflow.trainer_workers (--trainer-workers)", "must be at least 1"),
        (
            kf.trainer_backend != "kubeflow"
            or kf.trainer_workers == 1
            or kf.gpu_count == 0
            or _K8S_RESOURCE.fullmatch(kf.gpu_type),
            "kubeflow.gpu_type (--gpu-type)",
            f"{kf.gpu_type!r}: TFJob workers request a Kubernetes resource such as nvidia.com/gpu",
        ),
        (
            kf.trainer_backend != "vertex" or kf.vertex_project,
            "kubeflow.vertex_project (--vertex-project)",
            "--trainer-backend vertex needs the Google Cloud project of the training job",
        ),
        (
            kf.trainer_backend != "vertex" or root.startswith("gs://"),
            "kubeflow.pipeline_root (--pipeline-root)",
            f"{root!r}: Vertex AI training reads and writes the pipeline root: use gs://",
        ),
        (
            kf.trainer_backend != "vertex" or kf.gpu_count == 0 or _VERTEX_ACCELERATOR.fullmatch(kf.gpu_type),
            "kubeflow.gpu_type (--gpu-type)",
            f"{kf.gpu_type!r}: Vertex AI needs an accelerator type such as NVIDIA_TESLA_T4 or NVIDIA_L4",
        ),
    ]
    for ok, field, problem in checks:
        if not ok:
            raise ConfigError(f"{field}: {problem}")
    parse_component_images(kf.component_images)
    return config


def kubeflow_config(config: PipelineConfig) -> PipelineConfig:
    """The configuration as it runs on the cluster: pushed models go below the pipeline root
    (unless --serving-dir names another place), not below the local output root."""
    config.validate()
    validate_kubeflow(config)
    serving_dir = config.serving_dir or f"{config.kubeflow.pipeline_root.rstrip('/')}/serving"
    return dataclasses.replace(config, serving_dir=serving_dir)


def trains_in_step(kf: KubeflowConfig) -> bool:
    """Whether the Trainer step trains itself (else it launches a TFJob or a Vertex AI job and waits)."""
    return kf.trainer_backend == "kubeflow" and kf.trainer_workers == 1


def worker_image(kf: KubeflowConfig) -> str:
    return kf.gpu_image if kf.gpu_count > 0 else kf.image


def tfjob_section(kf: KubeflowConfig) -> Dict[str, Any]:
    """The Trainer's `tfjob` custom_config section: what components/training/tfjob.py launches."""
    return {
        "workers": kf.trainer_workers,
        "image": worker_image(kf),
        "gpu_type": kf.gpu_type,
        "gpu_count": kf.gpu_count,
        "cpu_limit": kf.trainer_cpu,
        "memory_limit_gb": kf.trainer_memory,
        "namespace": kf.tfjob_namespace,
        "service_account": kf.tfjob_service_account,
        "pvc": kf.pvc,
        "pvc_mount_path": kf.pvc_mount_path,
    }


def vertex_training_config(kf: KubeflowConfig) -> Dict[str, Any]:
    """custom_config keys of TFX's Vertex AI Trainer: a CustomJob of one chief (worker pool 0) and
    trainer_workers - 1 workers (pool 1); Vertex AI sets their TF_CONFIG."""
    from tfx.v1.extensions import google_cloud_ai_platform as vertex

    machine_spec: Dict[str, Any] = {"machine_type": kf.vertex_machine_type}
    if kf.gpu_count > 0:
        machine_spec.update(accelerator_type=kf.gpu_type, accelerator_count=kf.gpu_count)
    pools = [
        {"machine_spec": machine_spec, "replica_count": replicas, "container_spec": {"image_uri": worker_image(kf)}}
        for replicas in (1, kf.trainer_workers - 1)
        if replicas > 0
    ]
    return {
        vertex.ENABLE_VERTEX_KEY: True,
        vertex.VERTEX_REGION_KEY: kf.vertex_region,
        vertex.TRAINING_ARGS_KEY: {"project": kf.vertex_project, "job_spec": {"worker_pool_specs": pools}},
    }


def trainer_launch(kf: KubeflowConfig):
    """(Trainer component class or None for TFX's own, extra custom_config) for create_pipeline."""
    from triplet_tfx.components.training.tfjob import TFJOB_KEY

    if kf.trainer_backend == "vertex":
        from tfx.v1.extensions import google_cloud_ai_platform as vertex

        return vertex.Trainer, vertex_training_config(kf)
    if kf.trainer_workers > 1:
        return None, {TFJOB_KEY: tfjob_section(kf)}
    return None, {}


def component_images(kf: KubeflowConfig) -> Dict[str, str]:
    """TFX's `default_image` map: {component id: image}, with the default under its key."""
    images = {DEFAULT_IMAGE_KEY: kf.image}
    if kf.gpu_count > 0 and trains_in_step(kf):
        images[TRAINER_ID] = kf.gpu_image
    images.update(parse_component_images(kf.component_images))
    return images


def trainer_resources(kf: KubeflowConfig):
    """The Trainer's ResourceSpec, or None when it requests nothing special (nor when it only
    launches a job: then the workers get the resources)."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    if not trains_in_step(kf):
        return None
    spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec()
    if kf.trainer_cpu:
        spec.cpu_limit = kf.trainer_cpu
    if kf.trainer_memory:
        spec.memory_limit = kf.trainer_memory
    if kf.gpu_count > 0:
        spec.accelerator.type = kf.gpu_type
        spec.accelerator.count = kf.gpu_count
    return spec if spec.ByteSize() else None


def build_pipeline(config: PipelineConfig, index_model: Optional[str] = None):
    """create_pipeline(config), plus the Trainer's resource request; with `index_model` (a pushed
    version's URI) the index pipeline instead (create_index_pipeline). Returns (pipeline, config)."""
    from triplet_tfx.components.data.data_sources import catalog_data, check_source
    from triplet_tfx.pipeline.pipeline import create_index_pipeline, create_pipeline, index_config

    config = kubeflow_config(config)
    if index_model is not None:
        check_source(catalog_data(config.data, config.serving.catalog))
        return create_index_pipeline(config, index_model), index_config(config, index_model)
    check_source(config.data)
    trainer_class, trainer_custom_config = trainer_launch(config.kubeflow)
    pipeline = create_pipeline(
        config,
        baseline="blessed",  # KFP v2 compiles TFX's built-in resolvers only
        trainer_class=trainer_class,
        trainer_custom_config=trainer_custom_config,
    )
    resources = trainer_resources(config.kubeflow)
    if resources is not None:
        trainers = [c for c in pipeline.components if c.id == TRAINER_ID]
        if len(trainers) != 1:
            raise RuntimeError(f"expected one component with id {TRAINER_ID!r}, found {len(trainers)}")
        trainers[0].with_platform_config(resources)
    return pipeline, config


def _pvc_platform_spec(kf: KubeflowConfig, executor_labels: List[str]) -> Dict[str, Any]:
    """kfp-kubernetes' PlatformSpec (second YAML document): mount the PVC in every task."""
    mount = [{"constant": kf.pvc, "mountPath": kf.pvc_mount_path}]
    return {
        "platforms": {
            "kubernetes": {
                "deploymentSpec": {"executors": {label: {"pvcMount": mount} for label in sorted(executor_labels)}}
            }
        }
    }


def job_to_pipeline_spec(pipeline_job: Dict[str, Any], pipeline_root: str) -> Dict[str, Any]:
    """TFX's PipelineJob JSON -> the PipelineSpec KFP expects, the root as its run-time default.

    `defaultPipelineRoot` is what KFP uses when a run names no pipeline root of its own
    (`kfp run create ... --pipeline-root`, `Client.run_pipeline(pipeline_root=...)`, the UI).
    """
    spec = json.loads(json.dumps(pipeline_job["pipelineSpec"]))  # deep copy
    spec["defaultPipelineRoot"] = pipeline_root
    return spec


def compile_pipeline(config: PipelineConfig, package_dir: str, index_model: Optional[str] = None) -> CompiledPackage:
    """Writes <package_dir>/<pipeline_name>.yaml (PipelineSpec) and .json (TFX PipelineJob); with
    `index_model`, the index pipeline's (<pipeline_name>-index)."""
    import yaml
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx import v1 as tfx, version as tfx_version

    pipeline, config = build_pipeline(config, index_model)
    kf = config.kubeflow
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            display_name=config.pipeline_name, default_image=component_images(kf)
        ),
        output_dir=package_dir,
        output_filename=f"{config.pipeline_name}.json",
    )
    job = runner.run(pipeline, write_out=False)
    job.setdefault("runtimeConfig", {})["gcsOutputDirectory"] = kf.pipeline_root
    spec = job_to_pipeline_spec(job, kf.pipeline_root)
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())  # fails loudly if KFP would reject it

    documents = [spec]
    if kf.pvc:
        documents.append(_pvc_platform_spec(kf, list(spec["deploymentSpec"]["executors"])))
        json_format.ParseDict(documents[1], pipeline_spec_pb2.PlatformSpec())

    os.makedirs(package_dir, exist_ok=True)
    yaml_path = os.path.join(package_dir, f"{config.pipeline_name}.yaml")
    json_path = os.path.join(package_dir, f"{config.pipeline_name}.json")
    header = (
        f"# PIPELINE DEFINITION\n# Name: {config.pipeline_name}\n"
        f"# Description: compiled by triplet-tfx from TFX {tfx_version.__version__} "
        f"(KubeflowV2DagRunner); default pipeline root {kf.pipeline_root}\n"
    )
    with open(yaml_path, "w") as f:
        f.write(header)
        yaml.safe_dump_all(documents, f, sort_keys=True)
    with open(json_path, "w") as f:
        json.dump(job, f, indent=2, sort_keys=True)
    return CompiledPackage(yaml_path=yaml_path, json_path=json_path, pipeline_spec=spec)


def summarize(package: CompiledPackage) -> List[str]:
    """One line per task: id, image, resources."""
    spec = package.pipeline_spec
    executors = spec["deploymentSpec"]["executors"]
    lines = []
    for task_id, task in sorted(spec["root"]["dag"]["tasks"].items()):
        executor = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]
        if "importer" in executor:
            uri = executor["importer"]["artifactUri"].get("constantValue", {}).get("stringValue", "")
            lines.append(f"  {task_id:<45} (importer: registers {uri}, no container)")
            continue
        if "container" not in executor:
            lines.append(f"  {task_id:<45} (resolver: ML Metadata query, no container)")
            continue
        container = executor["container"]
        resources = container.get("resources", {})
        extra = []
        if resources.get("accelerator"):
            extra.append(f"{resources['accelerator'].get('count', 1)} x {resources['accelerator']['type']}")
        if resources.get("cpuLimit"):
            extra.append(f"{resources['cpuLimit']} vCPU")
        if resources.get("memoryLimit"):
            extra.append(f"{resources['memoryLimit']} GB")
        if task_id == TRAINER_ID:
            extra.extend(_trainer_launch_note(task))
        lines.append(f"  {task_id:<45} {container['image']}" + (f"  [{', '.join(extra)}]" if extra else ""))
    return lines


def _trainer_launch_note(task: Dict[str, Any]) -> List[str]:
    """Where a launching Trainer trains: its TFJob or Vertex AI job, from its compiled custom_config."""
    from triplet_tfx.components.training.tfjob import TFJOB_KEY

    value = task["inputs"]["parameters"].get("custom_config", {}).get("runtimeValue", {}).get("constantValue", {})
    custom_config = json.loads(value.get("stringValue") or "{}")
    tfjob = custom_config.get(TFJOB_KEY)
    if tfjob:
        gpus = f" x {tfjob['gpu_count']} {tfjob['gpu_type']}" if tfjob["gpu_count"] else ""
        return [f"launches a TFJob: {tfjob['workers']} workers{gpus}, {tfjob['image']}"]
    pools = custom_config.get("ai_platform_training_args", {}).get("job_spec", {}).get("worker_pool_specs")
    if pools:
        machine = pools[0]["machine_spec"]
        gpus = (
            f" + {machine['accelerator_count']} {machine['accelerator_type']}" if "accelerator_type" in machine else ""
        )
        return [
            f"Vertex AI job: {sum(p['replica_count'] for p in pools)} replicas of {machine['machine_type']}{gpus}, "
            f"{pools[0]['container_spec']['image_uri']}"
        ]
    return []


def default_package_dir(config: PipelineConfig) -> str:
    return os.path.join(config.output_root, "kubeflow")
