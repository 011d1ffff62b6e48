"""The tutorial's network, the step plan, and the serving export."""
import numpy as np

from triplet_tfx.components import model
from triplet_tfx.pipeline.config import TrainConfig


def test_network_is_the_tutorials():
    net = model.build_model((28, 28, 1), 256)
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == ["InputLayer", "Conv2D", "MaxPooling2D", "Dropout", "Conv2D", "MaxPooling2D", "Dropout",
                     "Flatten", "Dense", "UnitNormalization"]
    conv1, conv2 = net.layers[1], net.layers[4]
    assert (conv1.filters, conv1.kernel_size, conv2.filters, conv2.kernel_size) == (64, (2, 2), 32, (2, 2))
    assert [net.layers[i].rate for i in (3, 6)] == [0.3, 0.3]
    # Parameters: conv 64*(2*2*1)+64, conv 32*(2*2*64)+32, dense (7*7*32)*256+256.
    assert net.count_params() == (64 * 4 + 64) + (32 * 4 * 64 + 32) + (7 * 7 * 32 * 256 + 256)


def test_embeddings_have_unit_norm():
    net = model.build_model((28, 28, 1), 256)
    out = net(np.random.default_rng(0).random((5, 28, 28, 1), np.float32), training=False).numpy()
    assert out.shape == (5, 256)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_step_plan_full_epochs_and_cap():
    assert model.step_plan(60000, TrainConfig()) == {"epochs": 5, "steps_per_epoch": 1875}
    assert model.step_plan(100, TrainConfig(batch_size=32)) == {"epochs": 5, "steps_per_epoch": 4}
    plan = model.step_plan(2000, TrainConfig(batch_size=32, epochs=5, max_steps=100))
    assert plan["epochs"] * plan["steps_per_epoch"] >= 100 and plan["epochs"] == 2
