"""`triplet-tfx compile` and `triplet-tfx deploy`: Kubeflow Pipelines v2.

Registered by pipeline/cli.py's build_parser via `add_commands(commands, add_config_flags)`;
every pipeline flag (--data, --beam-arg, --epochs...) works as for `run`, plus the kubeflow
section's (declared on KubeflowConfig's fields, components/config.py) and the flags below.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict

from triplet_tfx.components.config import ConfigError, PipelineConfig

COMPILE_EPILOG = """\
The package is <package-dir>/<pipeline-name>.yaml: a KFP PipelineSpec (what `kfp pipeline create`,
kfp.Client().upload_pipeline and create_run_from_pipeline_package accept), next to TFX's own
PipelineJob JSON (<pipeline-name>.json, the Vertex AI format). Compiling needs no network and
no credentials: the containers run `python -m tfx.orchestration.kubeflow.v2.container.
kubeflow_v2_run_executor` and import this project (triplet_tfx.*) from the image.

Pipeline root (--pipeline-root): the package's default; a run may override it. TFX components
read and write their artifacts themselves (tf.io.gfile), so the root must be a filesystem
TensorFlow can open inside the container: gs:// works as is; s3:// (AWS S3 or MinIO through
S3_ENDPOINT) needs tensorflow-io in the image; minio:// is KFP's own name for its MinIO and is
not readable by TensorFlow (use s3:// for it); a PVC: --pipeline-root /mnt/pipeline/root --pvc CLAIM.

GPU (--gpu-type, --gpu-count): requested by the Trainer only, which also gets --gpu-image.
  open-source KFP : --gpu-type nvidia.com/gpu (a Kubernetes resource name; default)
  Vertex AI       : --gpu-type NVIDIA_TESLA_T4 (or NVIDIA_L4, NVIDIA_TESLA_A100, ...)
  --gpu-count 0 trains on CPU with --image.

Beam (--beam-runner): where ExampleGen, StatisticsGen and Transform run; only these data
components get the Beam options (the Trainer and the evaluator do not use Beam). Default: local,
Beam's in-process FnApiRunner inside each component's container. Dataflow:
  --beam-runner dataflow --dataflow-project P --dataflow-region us-central1
  --dataflow-temp-location gs://B/tmp [--dataflow-max-workers 16] [--dataflow-machine-type n2-standard-4]
  [--dataflow-service-account SA] (workers run --image, or --beam-sdk-container-image)
Flink in the same Kubernetes cluster (kubeflow/flink/: FlinkDeployment + Beam's Flink job server):
  --beam-runner flink --beam-job-endpoint beam-flink-job-server.flink:8099 --beam-parallelism 4
  --beam-artifact-endpoint beam-flink-job-server.flink:8098
  --beam-environment-type EXTERNAL --beam-environment-config localhost:50000
Spark: --beam-runner spark --beam-job-endpoint SPARK_JOB_SERVER:8099 (or --spark-master spark://H:7077
with Java in the image). --beam-arg=--OPTION=VALUE (repeatable) appends raw Beam options last.

Data (--data): as for `run`; remote sources (tfrecord:gs://...) are not checked at compile time.

Example:
  triplet-tfx compile --pipeline-root gs://my-bucket/triplet \\
      --image us-docker.pkg.dev/P/r/triplet-tfx:0.1.0 --gpu-image us-docker.pkg.dev/P/r/triplet-tfx-gpu:0.1.0
  kfp --endpoint http://localhost:8080 pipeline create -p triplet-mnist runs/kubeflow/triplet-mnist.yaml
"""

DEPLOY_EPILOG = """\
Compiles as `compile` does, then, with the KFP SDK's client (KFP >= 2.0, API v2beta1):
uploads the package as a new pipeline, or as a new version when a pipeline of that name exists;
creates the experiment if needed (or reuses it) and starts a run; prints the run's URL.
--no-run stops after the upload.

Connection: --host or KF_PIPELINES_ENDPOINT (e.g. http://localhost:8080 after
`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`); links use KF_PIPELINES_UI_ENDPOINT
when set. Credentials: --token or KF_PIPELINES_TOKEN (bearer token), --sa-token-path or
KF_PIPELINES_SA_TOKEN_PATH (a projected service-account token, in-cluster), --cookies
(e.g. 'authservice_session=...' behind Dex / oauth2-proxy), IAP via KF_PIPELINES_IAP_OAUTH2_CLIENT_ID.
Multi-user Kubeflow: --namespace YOUR_PROFILE.
"""


def _add_kubeflow_flags(groups: Dict[str, Any]) -> None:
    """What `compile` and `deploy` add to the kubeflow section's flags (declared on KubeflowConfig's
    fields, components/config.py): where the package goes."""
    groups["kubeflow"].add_argument(
        "--package-dir", default=None, help="where to write the package (default <output-root>/kubeflow)"
    )
    groups["kubeflow"].add_argument(
        "--index-model",
        default=None,
        metavar="VERSION_URI",
        help="compile the index pipeline instead (<pipeline-name>-index: --catalog embedded by this pushed "
        "model version, pushed next to it as a new version), e.g. for a recurring run",
    )


def _package_dir(args: argparse.Namespace, config: PipelineConfig) -> str:
    from triplet_tfx.kubeflow import runner

    return os.path.abspath(args.package_dir) if args.package_dir else runner.default_package_dir(config)


def _compile(args: argparse.Namespace, config: PipelineConfig):
    from triplet_tfx.components.data.data_sources import DataSourceError
    from triplet_tfx.kubeflow import runner

    try:
        package = runner.compile_pipeline(config, _package_dir(args, config), args.index_model)
    except (ConfigError, DataSourceError) as err:
        print(f"triplet-tfx: error: {err}", file=sys.stderr)
        return None
    print(f"Kubeflow package: {package.yaml_path}  (TFX PipelineJob: {package.json_path})")
    print(f"Default pipeline root: {config.kubeflow.pipeline_root}")
    print("\n".join(runner.summarize(package)))
    return package


def compile_command(args: argparse.Namespace, config: PipelineConfig) -> int:
    package = _compile(args, config)
    if package is None:
        return 2
    name = os.path.splitext(os.path.basename(package.yaml_path))[0]
    print(f"\nUpload: kfp --endpoint $KF_PIPELINES_ENDPOINT pipeline create -p {name} {package.yaml_path}")
    return 0


def deploy_command(args: argparse.Namespace, config: PipelineConfig) -> int:
    from triplet_tfx.kubeflow import deploy

    try:
        target = deploy.target_from_env(
            args.host,
            args.namespace,
            args.token,
            args.sa_token_path,
            args.cookies,
            args.ui_host,
            verify_ssl=not args.insecure,
        )
    except deploy.DeployError as err:
        print(f"triplet-tfx: error: {err}", file=sys.stderr)
        return 2
    package = _compile(args, config)
    if package is None:
        return 2
    name = os.path.splitext(os.path.basename(package.yaml_path))[0]  # <pipeline-name>[-index]
    try:
        result = deploy.deploy(
            package.yaml_path,
            name,
            target,
            version_name=args.version,
            experiment_name=args.experiment,
            run_name=args.run_name,
            create_run=not args.no_run,
        )
    except deploy.DeployError as err:
        print(f"triplet-tfx: error: {err}", file=sys.stderr)
        return 1
    kind = "new pipeline" if result.new_pipeline else "new version of pipeline"
    print(f"\nUploaded {kind} {name!r}: {result.pipeline_url}")
    if result.run_url:
        print(f"Run {result.run_id} (experiment {result.experiment_id}): {result.run_url}")
    return 0


def add_commands(commands, add_config_flags: Callable[[argparse.ArgumentParser], Dict[str, Any]]) -> None:
    """Adds `compile` and `deploy` to the CLI's sub-parsers. add_config_flags(parser): adds the
    configuration flags, the kubeflow section's included, and returns their groups by key."""
    formatter = argparse.RawDescriptionHelpFormatter
    compile_parser = commands.add_parser(
        "compile",
        help="compile the pipeline for Kubeflow Pipelines v2 (writes a PipelineSpec YAML)",
        description="Compile the same pipeline as `run` (same flags) for Kubeflow Pipelines v2 with TFX's "
        "KubeflowV2DagRunner.",
        epilog=COMPILE_EPILOG,
        formatter_class=formatter,
    )
    _add_kubeflow_flags(add_config_flags(compile_parser))
    compile_parser.set_defaults(handler=compile_command)

    deploy_parser = commands.add_parser(
        "deploy",
        help="compile, upload to Kubeflow Pipelines and start a run",
        description="Compile (as `compile`), upload to Kubeflow Pipelines, create an experiment and a run.",
        epilog=DEPLOY_EPILOG,
        formatter_class=formatter,
    )
    _add_kubeflow_flags(add_config_flags(deploy_parser))
    kfp_group = deploy_parser.add_argument_group("kubeflow pipelines API")
    kfp_group.add_argument("--host", default=None, help="KFP API endpoint (default: $KF_PIPELINES_ENDPOINT)")
    kfp_group.add_argument(
        "--ui-host", default=None, help="KFP UI for printed links (default: $KF_PIPELINES_UI_ENDPOINT, else --host)"
    )
    kfp_group.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user Kubeflow)")
    kfp_group.add_argument("--token", default=None, help="bearer token (default: $KF_PIPELINES_TOKEN)")
    kfp_group.add_argument(
        "--sa-token-path", default=None, help="service-account token file (default: $KF_PIPELINES_SA_TOKEN_PATH)"
    )
    kfp_group.add_argument("--cookies", default=None, help="session cookie(s), e.g. authservice_session=...")
    kfp_group.add_argument("--insecure", action="store_true", help="do not verify the host's TLS certificate")
    kfp_group.add_argument(
        "--version", default=None, help="version name when the pipeline exists (default <pipeline-name>-<UTC time>)"
    )
    kfp_group.add_argument("--experiment", default=None, help="experiment of the run (default: the pipeline name)")
    kfp_group.add_argument("--run-name", default=None, help="default '<pipeline-name> <time>'")
    kfp_group.add_argument("--no-run", action="store_true", help="upload only: no experiment, no run")
    deploy_parser.set_defaults(handler=deploy_command)
