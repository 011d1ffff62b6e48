"""Keras Applications backbones: the models, their preprocessing, the export copy, --backbone-weights
(imagenet's pre-flight check without a download, a weights file), freeze then fine-tune with resumes
in both phases, and the Trainer's decision to cache decoded examples in memory."""

import collections
import hashlib
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components.config import BACKBONES, PipelineConfig, TrainConfig
from triplet_tfx.components.training import backbones, checkpoints, network, trainer

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPE = (32, 32, 3)


def images(n=8, seed=0):
    return np.random.default_rng(seed).random((n, *SHAPE), np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_builds_and_embeds_unit_norm_float32(name):
    model = network.build_model(SHAPE, 16, network=name, dropout=0.0)
    assert [type(layer).__name__ for layer in model.layers][:2] == ["InputLayer", "Rescaling"]
    assert backbones.backbone_of(model) is model.layers[2]
    out = model(images(3), training=False)
    assert out.dtype == "float32" and out.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=1), 1.0, rtol=1e-5)


def test_small_networks_have_no_backbone():
    assert backbones.backbone_of(network.build_model((28, 28, 1), 8)) is None


@pytest.mark.slow
def test_each_backbone_sees_its_own_input_range():
    ends = np.stack([np.zeros(SHAPE, np.float32), np.ones(SHAPE, np.float32)])
    resnet = network.build_model(SHAPE, 8, network="resnet50_v2")
    scaled = resnet.layers[1](ends).numpy()  # resnet_v2.preprocess_input: [-1, 1]
    assert scaled[0].min() == scaled[0].max() == -1.0 and scaled[1].min() == scaled[1].max() == 1.0
    np.testing.assert_allclose(scaled, keras.applications.resnet_v2.preprocess_input(ends * 255.0), atol=1e-6)
    for name in ("mobilenet_v3_small", "efficientnet_v2_b0"):
        model = network.build_model(SHAPE, 8, network=name)
        scaled = model.layers[1](ends).numpy()  # [0, 255], which the backbone's own first layers rescale
        assert scaled[0].max() == 0.0 and scaled[1].min() == 255.0
        assert any(type(layer).__name__ == "Rescaling" for layer in backbones.backbone_of(model).layers[:3])


def test_mixed_float16_backbone_computes_in_float16_and_embeds_float32():
    model = network.build_model(SHAPE, 8, precision="mixed_float16", network="mobilenet_v3_small")
    convs = [layer for layer in backbones.backbone_of(model).layers if type(layer).__name__ == "Conv2D"]
    assert convs[0].compute_dtype == "float16" and convs[0].kernel.dtype == "float32"
    assert model(images(2)).dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was


@pytest.mark.slow
def test_export_copy_equals_the_trained_model():
    """export.py builds a fresh network (random backbone weights) and copies the trained weights,
    batch-norm statistics included."""
    rng = np.random.default_rng(0)
    model = network.build_model(SHAPE, 8, network="mobilenet_v3_small", dropout=0.2)
    model(images(), training=True)  # Keras 3: moves the batch-norm statistics
    for layer in backbones.backbone_of(model).layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape).astype(np.float32))
    model.layers[-2].kernel.assign(rng.normal(0, 1, model.layers[-2].kernel.shape).astype(np.float32))
    copy = network.build_model(SHAPE, 8, network="mobilenet_v3_small")
    assert not np.allclose(copy(images(4, 1), training=False), model(images(4, 1), training=False), atol=1e-3)
    copy.set_weights(model.get_weights())
    np.testing.assert_allclose(copy(images(4, 1), training=False), model(images(4, 1), training=False), atol=1e-5)


# -- --backbone-weights ---------------------------------------------------------------------------


@pytest.mark.slow
def test_imagenet_file_table_is_what_keras_downloads(monkeypatch):
    from keras.src.utils import file_utils

    class Asked(Exception):
        pass

    def capture(fname, origin, cache_subdir, file_hash):
        raise Asked(fname, origin, file_hash)

    monkeypatch.setattr(file_utils, "get_file", capture)
    for name in BACKBONES:
        with pytest.raises(Asked) as asked:
            backbones.build_backbone(name, SHAPE, "imagenet")
        assert tuple(backbones.imagenet_weights_file(name)) == asked.value.args


