"""Every registered method runs one step through the public interface, evaluates, and resumes exactly."""
import io

import pytest
import torch

from ebomlc.methods import METHODS, Batch
from ebomlc.results import EPOCH_METRICS
from method_context import BATCH, NUM_CLASSES, tiny_method


def _batches(method, noisy, clean):
    if method.sampling == "paired":
        return noisy, clean
    if method.sampling == "union":
        return Batch(noisy.x, noisy.y, noisy.index, torch.zeros(BATCH, dtype=torch.bool)), None
    return noisy, None


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_step_evaluate_and_exact_resume(name):
    method, noisy, clean = tiny_method(name)
    before = [p.detach().clone() for p in method.model.parameters()]
    metrics = method.step(*_batches(method, noisy, clean))

    # step: 0-dim finite tensors, a loss, names the trainer can store, and the model moved
    assert "loss" in metrics
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and torch.isfinite(value), key
        column = "train_loss" if key == "loss" else key if key.endswith("_max") else f"{key}_mean"
        assert column in EPOCH_METRICS, f"{name} reports {key!r}, stored as unknown column {column!r}"
    assert any(not torch.equal(p, b) for p, b in zip(method.model.parameters(), before))

    # evaluate: (B, K) logits, corrected labels a distribution when the method has them
    method.train(False)
    out = method.evaluate(noisy.x, noisy.y)
    assert out.logits.shape == (BATCH, NUM_CLASSES)
    if out.corrected is not None:
        assert out.corrected.shape == (BATCH, NUM_CLASSES)
        assert torch.allclose(out.corrected.sum(1), torch.ones(BATCH))
    for key, value in method.clean_metrics(out.logits, out.corrected, noisy.y).items():
        assert value.dim() == 0 and key in EPOCH_METRICS, key
    method.train(True)

    # resume: a fresh instance loaded with the saved state takes exactly the same next step
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)            # as a checkpoint: no tensor shared with `method`
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    resumed, _, _ = tiny_method(name)
    resumed.load_state_dict(state)
    resumed.train(True)
    expected = method.step(*_batches(method, noisy, clean))
    got = resumed.step(*_batches(resumed, noisy, clean))
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    for a, b in zip(method.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
