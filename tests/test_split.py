"""Class-balanced subset and clean / validation / noisy split: disjoint, covering, balanced, seeded."""
import numpy as np
import pytest

from ebomlc.data.split import class_balanced_subset, clean_sizes, split_clean_noisy


def rng(seed=0):
    return np.random.default_rng(seed)


def balanced_labels(num_classes=10, per_class=50, seed=0):
    return rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def test_split_is_disjoint_and_covers_every_index_once():
    labels = balanced_labels()
    clean, val, noisy = split_clean_noisy(labels, 0.1, 10, rng(), validation_fraction=0.4)
    everything = np.concatenate([clean, val, noisy])
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(labels)))   # each index exactly once
    for part in (clean, val, noisy):
        assert part.dtype == np.int64
        np.testing.assert_array_equal(part, np.sort(part))


def test_split_is_class_balanced():
    labels = balanced_labels(per_class=50)
    clean, val, noisy = split_clean_noisy(labels, 0.1, 10, rng(), validation_fraction=0.4)
    # per class: round(0.1 * 50) = 5 in D, of which round(0.4 * 5) = 2 are validation
    np.testing.assert_array_equal(np.bincount(labels[clean], minlength=10), 3)
    np.testing.assert_array_equal(np.bincount(labels[val], minlength=10), 2)
    np.testing.assert_array_equal(np.bincount(labels[noisy], minlength=10), 45)


def test_paper_split_sizes():
    # CIFAR-10: 2% of 5000 images per class
    assert clean_sizes(5000, 0.02) == (100, 0)
    assert clean_sizes(5000, 0.02, 0.1) == (100, 10)
    labels = np.repeat(np.arange(10), 5000)
    clean, val, noisy = split_clean_noisy(labels, 0.02, 10, rng())
    assert (len(clean), len(val), len(noisy)) == (1000, 0, 49000)


def test_unbalanced_classes_get_their_own_share():
    labels = np.repeat([0, 1, 2], [100, 40, 10])
    clean, _, noisy = split_clean_noisy(labels, 0.1, 3, rng())
    np.testing.assert_array_equal(np.bincount(labels[clean]), [10, 4, 1])
    np.testing.assert_array_equal(np.bincount(labels[noisy]), [90, 36, 9])


def test_split_is_seeded():
    labels = balanced_labels()
    first = split_clean_noisy(labels, 0.1, 10, rng(5))
    again = split_clean_noisy(labels, 0.1, 10, rng(5))
    other = split_clean_noisy(labels, 0.1, 10, rng(6))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_class_without_clean_samples_is_an_error():
    labels = np.repeat([0, 1, 2], [100, 100, 4])
    with pytest.raises(ValueError, match="class 2 has 4 training images.*use a larger clean_fraction"):
        split_clean_noisy(labels, 0.1, 3, rng())


def test_missing_class_is_an_error():
    with pytest.raises(ValueError, match="class 2 has 0 training images"):
        split_clean_noisy(np.repeat([0, 1], 50), 0.1, 3, rng())


def test_class_without_validation_samples_is_an_error():
    with pytest.raises(ValueError, match="class 0 has 5 clean images, so validation_fraction=0.05 gives it no "
                                         "validation sample"):
        split_clean_noisy(balanced_labels(), 0.1, 10, rng(), validation_fraction=0.05)


def test_labels_out_of_range_are_an_error():
    with pytest.raises(ValueError, match="labels must be in \\[0, 3\\), got values in \\[0, 3\\]"):
        split_clean_noisy(np.array([0, 1, 2, 3]), 0.5, 3, rng())


def test_subset_is_class_balanced_sorted_and_seeded():
    labels = balanced_labels(num_classes=4, per_class=50)
    subset = class_balanced_subset(labels, 23, 4, rng(1))
    assert subset.dtype == np.int64 and len(np.unique(subset)) == 23
    np.testing.assert_array_equal(subset, np.sort(subset))
    assert sorted(np.bincount(labels[subset], minlength=4)) == [5, 6, 6, 6]   # 23 = 4 * 5 + 3
    np.testing.assert_array_equal(subset, class_balanced_subset(labels, 23, 4, rng(1)))
    assert not np.array_equal(subset, class_balanced_subset(labels, 23, 4, rng(2)))


def test_subset_size_errors():
    labels = np.repeat([0, 1], [30, 3])
    with pytest.raises(ValueError, match="between the number of classes \\(2\\) and the training set size \\(33\\)"):
        class_balanced_subset(labels, 34, 2, rng())
    with pytest.raises(ValueError, match="needs 5 images of class 1, which has only 3"):
        class_balanced_subset(labels, 10, 2, rng())
