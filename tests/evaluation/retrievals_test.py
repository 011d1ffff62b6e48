"""components.evaluation.retrievals: worst queries and the 1-NN confusion matrix, by hand."""

import numpy as np
import pytest

from triplet_tfx.components.evaluation import retrievals


def test_worst_queries_ranks_by_correct_neighbours_then_first_correct_rank():
    query_labels = [0, 1, 2, 0, 1, 2]
    neighbour_labels = [
        [0, 0, 0],  # 0: all right, never chosen
        [2, 2, 1],  # 1: one right, first right at rank 2
        [0, 1, 1],  # 2: none right
        [1, 0, 2],  # 3: one right, first right at rank 1
        [0, 1, 1],  # 4: two right
        [0, 0, 1],  # 5: none right (same score as 2; larger index)
    ]
    np.testing.assert_array_equal(retrievals.worst_queries(query_labels, neighbour_labels, 10), [2, 5, 1, 3, 4])
    np.testing.assert_array_equal(retrievals.worst_queries(query_labels, neighbour_labels, 2), [2, 5])
    skipped = [False, False, True, False, False, False]
    np.testing.assert_array_equal(retrievals.worst_queries(query_labels, neighbour_labels, 2, skipped), [5, 1])


def test_worst_queries_of_a_perfect_model_is_empty_and_shapes_are_checked():
    assert retrievals.worst_queries([3, 4], [[3], [4]], 5).size == 0
    with pytest.raises(ValueError, match="neighbour_labels must be"):
        retrievals.worst_queries([0, 1, 2], [[0], [1]], 1)


def test_confusion_matrix_counts_by_hand():
    counts, classes = retrievals.confusion_matrix([0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 2, 0])
    assert classes == [0, 1, 2]
    np.testing.assert_array_equal(counts, [[2, 1, 0], [0, 1, 1], [1, 0, 0]])
    # A predicted class with no query of its own still gets a column; given classes fix the order.
    counts, classes = retrievals.confusion_matrix(["b", "b"], ["a", "b"], classes=["b", "a", "c"])
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(retrievals.row_normalised(counts), [[0.5, 0.5, 0], [0, 0, 0], [0, 0, 0]])
