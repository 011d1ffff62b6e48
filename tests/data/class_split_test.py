"""The class-split selection (pure) and its validation as configuration."""

import json

import pytest

from triplet_tfx.components import class_split
from triplet_tfx.components.config import ConfigError, DataConfig, EvalConfig, PipelineConfig, TrainConfig


def test_lists_and_ranges_are_parsed():
    assert class_split.parse_classes("0-4", 10, "train_classes") == (0, 1, 2, 3, 4)
    assert class_split.parse_classes("7, 0-2,1", 10, "train_classes") == (0, 1, 2, 7)
    assert class_split.parse_classes("9", 10, "eval_classes") == (9,)


@pytest.mark.parametrize(
    "text,problem",
    [
        ("0-10", "'0-10' is outside the classes 0-9"),
        ("-1", "expected class ids and ranges"),
        ("a-b", "expected class ids and ranges"),
        ("4-2", "empty range '4-2'"),
        ("", "expected class ids"),
    ],
)
def test_bad_class_lists_are_named(text, problem):
    with pytest.raises(class_split.ClassSplitError, match=problem) as err:
        class_split.parse_classes(text, 10, "train_classes")
    assert err.value.field == "train_classes"


def test_one_list_alone_means_the_other_is_its_complement():
    assert class_split.resolve("0-4", "", "", 10) == {"train": (0, 1, 2, 3, 4), "eval": (5, 6, 7, 8, 9)}
    assert class_split.resolve("", "1,3", "", 4) == {"train": (0, 2), "eval": (1, 3)}
    assert class_split.resolve("0-1", "5", "", 10) == {"train": (0, 1), "eval": (5,)}  # need not cover all
    assert class_split.resolve("", "", "", 10) is None


def test_random_half_is_seeded_disjoint_and_covers_every_class():
    first = class_split.resolve("", "", "random:3", 10)
    assert first == class_split.resolve("", "", "random:3", 10)
    assert first != class_split.resolve("", "", "random:4", 10)
    assert len(first["train"]) == 5 and sorted(first["train"] + first["eval"]) == list(range(10))
    assert len(class_split.random_half(7, 0)[0]) == 3


def test_format_classes_gives_compact_ranges():
    assert class_split.format_classes([4, 0, 1, 2, 7, 8]) == "0-2,4,7-8"


@pytest.mark.parametrize(
    "data,message",
    [
        (
            dict(train_classes="0-4", eval_classes="4-9"),
            "data.eval_classes (--eval-classes): 4 also among the train classes",
        ),
        (dict(train_classes="0-12"), "data.train_classes (--train-classes): '0-12' is outside the classes 0-9"),
        (dict(eval_classes="0-9"), "data.train_classes (--train-classes): no classes left for this split"),
        (dict(train_classes="0-9"), "data.eval_classes (--eval-classes): no classes left for this split"),
        (dict(class_split="half"), "data.class_split (--class-split): expected random:SEED"),
        (dict(class_split="random:1", train_classes="0-4"), "data.class_split (--class-split): give either"),
    ],
)
def test_invalid_splits_are_config_errors_naming_the_flag(data, message):
    with pytest.raises(ConfigError) as err:
        PipelineConfig(data=DataConfig(**data)).validate()
    assert message in str(err.value)


def test_query_vs_reference_across_disjoint_classes_is_refused():
    with pytest.raises(ConfigError) as err:
        PipelineConfig(
            data=DataConfig(train_classes="0-4", eval_classes="5-9"), eval=EvalConfig(protocol="query_vs_reference")
        ).validate()
    message = str(err.value)
    assert message.startswith("eval.protocol (--eval-protocol): query_vs_reference")
    assert "--train-classes/--eval-classes/--class-split" in message and "leave_one_out" in message
    # Without a class split the protocol stays available.
    PipelineConfig(eval=EvalConfig(protocol="query_vs_reference")).validate()


def test_class_balanced_batches_need_enough_train_classes():
    with pytest.raises(
        ConfigError,
        match=r"train.examples_per_class \(--examples-per-class\): batches of 8 "
        r"classes .* only 5 train classes",
    ):
        PipelineConfig(
            data=DataConfig(train_classes="0-4"), train=TrainConfig(batch_size=256, examples_per_class=32)
        ).validate()
    PipelineConfig(
        data=DataConfig(train_classes="0-4"), train=TrainConfig(batch_size=160, examples_per_class=32)
    ).validate()


def test_recommended_profile_trains_on_half_the_classes(capsys):
    from triplet_tfx.pipeline import cli

    assert (
        cli.main(
            ["run", "--profile", "recommended", "--train-classes", "0-4", "--eval-classes", "5-9", "--print-config"]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)["data"]
    assert (data["train_classes"], data["eval_classes"]) == ("0-4", "5-9")