@pytest.fixture
def offline_imagenet(monkeypatch, tmp_path):
    """imagenet weights from an unreachable address (port 9 of this machine refuses), cached in tmp_path."""
    real = backbones.imagenet_weights_file
    cache = tmp_path / "models"
    cache.mkdir()

    def unreachable(name):
        weights = real(name)
        return weights._replace(origin="http://127.0.0.1:9/" + weights.file_name)

    monkeypatch.setattr(backbones, "imagenet_weights_file", unreachable)
    monkeypatch.setattr(backbones, "keras_cache_dir", lambda: str(cache))
    return cache


def test_imagenet_without_network_is_a_one_line_preflight_error(offline_imagenet, tmp_path):
    from triplet_tfx.pipeline import cli

    train = TrainConfig(network="mobilenet_v3_small", backbone_weights="imagenet")
    with pytest.raises(backbones.BackboneWeightsError) as err:
        backbones.check_backbone_weights(train, SHAPE)
    message = str(err.value)
    assert "\n" not in message and "--backbone-weights PATH" in message and "--backbone-weights none" in message
    assert "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5" in message
    # Through the CLI's pre-flight checks, before anything runs.
    config = PipelineConfig(output_root=str(tmp_path / "out"), train=train)
    with pytest.raises(cli.OutputRootError, match=r"^train.backbone_weights \(--backbone-weights\): cannot download"):
        cli.preflight(config, verbose=False)
    assert not os.path.exists(tmp_path / "out")


def test_imagenet_weights_in_the_cache_need_no_network(offline_imagenet, monkeypatch):
    content = b"weights"
    (offline_imagenet / backbones.imagenet_weights_file("resnet50_v2").file_name).write_bytes(content)
    real = backbones.imagenet_weights_file
    monkeypatch.setattr(
        backbones, "imagenet_weights_file", lambda name: real(name)._replace(file_hash=hashlib.md5(content).hexdigest())
    )
    assert backbones.ensure_imagenet_weights("resnet50_v2").endswith("_notop.h5")
    # Incomplete (another hash): downloaded again, which fails here.
    (offline_imagenet / backbones.imagenet_weights_file("resnet50_v2").file_name).write_bytes(b"weigh")
    with pytest.raises(backbones.BackboneWeightsError):
        backbones.ensure_imagenet_weights("resnet50_v2")


def test_small_networks_and_none_need_no_weights(offline_imagenet):
    backbones.check_backbone_weights(TrainConfig(network="tutorial_cnn", backbone_weights="imagenet"), (28, 28, 1))
    backbones.check_backbone_weights(TrainConfig(network="resnet50_v2", backbone_weights="none"), SHAPE)


