"""The tutorial's network, the step plan, and the serving export."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components.config import TrainConfig
from triplet_tfx.components.training import network, trainer


def test_network_is_the_tutorials():
    net = network.build_model((28, 28, 1), 256)
    kinds = [type(layer).__name__ for layer in net.layers]
    # Conv2D -> MaxPooling2D(2) pairs as PooledConv2D (pooled_conv_test.py: the same values).
    assert kinds == [
        "InputLayer",
        "PooledConv2D",
        "Dropout16",
        "PooledConv2D",
        "Dropout16",
        "Flatten",
        "Dense",
        "UnitNormalization",
    ]
    conv1, conv2 = net.layers[1], net.layers[3]
    assert (conv1.filters, conv1.kernel_size, conv2.filters, conv2.kernel_size) == (64, (2, 2), 32, (2, 2))
    assert [(conv.padding, conv.activation.__name__, conv.pool_size) for conv in (conv1, conv2)] == [
        ("same", "relu", 2)
    ] * 2
    assert [net.layers[i].rate for i in (2, 4)] == [0.3, 0.3]
    # Parameters: conv 64*(2*2*1)+64, conv 32*(2*2*64)+32, dense (7*7*32)*256+256.
    assert net.count_params() == (64 * 4 + 64) + (32 * 4 * 64 + 32) + (7 * 7 * 32 * 256 + 256)


def test_embeddings_have_unit_norm():
    net = network.build_model((28, 28, 1), 256)
    out = net(np.random.default_rng(0).random((5, 28, 28, 1), np.float32), training=False).numpy()
    assert out.shape == (5, 256)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_step_plan_full_epochs_and_cap():
    assert trainer.step_plan(60000, TrainConfig()) == {"epochs": 5, "steps_per_epoch": 1875}
    assert trainer.step_plan(100, TrainConfig(batch_size=32)) == {"epochs": 5, "steps_per_epoch": 4}
    plan = trainer.step_plan(2000, TrainConfig(batch_size=32, epochs=5, max_steps=100))
    assert plan == {"epochs": 2, "steps_per_epoch": 50}
    # --max-steps caps the total: 94 steps per epoch, 20 epochs, at most 1,600 steps (not 18 x 89 = 1,602).
    plan = trainer.step_plan(3000, TrainConfig(batch_size=32, epochs=20, max_steps=1600))
    assert plan == {"epochs": 18, "steps_per_epoch": 88}


def test_steps_per_execution_divides_the_epoch_and_the_backup_interval():
    assert trainer.steps_per_execution({"epochs": 5, "steps_per_epoch": 1875}, TrainConfig()) == 25  # gcd 125
    assert trainer.steps_per_execution({"epochs": 6, "steps_per_epoch": 8}, TrainConfig(checkpoint_every=5)) == 1
    assert trainer.steps_per_execution({"epochs": 1, "steps_per_epoch": 4096}, TrainConfig(checkpoint_every=1024)) == 32
    assert trainer.steps_per_execution({"epochs": 1, "steps_per_epoch": 20}, TrainConfig()) == 20
    assert trainer.steps_per_execution({"epochs": 5, "steps_per_epoch": 1875}, TrainConfig(), replicas=2) == 1


@pytest.mark.parametrize(
    "size, batches, shapes",
    [(70, 2, [32, 32]), (64, 2, [32, 32]), (10, 1, [10]), (0, 0, [])],
)
def test_validation_batches_have_the_training_batch_size(size, batches, shapes):
    """Whole batches of the training batch size, of a static size (the short last one left out)
    unless a short batch is all there is."""
    images = np.arange(size * 4, dtype=np.float32).reshape(size, 2, 2, 1)
    split = trainer.Split(tf.data.Dataset.from_tensor_slices((images, np.arange(size))), size)
    data, examples = trainer.validation_data(split, 32)
    assert int(data.cardinality()) == batches and examples == sum(shapes)
    assert data.element_spec[0].shape[0] == (32 if size >= 32 else None)
    seen = [labels.numpy().tolist() for _, labels in data]
    assert [len(labels) for labels in seen] == shapes
    assert sum(seen, []) == list(range(sum(shapes)))  # in order, the first examples


def test_the_first_step_creates_no_variables():
    """compile builds Adam's slots: a variable created while tf.function traces the step makes it
    trace the whole step a second time."""
    train = TrainConfig(embedding_dim=16)
    plan = {"epochs": 1, "steps_per_epoch": 2}
    net = trainer.compiled_model((28, 28, 1), train, plan)
    assert len(net.optimizer.variables) == 2 + 2 * len(net.trainable_variables)  # iterations, rate, m, v
    created = []

    def record(next_creator, **kwargs):
        created.append(kwargs.get("name"))
        return next_creator(**kwargs)

    rng = np.random.default_rng(0)
    batches = tf.data.Dataset.from_tensor_slices((rng.random((64, 28, 28, 1), np.float32), np.arange(64) % 4))
    with tf.variable_creator_scope(record):
        net.fit(batches.batch(32), epochs=1, steps_per_epoch=2, verbose=0)
    assert created == [] and int(net.optimizer.iterations.numpy()) == 2


@pytest.mark.slow
def test_several_steps_per_call_train_as_one_step_per_call(tmp_path, monkeypatch):
    """Steps per execution change how often Python runs, not the training: the same batches, the same
    dropout masks and updates, and the backups at the same steps."""
    from triplet_tfx.components.training import checkpoints

    rng = np.random.default_rng(0)
    # Streamed class-balanced batches (a split over the memory budget).
    data = trainer.Split(
        tf.data.Dataset.from_tensor_slices((rng.random((64, 28, 28, 1), np.float32), np.arange(64) % 4)), 64
    )
    train = TrainConfig(embedding_dim=16, examples_per_class=8, checkpoint_every=4)
    plan = {"epochs": 2, "steps_per_epoch": 8}
    weights, saved = [], []
    for steps_per_call in (1, trainer.steps_per_execution(plan, train)):
        keras.utils.set_random_seed(7)
        net = trainer.compiled_model((28, 28, 1), train, plan, steps_per_call=steps_per_call)
        backup = checkpoints.StepBackup(str(tmp_path / f"backup-{steps_per_call}"), train.checkpoint_every, 0)
        steps = []
        monkeypatch.setattr(checkpoints, "save", lambda model, directory, step, steps=steps: steps.append(step))
        net.fit(trainer.training_batches(data, train), epochs=2, steps_per_epoch=8, callbacks=[backup], verbose=0)
        assert int(net.optimizer.iterations.numpy()) == 16
        weights.append(net.get_weights())
        saved.append(steps)
    assert net.steps_per_execution == 4
    assert saved == [[4, 8, 12], [4, 8, 12]]
    for one, several in zip(*weights):
        np.testing.assert_allclose(several, one, rtol=1e-5, atol=1e-6)


def test_mixed_precision_computes_in_bfloat16_and_exports_float32():
    images = np.random.default_rng(0).random((8, 28, 28, 1), np.float32)
    mixed = network.build_model((28, 28, 1), 256, precision="mixed_bfloat16")
    assert mixed.layers[1].compute_dtype == "bfloat16" and mixed.layers[1].kernel.dtype == "float32"
    out = mixed(images, training=False)
    assert out.dtype == "float32"
    np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=1), 1.0, rtol=1e-5)
    # The export copies the weights into a float32 network: same embeddings up to bfloat16 rounding.
    full = network.build_model((28, 28, 1), 256)
    full.set_weights(mixed.get_weights())
    exact = full(images, training=False).numpy()
    assert np.abs(exact - out.numpy()).max() < 0.02
    assert not np.array_equal(exact, out.numpy())


def test_fit_inputs_are_data_sharded_without_an_autotuning_thread():
    """tf.data's autotuning thread made model.fit's return wait up to a minute for the teardown of
    the input's iterator; DATA sharding keeps each global batch what one device would see."""
    whole = tf.data.Dataset.from_tensors((np.zeros((8, 28, 28, 1), np.float32), np.arange(8) % 2))
    split = trainer.Split.from_whole(whole)
    for train in (TrainConfig(batch_size=4), TrainConfig(batch_size=4, examples_per_class=2, augment_shift=0.1)):
        options = trainer.training_batches(split, train).options()
        assert options.autotune.enabled is False
        assert options.experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "streamed"])
