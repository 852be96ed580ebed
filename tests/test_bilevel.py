"""ebomlc.bilevel: each equation against a hand-worked case, the gradients of Q against finite differences,
the look-ahead's isolation from the real model, and MLC's hypergradient against an explicit unroll."""
import math

import pytest
import torch
import torch.nn.functional as F

from ebomlc.bilevel import (barrier_coefficient, dot, dynamic_barrier, lookahead_forward, lookahead_hypergradient,
                            lower_loss, mixture_upper_loss, sgd_lookahead, sq_norm, update_direction, upper_loss,
                            value_function_gap, value_gap_gradients)
from ebomlc.models import MetaLabelCorrector, build_resnet

T = torch.tensor


# ---------------------------------------------------------------- gradient lists

def test_dot_and_sq_norm_equal_the_flattened_vectors():
    xs = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2, 2)]
    ys = [torch.randn_like(x) for x in xs]
    flat_x, flat_y = torch.cat([x.flatten() for x in xs]), torch.cat([y.flatten() for y in ys])
    assert torch.allclose(dot(xs, ys), flat_x @ flat_y)
    assert torch.allclose(sq_norm(xs), flat_x @ flat_x)


def test_sgd_lookahead_is_the_next_iterate_of_torch_sgd():
    w = [torch.randn(4, 3), torch.randn(3)]
    params = [torch.nn.Parameter(p.clone()) for p in w]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    for step in range(3):
        grads = [torch.randn_like(p) for p in params]
        buffers = [opt.state[p]["momentum_buffer"] for p in params] if step else None
        expected = sgd_lookahead([p.detach().clone() for p in params], grads, 0.1, momentum=0.9,
                                 weight_decay=5e-4, momentum_buffers=buffers)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for p, e in zip(params, expected):
            assert torch.allclose(p, e, atol=1e-7)
    plain = sgd_lookahead([T([1.0, 2.0])], [T([0.5, -1.0])], 0.2)
    assert torch.allclose(plain[0], T([0.9, 2.2]))


# ---------------------------------------------------------------- losses (Eqs. 2, 3, 4/8, 9)

def test_lower_loss_eq3_hand_worked():
    logits = T([[0.0, 0.0], [math.log(3.0), 0.0]])     # softmax rows: (1/2, 1/2), (3/4, 1/4)
    corrected = T([[1.0, 0.0], [0.5, 0.5]])
    expected = (math.log(2) + 0.5 * (-math.log(0.75) - math.log(0.25))) / 2
    assert lower_loss(logits, corrected).item() == pytest.approx(expected, rel=1e-6)


def test_upper_loss_eq2_is_cross_entropy():
    logits, y = torch.randn(5, 3), torch.randint(0, 3, (5,))
    assert torch.allclose(upper_loss(logits, y), F.cross_entropy(logits, y))


def test_value_function_gap_eq8():
    assert value_function_gap(T(2.5), T(1.0)).item() == 1.5


def test_mixture_upper_loss_eq9_hand_worked():
    logits = T([[math.log(3.0), 0.0]])        # softmax (3/4, 1/4)
    corrected, y = T([[0.5, 0.5]]), T([0])
    rho = 0.2
    # probs: -log(0.2 * 3/4 + 0.8 * 1/2) = -log(0.55)
    assert mixture_upper_loss(logits, corrected, y, rho=rho).item() == pytest.approx(-math.log(0.55), rel=1e-6)
    # logits (public code): cross_entropy(0.2 * (log 3, 0) + 0.8 * (0.5, 0.5), 0)
    mixed = T([[0.2 * math.log(3.0) + 0.4, 0.4]])
    expected = F.cross_entropy(mixed, y).item()
    assert mixture_upper_loss(logits, corrected, y, rho=rho, mixture="logits").item() == pytest.approx(expected)
    batch = torch.randn(4, 3), F.softmax(torch.randn(4, 3), 1), torch.randint(0, 3, (4,))
    for mixture in ("probs", "logits"):
        total = mixture_upper_loss(*batch, rho=rho, mixture=mixture, reduction="sum")
        assert torch.allclose(total, 4 * mixture_upper_loss(*batch, rho=rho, mixture=mixture))
    with pytest.raises(ValueError, match="mixture must be 'probs' or 'logits'"):
        mixture_upper_loss(logits, corrected, y, rho=rho, mixture="soft")


