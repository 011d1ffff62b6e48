"""Each option is declared once, on its configuration field (components/config.py): the flags, the
profiles, the validation messages and docs/usage.md all follow from that declaration."""

import dataclasses
import json
import os

import pytest

from triplet_tfx.components import config as config_module
from triplet_tfx.components.config import (
    PROFILES,
    SECTIONS,
    ConfigError,
    DataConfig,
    EvalConfig,
    PipelineConfig,
    ServingConfig,
    TrainConfig,
    flag_of,
    profile_config,
)
from triplet_tfx.pipeline import cli, flag_docs, flags

# Profiles that, together, set every field of the data, train, eval and serving sections to a valid
# value other than its default (some values exclude each other: a class split and query_vs_reference).
SYNTHETIC_PROFILES = {
    "synthetic-1": {
        "data": {
            "source": "tfds:fashion_mnist",
            "tfds_data_dir": "/data/tfds",
            "tfds_train_split": "train[:90%]",
            "tfds_eval_split": "validation",
            "image_height": 64,
            "image_width": 48,
            "channels": 3,
            "resize": "pad",
            "num_classes": 12,
            "max_examples": 100,
            "eval_percent": 30,
            "train_classes": "0-5",
            "eval_classes": "6-11",
            "on_bad_image": "skip",
            "tfrecord_image_key": "image/encoded",
            "tfrecord_label_key": "image/class/label",
            "tfrecord_encoded": True,
        },
        "train": {
            "epochs": 7,
            "batch_size": 48,
            "learning_rate": 0.002,
            "lr_schedule": "cosine",
            "embedding_dim": 64,
            "network": "mobilenet_v3_small",
            "dropout": 0.1,
            "backbone_weights": "none",
            "freeze_backbone_epochs": 2,
            "fine_tune_lr_factor": 0.5,
            "loss": "hard",
            "margin": 0.5,
            "distance": "angular",
            "soft": True,
            "examples_per_class": 8,
            "augment_shift": 0.1,
            "precision": "mixed_float16",
            "batch_parts": 3,
            "max_steps": 10,
            "seed": 7,
            "strategy": "multi_worker",
            "mining": "replica",
            "checkpoint_every": 123,
            "workers": 2,
        },
        "eval": {
            "recall_ks": [2, 4],
            "lower_bounds": {"precision_at_1": 0.5, "map_at_r": 0.25},
            "compared_metrics": ["map_at_r"],
            "max_regression": 0.01,
            "match_precision": 0.9,
            "plot": "pca",
        },
        "serving": {
            "index_split": "eval",
            "index": "ivf",
            "index_lists": 32,
            "index_nprobe": 4,
            "index_storage": "float32",
            "catalog": "images:/data/catalog",
            "index_add": True,
            "keep_versions": 4,
        },
    },
    "synthetic-2": {"data": {"class_split": "random:3"}, "eval": {"lower_bounds": {"nmi": 0.3}}},
    "synthetic-3": {"eval": {"protocol": "query_vs_reference"}},
}


def _json(value):
    return json.loads(json.dumps(value))


def _parse(profile, *argv, command="run"):
    """The configuration of `triplet-tfx COMMAND --profile PROFILE ARGV...`, as main builds it."""
    return flags.config_from_args(cli.build_parser(profile).parse_args([command, "--profile", profile, *argv]))


