"""Run as a script by distribute_test.py (a process of its own: the logical devices must be set before
TensorFlow initialises its devices). One Trainer step, from the same weights on the same global batch,
on one device and under MirroredStrategy over two logical CPU devices; prints JSON."""

import dataclasses
import json

import triplet_tfx.components  # noqa: F401  (Keras 3)

# isort: split
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from tiny_training_inputs import IMAGE_SHAPE, images_and_labels  # noqa: E402

from triplet_tfx.components.config import TrainConfig  # noqa: E402
from triplet_tfx.components.training import distribute, trainer  # noqa: E402


def one_step(strategy, train, initial, images, labels):
    plan = {"epochs": 1, "steps_per_epoch": 1}
    with strategy.scope():
        model = trainer.compiled_model(IMAGE_SHAPE, train, plan, strategy.num_replicas_in_sync)
    model.set_weights(initial)
    batch = tf.data.Dataset.from_tensors((images, labels)).repeat()
    history = model.fit(batch, epochs=1, steps_per_epoch=1, verbose=0)
    # After Adam's first step its first moments are (1 - beta_1) * gradient: the gradients themselves,
    # where the weights' update lr * g / (|g| + eps) hardly depends on their size.
    gradients = [m.numpy() / (1 - model.optimizer.beta_1) for m in model.optimizer._momentums]
    return history.history["loss"][0], model.get_weights(), gradients


def main():
    # A class-balanced global batch as class_balanced_batches lays it out: 4 classes x 4, class-contiguous,
    # so each of the 2 replicas gets 2 whole classes.
    images, labels = images_and_labels(64, seed=3)
    order = np.concatenate([np.flatnonzero(labels == c)[:4] for c in (2, 0, 3, 1)])
    images, labels = (images[order] / 255.0).astype(np.float32), labels[order].astype(np.int64)
    train = TrainConfig(
        batch_size=16, examples_per_class=4, dropout=0.0, embedding_dim=16, learning_rate=0.01, margin=0.5
    )
    tf.keras.utils.set_random_seed(0)
    initial = trainer.build_model(IMAGE_SHAPE, train.embedding_dim, dropout=0.0).get_weights()
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {
        "replicas": mirrored.num_replicas_in_sync,
        "per_replica_batch": distribute.replica_batch_size(train, mirrored.num_replicas_in_sync),
    }
    loss_one, weights_one, gradients_one = one_step(tf.distribute.get_strategy(), train, initial, images, labels)
    results["one_device"] = {
        "loss": loss_one,
        "max_weight_change": max(float(np.abs(a - b).max()) for a, b in zip(weights_one, initial)),
        "max_gradient": max(float(np.abs(g).max()) for g in gradients_one),
    }
    for mining in ("global", "replica"):
        mined = dataclasses.replace(train, mining=mining)
        loss, weights, gradients = one_step(mirrored, mined, initial, images, labels)
        diffs = np.concatenate([np.abs(a - b).ravel() for a, b in zip(weights_one, weights)])
        results[mining] = {
            "loss": loss,
            "max_weight_diff": float(diffs.max()),
            "weights_off_by_1e-5": int((diffs > 1e-5).sum()),
            "weights": int(diffs.size),
            "max_gradient_diff": max(float(np.abs(a - b).max()) for a, b in zip(gradients_one, gradients)),
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
