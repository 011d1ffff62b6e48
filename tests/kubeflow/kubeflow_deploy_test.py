"""`triplet-tfx deploy` against a local stand-in for the Kubeflow Pipelines API.

Contract tests: tests/kfp_standin.py serves, on 127.0.0.1 in a thread of this process,
the KFP v2beta1 REST endpoints that kfp.Client calls (healthz, pipeline upload and version
upload, pipeline/version/experiment listing, experiment and run creation), validates uploaded
packages with kfp's PipelineSpec proto, and answers 401 / 409 as a real server does. No real
KFP server or cluster is involved: this proves the requests the deploy command makes and how
it reports failures, not the cluster's behaviour.
"""

import socket
import time

import pytest
from kfp_standin import KfpStandIn

from triplet_tfx.components.config import KubeflowConfig, PipelineConfig
from triplet_tfx.kubeflow import deploy, runner
from triplet_tfx.pipeline import cli


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    config = PipelineConfig(kubeflow=KubeflowConfig(pipeline_root="gs://bucket/root"))
    return runner.compile_pipeline(config, str(tmp_path_factory.mktemp("pkg"))).yaml_path


@pytest.fixture(autouse=True)
def no_kfp_environment(monkeypatch, tmp_path):
    for name in (
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_UI_ENDPOINT",
        "KF_PIPELINES_TOKEN",
        "KF_PIPELINES_SA_TOKEN_PATH",
        "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
        "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
        "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json of the user's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_new_pipeline_then_new_version_experiment_and_runs(package):
    with KfpStandIn() as server:
        target = deploy.target_from_env(host=server.url)
        first = deploy.deploy(package, "triplet-mnist", target, experiment_name="triplets")
        second = deploy.deploy(package, "triplet-mnist", target, version_name="v2", experiment_name="triplets")
        state = server.state
    assert first.new_pipeline and not second.new_pipeline
    assert first.pipeline_id == second.pipeline_id and first.version_id != second.version_id
    assert [v["display_name"] for v in state.versions[first.pipeline_id]] == ["triplet-mnist", "v2"]
    assert list(state.experiments.values())[0]["display_name"] == "triplets"  # created once, then reused
    assert len(state.experiments) == 1 and first.experiment_id == second.experiment_id
    assert [r["pipeline_version_reference"] for r in state.runs] == [
        {"pipeline_id": first.pipeline_id, "pipeline_version_id": first.version_id},
        {"pipeline_id": first.pipeline_id, "pipeline_version_id": second.version_id},
    ]
    assert first.run_url == f"{server.url}/#/runs/details/{first.run_id}"
    uploaded = state.versions[first.pipeline_id][0]["pipeline_spec"]
    assert uploaded["defaultPipelineRoot"] == "gs://bucket/root"
    assert set(uploaded["root"]["dag"]["tasks"]) >= {"SourceExampleGen", "Trainer", "Pusher"}


def test_cli_deploy_prints_the_run_url(package, capsys, tmp_path):
    with KfpStandIn(token="s3cret") as server:
        code = cli.main(
            [
                "deploy",
                "--output-root",
                str(tmp_path),
                "--pipeline-root",
                "gs://bucket/root",
                "--host",
                server.url,
                "--token",
                "s3cret",
                "--ui-host",
                "https://kfp.example.com",
                "--run-name",
                "smoke",
            ]
        )
        state = server.state
    out = capsys.readouterr().out
    assert code == 0, out
    (run,) = state.runs
    assert run["display_name"] == "smoke"
    assert f"https://kfp.example.com/#/runs/details/{run['run_id']}" in out
    assert {r["authorization"] for r in state.requests} == {"Bearer s3cret"}


def test_no_run_uploads_only(package):
    with KfpStandIn() as server:
        result = deploy.deploy(package, "triplet-mnist", deploy.target_from_env(host=server.url), create_run=False)
        paths = server.paths("POST")
    assert result.run_id is None and result.experiment_id is None
    assert paths == ["/apis/v2beta1/pipelines/upload"]


def test_token_from_environment_and_service_account_file(package, monkeypatch, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    with KfpStandIn(token="from-file") as server:
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", server.url)
        monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
        result = deploy.deploy(package, "p-sa", deploy.target_from_env(), create_run=False)
    assert result.pipeline_id
    with KfpStandIn(token="from-env") as server:
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", server.url)
        monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH")
        monkeypatch.setenv("KF_PIPELINES_TOKEN", "from-env")
        assert deploy.deploy(package, "p-env", deploy.target_from_env(), create_run=False).pipeline_id


@pytest.mark.parametrize("token", [None, "wrong"])
def test_unauthorized_is_reported_with_host_and_pipeline(package, capsys, tmp_path, token):
    with KfpStandIn(token="right") as server:
        argv = ["deploy", "--output-root", str(tmp_path), "--pipeline-root", "gs://b/r", "--host", server.url]
        code = cli.main(argv + (["--token", token] if token else []))
        assert not server.state.pipelines
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err + captured.out
    assert server.url in captured.err and "'triplet-mnist'" in captured.err
    assert "HTTP 401" in captured.err and "--token" in captured.err


def test_name_conflict_is_reported(package):
    with KfpStandIn() as server:
        target = deploy.target_from_env(host=server.url)
        deploy.deploy(package, "triplet-mnist", target, version_name="v1", create_run=False)
        deploy.deploy(package, "triplet-mnist", target, version_name="v1", create_run=False)  # new: "v1" version
        with pytest.raises(deploy.DeployError) as err:
            deploy.deploy(package, "triplet-mnist", target, version_name="v1", create_run=False)
    message = str(err.value)
    assert "name conflict" in message and "'v1'" in message and "'triplet-mnist'" in message
    assert server.url in message


def test_unreachable_host_fails_fast_and_clearly(package, capsys, tmp_path):
    host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    code = cli.main(["deploy", "--output-root", str(tmp_path), "--pipeline-root", "gs://b/r", "--host", host])
    captured = capsys.readouterr()
    assert code == 1
    assert time.monotonic() - start < 60  # compile included; the connection attempt itself is immediate
    assert f"cannot reach Kubeflow Pipelines at {host}" in captured.err and "'triplet-mnist'" in captured.err
    assert "Traceback" not in captured.err


def test_missing_host_is_a_usage_error(capsys, tmp_path):
    code = cli.main(["deploy", "--output-root", str(tmp_path), "--pipeline-root", "gs://b/r"])
    assert code == 2
    assert "KF_PIPELINES_ENDPOINT" in capsys.readouterr().err


def test_kfp_cli_and_client_accept_the_package(package):
    """The commands README_kubeflow.md shows: `kfp pipeline create` and create_run_from_pipeline_package."""
    import warnings

    import kfp
    from click.testing import CliRunner
    from kfp.cli.cli import cli as kfp_cli

    with KfpStandIn() as server:
        result = CliRunner().invoke(
            kfp_cli, ["--endpoint", server.url, "pipeline", "create", "-p", "triplet-mnist", package], obj={}
        )  # as kfp's console script calls it
        assert result.exit_code == 0, result.output
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = kfp.Client(host=server.url)
            run = client.create_run_from_pipeline_package(
                package, experiment_name="adhoc", pipeline_root="gs://other/root"
            )
        state = server.state
    assert [p["display_name"] for p in state.pipelines.values()] == ["triplet-mnist"]
    (submitted,) = state.runs
    assert submitted["run_id"] == run.run_id
    assert submitted["pipeline_spec"]["defaultPipelineRoot"] == "gs://bucket/root"
    assert submitted["runtime_config"]["pipeline_root"] == "gs://other/root"  # a run may override the root