def test_shuffled_batches_have_a_static_size_when_none_is_short(in_memory):
    """A static batch size lets the step's graph trace one of the loss's sorting paths; a split that
    the batch size does not divide keeps its short last batch, and so its dynamic size. Each epoch
    holds every example once."""
    for size, static in ((12, True), (10, False)):
        whole = tf.data.Dataset.from_tensors((np.zeros((size, 28, 28, 1), np.float32), np.arange(size)))
        split = trainer.Split.from_whole(whole) if in_memory else trainer.Split(whole.unbatch(), size)
        batches = trainer.training_batches(split, TrainConfig(batch_size=4))
        assert batches.element_spec[0].shape[0] == (4 if static else None)
        epochs = [labels.numpy() for _, labels in batches.take(2 * -(-size // 4))]
        assert [len(labels) for labels in epochs] == ([4, 4, 4] * 2 if static else [4, 4, 2] * 2)
        assert sorted(np.concatenate(epochs).tolist()) == sorted(list(range(size)) * 2)


def test_augment_shift_moves_images_within_the_bound():
    image = np.zeros((28, 28, 1), np.float32)
    image[14, 14] = 1.0
    examples = trainer.Split(tf.data.Dataset.from_tensor_slices((np.stack([image] * 64), np.zeros(64, np.int64))), 64)
    batch, labels = next(iter(trainer.training_batches(examples, TrainConfig(batch_size=64, augment_shift=0.1))))
    assert batch.shape == (64, 28, 28, 1) and labels.shape == (64,)
    rows, cols = np.nonzero(batch.numpy()[..., 0].max(axis=0) > 0.5)
    moved = {(r, c) for r, c in zip(rows, cols)}
    assert len(moved) > 3  # different shifts for different images
    assert all(abs(r - 14) <= 3 and abs(c - 14) <= 3 for r, c in moved)  # 10% of 28 = 2.8 pixels
    plain, _ = next(iter(trainer.training_batches(examples, TrainConfig(batch_size=64))))
    assert np.array_equal(plain.numpy(), np.stack([image] * 64))


def test_dropout_rate_is_configurable_and_inactive_at_inference():
    images = np.random.default_rng(0).random((4, 28, 28, 1), np.float32)
    tutorial = network.build_model((28, 28, 1), 256)
    lighter = network.build_model((28, 28, 1), 256, dropout=0.1)
    assert [layer.rate for layer in lighter.layers if hasattr(layer, "rate")] == [0.1, 0.1]
    lighter.set_weights(tutorial.get_weights())
    np.testing.assert_allclose(lighter(images, training=False), tutorial(images, training=False), rtol=1e-6)
    assert not np.allclose(tutorial(images, training=True), tutorial(images, training=False))


def test_auto_precision_uses_native_low_precision_only():
    assert trainer.choose_precision([(8, 0)], set()) == "mixed_float16"
    assert trainer.choose_precision([(7, 5), (6, 1)], {"avx512_bf16"}) == "float32"  # the slowest GPU decides
    assert trainer.choose_precision([], {"avx2", "avx512_bf16"}) == "mixed_bfloat16"
    assert trainer.choose_precision([], {"amx_bf16"}) == "mixed_bfloat16"
    assert trainer.choose_precision([], {"avx2", "avx512f"}) == "float32"
    assert trainer.machine_precision("float32") == "float32"
    assert trainer.machine_precision("auto") in ("float32", "mixed_bfloat16", "mixed_float16")


def test_float16_training_scales_the_loss():
    plan = {"epochs": 1, "steps_per_epoch": 1}
    net = trainer.compiled_model((28, 28, 1), TrainConfig(precision="mixed_float16"), plan)
    assert isinstance(net.optimizer, keras.optimizers.LossScaleOptimizer)
    assert net.layers[1].compute_dtype == "float16"
    assert not isinstance(
        trainer.compiled_model((28, 28, 1), TrainConfig(), plan).optimizer, keras.optimizers.LossScaleOptimizer
    )