# ---------------------------------------------------------------- barrier (Eqs. 5/10, 7/11), directions (Eqs. 6, 12-14)

# grad F = ((1, 0), (2,) | (3,)), grad Q = ((1, 1), (0,) | (1,)): ||grad Q||^2 = 3, grad_w F . grad_w Q = 1,
# alignment grad_alpha F . grad_alpha Q = 3.
GRAD_W_F, GRAD_ALPHA_F = [T([1.0, 0.0]), T([2.0])], [T([3.0])]
GRAD_W_Q, GRAD_ALPHA_Q = [T([1.0, 1.0]), T([0.0])], [T([1.0])]


def test_dynamic_barrier_eq5_and_eq10():
    assert dynamic_barrier(T(3.0), 0.0, 0.5).item() == 1.5               # Eq. (5): delta ||grad Q||^2
    assert dynamic_barrier(T(3.0), T(3.0), 0.5).item() == 4.5            # Eq. (10): + alignment


@pytest.mark.parametrize("delta, grad_w_f, expected", [
    (0.5, GRAD_W_F, 0.5 - 1 / 3),              # phi-bar = 4.5; (4.5 - (1 + 3)) / 3 = 1/6
    (0.25, GRAD_W_F, 0.0),                     # (0.75 + 3 - 4) / 3 < 0: clipped at 0
    (0.25, [T([-1.0, 0.0]), T([0.0])], 0.25 + 1 / 3),   # grad_w F opposes grad_w Q: beta grows
])
def test_barrier_coefficient_eq11_hand_worked(delta, grad_w_f, expected):
    beta = barrier_coefficient(grad_w_f, GRAD_ALPHA_F, GRAD_W_Q, GRAD_ALPHA_Q, delta)
    assert beta.item() == pytest.approx(expected, abs=1e-7)
    # the alignment term of Eq. (10) cancels: Eq. (7) (grad_alpha F = 0) gives the same coefficient
    eq7 = barrier_coefficient(grad_w_f, None, GRAD_W_Q, GRAD_ALPHA_Q, delta)
    assert eq7.item() == pytest.approx(expected, abs=1e-7)


def test_barrier_coefficient_is_zero_not_nan_when_grad_q_vanishes():
    zeros_w, zeros_alpha = [torch.zeros(2), torch.zeros(1)], [torch.zeros(1)]
    beta = barrier_coefficient(GRAD_W_F, GRAD_ALPHA_F, zeros_w, zeros_alpha, 0.25)
    assert beta.item() == 0.0                            # (0 - 0) / (0 + eps), not 0/0


@pytest.mark.parametrize("q_scale", [1.0, 1e-3, 1e-6])
def test_barrier_term_is_bounded_however_small_grad_q(q_scale):
    g = torch.Generator().manual_seed(3)
    grad_w_f = [torch.randn(50, generator=g, dtype=torch.float64)]
    grad_w_q = [q_scale * torch.randn(50, generator=g, dtype=torch.float64)]
    grad_alpha_q = [q_scale * torch.randn(7, generator=g, dtype=torch.float64)]
    grad_w_q[0] = grad_w_q[0] - 2 * q_scale * grad_w_f[0]          # opposed to grad_w F: beta > delta
    beta = barrier_coefficient(grad_w_f, None, grad_w_q, grad_alpha_q, 0.25)
    q_norm = (sq_norm(grad_w_q) + sq_norm(grad_alpha_q)).sqrt()
    assert beta > 0.25
    assert beta * q_norm <= 0.25 * q_norm + sq_norm(grad_w_f).sqrt() + 1e-12


def test_update_direction_hand_worked():
    scale = T(0.5) * T(1 / 6)           # xi * beta-bar
    direction = update_direction(GRAD_W_F, GRAD_W_Q, scale)
    assert torch.allclose(direction[0], T([1 + 1 / 12, 1 / 12])) and torch.allclose(direction[1], T([2.0]))
    only_q = update_direction(None, GRAD_ALPHA_Q, T(2.0))                    # MLC-D's alpha block
    assert torch.allclose(only_q[0], T([2.0]))


