"""Run as a script by backbones_test.py (a process of its own: the logical devices must be set before
TensorFlow initialises its devices). A tiny backbone (mobilenet_v3_small, random weights, 32x32x3) trained
by the Trainer's fit_phases under MirroredStrategy over two logical CPU devices: one frozen epoch, then
fine-tuning, compiled in the strategy's scope; prints JSON."""

import json

import triplet_tfx.components  # noqa: F401  (Keras 3)

# isort: split
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from triplet_tfx.components.config import TrainConfig  # noqa: E402
from triplet_tfx.components.training import backbones, trainer  # noqa: E402


class Losses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses, self.frozen = [], None

    def on_epoch_end(self, epoch, logs=None):
        self.losses.append(float(logs["loss"]))


def main():
    train = TrainConfig(
        network="mobilenet_v3_small",
        backbone_weights="none",
        batch_size=16,
        examples_per_class=4,
        embedding_dim=8,
        dropout=0.0,
        learning_rate=0.01,
        freeze_backbone_epochs=1,
        epochs=2,
        strategy="mirrored",
    )
    plan = {"epochs": 2, "steps_per_epoch": 2}
    rng = np.random.default_rng(0)
    data = trainer.Split.from_whole(
        tf.data.Dataset.from_tensors((rng.random((64, 32, 32, 3), np.float32), np.arange(64) % 4))
    )
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = trainer.compiled_model((32, 32, 3), train, plan, strategy.num_replicas_in_sync)
    backbone = backbones.backbone_of(model)
    initial = backbone.get_weights()
    losses = Losses()
    after_frozen = {}
    real_compile_phase = trainer.compile_phase

    def spy(*args, **kwargs):
        after_frozen["weights"] = backbone.get_weights()
        real_compile_phase(*args, **kwargs)

    trainer.compile_phase = spy
    trainer.fit_phases(
        model, lambda: trainer.training_batches(data, train), plan, 0, train, strategy, callbacks=[losses], verbose=0
    )
    print(
        json.dumps(
            {
                "replicas": strategy.num_replicas_in_sync,
                "backbone_trainable": backbone.trainable,
                "losses": losses.losses,
                "frozen_backbone_change": max(
                    float(np.abs(a - b).max()) for a, b in zip(initial, after_frozen["weights"])
                ),
                "backbone_change": max(float(np.abs(a - b).max()) for a, b in zip(initial, backbone.get_weights())),
                "learning_rate": float(model.optimizer.learning_rate.numpy()),
            }
        )
    )


if __name__ == "__main__":
    main()
