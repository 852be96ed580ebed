"""Shared test settings: one torch thread per test process (the CI machine has 2 cores), and small
synthetic trial configs."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def tiny_config():
    """A synthetic trial that trains in a few seconds on one CPU thread."""
    from ebomlc.config import TrialConfig

    return TrialConfig(dataset="synthetic", model="resnet8", width=8, epochs=2, batch_size=32,
                       clean_batch_size=32, synthetic_train=600, synthetic_test=200,
                       synthetic_classes=4, synthetic_image_size=8, clean_fraction=0.1,
                       noise="uniform", noise_rate=0.4, device="cpu", seed=0)