def test_rho_one_gives_zero_alpha_gradient_and_the_plain_barrier_of_eq7():
    """Remark after Eq. (11): with rho = 1, grad_alpha F = 0 and EBOMLC's update is MLC-D's (Eq. 7)."""
    model, meta = _tiny_models(torch.float32)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    params, meta_params = list(model.parameters()), list(meta.parameters())
    logits, features = model(x)
    upper = mixture_upper_loss(logits, meta(features.detach(), y), y, rho=1.0)
    assert torch.allclose(upper, upper_loss(logits, y))
    grads = torch.autograd.grad(upper, params + meta_params)
    grad_w_f, grad_alpha_f = grads[:len(params)], grads[len(params):]
    assert all(torch.count_nonzero(g) == 0 for g in grad_alpha_f)
    grad_w_q = [torch.randn_like(p) for p in params]
    grad_alpha_q = [torch.randn_like(p) for p in meta_params]
    beta_bar = barrier_coefficient(grad_w_f, grad_alpha_f, grad_w_q, grad_alpha_q, 0.25)
    beta = barrier_coefficient(grad_w_f, None, grad_w_q, grad_alpha_q, 0.25)
    assert torch.equal(beta_bar, beta)
    for a, b in zip(update_direction(grad_alpha_f, grad_alpha_q, beta_bar), update_direction(None, grad_alpha_q, beta)):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- gradients of Q against finite differences

def _tiny_models(dtype):
    torch.manual_seed(0)
    model = build_resnet("resnet8", 4, 4).to(dtype)
    model.train()
    return model, MetaLabelCorrector(16, 4).to(dtype)


def _named(model, tensors):
    return dict(zip([n for n, _ in model.named_parameters()], tensors))


@pytest.mark.parametrize("steps, fresh", [(1, False), (3, False), (2, True)])
def test_grad_q_matches_finite_differences(steps, fresh):
    """Q(w, alpha) = G(w, alpha) - G(w_k, alpha) with w_k and the features h(x') held fixed (Eqs. 4, 8)."""
    model, meta = _tiny_models(torch.float64)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (6,), generator=g)
    x2, y2 = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (6,), generator=g)
    lr = 0.3
    w0 = [p.detach().clone() for p in model.parameters()]
    alpha0 = [p.detach().clone() for p in meta.parameters()]

    _, grad_w_q, grad_alpha_q = value_gap_gradients(model, meta, x, y, lr=lr, steps=steps,
                                                    fresh_batch=(lambda: (x2, y2)) if fresh else None)

    # reference: w_k by explicit SGD, everything by plain functional evaluation
    features = lookahead_forward(model, _named(model, w0), x)[1].detach()
    target = meta(features, y).detach()
    wk = w0
    for i in range(steps):
        wk = [w.clone().requires_grad_() for w in wk]
        if i == 0 or not fresh:
            loss = lower_loss(lookahead_forward(model, _named(model, wk), x)[0], target)
        else:
            logits2, features2 = lookahead_forward(model, _named(model, wk), x2)
            loss = lower_loss(logits2, meta(features2.detach(), y2).detach())
        wk = [w.detach() - lr * gw for w, gw in zip(wk, torch.autograd.grad(loss, wk))]

    def q(w, alpha):
        with torch.no_grad():
            corrected = torch.func.functional_call(meta, _named(meta, alpha), (features, y))
            return (lower_loss(lookahead_forward(model, _named(model, w), x)[0], corrected)
                    - lower_loss(lookahead_forward(model, _named(model, wk), x)[0], corrected))

    eps = 1e-6
    for block, base, grad in (("w", w0, grad_w_q), ("alpha", alpha0, grad_alpha_q)):
        direction = [torch.randn(b.shape, generator=g, dtype=torch.float64) for b in base]
        plus = [b + eps * d for b, d in zip(base, direction)]
        minus = [b - eps * d for b, d in zip(base, direction)]
        if block == "w":
            numeric = (q(plus, alpha0) - q(minus, alpha0)) / (2 * eps)
        else:
            numeric = (q(w0, plus) - q(w0, minus)) / (2 * eps)
        assert dot(grad, direction).item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-9), block


