"""The `beam` section: --beam-runner and its settings -> the data components' Beam options."""

import pytest

from triplet_tfx.components.config import BeamConfig, ConfigError, PipelineConfig, beam_pipeline_args
from triplet_tfx.pipeline import cli, pipeline

IMAGE = "registry.example/triplet-tfx:1"
FNAPI = "--runner=apache_beam.runners.portability.fn_api_runner.fn_runner.FnApiRunner"


def config_of(*flags):
    return cli.config_from_args(cli.build_parser().parse_args(["compile", "--image", IMAGE, *flags]))


def test_local_is_the_in_process_fn_api_runner_and_raw_args_come_last():
    assert beam_pipeline_args(BeamConfig(), IMAGE) == (
        FNAPI,
        "--direct_num_workers=1",
        "--no_pipeline_type_check",
        f"--sdk_container_image={IMAGE}",
    )
    config = config_of("--beam-arg=--direct_num_workers=2")
    assert config.data_beam_args == (
        FNAPI,
        "--direct_num_workers=1",
        "--no_pipeline_type_check",
        f"--sdk_container_image={IMAGE}",
        "--direct_num_workers=2",
    )


@pytest.mark.parametrize(
    "flags, expected",
    [
        # The command line checked by hand before the issue was filed (README: the local portable test).
        (
            [
                "--beam-runner",
                "portable",
                "--beam-job-endpoint",
                "localhost:8099",
                "--beam-environment-type",
                "EXTERNAL",
                "--beam-environment-config",
                "localhost:50000",
            ],
            [
                "--runner=PortableRunner",
                "--job_endpoint=localhost:8099",
                "--environment_type=EXTERNAL",
                "--environment_config=localhost:50000",
                f"--sdk_container_image={IMAGE}",
            ],
        ),
        (
            ["--beam-runner", "portable", "--beam-job-endpoint", "js:8099"],
            [
                "--runner=PortableRunner",
                "--job_endpoint=js:8099",
                "--environment_type=DOCKER",
                f"--environment_config={IMAGE}",
                f"--sdk_container_image={IMAGE}",
            ],
        ),
        (
            [
                "--beam-runner",
                "portable",
                "--beam-job-endpoint",
                "js:8099",
                "--beam-environment-type",
                "PROCESS",
                "--beam-environment-config",
                '{"command": "/opt/apache/beam/boot"}',
            ],
            [
                "--runner=PortableRunner",
                "--job_endpoint=js:8099",
                "--environment_type=PROCESS",
                '--environment_config={"command": "/opt/apache/beam/boot"}',
                f"--sdk_container_image={IMAGE}",
            ],
        ),
        (
            [
                "--beam-runner",
                "flink",
                "--beam-job-endpoint",
                "beam-flink-job-server:8099",
                "--beam-parallelism",
                "4",
                "--beam-environment-type",
                "EXTERNAL",
                "--beam-environment-config",
                "localhost:50000",
            ],
            [
                "--runner=FlinkRunner",
                "--job_endpoint=beam-flink-job-server:8099",
                "--parallelism=4",
                "--environment_type=EXTERNAL",
                "--environment_config=localhost:50000",
                f"--sdk_container_image={IMAGE}",
            ],
        ),
        (
            ["--beam-runner", "flink", "--flink-master", "flink-rest:8081"],
            [
                "--runner=FlinkRunner",
                "--flink_master=flink-rest:8081",
                "--environment_type=DOCKER",
                f"--environment_config={IMAGE}",
                f"--sdk_container_image={IMAGE}",
            ],
        ),
        (
            [
                "--beam-runner",
                "spark",
                "--spark-master",
                "spark://spark-master:7077",
                "--beam-environment-config",
                "img:2",
            ],
            [
                "--runner=SparkRunner",
                "--spark_master_url=spark://spark-master:7077",
                "--environment_type=DOCKER",
                "--environment_config=img:2",
                "--sdk_container_image=img:2",
            ],
        ),
        (
            [
                "--beam-runner",
                "dataflow",
                "--dataflow-project",
                "p1",
                "--dataflow-region",
                "europe-west4",
                "--dataflow-temp-location",
                "gs://b/tmp",
                "--dataflow-staging-location",
                "gs://b/staging",
                "--dataflow-machine-type",
                "n2-standard-4",
                "--dataflow-max-workers",
                "8",
                "--dataflow-service-account",
                "beam@p1.iam.gserviceaccount.com",
            ],
            [
                "--runner=DataflowRunner",
                "--project=p1",
                "--region=europe-west4",
                "--temp_location=gs://b/tmp",
                "--staging_location=gs://b/staging",
                "--machine_type=n2-standard-4",
                "--max_num_workers=8",
                f"--sdk_container_image={IMAGE}",
                "--service_account_email=beam@p1.iam.gserviceaccount.com",
            ],
        ),
        (
            [
                "--beam-runner",
                "dataflow",
                "--dataflow-project",
                "p1",
                "--dataflow-region",
                "us-central1",
                "--dataflow-temp-location",
                "gs://b/tmp",
                "--beam-sdk-container-image",
                "img:3",
                "--beam-arg=--foo=1",
            ],
            [
                "--runner=DataflowRunner",
                "--project=p1",
                "--region=us-central1",
                "--temp_location=gs://b/tmp",
                "--sdk_container_image=img:3",
                "--foo=1",
            ],
        ),
    ],
)
def test_runner_flags_become_beam_options(flags, expected):
    assert list(config_of(*flags).data_beam_args) == expected