@pytest.mark.slow
def test_weights_file_checked_and_loaded(tmp_path):
    saved = backbones.build_backbone("mobilenet_v3_small", SHAPE, "none")
    path = str(tmp_path / "mobilenet.weights.h5")
    saved.save_weights(path)
    train = TrainConfig(network="mobilenet_v3_small", backbone_weights=path)
    backbones.check_backbone_weights(train, SHAPE)
    model = network.build_model(SHAPE, 8, network="mobilenet_v3_small", backbone_weights=path)
    for loaded, original in zip(backbones.backbone_of(model).get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(loaded, original)
    for bad, problem in [(str(tmp_path / "missing.weights.h5"), "no such file"), (str(tmp_path), "no such file")]:
        with pytest.raises(backbones.BackboneWeightsError, match=problem):
            backbones.check_backbone_weights(TrainConfig(network="mobilenet_v3_small", backbone_weights=bad), SHAPE)
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(backbones.BackboneWeightsError, match=r"weights.npz: not a Keras weights file"):
        backbones.check_backbone_weights(TrainConfig(network="mobilenet_v3_small", backbone_weights=str(other)), SHAPE)
    # Another backbone's file: a one-line error naming the file.
    with pytest.raises(backbones.BackboneWeightsError) as err:
        backbones.check_backbone_weights(TrainConfig(network="mobilenet_v3_large", backbone_weights=path), SHAPE)
    assert path in str(err.value) and "\n" not in str(err.value) and "mobilenet_v3_large" in str(err.value)


# -- freeze, then fine-tune -----------------------------------------------------------------------

FREEZE = TrainConfig(
    network="mobilenet_v3_small",
    backbone_weights="none",
    batch_size=8,
    examples_per_class=4,
    embedding_dim=8,
    dropout=0.0,
    learning_rate=0.01,
    freeze_backbone_epochs=1,
    fine_tune_lr_factor=0.1,
    epochs=3,
    checkpoint_every=1,
)
PLAN = {"epochs": 3, "steps_per_epoch": 2}


def batches():
    rng = np.random.default_rng(5)
    data = trainer.Split.from_whole(
        tf.data.Dataset.from_tensors((rng.random((32, *SHAPE), np.float32), np.arange(32) % 4))
    )
    return trainer.training_batches(data, FREEZE)


def test_phases_and_learning_rates():
    assert [trainer.phase_at(s, PLAN, FREEZE) for s in range(6)] == ["frozen"] * 2 + ["fine_tune"] * 4
    assert trainer.phase_at(0, PLAN, TrainConfig()) == "all"
    assert trainer.learning_rate(FREEZE, PLAN, "fine_tune") == pytest.approx(0.001)
    assert trainer.learning_rate(FREEZE, PLAN, "frozen") == 0.01


@pytest.mark.slow
def test_frozen_epochs_train_the_head_then_everything_at_the_lower_rate(monkeypatch):
    keras.utils.set_random_seed(1)
    model = trainer.compiled_model(SHAPE, FREEZE, PLAN)
    backbone = backbones.backbone_of(model)
    assert not backbone.trainable and float(model.optimizer.learning_rate) == pytest.approx(0.01)
    start_backbone, start_head = backbone.get_weights(), model.layers[-2].get_weights()
    seen = {}
    real_fit_from = trainer.fit_from

    def spy(model_, make_batches, plan, start, switch_step, on_switch, **fit_args):
        def switch():
            seen["backbone"], seen["head"] = backbone.get_weights(), model.layers[-2].get_weights()
            on_switch()

        real_fit_from(model_, make_batches, plan, start, switch_step, switch, **fit_args)

    monkeypatch.setattr(trainer, "fit_from", spy)
    trainer.fit_phases(model, batches, PLAN, 0, FREEZE, verbose=0)
    # Frozen epoch: the backbone unchanged, batch-norm statistics included; the head trained.
    for before, after in zip(start_backbone, seen["backbone"]):
        np.testing.assert_array_equal(before, after)
    assert any(not np.array_equal(a, b) for a, b in zip(start_head, seen["head"]))
    # Then everything trains, at learning rate x 0.1, with a fresh optimizer.
    assert backbone.trainable and float(model.optimizer.learning_rate) == pytest.approx(0.001)
    assert int(model.optimizer.iterations.numpy()) == 4
    assert any(not np.array_equal(a, b) for a, b in zip(seen["backbone"], backbone.get_weights()))


@pytest.mark.slow
def test_resume_in_either_phase_trains_as_an_uninterrupted_run(tmp_path, monkeypatch):
    """Backups at every step (phase in latest.json); a rerun from the frozen phase (step 1), from the
    switch (step 2: the fine-tuning optimizer, just built) and from inside fine-tuning (step 5) ends
    with the uninterrupted run's weights."""
    real_save = checkpoints.save

    def save_each(model, directory, step, extra=None):  # keep every step's backup apart
        real_save(model, os.path.join(directory, str(step)), step, extra)

    monkeypatch.setattr(checkpoints, "save", save_each)
    backup = str(tmp_path / "backup")

    def run(start_dir=None):
        keras.utils.set_random_seed(3)
        model, start = trainer.restored_model(
            SHAPE, FREEZE, PLAN, start_dir or str(tmp_path / "none"), tf.distribute.get_strategy()
        )
        callbacks = (
            [checkpoints.StepBackup(backup, 1, start, state=lambda s: {"phase": trainer.phase_at(s, PLAN, FREEZE)})]
            if start_dir is None
            else []
        )
        trainer.fit_phases(model, batches, PLAN, start, FREEZE, callbacks=callbacks, verbose=0)
        return start, model.get_weights()

    _, whole = run()
    phases = {s: json.load(open(os.path.join(backup, str(s), checkpoints.LATEST)))["phase"] for s in range(1, 6)}
    assert phases == {1: "frozen", 2: "fine_tune", 3: "fine_tune", 4: "fine_tune", 5: "fine_tune"}
    for step in (1, 2, 5):
        start, resumed = run(os.path.join(backup, str(step)))
        assert start == step
        for a, b in zip(whole, resumed):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_frozen_backups_leave_the_backbone_to_the_weights_file(tmp_path):
    """latest.json keeps only the random-generator states: a frozen backbone's (non-trainable) weights
    are in the weights file, not in JSON."""
    model = trainer.compiled_model(SHAPE, FREEZE, PLAN)
    checkpoints.save(model, str(tmp_path), 1, {"phase": "frozen"})
    state = checkpoints.read_state(str(tmp_path))
    assert state["phase"] == "frozen" and os.path.getsize(tmp_path / checkpoints.LATEST) < 10_000


@pytest.mark.slow
def test_backbone_freeze_and_fine_tune_under_mirrored_strategy():
    run = subprocess.run(
        [sys.executable, os.path.join(HERE, "two_replica_backbone.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=HERE,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["backbone_trainable"]
    assert result["frozen_backbone_change"] == 0.0 and result["backbone_change"] > 0
    assert np.isfinite(result["losses"]).all()
    assert result["learning_rate"] == pytest.approx(0.001)


# -- caching decoded examples ---------------------------------------------------------------------


def test_cache_only_what_fits_a_quarter_of_the_memory():
    gib = 1 << 30
    assert trainer.fits_in_cache(60_000, (28, 28, 1), memory_bytes=8 * gib)  # MNIST: 188 MB
    assert trainer.decoded_bytes(1, (224, 224, 3)) == 602_112
    assert not trainer.fits_in_cache(100_000, (224, 224, 3), memory_bytes=64 * gib)  # 60 GB
    assert trainer.fits_in_cache(20_000, (224, 224, 3), memory_bytes=64 * gib)  # 12 GB of 16
    assert not trainer.fits_in_cache(20_000, (224, 224, 3), memory_bytes=32 * gib)
    assert trainer.shuffle_buffer((28, 28, 1), memory_bytes=8 * gib) == 100_000
    assert trainer.shuffle_buffer((224, 224, 3), memory_bytes=16 * gib) == 3_566  # 2 GiB / 602 KB
    assert trainer.machine_memory_bytes() > gib


def test_raw_records_are_counted_without_decoding(tmp_path):
    import tiny_training_inputs

    path = str(tmp_path / "train.gz")
    tiny_training_inputs.write_examples(path, 37, seed=0)
    assert trainer.count_records([path]) == 37


@pytest.mark.slow
def test_a_cached_split_is_counted_and_read_as_decoded_once(tmp_path):
    import tensorflow_transform as tft
    import tiny_training_inputs

    inputs = tiny_training_inputs.make_inputs(str(tmp_path), n_train=2500, n_eval=8)
    graph = tft.TFTransformOutput(os.path.join(inputs, "transform_graph"))
    files = [os.path.join(inputs, "examples", "train.gz")]
    split = trainer.read_split(files, graph, (28, 28, 1), "train")
    assert split.size == 2500 and split.whole is not None
    decoded = [
        (image.numpy().tobytes(), int(label)) for image, label in trainer.transformed_batches(files, graph).unbatch()
    ]
    assert len(decoded) == 2500
    os.remove(files[0])  # what follows reads the cache that counting filled
    for _ in range(2):
        assert [(image.numpy().tobytes(), int(label)) for image, label in split.examples] == decoded
    np.testing.assert_array_equal(split.labels, [label for _, label in decoded])
    # Class-balanced batches are gathered from the cached split.
    images, labels = next(iter(trainer.training_batches(split, TrainConfig(batch_size=8, examples_per_class=4))))
    label_of = dict(decoded)
    assert [label_of[image.tobytes()] for image in images.numpy()] == labels.numpy().tolist()
    assert sorted(collections.Counter(labels.numpy().tolist()).values()) == [4, 4]
