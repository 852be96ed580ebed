"""TrialConfig validation: every bad value fails with one line naming the field and the rule."""
import pytest

from ebomlc.config import ConfigError, TrialConfig


def validated(**values):
    return TrialConfig(**values).validated()


@pytest.mark.parametrize("values, message", [
    ({"method": "nope"}, r"method must be one of .*erm.*got 'nope'"),
    ({"dataset": "mnist"}, r"dataset must be one of synthetic, cifar10, cifar100; got 'mnist'"),
    ({"noise": "gaussian"}, r"noise must be one of .*uniform.*got 'gaussian'"),
    ({"noise_rate": 1.0}, r"noise_rate must be in \[0, 1\), got 1.0"),
    ({"noise_rate": -0.1}, r"noise_rate must be in \[0, 1\), got -0.1"),
    ({"clean_fraction": 0.0}, r"clean_fraction must be in \(0, 1\), got 0.0"),
    ({"clean_fraction": 1.0}, r"clean_fraction must be in \(0, 1\), got 1.0"),
    ({"epochs": 0}, r"epochs must be an integer >= 1, got 0"),
    ({"model": "vgg16"}, r"model must be one of .*resnet32.*got 'vgg16'"),
    ({"noise": "matrix"}, r"noise='matrix' needs noise_matrix"),
    ({"noise": "matrix", "noise_matrix": [[0.5, 0.6], [0.5, 0.5]]}, r"rows must be probabilities"),
    ({"noise_matrix": [[1, 0], [0, 1]]}, r"noise_matrix is only used with noise='matrix'"),
    ({"lr_milestones": (0.9, 0.5)}, r"lr_milestones must be increasing fractions"),
    ({"rho": 0.5}, r"rho is not a hyper-parameter of method 'erm' \(it uses: none\)"),
    ({"options": {"warmup": 3}}, r"option 'warmup' is not an option of method 'erm'"),
])
def test_bad_values_fail_with_one_line(values, message):
    with pytest.raises(ConfigError, match=message) as error:
        validated(**values)
    assert "\n" not in str(error.value)


def test_unknown_field_is_rejected():
    with pytest.raises(ConfigError, match=r"unknown config field 'learning_rate'"):
        TrialConfig.from_dict({"learning_rate": 0.1})


def test_trial_id_is_stable_and_ignores_where_it_runs():
    a = TrialConfig(seed=1).validated()
    assert a.trial_id() == TrialConfig(seed=1, device="cpu", data_root="/elsewhere").validated().trial_id()
    assert a.trial_id() != TrialConfig(seed=2).validated().trial_id()


def test_round_trip_through_dict():
    config = TrialConfig(method="erm", epochs=3, lr_milestones=(0.5, 0.75)).validated()
    assert TrialConfig.from_dict(config.to_dict()) == config
