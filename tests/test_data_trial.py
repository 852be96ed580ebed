"""build_trial_data / check_data on the synthetic dataset: seeded, disjoint, class-balanced, noise on D' only."""
import dataclasses

import numpy as np
import pytest
import torch

from ebomlc.config import ConfigError
from ebomlc.data import TrialData, build_trial_data, check_data
from ebomlc.data.noise import realised_noise_rate, transition_matrix
from ebomlc.data.synthetic import make_synthetic


@pytest.fixture
def config(tiny_config):
    """600 training images of 4 classes; D is 10% of them (15 per class), 40% uniform noise on D'."""
    return tiny_config


def image_keys(images):
    return [image.numpy().tobytes() for image in images]


def test_same_config_same_data(config):
    first, again = build_trial_data(config), build_trial_data(config)
    for field in dataclasses.fields(TrialData):
        a, b = getattr(first, field.name), getattr(again, field.name)
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), field.name
        elif isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b, field.name


def test_another_seed_gives_another_split_and_noise(config):
    first, other = build_trial_data(config), build_trial_data(dataclasses.replace(config, seed=1))
    assert not torch.equal(first.noisy_y, other.noisy_y)
    assert not torch.equal(first.clean_x[:5], other.clean_x[:5])


def test_sets_are_disjoint_and_cover_the_training_set(config):
    data = build_trial_data(dataclasses.replace(config, validation_fraction=0.2))
    train = make_synthetic(config.synthetic_train, config.synthetic_test, config.synthetic_classes,
                           config.synthetic_image_size, config.seed)
    sets = image_keys(data.clean_x) + image_keys(data.val_x) + image_keys(data.noisy_x)
    # as multisets: every training image exactly once (the synthetic images are all different)
    assert len(set(image_keys(train.train_x))) == config.synthetic_train
    assert sorted(sets) == sorted(image_keys(train.train_x))
    assert not set(image_keys(data.val_x)) & set(image_keys(data.clean_x))
    assert torch.equal(data.test_x, train.test_x) and torch.equal(data.test_y, train.test_y)


def test_sets_are_class_balanced(config):
    data = build_trial_data(dataclasses.replace(config, validation_fraction=0.2))
    # 150 images per class: round(0.1 * 150) = 15 in D, round(0.2 * 15) = 3 of them for validation
    np.testing.assert_array_equal(np.bincount(data.clean_y), [12, 12, 12, 12])
    np.testing.assert_array_equal(np.bincount(data.val_y), [3, 3, 3, 3])
    np.testing.assert_array_equal(np.bincount(data.noisy_true_y), [135, 135, 135, 135])
    assert data.num_classes == 4 and data.class_names == ["class_0", "class_1", "class_2", "class_3"]


def test_without_validation_the_validation_part_is_empty(config):
    data = build_trial_data(config)
    assert data.val_x.shape == (0, 3, 8, 8) and data.val_x.dtype == torch.uint8
    assert data.val_y.shape == (0,) and data.val_y.dtype == torch.int64
    assert len(data.clean_y) == 60 and len(data.noisy_y) == 540


def test_noise_touches_d_prime_only(config):
    data = build_trial_data(config)
    np.testing.assert_allclose(data.transition, transition_matrix("uniform", 0.4, 4, np.random.default_rng()))
    assert data.realised_noise_rate == realised_noise_rate(data.noisy_true_y, data.noisy_y)
    assert abs(data.realised_noise_rate - 0.4) <= 4 * np.sqrt(0.4 * 0.6 / 540)
    assert data.noisy_y.dtype == torch.int64 and data.noisy_true_y.dtype == torch.int64
    # D and the true labels of D' carry the dataset's labels: find each image in the training set
    train = make_synthetic(600, 200, 4, 8, config.seed)
    position = {key: n for n, key in enumerate(image_keys(train.train_x))}
    for images, labels in ((data.clean_x, data.clean_y), (data.noisy_x, data.noisy_true_y)):
        assert torch.equal(labels, train.train_y[[position[key] for key in image_keys(images)]])


def test_the_noise_kind_does_not_change_the_split(config):
    uniform = build_trial_data(config)
    pairflip = build_trial_data(dataclasses.replace(config, noise="pairflip", noise_rate=0.2))
    assert torch.equal(uniform.clean_x, pairflip.clean_x) and torch.equal(uniform.noisy_x, pairflip.noisy_x)
    assert torch.equal(uniform.noisy_true_y, pairflip.noisy_true_y)
    assert not torch.equal(uniform.noisy_y, pairflip.noisy_y)


def test_given_matrix_and_rate_zero(config):
    swap = [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    data = build_trial_data(dataclasses.replace(config, noise="matrix", noise_matrix=swap))
    np.testing.assert_array_equal(data.noisy_y, np.array([1, 0, 2, 3])[data.noisy_true_y])
    assert data.realised_noise_rate == 0.5
    clean = build_trial_data(dataclasses.replace(config, noise_rate=0.0))
    assert torch.equal(clean.noisy_y, clean.noisy_true_y) and clean.realised_noise_rate == 0.0


def test_train_subset_is_class_balanced(config):
    data = build_trial_data(dataclasses.replace(config, train_subset=202))
    labels = torch.cat([data.clean_y, data.noisy_true_y])
    assert len(labels) == 202
    assert sorted(np.bincount(labels)) == [50, 50, 51, 51]


def test_normalisation_constants_come_from_the_training_images(config):
    data = build_trial_data(config)
    train = make_synthetic(600, 200, 4, 8, config.seed).train_x.double().div(255)
    np.testing.assert_allclose(data.mean, train.mean((0, 2, 3)).numpy())
    np.testing.assert_allclose(data.std, train.transpose(0, 1).flatten(1).std(1, correction=0).numpy())


def test_check_data_accepts_a_good_synthetic_config(config):
    check_data(config)
    check_data(dataclasses.replace(config, train_subset=100, validation_fraction=0.3))


@pytest.mark.parametrize("changes, message", [
    ({"noise": "matrix", "noise_matrix": [[1.0, 0.0], [0.0, 1.0]]},
     "noise_matrix must be 4 x 4 for dataset synthetic, got shape \\(2, 2\\)"),
    ({"train_subset": 601}, "train_subset must be between the number of classes \\(4\\) and the synthetic "
                            "training set size \\(600\\), got 601"),
    ({"train_subset": 3}, "between the number of classes \\(4\\)"),
    ({"clean_fraction": 0.003}, "the smallest class of synthetic has 150 training images, so clean_fraction=0.003 "
                                ".*use a larger clean_fraction"),
    ({"train_subset": 40, "validation_fraction": 0.1},
     "has 1 clean images, so validation_fraction=0.1 gives it no validation sample"),
])
def test_check_data_rejects_what_cannot_be_built(config, changes, message):
    bad = dataclasses.replace(config, **changes)
    with pytest.raises(ConfigError, match=message):
        check_data(bad)
