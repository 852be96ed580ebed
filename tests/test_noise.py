"""Noise transition matrices (definitions by hand), label corruption (statistics against the planted T)."""
import numpy as np
import pytest

from ebomlc.data import noise
from ebomlc.data.noise import corrupt_labels, empirical_transition, realised_noise_rate, transition_matrix

KINDS = ("uniform", "uniform_any", "flip", "pairflip")


def rng(seed=0):
    return np.random.default_rng(seed)


def tolerance(p, n):
    """Four standard errors of a frequency with probability p estimated from n draws."""
    return 4 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_rows_are_distributions(kind, num_classes):
    matrix = transition_matrix(kind, 0.4, num_classes, rng())
    assert matrix.shape == (num_classes, num_classes)
    assert (matrix >= 0).all()
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)


def test_uniform_moves_to_another_class_by_hand():
    expected = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.1, 0.7]])
    np.testing.assert_allclose(noise.uniform(0.3, 4), expected)


def test_uniform_any_may_keep_the_class_by_hand():
    # r = 0.4, K = 4: diagonal 1 - r + r/K = 0.7, off-diagonal r/K = 0.1
    expected = np.full((4, 4), 0.1) + 0.6 * np.eye(4)
    np.testing.assert_allclose(noise.uniform_any(0.4, 4), expected)


def test_pairflip_by_hand():
    expected = np.array([[0.8, 0.2, 0.0], [0.0, 0.8, 0.2], [0.2, 0.0, 0.8]])
    np.testing.assert_allclose(noise.pairflip(0.2, 3), expected)


@pytest.mark.parametrize("seed", range(20))
def test_flip_sends_the_rate_to_exactly_one_other_class(seed):
    num_classes, rate = 5, 0.3
    matrix = noise.flip(rate, num_classes, rng(seed))
    np.testing.assert_allclose(np.diag(matrix), 1 - rate)
    off_diagonal = matrix - np.diag(np.diag(matrix))
    np.testing.assert_array_equal((off_diagonal > 0).sum(axis=1), 1)
    np.testing.assert_allclose(off_diagonal.sum(axis=1), rate)


def test_flip_mapping_is_seeded():
    def targets(seed):  # t(i) for every class i
        matrix = noise.flip(0.4, 10, rng(seed))
        return tuple((matrix - np.diag(np.diag(matrix))).argmax(axis=1))

    assert targets(1) == targets(1)
    assert len({targets(seed) for seed in range(5)}) > 1


def test_given_matrix_is_returned_and_checked():
    values = [[0.9, 0.1], [0.25, 0.75]]
    np.testing.assert_allclose(transition_matrix("matrix", 0.0, 2, rng(), matrix=values), values)
    with pytest.raises(ValueError, match="must be 3 x 3 for this dataset, got shape \\(2, 2\\)"):
        noise.given(values, 3)
    with pytest.raises(ValueError, match="each row summing to 1"):
        noise.given([[0.9, 0.2], [0.5, 0.5]], 2)


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="uniform, uniform_any, flip, pairflip, matrix; got 'human'"):
        transition_matrix("human", 0.4, 10, rng())


@pytest.mark.parametrize("kind", KINDS)
def test_empirical_transition_matches_nominal(kind):
    num_classes, per_class = 5, 4000
    true = np.repeat(np.arange(num_classes), per_class)
    nominal = transition_matrix(kind, 0.4, num_classes, rng(1))
    observed = empirical_transition(true, corrupt_labels(true, nominal, rng(2)), num_classes)
    assert (np.abs(observed - nominal) <= tolerance(nominal, per_class) + 1e-12).all()


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.8])
def test_realised_rate_of_the_two_uniform_conventions(rate):
    num_classes, n = 10, 20000
    true = rng(3).integers(0, num_classes, n)
    for kind, expected in (("uniform", rate), ("uniform_any", rate * (num_classes - 1) / num_classes)):
        noisy = corrupt_labels(true, transition_matrix(kind, rate, num_classes, rng()), rng(4))
        assert abs(realised_noise_rate(true, noisy) - expected) <= tolerance(expected, n)


def test_zero_rate_keeps_every_label():
    true = rng().integers(0, 10, 1000)
    np.testing.assert_array_equal(corrupt_labels(true, noise.uniform(0.0, 10), rng()), true)


def test_same_seed_same_labels_different_seed_different_labels():
    true = rng().integers(0, 10, 1000)
    matrix = noise.uniform(0.4, 10)
    first, again = corrupt_labels(true, matrix, rng(7)), corrupt_labels(true, matrix, rng(7))
    np.testing.assert_array_equal(first, again)
    assert (first != corrupt_labels(true, matrix, rng(8))).any()
    assert first.dtype == np.int64


def test_empirical_transition_and_rate_by_hand():
    true, noisy = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    observed = empirical_transition(true, noisy, 3)
    np.testing.assert_allclose(observed[:2], [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    assert np.isnan(observed[2]).all()        # class 2 has no samples: no evidence
    assert realised_noise_rate(true, noisy) == 0.25
    with pytest.raises(ValueError, match="at least one sample"):
        realised_noise_rate(np.array([]), np.array([]))
