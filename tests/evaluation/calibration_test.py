"""The match threshold's calibration against a brute-force reference: every candidate threshold
counted out query by query."""

import io

import numpy as np
import pytest

from triplet_tfx.components.evaluation import calibration


def brute_force(distances, correct, t):
    matched = [d <= t for d in distances]
    true_matches = sum(m and c for m, c in zip(matched, correct))
    precision = true_matches / sum(matched)
    recall = true_matches / sum(correct)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def test_curve_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    distances = np.round(rng.uniform(0, 1, 300), 2)  # many equal distances
    correct = rng.uniform(0, 1, 300) > distances  # nearer neighbours are more often right
    curve = calibration.threshold_curve(distances, correct)
    assert curve["threshold"].tolist() == sorted(set(distances.tolist()))
    for i, t in enumerate(curve["threshold"]):
        expected = brute_force(distances, correct, t)
        got = (curve["precision"][i], curve["recall"][i], curve["f1"][i])
        assert got == pytest.approx(expected, abs=1e-12)
        assert curve["matched"][i] == (distances <= t).sum()


def test_threshold_for_precision_is_the_largest_reaching_it():
    # precision at the thresholds 1, 2, 3, 4: 1, 0.5, 0.667, 0.5: not monotonic.
    distances = [1.0, 2.0, 3.0, 4.0]
    correct = [True, False, True, False]
    curve = calibration.threshold_curve(distances, correct)
    assert calibration.threshold_for_precision(curve, 0.6)["threshold"] == 3.0
    assert calibration.threshold_for_precision(curve, 0.6)["recall"] == 1.0
    assert calibration.threshold_for_precision(curve, 1.0)["threshold"] == 1.0
    assert calibration.threshold_for_precision(calibration.threshold_curve([1.0], [False]), 0.5) is None


def test_calibrate_reports_targets_best_f1_and_the_served_point():
    distances = np.linspace(0.1, 1.0, 10)
    correct = np.array([True] * 7 + [False, True, False])
    result = calibration.calibrate(distances, correct, match_precision=0.85, targets=(0.9, 0.99))
    assert result["match"]["threshold"] == pytest.approx(0.9)  # 8 correct of 9 matched: 0.889
    assert result["by_precision"]["0.99"]["threshold"] == pytest.approx(0.7)
    assert result["by_precision"]["0.9"]["threshold"] == pytest.approx(0.7)
    assert set(result["by_precision"]) == {"0.85", "0.9", "0.99"}
    f1 = [brute_force(distances, correct, t)[2] for t in distances]
    assert result["best_f1"]["threshold"] == pytest.approx(distances[int(np.argmax(f1))])


def test_curve_csv_and_rejection_rate():
    curve = calibration.threshold_curve([0.5, 0.25], [True, False])
    f = io.StringIO()
    calibration.write_curve(f, curve)
    assert f.getvalue().splitlines() == [
        "threshold,matched,precision,recall,f1",
        "0.25,1,0.000000,0.000000,0.000000",
        "0.5,2,0.500000,1.000000,0.666667",
    ]
    assert calibration.rejection_rate([0.1, 0.5, 0.9, 1.2], 0.5) == 0.5
    assert calibration.rejection_rate([0.1], None) is None


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="one distance per query"):
        calibration.threshold_curve([0.1, 0.2], [True])
