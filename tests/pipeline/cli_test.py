"""The command line: flags, --help, and clear errors before anything runs."""

import errno
import json

import pytest

from triplet_tfx.components.config import PROFILES, ConfigError, EvalConfig, PipelineConfig, ServingConfig
from triplet_tfx.pipeline import cli, pipeline


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--data",
        "--output-root",
        "--epochs",
        "--batch-size",
        "--min-precision-at-1",
        "--beam-arg",
        "--no-cache",
        "--precision",
        "--augment-shift",
    ):
        assert flag in out


def test_defaults_are_the_tutorials(capsys):
    assert cli.main(["run", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["train"] == {
        **config["train"],
        "batch_size": 32,
        "epochs": 5,
        "learning_rate": 0.001,
        "embedding_dim": 256,
        "loss": "semihard",
        "margin": 1.0,
    }
    assert config["data"]["source"] == "mnist" and config["data"]["max_examples"] is None
    assert config["beam"]["runner"] == "local" and config["beam_args"] == []


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--epochs", "0"], "train.epochs (--epochs): must be positive"),
        (["--data", "csv:/x"], "data.source (--data): unknown source 'csv:/x'"),
        (["--image-size", "28x28"], "--image-size: expected HxWxC"),
        (["--examples-per-class", "5"], "train.examples_per_class (--examples-per-class)"),
        (["--dropout", "1"], "train.dropout (--dropout): must be in [0, 1)"),
        (["--augment-shift", "0.7"], "train.augment_shift (--augment-shift): must be in [0, 0.5)"),
    ],
)
def test_bad_flags_are_named(argv, message, capsys, tmp_path):
    assert cli.main(["run", "--output-root", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_missing_data_folder_is_named_before_running(tmp_path, capsys):
    missing = tmp_path / "no-such-images"
    assert cli.main(["run", "--output-root", str(tmp_path / "out"), "--data", f"images:{missing}"]) == 2
    assert f"{missing}: image folder not found" in capsys.readouterr().err


def test_foreign_output_root_is_refused(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("not ours")
    assert cli.main(["run", "--output-root", str(tmp_path)]) == 2
    assert "is not empty and was not written by triplet-tfx" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "not ours"


def test_code_fingerprint_reaches_the_cached_components(tmp_path):
    config = PipelineConfig(output_root=str(tmp_path))
    built = pipeline.create_pipeline(config)
    fingerprint = pipeline.code_fingerprint()
    by_id = {c.id: c for c in built.components}
    for component in ("Transform", "Trainer"):  # custom_config is stored as JSON
        assert json.loads(by_id[component].exec_properties["custom_config"])["code_fingerprint"] == fingerprint
    assert json.loads(by_id["EmbeddingEvaluator"].exec_properties["config"])["code_fingerprint"] == fingerprint


def test_components_get_only_the_sections_they_read(tmp_path):
    by_id = {c.id: c for c in pipeline.create_pipeline(PipelineConfig(output_root=str(tmp_path))).components}
    assert set(json.loads(by_id["Transform"].exec_properties["custom_config"])) == {"data", "code_fingerprint"}
    assert set(json.loads(by_id["Trainer"].exec_properties["custom_config"])) == {"data", "train", "code_fingerprint"}
    assert set(json.loads(by_id["EmbeddingEvaluator"].exec_properties["config"])) == {
        "data",
        "eval",
        "serving",  # the recall of the index it will serve
        "code_fingerprint",
    }
    assert set(json.loads(by_id["ServingModelBuilder"].exec_properties["config"])) == {"serving", "code_fingerprint"}


def test_index_split_is_a_flag_and_is_validated(capsys):
    assert cli.main(["run", "--index-split", "eval", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["serving"]["index_split"] == "eval"
    with pytest.raises(ConfigError, match=r"serving.index_split \(--index-split\): must be one of train, eval"):
        PipelineConfig(serving=ServingConfig(index_split="test")).validate()


def test_index_flags_are_validated(capsys):
    argv = [
        "--index",
        "ivf",
        "--index-lists",
        "64",
        "--index-nprobe",
        "8",
        "--catalog",
        "images:/c",
        "--keep-versions",
        "3",
    ]
    assert cli.main(["run", *argv, "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["serving"] == {
        "index_split": "train",
        "index": "ivf",
        "index_lists": 64,
        "index_nprobe": 8,
        "index_storage": "int8",
        "catalog": "images:/c",
        "index_add": False,
        "keep_versions": 3,
    }
    for serving, message in (
        (ServingConfig(index="hnsw"), r"serving.index \(--index\): must be one of auto, exact, ivf"),
        (ServingConfig(index_lists=-1), r"serving.index_lists \(--index-lists\): must be >= 0"),
        (ServingConfig(index_lists=8, index_nprobe=9), r"serving.index_nprobe \(--index-nprobe\): must be at most"),
        (ServingConfig(index_storage="int4"), r"serving.index_storage \(--index-storage\): must be one of int8"),
        (ServingConfig(catalog="csv:/x"), r"serving.catalog \(--catalog\): unknown source 'csv:/x'"),
        (ServingConfig(keep_versions=-1), r"serving.keep_versions \(--keep-versions\): must be >= 0"),
        (ServingConfig(index_add=True), r"serving.index_add \(--index-add\): adds a catalog: give --catalog"),
    ):
        with pytest.raises(ConfigError, match=message):
            PipelineConfig(serving=serving).validate()


def test_match_precision_is_validated():
    with pytest.raises(ConfigError, match=r"eval.match_precision \(--match-precision\): must be in \(0, 1\]"):
        PipelineConfig(eval=EvalConfig(match_precision=1.5)).validate()


def test_data_fingerprint_follows_the_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"1")
    first = pipeline.data_fingerprint(str(tmp_path))
    (tmp_path / "a.png").write_bytes(b"12")
    assert pipeline.data_fingerprint(str(tmp_path)) != first


def test_profile_sets_defaults_and_flags_still_win(capsys):
    assert cli.main(["run", "--profile", "recommended", "--epochs", "3", "--print-config"]) == 0
    train = json.loads(capsys.readouterr().out)["train"]
    expected = {**PROFILES["recommended"]["train"], "epochs": 3}
    assert {key: train[key] for key in expected} == expected


def test_a_full_disk_is_one_line_naming_where(tmp_path):
    config = PipelineConfig(output_root=str(tmp_path))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "Trainer" / "model.keras"))
        except OSError as first:
            raise RuntimeError("InternalError: database or disk is full query: UPDATE Execution") from first
    except RuntimeError as wrapped:
        line = cli.disk_full(wrapped, config)
    assert line.startswith(f"no space left on device writing {tmp_path / 'Trainer' / 'model.keras'} (")
    assert line.endswith("MB free there); free some space, then run the same command again to resume")
    metadata_only = RuntimeError("database or disk is full query: UPDATE Execution")
    assert cli.disk_full(metadata_only, config).startswith(f"no space left on device writing {config.metadata_path}")
    assert cli.disk_full(ValueError("something else"), config) is None


def test_an_identical_rerun_says_one_true_thing_in_the_log_and_the_summary():
    """The model already in production (blessed and pushed by an earlier run): the evaluator's log line
    and the run summary's are the same line, neither "NOT BLESSED" nor "BLESSED by an earlier run"."""
    from triplet_tfx.components.evaluation import evaluator, report
    from triplet_tfx.pipeline.summary import RunSummary

    line = (
        "Model already in production (blessed and pushed by an earlier run): precision_at_1 0.8700 >= "
        "threshold 0.1000; nothing new to push"
    )
    message = evaluator.blessing_message(["precision_at_1 0.8700 >= threshold 0.1000"], already_pushed=True)
    assert report.verdict_line(False, True, message) == line  # the evaluator logs it with blessed=False
    text = RunSummary(
        run_id="r",
        executions={},
        metrics={},
        blessed=True,
        blessing_message=message,
        pushed_to=None,
        evaluation_dir=None,
        already_pushed=True,
    ).format()
    assert line in text.splitlines() and "BLESSED" not in text
    assert (
        report.verdict_line(False, False, "map_at_r 0.1 < threshold 0.2")
        == "Model NOT BLESSED: map_at_r 0.1 < threshold 0.2"
    )
    assert report.verdict_line(True, False, "ok") == "Model BLESSED: ok"


@pytest.mark.parametrize("command", ["embed", "search"])
def test_serving_help_says_which_files_are_read_and_offers_verbose(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--verbose" in out and "Only regular files are read" in out and "FIFO" in out
    assert "loop -> ." in out and "broken link is an error" in out and "AppleDouble" in out
