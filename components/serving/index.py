"""The `search` signature: the k nearest neighbours among reference embeddings kept in the
SavedModel as variables (a checkpoint, not graph constants: no 2 GB proto limit), found by exact
search (`ivf_index.nearest`) or by an approximate ivf index (`components/ivf_index.py`,
`--index ivf`, which adds the `search_with_nprobe` signature).

`build_serving_model` wraps an embedding SavedModel (the Trainer's export, `training/export.py`) and an
index of its own embeddings of the reference examples into one SavedModel with four signatures:
the three embedding signatures, unchanged (the very functions the evaluator scored), and `search`.
Distances are Euclidean, computed as `metrics.nearest_neighbors` computes them
(|q|^2 - 2 q.r + |r|^2, clamped at zero, in float32); equal distances are ordered by the smaller
reference index (tf.math.top_k keeps the lower index first), as the evaluator orders them.
`match` answers each image with its nearest reference and whether it lies within the evaluator's
calibrated distance threshold (`evaluation/calibration.py`). `search` also gives the neighbours'
class names (the embedding SavedModel's id-ordered class names, `signatures.read_class_names`, or a
catalog's own), which the serving SavedModel keeps in its assets as well.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from triplet_tfx.components import contract, ivf_index, signatures
from triplet_tfx.components.contract import EMBEDDING_KEY, SERVING_SIGNATURE
from triplet_tfx.components.examples_io import load_model
from triplet_tfx.components.ivf_index import nearest
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


def names_by_label(labels: np.ndarray, names: Sequence[str]) -> List[str]:
    """The class-name table by class id of items given with their labels and names (a catalog's);
    an id no item has is named by itself."""
    table: Dict[int, str] = {}
    for label, name in zip(np.asarray(labels, np.int64).tolist(), names):
        table.setdefault(label, name)
    return [table.get(i, str(i)) for i in range(max(table, default=-1) + 1)]


def embedding_dimension(embedding_model) -> int:
    """The embedding size of a loaded embedding (or serving) SavedModel."""
    return int(embedding_model.signatures[SERVING_SIGNATURE].structured_outputs[EMBEDDING_KEY].shape[-1])


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
        match_threshold: Optional[float] = None,
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
        if match_threshold is not None:
            self.match_threshold = tf.Variable(
                match_threshold, dtype=tf.float32, trainable=False, name="match_threshold"
            )
            self.match = tf.function(self._match, input_signature=[signatures.images_spec()])

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
        return self._answer(*self._nearest(self._embed(images, k), k))

    def _nearest(self, queries, k):
        """(indices, distances) of the k nearest references: the ivf index with its default nprobe, or exact."""
        if self.ivf is not None:
            return self.ivf.search(queries, k, self.nprobe)
        return nearest(queries, self.reference_embeddings, self.reference_squared_norms, k)

    def _match(self, images):
        indices, distances = self._nearest(self._embed(images, tf.constant(1)), 1)
        answer = self._answer(indices[:, 0], distances[:, 0])
        answer[contract.MATCHED_OUTPUT] = distances[:, 0] <= self.match_threshold
        return answer

    def _search_with_nprobe(self, images, k, nprobe):
        return self._answer(*self.ivf.search(self._embed(images, k), k, nprobe))


def build_serving_model(
    embedding_model_path: str,
    ids: Sequence[str],
    labels: np.ndarray,
    embeddings: np.ndarray,
    path: str,
    ivf: Optional[ivf_index.IvfState] = None,
    nprobe: int = 0,
    recall_queries: Optional[np.ndarray] = None,
    match_threshold: Optional[float] = None,
    reference_names: Optional[Sequence[str]] = None,
) -> Optional[float]:
    """Writes the SavedModel with its signatures (the three embedding signatures, `search`, with an
    ivf index `search_with_nprobe`, and given a `match_threshold` `match`), and the class names, to
    `path`. `reference_names`: the references' class names by class id (a catalog's own), else the
    model's. With an ivf index and `recall_queries` [Q, d], returns its recall@10 against exact
    search (`ivf_index.recall_against_exact`) measured on the very index that is saved; else None."""
    embedding_model = load_model(embedding_model_path)
    # A served model given again (index refresh): its embedding model alone, not its old index.
    embedding_model = getattr(embedding_model, "embedding_model", embedding_model)
    class_names = read_class_names(embedding_model_path)
    model = ServingModel(
        embedding_model,
        ids,
        labels,
        embeddings,
        class_names if reference_names is None else reference_names,
        ivf=ivf,
        nprobe=nprobe,
        match_threshold=match_threshold,
    )
    served = {name: embedding_model.signatures[name] for name in EMBEDDING_SIGNATURES}
    served[contract.SEARCH_SIGNATURE] = model.search
    if match_threshold is not None:
        served[contract.MATCH_SIGNATURE] = model.match
    recall = None
    if model.ivf is not None:
        served[contract.SEARCH_WITH_NPROBE_SIGNATURE] = model.search_with_nprobe
        if recall_queries is not None:
            recall = ivf_index.recall_against_exact(model.ivf, nprobe, recall_queries, embeddings, ids)
    tf.saved_model.save(model, path, signatures=served)
    if class_names is not None:
        write_class_names(path, class_names)
    return recall
