"""Shared machinery of the bilevel methods (MLC-D, EBOMLC, MLC): the paper's numbered losses and the
dynamic-barrier algebra, one small function per equation, plus gradient-list helpers and the look-ahead.

Symbols (paper -> code): w -> the main model's parameters, alpha -> the meta model's parameters,
f_w(x) -> `logits`, g_alpha(h(x), y) -> `corrected` (a (B, K) distribution), eta_w -> `lr`,
G -> `lower_loss` (Eq. 3), F -> `upper_loss` (Eq. 2), mixture F -> `mixture_upper_loss` (Eq. 9),
Q -> `value_function_gap` (Eqs. 4, 8), phi -> `dynamic_barrier` (Eqs. 5, 10),
beta -> `barrier_coefficient` (Eqs. 7, 11), lambda -> `update_direction` (Eqs. 6, 12-14).

Gradients are lists of tensors, one per parameter (what `torch.autograd.grad` returns); the inner
products and norms over (w, alpha) are sums of per-tensor ones, so no flattened copy of the ~0.5 M
parameters is ever made.

The look-ahead (`lookahead_forward`) runs the main model with other weights through
`torch.func.functional_call`: no deep copy of the model, and the real parameters are never touched.
BatchNorm in the look-ahead: the layers normalise with the look-ahead batch's own statistics (training
mode, exactly the function G is defined with during training), and their running statistics are passed
as None, so nothing is recorded: the look-ahead leaves the real model's running means, variances and
batch counters unchanged. Only the methods' real forwards at the current w update them, as in plain
training.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Grads = Sequence[Tensor]   # one tensor per parameter, in the order of `module.parameters()`

# Added to ||grad Q||^2 in the denominator of the barrier coefficient. It only matters when grad Q
# vanishes (the batch fitted exactly, or a zero look-ahead step): there it turns 0/0 into beta = 0, and for
# a tiny nonzero grad Q the term beta * grad Q stays bounded anyway (see `barrier_coefficient`).
GRAD_Q_EPS = 1e-12


# ---------------------------------------------------------------- gradient lists

def dot(xs: Grads, ys: Grads) -> Tensor:
    """<x, y> over parameter lists: the sum of per-tensor dot products (0-dim tensor)."""
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(xs, ys)]).sum()


def sq_norm(xs: Grads) -> Tensor:
    """||x||^2 over a parameter list (0-dim tensor), from the fused per-tensor norms."""
    return torch.stack(torch._foreach_norm(list(xs))).square().sum()


def set_grads(params: Sequence[nn.Parameter], grads: Grads) -> None:
    """Make `grads` the parameters' .grad, ready for `optimizer.step()`."""
    for param, grad in zip(params, grads):
        param.grad = grad


# ---------------------------------------------------------------- look-ahead

def sgd_lookahead(params: Grads, grads: Grads, lr: float, *, momentum: float = 0.0,
                  weight_decay: float = 0.0, momentum_buffers: Grads | None = None) -> list[Tensor]:
    """The next iterate of (momentum) SGD as new tensors: w - lr * (momentum * b + grad + weight_decay * w).

    With the defaults it is the plain step w - lr * grad of the look-ahead w_(1) (Eq. 8, Algorithms 1-2).
    With `momentum_buffers` (the optimiser's b, dampening 0, no Nesterov) it is exactly the step
    torch.optim.SGD would take next; without buffers (the first step) SGD's b starts as the gradient
    itself, which is the same formula with b = 0. `params` must be detached; the result then carries a
    graph only if `grads` do.
    """
    direction = list(grads)
    if weight_decay:
        direction = torch._foreach_add(direction, params, alpha=weight_decay)
    if momentum and momentum_buffers is not None:
        direction = torch._foreach_add(direction, momentum_buffers, alpha=momentum)
    return list(torch._foreach_add(params, direction, alpha=-lr))


def batchnorm_free_buffers(model: nn.Module) -> dict[str, None]:
    """Buffer overrides that make every BatchNorm layer normalise with batch statistics and record none."""
    names = {}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                names[f"{prefix}.{buffer}" if prefix else buffer] = None
    return names


def lookahead_forward(model: nn.Module, params: dict[str, Tensor], x: Tensor):
    """model(x) evaluated at the weights `params` (name -> tensor) instead of its own.

    No copy of the model; its parameters and BatchNorm running statistics are left untouched (see the
    module docstring). Differentiable with respect to `params` (reverse or forward mode).
    """
    return functional_call(model, (params, batchnorm_free_buffers(model)), (x,))


# ---------------------------------------------------------------- the paper's equations