def _check_profile_takes_effect(name, capsys):
    config = _parse(name)
    for section, values in PROFILES[name].items():
        for field, value in values.items():
            assert _json(getattr(getattr(config, section), field)) == _json(value), f"{name}: {section}.{field}"
    assert cli.main(["run", "--profile", name, "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for section, values in PROFILES[name].items():
        assert {field: printed[section][field] for field in values} == _json(values), f"{name}: {section}"
    # Flags at their defaults: the profile's configuration (the output root made absolute).
    assert config == dataclasses.replace(profile_config(name), output_root=os.path.abspath("runs")).validate()


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_field_of_every_profile_takes_effect(name, capsys):
    _check_profile_takes_effect(name, capsys)


@pytest.mark.parametrize("name", sorted(SYNTHETIC_PROFILES))
def test_a_profile_can_set_every_field(name, capsys, monkeypatch):
    monkeypatch.setitem(config_module.PROFILES, name, SYNTHETIC_PROFILES[name])
    _check_profile_takes_effect(name, capsys)


def test_the_synthetic_profiles_cover_every_field_with_other_values():
    for section, cls in (
        ("data", DataConfig),
        ("train", TrainConfig),
        ("eval", EvalConfig),
        ("serving", ServingConfig),
    ):
        default = cls()
        for field in dataclasses.fields(cls):
            values = [p[section][field.name] for p in SYNTHETIC_PROFILES.values() if field.name in p.get(section, {})]
            assert values, f"no synthetic profile sets {section}.{field.name}"
            assert all(_json(v) != _json(getattr(default, field.name)) for v in values), f"{section}.{field.name}"


def test_flags_win_over_the_profile_and_the_profile_sets_the_help_defaults(capsys, monkeypatch):
    monkeypatch.setitem(config_module.PROFILES, "synthetic-1", SYNTHETIC_PROFILES["synthetic-1"])
    config = _parse(
        "synthetic-1", "--checkpoint-every", "50", "--image-size", "32x32x3", "--min-metric", "nmi=0.2", "--no-cache"
    )
    assert config.train.checkpoint_every == 50 and config.train.epochs == 7
    assert config.data.image_shape == (32, 32, 3)
    assert config.eval.lower_bounds == {"precision_at_1": 0.5, "map_at_r": 0.25, "nmi": 0.2}
    assert config.enable_cache is False
    with pytest.raises(SystemExit):
        cli.main(["run", "--profile", "synthetic-1", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default 123)" in out and "(default 64x48x3)" in out and "Default: synthetic-1" in out


def test_a_profile_naming_an_unknown_field_is_an_error(monkeypatch):
    monkeypatch.setitem(config_module.PROFILES, "typo", {"train": {"checkpoint_every_steps": 10}})
    with pytest.raises(ConfigError, match="TrainConfig: unknown field 'checkpoint_every_steps'"):
        cli.build_parser("typo")


def _declared_flags(sections):
    for section in sections:
        for field in dataclasses.fields(SECTIONS[section]):
            for spec in (field.metadata, *field.metadata.get("more", ())):
                if "flag" in spec:
                    yield section, field.name, spec["flag"], spec.get("aliases", ())


@pytest.mark.parametrize(
    "command, sections",
    [
        ("run", ("", "data", "train", "eval", "serving", "beam")),
        ("index", ("", "data", "train", "eval", "serving", "beam")),
        ("compile", tuple(SECTIONS)),
        ("deploy", tuple(SECTIONS)),
    ],
)
def test_every_declared_flag_is_in_help(command, sections, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    declared = list(_declared_flags(sections))
    assert len(declared) > 40
    for section, field, flag, aliases in declared:
        for spelling in (flag, *aliases):
            assert f"  {spelling}" in out or f", {spelling}" in out, f"{section}.{field}: {spelling}"


def test_every_flag_is_documented_and_flag_of_names_it():
    for flag in flags.config_flags():
        assert flag.spec.get("help"), flag
        assert flag.flag in flag_of(flag.section, flag.field)
    assert flag_of("train", "checkpoint_every") == "--checkpoint-every"
    assert flag_of("data", "max_examples") == "--max-examples"
    assert flag_of("data", "channels") == "--image-size"
    assert flag_of("eval", "lower_bounds") == "--min-precision-at-1, --min-metric"
    assert flag_of("beam", "project") == "--dataflow-project"
    assert flag_of("kubeflow", "pvc") == "--pvc"
    assert flag_of("train", "embedding_dim") == ""  # profiles and configuration files only
    with pytest.raises(ConfigError, match=r"train.checkpoint_every \(--checkpoint-every\): must be positive"):
        PipelineConfig(train=TrainConfig(checkpoint_every=0)).validate()
    with pytest.raises(ConfigError, match=r"^train.embedding_dim: must be positive"):
        PipelineConfig(train=TrainConfig(embedding_dim=0)).validate()


@pytest.mark.parametrize("alias", ["--image-size", "--input-size"])
def test_old_spellings_still_work(alias, capsys):
    config = _parse("tutorial", alias, "32x32x3", "--convert-channels", "luminance")
    assert config.data.image_shape == (32, 32, 3)
    assert "--convert-channels is deprecated and has no effect" in capsys.readouterr().err
    compiled = _parse(
        "tutorial",
        "--pvc",
        "claim",
        "--trainer-memory",
        "2Gi",
        "--component-image",
        "Transform=i:1",
        "--pipeline-root",
        "relative/root",
        command="compile",
    )
    assert compiled.kubeflow.pvc == "claim" and compiled.kubeflow.component_images == ("Transform=i:1",)
    assert compiled.kubeflow.trainer_memory == pytest.approx(2 * 1.073741824)
    assert compiled.kubeflow.pipeline_root.startswith("/") and compiled.kubeflow.pipeline_root.endswith("relative/root")


@pytest.mark.parametrize(
    "flag, old, new, field",
    [
        ("--network", "tutorial", "tutorial_cnn", ("train", "network")),
        ("--eval-protocol", "eval_vs_train", "query_vs_reference", ("eval", "protocol")),
    ],
)
def test_renamed_values_still_work_with_a_warning(flag, old, new, field, capsys):
    config = _parse("tutorial", flag, old)
    assert getattr(getattr(config, field[0]), field[1]) == new
    assert f"{flag} {old} is deprecated: it is now called {new}" in capsys.readouterr().err
    assert getattr(getattr(_parse("tutorial", flag, new), field[0]), field[1]) == new
    assert "deprecated" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse("tutorial", flag, old + "x")


# The flags not named after their field, and why: the section is the flag (--data), one flag sets
# several fields or one field has several flags (--image-size, --min-precision-at-1 / --min-metric),
# a Dataflow option carries its runner's prefix, a negation (--no-cache), a repeatable flag is singular.
FLAGS_NAMED_OTHERWISE = {
    ("data", "source"): "--data",
    ("data", "image_height"): "--image-size",
    ("eval", "lower_bounds"): "--min-precision-at-1 --min-metric",
    ("", "enable_cache"): "--no-cache",
    ("", "beam_args"): "--beam-arg",
    ("kubeflow", "component_images"): "--component-image",
    **{
        ("beam", field): f"--dataflow-{field.replace('_', '-')}"
        for field in (
            "project",
            "region",
            "temp_location",
            "staging_location",
            "machine_type",
            "max_workers",
            "service_account",
        )
    },
}


def test_flags_are_named_after_their_fields():
    named_otherwise = {}
    for flag in flags.config_flags():
        name = flag.flag[2:].replace("-", "_")
        if name not in (flag.field, f"{flag.section}_{flag.field}"):
            key = (flag.section, flag.field)
            named_otherwise[key] = f"{named_otherwise[key]} {flag.flag}" if key in named_otherwise else flag.flag
    assert named_otherwise == FLAGS_NAMED_OTHERWISE


def test_usage_md_lists_the_run_options_as_declared():
    assert flag_docs.current_block() == flag_docs.expected_block(), (
        f"docs/usage.md is stale: run `.venv/bin/{flag_docs.REGENERATE}`"
    )
