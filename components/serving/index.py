"""The `search` signature: exact k nearest neighbours among reference embeddings kept in the
SavedModel as variables (a checkpoint, not graph constants: no 2 GB proto limit).

`build_serving_model` wraps an embedding SavedModel (the Trainer's export, `training/export.py`) and an
index of its own embeddings of the reference examples into one SavedModel with four signatures:
the three embedding signatures, unchanged (the very functions the evaluator scored), and `search`.
Distances are Euclidean, computed as `metrics.nearest_neighbors` computes them
(|q|^2 - 2 q.r + |r|^2, clamped at zero, in float32); equal distances are ordered by the smaller
reference index (tf.math.top_k keeps the lower index first), as the evaluator orders them.
`search` also gives the neighbours' class names (the embedding SavedModel's id-ordered class
names, `signatures.read_class_names`), which the serving SavedModel keeps in its assets as well.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from triplet_tfx.components import contract, signatures
from triplet_tfx.components.contract import EMBEDDING_KEY, SERVING_SIGNATURE
from triplet_tfx.components.signatures import read_class_names, write_class_names

EMBEDDING_SIGNATURES = (SERVING_SIGNATURE, contract.EMBED_IMAGES_SIGNATURE, contract.EMBED_PIXELS_SIGNATURE)


def reference_ids(split: str, count: int) -> np.ndarray:
    """Stable ids of a split's examples: "<split>/<position in the split>" (ExampleGen's order)."""
    return np.array([f"{split}/{i}" for i in range(count)], dtype=object)


def names_of(labels: np.ndarray, class_names: Optional[Sequence[str]]) -> np.ndarray:
    """The class name of each class id (the id as text where the table has none)."""
    table = list(class_names or [])
    return np.array(
        [table[i] if 0 <= i < len(table) else str(i) for i in np.asarray(labels, np.int64).tolist()], dtype=object
    )


def nearest(queries: tf.Tensor, references: tf.Tensor, reference_squared_norms: tf.Tensor, k: tf.Tensor):
    """(indices [Q, k] int32, distances [Q, k] float32) of the k nearest references, ascending."""
    squared = tf.matmul(queries, references, transpose_b=True) * -2.0
    squared += tf.reduce_sum(queries * queries, axis=1, keepdims=True)
    squared = tf.maximum(squared + reference_squared_norms[None, :], 0.0)
    negated, indices = tf.math.top_k(-squared, k=k, sorted=True)
    return indices, tf.sqrt(-negated)


class ServingModel(tf.Module):
    """The embedding model and its reference index, saved together."""

    def __init__(
        self,
        embedding_model,
        ids: Sequence[str],
        labels: np.ndarray,
        embeddings: np.ndarray,
        class_names: Optional[Sequence[str]] = None,
    ):
        super().__init__()
        embeddings = np.asarray(embeddings, np.float32)
        if not len(ids) == len(labels) == embeddings.shape[0] > 0:
            raise ValueError(
                f"index: {len(ids)} ids, {len(labels)} labels and {embeddings.shape[0]} embeddings "
                "(must be the same number, at least one)"
            )
        self.embedding_model = embedding_model
        self.reference_embeddings = tf.Variable(embeddings, trainable=False, name="reference_embeddings")
        self.reference_squared_norms = tf.Variable(
            np.einsum("ij,ij->i", embeddings, embeddings), trainable=False, name="reference_squared_norms"
        )
        self.reference_labels = tf.Variable(np.asarray(labels, np.int64), trainable=False, name="reference_labels")
        self.reference_ids = tf.Variable(
            np.asarray(ids, dtype=object), dtype=tf.string, trainable=False, name="reference_ids"
        )
        self.reference_class_names = tf.Variable(
            names_of(labels, class_names), dtype=tf.string, trainable=False, name="reference_class_names"
        )

    @tf.function(input_signature=[signatures.images_spec(), tf.TensorSpec([], tf.int32, name=contract.K_INPUT)])
    def search(self, images, k):
        size = tf.shape(self.reference_ids)[0]
        checks = [
            tf.debugging.assert_greater_equal(k, 1, message=f"{contract.K_INPUT} must be at least 1"),
            tf.debugging.assert_less_equal(
                k, size, message=f"{contract.K_INPUT} must be at most the index size (the number of reference items)"
            ),
        ]
        with tf.control_dependencies(checks):
            queries = self.embedding_model.signatures[contract.EMBED_IMAGES_SIGNATURE](images=images)[EMBEDDING_KEY]
        indices, distances = nearest(queries, self.reference_embeddings, self.reference_squared_norms, k)
        return {
            contract.IDS_OUTPUT: tf.gather(self.reference_ids, indices),
            contract.LABELS_OUTPUT: tf.gather(self.reference_labels, indices),
            contract.CLASS_NAMES_OUTPUT: tf.gather(self.reference_class_names, indices),
            contract.DISTANCES_OUTPUT: distances,
        }


def build_serving_model(
    embedding_model_path: str, ids: Sequence[str], labels: np.ndarray, embeddings: np.ndarray, path: str
) -> None:
    """Writes the SavedModel with the four signatures, and the class names, to `path`."""
    embedding_model = tf.saved_model.load(embedding_model_path)
    class_names = read_class_names(embedding_model_path)
    model = ServingModel(embedding_model, ids, labels, embeddings, class_names)
    served = {name: embedding_model.signatures[name] for name in EMBEDDING_SIGNATURES}
    tf.saved_model.save(model, path, signatures={**served, contract.SEARCH_SIGNATURE: model.search})
    if class_names is not None:
        write_class_names(path, class_names)
