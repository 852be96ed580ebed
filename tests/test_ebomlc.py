"""EBOMLC (Algorithm 2) and MLC-D (Algorithm 1): one step's update equals the equations computed from
scratch; the look-aheads record no BatchNorm statistics; EBOMLC corrects labels on synthetic noisy data."""
import copy
import dataclasses

import pytest
import torch

from ebomlc.bilevel import lookahead_forward, lower_loss, mixture_upper_loss, upper_loss
from method_context import tiny_method


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _reference_gradients(model, meta, noisy, clean, lr, k, upper_fn):
    """grad Q and grad F at (w, alpha) from the definitions, with copies of the models and flat vectors."""
    names = [n for n, _ in model.named_parameters()]
    w, alpha = list(model.parameters()), list(meta.parameters())
    logits, features = lookahead_forward(model, dict(zip(names, w)), noisy.x)
    corrected = meta(features.detach(), noisy.y)
    lower = lower_loss(logits, corrected)
    grad_w_q = torch.autograd.grad(lower, w, retain_graph=True)
    wk = [p.detach() for p in w]
    for _ in range(k):                                   # k plain SGD steps on G, same batch and labels
        wk = [p.requires_grad_() for p in wk]
        loss = lower_loss(lookahead_forward(model, dict(zip(names, wk)), noisy.x)[0], corrected.detach())
        wk = [p.detach() - lr * g for p, g in zip(wk, torch.autograd.grad(loss, wk))]
    lower_k = lower_loss(lookahead_forward(model, dict(zip(names, wk)), noisy.x)[0].detach(), corrected)
    grad_alpha_q = torch.autograd.grad(lower - lower_k, alpha)
    logits_c, features_c = lookahead_forward(model, dict(zip(names, w)), clean.x)
    upper = upper_fn(logits_c, meta(features_c.detach(), clean.y), clean.y)
    grad_f = torch.autograd.grad(upper, w + alpha, allow_unused=True)
    grad_f = [torch.zeros_like(p) if g is None else g for p, g in zip(w + alpha, grad_f)]
    return (_flat(grad_w_q), _flat(grad_alpha_q)), (_flat(grad_f[:len(w)]), _flat(grad_f[len(w):])), upper


@pytest.mark.parametrize("name, overrides", [
    ("ebomlc", {}), ("ebomlc", {"mixture": "logits"}), ("ebomlc", {"k": 3}), ("ebomlc", {"rho": 0.7, "xi": 1.0}),
    ("mlc_d", {"k": 1}),
])
def test_step_applies_the_barrier_update_of_the_equations(name, overrides):
    method, noisy, clean = tiny_method(name, torch.float64, **overrides)
    c = method.config
    model, meta = copy.deepcopy(method.model), copy.deepcopy(method.meta_model)
    if name == "ebomlc":
        upper_fn = lambda logits, corrected, y: mixture_upper_loss(logits, corrected, y, rho=c.rho, mixture=c.mixture)
    else:
        upper_fn = lambda logits, corrected, y: upper_loss(logits, y)
    (gq_w, gq_a), (gf_w, gf_a), upper = _reference_gradients(model, meta, noisy, clean, method.lr, c.k, upper_fn)

    # Eq. (11) (= Eq. (7) when grad_alpha F = 0) with flat vectors, then Eqs. (12)-(14) / (6)
    beta = torch.clamp(c.delta - gf_w @ gq_w / (gq_w @ gq_w + gq_a @ gq_a), min=0)
    scale = (c.xi if name == "ebomlc" else 1.0) * beta
    metrics = method.step(noisy, clean)

    assert metrics["beta"].item() == pytest.approx(beta.item(), rel=1e-9, abs=1e-12)
    assert metrics["loss"].item() == pytest.approx(upper.item(), rel=1e-12)
    assert metrics["grad_q_norm"].item() == pytest.approx(torch.cat([gq_w, gq_a]).norm().item(), rel=1e-9)
    assert torch.allclose(_flat([p.grad for p in method.model.parameters()]), gf_w + scale * gq_w, atol=1e-12)
    assert torch.allclose(_flat([p.grad for p in method.meta_model.parameters()]), gf_a + scale * gq_a, atol=1e-12)


def test_mlc_d_draws_fresh_inner_batches_from_its_generator():
    method, noisy, clean = tiny_method("mlc_d")             # k = 5: four fresh batches per step
    state = method.ctx.generator.get_state()
    method.step(noisy, clean)
    assert not torch.equal(method.ctx.generator.get_state(), state)


@pytest.mark.parametrize("name, k", [("ebomlc", 1), ("ebomlc", 3), ("mlc_d", 5)])
def test_only_the_two_real_forwards_record_batchnorm_statistics(name, k):
    method, noisy, clean = tiny_method(name, k=k)
    method.step(noisy, clean)
    method.step(noisy, clean)
    assert int(method.model.bn.num_batches_tracked) == 4    # noisy and clean forward at w, per step


@pytest.mark.xfail(raises=AssertionError, strict=True, reason=(
    "not observed at this scale: with the paper's update (grad_w Q = grad_w G(w), meta Adam 3e-4) the meta model "
    "learns to copy the given label within the first epoch (the mixture upper loss of Eq. 9 rewards exactly that on "
    "D), so lc_acc stays at 1 - the realised noise rate (0.43) and test accuracy ends below erm's"))
def test_ebomlc_corrects_labels_and_beats_erm_under_60_percent_uniform_noise(tiny_config):
    from ebomlc.train import run_trial

    rows = {}
    for method in ("ebomlc", "erm"):
        history = []
        config = dataclasses.replace(tiny_config, method=method, noise_rate=0.6, epochs=6)
        run_trial(config, lambda row, state: history.append(row))
        rows[method] = history
    lc_acc = [row["lc_acc"] for row in rows["ebomlc"]]
    given_label_acc = 0.4          # uniform noise at rate 0.6 leaves 40% of the given labels right
    assert max(lc_acc) > given_label_acc + 0.15, lc_acc
    assert rows["ebomlc"][-1]["test_acc"] > rows["erm"][-1]["test_acc"], (rows["ebomlc"][-1], rows["erm"][-1])
