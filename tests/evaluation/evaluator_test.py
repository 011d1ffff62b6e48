"""The blessing rule: absolute lower bounds, and no regression against a baseline beyond a tolerance."""
from triplet_tfx.components.evaluation.evaluator import blessing_decision
from triplet_tfx.pipeline.config import EvalConfig

RULE = EvalConfig(lower_bounds={"precision_at_1": 0.9, "map_at_r": 0.5},
                  compared_metrics=("precision_at_1", "map_at_r"), max_regression=0.01)


def test_bounds_met_without_baseline_blesses():
    blessed, reasons = blessing_decision({"precision_at_1": 0.95, "map_at_r": 0.6}, None, RULE)
    assert blessed and reasons == ["map_at_r 0.6000 >= threshold 0.5000", "precision_at_1 0.9500 >= threshold 0.9000"]


def test_any_bound_missed_rejects():
    blessed, reasons = blessing_decision({"precision_at_1": 0.95, "map_at_r": 0.4}, None, RULE)
    assert not blessed and "map_at_r 0.4000 < threshold 0.5000" in reasons


def test_missing_metric_rejects():
    blessed, reasons = blessing_decision({"precision_at_1": 0.95}, None, RULE)
    assert not blessed and "map_at_r unavailable (threshold 0.5000)" in reasons


def test_regression_within_tolerance_blesses_beyond_rejects():
    baseline = {"precision_at_1": 0.96, "map_at_r": 0.70}
    assert blessing_decision({"precision_at_1": 0.951, "map_at_r": 0.69}, baseline, RULE)[0]
    blessed, reasons = blessing_decision({"precision_at_1": 0.949, "map_at_r": 0.75}, baseline, RULE)
    assert not blessed
    assert "precision_at_1 0.9490 vs baseline 0.9600: regression beyond tolerance 0.0100" in reasons
    assert "map_at_r 0.7500 vs baseline 0.7000: within tolerance 0.0100" in reasons


def test_gallery_decodes_the_chosen_train_neighbours_only():
    import numpy as np

    from triplet_tfx.components.data.data_sources import make_example
    from triplet_tfx.components.evaluation.evaluator import gallery

    shape = (2, 2, 1)
    query_labels = np.array([0, 1, 1])
    query_images = np.stack([np.full(shape, 10 + i, np.uint8) for i in range(3)])
    reference_labels = np.array([0, 0, 1, 1])
    references = [make_example(np.full(shape, 100 + i, np.uint8), label) for i, label in enumerate(reference_labels)]
    neighbours = np.array([[0, 1], [0, 2], [2, 3]])  # query 1 has a wrong nearest neighbour; 0 and 2 are right
    shown = gallery(query_labels, query_images, neighbours, np.zeros(3, bool), references, reference_labels, shape)
    np.testing.assert_array_equal(shown["query_labels"], [1])
    np.testing.assert_array_equal(shown["query_images"][:, 0, 0, 0], [11])
    np.testing.assert_array_equal(shown["neighbour_labels"], [[0, 1]])
    np.testing.assert_array_equal(shown["neighbour_images"][0, :, 0, 0, 0], [100, 102])  # references 0 and 2
    # Leave-one-out: the neighbours are other queries.
    shown = gallery(query_labels, query_images, np.array([[1], [0], [1]]), np.zeros(3, bool), None, None, shape)
    np.testing.assert_array_equal(shown["query_labels"], [0, 1])
    np.testing.assert_array_equal(shown["neighbour_images"][:, 0, 0, 0, 0], [11, 10])
