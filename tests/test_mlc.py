"""MLC: the meta gradient of a step equals brute-force autograd through the explicit look-ahead step (with the
optimiser's momentum and weight decay), the main step uses the pre-update labels, k-step accumulation."""
import copy

import torch

from ebomlc.bilevel import dot, lookahead_forward, lower_loss, sq_norm, upper_loss
from method_context import tiny_method


def _named(model, tensors):
    return dict(zip([n for n, _ in model.named_parameters()], tensors))


def _unrolled(method, noisy, clean):
    """From copies of the method's state: grad_w G(w, alpha), the hypergradient by explicit unroll
    (create_graph through w' = w - eta (mu b + grad_w G + lambda w)), and v = grad F(w')."""
    c, lr = method.config, method.lr
    model, meta = copy.deepcopy(method.model), copy.deepcopy(method.meta_model)
    params, meta_params = list(model.parameters()), list(meta.parameters())
    state = method.optimizer.state
    buffers = [state[p]["momentum_buffer"].clone() if "momentum_buffer" in state[p] else torch.zeros_like(p)
               for p in method.model.parameters()]
    logits, features = lookahead_forward(model, _named(model, params), noisy.x)
    grad_w = torch.autograd.grad(lower_loss(logits, meta(features.detach(), noisy.y)), params, create_graph=True)
    unrolled = [p - lr * (c.momentum * b + g + c.weight_decay * p) for p, b, g in zip(params, buffers, grad_w)]
    upper = upper_loss(lookahead_forward(model, _named(model, unrolled), clean.x)[0], clean.y)
    hypergradient = torch.autograd.grad(upper, meta_params, retain_graph=True)
    v = torch.autograd.grad(upper, unrolled)
    return [g.detach() for g in grad_w], list(hypergradient), [x.detach() for x in v]


def _close(xs, ys):
    return all(torch.allclose(x, y, rtol=1e-8, atol=1e-13) for x, y in zip(xs, ys))


def test_step_meta_gradient_is_the_unrolled_hypergradient_and_main_step_uses_pre_update_labels():
    method, noisy, clean = tiny_method("mlc", torch.float64)
    for step in range(2):              # the second step has momentum buffers in the look-ahead
        grad_w, hypergradient, _ = _unrolled(method, noisy, clean)
        method.step(noisy, clean)
        assert _close([p.grad for p in method.meta_model.parameters()], hypergradient), step
        assert _close([p.grad for p in method.model.parameters()], grad_w), step
        assert sq_norm(hypergradient).item() > 0


def test_k2_accumulates_discounted_hypergradients_and_steps_the_meta_model_every_second_step():
    method, noisy, clean = tiny_method("mlc", torch.float64, k=2)
    alpha0 = [p.detach().clone() for p in method.meta_model.parameters()]

    _, first, _ = _unrolled(method, noisy, clean)
    method.step(noisy, clean)
    assert all(torch.equal(p, a) for p, a in zip(method.meta_model.parameters(), alpha0))   # no meta step yet
    assert _close(method.accumulated, first) and method.accumulated_steps == 1

    # second step: hypergradient + gamma * first, gamma = (1 - eta) <v, grad_w F(w)> / ||grad_w F(w)||^2
    _, second, v = _unrolled(method, noisy, clean)
    model = copy.deepcopy(method.model)
    logits, _ = lookahead_forward(model, dict(model.named_parameters()), clean.x)
    grad_w_f = torch.autograd.grad(upper_loss(logits, clean.y), list(model.parameters()))
    gamma = (1 - method.lr) * dot(v, grad_w_f) / sq_norm(grad_w_f)
    method.step(noisy, clean)
    expected = [s + gamma * f for s, f in zip(second, first)]
    assert _close([p.grad for p in method.meta_model.parameters()], expected)
    assert any(not torch.equal(p, a) for p, a in zip(method.meta_model.parameters(), alpha0))
    assert method.accumulated is None and method.accumulated_steps == 0


def test_only_the_noisy_forward_records_batchnorm_statistics():
    method, noisy, clean = tiny_method("mlc", k=2)       # k = 2 adds a clean pass at w for the discount
    reference, _, _ = tiny_method("mlc", k=2)
    method.step(noisy, clean)
    reference.model(noisy.x)                             # one real forward from the same initial state
    for (name, buffer), expected in zip(method.model.named_buffers(), reference.model.buffers()):
        assert torch.equal(buffer, expected), name
