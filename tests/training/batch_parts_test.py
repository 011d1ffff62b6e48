"""A CPU's batch in parts side by side: when it applies, that it trains the same function, and
that it sets TensorFlow's threads only before the runtime starts."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components import examples_io
from triplet_tfx.components.config import SMALL_NETWORKS, TrainConfig
from triplet_tfx.components.training import batch_parts, losses, network, trainer


def test_parts_one_per_cpu_on_small_cpu_machines_for_per_example_networks_only():
    tutorial = TrainConfig()
    assert batch_parts.parts_for(tutorial, "default", gpus=0, cpus=2) == 2
    assert batch_parts.parts_for(tutorial, "one_device", gpus=0, cpus=4) == 4
    assert batch_parts.parts_for(tutorial, "default", gpus=0, cpus=1) == 1
    assert batch_parts.parts_for(tutorial, "default", gpus=0, cpus=16) == 1  # auto: not measured there
    assert batch_parts.parts_for(TrainConfig(batch_parts=3), "default", gpus=0, cpus=16) == 3
    assert batch_parts.parts_for(TrainConfig(batch_parts=1), "default", gpus=0, cpus=2) == 1
    # The whole batch: a GPU, replicas, several processes, batch normalisation.
    assert batch_parts.parts_for(tutorial, "default", gpus=1, cpus=2) == 1
    assert batch_parts.parts_for(tutorial, "mirrored", gpus=0, cpus=2) == 1
    assert batch_parts.parts_for(TrainConfig(workers=2), "multi_worker", gpus=0, cpus=2) == 1
    assert batch_parts.parts_for(TrainConfig(network="strided", batch_parts=2), "default", gpus=0, cpus=2) == 1


@pytest.mark.parametrize("name", SMALL_NETWORKS)
def test_per_example_networks_are_those_whose_training_output_ignores_the_rest_of_the_batch(name):
    keras.utils.set_random_seed(0)
    net = network.build_model((28, 28, 1), 16, dropout=0.0, network=name)
    images = np.random.default_rng(0).random((12, 28, 28, 1), np.float32)
    whole = net(images, training=True).numpy()
    parts = np.concatenate([net(images[:5], training=True).numpy(), net(images[5:], training=True).numpy()])
    assert np.allclose(whole, parts, atol=1e-5) == (name in network.PER_EXAMPLE_NETWORKS)


@pytest.mark.parametrize("size", [1, 2, 5, 32])
def test_the_batch_in_parts_gives_the_whole_batchs_embeddings_and_gradients(size):
    """Any batch size, a last batch smaller than the parts included; the loss sees the batch in order."""
    keras.utils.set_random_seed(0)
    net = network.build_model((28, 28, 1), 16, dropout=0.0)
    split = batch_parts.BatchParts(net, 3)
    rng = np.random.default_rng(1)
    images = tf.constant(rng.random((size, 28, 28, 1), np.float32))
    labels = tf.constant(np.arange(size) % 4)
    loss = losses.TripletSemiHardLoss(margin=1.0)
    results = []
    for model in (net, split):
        with tf.GradientTape() as tape:
            embeddings = model(images, training=True)
            value = loss(labels, embeddings)
        results.append((embeddings.numpy(), value.numpy(), tape.gradient(value, net.trainable_variables)))
    (whole, whole_loss, whole_grads), (parts, parts_loss, parts_grads) = results
    np.testing.assert_allclose(parts, whole, atol=1e-6)
    np.testing.assert_allclose(parts_loss, whole_loss, rtol=1e-6)
    for part_grad, whole_grad in zip(parts_grads, whole_grads):
        np.testing.assert_allclose(part_grad.numpy(), whole_grad.numpy(), rtol=1e-4, atol=1e-6)
    assert split.trainable_variables == net.trainable_variables
    assert batch_parts.network_of(split) is net and batch_parts.network_of(net) is net


@pytest.mark.slow
def test_a_model_in_parts_trains_and_its_backup_resumes_in_parts_or_whole(tmp_path):
    from triplet_tfx.components.training import checkpoints

    train = TrainConfig(embedding_dim=16, batch_size=8)
    plan = {"epochs": 1, "steps_per_epoch": 4}
    rng = np.random.default_rng(0)
    batches = tf.data.Dataset.from_tensor_slices((rng.random((32, 28, 28, 1), np.float32), np.arange(32) % 4)).batch(8)
    model = trainer.compiled_model((28, 28, 1), train, plan, steps_per_call=2, parts=2)
    assert isinstance(model, batch_parts.BatchParts)
    before = [w.copy() for w in model.get_weights()]
    model.fit(batches, epochs=1, steps_per_epoch=4, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 4
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    checkpoints.save(model, str(tmp_path), 4)
    # The backup resumes in parts or whole (a rerun on a machine of another size): weights and Adam's state.
    for parts in (2, 1):
        again = trainer.compiled_model((28, 28, 1), train, plan, steps_per_call=2, parts=parts)
        assert checkpoints.restore(again, str(tmp_path)) == 4
        for saved, restored in zip(model.get_weights(), again.get_weights()):
            np.testing.assert_array_equal(restored, saved)
        for saved, restored in zip(model.optimizer.variables, again.optimizer.variables):
            np.testing.assert_array_equal(restored.numpy(), saved.numpy())
        again.fit(batches, epochs=1, steps_per_epoch=2, verbose=0)
        assert int(again.optimizer.iterations.numpy()) == 6


def test_embedding_batches_at_once_keeps_their_order(monkeypatch):
    """Several serving calls at once (each op on one thread): the embeddings in the examples' order."""
    monkeypatch.setattr(examples_io, "EMBED_BATCH", 3)
    seen = []

    class Signature:
        def __call__(self, examples):
            values = [float(e.decode()) for e in examples.numpy()]
            seen.append(values)
            return {examples_io.EMBEDDING_KEY: tf.constant([[v, -v] for v in values])}

    class Loaded:
        signatures = {examples_io.SERVING_SIGNATURE: Signature()}

    monkeypatch.setattr(examples_io, "load_model", lambda path: Loaded())
    monkeypatch.setattr(examples_io, "model_path", lambda model: "model")
    monkeypatch.setattr(examples_io, "calls_at_once", lambda: 3)
    model = type("Model", (), {"uri": "/runs/Trainer/model/2"})()
    out = examples_io.embed(model, [str(i).encode() for i in range(10)])
    np.testing.assert_array_equal(out, [[i, -i] for i in range(10)])
    assert sorted(len(batch) for batch in seen) == [1, 3, 3, 3]


@pytest.mark.slow
def test_threads_are_set_before_the_runtime_starts_and_left_alone_after():
    """In fresh interpreters: parts set one thread per op and as many ops at once, and embedding runs
    that many calls at once; once an op has run, the threads stay and the batch trains whole."""
    script = textwrap.dedent(
        """
        import sys
        import triplet_tfx.pipeline  # pins Keras 3
        import tensorflow as tf
        from triplet_tfx.components import examples_io
        from triplet_tfx.components.config import TrainConfig
        from triplet_tfx.components.training import batch_parts
        if sys.argv[1] == "late":
            tf.constant(1.0) + 1.0  # the runtime starts
        parts = batch_parts.parts_in_this_process(TrainConfig(batch_parts=2), "default")
        print(parts, tf.config.threading.get_intra_op_parallelism_threads(),
              tf.config.threading.get_inter_op_parallelism_threads(), examples_io.calls_at_once())
        """
    )
    lines = []
    for when in ("early", "late"):
        done = subprocess.run([sys.executable, "-c", script, when], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        lines.append(done.stdout.split())
    assert lines == [["2", "1", "2", "2"], ["1", "0", "0", "1"]]