@pytest.mark.parametrize("steps", [1, 2])
def test_difference_form_takes_the_gradient_of_g_at_both_points(steps):
    """grad_q="difference": grad_w Q = grad_w G(w) - (grad_w G)(w_k); grad_alpha Q as in the BOME form."""
    model, meta = _tiny_models(torch.float64)
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 4, (6,))
    lr = 0.3
    _, bome_w, bome_alpha = value_gap_gradients(model, meta, x, y, lr=lr, steps=steps)
    _, diff_w, diff_alpha = value_gap_gradients(model, meta, x, y, lr=lr, steps=steps, grad_q="difference")

    features = lookahead_forward(model, dict(model.named_parameters()), x)[1].detach()
    target = meta(features, y).detach()
    wk = [p.detach() for p in model.parameters()]
    for _ in range(steps + 1):           # the gradient at w_0, ..., w_k; the last one is (grad_w G)(w_k)
        wk = [w.clone().requires_grad_() for w in wk]
        grad_at_wk = torch.autograd.grad(lower_loss(lookahead_forward(model, _named(model, wk), x)[0], target), wk)
        wk = [w.detach() - lr * g for w, g in zip(wk, grad_at_wk)]
    for d, b, g in zip(diff_w, bome_w, grad_at_wk):
        assert torch.allclose(d, b - g, rtol=1e-10, atol=1e-14)
    for d, b in zip(diff_alpha, bome_alpha):
        assert torch.allclose(d, b, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="grad_q must be one of bome, difference"):
        value_gap_gradients(model, meta, x, y, lr=lr, grad_q="exact")


# ---------------------------------------------------------------- the look-ahead leaves the real model alone

def test_lookahead_forward_changes_no_parameter_or_running_statistic():
    model, _ = _tiny_models(torch.float32)
    x = torch.randn(6, 3, 8, 8)
    model(x)                                             # non-trivial running statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = {n: p.detach() + 0.1 * torch.randn_like(p) for n, p in model.named_parameters()}
    logits, _ = lookahead_forward(model, other, x)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # it is the training-mode function (batch statistics) at the other weights
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(other[n])
    assert torch.allclose(logits, model(x)[0], atol=1e-6)


def test_value_gap_gradients_record_batch_statistics_once():
    model, meta = _tiny_models(torch.float32)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    params_before = [p.detach().clone() for p in model.parameters()]
    value_gap_gradients(model, meta, x, y, lr=0.1, steps=3)
    assert int(model.bn.num_batches_tracked) == 1        # the forward at w only, none of the look-aheads
    reference, _ = _tiny_models(torch.float32)
    reference(x)                                         # one real forward from the same initial state
    for (name, buffer), expected in zip(model.named_buffers(), reference.buffers()):
        assert torch.equal(buffer, expected), name
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), params_before))


# ---------------------------------------------------------------- MLC's hypergradient

def test_lookahead_hypergradient_equals_explicit_unroll():
    model, meta = _tiny_models(torch.float64)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (6,), generator=g)
    xc, yc = torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (5,), generator=g)
    params, meta_params = list(model.parameters()), list(meta.parameters())
    buffers = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    lr, momentum, weight_decay = 0.2, 0.9, 5e-4

    logits, features = lookahead_forward(model, _named(model, params), x)
    corrected = meta(features.detach(), y)

    # brute force: w'(alpha) with its graph, F(w'), backprop to alpha
    grad_w = torch.autograd.grad(lower_loss(logits, corrected), params, create_graph=True)
    unrolled = [p - lr * (momentum * b + gw + weight_decay * p) for p, b, gw in zip(params, buffers, grad_w)]
    expected = torch.autograd.grad(upper_loss(lookahead_forward(model, _named(model, unrolled), xc)[0], yc),
                                   meta_params, retain_graph=True)

    # the method's route: w' without a graph, v = grad F(w'), then the Hessian-vector product
    lookahead = sgd_lookahead([p.detach() for p in params], [gw.detach() for gw in grad_w], lr, momentum=momentum,
                              weight_decay=weight_decay, momentum_buffers=buffers)
    lookahead = [w.requires_grad_() for w in lookahead]
    v = torch.autograd.grad(upper_loss(lookahead_forward(model, _named(model, lookahead), xc)[0], yc), lookahead)
    got = lookahead_hypergradient(model, _named(model, params), x, logits, lambda s: lower_loss(s, corrected),
                                  meta_params, v, lr)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)
    assert sq_norm(expected).item() > 0
