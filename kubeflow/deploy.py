"""Upload a compiled package to Kubeflow Pipelines (v2beta1 API) and start a run.

Uses the KFP SDK's own client (`kfp.Client`), so host, namespace and credentials behave as in
the `kfp` CLI: the host comes from --host or KF_PIPELINES_ENDPOINT, the UI links from
KF_PIPELINES_UI_ENDPOINT, IAP client ids from KF_PIPELINES_IAP_OAUTH2_CLIENT_ID, and a
service-account token file from --sa-token-path or KF_PIPELINES_SA_TOKEN_PATH. Every API
failure becomes a DeployError whose message names the host and the pipeline.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import ssl
import urllib.error
import urllib.request
from typing import Optional

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
TOKEN_ENV = "KF_PIPELINES_TOKEN"  # this project's: a bearer token, as `--token`
HEALTHZ = "/apis/v2beta1/healthz"


class DeployError(RuntimeError):
    """A KFP API call failed; the message says which host, pipeline and what to do."""


@dataclasses.dataclass(frozen=True)
class DeployTarget:
    host: str
    namespace: Optional[str] = None
    token: Optional[str] = None
    sa_token_path: Optional[str] = None
    cookies: Optional[str] = None
    ui_host: Optional[str] = None
    verify_ssl: bool = True
    timeout_s: float = 15.0


@dataclasses.dataclass(frozen=True)
class DeployResult:
    pipeline_id: str
    version_id: str
    new_pipeline: bool
    experiment_id: Optional[str] = None
    run_id: Optional[str] = None
    pipeline_url: str = ""
    run_url: Optional[str] = None


def normalize_host(host: str) -> str:
    # As kfp.Client: no scheme means https; no trailing slash.
    host = host.strip().rstrip("/")
    return host if host.startswith(("http://", "https://")) else "https://" + host


def target_from_env(
    host=None, namespace=None, token=None, sa_token_path=None, cookies=None, ui_host=None, verify_ssl=True
) -> DeployTarget:
    host = host or os.environ.get(ENDPOINT_ENV)
    if not host:
        raise DeployError(
            f"no Kubeflow Pipelines host: pass --host URL or set {ENDPOINT_ENV} "
            "(e.g. http://localhost:8080 after "
            "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`)"
        )
    return DeployTarget(
        host=normalize_host(host),
        namespace=namespace or None,
        token=token or os.environ.get(TOKEN_ENV) or None,
        sa_token_path=sa_token_path or os.environ.get(SA_TOKEN_PATH_ENV) or None,
        cookies=cookies or None,
        ui_host=ui_host or os.environ.get(UI_ENDPOINT_ENV) or None,
        verify_ssl=verify_ssl,
    )


def _auth_headers(target: DeployTarget) -> dict:
    headers = {}
    token = target.token
    if not token and target.sa_token_path:
        try:
            with open(target.sa_token_path) as f:
                token = f.read().strip()
        except OSError as err:
            raise DeployError(f"cannot read the service-account token {target.sa_token_path}: {err.strerror}") from None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if target.cookies:
        headers["Cookie"] = target.cookies
    return headers


def check_reachable(target: DeployTarget) -> None:
    """One quick GET of the healthz endpoint, so that a wrong host or missing credentials fail
    at once with a clear message (kfp.Client retries healthz for ~20 s and logs tracebacks)."""
    url = target.host + HEALTHZ
    request = urllib.request.Request(url, headers=_auth_headers(target))
    context = None if target.verify_ssl else ssl._create_unverified_context()  # noqa: SLF001
    try:
        with urllib.request.urlopen(request, timeout=target.timeout_s, context=context) as response:
            response.read()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise DeployError(_auth_message(target, err.code)) from None
        raise DeployError(
            f"Kubeflow Pipelines at {target.host} answered HTTP {err.code} on {HEALTHZ}: "
            f"is this the KFP API (v2beta1, KFP >= 2.0) endpoint?"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DeployError(
            f"cannot reach Kubeflow Pipelines at {target.host}: {reason} "
            f"(check --host / {ENDPOINT_ENV}, the port-forward or the network)"
        ) from None


def _auth_message(target: DeployTarget, status: int) -> str:
    how = (
        "the token was refused"
        if (target.token or target.sa_token_path or target.cookies)
        else "no credentials were sent"
    )
    return (
        f"Kubeflow Pipelines at {target.host} denied access (HTTP {status}): {how}; pass --token TOKEN "
        f"(or {TOKEN_ENV}), --sa-token-path FILE (or {SA_TOKEN_PATH_ENV}), or --cookies "
        "'authservice_session=...' for a Dex/oauth2-proxy login, and --namespace for multi-user Kubeflow"
    )


def _api_message(err, target: DeployTarget, what: str) -> str:
    status = getattr(err, "status", None)
    if status in (401, 403):
        return _auth_message(target, status)
    detail = ""
    body = getattr(err, "body", None)
    if body:
        try:
            parsed = json.loads(body)
            detail = parsed.get("message") or parsed.get("error") or ""
        except (ValueError, AttributeError):
            detail = body.decode() if isinstance(body, bytes) else str(body)
    detail = str(detail or getattr(err, "reason", "") or err).strip()
    detail = detail.splitlines()[0] if detail else ""
    if status == 409 or "already exist" in detail.lower():
        return f"{what} on {target.host}: name conflict ({detail})"
    return f"{what} on {target.host} failed (HTTP {status}): {detail}"


def make_client(target: DeployTarget):
    import warnings

    import kfp

    credentials = None
    if target.sa_token_path and not target.token:
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        credentials = ServiceAccountTokenVolumeCredentials(target.sa_token_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(
            host=target.host,
            namespace=target.namespace or "kubeflow",
            existing_token=target.token,
            cookies=target.cookies,
            credentials=credentials,
            ui_host=target.ui_host,
            verify_ssl=target.verify_ssl,
        )


def ui_prefix(target: DeployTarget) -> str:
    return normalize_host(target.ui_host) if target.ui_host else target.host


def default_version_name(pipeline_name: str) -> str:
    return f"{pipeline_name}-{datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def deploy(
    package_path: str,
    pipeline_name: str,
    target: DeployTarget,
    version_name: Optional[str] = None,
    experiment_name: Optional[str] = None,
    run_name: Optional[str] = None,
    create_run: bool = True,
    description: str = "triplet-tfx: TFX pipeline, MNIST embeddings with the semi-hard triplet loss",
    client=None,
) -> DeployResult:
    """Uploads `package_path` as pipeline `pipeline_name` (or a new version of it) and runs it."""
    import kfp_server_api
    import urllib3

    try:
        check_reachable(target)
    except DeployError as err:
        raise DeployError(f"deploying pipeline {pipeline_name!r}: {err}") from None
    what = f"pipeline {pipeline_name!r}"
    try:
        client = client or make_client(target)
        namespace = target.namespace
        pipeline_id = client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            what = f"uploading new pipeline {pipeline_name!r}"
            pipeline = client.upload_pipeline(
                package_path, pipeline_name=pipeline_name, description=description, namespace=namespace
            )
            pipeline_id = pipeline.pipeline_id
            versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
            if not versions.pipeline_versions:
                raise DeployError(f"{what} on {target.host}: the pipeline has no version after upload")
            version_id = versions.pipeline_versions[0].pipeline_version_id
            new_pipeline = True
        else:
            version_name = version_name or default_version_name(pipeline_name)
            what = f"uploading version {version_name!r} of pipeline {pipeline_name!r}"
            version = client.upload_pipeline_version(
                package_path, pipeline_version_name=version_name, pipeline_id=pipeline_id, description=description
            )
            version_id = version.pipeline_version_id
            new_pipeline = False
        pipeline_url = f"{ui_prefix(target)}/#/pipelines/details/{pipeline_id}/version/{version_id}"
        if not create_run:
            return DeployResult(pipeline_id, version_id, new_pipeline, pipeline_url=pipeline_url)

        experiment_name = experiment_name or os.environ.get("KF_PIPELINES_DEFAULT_EXPERIMENT_NAME") or pipeline_name
        what = f"creating experiment {experiment_name!r} for pipeline {pipeline_name!r}"
        experiment = client.create_experiment(experiment_name, namespace=namespace)
        run_name = run_name or f"{pipeline_name} {datetime.datetime.now().strftime('%Y-%m-%d %H-%M-%S')}"
        what = f"starting run {run_name!r} of pipeline {pipeline_name!r}"
        run = client.run_pipeline(
            experiment_id=experiment.experiment_id, job_name=run_name, pipeline_id=pipeline_id, version_id=version_id
        )
        return DeployResult(
            pipeline_id,
            version_id,
            new_pipeline,
            experiment.experiment_id,
            run.run_id,
            pipeline_url=pipeline_url,
            run_url=f"{ui_prefix(target)}/#/runs/details/{run.run_id}",
        )
    except DeployError:
        raise
    except kfp_server_api.ApiException as err:
        raise DeployError(_api_message(err, target, what)) from None
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise DeployError(
            f"{what}: cannot reach Kubeflow Pipelines at {target.host} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    except ValueError as err:  # kfp.Client's own checks, e.g. two pipelines with the same name
        raise DeployError(f"{what} on {target.host}: {err}") from None
