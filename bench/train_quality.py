"""Quality of one training configuration on full MNIST, without the pipeline around it.

Trains the project's network with the project's loss and batching on the 60k training images
held in memory, then scores the 10k test embeddings leave-one-out with the project's metrics:
the quick way to compare configurations (the README's experiments table). With a class split
(--train-classes 0-4 --eval-classes 5-9, or --class-split random:SEED) it trains on the train
classes only and scores the test images of the other classes: unseen-class quality. The configuration
that wins goes into components/config.py PROFILES and is then measured through the pipeline
with bench/bench_pipeline.py.

  # the recommended profile, in float32 (flags: TrainConfig's fields)
  .venv/bin/python bench/train_quality.py --network strided --batch-size 160 --examples-per-class 32 \\
      --epochs 12 --learning-rate 0.004 --lr-schedule cosine --margin 0.2 --dropout 0 --augment-shift 0.05 \\
      --precision float32
"""

import argparse
import dataclasses
import json
import time

import triplet_tfx.pipeline  # noqa: F401  (pins the Keras flavour before TensorFlow loads)

# isort: split
import keras
import numpy as np
import tensorflow as tf

from triplet_tfx.components.config import DataConfig, PipelineConfig, TrainConfig
from triplet_tfx.components.data import data_sources
from triplet_tfx.components.evaluation import metrics
from triplet_tfx.components.training import network, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        kind = type(getattr(defaults, field.name))
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(
                flag,
                type=int if field.name in ("examples_per_class", "max_steps") else kind,
                default=getattr(defaults, field.name),
            )
    for flag, help_text in (
        ("--train-classes", "train only on these classes, e.g. 0-4"),
        ("--eval-classes", "score only these classes of the test set, e.g. 5-9"),
        ("--class-split", "random:SEED, a seeded random half to train on"),
    ):
        parser.add_argument(flag, default="", help=help_text + " (as the pipeline's flags)")
    args = parser.parse_args()
    train = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    data = DataConfig(train_classes=args.train_classes, eval_classes=args.eval_classes, class_split=args.class_split)
    PipelineConfig(data=data, train=train).validate()
    classes = data.classes_by_split

    mnist = data_sources.load_mnist()
    train_images, train_labels = mnist["train"]
    test_images, test_labels = mnist["test"]
    if classes:  # unseen-class evaluation: disjoint classes, labels keep their ids
        keep = np.isin(train_labels, classes["train"])
        train_images, train_labels = train_images[keep], train_labels[keep]
        keep = np.isin(test_labels, classes["eval"])
        test_images, test_labels = test_images[keep], test_labels[keep]
    keras.utils.set_random_seed(train.seed)
    examples = trainer.Split.from_whole(
        tf.data.Dataset.from_tensors((train_images.astype("float32") / 255.0, train_labels))
    )
    batches = trainer.training_batches(examples, train)
    plan = trainer.step_plan(len(train_labels), train)
    net = trainer.compiled_model(train_images.shape[1:], train, plan)
    start = time.time()
    net.fit(batches, verbose=2, **plan)
    seconds = time.time() - start
    # float32, as exported
    inference = network.build_model(train_images.shape[1:], train.embedding_dim, network=train.network)
    inference.set_weights(net.get_weights())

    def scores(images, labels, prefix=""):
        embeddings = inference.predict(images.astype("float32") / 255.0, batch_size=1024, verbose=0)
        result = metrics.evaluate_embeddings(embeddings, labels, clustering=False)
        return {prefix + k: round(result[k], 4) for k in ("precision_at_1", "r_precision", "map_at_r")}

    # The same scores on 10k training images tell over-fitting (train >> test) from under-fitting.
    print(
        json.dumps(
            {
                "train": dataclasses.asdict(train),
                "classes": classes,
                "train_seconds": round(seconds, 1),
                **scores(test_images, test_labels),
                **scores(train_images[:10_000], train_labels[:10_000], prefix="train_"),
            }
        )
    )


if __name__ == "__main__":
    main()
