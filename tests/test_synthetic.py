"""The synthetic dataset: format, balance, seeding, and learnable but not trivially."""
import numpy as np
import pytest
import torch

from ebomlc.data.synthetic import make_synthetic


def test_format_and_balance():
    data = make_synthetic(602, 200, 4, 8, seed=0)
    assert data.train_x.shape == (602, 3, 8, 8) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (200, 3, 8, 8)
    assert data.train_y.dtype == torch.int64 and data.test_y.dtype == torch.int64
    np.testing.assert_array_equal(np.bincount(data.train_y), [151, 151, 150, 150])   # the first 602 mod 4 get one more
    np.testing.assert_array_equal(np.bincount(data.test_y), [50, 50, 50, 50])
    assert data.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert not (data.train_y[:50] == data.train_y[0]).all()     # shuffled, not grouped by class


def test_same_seed_same_data_different_seed_different_data():
    first, again, other = (make_synthetic(100, 20, 4, 8, seed=s) for s in (3, 3, 4))
    for a, b in zip(first[:4], again[:4]):
        assert torch.equal(a, b)
    assert not torch.equal(first.train_x, other.train_x)


def test_pixels_use_the_range_without_saturating():
    pixels = make_synthetic(400, 10, 4, 16, seed=0).train_x.float()
    assert 100 < pixels.mean() < 156 and pixels.std() > 20
    assert (pixels == 0).float().mean() < 0.01 and (pixels == 255).float().mean() < 0.01


def nearest_mean_accuracy(data):
    """Test accuracy of the nearest class mean in pixel space: a linear read-out of the prototypes."""
    train_x, test_x = data.train_x.flatten(1).float(), data.test_x.flatten(1).float()
    means = torch.stack([train_x[data.train_y == k].mean(0) for k in range(len(data.class_names))])
    return (torch.cdist(test_x, means).argmin(1) == data.test_y).float().mean().item()


@pytest.mark.parametrize("seed", [0, 1])
def test_classes_are_separable(seed):
    assert nearest_mean_accuracy(make_synthetic(600, 400, 4, 8, seed=seed)) > 0.8     # chance is 0.25


def test_resnet8_learns_it_in_three_epochs():
    from ebomlc.models import build_resnet

    torch.manual_seed(0)
    data = make_synthetic(600, 400, 4, 8, seed=0)
    train_x = data.train_x.float().div(255)
    mean = train_x.mean((0, 2, 3), keepdim=True)
    std = train_x.std((0, 2, 3), keepdim=True)
    train_x, test_x = (train_x - mean) / std, (data.test_x.float().div(255) - mean) / std
    model = build_resnet("resnet8", 4, width=8)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def test_accuracy():
        model.eval()
        with torch.no_grad():
            accuracy = (model(test_x)[0].argmax(1) == data.test_y).float().mean().item()
        model.train()
        return accuracy

    accuracies = []
    for epoch in range(3):
        for batch in torch.randperm(600).split(32):
            loss = torch.nn.functional.cross_entropy(model(train_x[batch])[0], data.train_y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if not accuracies:
                accuracies.append(test_accuracy())   # after the first step
    accuracies.append(test_accuracy())
    assert accuracies[0] < 0.5 and accuracies[-1] > 0.7, accuracies
