"""MLC: the meta gradient of a step equals brute-force autograd through the explicit look-ahead step (with the
optimiser's momentum and weight decay), the main step uses the pre-update labels, k-step accumulation; with
and without the clean half in the main model's loss (option clean_mix, the authors' default)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from ebomlc.config import ConfigError, TrialConfig

from ebomlc.bilevel import dot, lookahead_forward, lower_loss, sq_norm, upper_loss
from method_context import tiny_method


def _named(model, tensors):
    return dict(zip([n for n, _ in model.named_parameters()], tensors))


def _meta_half(method, clean):
    """The clean images and labels F is computed on: the first half of the batch with clean_mix, else all."""
    half = len(clean.y) // 2 if method.config.options["clean_mix"] else len(clean.y)
    return clean.x[:half], clean.y[:half]


def _unrolled(method, noisy, clean):
    """From copies of the method's state: grad_w L(w, alpha) of the main model's loss L (G, plus the clean
    half's cross-entropy weighted by batch sizes with clean_mix), the hypergradient by explicit unroll
    (create_graph through w' = w - eta (mu b + grad_w L + lambda w)), and v = grad F(w')."""
    c, lr = method.config, method.lr
    model, meta = copy.deepcopy(method.model), copy.deepcopy(method.meta_model)
    params, meta_params = list(model.parameters()), list(meta.parameters())
    state = method.optimizer.state
    buffers = [state[p]["momentum_buffer"].clone() if "momentum_buffer" in state[p] else torch.zeros_like(p)
               for p in method.model.parameters()]
    logits, features = lookahead_forward(model, _named(model, params), noisy.x)
    loss = lower_loss(logits, meta(features.detach(), noisy.y))
    if c.options["clean_mix"]:
        half = len(clean.y) // 2
        mix_logits = lookahead_forward(model, _named(model, params), clean.x[half:])[0]
        n, m = len(noisy.y), len(clean.y) - half
        loss = (n * loss + m * F.cross_entropy(mix_logits, clean.y[half:])) / (n + m)
    grad_w = torch.autograd.grad(loss, params, create_graph=True)
    unrolled = [p - lr * (c.momentum * b + g + c.weight_decay * p) for p, b, g in zip(params, buffers, grad_w)]
    meta_x, meta_y = _meta_half(method, clean)
    upper = upper_loss(lookahead_forward(model, _named(model, unrolled), meta_x)[0], meta_y)
    hypergradient = torch.autograd.grad(upper, meta_params, retain_graph=True)
    v = torch.autograd.grad(upper, unrolled)
    return [g.detach() for g in grad_w], list(hypergradient), [x.detach() for x in v]


def _close(xs, ys):
    return all(torch.allclose(x, y, rtol=1e-8, atol=1e-13) for x, y in zip(xs, ys))


@pytest.mark.parametrize("clean_mix", [True, False])
def test_step_meta_gradient_is_the_unrolled_hypergradient_and_main_step_uses_pre_update_labels(clean_mix):
    method, noisy, clean = tiny_method("mlc", torch.float64, options={"clean_mix": clean_mix})
    for step in range(2):              # the second step has momentum buffers in the look-ahead
        grad_w, hypergradient, _ = _unrolled(method, noisy, clean)
        method.step(noisy, clean)
        assert _close([p.grad for p in method.meta_model.parameters()], hypergradient), step
        assert _close([p.grad for p in method.model.parameters()], grad_w), step
        assert sq_norm(hypergradient).item() > 0


@pytest.mark.parametrize("clean_mix", [True, False])
def test_k2_accumulates_discounted_hypergradients_and_steps_the_meta_model_every_second_step(clean_mix):
    method, noisy, clean = tiny_method("mlc", torch.float64, k=2, options={"clean_mix": clean_mix})
    alpha0 = [p.detach().clone() for p in method.meta_model.parameters()]

    _, first, _ = _unrolled(method, noisy, clean)
    method.step(noisy, clean)
    assert all(torch.equal(p, a) for p, a in zip(method.meta_model.parameters(), alpha0))   # no meta step yet
    assert _close(method.accumulated, first) and method.accumulated_steps == 1

    # second step: hypergradient + gamma * first, gamma = (1 - eta) <v, grad_w F(w)> / ||grad_w F(w)||^2
    _, second, v = _unrolled(method, noisy, clean)
    model = copy.deepcopy(method.model)
    meta_x, meta_y = _meta_half(method, clean)
    logits, _ = lookahead_forward(model, dict(model.named_parameters()), meta_x)
    grad_w_f = torch.autograd.grad(upper_loss(logits, meta_y), list(model.parameters()))
    gamma = (1 - method.lr) * dot(v, grad_w_f) / sq_norm(grad_w_f)
    method.step(noisy, clean)
    expected = [s + gamma * f for s, f in zip(second, first)]
    assert _close([p.grad for p in method.meta_model.parameters()], expected)
    assert any(not torch.equal(p, a) for p, a in zip(method.meta_model.parameters(), alpha0))
    assert method.accumulated is None and method.accumulated_steps == 0


@pytest.mark.parametrize("clean_mix", [True, False])
def test_only_the_forwards_that_train_the_main_model_record_batchnorm_statistics(clean_mix):
    method, noisy, clean = tiny_method("mlc", k=2, options={"clean_mix": clean_mix})  # k = 2: a clean pass at w
    reference, _, _ = tiny_method("mlc", k=2, options={"clean_mix": clean_mix})
    method.step(noisy, clean)
    reference.model(noisy.x)                             # the real forwards from the same initial state
    if clean_mix:
        reference.model(clean.x[len(clean.y) // 2:])
    for (name, buffer), expected in zip(method.model.named_buffers(), reference.model.buffers()):
        assert torch.equal(buffer, expected), name


def test_clean_mix_is_validated():
    with pytest.raises(ConfigError, match="option clean_mix must be true or false, got 'yes'"):
        TrialConfig(method="mlc", options={"clean_mix": "yes"}).validated()
    with pytest.raises(ConfigError, match="clean_batch_size must be >= 2, got 1; raise it or set clean_mix=false"):
        TrialConfig(method="mlc", clean_batch_size=1).validated()
    TrialConfig(method="mlc", clean_batch_size=1, options={"clean_mix": False}).validated()
