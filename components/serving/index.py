"""The `search` signature: the k nearest neighbours among reference embeddings kept in the
SavedModel as variables (a checkpoint, not graph constants: no 2 GB proto limit), found by exact
search (`nearest`) or by an approximate ivf index (`ivf_index.py`, `--index ivf`, which adds the
`search_with_nprobe` signature).

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
from triplet_tfx.components.serving import ivf_index
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
    """The embedding model and its reference index, saved together: exact (the reference embeddings
    as variables, `nearest`) or, given an `ivf` state, `ivf_index.IvfIndex` searched with `nprobe`
    lists by default (`search_with_nprobe` takes it per request; `ivf_index.default_nprobe` is the
    usual choice). Either way `reference_ids`,
    `reference_labels` and `reference_class_names` hold the references in the order the search's
    indices refer to."""

    def __init__(
        self,
        embedding_model,
        ids: Sequence[str],
        labels: np.ndarray,
        embeddings: Optional[np.ndarray],
        class_names: Optional[Sequence[str]] = None,
        ivf: Optional[ivf_index.IvfState] = None,
        nprobe: int = 0,
    ):
        super().__init__()
        self.embedding_model = embedding_model
        self.ivf = None if ivf is None else ivf_index.IvfIndex(ivf)
        if self.ivf is None:
            embeddings = np.asarray(embeddings, np.float32)
            if not len(ids) == len(labels) == embeddings.shape[0] > 0:
                raise ValueError(
                    f"index: {len(ids)} ids, {len(labels)} labels and {embeddings.shape[0]} embeddings "
                    "(must be the same number, at least one)"
                )
            self.reference_embeddings = tf.Variable(embeddings, trainable=False, name="reference_embeddings")
            self.reference_squared_norms = tf.Variable(
                np.einsum("ij,ij->i", embeddings, embeddings), trainable=False, name="reference_squared_norms"
            )
            self.reference_labels = tf.Variable(np.asarray(labels, np.int64), trainable=False, name="reference_labels")
            self.reference_ids = tf.Variable(
                np.asarray(ids, dtype=object), dtype=tf.string, trainable=False, name="reference_ids"
            )
        else:  # the index's own stored order (grouped by list)
            labels = ivf.labels
            self.reference_labels, self.reference_ids = self.ivf.labels, self.ivf.ids
            if not 1 <= nprobe <= ivf.lists:
                raise ValueError(f"index: nprobe must be in [1, {ivf.lists}] (the number of lists), got {nprobe}")
            self.nprobe = tf.Variable(nprobe, dtype=tf.int32, trainable=False, name="nprobe")
            self.search_with_nprobe = tf.function(
                self._search_with_nprobe,
                input_signature=[
                    signatures.images_spec(),
                    tf.TensorSpec([], tf.int32, name=contract.K_INPUT),
                    tf.TensorSpec([], tf.int32, name=contract.NPROBE_INPUT),
                ],
            )
        self.reference_class_names = tf.Variable(
            names_of(labels, class_names), dtype=tf.string, trainable=False, name="reference_class_names"
        )

    def _embed(self, images, k):
        size = tf.shape(self.reference_ids)[0]
        checks = [
            tf.debugging.assert_greater_equal(k, 1, message=f"{contract.K_INPUT} must be at least 1"),
            tf.debugging.assert_less_equal(
                k,
                size,
                message=f"{contract.K_INPUT} must be at most the index size (the number of reference items)",
            ),
        ]
        with tf.control_dependencies(checks):
            return self.embedding_model.signatures[contract.EMBED_IMAGES_SIGNATURE](images=images)[EMBEDDING_KEY]

    def _answer(self, indices, distances):
        return {
            contract.IDS_OUTPUT: tf.gather(self.reference_ids, indices),
            contract.LABELS_OUTPUT: tf.gather(self.reference_labels, indices),
            contract.CLASS_NAMES_OUTPUT: tf.gather(self.reference_class_names, indices),
            contract.DISTANCES_OUTPUT: distances,
        }

    @tf.function(input_signature=[signatures.images_spec(), tf.TensorSpec([], tf.int32, name=contract.K_INPUT)])
    def search(self, images, k):
        queries = self._embed(images, k)
        if self.ivf is not None:
            return self._answer(*self.ivf.search(queries, k, self.nprobe))
        return self._answer(*nearest(queries, self.reference_embeddings, self.reference_squared_norms, k))

    def _search_with_nprobe(self, images, k, nprobe):
        return self._answer(*self.ivf.search(self._embed(images, k), k, nprobe))


def ivf_recall(
    module: ivf_index.IvfIndex,
    nprobe: int,
    queries: np.ndarray,
    embeddings: np.ndarray,
    ids: Sequence[str],
    k: int = 10,
    batch: int = 64,
) -> float:
    """Recall@k of an ivf index (e.g. a ServingModel's `ivf`) searched with `nprobe` lists against
    exact search of the same references (`embeddings`, `ids`: the catalogue in its own order), for
    `queries` [Q, d]."""
    stored_ids = np.array([i.decode("utf-8") for i in module.ids.numpy()], dtype=object)
    references = tf.constant(np.asarray(embeddings, np.float32))
    norms = tf.reduce_sum(references * references, axis=1)
    k = min(k, len(ids))
    found, expected = [], []
    for start in range(0, len(queries), batch):
        chunk = tf.constant(np.asarray(queries[start : start + batch], np.float32))
        found.append(stored_ids[module.search(chunk, k, nprobe)[0].numpy()])
        expected.append(np.asarray(ids, dtype=object)[nearest(chunk, references, norms, k)[0].numpy()])
    return ivf_index.recall(np.concatenate(found), np.concatenate(expected))


def build_serving_model(
    embedding_model_path: str,
    ids: Sequence[str],
    labels: np.ndarray,
    embeddings: np.ndarray,
    path: str,
    ivf: Optional[ivf_index.IvfState] = None,
    nprobe: int = 0,
    recall_queries: Optional[np.ndarray] = None,
) -> Optional[float]:
    """Writes the SavedModel with its signatures (the three embedding signatures, `search`, and with
    an ivf index `search_with_nprobe`), and the class names, to `path`. With an ivf index and
    `recall_queries` [Q, d], returns its recall@10 against exact search (`ivf_recall`) measured on
    the very index that is saved; else None."""
    embedding_model = tf.saved_model.load(embedding_model_path)
    class_names = read_class_names(embedding_model_path)
    model = ServingModel(embedding_model, ids, labels, embeddings, class_names, ivf=ivf, nprobe=nprobe)
    served = {name: embedding_model.signatures[name] for name in EMBEDDING_SIGNATURES}
    served[contract.SEARCH_SIGNATURE] = model.search
    recall = None
    if model.ivf is not None:
        served[contract.SEARCH_WITH_NPROBE_SIGNATURE] = model.search_with_nprobe
        if recall_queries is not None:
            recall = ivf_recall(model.ivf, nprobe, recall_queries, embeddings, ids)
    tf.saved_model.save(model, path, signatures=served)
    if class_names is not None:
        write_class_names(path, class_names)
    return recall
