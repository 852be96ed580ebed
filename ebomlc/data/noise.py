"""Label noise on D': transition matrices, sampling noisy labels, and measuring the noise realised.

A transition matrix T is (K, K) and row-stochastic: T[i, j] = P(noisy label = j | true label = i).
Each kind of synthetic noise (config `noise`) is one builder below; `transition_matrix` picks one.

    rng = np.random.default_rng(0)
    T = transition_matrix("uniform", 0.4, 10, rng)          # (10, 10)
    noisy = corrupt_labels(true, T, rng)                    # (N,) one draw from row T[true[n]] each
    realised_noise_rate(true, noisy)                        # ~0.4
    empirical_transition(true, noisy, 10)                   # ~T

Two conventions for "uniform noise at rate r" exist in the literature, and they differ:
`uniform` (the paper's text, Sec. VI-A1: the label is flipped to *another* class) realises rate r,
while `uniform_any` (the MLC and MW-Net code: the label is redrawn from all K classes) realises
r (K - 1) / K, e.g. 0.36 for r = 0.4 on CIFAR-10.

Human noise (CIFAR-N) has no nominal matrix: see `ebomlc.data.cifar_n`; its T is `empirical_transition`.
"""
from __future__ import annotations

import numpy as np

KINDS = ("uniform", "uniform_any", "flip", "pairflip", "matrix")


def uniform(rate: float, num_classes: int) -> np.ndarray:
    """Symmetric noise to a different class: T = (1 - r) I + r / (K - 1) (1 1ᵀ - I).

    With probability r the label moves to one of the other K - 1 classes, chosen uniformly
    (the paper, Sec. VI-A1). Realised rate r.
    """
    matrix = np.full((num_classes, num_classes), rate / (num_classes - 1))
    np.fill_diagonal(matrix, 1.0 - rate)
    return matrix


def uniform_any(rate: float, num_classes: int) -> np.ndarray:
    """Symmetric noise that may keep the class: T = r / K 1 1ᵀ + (1 - r) I.

    With probability r the label is redrawn uniformly from all K classes (MLC / MW-Net code).
    Realised rate r (K - 1) / K.
    """
    return np.full((num_classes, num_classes), rate / num_classes) + (1.0 - rate) * np.eye(num_classes)


def flip(rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Asymmetric noise: class i sends rate r to one other class t(i), T[i, i] = 1 - r, T[i, t(i)] = r.

    t(i) is drawn uniformly from the classes != i, independently for each i, as in the MLC code: a
    class never maps to itself, but two classes may map to the same target (t is not a permutation).
    (The MLC code draws t with a fixed seed for every run; the trial's noise rng draws it here, so t
    changes with config.seed.)
    """
    matrix = (1.0 - rate) * np.eye(num_classes)
    for i in range(num_classes):
        others = np.delete(np.arange(num_classes), i)
        matrix[i, rng.choice(others)] = rate
    return matrix


def pairflip(rate: float, num_classes: int) -> np.ndarray:
    """Pair noise: class i sends rate r to class (i + 1) mod K, T[i, i] = 1 - r."""
    return (1.0 - rate) * np.eye(num_classes) + rate * np.roll(np.eye(num_classes), 1, axis=1)


def given(values, num_classes: int) -> np.ndarray:
    """A user-given K x K row-stochastic matrix (config `noise_matrix`), checked and returned as float."""
    matrix = np.asarray(values, dtype=float)
    if matrix.shape != (num_classes, num_classes):
        raise ValueError(f"noise_matrix must be {num_classes} x {num_classes} for this dataset, "
                         f"got shape {matrix.shape}")
    if (matrix < 0).any() or not np.allclose(matrix.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("noise_matrix rows must be probabilities: entries >= 0 and each row summing to 1")
    return matrix


def transition_matrix(kind: str, rate: float, num_classes: int, rng: np.random.Generator, *,
                      matrix=None) -> np.ndarray:
    """The nominal (K, K) T[i, j] = P(noisy = j | true = i) for a noise kind.

    kind: "uniform" | "uniform_any" | "flip" | "pairflip" | "matrix" (then `matrix` is the K x K
    list given in config `noise_matrix`, and `rate` is not used). `rng` is used by "flip" only.
    """
    if kind == "uniform":
        return uniform(rate, num_classes)
    if kind == "uniform_any":
        return uniform_any(rate, num_classes)
    if kind == "flip":
        return flip(rate, num_classes, rng)
    if kind == "pairflip":
        return pairflip(rate, num_classes)
    if kind == "matrix":
        return given(matrix, num_classes)
    raise ValueError(f"noise kind must be one of {', '.join(KINDS)}; got {kind!r} "
                     "(human noise has no nominal matrix: its labels come from ebomlc.data.cifar_n)")


def corrupt_labels(true_labels: np.ndarray, transition: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy labels: noisy[n] is one draw from row transition[true_labels[n]].

    true_labels: (N,) int in [0, K); transition: (K, K) row-stochastic. Returns (N,) int64. The draws
    go class by class (class 0 first), so the result depends only on the labels, T and the rng state.
    """
    true_labels = np.asarray(true_labels)
    noisy = np.empty(len(true_labels), dtype=np.int64)
    for i in range(transition.shape[0]):
        members = np.flatnonzero(true_labels == i)
        noisy[members] = rng.choice(transition.shape[1], size=len(members), p=transition[i])
    return noisy


def realised_noise_rate(true_labels: np.ndarray, noisy_labels: np.ndarray) -> float:
    """Fraction of samples whose noisy label differs from the true label."""
    if len(true_labels) == 0:
        raise ValueError("realised_noise_rate needs at least one sample, got none")
    return float(np.mean(np.asarray(true_labels) != np.asarray(noisy_labels)))


def empirical_transition(true_labels: np.ndarray, noisy_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Observed T[i, j] = #(true = i, noisy = j) / #(true = i), a (K, K) array.

    A class with no samples has no evidence: its row is NaN.
    """
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (np.asarray(true_labels), np.asarray(noisy_labels)), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        return counts / totals