def upper_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Eq. (2): F = mean over the clean batch of the cross-entropy of f_w(x_c) against y_c."""
    return F.cross_entropy(logits, y)


def lower_loss(logits: Tensor, corrected: Tensor) -> Tensor:
    """Eq. (3): G = mean_i of the soft cross-entropy -sum_k g_ik log softmax(f_w(x'_i))_k.

    logits: (B, K) main model scores f_w(x'); corrected: (B, K) corrected-label distribution
    g_alpha(h(x'), y'), rows summing to 1.
    """
    return -(corrected * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def value_function_gap(lower_at_w: Tensor, lower_at_lookahead: Tensor) -> Tensor:
    """Eq. (8): Q(w, alpha) = G(w, alpha) - G(w_(1), alpha); Eq. (4) with G*(alpha) ~ G(w_k, alpha).

    Both losses are on the same batch with the same corrected labels, so
    grad_alpha Q = grad_alpha G(w, alpha) - grad_alpha G(w_k, alpha); for grad_w Q (look-ahead weights a
    constant as in BOME, or the gradient of G at both points) see `value_gap_gradients`.
    """
    return lower_at_w - lower_at_lookahead


def mixture_upper_loss(logits: Tensor, corrected: Tensor, y: Tensor, *, rho: float, mixture: str = "probs",
                       reduction: str = "mean") -> Tensor:
    """Eq. (9): the EBOMLC upper loss on the clean batch, the mixture of main and meta predictions.

    logits: (B, K) f_w(x_c); corrected: (B, K) g_alpha(h(x_c), y_c), a distribution; y: (B,) clean labels.
    mixture="probs" (the paper): -log(rho * softmax(f_w(x_c)) + (1 - rho) * g)[y_c], a convex mixture of
    two distributions (for rho < 1 the term (1 - rho) * g_y > 0 keeps the log finite).
    mixture="logits" (the authors' public code): cross_entropy(rho * f_w(x_c) + (1 - rho) * g, y_c), the
    meta distribution added to the main model's scores.
    reduction: "mean" (the loss) or "sum" (for per-set sums).
    """
    if mixture == "probs":
        mixed = rho * F.softmax(logits, dim=1) + (1 - rho) * corrected       # (B, K), rows sum to 1
        losses = -torch.log(mixed.gather(1, y[:, None]).squeeze(1))
        return losses.mean() if reduction == "mean" else losses.sum()
    if mixture == "logits":
        return F.cross_entropy(rho * logits + (1 - rho) * corrected, y, reduction=reduction)
    raise ValueError(f"mixture must be 'probs' or 'logits', got {mixture!r}")


def dynamic_barrier(grad_q_sq_norm: Tensor, alignment: Tensor | float, delta: float) -> Tensor:
    """Eq. (5) / Eq. (10): the barrier phi = delta * ||grad Q||^2 + grad_alpha F . grad_alpha Q.

    `alignment` is EBOMLC's alpha-alignment term grad_alpha F . grad_alpha Q (Eq. 10); it is 0 for MLC-D,
    whose upper loss (Eq. 2) does not depend on alpha, and the barrier is BOME's phi of Eq. (5).
    """
    return delta * grad_q_sq_norm + alignment


def barrier_coefficient(grad_w_F: Grads, grad_alpha_F: Grads | None, grad_w_Q: Grads, grad_alpha_Q: Grads,
                        delta: float) -> Tensor:
    """Eq. (7) / Eq. (11): the dynamic-barrier coefficient beta (0-dim tensor, >= 0).

    The direction lambda = argmin ||grad F - lambda||^2 s.t. grad Q . lambda >= phi (Eq. 5) is, by the
    Lagrange multiplier method, lambda = grad F + beta * grad Q (Eqs. 6, 12) with

        beta = max( (phi - grad F . grad Q) / ||grad Q||^2, 0 ),

    grad = (grad_w, grad_alpha) over both models and ||grad Q||^2 = ||grad_w Q||^2 + ||grad_alpha Q||^2.

    MLC-D (Eq. 7): grad F = (grad_w F, 0) and phi = delta ||grad Q||^2 (Eq. 5), so
        beta = max( delta - grad_w F . grad_w Q / ||grad Q||^2, 0 ).
    EBOMLC (Eq. 11): grad_alpha F != 0 (Eq. 9) and phi = delta ||grad Q||^2 + grad_alpha F . grad_alpha Q
    (Eq. 10), so the numerator is
        delta ||grad Q||^2 + grad_alpha F . grad_alpha Q - (grad_w F . grad_w Q + grad_alpha F . grad_alpha Q)
          = delta ||grad Q||^2 - grad_w F . grad_w Q:
    the alignment term cancels and beta-bar has the same form as Eq. (7), only the w-part of grad F
    entering the inner product, while ||grad Q||^2 still runs over both w and alpha. Hence with rho = 1
    (grad_alpha F = 0) EBOMLC's coefficient is exactly the standard one (the remark after Eq. 11).

    `grad_alpha_F` None means grad_alpha F = 0 (MLC-D). GRAD_Q_EPS is added to ||grad Q||^2, so grad Q = 0
    gives beta = 0 instead of 0/0 (NaN). For a small nonzero grad Q, beta itself can be large, but the
    barrier term beta * grad Q stays bounded by delta ||grad Q|| + ||grad_w F||, since
    |grad_w F . grad_w Q| <= ||grad_w F|| ||grad Q||.
    """
    fq_w = dot(grad_w_F, grad_w_Q)
    fq_alpha = dot(grad_alpha_F, grad_alpha_Q) if grad_alpha_F is not None else 0.0
    q_sq = sq_norm(grad_w_Q) + sq_norm(grad_alpha_Q)
    phi = dynamic_barrier(q_sq, fq_alpha, delta)
    return ((phi - fq_alpha - fq_w) / (q_sq + GRAD_Q_EPS)).clamp_min(0.0)


def update_direction(grad_F: Grads | None, grad_Q: Grads, scale: Tensor) -> list[Tensor]:
    """Eqs. (6), (12)-(14): one block of lambda = grad F + scale * grad Q, per parameter tensor.

    scale: 0-dim tensor, beta for MLC-D (Eq. 6) and xi * beta-bar for EBOMLC (Eqs. 12-14). Applied to the
    w block (Eq. 13) and the alpha block (Eq. 14) separately, since the main and the meta model have
    their own optimisers. `grad_F` None means grad F = 0 (MLC-D's alpha block).
    """
    scaled = list(torch._foreach_mul(list(grad_Q), scale))
    if grad_F is None:
        return scaled
    torch._foreach_add_(scaled, list(grad_F))
    return scaled


# ---------------------------------------------------------------- gradients of the bilevel methods

NoisyBatchSource = Callable[[], tuple[Tensor, Tensor]]

# How grad_w Q treats the look-ahead w_k (option `grad_q` of EBOMLC and MLC-D; see value_gap_gradients)
GRAD_Q_FORMS = ("bome", "difference")


def value_gap_gradients(model: nn.Module, meta_model: nn.Module, x: Tensor, y: Tensor, *, lr: float,
                        steps: int = 1, fresh_batch: NoisyBatchSource | None = None, grad_q: str = "bome"):
    """G(w, alpha) and the gradients of Q = G(w, alpha) - G(w_k, alpha) at (w, alpha) on the noisy batch.

    x: (B, C, H, W) images of D', y: (B,) their noisy labels. Returns (G detached, grad_w Q, grad_alpha Q).

    y~ = g_alpha(h(x'), y') with the features h(x') taken from the forward at w and detached (h is frozen
    for alpha). w_k is reached by `steps` plain SGD steps on G from w with step size `lr` (eta_w), each
    computed without a graph: Eq. (8) for steps = 1 (EBOMLC's w_(1)), Eq. (4) with G*(alpha) ~ G(w_k, alpha)
    otherwise (MLC-D, and EBOMLC's k ablation of Fig. 7). G(w_k, .) uses the same y~, and always

        grad_alpha Q = grad_alpha G(w, alpha) - grad_alpha G(w_k, alpha).

    grad_q="bome": w_k is a constant (BOME's q(x, theta) = g(x, theta) - g(x, theta^(T))), so
        grad_w Q = grad_w G(w, alpha).
    grad_q="difference": the gradient of G is taken at both points,
        grad_w Q = grad_w G(w, alpha) - (grad_w G)(w_k, alpha),
    the quantity the paper bounds after Eq. (8) (||grad G(w) - grad G(w_(1))|| <= ||grad G(w) - grad G(w_(T))||)
    and describes shrinking in Sec. VI-C3, and what the authors' public code computes (it differentiates
    G(w) - G(w_1) after swapping the weights in place). It costs a backward more: the forward at w_k then
    keeps its graph.

    Inner steps 2..k: with `fresh_batch` None they reuse this batch and its y~ (EBOMLC); otherwise each
    takes a new batch (x_i, y_i) = fresh_batch() labelled by g_alpha from the features at w_i (MLC-D,
    Algorithm 1 line 3). Q is always measured on this batch. Cost ("bome"): one forward + backward at w,
    one forward + backward per extra inner step, one forward at w_k without a graph, and small backwards
    through g_alpha.

    The forward at w is the model's real training forward (it updates BatchNorm running statistics);
    every look-ahead forward leaves them alone (`lookahead_forward`).
    """
    if grad_q not in GRAD_Q_FORMS:
        raise ValueError(f"grad_q must be one of {', '.join(GRAD_Q_FORMS)}, got {grad_q!r}")
    params = list(model.parameters())
    names = [name for name, _ in model.named_parameters()]
    meta_params = list(meta_model.parameters())

    logits, features = model(x)                                   # (B, K), (B, F)
    corrected = meta_model(features.detach(), y)                  # (B, K) y~, with its graph to alpha
    # grad_w G(w, alpha), Eq. (3). This backward frees the network's graph: the alpha-part below takes G
    # as a function of alpha with f_w(x') fixed, all grad_alpha needs, so no two graphs are alive at once
    # (retaining this one cost ~100k fresh memory pages, over 10% of the time, per CPU step).
    grad_w = torch.autograd.grad(lower_loss(logits, corrected.detach()), params)

    weights = sgd_lookahead([p.detach() for p in params], grad_w, lr)   # w_(1)
    for _ in range(steps - 1):
        weights = [w.requires_grad_() for w in weights]
        if fresh_batch is None:
            inner_logits, _ = lookahead_forward(model, dict(zip(names, weights)), x)
            target = corrected.detach()
        else:
            inner_x, inner_y = fresh_batch()
            inner_logits, inner_features = lookahead_forward(model, dict(zip(names, weights)), inner_x)
            with torch.no_grad():
                target = meta_model(inner_features, inner_y)
        inner_grad = torch.autograd.grad(lower_loss(inner_logits, target), weights)
        weights = sgd_lookahead([w.detach() for w in weights], inner_grad, lr)   # w_(i+1)
    lower = lower_loss(logits.detach(), corrected)                # G(w, alpha)
    if grad_q == "bome":
        with torch.no_grad():
            lookahead_logits, _ = lookahead_forward(model, dict(zip(names, weights)), x)   # f_{w_k}(x')
        gap = value_function_gap(lower, lower_loss(lookahead_logits, corrected))      # Q, Eq. (8) / (4)
        return lower.detach(), list(grad_w), list(torch.autograd.grad(gap, meta_params))

    weights = [w.requires_grad_() for w in weights]
    lookahead_logits, _ = lookahead_forward(model, dict(zip(names, weights)), x)
    gap = value_function_gap(lower, lower_loss(lookahead_logits, corrected))
    grads = torch.autograd.grad(gap, weights + meta_params)       # d Q / d w_k = -(grad_w G)(w_k)
    return lower.detach(), list(torch._foreach_add(grad_w, grads[:len(weights)])), list(grads[len(weights):])


def lookahead_hypergradient(model: nn.Module, params: dict[str, Tensor], x: Tensor, logits: Tensor,
                            lower_of_logits: Callable[[Tensor], Tensor], meta_params: Sequence[Tensor],
                            grad_at_lookahead: Grads, lr: float) -> list[Tensor]:
    """MLC's hypergradient grad_alpha F(w'(alpha)) through one look-ahead step, as a Hessian-vector product.

    w'(alpha) = w - lr * (grad_w G(w, alpha) + c), where c (momentum buffer, weight decay) does not depend
    on alpha; v = grad F(w') = `grad_at_lookahead`. By the chain rule

        grad_alpha F(w'(alpha)) = (d w' / d alpha)^T v = -lr * grad_alpha < grad_w G(w, alpha), v >,

    a mixed second derivative of G applied to v. G depends on w only through the logits f_w(x) (the
    features fed to g_alpha are detached), so grad_w G = J^T dG/df with J = d f_w(x) / d w independent of
    alpha, and < grad_w G, v > = < dG/df, J v >. J v is one forward-mode product through the network
    (torch.func.jvp at w, BatchNorm on batch statistics as in the real forward); dG/df as a function of
    alpha is a tiny graph. This equals backpropagating through grad_w G built with create_graph=True
    (tested against that), without the double backward through the network.

    params: the current weights w (name -> tensor); x: the batch G is computed on; logits: f_w(x) from the
    real forward; lower_of_logits: logits -> G with its graph to alpha (e.g. Eq. 3 with g_alpha's labels).
    """
    weights = {name: p.detach() for name, p in params.items()}
    tangents = dict(zip(weights, grad_at_lookahead))
    with warnings.catch_warnings():
        # torch registers its forward-mode rules with its own deprecated torch.jit.script on first use and
        # warns about that call; nothing for a user to act on
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
        _, jv = torch.func.jvp(lambda w: lookahead_forward(model, w, x)[0], (weights,), (tangents,))   # (B, K) J v
    scores = logits.detach().requires_grad_()
    (dg_dscores,) = torch.autograd.grad(lower_of_logits(scores), scores, create_graph=True)       # (B, K)
    return list(torch.autograd.grad(-lr * (dg_dscores * jv).sum(), list(meta_params)))