def test_beam_options_parse_as_beams_own_pipeline_options():
    from apache_beam.options.pipeline_options import (
        FlinkRunnerOptions,
        GoogleCloudOptions,
        PipelineOptions,
        PortableOptions,
        StandardOptions,
        WorkerOptions,
    )

    options = PipelineConfig(
        beam=BeamConfig(
            runner="dataflow",
            project="p1",
            region="r1",
            temp_location="gs://b/t",
            machine_type="n2-standard-4",
            max_workers=3,
        )
    ).data_beam_args
    parsed = PipelineOptions(list(options))
    assert parsed.view_as(StandardOptions).runner == "DataflowRunner"
    assert parsed.view_as(GoogleCloudOptions).temp_location == "gs://b/t"
    assert parsed.view_as(WorkerOptions).machine_type == "n2-standard-4"
    assert parsed.view_as(WorkerOptions).max_num_workers == 3
    flink = PipelineOptions(
        list(
            PipelineConfig(
                beam=BeamConfig(
                    runner="flink",
                    job_endpoint="j:8099",
                    parallelism=2,
                    environment_type="EXTERNAL",
                    environment_config="localhost:50000",
                )
            ).data_beam_args
        )
    )
    assert flink.view_as(FlinkRunnerOptions).parallelism == 2
    assert flink.view_as(PortableOptions).environment_config == "localhost:50000"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--beam-runner", "portable"], "beam.job_endpoint (--beam-job-endpoint): the portable runner needs"),
        (
            ["--beam-runner", "portable", "--beam-job-endpoint", "j:1", "--beam-environment-type", "EXTERNAL"],
            "beam.environment_config (--beam-environment-config): EXTERNAL needs it",
        ),
        (["--beam-runner", "flink"], "beam.flink_master (--flink-master)"),
        (["--beam-runner", "spark"], "beam.spark_master (--spark-master)"),
        (
            ["--beam-runner", "flink", "--flink-master", "f:8081", "--beam-parallelism", "0"],
            "beam.parallelism (--beam-parallelism): must be positive",
        ),
        (
            ["--beam-runner", "dataflow", "--dataflow-project", "p", "--dataflow-region", "r"],
            "beam.temp_location (--dataflow-temp-location): Dataflow needs a gs:// temp location",
        ),
        (
            [
                "--beam-runner",
                "dataflow",
                "--dataflow-project",
                "p",
                "--dataflow-region",
                "r",
                "--dataflow-temp-location",
                "/tmp/x",
            ],
            "beam.temp_location (--dataflow-temp-location)",
        ),
        (
            ["--beam-runner", "dataflow", "--dataflow-region", "r", "--dataflow-temp-location", "gs://b/t"],
            "beam.project (--dataflow-project): Dataflow needs it",
        ),
        (
            [
                "--beam-runner",
                "dataflow",
                "--dataflow-project",
                "p",
                "--dataflow-region",
                "r",
                "--dataflow-temp-location",
                "gs://b/t",
                "--dataflow-max-workers",
                "0",
            ],
            "beam.max_workers (--dataflow-max-workers)",
        ),
        (
            ["--dataflow-project", "p"],
            "beam.project (--dataflow-project): applies to --beam-runner dataflow only, not local",
        ),
        (
            ["--beam-runner", "dataflow", "--beam-job-endpoint", "j:1"],
            "beam.job_endpoint (--beam-job-endpoint): applies to --beam-runner portable/flink/spark only",
        ),
        (
            ["--beam-runner", "dataflow", "--beam-artifact-endpoint", "j:2"],
            "beam.artifact_endpoint (--beam-artifact-endpoint): applies to --beam-runner portable/flink/spark only",
        ),
    ],
)
def test_bad_beam_settings_are_named_before_running(flags, message, tmp_path, capsys):
    assert cli.main(["run", "--output-root", str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_runner_in_a_config_file_is_named():
    with pytest.raises(ConfigError, match=r"beam.runner \(--beam-runner\): 'direct'"):
        PipelineConfig.from_dict({"beam": {"runner": "direct"}}).validate()


def test_only_the_data_components_get_the_runner_options(tmp_path):
    config = PipelineConfig(
        output_root=str(tmp_path),
        beam_args=("--extra=1",),
        beam=BeamConfig(
            runner="flink", job_endpoint="j:8099", environment_type="EXTERNAL", environment_config="localhost:50000"
        ),
    )
    built = pipeline.create_pipeline(config)
    beam_args = {c.id: getattr(c.executor_spec, "beam_pipeline_args", None) for c in built.components}
    expected = [
        "--runner=FlinkRunner",
        "--job_endpoint=j:8099",
        "--environment_type=EXTERNAL",
        "--environment_config=localhost:50000",
        f"--sdk_container_image={config.kubeflow.image}",
        "--extra=1",
    ]
    assert {k: v for k, v in beam_args.items() if v is not None} == {
        "SourceExampleGen": expected,
        "StatisticsGen": expected,
        "Transform": expected,
    }
    assert built.beam_pipeline_args == []


@pytest.mark.parametrize(
    "beam",
    [
        BeamConfig(),
        BeamConfig(runner="portable", job_endpoint="j:8099"),
        BeamConfig(
            runner="flink", flink_master="f:8081", environment_type="PROCESS", environment_config='{"command": "boot"}'
        ),
    ],
)
def test_tfx_does_not_package_itself_for_workers_that_have_it(beam):
    """TFX's Beam executors build an sdist of TFX (1.4 s each) when no option names the workers'
    environment; every runner's options here name it, so TFX keeps them as they are."""
    from tfx.utils import dependency_utils

    args = list(PipelineConfig(beam=beam).data_beam_args)
    assert dependency_utils.make_beam_dependency_flags(args) == args
